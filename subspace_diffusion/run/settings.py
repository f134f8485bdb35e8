"""Run settings: the ml_collections config, checked once at the boundary into typed, frozen values.

The entry points (main.py, the Python API) call `Settings.from_config(config)`; nothing below them
reads the config. Every field of every section is consumed here (a field nothing would read is an
error, not silently ignored); every value is checked for its type and, for numbers, against the rule
declared for it in `RULES` (finite, inside its range; tuples element by element); the constraints
between sections (image size against chain and network, cutoffs against levels, checkpoint periods
against steps per call) are checked together. So bad input is one line naming the field and the fix,
before anything loads, compiles or writes.
"""
import ast
import dataclasses
import difflib
import json
import math
from typing import Optional

from subspace_diffusion.core.conditional import MASKS
from subspace_diffusion.core.likelihood import Tolerance
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.core.subspaces import check_cutoffs, check_image_levels
from subspace_diffusion.models.mlp import VectorNetwork
from subspace_diffusion.models.ncsnpp import NAMES, Network, check_input_size
from subspace_diffusion.run.data import DATASETS, LABELLED, dataset_key

CHAIN_KINDS = ('pooling', 'pca', 'patch_pca')
ALL_LEVELS = -1  # subspace.train_level value that trains every level of the chain in one run
TRAINING_FOLDERS = ('checkpoints', 'tensorboard', 'samples')  # what training writes into a workdir
INF = math.inf


def _number(x: float) -> str:
    """A bound as people read it: 2147483647 rather than 2.14748e+09, 0.001 as is."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f'{x:g}'


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a numeric setting may be: finite, within [lo, hi] (an open end where lo_open / hi_open)."""

    lo: float = -INF
    hi: float = INF
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False  # tuple elements that must be integers (scalar int fields are typed already)

    def problem(self, value) -> Optional[str]:
        """Why `value` breaks the rule, or None."""
        if not math.isfinite(value):
            return f'must be a finite number, got {value}'
        if self.integer and not isinstance(value, int):
            return f'must be an integer, got {value}'
        below = value <= self.lo if self.lo_open else value < self.lo
        above = value >= self.hi if self.hi_open else value > self.hi
        if below or above:
            return f'must {"be" if self.hi == INF else "lie in"} {self.describe()}, got {value}'
        return None

    def describe(self) -> str:
        """'[0, 1)', '>= 1', '> 0' ..."""
        if self.hi == INF:
            return f'{">" if self.lo_open else ">="} {_number(self.lo)}'
        return f'{"(" if self.lo_open else "["}{_number(self.lo)}, {_number(self.hi)}{")" if self.hi_open else "]"}'

    def outside(self) -> list:
        """Values just outside the range (for tests that walk every rule)."""
        out = [] if self.lo == -INF else [self.lo if self.lo_open else self.lo - 1]
        out += [] if self.hi == INF else [self.hi if self.hi_open else self.hi + 1]
        return [int(v) if self.integer else v for v in out]


AT_LEAST_1, AT_LEAST_0, COUNT = Rule(1), Rule(0), Rule(1, integer=True)
POSITIVE, UNIT_OPEN, FRACTION = Rule(0, lo_open=True), Rule(0, 1, True, True), Rule(0, 1, hi_open=True)

