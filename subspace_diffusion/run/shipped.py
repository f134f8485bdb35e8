"""A shipped model (pretrained/<name>): a model folder kept as shipped, which no run writes into.

A folder holding `shipped.json` (benchmarks/ship_model.py writes it) is a shipped model. main.py refuses to train
or import into it, and runs every other mode in a working copy of it (`--output_dir`, default runs/<name>): made
on first use, reused while its checkpoints and settings record are still the shipped ones. The manifest also
records what the model's data hold (`data.source_digest` of each split), so the metric's classifier and the
reference statistics the model carries are found when the data are not here. A working copy keeps the manifest
with `copy_of` naming the folder it came from, which makes the copy an ordinary workdir.
"""
import filecmp
import os
import shutil
from typing import Optional

from subspace_diffusion.formats.files import atomic_json, read_json

MANIFEST = 'shipped.json'
RUNS = 'runs'  # the default output folder's parent, relative to where main.py runs


def manifest(folder) -> dict:
    """The manifest of a model folder ({} when it holds none)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    return read_json(path, 'shipped-model manifest', 'restore it from the repository (git checkout -- <it>)')


def is_shipped(folder) -> bool:
    """Whether `folder` is a shipped model itself (not a working copy of one)."""
    return os.path.isdir(folder) and bool(manifest(folder)) and not manifest(folder).get('copy_of')


def recorded_digest(folder, split: str) -> Optional[str]:
    """What the model's data held in `split` (data.source_digest) as its manifest records it, or None."""
    return manifest(folder).get('data', {}).get(split) if os.path.isdir(folder) else None


def default_output(folder) -> str:
    """runs/<name of the shipped folder>: where its runs work unless --output_dir says otherwise."""
    return os.path.join(RUNS, os.path.basename(os.path.normpath(folder)))


def _model_files(folder) -> list:
    """Relative paths of what makes the model: its checkpoints and the records of their settings (those of the modes
    that write checkpoints: the record of an evaluation in the copy changes nothing)."""
    out = [f for f in os.listdir(folder) if f.startswith(('config_train', 'config_import')) and f.endswith('.json')]
    for root, _, files in os.walk(os.path.join(folder, 'checkpoints')):
        out += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(out)


def _differs(folder, out) -> Optional[str]:
    """The first model file in which `out` is not a copy of `folder` (missing, extra or other bytes), or None."""
    theirs, ours = _model_files(folder), _model_files(out)
    for rel in sorted(set(theirs) ^ set(ours)):
        return f'{rel} {"is missing" if rel in theirs else "is not shipped"}'
    for rel in theirs:
        if not filecmp.cmp(os.path.join(folder, rel), os.path.join(out, rel), shallow=False):
            return f'{rel} differs'
    return None


def working_copy(folder, out) -> bool:
    """Make `out` a working copy of the shipped model `folder` when it is absent or empty (-> True), or check that it
    is one (-> False); ValueError when it holds anything else (its model files changed, or another run)."""
    if os.path.isdir(out) and os.listdir(out):
        if manifest(out).get('copy_of') is None:
            raise ValueError(f'--output_dir={out} holds files but is no working copy of the shipped model {folder}: '
                             f'give another --output_dir')
        problem = _differs(folder, out)
        if problem:
            raise ValueError(f'--output_dir={out} is no longer a copy of the shipped model {folder} ({problem}): '
                             f'run on it with --workdir={out}, or give another --output_dir')
        return False
    os.makedirs(out, exist_ok=True)
    partial = os.path.join(out, '.copy.partial')
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(folder, partial, ignore=shutil.ignore_patterns('.*', MANIFEST))
    for name in os.listdir(partial):
        os.replace(os.path.join(partial, name), os.path.join(out, name))
    os.rmdir(partial)
    # Last: a copy cut short holds no manifest, and is refused rather than taken for a whole one.
    atomic_json(os.path.join(out, MANIFEST), {**manifest(folder), 'copy_of': os.path.abspath(folder)})
    return True
