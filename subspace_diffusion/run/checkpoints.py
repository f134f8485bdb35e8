"""Orbax checkpoints of a run: a frequent preemption slot (keep 1) and a periodic archive (keep N).

Saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it only
once every process has finished, so a run killed mid-save leaves the previous checkpoint whole.
Each checkpoint holds the train state and a small JSON record of what was trained, which is
checked before the state is read, so a config that does not match gets a clear message. A writer given
the run's settings record (run/records.py) names it in every checkpoint's JSON and writes it into the
workdir once its first checkpoint is on disk.
"""
import os
import shutil
from typing import Optional

import jax
import orbax.checkpoint as ocp

from subspace_diffusion.run import parallel, records

PREEMPT, ARCHIVE = 'preempt', 'archive'


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used with this config."""


class SettingsMismatch(CheckpointError):
    """A checkpoint made with other settings; `mismatch` lists them ('<field>: checkpoint <a>, config <b>')."""

    def __init__(self, message: str, mismatch: list):
        super().__init__(message)
        self.mismatch = mismatch


class SaveFailed(CheckpointError):
    """Writing a checkpoint failed (disk full, read-only): the previous checkpoint is intact."""


# Where each recorded setting comes from in the config.
_CONFIG_NAMES = {'sde': 'sde.kind', 'levels': 'subspace.train_level', 'param_keys': 'subspace.shared_params',
                 'level_shapes': 'data.image_size / subspace.levels / subspace.factor',
                 'network.centered': 'data.centered', 'network.image_size': 'data.image_size'}


def setting_differences(recorded: dict, expected: dict) -> list:
    """'model.nf: checkpoint 16, config 32' for every recorded setting that differs (nested records flattened)."""
    out = []
    for key, want in expected.items():
        if key not in recorded:  # older checkpoints record fewer settings
            continue
        if key in ('param_keys', 'level_shapes') and recorded.get('levels') != expected.get('levels'):
            continue  # they follow from the levels, reported once
        if key == 'param_keys' and 'shared' not in recorded[key] + want:
            continue
        have = recorded[key]
        if isinstance(want, dict) and isinstance(have, dict):
            out += [f'{_CONFIG_NAMES.get(f"{key}.{k}", f"model.{k}")}: checkpoint {have.get(k)!r}, config {v!r}'
                    for k, v in want.items() if k in have and have[k] != v]
        elif have != want:
            out.append(f'{_CONFIG_NAMES.get(key, key)}: checkpoint {have!r}, config {want!r}')
    return out


class Checkpoints:
    """The two Orbax managers of a workdir: <workdir>/checkpoints/{preempt,archive}/<step>."""

    def __init__(self, workdir, keep_archive: int = 100, async_save: bool = True, read_only: bool = False,
                 record: Optional[records.Record] = None):
        self.root = os.path.join(os.path.abspath(workdir), 'checkpoints')
        self.read_only = read_only
        self.record = record
        # Set while the workdir's record differs from `record`: the first save is then waited for and recorded.
        self.record_due = record is not None and records.due(workdir, record)
        self._first_saved = None
        # A reader never saves, so it never deletes: no max_to_keep. (Orbax's own read_only mode would log
        # warnings on every construction.)
        keep = {PREEMPT: None, ARCHIVE: None} if read_only else {PREEMPT: 1, ARCHIVE: keep_archive}
        self.managers = {
            kind: ocp.CheckpointManager(os.path.join(self.root, kind), options=ocp.CheckpointManagerOptions(
                max_to_keep=keep[kind], enable_async_checkpointing=async_save and not read_only,
                create=not read_only))
            for kind in (PREEMPT, ARCHIVE)}

    def latest_step(self):
        """Newest step over both slots, or None for a fresh workdir."""
        steps = [m.latest_step() for m in self.managers.values()]
        steps = [s for s in steps if s is not None]
        return max(steps) if steps else None

    def archived_steps(self) -> list:
        """Steps held in the archive, ascending."""
        return sorted(self.managers[ARCHIVE].all_steps())

    def save(self, step: int, state, meta: dict, kind: str = PREEMPT):
        """Start an asynchronous save of `state` (a pytree of global arrays) and `meta` (JSON) at `step`."""
        if self.read_only:
            raise CheckpointError(f'{self.root} was opened for reading only')
        # A write that runs out of space half-way leaves Orbax's writer threads failing noisily: refuse
        # up front when the state could not fit (every process decides together).
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        free = shutil.disk_usage(self.root).free
        if parallel.any_process(free < needed):
            latest = self.latest_step()
            raise SaveFailed(f'no room for the checkpoint of step {step} ({needed / 2 ** 20:.1f} MiB needed, '
                             f'{free / 2 ** 20:.1f} MiB free in {self.root}): '
                             + ('no checkpoint yet' if latest is None else
                                f'the last good checkpoint (step {latest}) is intact')
                             + '; free space, then rerun to resume')
        # On several hosts the two managers' finalisations use the same barrier names: never overlap them.
        for other, manager in self.managers.items():
            if other != kind:
                manager.wait_until_finished()
        if self.record is not None:
            meta = {**meta, records.META_KEY: self.record.name}
        self.managers[kind].save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        if self._first_saved is None:
            self._first_saved = step

    def _manager_for(self, step):
        for kind in (ARCHIVE, PREEMPT):
            if step in self.managers[kind].all_steps():
                return self.managers[kind]
        raise CheckpointError(f'no checkpoint for step {step} in {self.root}; present: '
                              f'{sorted(set().union(*(m.all_steps() for m in self.managers.values())))}')

    def read_meta(self, step: int) -> dict:
        """The JSON record saved with the checkpoint at `step`."""
        manager = self._manager_for(step)
        try:
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001 -- any read failure gets the same remedy
            raise self._unreadable(manager, step, e) from None

    def restore(self, abstract_state, expected_meta: dict, step=None, partial: bool = False):
        """(state, meta) of `step` (default: latest), after checking `meta` against `expected_meta`.

        partial: `abstract_state` names only some entries of the saved state (e.g. {'ema_params': ...}); only
        those are read from disk (the optimiser state of a training checkpoint is never loaded to sample).
        """
        step = self.latest_step() if step is None else step
        meta = self.read_meta(step)
        manager = self._manager_for(step)
        mismatch = setting_differences(meta, expected_meta)
        if mismatch:
            raise SettingsMismatch(f'checkpoint {os.path.join(str(manager.directory), str(step))} was trained with '
                                   f'other settings: ' + '; '.join(mismatch)
                                   + '. Use the settings it was trained with, or a fresh --workdir.', mismatch)
        if partial:
            args = ocp.args.PyTreeRestore(item=abstract_state, partial_restore=True,
                                          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
        else:
            args = ocp.args.StandardRestore(abstract_state)
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=args)).state
        except Exception as e:  # noqa: BLE001
            raise self._unreadable(manager, step, e) from None
        return state, meta

    @staticmethod
    def _unreadable(manager, step, error) -> 'CheckpointError':
        """One line for a checkpoint that Orbax or TensorStore cannot read, whatever their message."""
        text = str(error).strip().splitlines()
        reason = text[0][:160] if text else type(error).__name__
        return CheckpointError(f'checkpoint {os.path.join(str(manager.directory), str(step))} cannot be read '
                               f'({type(error).__name__}: {reason}): move it out of the way to resume from an older '
                               f'one, or use a fresh --workdir')

    def wait(self):
        """Block until pending asynchronous saves are on disk (then write the settings record if it is due)."""
        for m in self.managers.values():
            m.wait_until_finished()
        if self.record_due and self._first_saved is not None:
            if parallel.is_main_process():
                records.write(os.path.dirname(self.root), self.record, self._first_saved)
            self.record_due = False

    def close(self):
        """Finish pending saves and release the managers."""
        for m in self.managers.values():
            m.close()
