"""Forward SDEs dx = f(t) x dt + g(t) dw with marginals x_t = alpha(t) x0 + sigma(t) z (SPEC section 1).

Every method is a pure jnp function of t (any shape, broadcasting), so an SDE can be closed over
inside jit, grad and lax.scan. SDE objects are frozen dataclasses: hashable, usable as static args.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp


def bcast(c, x):
    """Reshape a per-example coefficient c (B,) or scalar so it broadcasts against x (B, ...)."""
    c = jnp.asarray(c, x.dtype)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclasses.dataclass(frozen=True)
class SDE:
    """One isotropic linear SDE; `kind` is 've', 'vp' or 'subvp' (SPEC section 1 table)."""

    kind: str
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self):
        if self.kind not in ('ve', 'vp', 'subvp'):
            raise ValueError(f"sde kind must be 've', 'vp' or 'subvp', got {self.kind!r}")
        if self.kind == 've' and not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f'VE needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}')
        if self.kind != 've' and not 0 <= self.beta_min < self.beta_max:
            raise ValueError(f'VP needs 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}')

    @property
    def sampling_eps(self) -> float:
        """score-SDE's default smallest sampling time: 1e-5 for VE, 1e-3 otherwise (likelihoods use 1e-5)."""
        return 1e-5 if self.kind == 've' else 1e-3

    def beta(self, t):
        """beta(t) = b_min + t (b_max - b_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def B(self, t):
        """Integrated beta, B(t) = b_min t + t^2 (b_max - b_min) / 2."""
        return self.beta_min * t + 0.5 * t ** 2 * (self.beta_max - self.beta_min)

    def alpha(self, t):
        """Signal scale alpha(t) of the marginal."""
        t = jnp.asarray(t)
        if self.kind == 've':
            return jnp.ones_like(t)
        return jnp.exp(-0.5 * self.B(t))

    def sigma(self, t):
        """Noise scale sigma(t) of the marginal."""
        t = jnp.asarray(t)
        if self.kind == 've':
            return self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        if self.kind == 'vp':
            return jnp.sqrt(-jnp.expm1(-self.B(t)))
        return -jnp.expm1(-self.B(t))

    def f(self, t):
        """Drift coefficient f(t) (drift = f(t) x)."""
        t = jnp.asarray(t)
        if self.kind == 've':
            return jnp.zeros_like(t)
        return -0.5 * self.beta(t)

    def g2(self, t):
        """Squared diffusion g(t)^2."""
        t = jnp.asarray(t)
        if self.kind == 've':
            return 2 * self.sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min)
        if self.kind == 'vp':
            return self.beta(t)
        return self.beta(t) * -jnp.expm1(-2 * self.B(t))

    def noise_ratio(self, t):
        """sigma(t) / alpha(t): the noise level of y = x / alpha, the time of the probability-flow ODE dy/dr = (y - D)/r."""
        return self.sigma(t) / self.alpha(t)

    def t_of_noise_ratio(self, r):
        """The time t with sigma(t) / alpha(t) = r (inverse of `noise_ratio`, any array shape)."""
        r = jnp.asarray(r)
        if self.kind == 've':
            return jnp.log(r / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        # VP: r^2 = exp(B) - 1; sub-VP: r = 2 sinh(B / 2). Then B(t) = b_min t + (b_max - b_min) t^2 / 2.
        B = jnp.log1p(r ** 2) if self.kind == 'vp' else 2 * jnp.arcsinh(r / 2)
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        return 2 * B / (b + jnp.sqrt(b ** 2 + 4 * a * B))

    def transition(self, t, s):
        """Exact forward kernel from t to a later s: x_s = r x_t + sqrt(q) z; returns (r, q)."""
        r = self.alpha(s) / self.alpha(t)
        q = self.sigma(s) ** 2 - r ** 2 * self.sigma(t) ** 2
        return r, q

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I) at T: s_max for VE, 1 otherwise."""
        return self.sigma_max if self.kind == 've' else 1.0

    def tweedie(self, x, t, score):
        """E[x0 | x_t] = (x + sigma(t)^2 s(x, t)) / alpha(t): the denoised estimate; x (B, ...), t scalar or (B,)."""
        return (x + bcast(self.sigma(t) ** 2, x) * score) / bcast(self.alpha(t), x)

    def perturb(self, x0, t, z):
        """x_t = alpha(t) x0 + sigma(t) z for x0, z (B, ...), t (B,)."""
        return bcast(self.alpha(t), x0) * x0 + bcast(self.sigma(t), x0) * z

    def prior_sample(self, key, shape, dtype=jnp.float32):
        """Sample the prior at T, shape (B, ...)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, x):
        """Log-density of the prior for x (B, ...), summed over all non-batch axes -> (B,)."""
        n = math.prod(x.shape[1:])
        s2 = self.prior_std ** 2
        sq = jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1)
        return -0.5 * n * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def reverse_drift(self, x, t, score, prob_flow=False):
        """Reverse-time drift f x - c g^2 s (c = 1 for the SDE, 1/2 for the ODE), x (B, ...), t (B,)."""
        c = 0.5 if prob_flow else 1.0
        return bcast(self.f(t), x) * x - c * bcast(self.g2(t), x) * score

