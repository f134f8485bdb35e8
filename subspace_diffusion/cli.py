"""The command line: `python main.py` and the `subspace-diffusion` console command.

    subspace-diffusion --mode=<mode> --config=configs/<file>.py --workdir=<dir> [--config.a.b=value]

The config is checked once, here, into typed settings (run/settings.py); bad input of any kind (a flag,
a config field, data, a file, a checkpoint, the workdir) ends with one line naming the problem and the
fix, and a non-zero exit. --config takes a config file or a settings record (.json); without it, the record
of the workdir's newest checkpoint (run/records.py) is the config, and --config.<field> flags apply on top.
A shipped model (run/shipped.py) stays as shipped: runs on it work in a copy of it, --output_dir. Each mode is
one job of subspace_diffusion/jobs/. On several hosts add --distributed (TPU pods, SLURM and other auto-detected
clusters) or give --coordinator_address, --num_processes and --process_id; run the same command on every host.
"""
import inspect
import logging as std_logging
import os
import re
import signal
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from subspace_diffusion.formats.files import (
    FileProblem,
    atomic_json,
    config_module,
    read_json,
    writable,
)
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
from subspace_diffusion.run import compilation, loading, parallel, records, shipped
from subspace_diffusion.run.checkpoints import CheckpointError, SaveFailed
from subspace_diffusion.run.lock import WorkdirLock
from subspace_diffusion.run.published import WEIGHTS
from subspace_diffusion.run.settings import (
    Settings,
    close_fields,
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
MODE_HELP = {  # what --help says of each mode
    'train': 'train the levels of subspace.train_level (-1: all); resumes from the workdir\'s checkpoints',
    'eval': 'sample archived checkpoints and score them (FID / KID with Inception weights, download-free '
            'Frechet distances), optionally bits/dim; results in <workdir>/<eval.folder>/step_<step>/',
    'fid_stats': 'the reference statistics of the data (eval computes them when absent)',
    'subspace_stats': 'the chain\'s statistics on the training set (train and eval measure them when absent)',
    'cutoffs': 'the orthogonal Fisher divergence of the full-space model per level and the cutoffs it suggests',
    'inpaint': 'fill in eval.cond_mask in every image of eval.cond_input_dir; results in <workdir>/inpaint/ '
               '(or eval.cond_folder)',
    'colorize': 'colour every image of eval.cond_input_dir; results in <workdir>/colorize/ (or eval.cond_folder)',
    'import': 'a published PyTorch checkpoint (--import_from, --import_level) as a level of the workdir',
}
MAIN_FLAGS = ('mode', 'config', 'workdir', 'output_dir', 'compile_cache', 'import_from', 'import_level',
              'import_weights', 'import_dry_run', 'distributed', 'coordinator_address', 'num_processes', 'process_id',
              'distributed_timeout')
IMPORT_FLAGS = ('import_from', 'import_level', 'import_weights', 'import_dry_run')
_repeated = []  # the flags given more than once (the last value wins), logged once logging is set up
_from_record = []  # the workdir's record that stands in for a missing --config, logged once logging is set up
# The modes whose checkpoints write the record of their settings, with the first one (run/records.py).
CHECKPOINT_MODES = ('train', 'import')


class _ConfigParser(config_flags.config_flags.ConfigFileFlagParser):
    """--config: a config file (.py with get_config()) or a settings record (.json, what runs write in a workdir)."""

    def parse(self, path):
        if not path.endswith('.json'):
            return super().parse(path)
        config = records.as_config(read_json(path, 'settings record', 'give --config a config file (configs/<file>.py) '
                                                                      'or a config_<mode>.json a run wrote'))
        config.lock()
        return config


config_flags.DEFINE_config_file('config', None, 'Config file (ml_collections), or a settings record (.json); default: '
                                'the record of the --workdir\'s newest checkpoint.', lock_config=True)
FLAGS['config'].parser = _ConfigParser('config', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, statistics, samples and logs.')
flags.DEFINE_string('output_dir', None, 'Where a shipped model\'s runs work (a copy of it, made on first use); '
                    f'default {os.path.join(shipped.RUNS, "<its name>")}. The shipped folder itself stays as shipped.')
flags.DEFINE_enum('mode', None, list(MODES), 'What to run.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize (auto-detects TPU pods and clusters).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a multi-process run.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
flags.DEFINE_integer('distributed_timeout', 120, 'Seconds every process of a multi-process run has to join before '
                     'each leaves with one line naming the coordinator and the missing processes.', lower_bound=1)
flags.DEFINE_string('compile_cache', compilation.default_dir(),
                    'Persistent XLA compilation cache (shared by runs and hosts that see it); "" turns it off.')
flags.DEFINE_string('import_from', None, '--mode=import: a score_sde_pytorch / subspace-diffusion checkpoint_N.pth.')
flags.DEFINE_integer('import_level', None, '--mode=import: the level the checkpoint serves (0 = full space).')
flags.DEFINE_enum('import_weights', 'ema', WEIGHTS,
                  '--mode=import: EMA weights (as published for sampling) or the raw model weights.')
flags.DEFINE_bool('import_dry_run', False, '--mode=import: print the key mapping and parameter count, write nothing.')
flags.mark_flags_as_required(['workdir', 'mode'])


def parse_flags(argv):
    """absl flag parsing with one line per problem (unknown --config.<field>, a broken config file, a stray argument)
    instead of tracebacks; --help lists the modes and the main flags."""
    if any(a in ('--help', '-h', '-?', '--helpshort') for a in argv[1:]):
        print(usage())
        sys.exit(0)
    argv, repeated = _last_wins(argv)
    _repeated.extend(repeated)
    config_file = _flag_value(argv, 'config')
    if config_file is None and not any(re.match(r'--?config(=|$)', a) for a in argv[1:]):
        config_file = _workdir_record(_flag_value(argv, 'workdir'))
        argv = argv[:1] + [f'--config={config_file}'] + argv[1:]  # before the fields it defines
        _from_record.append(config_file)
    if config_file is not None:
        path = config_file.split(':')[0]
        if not os.path.isfile(path):
            # Checked first: config_flags would print a traceback and fail only later, on first use.
            sys.exit(f'error: config file not found: --config={config_file}')
        if not path.endswith('.json'):
            # A config imports its base as configs.<name>: the folder above configs/ must be importable, from anywhere.
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
    try:
        rest = FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- config_flags raises AttributeError, KeyError, IOError, flags.Error
        sys.exit(f'error: {_flag_problem(argv, config_file, e)}')
    if len(rest) > 1:  # absl would hand them to main, which reads none
        sys.exit(f'error: unexpected argument(s) {" ".join(rest[1:])}: every input is a flag, e.g. --mode=train '
                 f'(see --help)')
    return rest


def _flag_value(argv, name: str):
    """The value of the last --<name>=<value> in argv, or None."""
    return next((a.split('=', 1)[1] for a in reversed(argv) if a.startswith(f'--{name}=')), None)


def _workdir_record(workdir) -> str:
    """The settings record of `workdir` (that of its newest checkpoint), which stands in for a missing --config;
    exits with one line when there is none."""
    name = None
    if workdir and os.path.isdir(workdir):
        try:
            name = records.find(workdir, loading.checkpoint_at(workdir)[1])
        except (CheckpointError, FileProblem, OSError):  # a damaged checkpoint: the run itself will say so
            name = records.find(workdir, {})
    if name is None:
        where = f'--workdir={workdir} holds no settings record to use instead' if workdir else 'no --workdir was given'
        sys.exit(f'error: --config is missing and {where}: give --config=configs/<file>.py (the config the run is '
                 f'made with), or the --workdir of a run that recorded its settings')
    return os.path.join(workdir, name)


def usage() -> str:
    """The --help text: how to call, the modes, the main flags and where the settings are."""
    lines = ['usage: python main.py --mode=<mode> [--config=configs/<file>.py] --workdir=<dir> '
             '[--config.<section>.<field>=<value> ...]',
             '       (the `subspace-diffusion` console command takes the same flags)', '', 'modes:']
    lines += [f'  {mode:<15} {text}' for mode, text in MODE_HELP.items()]
    lines += ['', 'flags:']
    for name in MAIN_FLAGS:
        flag = FLAGS[name]
        default = '' if flag.default in (None, False, '') else f' (default: {flag.default})'
        lines.append(f'  --{name:<21} {flag.help}{default}')
    lines += ['', 'Every field of the config is a setting: --config.<section>.<field>=<value>, e.g. '
              '--config.training.n_iters=1000 (tuples, quoted for the shell: "--config.model.ch_mult=(1,2,2)"); a flag '
              'given twice takes its last value. docs/training.md lists the configs and their settings; --helpfull lists every flag.']
    return '\n'.join(lines)


def _last_wins(argv):
    """argv with each --config field (and --config itself) kept at its last occurrence -> (argv, the repeated names).

    absl keeps the last value of a repeated flag, but ml_collections joins the values of a repeated tuple field
    ((1,) then 1,2 would train a (1, 1, 2) network) and refuses a second --config: the last one wins for all.
    """
    groups = []  # (flag name or None, its tokens)
    i = 1
    while i < len(argv):
        match = re.match(r'--?(config(?:\.[\w.]+)?)(=|$)', argv[i])
        take = 2 if match and not match.group(2) and i + 1 < len(argv) and not argv[i + 1].startswith('-') else 1
        groups.append((match.group(1) if match else None, argv[i:i + take]))
        i += take
    last = {name: tokens for name, tokens in groups if name}
    first = {}
    for j, (name, _) in enumerate(groups):
        first.setdefault(name, j)
    # Each at its first place (--config must come before the fields it defines), with its last value.
    kept = [argv[0]] + [t for j, (name, tokens) in enumerate(groups) if name is None or first[name] == j
                        for t in (tokens if name is None else last[name])]
    repeated = sorted({name for j, (name, _) in enumerate(groups) if name and first[name] != j})
    return kept, ['--' + name for name in repeated]


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
    problem = _config_problem(config_file, error) if config_file else None
    if problem:
        return problem
    text = str(error).strip()
    return text.splitlines()[-1] if text else repr(error)


def _config_problem(config_file, error):
    """What is wrong with the config file itself, as '<file>[, line <n>]: <what>: <fix>' (None if it is not the file)."""
    path, colon, arg = config_file.partition(':')

    def here(filename) -> bool:
        return bool(filename) and os.path.abspath(filename) == os.path.abspath(path)

    if path.endswith('.json'):  # a record: read_json's line says what is wrong with it
        return None
    if isinstance(error, SyntaxError) and here(error.filename):
        return f'{path}, line {error.lineno}: {error.msg}: fix the config file'
    frames = [f for f in traceback.extract_tb(error.__traceback__) if here(f.filename)]
    if frames:  # raised by the file's own code: where
        what = 'get_config()' if frames[-1].name == 'get_config' else 'loading it'
        reason = str(error).splitlines()[0] if str(error) else ''
        return (f'{path}, line {frames[-1].lineno}: {what} failed with {type(error).__name__}'
                f'{": " + reason if reason else ""}: fix the config file')
    try:
        module = config_module(path)
    except Exception:  # noqa: BLE001 -- not loadable: the error itself is the best answer
        return None
    get = getattr(module, 'get_config', None)
    if not callable(get):
        return f'{path} defines no get_config(): a config file defines get_config() returning an ml_collections ' \
               f'ConfigDict (see configs/quick_digits.py)'
    params = inspect.signature(get).parameters
    needed = [p.name for p in params.values() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL,
                                                                                       p.VAR_KEYWORD)]
    if colon and not params:
        return f'{path}: get_config() takes no argument, but --config={config_file} passes {arg!r}: drop ":{arg}"'
    if not colon and needed:
        return f'{path}: get_config({needed[0]}) needs an argument: --config={path}:<{needed[0]}>'
    if 'Flag --config must have a value other than None' in str(error):
        return f'{path}: get_config() returned None, not an ml_collections ConfigDict: end it with `return config`'
    return None


def _base_config(config_file):
    """The config a --config=<file> flag names, loaded without overrides (None if it cannot be)."""
    try:
        if config_file.endswith('.json'):
            return FLAGS['config'].parser.parse(config_file)
        return config_flags.config_flags._LoadConfigModule('config', config_file.split(':')[0]).get_config()
    except Exception:  # noqa: BLE001 -- only used to suggest field names
        return None


def check_mode_flags(settings: Settings):
    """Raise one ValueError when the mode's own flags are missing or given to another mode (before the workdir)."""
    if FLAGS.mode == 'import':
        import_checkpoint.check_arguments(settings, FLAGS.import_from, FLAGS.import_level)
        return
    given = [f'--{name}' for name in IMPORT_FLAGS if FLAGS[name].present]
    if given:
        raise ValueError(f'{", ".join(given)} is for --mode=import only, not --mode={FLAGS.mode}: leave it out, or '
                         f'run --mode=import')


def _interrupted(signum, frame):
    """Ctrl-C outside training: one line and exit 130. Every file is written whole or not at all (and eval keeps
    its finished sample batches), so a rerun of the same command carries on."""
    del signum, frame
    sys.stderr.write(f'\nerror: interrupted (Ctrl-C): --mode={FLAGS.mode} stopped; every file it wrote is whole, '
                     f'rerun the same command to carry on\n')
    sys.stderr.flush()
    os._exit(130)


def check_workdir(workdir):
    """Create the workdir and prove it writable, or raise one ValueError naming the problem and the fix."""
    if '://' in workdir:  # os.makedirs would quietly create a local folder named 'gs:'
        raise ValueError(f'--workdir={workdir} is a URL: the workdir must be a file system path every process sees '
                         f'(a local disk, NFS / Filestore, or a mounted bucket); only --compile_cache takes gs://')
    if not workdir.strip():
        raise ValueError('--workdir is empty: give the directory of the run, e.g. --workdir=runs/first')
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f'--workdir={workdir} is a file, not a directory: choose another --workdir')
    reason = writable(workdir)
    if reason:
        raise ValueError(f'--workdir={workdir} cannot be written ({reason}): choose another --workdir')


def output_workdir(workdir) -> str:
    """The workdir the run writes into, checked: --workdir, or for a shipped model its working copy (--output_dir,
    made on first use); ValueError (one line) for a shipped model a mode would change, or --output_dir elsewhere."""
    if not shipped.is_shipped(workdir):
        if FLAGS.output_dir is not None:
            raise ValueError(f'--output_dir is for the runs of a shipped model (pretrained/<name>), and --workdir='
                             f'{workdir} is not one: leave --output_dir out, the run writes into its --workdir')
        check_workdir(workdir)
        return workdir
    if FLAGS.mode in CHECKPOINT_MODES:
        raise ValueError(f'--workdir={workdir} is a shipped model, kept as shipped: --mode={FLAGS.mode} writes '
                         f'checkpoints into its workdir: copy it (cp -r {workdir} runs/mine) and give '
                         f'--workdir=runs/mine')
    out = FLAGS.output_dir or shipped.default_output(workdir)
    if os.path.abspath(out) == os.path.abspath(workdir):
        raise ValueError(f'--output_dir={out} is the shipped model itself, which stays as shipped: give another '
                         f'--output_dir')
    check_workdir(out)
    made, problem = False, None
    if parallel.is_main_process():
        try:
            made = shipped.working_copy(workdir, out)
        except ValueError as e:
            problem = str(e)
    if parallel.any_process(problem is not None):  # the other processes wait for process 0's copy
        raise ValueError(problem or f'process 0 could not make the working copy {out}')
    logging.info('%s is a shipped model and stays as shipped: --mode=%s works in %s, %s (--output_dir=<dir> for '
                 'another place)', workdir, FLAGS.mode, out, 'a copy of it made now' if made else 'its copy')
    return out


def record_settings(settings: Settings, workdir, mode):
    """Write config_<mode>.json once the mode has finished; train and import record with their checkpoints."""
    if mode not in CHECKPOINT_MODES:
        atomic_json(os.path.join(workdir, f'config_{mode}.json'), settings.source)


def _quiet_abandoned_writes(unraisable):
    """sys.unraisablehook that drops the 'Event loop is closed' callbacks of a failed save's abandoned writes.

    After one array of a checkpoint fails to write, Orbax closes its event loop while the other writes are still
    in flight; each then reports the closed loop as a traceback, after the one line that already said it all.
    """
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'):
        sys.__unraisablehook__(unraisable)


def main(argv):
    """Parse the settings, check and lock the workdir, run the mode's job and record its settings (run/records.py)."""
    del argv
    logging.set_verbosity(logging.INFO)
    # Orbax reports every save at INFO and failures with tracebacks from its threads; a failed save reaches
    # the user as one line from the training job instead.
    std_logging.getLogger('absl').addFilter(
        lambda record: record.levelno >= std_logging.CRITICAL or 'orbax' not in record.pathname)
    # Orbax writes through asyncio tasks; asyncio would log their failure as a second traceback.
    std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
    sys.unraisablehook = _quiet_abandoned_writes
    if _repeated:
        logging.info('given more than once, the last value wins: %s', ', '.join(_repeated))
    if _from_record:
        logging.info('no --config: the settings recorded in %s, with the --config.<field> flags on top',
                     _from_record[0])
    if FLAGS.mode != 'train':  # training saves a checkpoint on Ctrl-C (jobs/train.py); the others leave at once
        signal.signal(signal.SIGINT, _interrupted)
    try:
        hosts = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        if FLAGS.distributed or any(v is not None for v in hosts):
            parallel.check_processes(FLAGS.distributed, *hosts)
            parallel.initialize_distributed(*hosts, timeout=FLAGS.distributed_timeout)
        compilation.enable(FLAGS.compile_cache)
        settings = Settings.from_config(FLAGS.config)
        check_mode_flags(settings)
        if FLAGS.mode == 'import' and FLAGS.import_dry_run:  # writes nothing, not even the workdir
            MODES[FLAGS.mode](settings, FLAGS.workdir)
            return
        workdir = output_workdir(FLAGS.workdir)
        with WorkdirLock(workdir, FLAGS.mode):
            MODES[FLAGS.mode](settings, workdir)
            if parallel.is_main_process():  # a run that fails or is refused leaves the earlier record
                record_settings(settings, workdir, FLAGS.mode)
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
