"""Uniform-state discrete diffusion (UDLM, Schiff et al. 2025; Duo, Sahoo et al. 2025): the forward process, its
continuous-time NELBO and the reverse posterior, as pure functions of arrays.

**State space.** The K tokens that data can hold: every id but the tokenizer's `special.never_sampled` (pad, bos,
mask, unk), marked by `states_V`. There is no absorbing state.

**Forward process.** Each token is kept with probability alpha(t) and otherwise replaced by a uniform draw over the K
states (which may redraw the token itself):

    q_t(z | x) = alpha_t 1{z = x} + (1 - alpha_t) / K,        alpha_t = `MaskingSchedule.alpha(t)`.

It is the CTMC with rate matrix beta_t (11^T / K - I), beta_t = -alpha'_t / alpha_t: every state jumps to each other
state at rate beta_t / K.

**Continuous-time NELBO** (the CTMC ELBO of Campbell et al. 2022 in the form of SEDD's denoising score entropy, Lou et
al. 2024 Thm 3.6; equal to UDLM's Eq. 12 for the "mean" parameterization), in nats per sequence:

    NELBO(x) = int_0^1 E_{z ~ q_t(.|x)} sum_i (beta_t / K) sum_{y != z_i} r_y K(s_y / r_y) dt,
    r_y = q_t(y | x_i) / q_t(z_i | x_i),     K(u) = u - 1 - log u >= 0,

where s_y estimates the reverse ratio q_t(z with z_i -> y) / q_t(z). (With alpha_1 = 0 the prior term vanishes.)

**Parameterization** (`parameterization`). The denoiser predicts p_theta(x_0^i | z_t) over the states (the mask and the
other never-data ids get no mass: SUBS's "zero masking probabilities" for this process). Masked diffusion's carry-over
(a visible token is clean) has no counterpart here, since any token may be noise; its role, making the bound exact at
the optimum, is played by how the prediction becomes ratios:

* "posterior": the exact marginalization over the predicted x_0,
      s_y = sum_v p_v q_t(y | v) / q_t(z | v) = 1 + p_y alpha / c - p_z alpha / (alpha + c),   c = (1 - alpha) / K.
  When p_theta is the true posterior p(x_0^i | z_t) these are the true reverse ratios, so the NELBO equals -log p(x_0)
  (tested by enumeration). The ancestral sampler is the same mixture, sum_v p_v q(z_s | z_t, x = v).
* "mean" (UDLM/Duo's code; the default): the prediction plugged into q_t as if it were a one-hot,
      s_y = q_t(y | p) / q_t(z | p) = (K alpha p_y + 1 - alpha) / (K alpha p_z + 1 - alpha),
  a narrower family (equal to "posterior" only at one-hot p), so its optimum is a bound, not -log p(x_0); the sampler is
  the plug-in q(z_s | z_t, x = p).

Why "mean" is the default although only "posterior" is exact at the optimum: at low noise (t -> 0, c ~ t / K) a
position that looks clean, with p_y = eps spread over the other tokens, gets s_y ~ eps / t under "posterior" (the
reverse process must move it to y by t = 0 if x_0 might be y) but ~ eps / K under "mean". The posterior loss thus
charges the model's doubt at clean positions with weight 1 / t: its NELBO estimate is heavy-tailed and it trained
worse at CPU scale (BENCHMARKS.md, "Beyond masking": 2.98 +- 0.29 vs 2.70 +- 0.06 nats/char after 500 steps).

Numerics (float32): every ratio is computed as a sum of non-negative terms, 1 - alpha in closed form
(`MaskingSchedule.one_minus_alpha`), and K(u) by a series near u = 1, where s and r are both ~1 at high noise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import special_tokens
from dlm_jax.diffusion.losses import NEG_INF

PARAMETERIZATIONS = ("posterior", "mean")


def states(vocab_size: int, special: special_tokens.SpecialIds) -> np.ndarray:
  """bool [V]: the ids a uniform-state process moves between (every id but `special.never_sampled`: pad, bos, mask
  and unk)."""
  states_V = np.ones(vocab_size, bool)
  states_V[list(special.never_sampled)] = False
  return states_V


def corrupt(rng, x0_BxL, alpha_B, states_V, fixed_BxL=None):
  """z ~ q_t(z | x_0): each non-fixed token kept with probability alpha_b, else redrawn uniformly from the states.

  Returns (z_BxL, resampled_BxL) where resampled marks the positions that were redrawn (they may hold x_0 again)."""
  state_ids_K = jnp.asarray(np.flatnonzero(states_V), jnp.int32)
  keep_key, draw_key = jax.random.split(rng)
  resampled_BxL = jax.random.uniform(keep_key, x0_BxL.shape) >= alpha_B[:, None]
  if fixed_BxL is not None:
    resampled_BxL = resampled_BxL & ~fixed_BxL
  noise_BxL = state_ids_K[jax.random.randint(draw_key, x0_BxL.shape, 0, state_ids_K.shape[0])]
  return jnp.where(resampled_BxL, noise_BxL, x0_BxL).astype(x0_BxL.dtype), resampled_BxL


def prior_sample(rng, shape, states_V):
  """z_1 ~ Uniform(states)^shape, the reverse process's start (exact when alpha(1) = 0)."""
  state_ids_K = jnp.asarray(np.flatnonzero(states_V), jnp.int32)
  return state_ids_K[jax.random.randint(rng, shape, 0, state_ids_K.shape[0])]


