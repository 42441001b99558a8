"""Losses of masked diffusion and of the autoregressive control arm, as pure functions of arrays.

SUBS parameterization (MDLM §3.2): the denoiser's distribution p_theta(x_0 | x_t)
  * never puts mass on the mask token ("zero masking probabilities": its logit is set to -inf), and
  * copies visible tokens through ("carry-over unmasking": p(x_0^i = x_t^i) = 1 where x_t^i != MASK).
With carry-over, visible positions contribute exactly 0 to every loss below, so only masked positions are scored.

Continuous-time negative ELBO (MD4 eq. 5 / MDLM eq. 11), in nats per sequence:

    NELBO(x_0) = int_0^1  w(t)  E_{q(x_t|x_0)} [ sum_{i : x_t^i = MASK} -log p_theta(x_0^i | x_t) ]  dt,
    w(t) = -alpha'(t) / (1 - alpha(t)).

It upper-bounds -log p_theta(x_0) and, for an exact denoiser, equals it (it is the expected any-order
autoregressive NLL; Ou et al. 2024, Hoogeboom et al. 2022). A one-sample Monte Carlo estimate per sequence is
`w(t) * sum_i masked_i * nll_i` with t drawn by `forward.antithetic_times`.

The "masked-mean" objective (config diffusion.objective = "masked_mean"): the mean cross-entropy over the
masked positions at a discrete timestep, sum_i m_i CE_i / sum_i m_i. It is not a likelihood bound; evaluation always
reports the NELBO.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

LN2 = math.log(2.0)
NEG_INF = -1e9  # finite stand-in for -inf: keeps softmax NaN-free in bf16 and fp32


def subs_logits(logits_BxLxV, mask_id: int):
  """Float32 logits with the mask token's logit removed (SUBS zero-masking probabilities)."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  return logits_BxLxV.at[..., mask_id].set(NEG_INF)


def token_nll(logits_BxLxV, targets_BxL):
  """-log softmax(logits)[target] per position, float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV.astype(jnp.float32), targets_BxL)


def nelbo_per_sequence(nll_BxL, masked_BxL, t_B, schedule):
  """One-sample estimate of the continuous-time NELBO of each sequence, in nats: w(t) * sum_masked nll."""
  return schedule.weight(t_B) * jnp.sum(jnp.where(masked_BxL, nll_BxL, 0.0), axis=-1)


def masked_mean_per_sequence(nll_BxL, masked_BxL):
  """Mean CE over masked positions (0 for a sequence with nothing masked)."""
  n_masked_B = jnp.sum(masked_BxL, axis=-1)
  return jnp.sum(jnp.where(masked_BxL, nll_BxL, 0.0), axis=-1) / jnp.maximum(n_masked_B, 1)


def next_token_nll(logits_BxLxV, tokens_BxL):
  """Autoregressive control arm: position i predicts token i + 1. Returns nll_Bx(L-1)."""
  return token_nll(logits_BxLxV[:, :-1], tokens_BxL[:, 1:])


def nats_to_bits(nats):
  return nats / LN2
