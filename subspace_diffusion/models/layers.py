"""Building blocks of NCSN++ / DDPM++ (score-SDE family) in Flax linen, NHWC.

Every block computes in the dtype of its input (float32, or bfloat16 under mixed precision) with float32
parameters; normalisation statistics and the attention softmax are computed in float32 whatever it is.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def default_init(scale=1.0):
    """Fan-average uniform variance scaling; scale 0 maps to 1e-10 so zero-init layers stay trainable."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


class GroupNorm(nn.Module):
    """GroupNorm of (B,...,C) with flax's parameters (scale, bias) and statistics (float32, E[x^2] - E[x]^2).

    The group statistics are sums of per-channel sums: on XLA:CPU the channel-minor reduction over the pixels and
    one fused multiply-add per element make the forward 4x faster than flax's reduction over (pixels, channels in
    group) followed by subtract, divide, scale and shift (benchmarks/profile_train.py).
    """
    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        """(B,...,C) -> (B,...,C) in x's dtype."""
        b, c = x.shape[0], x.shape[-1]
        per_group = c // self.num_groups
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        xf = x.astype(jnp.float32).reshape(b, -1, c)
        count = xf.shape[1] * per_group
        mean = xf.sum(1).reshape(b, self.num_groups, per_group).sum(-1) / count
        mean2 = jnp.square(xf).sum(1).reshape(b, self.num_groups, per_group).sum(-1) / count
        inv = jax.lax.rsqrt(jnp.maximum(0.0, mean2 - jnp.square(mean)) + self.epsilon)
        mul = jnp.repeat(inv, per_group, axis=1) * scale
        add = bias - jnp.repeat(mean, per_group, axis=1) * mul
        shape = (b,) + (1,) * (x.ndim - 2) + (c,)
        return (x.astype(jnp.float32) * mul.reshape(shape) + add.reshape(shape)).astype(x.dtype)


