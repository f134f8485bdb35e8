"""Write tests/data/torch/ with torch itself (torch, torchvision and pytorch-fid: none is a project dependency).

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 pytorch-fid scipy pillow
    /work/torchvenv/bin/python benchmarks/make_torch_fixtures.py

Writes, all by torch itself (tests never import this script, and run without torch):
- <name>_legacy.pth: tests/data/reference/<name>.pth re-saved in the legacy format (torch.save with
  _use_new_zipfile_serialization=False, the format of torch < 1.6 and of pytorch-fid's Inception weights);
- inception_part.pth / inception_part_legacy.pth: a few entries of the FID Inception state_dict (real keys and
  shapes, seeded values), in the zip and the legacy format;
- fid_inception_manifest.json: pytorch-fid's FID Inception state_dict layout (keys, shapes, dtypes) and the
  SHA-256 of the seeded weights of tests/inception_recipe.py that were loaded into it;
- fid_inception_outputs.npz: fixed images at 32 and 64 px with pytorch-fid's pool3 features and logits for them
  under those weights, and two Gaussians' statistics with pytorch-fid's Frechet distance between them.
"""
import argparse
import collections
import json
import os
import sys
from unittest import mock

import numpy as np
import torch
import torchvision
from pytorch_fid import fid_score
from pytorch_fid import inception as pytorch_fid_inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
import inception_recipe  # noqa: E402  (numpy only: the tests regenerate the same weights)

OUT = os.path.join(ROOT, 'tests', 'data', 'torch')
PART = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'fc.bias')  # the entries of inception_part*.pth


def pytorch_fid_layout():
    """[(key, shape, dtype)] of pytorch-fid's FID Inception state_dict, its network built without weights."""
    with mock.patch.object(pytorch_fid_inception, 'load_state_dict_from_url', lambda *a, **k: None), \
            mock.patch.object(torch.nn.Module, 'load_state_dict', lambda *a, **k: None):
        state = pytorch_fid_inception.fid_inception_v3().state_dict()
    return [(k, list(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in state.items()]


def pytorch_fid_networks(state_dict):
    """(pytorch-fid's InceptionV3 pool3 model, its FID Inception with the fc) loaded with `state_dict` (strict)."""
    with mock.patch.object(pytorch_fid_inception, 'load_state_dict_from_url', lambda *a, **k: state_dict):
        return (pytorch_fid_inception.InceptionV3([3]).eval(), pytorch_fid_inception.fid_inception_v3().eval())


def fixed_images(rng, size):
    """(2, size, size, 3) uint8: uniform noise, and a smooth colour pattern with a little noise."""
    noise = rng.integers(0, 256, (size, size, 3))
    y, x = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([np.sin(6 * x + 1), np.cos(4 * y), np.sin(5 * (x + y))], -1) * 100 + 128
    smooth = smooth + rng.normal(0, 8, smooth.shape)
    return np.clip(np.stack([noise, smooth]), 0, 255).astype(np.uint8)


def fid_fixture():
    """fid_inception_manifest.json, fid_inception_outputs.npz and the inception_part files."""
    layout = pytorch_fid_layout()
    weights = inception_recipe.weights(layout)
    state = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in weights.items())
    pool3_model, full = pytorch_fid_networks(state)
    rng = np.random.default_rng(0)
    arrays = {}
    with torch.no_grad():
        for size in (32, 64):
            images = fixed_images(rng, size)
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's input: (0, 1)
            pool3 = pool3_model(x)[0].flatten(1)
            arrays.update({f'images_{size}': images, f'pool3_{size}': pool3.numpy(),
                           f'logits_{size}': full.fc(pool3).numpy()})
            print(f'{size} px: pool3 in [{pool3.min():.3g}, {pool3.max():.3g}], '
                  f'{(pool3 == 0).float().mean():.1%} zeros; logits std {arrays[f"logits_{size}"].std():.3g}')
    # Two full-rank Gaussians whose covariances do not commute, for the Frechet distance.
    dim, n = 32, 128
    for i, scale in ((1, 1.0), (2, 1.5)):
        mixing = scale * rng.normal(size=(dim, dim)) / np.sqrt(dim)
        samples = rng.normal(size=(n, dim)) @ mixing + rng.normal(size=dim)
        arrays[f'mu{i}'], arrays[f'sigma{i}'] = samples.mean(0), np.cov(samples, rowvar=False)
    arrays['fid'] = np.float64(fid_score.calculate_frechet_distance(
        arrays['mu1'], arrays['sigma1'], arrays['mu2'], arrays['sigma2']))
    print(f'pytorch-fid Frechet distance {float(arrays["fid"]):.10g}')
    np.savez_compressed(os.path.join(OUT, 'fid_inception_outputs.npz'), **arrays)
    about = {'made_by': f'benchmarks/make_torch_fixtures.py with torch {torch.__version__}, torchvision '
                        f'{torchvision.__version__}, pytorch-fid {pytorch_fid_version()}, numpy {np.__version__}',
             'recipe': f'tests/inception_recipe.py, seed {inception_recipe.SEED}',
             'sha256': inception_recipe.digest(weights)}
    with open(os.path.join(OUT, 'fid_inception_manifest.json'), 'w') as f:  # one state_dict entry a line
        f.write(json.dumps(about, indent=1)[:-2] + ',\n "entries": [\n  '
                + ',\n  '.join(json.dumps(entry) for entry in layout) + '\n ]\n}\n')
    # A part of that state_dict as a saved state_dict holds it (with torch's per-module _metadata).
    module_state = full.state_dict()
    part = collections.OrderedDict((k, v) for k, v in module_state.items() if k.startswith(PART))
    part._metadata = module_state._metadata
    torch.save(part, os.path.join(OUT, 'inception_part.pth'))
    torch.save(part, os.path.join(OUT, 'inception_part_legacy.pth'), _use_new_zipfile_serialization=False)
    print(f'inception_part: {len(part)} entries, {sum(v.numel() for v in part.values()):,} values')


def pytorch_fid_version():
    """pytorch-fid's version string."""
    import pytorch_fid
    return pytorch_fid.__version__


def legacy_copies(names):
    """<name>_legacy.pth for each reference checkpoint: the same object, re-saved by torch in the legacy format."""
    for name in names:
        # weights_only=False: the reference's own fixture, trusted (it holds numpy scalars).
        checkpoint = torch.load(os.path.join(ROOT, 'tests', 'data', 'reference', f'{name}.pth'), weights_only=False)
        torch.save(checkpoint, os.path.join(OUT, f'{name}_legacy.pth'), _use_new_zipfile_serialization=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--legacy', nargs='*', default=['vp_8', 've_32'],
                        help='reference checkpoints (tests/data/reference/<name>.pth) to re-save in the legacy format')
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    legacy_copies(args.legacy)
    fid_fixture()
    for name in sorted(os.listdir(OUT)):
        print(f'{name}: {os.path.getsize(os.path.join(OUT, name)):,} bytes')


if __name__ == '__main__':
    main()
