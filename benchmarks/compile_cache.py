"""The persistent compilation cache across processes: the README main job and the CIFAR-10 NCSN++ training step.

    python benchmarks/compile_cache.py        # ~6 min on 2 CPU cores

Each job runs twice, as two processes sharing one fresh cache directory (--compile_cache): the first compiles
from nothing, the second finds its programs in the cache. Measured from main.py's own log: the first training
call (compilation included), the whole process, and the cache hits it logs with the compilation time saved.
Jobs: the quick config's training (configs/quick_digits.py, both levels, a snapshot grid from the compiled
subspace sampler at the end; 20 steps) and the CIFAR-10 VE NCSN++ full-space training step (62.8M parameters,
batch 4, one step per call, 2 steps). Results: benchmarks/results/compile_cache.json.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from results import save_result  # noqa: E402

JOBS = {
    'quick_digits training (README command 1, 20 steps)': [
        '--config=configs/quick_digits.py', '--config.training.n_iters=20', '--config.training.snapshot_freq=20',
        '--config.training.log_freq=10'],
    'CIFAR-10 VE NCSN++ training step (batch 4)': [
        '--config=configs/cifar10_ve_ncsnpp.py', '--config.data.dataset=digits', '--config.data.num_channels=3',
        '--config.training.batch_size=4', '--config.training.n_iters=2', '--config.training.n_jitted_steps=1',
        '--config.training.snapshot_freq=2', '--config.training.log_freq=1',
        '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False'],
}


def _seconds(pattern, text):
    match = re.search(pattern, text)
    return None if match is None else int(match.group(1)) * 60 + int(match.group(2))


def main():
    result = {'command': 'python benchmarks/compile_cache.py', 'jobs': {}}
    for name, flags in JOBS.items():
        cache, runs = tempfile.mkdtemp(prefix='cache_'), []
        for attempt in ('first process (cold)', 'second process (cached)'):
            workdir = tempfile.mkdtemp(prefix='run_')
            start = time.perf_counter()
            out = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--mode=train', f'--workdir={workdir}',
                                  f'--compile_cache={cache}', *flags], cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            saved = [float(s) for s in re.findall(r'compilation cache hit: ([\d.]+) s', out.stderr)]
            runs.append({'run': attempt, 'process_wall_s': time.perf_counter() - start,
                         'first_training_call_s': _seconds(r'first call \(compilation included\) took (\d+)m(\d+)s',
                                                           out.stderr),
                         'cache_hits': len(saved), 'compilation_s_saved': sum(saved)})
            print(name, runs[-1], flush=True)
        result['jobs'][name] = runs
    save_result('compile_cache', result)


if __name__ == '__main__':
    main()
