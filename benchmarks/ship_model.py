"""Package the training-length study's last networks as a model anyone can sample without training.

    python benchmarks/ship_model.py --data_dir /usr/share/datasets/fashion-mnist   # a minute, after training_length.py
    python benchmarks/ship_model.py --data_dir <IDX folder> --metric_only   # rewrite only what the metric needs

Writes pretrained/fashion_mnist/: one checkpoint holding the EMA parameters of the full-space 32 px network and of
the 16 px and 8 px level networks (no optimiser state) at the study's last stage, the settings record it names
(configs/fashion_mnist.py with every level in this one workdir), the chain statistics measured on the training
set, the metric's classifier of the evaluations (trained here when the study has none of these images), the test
split's reference statistics in its features and in pixels (means and covariances, the covariances as float32,
no KID features: 2.4 MB), and the manifest shipped.json (run/shipped.py) with what the data's files hold, which
makes it a shipped model. `sd.load('pretrained/fashion_mnist')` samples it; `main.py --mode=eval
--workdir=pretrained/fashion_mnist` evaluates it in a working copy (runs/fashion_mnist), without the data.
"""
import argparse
import glob
import json
import os
import shutil
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import fashion_mnist  # noqa: E402
from subspace_diffusion.evaluation.quality import Scorer  # noqa: E402
from subspace_diffusion.formats.files import atomic_json  # noqa: E402
from subspace_diffusion.run import data, loading, records, shipped, statistics  # noqa: E402
from subspace_diffusion.run.checkpoints import ARCHIVE, Checkpoints  # noqa: E402
from subspace_diffusion.run.experiment import Experiment  # noqa: E402
from subspace_diffusion.run.settings import Settings  # noqa: E402
from subspace_diffusion.run.train_state import checkpoint_meta  # noqa: E402

LEVELS = (0, 1, 2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--study', default=os.path.join(ROOT, 'runs', 'study'), help='training_length.py --workdir')
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir)
    parser.add_argument('--step', type=int, default=None, help='default: the study\'s last archived step')
    parser.add_argument('--out', default=os.path.join(ROOT, 'pretrained', 'fashion_mnist'))
    parser.add_argument('--metric_only', action='store_true',
                        help='rewrite only the reference statistics and the manifest of an existing --out')
    args = parser.parse_args()
    if args.metric_only:
        carry_metric(args.out, Settings.from_config(_with(fashion_mnist.get_config(), args.data_dir, ())))
        return
    study = lambda *p: os.path.join(args.study, *p)  # noqa: E731
    config = fashion_mnist.get_config()
    config.subspace.train_level = -1  # every level's network in this one workdir
    step = args.step or max(int(os.path.basename(p)) for p in glob.glob(study('full', 'checkpoints', 'archive', '*')))
    config.training.n_iters = step
    # Read the three study networks at `step` (config.data.data_dir is only used to measure the statistics).
    reading = Settings.from_config(_with(config, data_dir=args.data_dir,
                                         level_workdirs=tuple(study(d) for d in ('full', 'level_1', 'level_2'))))
    loaded = loading.load_levels(reading, LEVELS, study('full'), step)
    assert all(src['step'] == step for src in loaded.sources.values()), loaded.sources
    if os.path.exists(args.out):
        sys.exit(f'{args.out} exists: move it away to package again')
    tmp = args.out + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    settings = Settings.from_config(config)  # what the record says: the config's own data_dir, no level workdirs
    exp = Experiment.build(settings, LEVELS)
    ckpts = Checkpoints(tmp, async_save=False, record=records.Record.of(settings, 'train'))
    ckpts.save(step, {'ema_params': exp.networks.named(loaded.params)}, checkpoint_meta(exp.networks), ARCHIVE)
    ckpts.wait()
    ckpts.close()
    statistics.load(reading, exp.chain, tmp, write=True)
    for path in glob.glob(study('eval', 'proxy_classifier_*.npz')):
        shutil.copy(path, tmp)
    carry_metric(tmp, reading)
    os.replace(tmp, args.out)
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(args.out, '**'), recursive=True) if os.path.isfile(p))
    print(json.dumps({'out': args.out, 'step': step, 'bytes': size,
                      'params': {k: int(sum(x.size for x in jax.tree.leaves(v)))
                                 for k, v in loaded.params.items()}}, indent=2))


def carry_metric(folder, reading: Settings):
    """Write into `folder` what evaluating the model without its data needs: the test split's reference statistics
    (computed from reading.data with the folder's classifier, trained there when it has none of these images) and
    the manifest recording what the data's files hold."""
    scorer = Scorer(reading, folder)
    ref = scorer.write_reference()
    # Means and covariances serve the Frechet distances; the KID features (5 MB) and float64 covariances (8 MB for
    # the pixels) would triple the model's size. float32 moved the distances of 256 training images by 6e-8.
    arrays = {k: v.astype(np.float32) if k.endswith('_sigma') else v for k, v in ref.items()
              if not k.endswith('_features')}
    with open(scorer.ref_stats_path(), 'wb') as f:
        np.savez_compressed(f, **arrays)
    atomic_json(os.path.join(folder, shipped.MANIFEST), {
        'model': os.path.basename(os.path.normpath(folder)), 'made_by': 'benchmarks/ship_model.py',
        'data': {split: data.source_digest(reading.data, split) for split in ('train', 'test')}})


def _with(config, data_dir, level_workdirs):
    config = config.copy_and_resolve_references()
    config.data.data_dir = data_dir
    config.eval.level_workdirs = level_workdirs
    return config


if __name__ == '__main__':
    main()
