"""The settings boundary: every config field is consumed and checked once, and every setting is used by the code."""
import ast
import dataclasses
import glob
import importlib
import os

import ml_collections
import pytest

from subspace_diffusion.core.likelihood import Tolerance
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.pc import PCConfig
from subspace_diffusion.core.sampling import SamplerConfig
from subspace_diffusion.core.sde import SDE
from subspace_diffusion.models.ncsnpp import Network
from subspace_diffusion.run import settings as settings_module
from subspace_diffusion.run.settings import Settings, field_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
SECTIONS = [settings_module.Data, settings_module.SubspaceSettings, settings_module.Training, settings_module.Optim,
            settings_module.Eval, Network, SDE, SamplerConfig, PCConfig, ODEConfig, Tolerance]


NAMES = {c.__name__ for c in SECTIONS}
# run/data.py cannot import Data (settings.py imports data.py), so its functions take the section as `d`.
CONVENTIONS = {os.path.join('run', 'data.py'): {'d': {'Data'}}}


def _classes(annotation) -> set:
    """The section classes an annotation names: C, module.C, Optional[C] or 'C'."""
    if annotation is None:
        return set()
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode='eval').body
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(annotation)
            if isinstance(n, ast.Name) and n.id in NAMES or isinstance(n, ast.Attribute) and n.attr in NAMES}


def _section_reads(trees: dict, skip=()) -> set:
    """{(section class, field)} read in `trees` ({relative path: module AST}) on an object known to be that section;
    in the files named in `skip`, only the sections' own methods are scanned, and count where something calls them.

    Known: an attribute that holds a section (`settings.eval`, `cfg.pc`, `self.net`: every annotated class field of
    the package that names one), a parameter annotated with a section, a local name assigned one of these
    (`ev = settings.eval`), and `self` in a section's own methods (its __post_init__ checks, it does not use).
    """
    holders = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and _classes(node.annotation):
                holders.setdefault(node.target.id, set()).update(_classes(node.annotation))
    reads = set()

    def typed(expr, env):
        return env.get(expr.id, set()) if isinstance(expr, ast.Name) else \
            holders.get(expr.attr, set()) if isinstance(expr, ast.Attribute) else set()

    def scan(scope, env):
        for node in ast.walk(scope):  # parameters of the scope and of every function nested in it
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                    env[arg.arg] = env.get(arg.arg, set()) | _classes(getattr(arg, 'annotation', None))
        for _ in range(2):  # aliases of aliases
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    env[node.targets[0].id] = env.get(node.targets[0].id, set()) | typed(node.value, env)
        reads.update((c, node.attr) for node in ast.walk(scope) if isinstance(node, ast.Attribute)
                     for c in typed(node.value, env))

    via = {}  # (section, method) -> its reads, for the sections' own methods in the skipped files
    for rel, tree in trees.items():
        skipped = os.path.basename(rel) in skip
        for top in tree.body:
            if isinstance(top, ast.ClassDef) and (not skipped or top.name in NAMES):
                for method in top.body:
                    if isinstance(method, ast.FunctionDef) and method.name != '__post_init__':
                        before = set(reads)
                        scan(method, {**CONVENTIONS.get(rel, {}), 'self': {top.name} & NAMES})
                        if skipped:  # counts only if something calls the method (settings.subspace.train_levels())
                            via[(top.name, method.name)] = reads - before
                            reads.difference_update(via[(top.name, method.name)])
            elif isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) and not skipped:
                scan(top, dict(CONVENTIONS.get(rel, {})))
    for _ in range(2):
        reads.update(*(r for method, r in via.items() if method in reads))
    return reads


def _package_trees() -> dict:
    package = os.path.join(ROOT, 'subspace_diffusion')
    return {os.path.relpath(f, package): ast.parse(open(f).read())
            for f in glob.glob(os.path.join(package, '**', '*.py'), recursive=True)}


@pytest.mark.parametrize('name', CONFIGS)
def test_every_field_of_every_config_becomes_a_setting(name):
    config = importlib.import_module(f'configs.{name}').get_config()
    settings = Settings.from_config(config)  # raises for a field that no setting declares
    assert settings.data.shape[0] == config.data.image_size and len(field_paths(config)) > 90


def test_every_setting_is_read_by_the_code():
    # Each field of each typed section must be read, outside settings.py, on an object that is that section: a
    # setting nothing reads would be a config field that silently does nothing. (A name such as `eps`, `kind` or
    # `T` read on any other object does not count.)
    reads = _section_reads(_package_trees(), skip=('settings.py',))
    unused = [f'{cls.__name__}.{field.name}' for cls in SECTIONS for field in dataclasses.fields(cls)
              if (cls.__name__, field.name) not in reads]
    assert not unused, f'settings that no code reads: {unused}'
    # The scan itself: a common name read on an unknown object is not a read; on an annotated section it is.
    probe = ast.parse('class Holder:\n    eval: Eval\n    pc: PCConfig\n'
                      'def f(x, sde: SDE, settings):\n    ev = settings.eval\n    return x.T, x.eps, ev.batch_size\n'
                      'def g(cfg):\n    return cfg.pc.snr, sde.kind\n')
    assert _section_reads({'probe.py': probe}) == {('Eval', 'batch_size'), ('PCConfig', 'snr')}


def test_a_field_nothing_reads_is_an_error():
    config = importlib.import_module('configs.quick_digits').get_config()
    with config.unlocked():
        config.training.warmup_steps = 10  # a typo'd or stale field in a user's config file
    with pytest.raises(ValueError, match=r'config.training.warmup_steps is not a setting of this project .*remove it'):
        Settings.from_config(config)
    config = importlib.import_module('configs.quick_digits').get_config()
    with config.unlocked():
        del config.eval['likelihood_eps']
    with pytest.raises(ValueError, match='config.eval.likelihood_eps is missing'):
        Settings.from_config(config)


def test_types_are_checked_at_the_boundary():
    config = importlib.import_module('configs.quick_digits').get_config()
    config.training.batch_size = 4
    settings = Settings.from_config(config)
    assert isinstance(settings.training.batch_size, int) and settings.sampling.eps == 1e-5
    # A config file may hold any type (overrides are type-checked by ml_collections, files are not).
    config.optim = ml_collections.ConfigDict({**config.optim.to_dict(), 'lr': 'fast'})
    with pytest.raises(ValueError, match=r"config.optim.lr: must be float, got 'fast'"):
        Settings.from_config(config)
