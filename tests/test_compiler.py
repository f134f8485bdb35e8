"""compiler.jit: convolutions leave YNNPACK for Eigen on a CPU, values stay XLA's, a refused option falls back to
XLA's defaults, and every program of the package compiles through it."""
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subspace_diffusion import compiler

PACKAGE = pathlib.Path(compiler.__file__).parent


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _ynn_convolutions(hlo: str) -> int:
    return sum('__ynn_fusion' in line and 'conv_general_dilated' in line for line in hlo.splitlines())


@pytest.fixture
def fresh_options():
    compiler.options.cache_clear()
    yield
    compiler.options.cache_clear()


def test_convolutions_and_their_gradients_leave_ynnpack_with_the_same_values():
    # 32 features: XLA:CPU's default hands such a convolution (and both its gradients) to YNNPACK.
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 32))
    w = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 32))
    grads = lambda x, w: jax.grad(lambda x, w: jnp.sum(jnp.sin(_conv(x, w))), argnums=(0, 1))(x, w)  # noqa: E731
    accepted = compiler.options() == {compiler.OPTION: compiler.VALUE}
    assert accepted or compiler.options() == {}  # a jaxlib without the option: XLA's defaults, same values
    for fn in (_conv, grads):
        ours = compiler.jit(fn)
        if accepted:
            assert _ynn_convolutions(ours.lower(x, w).compile().as_text()) == 0
        for a, b in zip(jax.tree.leaves(ours(x, w)), jax.tree.leaves(jax.jit(fn)(x, w)), strict=True):
            # Eigen sums in another order than YNNPACK: float32 rounding of sums over 1,024 products
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_a_refused_option_compiles_with_xla_defaults(fresh_options, monkeypatch):
    monkeypatch.setattr(compiler, 'VALUE', 'LIBRARY_FUSION_TYPE_NO_SUCH_TYPE')
    assert compiler.options() == {}
    np.testing.assert_allclose(compiler.jit(lambda x: 2 * x)(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_another_backend_gets_xla_defaults(fresh_options, monkeypatch):
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert compiler.options() == {}


def test_decorator_forms_pass_their_arguments():
    @compiler.jit(static_argnums=1)
    def scaled(x, n):
        return x * n

    @compiler.jit
    def plus_one(x):
        return x + 1
    np.testing.assert_allclose(scaled(jnp.ones(2), 3), [3.0, 3.0])
    np.testing.assert_allclose(plus_one(jnp.ones(2)), [2.0, 2.0])


def test_every_program_of_the_package_compiles_through_compiler_jit():
    # A plain jax.jit would run its convolutions in YNNPACK again, 2x slower on a 2-core CPU.
    sources = [path for path in sorted(PACKAGE.rglob('*.py')) if path.name != 'compiler.py']
    use = re.compile(r'@jax\.jit\b|\bjax\.jit\(|partial\(jax\.jit\b|\bpmap\(')
    offenders = [f'{path.relative_to(PACKAGE)}:{n}' for path in sources
                 for n, line in enumerate(path.read_text().splitlines(), 1) if use.search(line)]
    assert not offenders, offenders
