"""Diffusion duality (Duo, Sahoo et al. 2025): uniform-state diffusion is the argmax of Gaussian diffusion on one-hots.

Let w = abar x + sbar eps (x a one-hot over the K states, eps ~ N(0, I), variance preserving: abar^2 + sbar^2 = 1).
Its argmax is x with probability

    P(m) = int phi(u) Phi(u + m)^(K - 1) du,      m = abar / sbar,

(the x-coordinate, m + eps_x, beats the K - 1 others), and every other state with probability (1 - P) / (K - 1), by
symmetry. That is exactly the uniform-state marginal q_t(z | x) = alpha 1{z = x} + (1 - alpha) / K with

    alpha = T(abar) = (K P(m) - 1) / (K - 1)                       (Duo's diffusion transformation operator, Eq. 10),

so argmax(w_t) is a sample of the uniform process at the discrete alpha_t = T(abar_t). `GaussianDuality` tabulates
P on a grid of m (float64 quadrature at construction, by log Phi so that Phi^(K-1) stays accurate at K = 32k) and maps
both ways by monotone interpolation.

**Our choice of time parameterization.** Duo draws gamma_t linear in t (abar_t^2 = sigmoid(-gamma_t)) over a band
[gamma_min, gamma_max] and trains with the discrete alpha_t = T(abar_t) and its derivative. We instead keep the run's
discrete schedule alpha(t) (`diffusion.schedule`) and set abar_t = T^{-1}(alpha(t)): the Gaussian latent's argmax then
has the same marginal at every t as the process the model is evaluated and sampled with, t means the same thing to a
time-conditioned denoiser in the curriculum and after it, and the ELBO weight is the schedule's own (the continuous
NELBO depends on the schedule only through alpha, not through how t is parameterized). No band is imposed: the
curriculum covers the whole [t_min, 1).

**Soft tokens** (Duo's curriculum; seed 002's "soft tokens"): the denoiser sees softmax(w_t / tau) over the states
instead of the one-hot of argmax(w_t); tau -> 0 recovers the hard token. (Seed 002's sketch mixes one-hots and noise
with a weight drawn from U(0.25, 0.5); that is one point of this map, not a schedule, so we follow the math above.)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from dlm_jax.diffusion.losses import NEG_INF

SNR_MAX = 12.0  # m = abar / sbar at which the table ends: 1 - alpha < 1e-20 for any K up to 10^6


@functools.lru_cache(maxsize=16)
def _argmax_keep_table(num_states: int, grid_size: int):
  """(m_G, alpha_G): the discrete alpha = T at m on [0, SNR_MAX], by trapezoidal quadrature in float64."""
  m_G = np.linspace(0.0, SNR_MAX, grid_size)
  u_U = np.linspace(-10.0, 10.0 + SNR_MAX, 8001)
  # P(m) = int phi(u - m) Phi(u)^(K-1) du (u shifted by m), evaluated as exp(log phi + (K - 1) log Phi).
  log_cdf_U = special.log_ndtr(u_U)
  keep_G = np.array([np.trapezoid(np.exp(-0.5 * (u_U - m)**2 - 0.5 * np.log(2 * np.pi) + (num_states - 1) * log_cdf_U),
                                  u_U) for m in m_G])
  alpha_G = np.clip((num_states * keep_G - 1.0) / (num_states - 1.0), 0.0, 1.0)
  alpha_G[0] = 0.0
  return m_G, np.maximum.accumulate(alpha_G)


@dataclasses.dataclass(frozen=True)
class GaussianDuality:
  """The Gaussian <-> uniform-state correspondence for K = `num_states` states (module docstring)."""
  num_states: int
  grid_size: int = 1537

  @property
  def table(self):
    return _argmax_keep_table(self.num_states, self.grid_size)

  def discrete_alpha(self, snr_m):
    """T: alpha of argmax(m x + eps) as a function of m = abar / sbar (jnp, interpolated)."""
    m_G, alpha_G = self.table
    return jnp.interp(jnp.asarray(snr_m, jnp.float32), jnp.asarray(m_G, jnp.float32), jnp.asarray(alpha_G, jnp.float32))

  def gaussian_snr(self, alpha):
    """T^{-1}: the m = abar / sbar whose argmax has discrete keep-rate `alpha` (clipped to the table)."""
    m_G, alpha_G = self.table
    # np.unique keeps the first of equal alphas (the table saturates at 1 for large m).
    alpha_unique, first = np.unique(alpha_G, return_index=True)
    return jnp.interp(jnp.asarray(alpha, jnp.float32), jnp.asarray(alpha_unique, jnp.float32),
                      jnp.asarray(m_G[first], jnp.float32))

  def latents(self, x0_BxL, snr_B, eps_BxLxV, states_V):
    """w = abar x + sbar eps on the states (abar = m / sqrt(1 + m^2), sbar = 1 / sqrt(1 + m^2)); NEG_INF off them."""
    snr = snr_B[:, None, None]
    abar, sbar = snr / jnp.sqrt(1.0 + snr**2), 1.0 / jnp.sqrt(1.0 + snr**2)
    w_BxLxV = abar * jax.nn.one_hot(x0_BxL, eps_BxLxV.shape[-1], dtype=jnp.float32) + sbar * eps_BxLxV
    return jnp.where(jnp.asarray(states_V)[None, None], w_BxLxV, NEG_INF)


def soft_tokens(w_BxLxV, tau):
  """softmax(w / tau): Duo's soft tokens (tau -> 0: the one-hot of argmax w)."""
  return jax.nn.softmax(w_BxLxV / tau, axis=-1)