def state_log_probs(logits_BxLxV, states_V):
  """log p_theta(x_0 | z_t) in float32 with the non-states removed (their logits set to NEG_INF)."""
  logits_BxLxV = jnp.where(jnp.asarray(states_V)[None, None], logits_BxLxV.astype(jnp.float32), NEG_INF)
  return jax.nn.log_softmax(logits_BxLxV, axis=-1)


def bregman_k(u):
  """K(u) = u - 1 - log u >= 0, the score-entropy divergence, accurate at both ends: log u itself for small u (where
  u - 1 rounds to -1) and a series in d = u - 1 for |d| < 0.05 (where the terms cancel)."""
  d = u - 1.0
  small = jnp.abs(d) < 0.05
  d_small = jnp.where(small, d, 0.0)
  series = d_small * d_small * (0.5 - d_small / 3.0 + d_small * d_small / 4.0 - d_small**3 / 5.0)
  u_large = jnp.where(small, 2.0, u)
  return jnp.where(small, series, u_large - 1.0 - jnp.log(u_large))


def _levels(alpha_B, one_minus_alpha_B, num_states: int):
  """(alpha, c, alpha + c) as [B, 1, 1], c = (1 - alpha) / K = q_t(z | x) for z != x."""
  alpha = alpha_B[:, None, None]
  c = one_minus_alpha_B[:, None, None] / num_states
  return alpha, c, alpha + c


def model_ratios(probs_BxLxV, z_BxL, alpha_B, one_minus_alpha_B, num_states: int, parameterization="mean"):
  """s_y for every y from p_theta(x_0 | z_t) (the module docstring's two parameterizations), each a sum of
  non-negative terms (no cancellation at any noise level); 1 at y = z_i. Entries off the states must be masked by the
  caller. "posterior": s_y = p_z c / (alpha + c) + p_y (alpha + c) / c + sum_{v != z, y} p_v."""
  alpha, c, alpha_c = _levels(alpha_B, one_minus_alpha_B, num_states)
  at_z = jax.nn.one_hot(z_BxL, probs_BxLxV.shape[-1], dtype=bool)
  p_z = jnp.sum(jnp.where(at_z, probs_BxLxV, 0.0), axis=-1, keepdims=True)
  if parameterization == "posterior":
    others = jnp.sum(jnp.where(at_z, 0.0, probs_BxLxV), axis=-1, keepdims=True)  # 1 - p_z without cancellation
    ratios = p_z * (c / alpha_c) + probs_BxLxV * (alpha_c / c) + jnp.maximum(others - probs_BxLxV, 0.0)
  elif parameterization == "mean":
    kalpha = num_states * alpha
    ratios = (kalpha * probs_BxLxV + num_states * c) / (kalpha * p_z + num_states * c)
  else:
    raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}.")
  return jnp.where(at_z, 1.0, ratios)


def data_ratios(x0_BxL, z_BxL, alpha_B, one_minus_alpha_B, num_states: int, vocab_size: int):
  """r_y = q_t(y | x_0) / q_t(z | x_0) for every y (1 at y = z):
  z = x_0: c / (alpha + c) for all y != z;  z != x_0: (alpha + c) / c at y = x_0, 1 elsewhere."""
  _, c, alpha_c = _levels(alpha_B, one_minus_alpha_B, num_states)
  clean_BxLx1 = (x0_BxL == z_BxL)[..., None]
  at_x0 = jax.nn.one_hot(x0_BxL, vocab_size, dtype=bool)
  at_z = jax.nn.one_hot(z_BxL, vocab_size, dtype=bool)
  ratios = jnp.where(clean_BxLx1, c / alpha_c, jnp.where(at_x0, alpha_c / c, 1.0))
  return jnp.where(at_z, 1.0, ratios)


def score_entropy(s_BxLxV, r_BxLxV, z_BxL, states_V):
  """sum_{y != z_i, y a state} r_y K(s_y / r_y) per position, [B, L]: >= 0, and 0 exactly where s = r."""
  terms = r_BxLxV * bregman_k(s_BxLxV / r_BxLxV)
  off_z = jnp.asarray(states_V)[None, None] & ~jax.nn.one_hot(z_BxL, s_BxLxV.shape[-1], dtype=bool)
  return jnp.sum(jnp.where(off_z, terms, 0.0), axis=-1)


