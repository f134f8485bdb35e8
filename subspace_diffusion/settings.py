"""Run settings: the ml_collections config, checked once at the boundary into typed, frozen values.

main.py calls `Settings.from_config(config)`; nothing below it reads the config. Every field of every
section is consumed here (a field nothing would read is an error, not silently ignored), each value is
checked for type and range, and the constraints between sections (image size against chain and network,
cutoffs against levels, checkpoint periods against steps per call) are checked together. So bad input
is one line naming the field and the fix, before anything loads or compiles.
"""
import dataclasses
import difflib
from typing import Optional

from subspace_diffusion.conditional import MASKS
from subspace_diffusion.data import DATASETS, dataset_key
from subspace_diffusion.models.mlp import VectorNetwork
from subspace_diffusion.models.ncsnpp import NAMES, Network
from subspace_diffusion.ode_sampling import SOLVERS, ODESamplerConfig
from subspace_diffusion.sampling import SamplerConfig
from subspace_diffusion.sde import SDE
from subspace_diffusion.subspaces import check_cutoffs

CHAIN_KINDS = ('pooling', 'pca', 'patch_pca')
SAMPLING_METHODS = ('pc', 'ode', *SOLVERS)  # 'ode': the adaptive Dormand-Prince solve
ALL_LEVELS = -1  # subspace.train_level value that trains every level of the chain in one run


def _require(ok: bool, field: str, message: str):
    """One-line ValueError naming `config.<field>` unless ok."""
    if not ok:
        raise ValueError(f'config.{field}: {message}')


