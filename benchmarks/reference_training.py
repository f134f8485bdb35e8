"""The control of issue 35: the PyTorch reference trains the Fashion-MNIST full-space network, resumably.

    bash benchmarks/setup_reference.sh                       # /work/torchvenv + /work/subspace-diffusion
    /work/torchvenv/bin/python benchmarks/reference_training.py --steps 10000 [--threads 1]

The reference's own NCSN++ (`models.ncsnpp` via `mutils.create_model`), its continuous VE loss and train step
(`losses.get_step_fn`: t ~ U(1e-5, 1), 0.5 x the sum over coordinates, lambda = 1), its Adam with warm-up and
clipping (`losses.optimization_manager`) and its EMA (`models.ema`, decay min(rate, (1 + n) / (10 + n))), at the
settings of configs/fashion_mnist.py (nf 16, ch_mult (1, 2, 2), one res block, attention at 8 px, no FIR,
dropout 0, sigma 0.01-25, batch 64, lr 1e-3, warm-up 500, clip 1, EMA 0.999), on the canonical Fashion-MNIST
training images padded 2 px to 32x32 and scaled to [0, 1] as ours (data.centered False). Batches: a fresh
permutation of the 60,000 images per epoch (numpy, seeded); torch's generator is reseeded per step, so a
resumed run draws the same t and noise as an uninterrupted one.

Writes <workdir>/checkpoint.pth (the reference's checkpoint layout {'optimizer', 'model', 'ema', 'step'},
replaced atomically every --save_every steps), <workdir>/archive/checkpoint_<step>.pth at each --archive step,
and <workdir>/log.jsonl (one line per step: loss, wall seconds). Import an archive with our importer:
    python main.py --mode=import --config=configs/fashion_mnist.py --workdir=<dir> --import_from=<archive> \
        --import_level=0 --config.subspace.levels=0 --config.subspace.cutoffs="()"
"""
import argparse
import importlib
import json
import os
import sys
import time
from unittest import mock

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), fir=False, dropout=0.0,
                sigma_min=0.01, sigma_max=25, ema_rate=0.999)  # configs/fashion_mnist.py's network
OPTIM = dict(lr=1e-3, warmup=500, grad_clip=1.0)
BATCH, PADDING = 64, 2


def reference_modules(checkout):
    """Import the reference's modules from its checkout; its CUDA ops are skipped (CPU resampling instead).

    Both projects have a top-level `configs` package: ours (a regular package) would win the import, so it is set
    aside while the reference's modules load, and the reference's is filed under other names afterwards; either
    project's configs can be imported before or after this call.
    """
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == 'configs' or k.startswith('configs.')}
    path = list(sys.path)
    sys.path[:] = [checkout] + [p for p in path if not os.path.isfile(os.path.join(p or '.', 'configs', '__init__.py'))]
    try:
        with mock.patch('torch.utils.cpp_extension.load', lambda *a, **k: None):
            importlib.import_module('models.ncsnpp')  # registers 'ncsnpp' for create_model
        names = ('losses', 'sde_lib', 'models.utils', 'models.ema', 'configs.ve.cifar10_ncsnpp_continuous')
        modules = [importlib.import_module(n) for n in names]
    finally:
        for k in [k for k in sys.modules if k == 'configs' or k.startswith('configs.')]:
            sys.modules['reference_' + k] = sys.modules.pop(k)
        sys.modules.update(ours)
        sys.path[:] = path + [checkout]  # the reference's lazy imports still resolve; ours come first
    return modules


def reference_config(config_module, image_size=32, channels=1):
    """The reference's VE NCSN++ continuous config with configs/fashion_mnist.py's settings."""
    import torch
    config = config_module.get_config()
    config.data.image_size, config.data.num_channels, config.data.centered = image_size, channels, False
    for k, v in SETTINGS.items():
        setattr(config.model, k, v)
    for k, v in OPTIM.items():
        setattr(config.optim, k, v)
    config.training.batch_size = BATCH
    config.device = torch.device('cpu')
    return config


def training_images(data_dir):
    """(60000, 1, 32, 32) float32 in [0, 1]: the canonical training IDX file, padded as data.padding=2."""
    import gzip
    names = [n for n in ('train-images-idx3-ubyte.gz', 'train-images-idx3-ubyte')
             if os.path.exists(os.path.join(data_dir, n))]
    if not names:
        sys.exit(f'no train-images-idx3-ubyte(.gz) in {data_dir}: install Debian\'s dataset-fashion-mnist '
                 '(or apt-get download it and dpkg-deb -x) and pass --data_dir')
    path = os.path.join(data_dir, names[0])
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
        raw = f.read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    images = np.pad(images, ((0, 0), (PADDING,) * 2, (PADDING,) * 2)).astype(np.float32) / 255.
    return images[:, None]


