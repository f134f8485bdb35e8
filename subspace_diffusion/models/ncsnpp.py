"""NCSN++ / DDPM++ U-Net of the score-SDE family (Song et al. 2021) in Flax linen.

DDPM++ is this same module under its configuration (positional embedding, no FIR, no
progressive input). Every architectural option is a field of `config.model`.

Resolution handling: the module never hard-wires the input size. Attention placement is
fixed by depth, not by pixel count: the depth indices whose resolution at the config's
native `data.image_size` appears in `model.attn_resolutions` get attention, and those same
depths get it at any input resolution. A subspace network run at 16x16 with a CIFAR config
therefore attends at depth 1 (8x8 there), exactly where the 32x32 network attends (16x16).
The input height and width must be divisible by 2^(len(ch_mult) - 1).
"""
import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from subspace_diffusion.models import layers

_OPTIONS = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


def validate_model_config(m):
    """Raise ValueError naming the field for any unknown option value of config.model."""
    for field, allowed in _OPTIONS.items():
        value = m[field].lower()
        if value not in allowed:
            raise ValueError(f"config.model.{field}={value!r} is not one of {allowed}")


def attention_depths(image_size, attn_resolutions, num_resolutions):
    """Depth indices (0 = full resolution) whose native resolution is in attn_resolutions."""
    return frozenset(i for i in range(num_resolutions) if image_size // 2 ** i in attn_resolutions)


def check_input_size(shape, ch_mult):
    """Raise ValueError if spatial dims (B,H,W,C) are not divisible by 2^(len(ch_mult)-1)."""
    factor = 2 ** (len(ch_mult) - 1)
    h, w = shape[1], shape[2]
    if h % factor or w % factor:
        raise ValueError(
            f"input {h}x{w} is not divisible by 2^(len(config.model.ch_mult)-1) = {factor} "
            f"(ch_mult={tuple(ch_mult)}); use an input size that is a multiple of {factor} "
            f"or a shorter ch_mult")


class NCSNpp(nn.Module):
    """Score network: x (B,H,W,C), time_cond (B,) -> (B,H,W,C)."""
    config: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, time_cond, train=True):
        """x (B,H,W,C), time labels (B,) (sigma for fourier, 999 t for positional) -> (B,H,W,C)."""
        m = self.config.model
        validate_model_config(m)
        check_input_size(x.shape, m.ch_mult)
        act = nn.swish
        nf, ch_mult = m.nf, tuple(m.ch_mult)
        num_res_blocks = m.num_res_blocks
        num_resolutions = len(ch_mult)
        attn_depths = attention_depths(self.config.data.image_size, tuple(m.attn_resolutions),
                                       num_resolutions)
        conditional = m.conditional
        fir, fir_kernel = m.fir, tuple(m.fir_kernel)
        skip_rescale, init_scale = m.skip_rescale, m.init_scale
        progressive = m.progressive.lower()
        progressive_input = m.progressive_input.lower()
        combine_method = m.progressive_combine.lower()
        embedding_type = m.embedding_type.lower()

        if embedding_type == "fourier":
            # Fourier features act on log sigma; the raw labels are sigmas.
            temb = layers.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale)(
                jnp.log(time_cond))
        else:
            temb = layers.timestep_embedding(time_cond, nf)
        if conditional:
            temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
            temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))
        else:
            temb = None

        attn = functools.partial(layers.AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        upsample = functools.partial(layers.Upsample, with_conv=m.resamp_with_conv, fir=fir,
                                     fir_kernel=fir_kernel)
        downsample = functools.partial(layers.Downsample, with_conv=m.resamp_with_conv, fir=fir,
                                       fir_kernel=fir_kernel)
        # Pyramids carry raw images (skip) or features (residual, learned resampling).
        pyramid_upsample = functools.partial(layers.Upsample, fir=fir, fir_kernel=fir_kernel,
                                             with_conv=progressive == "residual")
        pyramid_downsample = functools.partial(layers.Downsample, fir=fir, fir_kernel=fir_kernel,
                                               with_conv=progressive_input == "residual")
        if m.resblock_type.lower() == "ddpm":
            resnet = functools.partial(layers.ResnetBlockDDPM, dropout=m.dropout,
                                       skip_rescale=skip_rescale, init_scale=init_scale)
        else:
            resnet = functools.partial(layers.ResnetBlockBigGAN, dropout=m.dropout, fir=fir,
                                       fir_kernel=fir_kernel, skip_rescale=skip_rescale,
                                       init_scale=init_scale)

        def merge(a, b):
            return (a + b) / np.sqrt(2.0) if skip_rescale else a + b

        if not self.config.data.centered:
            x = 2 * x - 1.0

        # Downsampling path.
        input_pyramid = x if progressive_input != "none" else None
        hs = [layers.conv(x, nf)]
        for i_level in range(num_resolutions):
            for _ in range(num_res_blocks):
                h = resnet(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
                if i_level in attn_depths:
                    h = attn()(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                if m.resblock_type.lower() == "ddpm":
                    h = downsample()(hs[-1])
                else:
                    h = resnet(down=True)(hs[-1], temb, train)
                if progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = layers.Combine(method=combine_method)(input_pyramid, h)
                elif progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                    input_pyramid = h = merge(input_pyramid, h)
                hs.append(h)

        h = hs[-1]
        h = resnet()(h, temb, train)
        h = attn()(h)
        h = resnet()(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(num_res_blocks + 1):
                h = resnet(out_ch=nf * ch_mult[i_level])(jnp.concatenate([h, hs.pop()], -1),
                                                         temb, train)
            if i_level in attn_depths:
                h = attn()(h)
            if progressive == "output_skip":
                out = layers.conv(act(layers.group_norm(h.shape[-1])(h)), x.shape[-1],
                                  init_scale=init_scale)
                pyramid = out if pyramid is None else pyramid_upsample()(pyramid) + out
            elif progressive == "residual":
                if pyramid is None:
                    pyramid = layers.conv(act(layers.group_norm(h.shape[-1])(h)), h.shape[-1])
                else:
                    pyramid = h = merge(pyramid_upsample(out_ch=h.shape[-1])(pyramid), h)
            if i_level != 0:
                if m.resblock_type.lower() == "ddpm":
                    h = upsample()(h)
                else:
                    h = resnet(up=True)(h, temb, train)

        if progressive == "output_skip":
            h = pyramid
        else:
            h = act(layers.group_norm(h.shape[-1])(h))
            h = layers.conv(h, x.shape[-1], init_scale=init_scale)

        if m.scale_by_sigma:
            h = h / time_cond.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
