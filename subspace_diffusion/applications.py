"""main.py jobs that use a trained model: cutoff analysis (SPEC section 4), inpainting and colourisation."""
import json
import os
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from subspace_diffusion import analysis, conditional, data, loading
from subspace_diffusion.cutoffs import choose_cutoff, fisher_divergence_curve
from subspace_diffusion.images import save_image_grid
from subspace_diffusion.sampling import SamplerConfig


def _take(batches, n):
    """The first n examples of an iterator of (B, ...) batches, as batches."""
    for x in batches:
        yield x[:n]
        n -= x.shape[0]
        if n <= 0:
            return


def cutoffs_mode(config, workdir):
    """Orthogonal Fisher divergence of the full-space model for every level; writes cutoffs.json and cutoffs.png."""
    sub = config.subspace
    if not sub.levels:
        raise ValueError('--mode=cutoffs needs a subspace chain: set subspace.levels >= 1')
    exp, params, step = loading.load_trained(config, workdir)
    if 0 not in exp.levels:
        raise ValueError(f'the checkpoint in {workdir} holds levels {list(exp.levels)}, not the full-space model '
                         f'(level 0) that the Fisher divergence needs: train with subspace.train_level=0 or -1')
    stats = exp.load_stats(workdir)
    score = exp.score_fn(params, 0)
    sde, chain = exp.sde, exp.chain
    ts = np.linspace(sde.sampling_eps, sde.T, sub.cutoff_times_num)
    n = sub.cutoff_num_examples
    logging.info('cutoffs: full-space model at step %d, %d times in [%.0e, %g], %d training examples per level',
                 step, len(ts), ts[0], ts[-1], n)
    levels = []
    for k in range(1, exp.num_levels + 1):
        t0 = time.perf_counter()
        # The same key for every level: all curves see the same x_t, so they compare without extra noise.
        curve = fisher_divergence_curve(jax.random.PRNGKey(config.seed), sde, chain, stats, k, score,
                                        _take(analysis.training_batches(config, sub.cutoff_batch_size), n), ts)
        cutoff = choose_cutoff(ts, curve, sub.cutoff_threshold)
        levels.append({'level': k, 'shape': list(chain.shapes[k]), 'divergence': curve.tolist(), 'cutoff': cutoff})
        logging.info('level %d (%s): D(t) from %.3e at t=%.2g to %.3e at t=%g; cutoff at %g: %s (%.1fs)', k,
                     'x'.join(map(str, chain.shapes[k])), curve[0], ts[0], curve[-1], ts[-1], sub.cutoff_threshold,
                     'none (D never falls below)' if cutoff is None else f'{cutoff:.3f}', time.perf_counter() - t0)
    result = {'step': step, 'threshold': sub.cutoff_threshold, 'num_examples': n, 'sde': sde.kind,
              'ts': ts.tolist(), 'levels': levels}
    path = os.path.join(workdir, 'cutoffs.json')
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
    plot_cutoffs(result, os.path.join(workdir, 'cutoffs.png'))
    chosen = [row['cutoff'] for row in levels]
    if all(c is not None for c in chosen):
        logging.info('suggested: --config.subspace.cutoffs="(%s)"', ', '.join(f'{c:.3f}' for c in chosen))
    logging.info('wrote %s and cutoffs.png', path)
    return result


def plot_cutoffs(result, path):
    """Log-scale D(t) per level with the threshold and the chosen cutoffs, as a PNG (matplotlib, Agg)."""
    import matplotlib  # only this plot needs it
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in result['levels']:
        line, = ax.semilogy(result['ts'], np.maximum(row['divergence'], 1e-12), marker='o', markersize=3,
                            label=f"level {row['level']} ({'x'.join(map(str, row['shape'][:2]))})")
        if row['cutoff'] is not None:
            ax.axvline(row['cutoff'], color=line.get_color(), linestyle=':', linewidth=1)
    ax.axhline(result['threshold'], color='k', linestyle='--', linewidth=1, label=f"threshold {result['threshold']:g}")
    ax.set_xlabel('t')
    ax.set_ylabel('orthogonal Fisher divergence D(t)')
    ax.set_title(f"{result['sde'].upper()} model, step {result['step']}, {result['num_examples']} examples")
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_folder(folder, size, channels):
    """(file stems, (N, size, size, channels) float32 in [0, 1]) of every image in `folder`, centre-cropped."""
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f'input folder not found: config.eval.cond_input_dir={folder!r}')
    paths = data.image_files(folder)
    if not paths:
        raise ValueError(f'no {"/".join(data.IMAGE_EXTENSIONS)} images in {folder} (config.eval.cond_input_dir)')
    return [os.path.splitext(os.path.basename(p))[0] for p in paths], data.load_images(paths, size, channels)


