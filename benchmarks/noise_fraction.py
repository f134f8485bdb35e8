"""The share of an evaluation's samples that are noise rather than images: mean neighbour-pixel difference > 0.25.

    python benchmarks/noise_fraction.py runs/fashion/eval/full_space_pc_seed0/step_5000 ...   # seconds

For each eval folder given (its samples_*.npz), the mean absolute difference between horizontally and vertically
neighbouring pixels in [0, 1], summed: smooth garments and digits stay well under 0.25, salt-and-pepper noise
lies far above it. Results: benchmarks/results/noise_fraction.json (the share above the threshold, the median and
90th percentile of the statistic, per folder).
"""
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import save_result  # noqa: E402

THRESHOLD = 0.25


def roughness(samples) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N,) mean |difference| of vertical plus horizontal neighbours, in [0, 1] units."""
    x = samples.astype(np.float32) / 255.
    return np.abs(np.diff(x, axis=1)).mean((1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean((1, 2, 3))


def folder_samples(folder) -> np.ndarray:
    """The uint8 samples (N, H, W, C) of an evaluation's step_<n> folder, its samples_*.npz shards in order."""
    shards = sorted(glob.glob(os.path.join(folder, 'samples_*.npz')))
    if not shards:
        sys.exit(f'error: no samples_*.npz in {folder}: give the step_<n> folder of an evaluation')
    return np.concatenate([np.load(p)['samples'] for p in shards])


def main():
    result = {'command': 'python benchmarks/noise_fraction.py ' + ' '.join(sys.argv[1:]), 'threshold': THRESHOLD,
              'folders': {}}
    for folder in sys.argv[1:]:
        r = roughness(folder_samples(folder))
        result['folders'][folder] = {'samples': len(r), 'noise_share': float(np.mean(r > THRESHOLD)),
                                     'median': float(np.median(r)), 'p90': float(np.percentile(r, 90))}
    save_result('noise_fraction', result)


if __name__ == '__main__':
    main()
