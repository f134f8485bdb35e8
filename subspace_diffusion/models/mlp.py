"""Score network for vector coordinates (PCA levels): a residual MLP with the NCSN++ time conventions.

A PCA subspace's level-k coordinates are a vector of n_k numbers with no image layout, so a U-Net does
not apply. This network takes (B, n) and the same time labels as NCSN++ (sigma with a Fourier
embedding of log sigma, or 999 t with the sinusoidal one), so `models/score.py` turns it into a score
the same way; with `scale_by_sigma` its output is divided by sigma, as NCSN++'s.
"""
import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from subspace_diffusion.models import layers
from subspace_diffusion.models.ncsnpp import Network, class_embedding


@dataclasses.dataclass(frozen=True)
class VectorNetwork:
    """Width and depth of the MLP, and the time conventions it shares with the level-0 Network."""

    width: int
    blocks: int
    embedding_type: str
    fourier_scale: float
    scale_by_sigma: bool
    dropout: float
    dtype: str = 'float32'  # training compute dtype, as the image network's; parameters and output stay float32
    sample_dtype: str = 'float32'  # compute dtype when not training
    num_classes: int = 0  # class-conditional (a class embedding added to the time embedding); 0: unconditional

    @classmethod
    def like(cls, net: Network, width: int, blocks: int) -> 'VectorNetwork':
        """The MLP that uses `net`'s time embedding, output scaling, compute dtype and classes."""
        return cls(width, blocks, net.embedding_type, net.fourier_scale, net.scale_by_sigma, net.dropout, net.dtype,
                   net.sample_dtype, net.num_classes)


class MLPScore(nn.Module):
    """x (B, n), time labels (B,)[, class labels (B,)] -> (B, n)."""
    net: VectorNetwork

    @nn.compact
    def __call__(self, x, time_cond, train=True, y=None):
        """x (B, n), labels (B,) (sigma for fourier, 999 t for positional), class labels y (B,) as NCSN++'s -> (B, n)."""
        m = self.net
        if y is not None and not m.num_classes:
            raise ValueError("class labels given to an unconditional network (config.model.num_classes=0)")
        if m.embedding_type == 'fourier':
            temb = layers.GaussianFourierProjection(embedding_size=m.width // 2, scale=m.fourier_scale)(
                jnp.log(time_cond))
        else:
            temb = layers.timestep_embedding(time_cond, m.width)
        dtype = jnp.dtype(m.dtype if train else m.sample_dtype)
        dense = functools.partial(nn.Dense, m.width, kernel_init=layers.default_init(), dtype=dtype)
        temb, x = temb.astype(dtype), x.astype(dtype)
        temb = dense()(nn.swish(dense()(temb)))
        if m.num_classes:
            temb = class_embedding(temb, y, m.num_classes)
        h = dense()(x)
        for _ in range(m.blocks):
            # Pre-norm residual block with the time embedding added, as NCSN++'s ResNet blocks do.
            r = dense()(nn.swish(nn.LayerNorm(dtype=dtype)(h)))
            r = r + dense()(nn.swish(temb))
            r = nn.Dropout(m.dropout)(nn.swish(nn.LayerNorm(dtype=dtype)(r)), deterministic=not train)
            h = (h + nn.Dense(m.width, kernel_init=layers.default_init(0.0), dtype=dtype)(r)) / jnp.sqrt(2.0)
        out = nn.Dense(x.shape[-1], kernel_init=layers.default_init(0.0), dtype=dtype)(
            nn.swish(nn.LayerNorm(dtype=dtype)(h))).astype(jnp.float32)
        if m.scale_by_sigma:
            out = out / time_cond[:, None]
        return out