def _inpaint_masks(config, n, shape):
    """(n, H, W, 1) masks, 1 = known, from eval.cond_mask: a name of conditional.MASKS or a PNG (white = known)."""
    name = config.eval.cond_mask
    if name.lower().endswith('.png'):
        if not os.path.exists(name):
            raise FileNotFoundError(f'mask image not found: config.eval.cond_mask={name!r}')
        with Image.open(name) as img:
            mask = np.asarray(img.convert('L').resize(shape[:2][::-1], Image.NEAREST), np.float32)[..., None] >= 128
        return np.broadcast_to(mask.astype(np.float32), (n,) + mask.shape)
    key = jax.random.PRNGKey(config.seed)
    return np.stack([conditional.make_mask(name, shape, jax.random.fold_in(key, i),
                                           config.eval.get('cond_mask_fraction', 0.5)) for i in range(n)])


def _conditional_job(config, workdir, task):
    """Inpaint or colourise every image of eval.cond_input_dir; writes <workdir>/<task>/ (per image and grid.png)."""
    c = config.data.num_channels
    if task == 'colorize' and c != 3:
        raise ValueError(f'colourisation needs colour data (data.num_channels=3), this config has {c} channel(s)')
    exp, params, step = loading.load_trained(config, workdir)
    K = exp.num_levels
    if K and exp.levels == tuple(range(K + 1)):
        levels, chain, stats, cutoffs = range(K + 1), exp.chain, exp.load_stats(workdir), exp.cutoffs
    elif 0 in exp.levels:
        levels, chain, stats, cutoffs = (0,), None, None, ()
    else:
        raise ValueError(f'the checkpoint in {workdir} holds levels {list(exp.levels)}: {task} needs the full-space '
                         f'model (level 0) or every level 0..{K}')
    names, images = load_folder(config.eval.cond_input_dir, config.data.image_size, c)
    n = len(names)
    scaler, inverse = data.get_scaler(config.data.centered), data.get_inverse_scaler(config.data.centered)
    if task == 'inpaint':
        masks = _inpaint_masks(config, n, images.shape[1:])
        shown = images * masks + 0.5 * (1 - masks)  # missing pixels shown grey
    else:
        masks = None
        shown = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    cfg = SamplerConfig.from_config(config.sampling)
    logging.info('%s: %d image(s) from %s, %s, checkpoint step %d, %d steps', task, n, config.eval.cond_input_dir,
                 f'{K + 1}-level subspace chain, cutoffs {list(cutoffs)}' if chain else 'full space', step,
                 cfg.num_steps)

    @jax.jit
    def sample(params, key, x, mask):
        project = conditional.inpainting(mask) if task == 'inpaint' else conditional.colorization()
        return conditional.conditional_pc_sample(key, x, project, exp.sde, [exp.score_fn(params, k) for k in levels],
                                                 cfg, chain, stats, cutoffs)[0]

    bs = config.eval.batch_size
    results = []
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        mask = masks[i:i + bs] if masks is not None else np.ones(1, np.float32)  # colourisation ignores it
        x = sample(params, jax.random.fold_in(jax.random.PRNGKey(config.seed), i), scaler(images[i:i + bs]), mask)
        results.append(np.clip(inverse(np.asarray(x)), 0., 1.))
        logging.info('%s: %d/%d images (%.1fs)', task, min(i + bs, n), n, time.perf_counter() - t0)
    results = np.concatenate(results)
    out = os.path.join(workdir, task)
    os.makedirs(out, exist_ok=True)
    for name, img in zip(names, np.round(results * 255).astype(np.uint8)):
        Image.fromarray(img[..., 0] if c == 1 else img).save(os.path.join(out, f'{name}.png'))
    # One row per image: input | masked (or grey) | result.
    save_image_grid(np.stack([images, shown, results], axis=1).reshape((-1,) + images.shape[1:]),
                    os.path.join(out, 'grid.png'), ncol=3)
    logging.info('wrote %d result(s) and grid.png to %s', n, out)
    return results


def inpaint_mode(config, workdir):
    """Fill in the eval.cond_mask region of every image of eval.cond_input_dir; outputs in <workdir>/inpaint/."""
    return _conditional_job(config, workdir, 'inpaint')


def colorize_mode(config, workdir):
    """Colourise the grey version of every image of eval.cond_input_dir; outputs in <workdir>/colorize/."""
    return _conditional_job(config, workdir, 'colorize')