@dataclasses.dataclass(frozen=True)
class Data:
    """config.data: which images, at which size and range, with which augmentation."""

    dataset: str
    image_size: int
    num_channels: int
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    data_dir: str = ''
    tfds_data_dir: str = ''
    tfrecords_path: str = ''
    category: str = ''

    def __post_init__(self):
        key = dataset_key(self.dataset)
        _require(key in DATASETS, 'data.dataset', f'unknown dataset {self.dataset!r}; use one of {sorted(DATASETS)}')
        object.__setattr__(self, 'dataset', key)
        _require(self.image_size >= 1, 'data.image_size', f'must be >= 1, got {self.image_size}')
        _require(self.num_channels in (1, 3), 'data.num_channels', f'must be 1 or 3, got {self.num_channels}')
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

    def __post_init__(self):
        _require(self.kind in CHAIN_KINDS, 'subspace.kind', f'must be one of {CHAIN_KINDS}, got {self.kind!r}')
        _require(self.levels >= 0, 'subspace.levels', f'must be >= 0 (0 = full space only), got {self.levels}')
        _require(self.factor >= 2, 'subspace.factor', f'must be >= 2, got {self.factor}')
        _require(ALL_LEVELS <= self.train_level <= self.levels, 'subspace.train_level',
                 f'{self.train_level} is not a level of the {self.levels}-level chain: use 0..{self.levels}, or '
                 f'{ALL_LEVELS} to train every level in one run')
        _require(not self.scale_after_pooling or self.kind == 'pooling', 'subspace.scale_after_pooling',
                 f"is the reference's pooling convention; subspace.kind={self.kind!r} needs False")
        for name in ('fit_examples', 'cutoff_num_examples', 'cutoff_batch_size'):
            _require(getattr(self, name) >= 1, f'subspace.{name}', f'must be >= 1, got {getattr(self, name)}')
        _require(self.cutoff_times_num >= 2, 'subspace.cutoff_times_num', f'must be >= 2, got {self.cutoff_times_num}')
        _require(self.cutoff_threshold > 0, 'subspace.cutoff_threshold', f'must be > 0, got {self.cutoff_threshold}')

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

    def __post_init__(self):
        for name in ('batch_size', 'n_iters', 'n_jitted_steps', 'keep_checkpoints', 'snapshot_samples'):
            _require(getattr(self, name) >= 1, f'training.{name}', f'must be >= 1, got {getattr(self, name)}')
        n = self.n_jitted_steps
        for name in ('n_iters', 'log_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
            value = getattr(self, name)
            _require(value >= n and value % n == 0, f'training.{name}',
                     f'{value} is not a multiple of training.n_jitted_steps={n} (steps run {n} per compiled call): '
                     f'use {max(n, value // n * n)}')
        _require(0 < self.eps < 1, 'training.eps', f'must lie in (0, 1), got {self.eps}')
        _require(0 <= self.ema_rate < 1, 'model.ema_rate', f'must lie in [0, 1), got {self.ema_rate}')


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
                 f"{self.optimizer!r} is not supported: use 'Adam'")
        _require(self.lr > 0, 'optim.lr', f'must be > 0, got {self.lr}')
        _require(0 <= self.beta1 < 1, 'optim.beta1', f'must lie in [0, 1), got {self.beta1}')
        _require(self.eps > 0, 'optim.eps', f'must be > 0, got {self.eps}')
        for name in ('weight_decay', 'warmup', 'grad_clip'):
            _require(getattr(self, name) >= 0, f'optim.{name}', f'must be >= 0, got {getattr(self, name)}')


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
    ode_rtol: float
    ode_atol: float
    likelihood_eps: float
    ref_stats_path: str
    ref_split: str
    cond_input_dir: str
    cond_mask: str
    cond_mask_fraction: float

    def __post_init__(self):
        for name in ('batch_size', 'num_samples', 'bpd_num_repeats'):
            _require(getattr(self, name) >= 1, f'eval.{name}', f'must be >= 1, got {getattr(self, name)}')
        _require(self.bpd_num_examples >= 0, 'eval.bpd_num_examples', 'must be >= 0 (0 = the whole split)')
        for name in ('begin_ckpt', 'end_ckpt'):
            _require(getattr(self, name) >= -1, f'eval.{name}', f'must be a step or -1 (latest), got '
                                                                f'{getattr(self, name)}')
        for name in ('bpd_dataset', 'ref_split'):
            _require(getattr(self, name) in ('train', 'test'), f'eval.{name}',
                     f"must be 'train' or 'test', got {getattr(self, name)!r}")
        for name in ('ode_rtol', 'ode_atol'):
            _require(getattr(self, name) > 0, f'eval.{name}', f'must be > 0, got {getattr(self, name)}')
        _require(0 < self.likelihood_eps < 1, 'eval.likelihood_eps', f'must lie in (0, 1), got {self.likelihood_eps}')
        _require(bool(self.folder) and '/' not in self.folder, 'eval.folder', f'must be a folder name, got {self.folder!r}')
        _require(self.cond_mask in MASKS or self.cond_mask.lower().endswith('.png'), 'eval.cond_mask',
                 f'{self.cond_mask!r} is neither a mask name {MASKS} nor a .png file')
        _require(0 < self.cond_mask_fraction < 1, 'eval.cond_mask_fraction',
                 f'must lie in (0, 1), got {self.cond_mask_fraction}')
        object.__setattr__(self, 'level_workdirs', tuple(self.level_workdirs))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """config.sampling: the method (PC, adaptive ODE, Heun, DPM-Solver++) and its settings."""

    method: str
    pc: SamplerConfig  # the PC sampler, and the grid end (eps) and final denoising of every method
    nfe_budget: float  # fixed-step ODE solvers: effective NFE of a sample
    budget_rule: str  # ... how that budget is split over the stages (ode_sampling.py)
    rho: float  # ... Heun's EDM time discretisation

    def __post_init__(self):
        _require(self.method in SAMPLING_METHODS, 'sampling.method',
                 f'must be one of {SAMPLING_METHODS}, got {self.method!r}')
        self.ode_config()  # checks the budget, rule and rho

    def ode_config(self) -> ODESamplerConfig:
        """The fixed-step ODE sampler of these settings (Heun when the method is another)."""
        return ODESamplerConfig(method=self.method if self.method in SOLVERS else 'ode_heun',
                                nfe_budget=self.nfe_budget, budget_rule=self.budget_rule, rho=self.rho,
                                eps=self.pc.eps, denoise=self.pc.denoise)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a run, checked; built from a config by `from_config`."""

    data: Data
    network: Network
    vector_network: VectorNetwork  # the score network of vector (PCA) levels
    sde: SDE
    sampling: Sampling
    subspace: SubspaceSettings
    training: Training
    optim: Optim
    eval: Eval
    seed: int

    def __post_init__(self):
        d, sub = self.data, self.subspace
        if sub.levels and sub.kind != 'pca':
            div = sub.factor ** sub.levels
            _require(d.image_size % div == 0, 'subspace.levels',
                     f'image size {d.image_size} cannot support {sub.levels} {sub.kind} level(s) with factor '
                     f'{sub.factor}: it must be divisible by {sub.factor}^{sub.levels} = {div}; use fewer levels '
                     f'or another data.image_size')
        try:
            object.__setattr__(sub, 'cutoffs', check_cutoffs(sub.cutoffs, sub.levels))
        except ValueError as e:
            raise ValueError(f'config.{e}') from None
        sizes = [d.image_size // sub.factor ** k for k in range(sub.levels + 1)] if sub.kind != 'pca' else [d.image_size]
        for size in sizes:
            _require(size % self.network.min_divisor() == 0, 'model.ch_mult',
                     f'{len(self.network.ch_mult)} resolutions need inputs divisible by {self.network.min_divisor()}, '
                     f'but a level is {size}x{size}: use a shorter ch_mult or another data.image_size')
        if sub.shared_params and sub.kind == 'pca' and sub.levels:
            raise ValueError('config.subspace.shared_params: PCA levels are vectors, served by another network than '
                             'the full-space images: set subspace.shared_params=False')
        if sub.shared_params and len(set(sizes)) > 1:
            _require(self.network.attention_placement == 'depth', 'model.attention_placement',
                     "subspace.shared_params=True runs one network at several resolutions, which needs the same "
                     "attention blocks at each: set --config.model.attention_placement=depth")

    @classmethod
    def from_config(cls, config) -> 'Settings':
        """Check and convert a whole ml_collections config (one-line ValueError on the first problem)."""
        reader = _Reader(config)
        sde = reader.build('sde', SDE, exclude=('T',))
        model_name = reader.value('model', 'name', str)
        _require(model_name.lower() in NAMES, 'model.name', f'{model_name!r} is not one of {NAMES}')
        data = reader.build('data', Data)
        network = reader.build('model', Network, exclude=('centered', 'image_size'),
                               extra={'centered': data.centered, 'image_size': data.image_size})
        pc = reader.build('sampling', SamplerConfig, rename={'n_corrector_steps': 'n_steps_each',
                                                             'denoise': 'noise_removal'})
        vector_network = VectorNetwork.like(network, reader.value('model', 'mlp_width', int),
                                            reader.value('model', 'mlp_blocks', int))
        settings = cls(
            data=data, network=network, vector_network=vector_network, sde=sde,
            sampling=Sampling(method=reader.value('sampling', 'method', str), pc=pc,
                              nfe_budget=reader.value('sampling', 'nfe_budget', float),
                              budget_rule=reader.value('sampling', 'budget_rule', str),
                              rho=reader.value('sampling', 'rho', float)),
            subspace=reader.build('subspace', SubspaceSettings),
            training=reader.build('training', Training, exclude=('ema_rate',),
                                  extra={'ema_rate': reader.value('model', 'ema_rate', float)}),
            optim=reader.build('optim', Optim),
            eval=reader.build('eval', Eval),
            seed=reader.value(None, 'seed', int))
        reader.check_all_read()
        return settings


class _Reader:
    """Reads config fields into dataclasses, checking types and remembering which fields were read."""

    def __init__(self, config):
        self.config = config
        self.read = set()

    def value(self, section: Optional[str], name: str, kind):
        """config.<section>.<name>, checked against `kind` (int, float, bool, str, tuple)."""
        node = self.config if section is None else self.config[section]
        path = name if section is None else f'{section}.{name}'
        if name not in node:
            raise ValueError(f'config.{path} is missing: this config predates the field; add it (see '
                             f'configs/default_cifar10.py)')
        self.read.add(path)
        value = node[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        _require(ok, path, f'must be {kind.__name__}, got {value!r}')
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
                known = sorted(self.read)
                close = difflib.get_close_matches(path, known, n=3)
                raise ValueError(f'config.{path} is not a setting of this project (nothing reads it): remove it'
                                 + (f'; did you mean {", ".join("config." + c for c in close)}?' if close else ''))


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
