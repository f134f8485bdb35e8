"""The package's shape, checked from its source: layers import only downward; no function takes more than seven
parameters; every public function has a docstring."""
import ast
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'subspace_diffusion')
# layer -> the layers of the package it may import (its own included); api and cli sit on top of everything.
ALLOWED = {
    # compiler.py (jax.jit with the package's XLA options) lies under every layer that compiles a program.
    'compiler.py': set(),
    'core': {'core', 'compiler'},
    'models': {'core', 'models', 'compiler'},
    'metrics': {'metrics', 'compiler'},
    'formats': {'formats'},
    'run': {'core', 'models', 'formats', 'run', 'compiler'},
    'evaluation': {'core', 'models', 'metrics', 'formats', 'run', 'evaluation', 'compiler'},
    'jobs': {'core', 'models', 'metrics', 'formats', 'run', 'evaluation', 'jobs', 'compiler'},
    # The top: the Python API on the layers that load and evaluate a run; the command line on the jobs (never
    # on the API, whose lazy import in __init__.py is the package's only import).
    'api.py': {'core', 'models', 'metrics', 'formats', 'run', 'evaluation', 'api_inputs', 'compiler'},
    'api_inputs.py': {'core', 'formats'},  # the API's argument checks
    'cli.py': {'core', 'models', 'metrics', 'formats', 'run', 'evaluation', 'jobs', 'compiler'},
    '__init__.py': {'api'},
}
MAX_PARAMETERS = 7


def _modules():
    for path in sorted(glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True)):
        rel = os.path.relpath(path, PACKAGE)
        yield rel, ast.parse(open(path).read())


def _imported_layers(tree):
    for node in ast.walk(tree):
        names = [node.module or ''] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split('.')
            if parts[0] == 'subspace_diffusion' and len(parts) > 1:
                yield parts[1]
            if isinstance(node, ast.ImportFrom) and name == 'subspace_diffusion':
                yield from (a.name for a in node.names)


@pytest.mark.parametrize('rel,tree', list(_modules()), ids=lambda v: v if isinstance(v, str) else '')
def test_layers_import_only_downward(rel, tree):
    layer = rel.split(os.sep)[0]
    assert layer in ALLOWED, f'{rel}: a module outside the known layers (add its layer to ALLOWED)'
    imported = set(_imported_layers(tree))
    wrong = sorted(imported - ALLOWED[layer])
    assert not wrong, f'{rel} ({layer}) imports {wrong}'
    if layer in ('api.py', 'cli.py', '__init__.py'):
        assert imported, f'{rel} imports nothing of the package: the import scan missed its imports'


def test_functions_take_at_most_seven_parameters_and_public_ones_say_what_they_do():
    too_many, undocumented = [], []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ('self', 'cls')]
            if len(names) > MAX_PARAMETERS:
                too_many.append(f'{rel}:{node.name} ({len(names)})')
        public = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
        public += [m for c in tree.body if isinstance(c, ast.ClassDef) and not c.name.startswith('_')
                   for m in c.body if isinstance(m, ast.FunctionDef)]
        undocumented += [f'{rel}:{n.name}' for n in public
                         if not n.name.startswith('_') and ast.get_docstring(n) is None]
    assert not too_many, f'functions over {MAX_PARAMETERS} parameters: {too_many}'
    assert not undocumented, f'public functions without a docstring: {undocumented}'
