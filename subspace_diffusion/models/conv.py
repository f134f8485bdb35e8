"""Stride-1 2-D convolution (NHWC x HWIO) whose kernel gradient XLA:CPU runs with Eigen rather than YNNPACK.

Why this exists: XLA writes a convolution's kernel gradient as a second convolution whose window is the whole image
and whose contraction runs over the batch. XLA:CPU (jaxlib 0.10) hands that convolution to YNNPACK, which runs it
about 3x slower than Eigen for this network's shapes (64 x 32 x 32 x 32 -> 32: 45 ms against 16 ms on 2 threads;
benchmarks/conv_kernel_grad.py). YNNPACK declines convolutions with at most 16 input and 16 output features, so on
CPU the tangent in the kernel is stated as pieces of at most 16 images x 16 output channels: its transpose, the
kernel gradient, comes out as pieces that Eigen runs. The value and the data gradient stay one convolution each
(XLA's choice), and every other platform (GPU, TPU) gets XLA's usual formulation.
"""
from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
PIECE = 16  # YNNPACK (XLA:CPU) declines convolutions with at most this many input and output features
MIN_PIXELS = 256  # at 8 x 8 pixels YNNPACK's kernel gradient is as fast as Eigen's (1.0 vs 0.9 ms)


def _conv(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DIMENSIONS)


def _conv_in_pieces(x, w, padding):
    """The convolution of x by w as pieces of <= PIECE images x <= PIECE output channels (the same values)."""
    rows = [jnp.concatenate([_conv(x[b:b + PIECE], w[..., c:c + PIECE], padding)
                             for c in range(0, w.shape[-1], PIECE)], axis=-1)
            for b in range(0, x.shape[0], PIECE)]
    return jnp.concatenate(rows, axis=0)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def conv2d(x, w, padding):
    """(B,H,W,Ci) x (kh,kw,Ci,Co) -> (B,H',W',Co), stride 1; padding: ((lo, hi), (lo, hi)) per spatial dim."""
    return _conv(x, w, padding)


def _conv2d_jvp(padding, primals, tangents):
    x, w = primals
    dx, dw = tangents
    out = _conv(x, w, padding)
    parts = []
    if not isinstance(dx, SymbolicZero):
        parts.append(_conv(dx, w, padding))
    if not isinstance(dw, SymbolicZero):
        if x.shape[1] * x.shape[2] >= MIN_PIXELS:
            parts.append(jax.lax.platform_dependent(x, dw, cpu=partial(_conv_in_pieces, padding=padding),
                                                    default=partial(_conv, padding=padding)))
        else:
            parts.append(_conv(x, dw, padding))
    return out, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(out)


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def conv_general_dilated(lhs, rhs, window_strides, padding, **options):
    """lax.conv_general_dilated as flax's nn.Conv calls it: (B,H,W,Ci) x (kh,kw,Ci,Co) -> (B,H',W',Co); plain
    stride-1 convolutions go through conv2d, anything else (strides, dilation, groups, other ranks) to lax."""
    plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and options.get("feature_group_count", 1) == 1
             and options.get("precision") is None
             and all(options.get(k) is None or tuple(options[k]) == (1, 1) for k in ("lhs_dilation", "rhs_dilation")))
    if not plain:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return conv2d(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
