"""The long benchmarks' runner: main.py steps in order, skipping finished ones, with elapsed time and an ETA;
and the read-back of what their evaluations leave (metrics over seeds, sample panels)."""
import collections
import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from subspace_diffusion.formats.images import image_grid  # noqa: E402
from subspace_diffusion.run.progress import fmt_duration  # noqa: E402


SHIPPED = os.path.join(ROOT, 'pretrained', 'fashion_mnist')


def archived(workdir, step: int) -> bool:
    """Whether a training run in `workdir` has archived its checkpoint of `step` (checkpoints/archive/<step>)."""
    return os.path.isdir(os.path.join(workdir, 'checkpoints', 'archive', str(step)))


def share_classifier(eval_dir):
    """Start the evaluation workdir <runs>/<run>/eval with the metric classifier the shipped model or a sibling run's
    evaluation already has (the same training images, the same hash): every run is scored in one classifier's
    features, trained once."""
    os.makedirs(eval_dir, exist_ok=True)
    runs = os.path.dirname(os.path.dirname(eval_dir))
    for path in glob.glob(os.path.join(SHIPPED, 'proxy_classifier_*.npz')) + glob.glob(
            os.path.join(runs, '*', 'eval', 'proxy_classifier_*.npz')):
        target = os.path.join(eval_dir, os.path.basename(path))
        if not os.path.exists(target):
            shutil.copy(path, target)


class Steps:
    """Runs `python main.py ...` steps; each step's log (main.py's stderr) is kept when `logs` names a folder."""

    def __init__(self, plan: dict, logs: str = None):
        self.plan, self.logs, self.done, self.t0 = plan, logs, [], time.perf_counter()

    def log_path(self, name: str) -> str:
        """Where the log of step `name` is kept."""
        return os.path.join(self.logs, re.sub(r'[^\w.-]+', '_', name) + '.log')

    def run(self, name, finished: bool, *args, script: str = 'main.py'):
        """Run `script` (main.py, or a benchmark's own step) with `args` unless `finished`; its progress lines
        (stderr and stdout) pass through, prefixed."""
        left = sum(cost for step, cost in self.plan.items() if step not in self.done and step != name)
        self.done.append(name)
        if finished:
            print(f'[{len(self.done)}/{len(self.plan)}] {name}: done before, skipped', flush=True)
            return
        elapsed = time.perf_counter() - self.t0
        print(f'[{len(self.done)}/{len(self.plan)}] {name} (elapsed {fmt_duration(elapsed)}, then about '
              f'{fmt_duration(left)} of planned work)\n  python {script} {" ".join(args)}', flush=True)
        start = time.perf_counter()
        # main.py logs its progress (steps, it/s, ETA) to stderr: pass both streams through, keep the tail for a failure
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # one `kill` of the runner stops its step too: main.py saves a checkpoint on SIGTERM, so nothing is lost
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
        log = open(self.log_path(name), 'a') if self.logs else None
        tail = collections.deque(maxlen=40)
        try:
            for line in proc.stdout:
                tail.append(line)
                sys.stdout.write('  | ' + line)
                sys.stdout.flush()
                if log:
                    log.write(line)
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if log:
                log.close()
        if code:
            sys.exit(f'step {name!r} failed (exit {code}); rerun the same command to resume:\n{"".join(tail)}')
        print(f'  took {fmt_duration(time.perf_counter() - start)}', flush=True)


def log_seconds(path) -> float:
    """Wall seconds a main.py log covers, from the absl timestamps of its first and last lines (0 if none)."""
    stamps = re.findall(r'^[IWE](\d{4} \d\d:\d\d:\d\d\.\d+)', open(path).read(), re.M)
    if len(stamps) < 2:
        return 0.0
    first, last = (datetime.datetime.strptime(s, '%m%d %H:%M:%S.%f') for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds() % (24 * 3600)


def read_metrics(path) -> dict:
    """An evaluation's metrics.json, with s_per_sample (1 / samples_per_s) added."""
    with open(path) as f:
        m = json.load(f)
    m['s_per_sample'] = 1 / m['samples_per_s']
    return m


def over_seeds(name: str, runs: list, keys) -> dict:
    """{'mean', 'std'} of `keys` over per-seed `runs` (sample standard deviation, ddof=1); prints them for `name`."""
    summary = {'mean': {k: float(np.mean([r[k] for r in runs])) for k in keys},
               'std': {k: float(np.std([r[k] for r in runs], ddof=1)) for k in keys}}
    print(f'{name}: ' + ', '.join(f'{k} {summary["mean"][k]:.4g} +- {summary["std"][k]:.2g}' for k in keys),
          flush=True)
    return summary


def eval_folder(variant: str, seed: int) -> str:
    """The eval.folder of one variant's evaluation at one seed: its name with every run of non-word characters '_'."""
    return re.sub(r'[^\w]+', '_', variant) + f'_seed{seed}'


def joined(panels, gap: int, axis: int = 1) -> np.ndarray:
    """uint8 image arrays (H, W, C) joined along `axis` (1: side by side, 0: stacked) with white gaps of `gap` px."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    space = np.full(shape, 255, np.uint8)
    return np.concatenate([part for panel in panels for part in (space, panel)][1:], axis=axis)


def save_enlarged(image, scale: int, path):
    """Write a uint8 image (H, W, C) to `path` as PNG, each pixel a scale x scale block."""
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST).save(path)


def sample_panels(folders, count: int, ncol: int, gap: int, scale: int, path):
    """The first `count` samples of each eval folder (samples_0.npz) as grids side by side, enlarged, to `path`."""
    panels = []
    for folder in folders:
        with np.load(os.path.join(folder, 'samples_0.npz')) as f:
            panels.append(image_grid(f['samples'][:count] / 255., ncol=ncol))
    save_enlarged(joined(panels, gap), scale, path)
