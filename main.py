"""Entry point: python main.py --mode=<mode> --config=configs/<file>.py --workdir=<dir> [--config.a.b=value].

On several hosts add --distributed (TPU pods, SLURM and other auto-detected clusters) or give
--coordinator_address, --num_processes and --process_id explicitly.
"""
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from subspace_diffusion import analysis, applications, evaluate, parallel, reference_import, train
from subspace_diffusion.checkpoints import CheckpointError
from subspace_diffusion.pth import PthError

FLAGS = flags.FLAGS
MODES = {
    'train': train.train,
    'eval': evaluate.evaluate,
    'fid_stats': evaluate.fid_stats,
    'subspace_stats': analysis.subspace_stats,
    'cutoffs': applications.cutoffs_mode,
    'inpaint': applications.inpaint_mode,
    'colorize': applications.colorize_mode,
    'import': lambda config, workdir: reference_import.import_mode(
        config, workdir, FLAGS.import_from, FLAGS.import_level, FLAGS.import_weights, FLAGS.import_dry_run),
}

config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, statistics, samples and logs.')
flags.DEFINE_enum('mode', None, list(MODES), 'What to run.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize (auto-detects TPU pods and clusters).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process run.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_string('import_from', None, '--mode=import: a score_sde_pytorch / subspace-diffusion checkpoint_N.pth.')
flags.DEFINE_integer('import_level', None, '--mode=import: the level the checkpoint serves (0 = full space).')
flags.DEFINE_enum('import_weights', 'ema', reference_import.WEIGHTS,
                  '--mode=import: EMA weights (as published for sampling) or the raw model weights.')
flags.DEFINE_bool('import_dry_run', False, '--mode=import: print the key mapping and parameter count, write nothing.')
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    # Orbax reports every save step at INFO; keep its warnings, drop the chatter from the progress log.
    std_logging.getLogger('absl').addFilter(
        lambda record: record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname)
    if FLAGS.distributed or FLAGS.coordinator_address:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    if FLAGS.mode == 'import' and FLAGS.import_dry_run:  # a dry run writes nothing, not even the workdir
        return _run(config)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    if parallel.is_main_process():
        with open(os.path.join(FLAGS.workdir, f'config_{FLAGS.mode}.json'), 'w') as f:
            f.write(config.to_json_best_effort(indent=2))
    _run(config)


def _run(config):
    try:
        MODES[FLAGS.mode](config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError, CheckpointError, PthError) as e:
        # Configuration, data and checkpoint problems: one clear line and a non-zero exit, not a traceback.
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    app.run(main)