def rate_weight(schedule, t_B, num_states: int):
  """beta_t / K = -alpha'_t / (K alpha_t), the rate at which a state jumps to each other state; 0 where alpha_t
  rounds to 0 (there s = r = 1 and the score entropy vanishes faster than beta_t grows)."""
  alpha_B = schedule.alpha(t_B)
  return jnp.where(alpha_B > 0, -schedule.dalpha(t_B) / (num_states * jnp.maximum(alpha_B, 1e-30)), 0.0)


def prior_kl(alpha_1, num_states: int):
  """KL(q_1(. | x) || Uniform) per token, the NELBO's prior term: 0 when alpha(1) = 0 (linear, cosine), ~K alpha_1^2 / 2
  for the log-linear schedule's alpha(1) = eps."""
  keep, other = alpha_1 + (1.0 - alpha_1) / num_states, (1.0 - alpha_1) / num_states
  terms = keep * np.log(num_states * keep) + (num_states - 1) * (other * np.log(num_states * other) if other else 0.0)
  return float(terms)


def nelbo_per_sequence(logits_BxLxV, x0_BxL, z_BxL, t_B, schedule, states_V, parameterization="mean",
                       scored_BxL=None):
  """One-sample estimate of each sequence's uniform-state NELBO in nats: (beta_t / K) sum_i score_entropy_i + the prior
  term `prior_kl` per position, over the `scored_BxL` positions (all by default)."""
  num_states = int(np.sum(states_V))
  alpha_B, one_minus_B = schedule.alpha(t_B), schedule.one_minus_alpha(t_B)
  probs_BxLxV = jnp.exp(state_log_probs(logits_BxLxV, states_V))
  s = model_ratios(probs_BxLxV, z_BxL, alpha_B, one_minus_B, num_states, parameterization)
  r = data_ratios(x0_BxL, z_BxL, alpha_B, one_minus_B, num_states, logits_BxLxV.shape[-1])
  entropy_BxL = score_entropy(s, r, z_BxL, states_V)
  return sequence_total(entropy_BxL, rate_weight(schedule, t_B, num_states), schedule, num_states, scored_BxL)


def sequence_total(entropy_BxL, weight_B, schedule, num_states: int, scored_BxL=None):
  """weight_b sum_i entropy_bi + prior_kl per scored position: a uniform-state NELBO sample per sequence."""
  if scored_BxL is None:
    scored_BxL = jnp.ones(entropy_BxL.shape, bool)
  with jax.ensure_compile_time_eval():  # a Python constant, also under jit
    prior = prior_kl(float(schedule.alpha(1.0)), num_states)
  return weight_B * jnp.sum(jnp.where(scored_BxL, entropy_BxL, 0.0), axis=-1) + prior * jnp.sum(scored_BxL, axis=-1)


def reverse_probs(probs_BxLxV, z_BxL, alpha_t_B, alpha_s_B, states_V, parameterization="mean"):
  """p_theta(z_s = y | z_t) per position, [B, L, V] (0 off the states), for s < t.

  "posterior": sum_v p_v q(z_s | z_t, x = v) = q(z_t | z_s = y) [alpha_s p_y / q_t(z | y) + (1 - alpha_s) / K
  sum_v p_v / q_t(z | v)], with q(z_t | z_s = y) = a 1{y = z} + (1 - a) / K, a = alpha_t / alpha_s.
  "mean": the same posterior with p plugged in for the one-hot x (Duo's `_posterior_from_x0`). At alpha_s = 1
  "posterior" gives p_theta(x_0 | z_t) itself, "mean" the plug-in (a 1{y = z} + c_t) p_y / q_t(z | p)."""
  num_states = int(np.sum(states_V))
  at = alpha_t_B[:, None, None]
  als = alpha_s_B[:, None, None]
  a = at / als
  ct = (1.0 - at) / num_states
  at_z = jax.nn.one_hot(z_BxL, probs_BxLxV.shape[-1], dtype=probs_BxLxV.dtype)
  transition = a * at_z + (1.0 - a) / num_states  # q(z_t | z_s = y)
  if parameterization == "posterior":
    p_z = jnp.sum(probs_BxLxV * at_z, axis=-1, keepdims=True)
    mixture = p_z / (at + ct) + (1.0 - p_z) / ct  # sum_v p_v / q_t(z | v)
    unnormalized = transition * (als * probs_BxLxV / (at * at_z + ct) + (1.0 - als) / num_states * mixture)
  else:
    q_s = als * probs_BxLxV + (1.0 - als) / num_states  # q_s(y | p)
    unnormalized = transition * q_s
  unnormalized = jnp.where(jnp.asarray(states_V)[None, None], jnp.maximum(unnormalized, 0.0), 0.0)
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)
