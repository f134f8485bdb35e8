"""NCSN++ / DDPM++ U-Net of the score-SDE family (Song et al. 2021) in Flax linen.

DDPM++ is this same module under its settings (positional embedding, no FIR, no progressive
input). Every architectural option is a field of `Network`, built once from `config.model`.

Resolution: the module never hard-wires the input size (H and W must be divisible by
2^(len(ch_mult) - 1)). Where attention goes is `attention_placement`:
- 'resolution' (the reference's subspace networks): at the U-Net depths whose *input* pixel size is
  in `attn_resolutions`. A 16x16 CIFAR-10 network attends at depth 0, an 8x8 one nowhere but in the
  middle block: the networks that score_sde_pytorch builds with `data.image_size` set to the level.
- 'depth': at the depths where the full-space network (`image_size`) attends, at any input size, so
  one parameter set fits every level (needed for `subspace.shared_params`).

Top-level submodules are named `all_modules_<i>` after their index in the reference's ModuleList
(modules without parameters still take their index), so a score_sde_pytorch state_dict maps onto
these parameters by name (`models/convert.py`).
"""
import dataclasses
import functools
import itertools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.models import layers

_OPTIONS = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
    "attention_placement": ("resolution", "depth"),
    "dtype": ("float32", "bfloat16"),
    "sample_dtype": ("float32", "bfloat16"),
}
# Fields of Network that change how a network computes, not what it is: a checkpoint fits every value of them.
COMPUTE_FIELDS = ("dtype", "sample_dtype", "remat")
NAMES = ("ncsnpp", "ddpmpp")  # config.model.name: DDPM++ is NCSN++ under other settings


