"""NCSN++ / DDPM++ building blocks: resolutions, attention placement, dropout, FIR, bad options.

The published architectures themselves are checked key by key in test_reference_import.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import convolve2d

from configs import quick_digits
from subspace_diffusion.run.experiment import Experiment
from subspace_diffusion.models import layers
from subspace_diffusion.models.ncsnpp import NCSNpp
from subspace_diffusion.models.score import get_score_fn
from subspace_diffusion.run.settings import Settings
from tiny import tiny_settings


def init_params(model, key, shape, batch=1):
    """Variables of `model` initialised with a (batch, *shape) dummy input."""
    x = jnp.zeros((batch,) + tuple(shape), jnp.float32)
    return model.init({"params": key, "dropout": key}, x, jnp.ones((batch,), jnp.float32), train=False)


def _shape(config, resolution=None):
    r = resolution or config.data.image_size
    return (r, r, config.data.num_channels)


def create_model(config):
    return NCSNpp(net=Settings.from_config(config).network)


def _param_shapes(config, resolution=None):
    model = create_model(config)
    return jax.eval_shape(lambda k: init_params(model, k, _shape(config, resolution)),
                          jax.random.PRNGKey(0))["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _tiny(**overrides):
    config = quick_digits.get_config()
    config.model.nf = 8
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (8,)
    config.model.dropout = 0.5
    config.model.init_scale = 1.0  # non-negligible outputs so dropout differences are visible
    for k, v in overrides.items():
        setattr(config.model, k, v)
    return config


VARIANTS = {
    "ncsnpp": {},
    "ddpmpp": dict(fir=False, progressive_input="none", embedding_type="positional",
                   scale_by_sigma=False),
    "ddpm_blocks_skip_cat": dict(resblock_type="ddpm", progressive="output_skip",
                                 progressive_input="input_skip", progressive_combine="cat"),
    "residual_no_fir_no_rescale": dict(fir=False, progressive="residual", skip_rescale=False,
                                       resamp_with_conv=False, resblock_type="ddpm"),
}


@pytest.mark.parametrize("variant,resolutions", [
    ("ncsnpp", (4,)), ("ddpmpp", (16, 8, 4)), ("ddpm_blocks_skip_cat", (8,)),
    ("residual_no_fir_no_rescale", (8,))])
def test_forward_at_resolutions(variant, resolutions):
    config = _tiny(**VARIANTS[variant])
    model = create_model(config)
    params = init_params(model, jax.random.PRNGKey(0), _shape(config, 4))
    # Eager apply: compiling six variants of even a tiny U-Net costs more than running them.
    apply = model.apply
    for r in resolutions:
        x = jax.random.normal(jax.random.PRNGKey(r), (2, r, r, 1))
        t = jnp.array([0.5, 2.0])
        out = apply(params, x, t, train=False)
        assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
        np.testing.assert_array_equal(out, apply(params, x, t, train=False))
        if r != min(resolutions):
            continue
        tr = [apply(params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(s)})
              for s in (1, 1, 2)]
        np.testing.assert_array_equal(tr[0], tr[1])
        assert np.abs(tr[0] - tr[2]).max() > 1e-3 * np.abs(out).max()
        assert np.abs(tr[0] - out).max() > 1e-3 * np.abs(out).max()


def test_attention_placement_by_depth_or_by_resolution():
    config = _tiny()  # native 16 px, attention at 8 px: depth 1
    config.model.attention_placement = "depth"
    assert _param_shapes(config, 16).keys() == _param_shapes(config, 8).keys()
    config.model.attention_placement = "resolution"
    at16, at8 = _param_shapes(config, 16), _param_shapes(config, 8)
    attn = lambda tree: sorted(k for k, v in tree.items() if "NIN_3" in v)
    # Same number of attention blocks (one resolution carries it, plus the middle), at other module indices.
    assert len(attn(at16)) == len(attn(at8)) == 3 and attn(at16) != attn(at8)


def test_score_fn_under_jit_and_scan():
    for name in ("ncsnpp", "ddpmpp"):
        config = _tiny(**VARIANTS[name])
        config.sde.kind = "ve" if name == "ncsnpp" else "vp"
        sde = Settings.from_config(config).sde
        model = create_model(config)
        params = init_params(model, jax.random.PRNGKey(0), _shape(config))["params"]
        score = get_score_fn(model, sde, params)
        x = jnp.ones((2, 8, 8, 1))
        raw = model.apply({"params": params}, x,
                          sde.sigma(jnp.full((2,), 0.3)) if sde.kind == "ve"
                          else jnp.full((2,), 0.3 * 999), train=False)
        expected = raw if sde.kind == "ve" else -raw / sde.sigma(0.3)

        def step(c, t):
            return c, score(x, jnp.full((2,), t))

        _, outs = jax.jit(lambda ts: jax.lax.scan(step, 0, ts))(jnp.array([0.3, 0.6]))
        np.testing.assert_allclose(outs[0], expected, rtol=1e-3, atol=1e-4)


def _np_upfirdn(x, k, up, down, pad0, pad1):
    """Direct single-channel reference: zero-insert, pad, true 2-D convolution, decimate."""
    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    u = np.pad(u, ((pad0, pad1), (pad0, pad1)))
    return convolve2d(u, k, mode="valid")[::down, ::down]


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 4, 6, 4, 1)])
def test_fir_resampling_matches_numpy(taps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    k2 = np.outer(taps, taps).astype(np.float64)
    k2 /= k2.sum()
    p = len(taps) - 2
    gain = 1.7
    up = layers.upsample_2d(jnp.asarray(x), taps, gain=gain)
    down = layers.downsample_2d(jnp.asarray(x), taps, gain=gain)
    for c in range(2):
        ref_up = _np_upfirdn(x[0, :, :, c], k2 * gain * 4, 2, 1, (p + 1) // 2 + 1, p // 2)
        ref_down = _np_upfirdn(x[0, :, :, c], k2 * gain, 1, 2, (p + 1) // 2, p // 2)
        np.testing.assert_allclose(up[0, :, :, c], ref_up, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(down[0, :, :, c], ref_down, rtol=1e-5, atol=1e-5)
    assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
    # Unit gain preserves constants away from the borders.
    ones = layers.upsample_2d(jnp.ones((1, 8, 8, 1)), taps)
    np.testing.assert_allclose(ones[0, 4:-4, 4:-4, 0], 1.0, rtol=1e-6)


def _fir_1331(a, up):
    """score-SDE's [1, 3, 3, 1] resampling along axis 0 by its closed form: up, each input pixel gives two outputs at
    a quarter pixel on either side, (x[i-1] + 3 x[i]) / 4 and (3 x[i] + x[i+1]) / 4; down, (x[2i-1] + 3 x[2i] +
    3 x[2i+1] + x[2i+2]) / 8; zeros outside the image."""
    n, p = a.shape[0], np.pad(a, [(1, 1)] + [(0, 0)] * (a.ndim - 1))
    if not up:
        return (p[0:n:2] + 3 * p[1:n + 1:2] + 3 * p[2:n + 2:2] + p[3:n + 3:2]) / 8
    out = np.zeros((2 * n,) + a.shape[1:])
    out[0::2], out[1::2] = (p[:n] + 3 * p[1:n + 1]) / 4, (3 * p[1:n + 1] + p[2:]) / 4
    return out


def test_fir_resampling_keeps_the_dtype_and_wants_1d_taps():
    x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
    assert layers.upsample_2d(x, (1, 3, 3, 1)).dtype == jnp.bfloat16
    assert layers.downsample_2d(x, (1, 3, 3, 1)).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="1-D taps"):
        layers.upfirdn2d(x, np.ones((2, 2)), up=2)


def test_fir_resampling_values_and_the_fused_convolutions():
    # Independent of upfirdn2d's padding arithmetic: the closed form above (a half-pixel phase error fails it).
    x = np.random.default_rng(0).normal(size=(1, 6, 6, 2)).astype(np.float32)
    for up, fn in ((True, layers.upsample_2d), (False, layers.downsample_2d)):
        expected = _fir_1331(_fir_1331(x[0], up).transpose(1, 0, 2), up).transpose(1, 0, 2)
        np.testing.assert_allclose(fn(jnp.asarray(x), (1, 3, 3, 1))[0], expected, atol=1e-6)
    # StyleGAN2's fused ops are up-sampling then a 3x3 convolution, and a convolution then down-sampling, padded
    # once: equal to the two separate steps away from the border.
    def conv(h, w):
        return jax.lax.conv_general_dilated(h, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    for kw, separate in (({'up': True}, lambda h, w: conv(layers.upsample_2d(h, (1, 3, 3, 1)), w)),
                         ({'down': True}, lambda h, w: layers.downsample_2d(conv(h, w), (1, 3, 3, 1)))):
        mod = layers.FIRConv(3, **kw)
        params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(1), a.shape),
                              mod.init(jax.random.PRNGKey(0), jnp.asarray(x)))
        fused = mod.apply(params, jnp.asarray(x))
        two_steps = separate(jnp.asarray(x), params['params']['kernel']) + params['params']['bias']
        assert fused.shape == two_steps.shape
        np.testing.assert_allclose(fused[:, 1:-1, 1:-1], two_steps[:, 1:-1, 1:-1], atol=1e-5)


def test_fused_fir_conv_shapes():
    x = jnp.ones((1, 8, 8, 3))
    for kw, shape in (({"up": True}, (1, 16, 16, 5)), ({"down": True}, (1, 4, 4, 5))):
        mod = layers.FIRConv(5, **kw)
        out, _ = mod.init_with_output(jax.random.PRNGKey(0), x)
        assert out.shape == shape


def test_bad_inputs_raise():
    config = _tiny()
    model = create_model(config)
    with pytest.raises(ValueError, match="ch_mult"):
        jax.eval_shape(lambda k: init_params(model, k, _shape(config, 5)), jax.random.PRNGKey(0))
    for field, value in (("progressive", "foo"), ("progressive_input", "bar"),
                         ("resblock_type", "x"), ("embedding_type", "y"),
                         ("progressive_combine", "z")):
        bad = _tiny(**{field: value})
        with pytest.raises(ValueError, match=field):
            _param_shapes(bad)
    bad = _tiny()
    bad.model.name = "unet"
    with pytest.raises(ValueError, match="model.name"):
        Settings.from_config(bad)
    bad = _tiny(embedding_type="positional", scale_by_sigma=True)
    with pytest.raises(ValueError, match="scale_by_sigma=False"):
        create_model(bad)


def test_vector_network_for_pca_levels():
    settings = tiny_settings(subspace__kind='pca', subspace__levels=2, subspace__cutoffs=(0.3, 0.6),
                             model__mlp_width=32, model__mlp_blocks=2)
    exp = Experiment.build(settings, levels=(0, 1, 2))
    nets = exp.networks
    assert [nets.shapes[k] for k in range(3)] == [(8, 8, 1), (16,), (4,)]
    assert nets.model_of(0) is nets.image_model and nets.model_of(1) is nets.vector_model
    params = nets.init_params(jax.random.PRNGKey(0))
    x, t = jax.random.normal(jax.random.PRNGKey(1), (3, 16)), jnp.array([0.1, 0.5, 0.9])
    score = nets.score(params, 1)(x, t)
    assert score.shape == (3, 16) and bool(jnp.all(jnp.isfinite(score)))
    # VE with scale_by_sigma: the output is divided by sigma(t), as NCSN++'s, so it grows as t falls.
    raw = nets.vector_model.apply({"params": params["level_1"]}, x, settings.sde.sigma(t), train=False)
    np.testing.assert_allclose(score, raw, rtol=1e-6)
    total, per_level = exp.loss(params, jnp.ones((2, 8, 8, 1)), jax.random.PRNGKey(2))
    assert set(per_level) == {0, 1, 2} and np.isfinite(total)
    with pytest.raises(ValueError, match='PCA levels are vectors'):
        tiny_settings(subspace__kind='pca', subspace__levels=1, subspace__cutoffs=(0.5,), subspace__shared_params=True)
