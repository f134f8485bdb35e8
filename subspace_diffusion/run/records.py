"""The settings record of a workdir: the config its checkpoints were made with (`config_<mode>.json`).

Training and import write it with the first checkpoint a run saves, once that checkpoint is on disk, so a
run that fails or is refused before saving leaves the workdir as it was. A later run that saves with other
settings (only those the checkpoint check lets through can differ: cutoffs, n_iters, sampling, data, ...)
replaces the record and keeps the replaced one as `config_<mode>_before_step_<S>.json`, the settings of the
checkpoints before step S: the trail of what each checkpoint-writing run asked for. Every checkpoint's JSON
names its record, so the Python API reads the settings of exactly the checkpoint it loads.
"""
import dataclasses
import os
import re
from typing import Optional

import ml_collections
from absl import logging

from subspace_diffusion.formats.files import FileProblem, atomic_json, read_json
from subspace_diffusion.run.settings import Settings, differences

META_KEY = 'settings_record'  # the key of a checkpoint's JSON that names its record
# Where workdirs whose checkpoints name no record (written before records were named) keep their settings.
LEGACY = ('config_train.json', 'config_import.json', 'config_eval.json')


@dataclasses.dataclass(frozen=True)
class Record:
    """What a checkpoint-writing run records: its mode ('train', 'import') and its config as JSON."""

    mode: str
    config: dict

    @classmethod
    def of(cls, settings: Settings, mode: str) -> Optional['Record']:
        """The record of settings checked from a config (None for settings built or changed in code)."""
        return None if settings.source is None else cls(mode, settings.source)

    @property
    def name(self) -> str:
        """The record's file name in the workdir."""
        return f'config_{self.mode}.json'


def _current(path) -> Optional[dict]:
    """The record at `path`, None when absent or unreadable (a damaged record is replaced, not kept)."""
    try:
        return read_json(path, 'settings record', 'it is replaced')
    except FileProblem:
        return None


def due(workdir, record: Record) -> bool:
    """Whether saving a checkpoint with `record` changes the workdir's record."""
    return _current(os.path.join(workdir, record.name)) != record.config


def write(workdir, record: Record, step: int):
    """Make `record` the workdir's record once the checkpoint of `step` (the run's first) is on disk."""
    path = os.path.join(workdir, record.name)
    old = _current(path)
    if old == record.config:
        return
    if old is not None:
        kept = _before(path, step)
        atomic_json(kept, old)
        logging.info('settings differ from those of the earlier checkpoints (%s): %s now holds them, the earlier '
                     'ones are kept in %s', ', '.join(differences(old, record.config)), path, kept)
    atomic_json(path, record.config)


def _before(path, step: int) -> str:
    return f'{path[:-len(".json")]}_before_step_{step}.json'


def read(workdir, name: str, step: Optional[int]) -> dict:
    """The settings of the checkpoint at `step` whose JSON names record `name`: the record, or the kept one of
    the earliest later run that replaced it (step None: the record)."""
    stem = re.escape(name[:-len('.json')])
    kept = (re.fullmatch(stem + r'_before_step_(\d+)\.json', f) for f in os.listdir(workdir))
    later = sorted(int(m.group(1)) for m in kept if m and step is not None and int(m.group(1)) > step)
    path = _before(os.path.join(workdir, name), later[0]) if later else os.path.join(workdir, name)
    return read_json(path, 'settings record', 'pass config= (the config file the checkpoints were made with)')


def find(workdir, meta: dict) -> Optional[str]:
    """The name of the record that the checkpoint whose JSON is `meta` names ({}: no checkpoint), else the first of
    LEGACY the workdir holds; None when it holds neither."""
    name = meta.get(META_KEY)
    if name is not None:
        return name
    return next((n for n in LEGACY if os.path.exists(os.path.join(workdir, n))), None)


def as_config(record: dict) -> ml_collections.ConfigDict:
    """A record as the config it was written from: JSON's lists back to the tuples every config holds."""
    def tuples(value):
        if isinstance(value, dict):
            return {k: tuples(v) for k, v in value.items()}
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value
    return ml_collections.ConfigDict(tuples(record))
