"""The command line: `python main.py` and the `subspace-diffusion` console command.

    subspace-diffusion --mode=<mode> --config=configs/<file>.py --workdir=<dir> [--config.a.b=value]

The config is checked once, here, into typed settings (run/settings.py); bad input of any kind (a flag,
a config field, data, a file, a checkpoint, the workdir) ends with one line naming the problem and the
fix, and a non-zero exit. Each mode is one job of subspace_diffusion/jobs/. On several hosts add
--distributed (TPU pods, SLURM and other auto-detected clusters) or give --coordinator_address,
--num_processes and --process_id; run the same command on every host.
"""
import errno
import json
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from subspace_diffusion.formats.files import atomic_json
from subspace_diffusion.formats.pth import PthError
from subspace_diffusion.jobs import (
    conditional,
    cutoffs,
    evaluate,
    fid_stats,
    import_checkpoint,
    subspace_stats,
    train,
)
from subspace_diffusion.run import compilation, parallel
from subspace_diffusion.run.checkpoints import CheckpointError, SaveFailed
from subspace_diffusion.run.lock import WorkdirLock
from subspace_diffusion.run.published import WEIGHTS
from subspace_diffusion.run.settings import (
    Settings,
    close_fields,
    differences,
    field_paths,
)

FLAGS = flags.FLAGS
MODES = {
    'train': train.train,
    'eval': evaluate.evaluate,
    'fid_stats': fid_stats.fid_stats,
    'subspace_stats': subspace_stats.subspace_stats,
    'cutoffs': cutoffs.cutoffs,
    'inpaint': conditional.inpaint,
    'colorize': conditional.colorize,
    'import': lambda settings, workdir: import_checkpoint.import_checkpoint(
        settings, workdir, FLAGS.import_from, FLAGS.import_level, FLAGS.import_weights, FLAGS.import_dry_run),
}
# The mode whose record of settings is kept once: a resume with other settings is recorded beside it.
FIRST_RECORD_ONLY = ('train',)

config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, statistics, samples and logs.')
flags.DEFINE_enum('mode', None, list(MODES), 'What to run.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize (auto-detects TPU pods and clusters).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process run.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_string('compile_cache', compilation.default_dir(),
                    'Persistent XLA compilation cache (shared by runs and hosts that see it); "" turns it off.')
flags.DEFINE_string('import_from', None, '--mode=import: a score_sde_pytorch / subspace-diffusion checkpoint_N.pth.')
flags.DEFINE_integer('import_level', None, '--mode=import: the level the checkpoint serves (0 = full space).')
flags.DEFINE_enum('import_weights', 'ema', WEIGHTS,
                  '--mode=import: EMA weights (as published for sampling) or the raw model weights.')
flags.DEFINE_bool('import_dry_run', False, '--mode=import: print the key mapping and parameter count, write nothing.')
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


def parse_flags(argv):
    """absl flag parsing with one line per problem (unknown --config.<field>, missing config file) instead of tracebacks."""
    config_file = next((a.split('=', 1)[1] for a in reversed(argv) if a.startswith('--config=')), None)
    if config_file:
        path = config_file.split(':')[0]
        if not os.path.isfile(path):
            # Checked first: config_flags would print a traceback and fail only later, on first use.
            sys.exit(f'error: config file not found: --config={config_file}')
        # A config imports its base as configs.<name>: the folder above configs/ must be importable, from anywhere.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- config_flags raises AttributeError, KeyError, IOError, flags.Error
        sys.exit(f'error: {_flag_problem(argv, config_file, e)}')


