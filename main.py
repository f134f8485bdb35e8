"""Entry point: python main.py --mode=<mode> --config=configs/<file>.py --workdir=<dir> [--config.a.b=value].

The same as the `subspace-diffusion` console command (`pip install -e .`); see subspace_diffusion/cli.py.
"""
from subspace_diffusion.cli import run

if __name__ == '__main__':
    run()
