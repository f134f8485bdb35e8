"""FID Inception-v3 (the TF 2015-12-05 graph as ported by pytorch-fid) in Flax linen, NHWC.

Weights: the pytorch-fid state_dict
    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
read as a {torch key: array} dict (the run layer reads the .pth without torch, or an .npz with the same keys)
and converted here by `params_from_state_dict`, which checks every key and shape.
"""
import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from subspace_diffusion import compiler

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                                      "pt_inception-2015-12-05-6726825d.pth")


class BasicConv(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3, running stats) + ReLU, named like torchvision's BasicConv2d."""
    features: int
    kernel: tuple
    strides: int = 1
    padding: tuple = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=((ph, ph), (pw, pw)),
                                use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    # TF's avg pool ignores padded zeros (pytorch-fid's count_include_pad=False patch).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_valid(x)], -1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_valid(x)], -1)


class InceptionE(nn.Module):
    """Mixed_7b uses avg pool (count_include_pad=False); Mixed_7c (FID E_2) uses max pool, as in the TF graph."""
    use_max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                                                    BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                                                    BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        if self.use_max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class FIDInceptionV3(nn.Module):
    """(B,H,W,3) in [-1,1] -> (pool3 (B,2048), logits (B,1008)); resizes bilinearly to 299x299 first."""

    @nn.compact
    def __call__(self, x):
        b = x.shape[0]
        # antialias=False + half-pixel centres matches torch F.interpolate(bilinear, align_corners=False).
        x = jax.image.resize(x, (b, 299, 299, x.shape[-1]), "bilinear", antialias=False)
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_valid(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_valid(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(use_max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return pool, nn.Dense(1008, name="fc")(pool)


def _variable_shapes():
    """Flax variable shapes {'params': ..., 'batch_stats': ...} without allocating weights."""
    return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)))


_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                                    ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                                    ("batch_stats", "var"): "running_var"}


def _torch_entries():
    """[(torch_key, torch_shape, collection, flax_path)] for every tensor of the FID Inception state_dict."""
    out = []
    for col, tree in _variable_shapes().items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            names = tuple(p.key for p in path)
            shape = tuple(leaf.shape)
            if names[-1] == "kernel" and len(shape) == 4:
                shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
            elif names[-1] == "kernel":
                shape = shape[::-1]  # Dense (in,out) -> Linear (out,in)
            key = ".".join(names[:-1] + (_LEAF_TO_TORCH[(col, names[-1])],))
            out.append((key, shape, col, names))
    return out


def params_from_state_dict(state_dict: dict, name: str = 'the weights') -> dict:
    """pytorch-fid state_dict {key: array} -> Flax {'params', 'batch_stats'} of FIDInceptionV3 (one-line errors)."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    entries = _torch_entries()
    expected = {k for k, _, _, _ in entries}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"{name} are not the FID Inception weights: {len(missing)} key(s) missing (e.g. "
                         f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); use {FID_WEIGHTS_URL}")
    variables = {"params": {}, "batch_stats": {}}
    for key, shape, col, names in entries:
        v = np.asarray(sd[key])
        if tuple(v.shape) != shape:
            raise ValueError(f"{name}: {key} has shape {tuple(v.shape)}, the FID Inception needs {shape}; use "
                             f"{FID_WEIGHTS_URL}")
        if v.ndim == 4:
            v = v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif v.ndim == 2:
            v = v.T
        node = variables[col]
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = jnp.asarray(v, jnp.float32)
    return variables


def inception_fn(variables: dict):
    """-> jitted fn(images (B,H,W,C) uint8 or [0,1] float, C in {1,3}) -> (pool (B,2048), logits (B,1008))."""
    model = FIDInceptionV3()

    # The weights are an argument, not closed over: closed over, their 95 MB would be compiled in as
    # constants, into every program and every persistent-cache entry.
    @compiler.jit
    def fn(variables, images):
        x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images.astype(jnp.float32)
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        return model.apply(variables, 2.0 * x - 1.0)

    return lambda images: fn(variables, images)