# Every numeric field of the config and its rule (tuple fields: the rule of each element). A numeric field
# missing here is refused (tests/test_settings.py walks every one of every config with NaN, inf, -1 and
# values just outside its range).
RULES = {
    'seed': Rule(0, 2 ** 31 - 1),
    'data.image_size': Rule(1, 4096), 'data.num_channels': Rule(1, 3), 'data.padding': AT_LEAST_0,
    'sde.sigma_min': POSITIVE, 'sde.sigma_max': POSITIVE, 'sde.beta_min': AT_LEAST_0, 'sde.beta_max': POSITIVE,
    'model.dropout': FRACTION, 'model.fourier_scale': POSITIVE, 'model.ema_rate': FRACTION,
    'model.nf': Rule(4), 'model.ch_mult': COUNT, 'model.num_res_blocks': AT_LEAST_1,
    'model.attn_resolutions': COUNT, 'model.fir_kernel': AT_LEAST_0, 'model.init_scale': AT_LEAST_0,
    'model.mlp_width': Rule(4), 'model.mlp_blocks': AT_LEAST_1, 'model.num_classes': AT_LEAST_0,
    'training.label_dropout': FRACTION, 'sampling.guidance': AT_LEAST_0, 'eval.labels': Rule(0, integer=True),
    'training.batch_size': AT_LEAST_1, 'training.n_iters': AT_LEAST_1, 'training.n_jitted_steps': AT_LEAST_1,
    'training.eps': UNIT_OPEN, 'training.keep_checkpoints': AT_LEAST_1, 'training.snapshot_samples': AT_LEAST_1,
    'training.snapshot_freq': AT_LEAST_1, 'training.log_freq': AT_LEAST_1,
    'training.snapshot_freq_for_preemption': AT_LEAST_1,
    'optim.lr': POSITIVE, 'optim.beta1': FRACTION, 'optim.eps': POSITIVE,
    'optim.weight_decay': AT_LEAST_0, 'optim.warmup': AT_LEAST_0, 'optim.grad_clip': AT_LEAST_0,
    'sampling.num_steps': Rule(2), 'sampling.snr': POSITIVE, 'sampling.n_steps_each': AT_LEAST_1,
    'sampling.eps': UNIT_OPEN, 'sampling.cond_langevin_steps': AT_LEAST_0, 'sampling.cond_snr': POSITIVE,
    'sampling.nfe_budget': Rule(2), 'sampling.rho': POSITIVE,
    'eval.begin_ckpt': Rule(-1), 'eval.end_ckpt': Rule(-1), 'eval.batch_size': AT_LEAST_1,
    'eval.num_samples': Rule(2), 'eval.bpd_num_repeats': AT_LEAST_1, 'eval.bpd_num_examples': AT_LEAST_0,
    'eval.ode_rtol': UNIT_OPEN, 'eval.ode_atol': UNIT_OPEN, 'eval.ode_max_steps': AT_LEAST_1, 'eval.likelihood_eps': UNIT_OPEN,
    'eval.cond_mask_fraction': UNIT_OPEN,
    'subspace.levels': AT_LEAST_0, 'subspace.factor': Rule(2), 'subspace.cutoffs': UNIT_OPEN,
    'subspace.fit_examples': AT_LEAST_1, 'subspace.train_level': Rule(ALL_LEVELS),
    'subspace.cutoff_times_num': Rule(2), 'subspace.cutoff_num_examples': AT_LEAST_1,
    'subspace.cutoff_batch_size': AT_LEAST_1, 'subspace.cutoff_threshold': POSITIVE,
}


# Fields added after workdirs were recorded, and the value that means what a run did before them: a settings record
# (run/records.py) or config written before them lacks them and reads as that value, so it loads as it did.
ADDED_FIELDS = {'model.num_classes': 0, 'training.label_dropout': 0.0, 'sampling.guidance': 0.0, 'eval.labels': (),
                'subspace.class_stats': False}


def _require(ok: bool, field: str, message: str):
    """One-line ValueError naming `config.<field>` unless ok."""
    if not ok:
        raise ValueError(f'config.{field}: {message}')


def _choice(value: str, allowed, field: str):
    _require(value in allowed, field, f'must be one of {tuple(allowed)}, got {value!r}')


def _output_folder(name: str, field: str):
    """An output folder setting: one folder name inside the workdir, none of the folders training writes."""
    _require(name not in ('', '.', '..') and '/' not in name and '\\' not in name, field,
             f'must be one folder name inside the workdir (no "/", not "." or ".."), got {name!r}')
    _require(name not in TRAINING_FOLDERS, field,
             f'{name!r} is a folder training writes ({", ".join(TRAINING_FOLDERS)}): choose another name')


