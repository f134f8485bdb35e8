#!/usr/bin/env bash
# A torch CPU venv for the reference controls (benchmarks/reference_training.py, reference_sampling.py,
# make_training_fixture.py, reference_speed.py).
#   bash benchmarks/setup_reference.sh [VENV] [CHECKOUT]    (defaults: /work/torchvenv, /work/subspace-diffusion)
# torch==2.13.0 exactly: this machine image caches that CPU wheel; an open range pulls a CUDA build of
# several GB from PyPI. The reference's checkout is taken as given (its source is never copied here).
set -euo pipefail
VENV=${1:-/work/torchvenv}
CHECKOUT=${2:-/work/subspace-diffusion}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet torch==2.13.0 numpy scipy ml-collections absl-py tqdm
# this project's own requirements too, for benchmarks/reference_speed.py (both sides in one process)
"$VENV/bin/pip" install --quiet -r "$(dirname "$0")/../requirements.txt"
"$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
if [ ! -f "$CHECKOUT/losses.py" ]; then
  echo "no reference checkout at $CHECKOUT: clone bjing2016/subspace-diffusion there (git clone <its url> $CHECKOUT)" >&2
  exit 2
fi