def _flag_problem(argv, config_file, error) -> str:
    base = _base_config(config_file) if config_file else None
    if base is not None:
        known = set(field_paths(base))
        for arg in argv:
            path = re.match(r'--config\.([\w.]+)=', arg)
            if path and path.group(1) not in known:
                close = close_fields(path.group(1), base)
                return (f'--config.{path.group(1)} is not a field of {config_file}'
                        + (f'; did you mean {", ".join("--config." + c for c in close)}?' if close else ''))
    if isinstance(error, KeyError) and config_file:
        return f'{config_file}: get_config() failed with KeyError {error}: fix the config file'
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def _base_config(config_file):
    """The config a --config=<file> flag names, loaded without overrides (None if it cannot be)."""
    try:
        return config_flags.config_flags._LoadConfigModule('config', config_file.split(':')[0]).get_config()
    except Exception:  # noqa: BLE001 -- only used to suggest field names
        return None


def check_workdir(workdir):
    """Create the workdir and prove it writable, or raise one ValueError naming the problem and the fix."""
    if '://' in workdir:  # os.makedirs would quietly create a local folder named 'gs:'
        raise ValueError(f'--workdir={workdir} is a URL: the workdir must be a file system path every process sees '
                         f'(a local disk, NFS / Filestore, or a mounted bucket); only --compile_cache takes gs://')
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f'--workdir={workdir} is a file, not a directory: choose another --workdir')
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f'.write_test_{os.getpid()}')  # one per process of a multi-host run
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        reason = {errno.ENOTDIR: 'a part of the path is a file', errno.EROFS: 'read-only file system',
                  errno.EACCES: 'permission denied', errno.ENOSPC: 'no space left'}.get(e.errno, e.strerror)
        raise ValueError(f'--workdir={workdir} cannot be written ({reason}): choose another --workdir') from None


def record_settings(config, workdir, mode):
    """Write config_<mode>.json after the settings passed; the training record keeps the first run's settings."""
    path = os.path.join(workdir, f'config_{mode}.json')
    new = json.loads(config.to_json_best_effort())
    if mode in FIRST_RECORD_ONLY and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old == new:
            return
        index = len([f for f in os.listdir(workdir) if f.startswith(f'config_{mode}_resumed_')]) + 1
        path = os.path.join(workdir, f'config_{mode}_resumed_{index}.json')
        logging.info('settings differ from the first run (%s); recorded in %s', ', '.join(differences(old, new)), path)
    atomic_json(path, new)


def main(argv):
    """Parse the settings, check and lock the workdir, record the settings and run the mode's job."""
    del argv
    logging.set_verbosity(logging.INFO)
    # Orbax reports every save at INFO and failures with tracebacks from its threads; a failed save reaches
    # the user as one line from the training job instead.
    std_logging.getLogger('absl').addFilter(
        lambda record: record.levelno >= std_logging.CRITICAL or 'orbax' not in record.pathname)
    # Orbax writes through asyncio tasks; asyncio would log their failure as a second traceback.
    std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
    if FLAGS.distributed or FLAGS.coordinator_address:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    compilation.enable(FLAGS.compile_cache)
    try:
        settings = Settings.from_config(FLAGS.config)
        if FLAGS.mode == 'import' and FLAGS.import_dry_run:  # writes nothing, not even the workdir
            MODES[FLAGS.mode](settings, FLAGS.workdir)
            return
        check_workdir(FLAGS.workdir)
        with WorkdirLock(FLAGS.workdir, FLAGS.mode):
            if parallel.is_main_process():
                record_settings(FLAGS.config, FLAGS.workdir, FLAGS.mode)
            MODES[FLAGS.mode](settings, FLAGS.workdir)
    except SaveFailed as e:
        # Orbax's writer threads are left mid-write; a normal interpreter exit would print their
        # tracebacks. The previous checkpoint is whole, so leave at once with the one line.
        sys.stderr.write(f'error: {e}\n')
        sys.stderr.flush()
        os._exit(1)
    except (ValueError, FileNotFoundError, FloatingPointError, CheckpointError, PthError) as e:
        # Configuration, data, file and checkpoint problems: one clear line and a non-zero exit, not a traceback.
        sys.exit(f'error: {e}')


def run():
    """Entry point of main.py and of the console command."""
    app.run(main, flags_parser=parse_flags)
