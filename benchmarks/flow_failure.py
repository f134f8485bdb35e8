"""Why the full-space probability flow fails, measured with the study's networks at one training step.

    python benchmarks/flow_failure.py --step 20000 --data_dir /usr/share/datasets/fashion-mnist   # ~10 min, 2 cores

The networks of benchmarks/training_length.py (runs/study/{full,level_1,level_2}) at --step, VE. From one prior
draw of --samples images:
1. along the full-space DPM-Solver++ 20 and adaptive-ODE trajectories, and the adaptive ODE across the 2-level
   chain (implicit score, no lifts: deterministic end to end), the off-shell excess ||x||^2 / d - sigma(t)^2
   against sigma (network-free to compute: on the noise shell it stays near the data's E||x0||^2 / d), as
   median and 90th percentile over the samples in log-sigma bins; and the noise share of the denoised ends
   (benchmarks/noise_fraction.py's criterion);
2. restarts: the first --samples test images noised to sigma_s (x0 + sigma_s z) and solved to the end by the
   full-space adaptive ODE: noise share and RMS distance to the clean image against sigma_s, i.e. the noise levels
   at which the full-space network leads the flow astray;
3. each level's DSM loss of the EMA parameters on 1,024 test images with fixed noise (t ~ U(t_k, T), as trained),
   and the full-space network's in 12 log-sigma bins from 0.01 to 25.
--full_space_only: a workdir with the full-space network alone (issue 35's control of the reference's training).
Writes runs/study/flow/step_<step>.json (the study gathers them into benchmarks/results/training_length.json).
"""
import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import subspace_diffusion as sd  # noqa: E402
from configs import fashion_mnist  # noqa: E402
from noise_fraction import THRESHOLD, roughness  # noqa: E402
from subspace_diffusion.core.likelihood import odeint, ode_drift_and_div, require_finished  # noqa: E402
from subspace_diffusion.core.ode import ODEConfig, ode_solve, plan  # noqa: E402
from subspace_diffusion.formats.images import to_uint8  # noqa: E402
from subspace_diffusion.run import data  # noqa: E402

RESTART_SIGMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
BINS = np.geomspace(0.01, 25.0, 25)  # log-sigma bins of the trajectory records (the fashion config's range)
DSM_BINS = np.geomspace(0.01, 25.0, 13)  # log-sigma bins of the DSM loss by noise level


class Recorder:
    """Collects (sigma, per-sample ||x||^2 / d - sigma^2) from inside compiled solvers (jax.debug.callback)."""

    def __init__(self, sde):
        self.sde, self.rows = sde, []

    def record(self, x, t):
        """Queue one record of the state x (B, ...) at time t (scalar); returns nothing."""
        def keep(sigma, excess):
            self.rows.append((float(sigma), np.asarray(excess)))
        sigma = self.sde.sigma(t)
        excess = jnp.mean(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1) - sigma ** 2
        jax.debug.callback(keep, sigma, excess)

    def binned(self) -> dict:
        """{'sigma': bin centres, 'median', 'p90'} of the excess over samples and records in each log-sigma bin."""
        out = {'sigma': [], 'median': [], 'p90': []}
        for lo, hi in zip(BINS[:-1], BINS[1:]):
            rows = [e for s, e in self.rows if lo <= s < hi]
            if rows:
                values = np.concatenate(rows)
                out['sigma'].append(float(math.sqrt(lo * hi)))
                out['median'].append(float(np.median(values)))
                out['p90'].append(float(np.percentile(values, 90)))
        return out


def _noise_share(x01) -> float:
    return float(np.mean(roughness(to_uint8(x01)) > THRESHOLD))


def adaptive(model, x, t0, eps, recorder=None):
    """Adaptive probability-flow solve of x (B, ...) from t0 to eps with the model's (implicit) score, then the
    Tweedie step with the full-space network -> denoised x; records along the way when a recorder is given."""
    diffusion = model.experiment.diffusion(model.stats)
    scores = model.experiment.networks.scores(model.params)
    drift = ode_drift_and_div(diffusion, scores, [None] * (diffusion.num_levels + 1), 'none')
    tolerance = model.settings.eval.tolerance

    def fn(y, t):
        if recorder is not None:
            recorder.record(y[0], t)
        return drift(y, t)

    @jax.jit
    def solve(x):
        (x, _), stats = odeint(fn, (x, jnp.zeros(x.shape[0], x.dtype)), t0, eps, tolerance)
        return diffusion.sde.tweedie(x, eps, scores[0](x, jnp.full((x.shape[0],), eps))), stats

    x, stats = solve(x)
    require_finished(stats, tolerance, 'adaptive ODE', eps)
    return np.asarray(x), int(stats.n_evals)


def dpm(model, x_T, eps, recorder):
    """Full-space DPM-Solver++ at 20 effective NFE from x_T (B, ...), recording every step through the solver's
    measurement hook, then the Tweedie step -> denoised x."""
    diffusion = model.experiment.diffusion(model.stats)
    scores = model.experiment.networks.scores(model.params)
    laid_out = plan(diffusion, 'dpm_solver++', ODEConfig(nfe_budget=20.0), eps)

    def watch(key, x, k, t):
        recorder.record(x, t)
        return x

    @jax.jit
    def solve(x_T):
        x, t = ode_solve(jax.random.PRNGKey(0), x_T, diffusion, scores, laid_out, impose=watch)
        return diffusion.sde.tweedie(x, t, scores[0](x, jnp.full((x.shape[0],), t)))

    return np.asarray(solve(x_T)), diffusion.effective_nfe(laid_out.calls_per_level) + 1


