"""The exactly solvable Gaussian case of SPEC section 5, built densely for small d (test helper)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from subspace_diffusion.core.diffusion import Diffusion
from subspace_diffusion.core.ode import ODEConfig
from subspace_diffusion.core.sampling import SamplerConfig, sample
from subspace_diffusion.core.subspaces import Chain, PieceStats, Subspace


def dense_basis(chain: Chain, k: int) -> np.ndarray:
    """U_k as a dense (d, n_k) matrix, obtained by applying chain.up to the level-k identity."""
    n = chain.dim(k)
    with jax.ensure_compile_time_eval():  # callable while a sampler is being traced
        eye = jnp.eye(n).reshape((n,) + tuple(chain.shapes[k]))
        return np.asarray(chain.up(eye, k), np.float64).reshape(n, -1).T


@dataclasses.dataclass
class GaussianCase:
    chain: Chain
    m: np.ndarray        # (d,)
    cov: np.ndarray      # (d, d)
    sigmas: np.ndarray   # (K,) per-piece std

    def stats(self, sigma_perp=None) -> PieceStats:
        """Exact piece statistics of the data (optionally with other sigma_perp, to inject errors)."""
        c = self.chain
        with jax.ensure_compile_time_eval():
            m = jnp.asarray(self.m, jnp.float32).reshape((1,) + tuple(c.shapes[0]))
            mu = [np.asarray(c.new_dirs(c.down(m, j - 1), j))[0] for j in range(1, c.num_levels + 1)]
        sp = self.sigmas if sigma_perp is None else np.asarray(sigma_perp)
        return PieceStats(mu=mu, sigma_perp=np.asarray(sp, np.float64), rms_distance=np.zeros(c.num_levels),
                          signature=c.signature())

    def subspace(self, cutoffs, sigma_perp=None) -> Subspace:
        """The chain with its exact statistics (or other sigma_perp) and the given cutoff times."""
        return Subspace(self.chain, self.stats(sigma_perp), cutoffs)

    def level_score(self, sde, k: int):
        """Exact score of the level-k marginal: x_k(t) ~ N(alpha U_k^T m, alpha^2 U_k^T Sigma U_k + sigma^2 I)."""
        u = dense_basis(self.chain, k)
        mean = jnp.asarray(u.T @ self.m, jnp.float32)
        # Eigenbasis of U^T Sigma U: the marginal precision is then a diagonal rescaling, no solve needed.
        lam, q = np.linalg.eigh(u.T @ self.cov @ u)
        lam, q = jnp.asarray(lam, jnp.float32), jnp.asarray(q, jnp.float32)
        shape = tuple(self.chain.shapes[k])

        def score(x, t):
            b = x.shape[0]
            a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            r = (x.reshape(b, -1) - a * mean) @ q
            return -((r / (a ** 2 * lam + s ** 2)) @ q.T).reshape((b,) + shape)

        return score

    def diffusion(self, sde, subspace=None) -> Diffusion:
        """The process of this case's shape: full space, or across `subspace`."""
        return Diffusion(sde, tuple(self.chain.shapes[0]), subspace)

    def scores(self, sde, subspace=None) -> list:
        """Exact level scores s_0..s_K for a sampler (K = 0 in full space)."""
        return [self.level_score(sde, k) for k in range((subspace.num_levels if subspace else 0) + 1)]

    def ode_samples(self, sde, method: str, budget, subspace, n: int, seed: int = 0) -> np.ndarray:
        """(n, d) samples of an ODE solver (a fixed-step one at `budget`, or the adaptive 'ode') with the exact level
        scores, key `seed`."""
        cfg = SamplerConfig(method=method, eps=sde.sampling_eps, ode=ODEConfig(nfe_budget=budget or 35.0))
        diffusion, fns = self.diffusion(sde, subspace), self.scores(sde, subspace)
        x = jax.jit(lambda key: sample(key, n, diffusion, fns, cfg)[0])(jax.random.PRNGKey(seed))
        return np.asarray(x, np.float64).reshape(n, -1)

    def logpdf(self, x):
        """Analytic log-density of the data, x (B, d)."""
        d = self.m.shape[0]
        r = x - self.m
        sign, logdet = np.linalg.slogdet(self.cov)
        return -0.5 * (d * np.log(2 * np.pi) + logdet + np.einsum('bi,ij,bj->b', r, np.linalg.inv(self.cov), r))


def make_case(chain: Chain, sigmas, seed=0, top_scale=0.5) -> GaussianCase:
    """x0 ~ N(m, U_K A U_K^T + sum_j sigma_j^2 (P_{j-1} - P_j)) with a mean component in every piece."""
    rng = np.random.default_rng(seed)
    K = chain.num_levels
    us = [dense_basis(chain, k) for k in range(K + 1)]
    projs = [u @ u.T for u in us]
    nK = chain.dim(K)
    g = rng.normal(size=(nK, nK))
    a = top_scale ** 2 * (g @ g.T / nK + 0.2 * np.eye(nK))
    cov = us[K] @ a @ us[K].T
    for j in range(1, K + 1):
        cov += sigmas[j - 1] ** 2 * (projs[j - 1] - projs[j])
    m = 0.3 * rng.normal(size=chain.dim(0))
    for j in range(1, K + 1):
        m += (projs[j - 1] - projs[j]) @ (0.5 * np.ones(chain.dim(0)) * (-1) ** j)
    return GaussianCase(chain, m, cov, np.asarray(sigmas, np.float64))
