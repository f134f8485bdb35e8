"""main.py --mode=inpaint / --mode=colorize: fill in a mask, or colour, every image of a folder (core/conditional.py).

The sampler is the factory's sampler of `sampling.method` (PC, Heun or DPM-Solver++; the adaptive solver has
no grid to impose the known part on) with a measurement: the known part replaced after every move. The images
are prepared as the training data are (centre-cropped and resized to data.image_size minus the padding, brought
to data.num_channels, padded with data.padding zero pixels), the log says what was done, and the results are
written at the size before padding.
"""
import dataclasses
import os
import shutil
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from subspace_diffusion.core import conditional
from subspace_diffusion.core.sampling import below_minimum, make_sampler
from subspace_diffusion.formats.files import FileProblem
from subspace_diffusion.formats.images import (
    IMAGE_EXTENSIONS,
    center_crop_resize,
    image_files,
    read_image,
    save_image_grid,
    to_channels,
)
from subspace_diffusion.run import data, loading, statistics
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.run.settings import Settings

GRID = 'grid.png'  # the overview beside the results: rows input | masked (or grey) | result


def load_folder(settings: Settings, folder) -> tuple:
    """(result names, (N, H, W, C) float32 in [0, 1] prepared as the training data, what was done to them) of every
    image under `folder`.

    A result is named by its input's path under `folder`, as .png: inputs of one stem in different subfolders
    keep apart; two inputs that would share a name (x.png and x.jpg) are refused, never overwritten.
    """
    if not folder or not os.path.isdir(folder):
        raise FileNotFoundError(f'input folder not found: config.eval.cond_input_dir={folder!r}')
    paths = image_files(folder)
    if not paths:
        raise ValueError(f'no {"/".join(IMAGE_EXTENSIONS)} images in {folder} (config.eval.cond_input_dir)')
    names = [os.path.splitext(os.path.relpath(p, folder))[0] + '.png' for p in paths]
    owner = {GRID: 'the overview grid'}
    for path, name in zip(paths, names):
        if name in owner:
            raise ValueError(f'{path} and {owner[name]} would both be written as {name} (results are named by their '
                             f'input\'s path under config.eval.cond_input_dir, as .png): rename one of them')
        owner[name] = path
    d, raw = settings.data, [read_image(p) for p in paths]
    size = data.inner_size(d)
    images = data.prepare(d, np.stack([center_crop_resize(to_channels(x, d.num_channels), size) for x in raw]))
    return names, images, _preparation(d, raw)


def _preparation(d, raw) -> str:
    """What preparing images `raw` ((H, W, C) arrays as read) as the training data does to them, in words."""
    size, counts = data.inner_size(d), {}
    for x in raw:
        counts[f'{x.shape[1]}x{x.shape[0]}'] = counts.get(f'{x.shape[1]}x{x.shape[0]}', 0) + 1
    done = [] if all(x.shape[:2] == (size, size) for x in raw) else \
        [f'centre-cropped and resized to {size}x{size}']
    channels = sorted({min(x.shape[-1], 3) for x in raw} - {d.num_channels})
    if channels:
        done.append('made grey (the channel mean)' if d.num_channels == 1 else 'grey copied into 3 channels')
    if d.padding:
        done.append(f'padded by {d.padding} px to {d.image_size}x{d.image_size} (data.padding)')
    sizes = ', '.join(f'{n} of {s}' for s, n in sorted(counts.items()))
    return f'{sizes}: {", ".join(done) + " as the training data" if done else "used as they are"}'


def output_folder(settings: Settings, workdir, task: str) -> str:
    """<workdir>/<eval.cond_folder or the task>, refused when it holds an earlier run's results (never overwritten)."""
    name = settings.eval.cond_folder or task
    out = os.path.join(workdir, name)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f'{out} holds the results of an earlier run: set --config.eval.cond_folder to another folder '
                         f'name to keep both, or move it away to redo them')
    return out


def inpaint_masks(settings: Settings, n, shape):
    """(n, H, W, 1) masks, 1 = known, from eval.cond_mask: a name of conditional.MASKS or a PNG (white and opaque =
    known; a transparent pixel is to fill in, whatever its colour)."""
    name = settings.eval.cond_mask
    if name.lower().endswith('.png'):
        meaning = 'white = known, black or transparent = to fill in'
        fix = f'give a PNG mask of the images\' size, {meaning}'
        image = read_image(name, 'mask image', f'set config.eval.cond_mask to a mask PNG ({meaning}) or to one of '
                                               f'{", ".join(conditional.MASKS)}')
        mask = to_channels(image, 1)[..., 0] * (image[..., 3] if image.shape[-1] == 4 else 1.)
        p = settings.data.padding
        if p and mask.shape == (shape[0] - 2 * p, shape[1] - 2 * p):  # drawn on the images before padding
            mask = np.pad(mask, p, constant_values=1.)  # the padding is known: zeros, as in every training image
        if mask.shape != tuple(shape[:2]):
            inner = f'{shape[1] - 2 * p}x{shape[0] - 2 * p}, or {shape[1]}x{shape[0]} with the padding' if p else \
                f'{shape[1]}x{shape[0]}'
            raise FileProblem(f'mask image {name} is {mask.shape[1]}x{mask.shape[0]}, the images are {inner} '
                              f'(data.image_size): {fix}')
        if not np.all((mask == 0) | (mask == 1)):
            raise FileProblem(f'mask image {name} has grey levels other than black and white '
                              f'({np.mean((mask > 0) & (mask < 1)):.0%} of its pixels): {fix}')
        return np.broadcast_to(mask.astype(np.float32)[..., None], (n,) + tuple(shape[:2]) + (1,))
    key = jax.random.PRNGKey(settings.seed)
    return np.stack([conditional.make_mask(name, shape, jax.random.fold_in(key, i), settings.eval.cond_mask_fraction)
                     for i in range(n)])


