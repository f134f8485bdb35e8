"""main.py's conditional generation jobs: inpainting and colourisation of a folder of images (conditional.py)."""
import os
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from subspace_diffusion import conditional, data, loading
from subspace_diffusion.experiment import Experiment
from subspace_diffusion.images import save_image_grid
from subspace_diffusion.settings import Settings


def load_folder(folder, size, channels):
    """(file stems, (N, size, size, channels) float32 in [0, 1]) of every image in `folder`, centre-cropped."""
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f'input folder not found: config.eval.cond_input_dir={folder!r}')
    paths = data.image_files(folder)
    if not paths:
        raise ValueError(f'no {"/".join(data.IMAGE_EXTENSIONS)} images in {folder} (config.eval.cond_input_dir)')
    return [os.path.splitext(os.path.basename(p))[0] for p in paths], data.load_images(paths, size, channels)


def inpaint_masks(settings: Settings, n, shape):
    """(n, H, W, 1) masks, 1 = known, from eval.cond_mask: a name of conditional.MASKS or a PNG (white = known)."""
    name = settings.eval.cond_mask
    if name.lower().endswith('.png'):
        if not os.path.exists(name):
            raise FileNotFoundError(f'mask image not found: config.eval.cond_mask={name!r}')
        with Image.open(name) as img:
            if img.size != (shape[1], shape[0]):
                raise ValueError(f'mask image {name} is {img.size[0]}x{img.size[1]}, the images are '
                                 f'{shape[1]}x{shape[0]} (data.image_size): give a mask of that size')
            mask = np.asarray(img.convert('L'), np.float32)[..., None] >= 128
        return np.broadcast_to(mask.astype(np.float32), (n,) + mask.shape)
    key = jax.random.PRNGKey(settings.seed)
    return np.stack([conditional.make_mask(name, shape, jax.random.fold_in(key, i), settings.eval.cond_mask_fraction)
                     for i in range(n)])


def _conditional_job(settings: Settings, workdir, task):
    """Inpaint or colourise every image of eval.cond_input_dir; writes <workdir>/<task>/ (per image and grid.png)."""
    c = settings.data.num_channels
    if task == 'colorize' and c != 3:
        raise ValueError(f'colourisation needs colour data (data.num_channels=3), this config has {c} channel(s)')
    K = settings.subspace.levels
    held = loading.held_levels(workdir)
    levels = tuple(range(K + 1)) if K and set(range(K + 1)) <= set(held) else (0,)
    loaded = loading.load_levels(settings, levels, workdir)
    exp = Experiment(settings, levels)
    subspace = exp.sampling_subspace(exp.load_stats(workdir) if levels != (0,) else None)
    names, images = load_folder(settings.eval.cond_input_dir, settings.data.image_size, c)
    n = len(names)
    scaler, inverse = data.get_scaler(settings.data.centered), data.get_inverse_scaler(settings.data.centered)
    if task == 'inpaint':
        masks = inpaint_masks(settings, n, images.shape[1:])
        shown = images * masks + 0.5 * (1 - masks)  # missing pixels shown grey
    else:
        masks = None
        shown = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    cfg = settings.sampling.pc
    logging.info('%s: %d image(s) from %s in the %s, checkpoint step %d, %d steps (the first batch compiles the '
                 'sampler) ...', task, n, settings.eval.cond_input_dir, exp.describe(), loaded.sources[0]['step'],
                 cfg.num_steps)

    @jax.jit
    def sample(params, key, x, mask):
        project = conditional.inpainting(mask) if task == 'inpaint' else conditional.colorization()
        return conditional.conditional_pc_sample(key, x, project, exp.sde, [exp.score_fn(params, k) for k in levels],
                                                 cfg, subspace)[0]

    bs = settings.eval.batch_size
    results = []
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        mask = masks[i:i + bs] if masks is not None else np.ones(1, np.float32)  # colourisation ignores it
        x = sample(loaded.params, jax.random.fold_in(jax.random.PRNGKey(settings.seed), i), scaler(images[i:i + bs]),
                   mask)
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


def inpaint(settings: Settings, workdir):
    """Fill in the eval.cond_mask region of every image of eval.cond_input_dir; outputs in <workdir>/inpaint/."""
    return _conditional_job(settings, workdir, 'inpaint')


def colorize(settings: Settings, workdir):
    """Colourise the grey version of every image of eval.cond_input_dir; outputs in <workdir>/colorize/."""
    return _conditional_job(settings, workdir, 'colorize')
