"""The long benchmarks' runner: main.py steps in order, skipping finished ones, with elapsed time and an ETA."""
import collections
import datetime
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from subspace_diffusion.run.progress import fmt_duration  # noqa: E402


class Steps:
    """Runs `python main.py ...` steps; each step's log (main.py's stderr) is kept when `logs` names a folder."""

    def __init__(self, plan: dict, logs: str = None):
        self.plan, self.logs, self.done, self.t0 = plan, logs, [], time.perf_counter()

    def log_path(self, name: str) -> str:
        """Where the log of step `name` is kept."""
        return os.path.join(self.logs, re.sub(r'[^\w.-]+', '_', name) + '.log')

    def run(self, name, finished: bool, *args):
        """Run main.py with `args` unless `finished`; its progress lines pass through, prefixed."""
        left = sum(cost for step, cost in self.plan.items() if step not in self.done and step != name)
        self.done.append(name)
        if finished:
            print(f'[{len(self.done)}/{len(self.plan)}] {name}: done before, skipped', flush=True)
            return
        elapsed = time.perf_counter() - self.t0
        print(f'[{len(self.done)}/{len(self.plan)}] {name} (elapsed {fmt_duration(elapsed)}, then about '
              f'{fmt_duration(left)} of planned work)\n  python main.py {" ".join(args)}', flush=True)
        start = time.perf_counter()
        # main.py logs its progress (steps, it/s, ETA) to stderr: pass it through, keep the tail for a failure
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
        log = open(self.log_path(name), 'a') if self.logs else None
        tail = collections.deque(maxlen=40)
        for line in proc.stderr:
            tail.append(line)
            sys.stdout.write('  | ' + line)
            sys.stdout.flush()
            if log:
                log.write(line)
        if log:
            log.close()
        if proc.wait():
            sys.exit(f'step {name!r} failed:\n{"".join(tail)}')
        print(f'  took {fmt_duration(time.perf_counter() - start)}', flush=True)


def log_seconds(path) -> float:
    """Wall seconds a main.py log covers, from the absl timestamps of its first and last lines (0 if none)."""
    stamps = re.findall(r'^[IWE](\d{4} \d\d:\d\d:\d\d\.\d+)', open(path).read(), re.M)
    if len(stamps) < 2:
        return 0.0
    first, last = (datetime.datetime.strptime(s, '%m%d %H:%M:%S.%f') for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds() % (24 * 3600)