@dataclasses.dataclass(frozen=True)
class Network:
    """Architecture of one score network (config.model, plus the data range and full-space size; settings.py)."""

    nf: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple = (16,)
    attention_placement: str = "resolution"
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = True
    init_scale: float = 0.0
    centered: bool = False  # data in [-1, 1]; otherwise [0, 1] and the network maps it to [-1, 1]
    image_size: int = 32  # full-space resolution: fixes the attention depths under 'depth' placement
    dtype: str = "float32"  # training compute dtype ('bfloat16': mixed precision); parameters, output stay float32
    sample_dtype: str = "float32"  # compute dtype when not training (sampling, likelihood, cutoffs)
    remat: bool = False  # recompute each residual block's activations in the backward pass instead of storing them
    num_classes: int = 0  # class-conditional with this many classes (+1 'no label' embedding); 0: unconditional

    def __post_init__(self):
        for field in _OPTIONS:
            object.__setattr__(self, field, getattr(self, field).lower())
        for field in ('ch_mult', 'attn_resolutions', 'fir_kernel'):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        for field, allowed in _OPTIONS.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"config.model.{field}={getattr(self, field)!r} is not one of {allowed}")
        if self.nf < 4 or self.nf % 4:
            raise ValueError(f"config.model.nf={self.nf} must be a positive multiple of 4 (GroupNorm groups)")
        if not self.ch_mult:
            raise ValueError("config.model.ch_mult is empty: give one channel multiplier per U-Net resolution")
        if self.fir and not sum(self.fir_kernel) > 0:
            raise ValueError(f"config.model.fir_kernel={self.fir_kernel} must have a positive sum (it is normalised)")
        if self.num_classes and not self.conditional:
            raise ValueError("config.model.num_classes > 0 adds a class embedding to the time embedding, which "
                             "config.model.conditional=False leaves out: set config.model.conditional=True")
        if self.scale_by_sigma and self.embedding_type == "positional":
            raise ValueError("config.model.scale_by_sigma=True needs embedding_type='fourier' (time labels are "
                             "sigmas only there); set config.model.scale_by_sigma=False")

    def min_divisor(self) -> int:
        """H and W of an input must be multiples of this: 2^(len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    def attention_depths(self, input_size: int) -> frozenset:
        """U-Net depths (0 = input resolution) that carry attention for an input of `input_size` pixels."""
        size = input_size if self.attention_placement == "resolution" else self.image_size
        return frozenset(i for i in range(len(self.ch_mult)) if size // 2 ** i in self.attn_resolutions)


def check_input_size(shape, net: Network):
    """Raise ValueError if spatial dims (B,H,W,C) are not divisible by 2^(len(ch_mult)-1)."""
    factor = net.min_divisor()
    h, w = shape[1], shape[2]
    if h % factor or w % factor:
        raise ValueError(
            f"input {h}x{w} is not divisible by 2^(len(config.model.ch_mult)-1) = {factor} "
            f"(ch_mult={net.ch_mult}); use an input size that is a multiple of {factor} or a shorter ch_mult")


def class_embedding(temb, y, num_classes: int):
    """temb (B, D) plus a learned embedding of class labels y (B,) int in [0, num_classes], num_classes = no label
    (classifier-free guidance's unconditional model); y None: no label for every row."""
    if y is None:
        y = jnp.full((temb.shape[0],), num_classes, jnp.int32)
    emb = nn.Embed(num_classes + 1, temb.shape[-1], name="class_embedding")(y)
    return temb + emb.astype(temb.dtype)


class NCSNpp(nn.Module):
    """Score network: x (B,H,W,C), time labels (B,)[, class labels (B,)] -> (B,H,W,C)."""
    net: Network

    @nn.compact
    def __call__(self, x, time_cond, train=True, y=None):
        """x (B,H,W,C), time labels (B,) (sigma for fourier, 999 t for positional), class labels y (B,) int of a
        class-conditional network (num_classes = no label; None: none for every row) -> (B,H,W,C)."""
        m = self.net
        if y is not None and not m.num_classes:
            raise ValueError("class labels given to an unconditional network (config.model.num_classes=0)")
        check_input_size(x.shape, m)
        act = nn.swish
        nf, ch_mult = m.nf, m.ch_mult
        num_resolutions = len(ch_mult)
        attn_depths = m.attention_depths(x.shape[2])
        skip_rescale, init_scale = m.skip_rescale, m.init_scale
        index = itertools.count()

        def name():
            return f"all_modules_{next(index)}"

        if m.embedding_type == "fourier":
            # Fourier features act on log sigma; the raw labels are sigmas.
            temb = layers.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale, name=name())(
                jnp.log(time_cond))
        else:
            temb = layers.timestep_embedding(time_cond, nf)
        dtype = jnp.dtype(m.dtype if train else m.sample_dtype)
        if m.conditional:
            temb = layers.dense(temb.astype(dtype), nf * 4, name=name())
            temb = layers.dense(act(temb), nf * 4, name=name())
            if m.num_classes:  # named outside the reference's module list: unconditional trees are unchanged
                temb = class_embedding(temb, y, m.num_classes)
        else:
            temb = None

        attn = functools.partial(layers.AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        upsample = functools.partial(layers.Upsample, with_conv=m.resamp_with_conv, fir=m.fir,
                                     fir_kernel=m.fir_kernel)
        downsample = functools.partial(layers.Downsample, with_conv=m.resamp_with_conv, fir=m.fir,
                                       fir_kernel=m.fir_kernel)
        # Pyramids carry raw images (skip: no parameters, not in the reference's module list) or
        # features (residual: learned resampling).
        pyramid_upsample = functools.partial(layers.Upsample, fir=m.fir, fir_kernel=m.fir_kernel,
                                             with_conv=m.progressive == "residual")
        pyramid_downsample = functools.partial(layers.Downsample, fir=m.fir, fir_kernel=m.fir_kernel,
                                               with_conv=m.progressive_input == "residual")
        block = layers.ResnetBlockDDPM if m.resblock_type == "ddpm" else layers.ResnetBlockBigGAN
        if m.remat:  # the `train` flag (argument 3, counting the module) stays a Python bool
            block = nn.remat(block, static_argnums=(3,))
        if m.resblock_type == "ddpm":
            resnet = functools.partial(block, dropout=m.dropout, skip_rescale=skip_rescale, init_scale=init_scale)
        else:
            resnet = functools.partial(block, dropout=m.dropout, fir=m.fir, fir_kernel=m.fir_kernel,
                                       skip_rescale=skip_rescale, init_scale=init_scale)

        def merge(a, b):
            return (a + b) / np.sqrt(2.0) if skip_rescale else a + b

        if not m.centered:
            x = 2 * x - 1.0
        x = x.astype(dtype)

        # Downsampling path.
        input_pyramid = x if m.progressive_input != "none" else None
        hs = [layers.conv(x, nf, name=name())]
        for i_level in range(num_resolutions):
            for _ in range(m.num_res_blocks):
                h = resnet(out_ch=nf * ch_mult[i_level], name=name())(hs[-1], temb, train)
                if i_level in attn_depths:
                    h = attn(name=name())(h)
                hs.append(h)
            if i_level != num_resolutions - 1:
                if m.resblock_type == "ddpm":
                    h = downsample(name=name())(hs[-1])
                else:
                    h = resnet(down=True, name=name())(hs[-1], temb, train)
                if m.progressive_input == "input_skip":
                    input_pyramid = pyramid_downsample()(input_pyramid)
                    h = layers.Combine(method=m.progressive_combine, name=name())(input_pyramid, h)
                elif m.progressive_input == "residual":
                    input_pyramid = pyramid_downsample(out_ch=h.shape[-1], name=name())(input_pyramid)
                    input_pyramid = h = merge(input_pyramid, h)
                hs.append(h)

        h = hs[-1]
        h = resnet(name=name())(h, temb, train)
        h = attn(name=name())(h)
        h = resnet(name=name())(h, temb, train)

        # Upsampling path.
        pyramid = None
        for i_level in reversed(range(num_resolutions)):
            for _ in range(m.num_res_blocks + 1):
                h = resnet(out_ch=nf * ch_mult[i_level], name=name())(jnp.concatenate([h, hs.pop()], -1),
                                                                      temb, train)
            if i_level in attn_depths:
                h = attn(name=name())(h)
            if m.progressive != "none" and i_level == num_resolutions - 1:
                out = act(layers.group_norm(h, name=name()))
                if m.progressive == "output_skip":
                    pyramid = layers.conv(out, x.shape[-1], init_scale=init_scale, name=name())
                else:
                    pyramid = layers.conv(out, h.shape[-1], name=name())
            elif m.progressive == "output_skip":
                out = act(layers.group_norm(h, name=name()))
                out = layers.conv(out, x.shape[-1], init_scale=init_scale, name=name())
                pyramid = pyramid_upsample()(pyramid) + out
            elif m.progressive == "residual":
                pyramid = h = merge(pyramid_upsample(out_ch=h.shape[-1], name=name())(pyramid), h)
            if i_level != 0:
                if m.resblock_type == "ddpm":
                    h = upsample(name=name())(h)
                else:
                    h = resnet(up=True, name=name())(h, temb, train)

        if m.progressive == "output_skip":
            h = pyramid
        else:
            h = act(layers.group_norm(h, name=name()))
            h = layers.conv(h, x.shape[-1], init_scale=init_scale, name=name())

        h = h.astype(jnp.float32)
        if m.scale_by_sigma:
            h = h / time_cond.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h
