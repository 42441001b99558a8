"""Forward process q(x_t | x_0) of absorbing-state diffusion and the time sampler of the ELBO.

q(x_t | x_0) = prod_i [ alpha(t) * 1{x_t^i = x_0^i} + (1 - alpha(t)) * 1{x_t^i = MASK} ]   (MD4 eq. 3)

Tokens are corrupted independently; positions flagged in `fixed_BxL` (e.g. a prompt, or padding that must never be
scored) are never masked.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.diffusion.schedules import MaskingSchedule


def antithetic_times(rng, batch_size: int, t_min: float = 1e-5):
  """Stratified ("antithetic") times t_b = (u + b / B) mod 1, b = 0..B-1, u ~ U[0, 1) (MD4, VDM).

  Each t_b is marginally U[0, 1) but the batch covers [0, 1) evenly, which lowers the variance of the batch-mean
  ELBO. Times are clipped below at t_min because w(t) diverges at t = 0 (where nothing is masked and the integrand
  is 0 * inf); the dropped mass int_0^{t_min} is O(t_min) nats per token.
  """
  u = jax.random.uniform(rng, (), jnp.float32)
  t_B = jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  return jnp.maximum(t_B, t_min)


def corrupt(rng, x0_BxL, t_B, schedule: MaskingSchedule, mask_id: int, fixed_BxL=None):
  """Samples x_t ~ q(x_t | x_0).

  Returns:
    xt_BxL: x_0 with each non-fixed token replaced by `mask_id` with probability 1 - alpha(t_b).
    masked_BxL: bool, True where a token was masked.
  """
  keep_prob_Bx1 = schedule.alpha(t_B)[:, None]
  uniform_BxL = jax.random.uniform(rng, x0_BxL.shape, jnp.float32)
  masked_BxL = uniform_BxL >= keep_prob_Bx1
  if fixed_BxL is not None:
    masked_BxL = masked_BxL & ~fixed_BxL
  xt_BxL = jnp.where(masked_BxL, jnp.asarray(mask_id, x0_BxL.dtype), x0_BxL)
  return xt_BxL, masked_BxL


def masked_log_prob(masked_BxL, t_B, schedule: MaskingSchedule):
  """log q(mask pattern | t): sum_i [m_i log(1 - alpha) + (1 - m_i) log alpha]. Used by the exact-ELBO tests."""
  alpha_Bx1 = schedule.alpha(t_B)[:, None]
  return jnp.sum(jnp.where(masked_BxL, jnp.log1p(-alpha_Bx1), jnp.log(alpha_Bx1)), axis=-1)