def dsm_losses(model, images, n_draws: int = 4) -> dict:
    """{level: DSM loss of the EMA parameters} on `images` (model space), averaged over n_draws fixed noise draws."""
    exp = model.experiment
    fn = jax.jit(lambda key: exp.loss(model.params, images, key, train=False)[1])
    per = [fn(jax.random.PRNGKey(1000 + i)) for i in range(n_draws)]
    return {str(k): float(np.mean([p[k] for p in per])) for k in exp.levels}


def dsm_loss_by_sigma(model, images) -> dict:
    """{'sigma': bin centres, 'loss': full-space DSM loss of the EMA parameters} on `images` (model space), t drawn
    uniformly inside each of the DSM_BINS log-sigma bins with fixed noise: where in noise level a network is worse."""
    exp, sde = model.experiment, model.settings.sde
    fn = jax.jit(lambda t, z: exp.loss(model.params, images, jax.random.PRNGKey(0), train=False,
                                       draws={0: (t, z)})[1][0])
    key = jax.random.PRNGKey(2000)
    out = {'sigma': [], 'loss': []}
    for i, (lo, hi) in enumerate(zip(DSM_BINS[:-1], DSM_BINS[1:])):
        t_key, z_key = jax.random.split(jax.random.fold_in(key, i))
        t_lo, t_hi = float(sde.t_of_noise_ratio(lo)), float(sde.t_of_noise_ratio(hi))
        t = jax.random.uniform(t_key, (images.shape[0],), minval=t_lo, maxval=t_hi)
        out['sigma'].append(float(math.sqrt(lo * hi)))
        out['loss'].append(float(fn(t, jax.random.normal(z_key, images.shape))))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'study'))
    parser.add_argument('--data_dir', default=fashion_mnist.get_config().data.data_dir)
    parser.add_argument('--step', type=int, required=True)
    parser.add_argument('--samples', type=int, default=64)
    parser.add_argument('--full_space_only', action='store_true',
                        help='the workdir holds the full-space network alone (no level_1, level_2): no chain rows')
    args = parser.parse_args()
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    out_path = w('flow', f'step_{args.step}.json')
    config = fashion_mnist.get_config()
    config.data.data_dir = args.data_dir
    config.eval.level_workdirs = (w('full'),) if args.full_space_only else (w('full'), w('level_1'), w('level_2'))
    if args.full_space_only:
        config.subspace.levels, config.subspace.cutoffs = 0, ()
    t_start = time.perf_counter()
    full = sd.load(w('full'), config=config, levels=(0,), step=args.step)
    chain = None if args.full_space_only else sd.load(w('full'), config=config, levels=(0, 1, 2), step=args.step)
    sde, eps = full.settings.sde, full.settings.sampling.eps
    diffusion = full.experiment.diffusion(None)
    n = args.samples
    x_T = diffusion.prior(jax.random.PRNGKey(args.step), n)
    test01 = data.split_images(full.settings.data, 'test', max_examples=1024)
    to_model = data.get_scaler(full.settings.data.centered)
    result = {'step': args.step, 'samples': n, 'noise_threshold': THRESHOLD,
              'data_mean_square': float(np.mean(to_model(test01) ** 2)), 'trajectories': {}, 'restarts': []}
    runs = {'full space, dpm_solver++ 20': lambda r: dpm(full, x_T, eps, r),
            'full space, adaptive ode': lambda r: adaptive(full, x_T, sde.T, eps, r)}
    if chain is not None:
        runs['2-level chain, adaptive ode'] = lambda r: adaptive(chain, x_T, sde.T, eps, r)
    for name, run in runs.items():
        t0 = time.perf_counter()
        recorder = Recorder(sde)
        x, nfe = run(recorder)
        jax.effects_barrier()
        result['trajectories'][name] = {'excess': recorder.binned(), 'noise_share': _noise_share(x), 'nfe': nfe,
                                        'wall_s': time.perf_counter() - t0}
        print(f'{name}: noise share {result["trajectories"][name]["noise_share"]:.3f}, NFE {nfe}', flush=True)
    x0 = np.asarray(to_model(test01[:n]))
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(7), x0.shape))
    for sigma in RESTART_SIGMAS:
        t0 = time.perf_counter()
        t_s = float(sde.t_of_noise_ratio(sigma))
        x, nfe = adaptive(full, jnp.asarray(x0 + sigma * z), t_s, eps)
        row = {'sigma': sigma, 't': t_s, 'noise_share': _noise_share(x),
               'rms_to_clean': float(np.sqrt(np.mean((x - x0) ** 2))), 'nfe': nfe, 'wall_s': time.perf_counter() - t0}
        result['restarts'].append(row)
        print(f'restart from sigma {sigma:g} (t {t_s:.3f}): noise share {row["noise_share"]:.3f}, '
              f'RMS to the clean image {row["rms_to_clean"]:.3f}', flush=True)
    result['ema_dsm_loss'] = dsm_losses(chain or full, jnp.asarray(to_model(test01)))
    result['ema_dsm_loss_by_sigma'] = dsm_loss_by_sigma(full, jnp.asarray(to_model(test01)))
    result['wall_s'] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(out_path + '.tmp', out_path)
    print(f'wrote {out_path}', flush=True)


if __name__ == '__main__':
    main()