def batch_at(images, step, seed):
    """The (64, 1, 32, 32) batch of a step: positions step*64.. of the epoch-wise permutations."""
    n = len(images)
    start = step * BATCH
    rows = []
    while len(rows) < BATCH:
        epoch, pos = divmod(start + len(rows), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        rows.extend(perm[pos:pos + BATCH - len(rows)])
    return images[np.asarray(rows)]


def build(checkout, seed, make_config=reference_config):
    """(config, state dict as run_lib builds it, train step fn) of the reference; make_config(its VE NCSN++
    continuous config module) -> the config (default: the fashion run's)."""
    import torch
    losses, sde_lib, mutils, ema_lib, config_module = reference_modules(checkout)
    config = make_config(config_module)
    torch.manual_seed(seed)
    model = mutils.create_model(config)
    optimizer = losses.get_optimizer(config, model.parameters())
    ema = ema_lib.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    m = config.model
    sde = sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=config.training.reduce_mean, continuous=config.training.continuous,
                                 likelihood_weighting=config.training.likelihood_weighting)
    return config, state, step_fn


def save(state, path):
    """The reference's checkpoint layout, written to a temporary file and renamed (never half-written)."""
    import torch
    tmp = path + '.tmp'
    torch.save({'optimizer': state['optimizer'].state_dict(), 'model': state['model'].state_dict(),
                'ema': state['ema'].state_dict(), 'step': state['step']}, tmp)
    os.replace(tmp, path)


def restore(state, path):
    """Load a checkpoint written by `save`: weights_only, allowing the numpy float its warm-up leaves as lr."""
    import torch
    allowed = [np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(allowed):
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    state['optimizer'].load_state_dict(loaded['optimizer'])
    state['model'].load_state_dict(loaded['model'], strict=True)
    state['ema'].load_state_dict(loaded['ema'])
    state['step'] = loaded['step']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--reference', default='/work/subspace-diffusion', help='checkout of the reference')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'reference_fashion'))
    parser.add_argument('--data_dir', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--steps', type=int, default=10000)
    parser.add_argument('--archive', default='2500,5000,10000,20000')
    parser.add_argument('--save_every', type=int, default=250)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.join(args.workdir, 'archive'), exist_ok=True)
    images = training_images(args.data_dir)
    config, state, step_fn = build(args.reference, args.seed)
    ckpt, log_path = os.path.join(args.workdir, 'checkpoint.pth'), os.path.join(args.workdir, 'log.jsonl')
    if os.path.exists(ckpt):
        restore(state, ckpt)
    start = state['step']
    kept = []
    if os.path.exists(log_path):  # drop lines past the checkpoint (steps that will be redone)
        with open(log_path) as f:
            kept = [line for line in f if json.loads(line)['step'] < start]
    with open(log_path + '.tmp', 'w') as f:
        f.writelines(kept)
    os.replace(log_path + '.tmp', log_path)
    archives = {int(s) for s in args.archive.split(',') if s}
    n_params = sum(p.numel() for p in state['model'].parameters())
    print(f'reference training: {n_params} parameters, step {start} -> {args.steps}, {args.threads} thread(s)',
          flush=True)
    t_run, log = time.time(), open(log_path, 'a')
    for step in range(start, args.steps):
        torch.manual_seed(args.seed * 1_000_003 + step)
        batch = torch.from_numpy(batch_at(images, step, args.seed))
        t0 = time.time()
        loss = step_fn(state, batch).item()
        wall = time.time() - t0
        log.write(json.dumps({'step': step, 'loss': loss, 'wall_s': round(wall, 4)}) + '\n')
        done = state['step']
        if done % args.save_every == 0 or done == args.steps:
            log.flush()
            save(state, ckpt)
        if done in archives:
            save(state, os.path.join(args.workdir, 'archive', f'checkpoint_{done}.pth'))
        if done % 50 == 0:
            rate = (done - start) / (time.time() - t_run)
            eta = (args.steps - done) / max(rate, 1e-9)
            print(f'step {done}/{args.steps}  loss {loss:.2f}  {rate:.2f} it/s  ETA {eta / 60:.1f} min', flush=True)
    log.close()
    print('done', flush=True)


if __name__ == '__main__':
    main()
