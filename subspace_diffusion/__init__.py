"""Subspace Diffusion Generative Models (Jing et al., ECCV 2022) in JAX / Flax.

The package is layered (imports only go down): core (the mathematics of SPEC.md: SDEs, subspace chains,
losses, samplers, likelihood, cutoffs, conditional sampling), models (the score networks), metrics,
formats (outside files), run (settings, data, checkpoints, the run object), evaluation, jobs (one per main.py
mode); `api` and `cli` on top. `subspace_diffusion.load(workdir)` is the Python API (api.py) and
`subspace_diffusion.save_grid(images, path)` writes samples as a PNG grid; both are imported on first use.
"""


def __getattr__(name):
    if name in ('load', 'Model', 'save_grid'):
        from subspace_diffusion import api
        return getattr(api, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
