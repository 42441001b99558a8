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

import jax
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


def tied_head_nll(hidden_BxLxD, head_VxD, targets_BxL, mask_id: int, chunk: int):
  """token_nll(subs_logits(hidden @ head^T), targets) without the [B, L, V] logits: `chunk` token rows at a time.

  Each chunk's logits come from a matmul in the hidden states' dtype (bfloat16 on GPU) with float32 accumulation and
  output, then the mask id is removed (SUBS) and -log softmax[target] = logsumexp(logits) - logits[target] is taken in
  float32. The chunks run as a lax.map whose body is rematerialized (jax.checkpoint), so neither the forward nor the
  backward pass holds more than one chunk's [chunk, V] logits; the gradient reaches the hidden states and the head
  (the tied embedding) as through the full computation. Rows are padded to a multiple of `chunk`.

  Chunk c holds the strided rows c, c + n, c + 2n, ... (n chunks), not a contiguous block: with the batch split over
  devices each chunk then spans every device's rows, so the loop runs over an unsplit axis and no device gathers
  another's hidden states (contiguous chunks put the loop axis on the split one: base_110m's data-parallel step
  all-gathered 200 MB of hidden states and their gradient per step, BENCHMARKS.md "Scale-out")."""
  batch, length, width = hidden_BxLxD.shape
  rows = batch * length
  num_chunks = -(-rows // chunk)
  pad = num_chunks * chunk - rows
  hidden_NxD = jnp.pad(hidden_BxLxD.reshape(rows, width), ((0, pad), (0, 0)))
  targets_N = jnp.pad(targets_BxL.reshape(rows), (0, pad))

  @jax.checkpoint
  def chunk_nll(inputs):
    h_KxD, t_K = inputs
    logits_KxV = jnp.dot(h_KxD, head_VxD.T, preferred_element_type=jnp.float32)
    logits_KxV = logits_KxV.at[:, mask_id].set(NEG_INF)
    target_K = jnp.take_along_axis(logits_KxV, t_K[:, None], axis=-1)[:, 0]
    return jax.nn.logsumexp(logits_KxV, axis=-1) - target_K

  strided = lambda x: jnp.swapaxes(x.reshape(chunk, num_chunks, *x.shape[1:]), 0, 1)  # [n, chunk, ...]
  nll_nxK = jax.lax.map(chunk_nll, (strided(hidden_NxD), strided(targets_N)))
  return jnp.swapaxes(nll_nxK, 0, 1).reshape(-1)[:rows].reshape(batch, length)


def nelbo_per_sequence(nll_BxL, masked_BxL, t_B, schedule, weight_BxL=None):
  """One-sample estimate of the continuous-time NELBO of each sequence, in nats: w(t) * sum_masked nll, or
  sum_masked w_i nll_i with per-token weights (script-aware corruption's unit schedules, diffusion/corruption.py)."""
  if weight_BxL is not None:
    return jnp.sum(jnp.where(masked_BxL, weight_BxL * nll_BxL, 0.0), axis=-1)
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


def self_condition_input(logits_BxLxV, mask_id: int):
  """Self-conditioning's input from a pass's logits: p(x_0 | x_t) under SUBS (the mask id removed), float32, without
  gradient (the first pass is not trained through)."""
  probs_BxLxV = jax.nn.softmax(subs_logits(logits_BxLxV, mask_id).astype(jnp.float32), axis=-1)
  return jax.lax.stop_gradient(probs_BxLxV)


def drawable_logits(logits_BxLxV, special):
  """float32 logits with the never-sampled ids (`special.never_sampled`: pad, bos, mask, unk, less eos) at NEG_INF:
  the distribution a sampler draws from (the sampler's `primitives.sampling_logits`)."""
  never_sampled = jnp.asarray(special.never_sampled, jnp.int32)
  return logits_BxLxV.astype(jnp.float32).at[..., never_sampled].set(NEG_INF)


def greedy_correct(logits_BxLxV, x0_BxL, special):
  """1[argmax_v of the drawable logits = x_0], float32 [B, L]: whether the greedy sampler's candidate is the true
  token (what a calibration head forecasts, models.base.CalibrationHead)."""
  return (jnp.argmax(drawable_logits(logits_BxLxV, special), axis=-1) == x0_BxL).astype(jnp.float32)