@dataclasses.dataclass(frozen=True)
class Data:
    """config.data: which images, at which size and range, with which augmentation."""

    dataset: str
    image_size: int
    num_channels: int
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    padding: int = 0  # zero pixels on each side, inside image_size (MNIST-style 28 px sets: 2, to 32 px)
    data_dir: str = ''
    tfds_data_dir: str = ''
    tfrecords_path: str = ''
    category: str = ''

    def __post_init__(self):
        key = dataset_key(self.dataset)
        _require(key in DATASETS, 'data.dataset', f'unknown dataset {self.dataset!r}; use one of {sorted(DATASETS)}')
        object.__setattr__(self, 'dataset', key)
        _require(self.num_channels in (1, 3), 'data.num_channels', f'must be 1 or 3, got {self.num_channels}')
        _require(self.image_size - 2 * self.padding >= 1, 'data.padding',
                 f'{self.padding} pixels on each side leave nothing of a {self.image_size}-pixel image: use less')
        _require(key != 'folder' or bool(self.data_dir), 'data.data_dir',
                 "dataset 'folder' needs the folder of images: --config.data.data_dir=PATH")
        _require(key != 'lsun' or bool(self.category), 'data.category',
                 "dataset 'lsun' needs a category, e.g. --config.data.category=church_outdoor")
        _require(key != 'ffhq' or bool(self.tfrecords_path), 'data.tfrecords_path',
                 "dataset 'ffhq' reads score-SDE TFRecords: --config.data.tfrecords_path=GLOB")

    @property
    def shape(self) -> tuple:
        """Per-example (H, W, C)."""
        return (self.image_size, self.image_size, self.num_channels)


@dataclasses.dataclass(frozen=True)
class SubspaceSettings:
    """config.subspace: the chain, its cutoffs, which levels train, and the cutoff analysis."""

    kind: str
    levels: int
    factor: int
    cutoffs: tuple
    stats_path: str
    fit_examples: int
    scale_after_pooling: bool
    train_level: int
    train_from_cutoff: bool
    shared_params: bool
    cutoff_times_num: int
    cutoff_num_examples: int
    cutoff_batch_size: int
    cutoff_threshold: float
    class_stats: bool = False  # lifts of labelled samples from their class's statistics

    def __post_init__(self):
        _choice(self.kind, CHAIN_KINDS, 'subspace.kind')
        _require(self.train_level <= self.levels, 'subspace.train_level',
                 f'{self.train_level} is not a level of the {self.levels}-level chain: use 0..{self.levels}, or '
                 f'{ALL_LEVELS} to train every level in one run')
        _require(not self.scale_after_pooling or self.kind == 'pooling', 'subspace.scale_after_pooling',
                 f"is the reference's pooling convention; subspace.kind={self.kind!r} needs False")
        try:
            object.__setattr__(self, 'cutoffs', check_cutoffs(self.cutoffs, self.levels))
        except ValueError as e:
            raise ValueError(f'config.{e}') from None

    def train_levels(self) -> tuple:
        """The levels a training run trains: train_level, or all of them for -1."""
        return tuple(range(self.levels + 1)) if self.train_level == ALL_LEVELS else (self.train_level,)