def _conditional_job(settings: Settings, workdir, task: str):
    """Inpaint or colourise every image of eval.cond_input_dir; writes <workdir>/<eval.cond_folder or task>/ (one PNG per
    image, named by its path under the input folder, and grid.png)."""
    c = settings.data.num_channels
    if task == 'colorize' and c != 3:
        raise ValueError(f'colourisation needs colour data (data.num_channels=3), this config has {c} channel(s)')
    out = output_folder(settings, workdir, task)
    names, images, prepared = load_folder(settings, settings.eval.cond_input_dir)
    logging.info('%s: the images of %s are %s', task, settings.eval.cond_input_dir, prepared)
    K = settings.subspace.levels
    held = set(loading.checkpoint_at(workdir)[1].get('levels', ()))
    levels = tuple(range(K + 1)) if K and set(range(K + 1)) <= held else (0,)
    loaded = loading.load_levels(settings, levels, workdir)
    exp = Experiment.build(settings, levels)
    stats = statistics.load(settings, exp.chain, workdir) if levels != (0,) else None
    measurement = conditional.inpainting if task == 'inpaint' else lambda aux: conditional.colorization()
    diffusion = exp.diffusion(stats)
    # The measurement, not a class label, steers these samples: a class-conditional network runs unlabelled, and
    # guidance, which needs labels, does not apply.
    cfg = dataclasses.replace(settings.sampling, guidance=0.)
    sampler = make_sampler(diffusion, cfg, exp.networks.scores, measurement=measurement,
                           num_classes=exp.networks.num_classes)
    note = below_minimum(diffusion, cfg)
    if note:
        logging.info('%s', note)
    n = len(names)
    scaler, inverse = data.get_scaler(settings.data.centered), data.get_inverse_scaler(settings.data.centered)
    if task == 'inpaint':
        masks = inpaint_masks(settings, n, images.shape[1:])
        shown = images * masks + 0.5 * (1 - masks)  # missing pixels shown grey
    else:
        masks = np.ones((n, 1), np.float32)  # colourisation takes no mask
        shown = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    logging.info('%s: %d image(s) from %s in the %s, checkpoint step %d, %s (the first batch compiles the '
                 'sampler) ...', task, n, settings.eval.cond_input_dir, exp.describe(), loaded.sources[0]['step'],
                 settings.sampling.method)
    bs = settings.eval.batch_size
    params = exp.networks.named(loaded.params)
    results = []
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        x, _ = sampler.sample(params, jax.random.fold_in(jax.random.PRNGKey(settings.seed), i),
                              scaler(images[i:i + bs]), masks[i:i + bs])
        results.append(np.clip(inverse(np.asarray(x)), 0., 1.))
        logging.info('%s: %d/%d images (%.1fs)', task, min(i + bs, n), n, time.perf_counter() - t0)
    p = settings.data.padding
    unpad = (slice(None), slice(p, images.shape[1] - p), slice(p, images.shape[2] - p))  # the size before padding
    images, shown, results = images[unpad], shown[unpad], np.concatenate(results)[unpad]
    # Written beside the workdir's other files and moved into place whole: a killed run leaves no half folder.
    partial = os.path.join(workdir, f'.{os.path.basename(out)}.partial')
    shutil.rmtree(partial, ignore_errors=True)
    for name, img in zip(names, np.round(results * 255).astype(np.uint8)):
        os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
        Image.fromarray(img[..., 0] if c == 1 else img).save(os.path.join(partial, name))
    save_image_grid(np.stack([images, shown, results], axis=1).reshape((-1,) + images.shape[1:]),
                    os.path.join(partial, GRID), ncol=3)
    os.replace(partial, out)
    logging.info('wrote %d result(s) and %s to %s%s', n, GRID, out,
                 f' ({images.shape[2]}x{images.shape[1]}: without the padding)' if p else '')
    return results


def inpaint(settings: Settings, workdir):
    """Fill in the eval.cond_mask region of every image of eval.cond_input_dir; outputs in <workdir>/<eval.cond_folder
    or inpaint>/."""
    return _conditional_job(settings, workdir, 'inpaint')


def colorize(settings: Settings, workdir):
    """Colourise the grey version of every image of eval.cond_input_dir; outputs in <workdir>/<eval.cond_folder or
    colorize>/."""
    return _conditional_job(settings, workdir, 'colorize')
