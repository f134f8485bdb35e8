"""tests/data/reference/train_steps.npz: the reference's own first training steps, for tests/test_reference_training.py.

    bash benchmarks/setup_reference.sh
    /work/torchvenv/bin/python benchmarks/make_training_fixture.py

A tiny NCSN++ of configs/fashion_mnist.py's family (8x8x1, nf 4, ch_mult (1, 2), attention at 4 px, no FIR)
built by the reference (`mutils.create_model`, seeded), trained for STEPS steps by its own train step
(`losses.get_step_fn` with `optimization_manager` and `models.ema`) on fixed images. Warm-up 3 and EMA rate 0.3
put the warm-up's first (zero-lr) step, its ramp and its end, and the EMA's early decay min(rate, (1 + n) / (10 + n))
and its switch to the rate, inside the six steps. The times and noise the reference draws (torch.rand,
torch.randn_like) are recorded as it draws them. Written: the initial state_dict, the images, t and z of
each step (NHWC), the loss of each step, and the trainable parameters and EMA shadow parameters after each; and
tests/data/reference/train_step3.pth, the reference's own checkpoint after CARRY steps (its Adam moments and EMA
mid-run, for the import that carries them on).
"""
import json
import os
import sys
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_training as rt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'tests', 'data', 'reference', 'train_steps.npz')
CARRY = 3
CHECKPOINT = os.path.join(ROOT, 'tests', 'data', 'reference', f'train_step{CARRY}.pth')
NETWORK = dict(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), fir=False, dropout=0.0,
               sigma_min=0.01, sigma_max=25, ema_rate=0.3)
OPTIM = dict(lr=1e-2, warmup=3, grad_clip=1.0)
SIZE, BATCH, STEPS = 8, 4, 6


def _config(config_module):
    config = rt.reference_config(config_module, image_size=SIZE)
    for k, v in NETWORK.items():
        setattr(config.model, k, v)
    for k, v in OPTIM.items():
        setattr(config.optim, k, v)
    return config


def main(checkout='/work/subspace-diffusion'):
    torch.set_num_threads(1)
    _, state, step_fn = rt.build(checkout, 0, _config)
    model = state['model']
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    out = {f'init/{k}': v.numpy().copy() for k, v in model.state_dict().items()}
    images = np.random.default_rng(0).random((STEPS, BATCH, 1, SIZE, SIZE), dtype=np.float32)
    drawn = {'rand': [], 'randn_like': []}
    rand, randn_like = torch.rand, torch.randn_like

    def record(name, fn):
        def draw(*args, **kwargs):
            value = fn(*args, **kwargs)
            drawn[name].append(value.clone())
            return value
        return draw

    loss_values = []
    with mock.patch.object(torch, 'rand', record('rand', rand)), \
            mock.patch.object(torch, 'randn_like', record('randn_like', randn_like)):
        for s in range(STEPS):
            loss_values.append(step_fn(state, torch.from_numpy(images[s])).item())
            params = dict(model.named_parameters())
            for k, shadow in zip(names, state['ema'].shadow_params):
                out[f'model_{s + 1}/{k}'] = params[k].detach().numpy().copy()
                out[f'ema_{s + 1}/{k}'] = shadow.numpy().copy()
            if s + 1 == CARRY:
                rt.save(state, CHECKPOINT)
    eps = 1e-5  # get_sde_loss_fn's default, which get_step_fn keeps
    t = [u * (1.0 - eps) + eps for u in drawn['rand']]  # as the reference's loss turns its draw into t (T = 1)
    out.update(images=images.transpose(0, 1, 3, 4, 2), t=torch.stack(t).numpy(),
               z=torch.stack(drawn['randn_like']).numpy().transpose(0, 1, 3, 4, 2),
               loss=np.asarray(loss_values, np.float32),
               about=np.array(json.dumps({'reference': 'bjing2016/subspace-diffusion losses.get_step_fn',
                                          'torch': torch.__version__, 'network': NETWORK, 'optim': OPTIM,
                                          'image_size': SIZE, 'batch': BATCH, 'steps': STEPS, 'eps': eps,
                                          'checkpoint_after': CARRY,
                                          'command': 'python benchmarks/make_training_fixture.py'})))
    np.savez_compressed(OUT, **out)
    print('wrote', OUT, f'{os.path.getsize(OUT) / 1e6:.2f} MB, losses', np.round(loss_values, 3))


if __name__ == '__main__':
    main(*sys.argv[1:])
