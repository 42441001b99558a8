"""SEDD: score entropy discrete diffusion (Lou, Meng & Ermon 2024), for the absorbing and the uniform process.

The denoiser's outputs are the log concrete scores log s_theta(z)_y ~ log q_t(z with z_i -> y) / q_t(z), one free value
per (position, candidate y) instead of a distribution over x_0. The loss is the denoising score entropy (DWDSE, their
Eq. 10 and Thm 3.6), the same CTMC NELBO as `uniform.nelbo_per_sequence` with the ratios left free:

    NELBO(x) = int_0^1 E_{z ~ q_t(.|x)} sum_i sum_{y != z_i} Q_t(y, z_i) [ s_y - r_y log s_y + r_y (log r_y - 1) ] dt,
    r_y = q_t(y | x_i) / q_t(z_i | x_i),

where Q_t(y, z) is the forward rate from y to z. Per process (beta_t = -alpha'_t / alpha_t):

* "absorbing": Q_t(y, MASK) = beta_t, and no other jumps, so only masked positions are scored; r_{x_i} =
  alpha / (1 - alpha) and r_y = 0 otherwise:  beta_t [ sum_y s_y - r log s_{x_i} + r (log r - 1) ].
  With s = r p_theta (a normalized prediction) this is exactly MDLM's -alpha'/(1 - alpha) (-log p_theta(x_i)).
* "uniform": Q_t(y, z) = beta_t / K for every y != z (see `uniform`); the score entropy of `uniform.score_entropy`.

The score entropy sum_y r_y K(s_y / r_y) (K(u) = u - 1 - log u) is >= 0 and 0 exactly at s = r.

**Parameterization** (SEDD's, as in the Duo code base's SEDDAbsorb): log s_y = network_y + b(t), with the baseline
b = log(alpha / (1 - alpha)) - log K for "absorbing" (a uniform prediction then has the right total rate) and b = 0 for
"uniform" (the ratios are ~1 at high noise); log s_{z_i} = 0 by definition; non-states get s = 0.

**Sampler** (SEDD's "Tweedie" denoiser, Eq. 18, applied to every position independently: Tweedie tau-leaping):

    p(z_s = y | z_t) ~ [exp(-sigma_ts Q) s_theta(z_t)]_y exp(sigma_ts Q)(y, z_t),   exp(-sigma_ts) = alpha_t / alpha_s,

negative entries (an imperfect score) clipped to 0. With the true scores it is the exact reverse transition of one
position.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.diffusion import uniform
from dlm_jax.diffusion.losses import NEG_INF

PROCESSES = ("absorbing", "uniform")


def log_scores(logits_BxLxV, z_BxL, alpha_B, one_minus_alpha_B, states_V, process: str):
  """log s_theta(z_t)_y in float32 (the module docstring's parameterization); NEG_INF off the states."""
  num_states = int(np.sum(states_V))
  log_s = logits_BxLxV.astype(jnp.float32)
  if process == "absorbing":
    baseline_B = jnp.log(alpha_B) - jnp.log(one_minus_alpha_B) - np.log(num_states)
    log_s = log_s + baseline_B[:, None, None]
  log_s = jnp.where(jax.nn.one_hot(z_BxL, logits_BxLxV.shape[-1], dtype=bool), 0.0, log_s)
  return jnp.where(jnp.asarray(states_V)[None, None], log_s, NEG_INF)


def nelbo_per_sequence(logits_BxLxV, x0_BxL, z_BxL, t_B, schedule, states_V, process: str, mask_id: int,
                       scored_BxL=None):
  """One-sample estimate of each sequence's denoising-score-entropy NELBO in nats (module docstring)."""
  num_states = int(np.sum(states_V))
  alpha_B, one_minus_B = schedule.alpha(t_B), schedule.one_minus_alpha(t_B)
  log_s = log_scores(logits_BxLxV, z_BxL, alpha_B, one_minus_B, states_V, process)
  if process == "absorbing":
    log_r_Bx1 = (jnp.log(alpha_B) - jnp.log(one_minus_B))[:, None]
    s_total_BxL = jnp.sum(jnp.where(jnp.asarray(states_V)[None, None], jnp.exp(log_s), 0.0), axis=-1)
    log_s_x0 = jnp.take_along_axis(log_s, x0_BxL[..., None], axis=-1)[..., 0]
    # sum_y s_y - r log s_x0 + r (log r - 1) = sum_y s_y - r - r log(s_x0 / r)
    r_Bx1 = jnp.exp(log_r_Bx1)
    entropy_BxL = s_total_BxL - r_Bx1 - r_Bx1 * (log_s_x0 - log_r_Bx1)
    entropy_BxL = jnp.where(z_BxL == mask_id, entropy_BxL, 0.0)  # (fixed positions are never masked)
    # The absorbing prior term is dropped, as in MDLM (alpha(1) ~ 0).
    return -schedule.dalpha(t_B) / alpha_B * jnp.sum(entropy_BxL, axis=-1)
  if process != "uniform":
    raise ValueError(f"Unknown SEDD process {process!r}; choose one of {PROCESSES}.")
  r = uniform.data_ratios(x0_BxL, z_BxL, alpha_B, one_minus_B, num_states, logits_BxLxV.shape[-1])
  entropy_BxL = uniform.score_entropy(jnp.exp(log_s), r, z_BxL, states_V)
  return uniform.sequence_total(entropy_BxL, uniform.rate_weight(schedule, t_B, num_states), schedule, num_states,
                                scored_BxL)


def tweedie_probs(log_s_BxLxV, z_BxL, alpha_t_B, alpha_s_B, states_V, process: str, mask_id: int):
  """p(z_s = y | z_t) per position, [B, L, V] (the module docstring's Tweedie step). For "absorbing" an unmasked
  position stays put; for "uniform" every position may move."""
  vocab = log_s_BxLxV.shape[-1]
  a = (alpha_t_B / alpha_s_B)[:, None, None]  # exp(-sigma_ts)
  s = jnp.exp(log_s_BxLxV)  # 0 off the states, 1 at z
  at_z = jax.nn.one_hot(z_BxL, vocab, dtype=s.dtype)
  on_states = jnp.asarray(states_V)[None, None]
  total = jnp.sum(jnp.where(on_states, s, 0.0), axis=-1, keepdims=True)  # sum over the states of s
  if process == "uniform":
    num_states = int(np.sum(states_V))
    # exp(-sigma Q) = I / a - (1 - a) / (a K) 11^T on the states; exp(sigma Q)(y, z) = a 1{y = z} + (1 - a) / K.
    staggered = s / a - (1.0 - a) / (a * num_states) * total
    unnormalized = jnp.maximum(staggered, 0.0) * (a * at_z + (1.0 - a) / num_states)
    unnormalized = jnp.where(on_states, unnormalized, 0.0)
  else:
    is_mask = jax.nn.one_hot(mask_id, vocab, dtype=bool)
    # Masked z: y != MASK gets (s_y / a)(1 - a); MASK keeps 1 - (1 - a) / a sum_y s_y (>= 0 for the true scores).
    reveal = jnp.where(on_states, s * (1.0 - a) / a, 0.0)
    stay = jnp.maximum(1.0 - (1.0 - a) / a * total, 0.0)
    unnormalized = jnp.where(is_mask, stay, reveal)
    unnormalized = jnp.where((z_BxL == mask_id)[..., None], unnormalized, at_z)
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)
