"""Entry point: python main.py --mode=<mode> --config=configs/<file>.py --workdir=<dir> [--config.a.b=value]."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from subspace_diffusion import analysis

MODES = {
    'subspace_stats': analysis.subspace_stats,
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, statistics, samples and logs.')
flags.DEFINE_enum('mode', None, list(MODES), 'What to run.')
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


def main(argv):
    del argv
    config = FLAGS.config
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, f'config_{FLAGS.mode}.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    logging.set_verbosity(logging.INFO)
    try:
        MODES[FLAGS.mode](config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        # Configuration and data problems: one clear line and a non-zero exit, not a traceback.
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    app.run(main)
