"""Docs that cannot rot: every main.py / subspace-diffusion command in the README and docs/ names flags that exist,
a config file that loads, config fields that exist with values their types accept and that pass the settings
check (nothing is run); and the Python snippets of the README run (tests/test_api.py)."""
import glob
import os
import re
import shlex

import pytest
from absl import flags
from ml_collections import config_flags

from subspace_diffusion import cli
from subspace_diffusion.run import records
from subspace_diffusion.run.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ml_collections loads config files with importlib's deprecated load_module (its concern, not the docs').
pytestmark = pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
COMMAND = re.compile(r'(?:^|[\s;&|(])(?:(?:\S*/)?python3?\s+(?:\S*/)?main\.py|subspace-diffusion)\s+(.*)$')


def _commands(path):
    """(line number, argument string) of every main.py / console command in the page's code blocks and inline code
    (outside tables: the bad-input tables quote commands that are refused on purpose)."""
    text = open(path).read()
    out = []
    for number, line in enumerate(text.split('\n'), 1):
        if not line.lstrip().startswith('|'):
            out += [(number, m.group(1)) for span in re.findall(r'(?<!`)`([^`]+)`(?!`)', line)
                    for m in [COMMAND.search(span)] if m]
    for block in re.finditer(r'```[^\n]*\n(.*?)```', text, re.S):
        start = text[:block.start()].count('\n') + 2
        lines = block.group(1).split('\n')
        i = 0
        while i < len(lines):
            line, first = lines[i], i
            while line.rstrip().endswith('\\') and i + 1 < len(lines):  # shell continuation lines
                i += 1
                line = line.rstrip()[:-1] + ' ' + lines[i]
            i += 1
            code = line.split(' #')[0] if not line.lstrip().startswith('#') else ''
            match = COMMAND.search(code)
            if match:
                out.append((start + first, match.group(1)))
    return out


CASES = [(os.path.relpath(p, ROOT), n, args) for p in PAGES for n, args in _commands(p)]


def test_the_pages_hold_commands():
    assert len(CASES) >= 20, CASES  # the extraction itself works: the README and docs/ show dozens


@pytest.mark.parametrize('page,line,args', CASES, ids=[f'{p}:{n}' for p, n, _ in CASES])
def test_documented_command_is_valid(page, line, args):
    # Optional parts are written [--flag=value]: checked like the rest.
    tokens = [t.strip('[]') for t in shlex.split(args.replace('$', '')) if t not in ('&&', ';', '|')]
    config_file, overrides, workdir = None, [], None
    for token in tokens:
        if not token.startswith('--'):
            continue
        name, _, value = token[2:].partition('=')
        if name == 'config':
            config_file = value
        elif name == 'workdir':
            workdir = value
        elif name.startswith('config.'):
            overrides.append(token)
        else:
            assert name in cli.FLAGS or (name.startswith('no') and name[2:] in cli.FLAGS), \
                f'{page}:{line}: --{name} is not a flag of main.py'
            if name == 'mode':
                assert value in cli.MODES, f'{page}:{line}: --mode={value} is not a mode ({list(cli.MODES)})'
    if config_file is None:
        # Without --config, the settings record of a workdir in the repository (the shipped model) is the config.
        record = workdir and records.find(os.path.join(ROOT, workdir), {})
        if not record:
            assert not overrides, f'{page}:{line}: --config.<field> flags without --config'
            return
        config_file = os.path.join(workdir, record)
    path = config_file.split(':')[0]
    assert os.path.isfile(os.path.join(ROOT, path)), f'{page}:{line}: --config={config_file} does not exist'
    argv = ['main.py', f'--config={config_file}', *overrides]
    values = flags.FlagValues()
    # config_flags defines the --config.<field> flags it finds in the arguments it is given.
    config_flags.DEFINE_config_file('config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv)
    values['config'].parser = cli.FLAGS['config'].parser  # main.py's, which reads settings records too
    cwd = os.getcwd()
    os.chdir(ROOT)  # configs import their base as configs.<name>
    try:
        values(argv)
        config = values.config
    except Exception as e:  # noqa: BLE001 -- any parse failure is the documented command's fault
        pytest.fail(f'{page}:{line}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else e}')
    finally:
        os.chdir(cwd)
    try:
        Settings.from_config(config)
    except ValueError as e:
        pytest.fail(f'{page}:{line}: the settings check refuses it: {e}')
