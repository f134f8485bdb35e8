"""Start-up of a TFDS training stream resumed at step s: ours (epoch arithmetic) vs skipping s batches.

    python benchmarks/bench_data_resume.py

CIFAR-10 through `tfds.testing.mock_data` (1,000 mock examples, batch 128 as the paper configs). Time to
the first batch at step 0 and at step 10,000 of data.get_dataset, and, for comparison, of the pipeline
the project used before: the same records shuffled, repeated, batched and `skip(10_000)`-ed.
Results: benchmarks/results/data_resume.json.
"""
import importlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from results import save_result  # noqa: E402
from subspace_diffusion.run import data  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402

STEP, EXAMPLES, BATCH = 10_000, 1_000, 128


def _first_batch(make):
    t0 = time.perf_counter()
    next(iter(make()))
    return time.perf_counter() - t0


def main():
    import tensorflow_datasets as tfds
    d = Settings.from_config(importlib.import_module('configs.cifar10_ve_ncsnpp').get_config()).data
    result = {'command': 'python benchmarks/bench_data_resume.py', 'mock_examples': EXAMPLES, 'batch': BATCH,
              'resume_step': STEP}
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        for step in (0, STEP):
            result[f'first_batch_s_at_step_{step}'] = _first_batch(
                lambda: data.get_dataset(d, 'train', BATCH, shard=data.Shard(start_step=step)))

        def skipping():
            source = data.DATASETS['cifar10'](d, 'train', data.Shard())
            ds = source.records(True, 0).map(source.decode).shuffle(data.SHUFFLE_BUFFER, seed=0).repeat()
            return ds.batch(BATCH, drop_remainder=True).skip(STEP).as_numpy_iterator()
        result[f'first_batch_s_skipping_{STEP}_batches'] = _first_batch(skipping)
    save_result('data_resume', result)


if __name__ == '__main__':
    main()