def group_norm(x, name=None):
    """GroupNorm of (B,H,W,C) with min(C // 4, 32) groups, as in score-SDE (statistics in float32)."""
    return GroupNorm(num_groups=min(x.shape[-1] // 4, 32), name=name)(x)


def dense(x, features, init_scale=1.0, name=None):
    """(B, D) -> (B, features) with score-SDE init, in x's dtype."""
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=x.dtype, name=name)(x)


def conv(x, out_ch, size=3, stride=1, init_scale=1.0, padding="SAME", name=None):
    """(B,H,W,C) -> (B,H',W',out_ch) convolution with score-SDE init and zero bias, in x's dtype."""
    return nn.Conv(out_ch, (size, size), strides=(stride, stride), padding=padding,
                   kernel_init=default_init(init_scale), dtype=x.dtype, name=name)(x)


# ----------------------------------------------------------------------------- FIR resampling


def fir_taps(k):
    """1-D taps -> float32 numpy taps normalised to sum 1; the 2-D FIR kernel is their outer product."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim != 1:
        raise ValueError(f"fir_kernel={k.tolist()} must be 1-D taps (the 2-D kernel is their outer product)")
    return k / k.sum()


def _upfirdn_axis(x, taps, up, down, pad, axis):
    """upfirdn along one axis: zero-insert by `up`, pad, true-convolve with 1-D taps, keep every `down`."""
    if up > 1:
        # upfirdn keeps up-1 zeros after every sample, the last one included.
        x = jnp.expand_dims(x, axis + 1)
        widths = [(0, 0)] * x.ndim
        widths[axis + 1] = (0, up - 1)
        x = jnp.pad(x, widths)
        x = x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:])
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths)
    n = (x.shape[axis] - len(taps)) // down + 1
    flipped = taps[::-1]  # a convolution, not a correlation
    return sum(float(t) * jax.lax.slice_in_dim(x, i, i + down * (n - 1) + 1, down, axis)
               for i, t in enumerate(flipped))


def upfirdn2d(x, taps, up=1, down=1, pad=(0, 0), gain=1.0):
    """(B,H,W,C) -> zero-insert by `up`, pad, true-convolve with gain * outer(taps, taps) per channel, keep every `down`.

    Two 1-D passes of shifted slices, which XLA fuses into loops: on XLA:CPU the same resampling as one depthwise
    convolution made the CIFAR-10 NCSN++ forward 1.7x slower (docs/performance.md, tags before_fir / after_fir).
    """
    taps = fir_taps(taps)
    x = _upfirdn_axis(x, taps * np.float32(gain), up, down, pad, axis=1)
    return _upfirdn_axis(x, taps, up, down, pad, axis=2)


def upsample_2d(x, k, factor=2, gain=1.0):
    """(B,H,W,C) -> (B,fH,fW,C) FIR upsampling with 1-D taps k; the kernel is scaled by gain * factor^2."""
    p = len(k) - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2), gain=gain * factor ** 2)


def downsample_2d(x, k, factor=2, gain=1.0):
    """(B,H,W,C) -> (B,H/f,W/f,C) FIR downsampling with 1-D taps k; the kernel is scaled by gain."""
    p = len(k) - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2), gain=gain)


def naive_upsample_2d(x, factor=2):
    """(B,H,W,C) -> (B,fH,fW,C) nearest-neighbour upsampling."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x, factor=2):
    """(B,H,W,C) -> (B,H/f,W/f,C) block mean."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class FIRConv(nn.Module):
    """Conv fused with FIR up- or down-sampling (StyleGAN2 style): (B,H,W,C) -> (B,H',W',out_ch)."""
    out_ch: int
    kernel: int = 3
    up: bool = False
    down: bool = False
    fir_kernel: tuple = (1, 3, 3, 1)
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) -> (B,2H|H/2|H,.,out_ch)."""
        w = self.param("kernel", default_init(self.init_scale),
                       (self.kernel, self.kernel, x.shape[-1], self.out_ch))
        b = self.param("bias", nn.initializers.zeros, (self.out_ch,))
        w, b = w.astype(x.dtype), b.astype(x.dtype)
        dn = ("NHWC", "HWIO", "NHWC")
        kw = self.kernel
        taps = len(self.fir_kernel)
        if self.up:
            p = (taps - 2) - (kw - 1)
            x = jax.lax.conv_general_dilated(x, w, (1, 1), [(kw - 1, kw - 1)] * 2,
                                             lhs_dilation=(2, 2), dimension_numbers=dn)
            x = upfirdn2d(x, self.fir_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4)
        elif self.down:
            p = (taps - 2) + (kw - 1)
            x = upfirdn2d(x, self.fir_kernel, pad=((p + 1) // 2, p // 2))
            x = jax.lax.conv_general_dilated(x, w, (2, 2), "VALID", dimension_numbers=dn)
        else:
            x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
        return x + b


# ----------------------------------------------------------------------------- embeddings


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: (B,) -> (B, 2*embedding_size); W is a frozen parameter."""
    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        """(B,) -> (B, 2*embedding_size)."""
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        w = jax.lax.stop_gradient(w)
        proj = x[:, None] * w[None, :] * 2 * np.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def timestep_embedding(t, dim, max_positions=10000):
    """Sinusoidal embedding (B,) -> (B, dim), as in DDPM."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    return jnp.pad(emb, [[0, 0], [0, dim % 2]])


# ----------------------------------------------------------------------------- blocks


class NIN(nn.Module):
    """Per-pixel linear map (B,H,W,C) -> (B,H,W,num_units) with parameters W (C, num_units) and b."""
    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) -> (B,H,W,num_units)."""
        w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
        b = self.param("b", nn.initializers.zeros, (self.num_units,))
        return x @ w.astype(x.dtype) + b.astype(x.dtype)


class Combine(nn.Module):
    """Merge an input-pyramid image x into features y: 1x1 conv of x, then 'cat' or 'sum'."""
    method: str = "cat"

    @nn.compact
    def __call__(self, x, y):
        """x (B,H,W,Cx), y (B,H,W,Cy) -> (B,H,W,Cy or 2Cy)."""
        h = conv(x, y.shape[-1], size=1)
        return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels with residual: (B,H,W,C) -> (B,H,W,C)."""
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) -> (B,H,W,C)."""
        b, h, w, c = x.shape
        hn = group_norm(x)
        q, k, v = NIN(c)(hn), NIN(c)(hn), NIN(c)(hn)
        logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (c ** -0.5)
        attn = jax.nn.softmax(logits.reshape(b, h, w, h * w).astype(jnp.float32), axis=-1)
        attn = attn.astype(x.dtype).reshape(b, h, w, h, w)
        out = NIN(c, init_scale=self.init_scale)(jnp.einsum("bhwHW,bHWc->bhwc", attn, v))
        return (x + out) / np.sqrt(2.0) if self.skip_rescale else x + out


class Upsample(nn.Module):
    """2x upsampling, optionally FIR and/or with a learned conv: (B,H,W,C) -> (B,2H,2W,out_ch)."""
    out_ch: int = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) -> (B,2H,2W,out_ch or C)."""
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            h = naive_upsample_2d(x)
            return conv(h, out_ch) if self.with_conv else h
        if not self.with_conv:
            return upsample_2d(x, self.fir_kernel)
        return FIRConv(out_ch, up=True, fir_kernel=tuple(self.fir_kernel), name="Conv2d_0")(x)


class Downsample(nn.Module):
    """2x downsampling, optionally FIR and/or with a learned conv: (B,H,W,C) -> (B,H/2,W/2,out_ch)."""
    out_ch: int = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple = (1, 3, 3, 1)

    @nn.compact
    def __call__(self, x):
        """(B,H,W,C) -> (B,H/2,W/2,out_ch or C)."""
        out_ch = self.out_ch or x.shape[-1]
        if not self.fir:
            if self.with_conv:
                # Pad right/bottom only, matching score-SDE's stride-2 conv alignment.
                x = jnp.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
                return conv(x, out_ch, stride=2, padding="VALID")
            return naive_downsample_2d(x)
        if not self.with_conv:
            return downsample_2d(x, self.fir_kernel)
        return FIRConv(out_ch, down=True, fir_kernel=tuple(self.fir_kernel), name="Conv2d_0")(x)


class ResnetBlockDDPM(nn.Module):
    """DDPM++ residual block with time embedding: (B,H,W,C), (B,E) -> (B,H,W,out_ch)."""
    out_ch: int = None
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x, temb=None, train=True):
        """(B,H,W,C), (B,E) -> (B,H,W,out_ch)."""
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = conv(nn.swish(group_norm(x)), out_ch)
        if temb is not None:
            h += dense(nn.swish(temb), out_ch)[:, None, None, :]
        h = nn.swish(group_norm(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale)
        if c != out_ch:
            x = NIN(out_ch)(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """BigGAN residual block, optionally resampling by 2: (B,H,W,C), (B,E) -> (B,H',W',out_ch)."""
    out_ch: int = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    @nn.compact
    def __call__(self, x, temb=None, train=True):
        """(B,H,W,C), (B,E) -> (B,H',W',out_ch)."""
        c = x.shape[-1]
        out_ch = self.out_ch or c
        h = nn.swish(group_norm(x))
        if self.up:
            resample = (lambda z: upsample_2d(z, self.fir_kernel)) if self.fir else naive_upsample_2d
        elif self.down:
            resample = (lambda z: downsample_2d(z, self.fir_kernel)) if self.fir else naive_downsample_2d
        if self.up or self.down:
            h, x = resample(h), resample(x)
        h = conv(h, out_ch)
        if temb is not None:
            h += dense(nn.swish(temb), out_ch)[:, None, None, :]
        h = nn.swish(group_norm(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(h, out_ch, init_scale=self.init_scale)
        if c != out_ch or self.up or self.down:
            x = conv(x, out_ch, size=1)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h