@dataclasses.dataclass(frozen=True)
class Training:
    """config.training (and config.model.ema_rate): the optimisation loop, its checkpoints and logs."""

    batch_size: int
    n_iters: int
    n_jitted_steps: int
    eps: float
    keep_checkpoints: int
    snapshot_samples: int
    snapshot_freq: int
    log_freq: int
    snapshot_freq_for_preemption: int
    snapshot_sampling: bool
    likelihood_weighting: bool
    reduce_mean: bool
    ema_rate: float
    label_dropout: float = 0.0  # class-conditional models: share of labels dropped (classifier-free guidance)

    def __post_init__(self):
        n = self.n_jitted_steps
        for name in ('n_iters', 'log_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
            value = getattr(self, name)
            _require(value >= n and value % n == 0, f'training.{name}',
                     f'{value} is not a multiple of training.n_jitted_steps={n} (steps run {n} per compiled call): '
                     f'use {max(n, value // n * n)}')


@dataclasses.dataclass(frozen=True)
class Optim:
    """config.optim: Adam(W) with linear warmup and global-norm clipping."""

    optimizer: str
    lr: float
    beta1: float
    eps: float
    weight_decay: float
    warmup: int
    grad_clip: float

    def __post_init__(self):
        _require(self.optimizer.lower() in ('adam', 'adamw'), 'optim.optimizer',
                 f"{self.optimizer!r} is not supported: use 'Adam' or 'AdamW'")


@dataclasses.dataclass(frozen=True)
class Eval:
    """config.eval: what --mode=eval, fid_stats, inpaint and colorize do."""

    inception_weights: str
    begin_ckpt: int
    end_ckpt: int
    level_workdirs: tuple
    use_subspace: bool
    folder: str
    batch_size: int
    enable_sampling: bool
    num_samples: int
    enable_bpd: bool
    bpd_dataset: str
    bpd_num_repeats: int
    bpd_num_examples: int
    tolerance: Tolerance  # eval.ode_rtol, ode_atol, ode_max_steps: the probability-flow ODE (bits/dim, adaptive sampler)
    likelihood_eps: float
    ref_stats_path: str
    ref_split: str
    cond_input_dir: str
    cond_mask: str
    cond_mask_fraction: float
    cond_folder: str  # '' = the mode's name
    labels: tuple = ()  # class-conditional models: the classes sampled in turn (() = every class)

    def __post_init__(self):
        for name in ('bpd_dataset', 'ref_split'):
            _choice(getattr(self, name), ('train', 'test'), f'eval.{name}')
        _output_folder(self.folder, 'eval.folder')
        if self.cond_folder:
            _output_folder(self.cond_folder, 'eval.cond_folder')
        _require(self.cond_mask in MASKS or self.cond_mask.lower().endswith('.png'), 'eval.cond_mask',
                 f'{self.cond_mask!r} is neither a mask name {MASKS} nor a .png file')
        _require(all(isinstance(d, str) for d in self.level_workdirs), 'eval.level_workdirs',
                 f'must be a tuple of workdir paths (index = level), got {self.level_workdirs!r}')


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a run, checked; built from a config by `from_config`."""

    data: Data
    network: Network
    vector_network: VectorNetwork  # the score network of vector (PCA) levels
    sde: SDE
    sampling: SamplerConfig
    subspace: SubspaceSettings
    training: Training
    optim: Optim
    eval: Eval
    seed: int
    # The config these settings were checked from, as JSON (what a workdir's record keeps, run/records.py); not
    # an init field, so settings changed in code (dataclasses.replace) carry None, never a stale config.
    source: Optional[dict] = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        d, sub = self.data, self.subspace
        if sub.levels and sub.kind != 'pca':
            try:
                check_image_levels(d.shape, sub.levels, sub.factor, sub.kind)
            except ValueError as e:
                raise ValueError(f'config.subspace.levels: {e}') from None
        sizes = [d.image_size // sub.factor ** k for k in range(sub.levels + 1)] if sub.kind != 'pca' else [d.image_size]
        for size in sizes:
            try:
                check_input_size((1, size, size, d.num_channels), self.network)
            except ValueError as e:
                raise ValueError(f'config.model.ch_mult: a level is {size}x{size}: {e}') from None
        if sub.shared_params and sub.kind == 'pca' and sub.levels:
            raise ValueError('config.subspace.shared_params: PCA levels are vectors, served by another network than '
                             'the full-space images: set subspace.shared_params=False')
        self._check_classes()
        if sub.shared_params and len(set(sizes)) > 1:
            _require(self.network.attention_placement == 'depth', 'model.attention_placement',
                     "subspace.shared_params=True runs one network at several resolutions, which needs the same "
                     "attention blocks at each: set --config.model.attention_placement=depth")

    def _check_classes(self):
        """Class labels, guidance and per-class statistics only for a class-conditional network of labelled data."""
        classes, labels = self.network.num_classes, self.eval.labels
        _require(not classes or self.data.dataset in LABELLED, 'model.num_classes',
                 f'{classes} classes need a dataset with labels ({", ".join(LABELLED)}); {self.data.dataset!r} has '
                 f'none: set model.num_classes=0')
        unconditional = 'the model is unconditional (model.num_classes=0): train a class-conditional one ' \
                        '(--config.model.num_classes=10) or'
        _require(not self.sampling.guidance or classes, 'sampling.guidance',
                 f'{unconditional} leave sampling.guidance at 0, got {self.sampling.guidance:g}')
        _require(not labels or classes, 'eval.labels', f'{unconditional} leave eval.labels empty, got {labels}')
        _require(all(y < classes for y in labels), 'eval.labels',
                 f'{max(labels, default=0)} is not a class of the model: use classes 0..{classes - 1}')
        _require(not self.subspace.class_stats or classes, 'subspace.class_stats',
                 f'{unconditional} leave subspace.class_stats False')

    @classmethod
    def from_config(cls, config) -> 'Settings':
        """Check and convert a whole ml_collections config (one-line ValueError on the first problem)."""
        reader = _Reader(config)
        model_name = reader.value('model', 'name', str)
        _require(model_name.lower() in NAMES, 'model.name', f'{model_name!r} is not one of {NAMES}')
        data = reader.build('data', Data)
        network = reader.build('model', Network, exclude=('centered', 'image_size'),
                               extra={'centered': data.centered, 'image_size': data.image_size})
        vector_network = VectorNetwork.like(network, reader.value('model', 'mlp_width', int),
                                            reader.value('model', 'mlp_blocks', int))
        ev = reader.build('eval', Eval, exclude=('tolerance',), extra={'tolerance': Tolerance(
            reader.value('eval', 'ode_rtol', float), reader.value('eval', 'ode_atol', float),
            reader.value('eval', 'ode_max_steps', int))})
        settings = cls(
            data=data, network=network, vector_network=vector_network, sde=_sde(reader),
            sampling=_sampler(reader, ev.tolerance), subspace=reader.build('subspace', SubspaceSettings),
            training=reader.build('training', Training, exclude=('ema_rate',),
                                  extra={'ema_rate': reader.value('model', 'ema_rate', float)}),
            optim=reader.build('optim', Optim), eval=ev, seed=reader.value(None, 'seed', int))
        reader.check_all_read()
        object.__setattr__(settings, 'source', json.loads(config.to_json_best_effort()))
        return settings


def _sde(reader) -> SDE:
    try:
        return reader.build('sde', SDE, exclude=('T',))
    except ValueError as e:
        raise ValueError(e if str(e).startswith('config.') else f'config.sde: {e}') from None


def _sampler(reader, tolerance: Tolerance) -> SamplerConfig:
    """config.sampling as the sampler factory's config (the adaptive tolerances come from config.eval)."""
    return SamplerConfig(method=reader.value('sampling', 'method', str), eps=reader.value('sampling', 'eps', float),
                         denoise=reader.value('sampling', 'noise_removal', bool),
                         guidance=reader.value('sampling', 'guidance', float),
                         pc=reader.build('sampling', PCConfig, rename={'n_corrector_steps': 'n_steps_each'}),
                         ode=reader.build('sampling', ODEConfig), tolerance=tolerance)


class _Reader:
    """Reads config fields into dataclasses, checking types and rules and remembering which fields were read."""

    def __init__(self, config):
        self.config = config
        self.read = set()

    def value(self, section: Optional[str], name: str, kind):
        """config.<section>.<name>, checked against `kind` (int, float, bool, str, tuple) and its rule in RULES."""
        if section is not None and section not in self.config:  # e.g. another project's settings record
            raise ValueError(f'config.{section} is missing: not a config of this project (see '
                             f'configs/default_cifar10.py)')
        node = self.config if section is None else self.config[section]
        path = name if section is None else f'{section}.{name}'
        if name not in node and path in ADDED_FIELDS:
            self.read.add(path)
            return ADDED_FIELDS[path]
        if name not in node:
            raise ValueError(f'config.{path} is missing: this config predates the field; add it (see '
                             f'configs/default_cifar10.py)')
        self.read.add(path)
        value = node[name]
        if kind is float and _is_number(value):
            value = float(value)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        _require(ok, path, f'must be {kind.__name__}, got {value!r}')
        if kind is tuple and path in RULES:
            text = next((v for v in value if not _is_number(v)), None)
            _require(text is None, path, f'must be a tuple of numbers, got {value!r}: {_not_a_number(text, path)}')
        numbers = [value] if kind in (int, float) else [v for v in value if _is_number(v)] if kind is tuple else []
        if numbers:
            if path not in RULES:
                raise ValueError(f'config.{path}: numeric setting without a declared rule (settings.RULES)')
            for v in numbers:
                problem = RULES[path].problem(v)
                _require(problem is None, path, f'{problem}' + (f' (element of {value!r})' if kind is tuple else ''))
        return value

    def build(self, section, cls, exclude=(), extra=None, rename=None):
        """cls(**fields) from config.<section>: each dataclass field from the config field of the same name."""
        rename = rename or {}
        values = dict(extra or {})
        for field in dataclasses.fields(cls):
            if field.name in exclude:
                continue
            kind = field.type if field.type in (int, float, bool, str, tuple) else float  # Optional[float]
            values[field.name] = self.value(section, rename.get(field.name, field.name), kind)
        return cls(**values)

    def check_all_read(self):
        """Every field of the config was consumed: one that nothing reads would be silently ignored."""
        for path in _leaf_paths(self.config):
            if path not in self.read:
                close = difflib.get_close_matches(path, sorted(self.read), n=3)
                raise ValueError(f'config.{path} is not a setting of this project (nothing reads it): remove it'
                                 + (f'; did you mean {", ".join("config." + c for c in close)}?' if close else ''))


def _not_a_number(element, path: str) -> str:
    """What to say of a non-number in a numeric tuple; a tuple quoted twice on a command line arrives as one string."""
    try:
        meant = ast.literal_eval(element) if isinstance(element, str) else None
    except (ValueError, SyntaxError):
        meant = None
    if isinstance(meant, tuple) and all(_is_number(v) for v in meant):
        return f'the tuple arrived as the text {element!r} (quoted twice?): write "--config.{path}={element}" (one pair of quotes, for the shell)'
    return f'{element!r} is not a number: give --config.{path} numbers only'


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _leaf_paths(config, prefix=''):
    for key in config.keys():
        value = config[key]
        path = f'{prefix}{key}'
        if hasattr(value, 'keys') and not isinstance(value, dict):
            yield from _leaf_paths(value, path + '.')
        else:
            yield path


def field_paths(config) -> list:
    """Every leaf field of a config as 'section.name' (what --config.<path>=... can set)."""
    return list(_leaf_paths(config))


def close_fields(path: str, config) -> list:
    """Up to three config fields whose names are close to `path` (for unknown --config.<path> flags)."""
    paths = field_paths(config)
    close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
    leaf = path.rsplit('.', 1)[-1]
    close += [p for p in paths if p.rsplit('.', 1)[-1] == leaf and p not in close]
    return close[:3]


def differences(old: dict, new: dict, prefix: str = '') -> list:
    """Sorted dotted paths whose values differ between two nested dicts (records of settings)."""
    out = []
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f'{prefix}{key}.')
        elif a != b:
            out.append(f'{prefix}{key}')
    return sorted(out)
