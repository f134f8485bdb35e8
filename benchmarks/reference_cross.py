"""Issue 35's bisection: our training step fed the reference run's own initial weights, batches, times and noise.

    /work/torchvenv/bin/python benchmarks/reference_cross.py [--steps 2500] [--compare 1000] [--seed 0]

The reference run of benchmarks/reference_training.py (--seed) draws its initial weights from torch's generator,
its batches from a seeded permutation and, per step, t and z after torch.manual_seed(seed * 1_000_003 + step).
This driver rebuilds exactly those (the reference's model, loss and generator, no training of theirs) and feeds
them to our compiled train step (jobs/train.make_train_step, Experiment.loss with draws=), so the only thing that
differs from the reference's run is the code of the step. For the first --compare steps the reference's own step
runs beside it on the same inputs: the loss of both at every step, and the parameters' and EMA's relative
distance at steps 1, 3, 10, 30, 100, 300, 1000 (float32 rounding grows through Adam; a defect shows as a jump,
not as growth). At --steps the network is written as an importable workdir (<out>/full, our checkpoint of its raw
and EMA weights), scored by the same evaluation as the control's (benchmarks/reference_control.py).
Resumable: our train state is saved every --save_every steps (<out>/state.npz, replaced atomically).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_training as rt  # noqa: E402
from reference_init import as_ours, full_space  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
COMPARED_AT = (1, 3, 10, 30, 100, 300, 1000)
EPS = 1e-5  # the reference loss's smallest time: t = u (T - eps) + eps, T = 1


def draws(images, step, seed):
    """(torch batch, our batch {'images', 't', 'z'} NHWC) of the reference run's step `step`, as it draws them."""
    import torch
    torch.manual_seed(seed * 1_000_003 + step)
    batch = torch.from_numpy(rt.batch_at(images, step, seed))
    u, z = torch.rand(batch.shape[0]), torch.randn_like(batch)
    return batch, {'images': batch.numpy().transpose(0, 2, 3, 1), 't': (u * (1 - EPS) + EPS).numpy(),
                   'z': z.numpy().transpose(0, 2, 3, 1)}


def distance(ours, theirs) -> float:
    """Relative L2 distance of two parameter trees."""
    import jax
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ours)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(theirs)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--reference', default='/work/subspace-diffusion')
    parser.add_argument('--data_dir', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'cross'))
    parser.add_argument('--steps', type=int, default=2500)
    parser.add_argument('--compare', type=int, default=1000, help='steps run beside the reference\'s own step')
    parser.add_argument('--save_every', type=int, default=250)
    parser.add_argument('--seed', type=int, default=0, help='the --seed of the reference run')
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    _, ref, ref_step = rt.build(args.reference, args.seed)
    import jax
    from subspace_diffusion.jobs import train
    from subspace_diffusion.jobs.import_checkpoint import _write
    from subspace_diffusion.run import parallel, train_state
    settings, exp, layout = full_space()
    tx = train_state.make_optimizer(settings.optim, exp.networks.param_keys)

    def to_ours(state_dict):
        return {'level_0': as_ours(state_dict, layout)}

    params = to_ours(ref['model'].state_dict())
    state = train_state.TrainState(step=np.int32(0), params=params, ema_params=params, opt_state=tx.init(params))
    saved, log_path = os.path.join(args.out, 'state.npz'), os.path.join(args.out, 'log.jsonl')
    start = 0
    if os.path.exists(saved):
        leaves, treedef = jax.tree.flatten(state)
        with np.load(saved) as f:
            state = jax.tree.unflatten(treedef, [f[str(i)] for i in range(len(leaves))])
        start = int(state.step)
    if start < args.compare and start:
        sys.exit(f'{saved} stops at step {start}, inside the --compare steps: delete it to redo the comparison')
    mesh = parallel.make_mesh()

    def loss_fn(p, batch, key, train):
        return exp.loss(p, batch['images'], key, train, draws={0: (batch['t'], batch['z'])})

    step_fn = train.make_train_step(loss_fn, tx, mesh, train_state.learning_rate(settings.optim),
                                    settings.training.ema_rate, settings.seed)
    state = jax.device_put(state, parallel.replicated(mesh))
    images = rt.training_images(args.data_dir)
    names = [k for k, q in ref['model'].named_parameters() if q.requires_grad]
    kept = [line for line in open(log_path) if json.loads(line)['step'] < start] if os.path.exists(log_path) else []
    log = open(log_path, 'w')
    log.writelines(kept)
    print(f'cross run: step {start} -> {args.steps}, the reference\'s own step beside ours for {args.compare}',
          flush=True)
    t0 = time.time()
    for s in range(start, args.steps):
        batch, ours_batch = draws(images, s, args.seed)
        record = {'step': s}
        if s < args.compare:
            torch.manual_seed(args.seed * 1_000_003 + s)  # its step redraws the same t and z
            record['reference_loss'] = ref_step(ref, batch).item()
        state, metrics = step_fn(state, jax.tree.map(lambda a: parallel.global_batch(a[None], mesh, 1), ours_batch))
        record['loss'] = float(metrics['loss'][0])
        done = s + 1
        if done <= args.compare and done in COMPARED_AT + (args.compare,):
            theirs = ref['model'].state_dict()
            ema = {**theirs, **dict(zip(names, ref['ema'].shadow_params))}
            got = jax.device_get(state)
            record.update(params_distance=distance(got.params, to_ours(theirs)),
                          ema_distance=distance(got.ema_params, to_ours(ema)))
            print(f'step {done}: loss {record["loss"]:.4f} (reference {record["reference_loss"]:.4f}), relative '
                  f'distance parameters {record["params_distance"]:.2e}, EMA {record["ema_distance"]:.2e}',
                  flush=True)
        log.write(json.dumps(record) + '\n')
        if done % args.save_every == 0 or done == args.steps:
            log.flush()
            leaves = jax.tree.leaves(jax.device_get(state))
            np.savez(saved + '.tmp.npz', **{str(i): np.asarray(v) for i, v in enumerate(leaves)})
            os.replace(saved + '.tmp.npz', saved)
        if done % 100 == 0:
            rate = (done - start) / (time.time() - t0)
            print(f'step {done}/{args.steps}  loss {record["loss"]:.2f}  {rate:.2f} it/s  '
                  f'ETA {(args.steps - done) / rate / 60:.1f} min', flush=True)
    log.close()
    got = jax.device_get(state)
    _write(settings, os.path.join(args.out, 'full'), 0, (got.params['level_0'], got.ema_params['level_0']),
           {'file': 'benchmarks/reference_cross.py', 'step': args.steps, 'weights': 'ema'})
    print('done', flush=True)


if __name__ == '__main__':
    main()
