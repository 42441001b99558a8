"""What every reverse sampler shares: the output struct, logit filtering and drawing, the confidence scores that rank a
masked sampler's candidates, and top-k selection masks. Nothing here imports another sampling module."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.diffusion import losses


@flax.struct.dataclass
class SampleOutput:
  tokens_BxL: jax.Array
  reveal_step_BxL: jax.Array  # int32; -1 for fixed positions
  confidence_BxL: jax.Array  # float32 score when revealed; 0 for fixed positions
  trajectory_SxBxL: jax.Array | None = None  # [max_steps + 1, B, L] when recorded
  steps_B: jax.Array | None = None  # int32 steps each row took
  lengths_B: jax.Array | None = None  # int32 generated tokens kept (before the first EOS with eos_stop)
  network_calls: jax.Array | None = None  # int32 forward passes of the denoiser for the batch


def stateless(logits_fn: Callable) -> Callable:
  """`(x, t) -> logits` as the sampler's `(x, t, carry) -> (logits, None, carry)`."""
  return lambda x_BxL, t_B, carry: (logits_fn(x_BxL, t_B), None, carry)


def filter_logits(logits_BxLxV, temperature: float, top_k: int, top_p: float):
  """Temperature, then top-k, then nucleus (top-p) filtering; filtered entries get a large negative logit."""
  logits_BxLxV = logits_BxLxV / temperature
  if top_k and top_k < logits_BxLxV.shape[-1]:
    kth_BxLx1 = jax.lax.top_k(logits_BxLxV, top_k)[0][..., -1:]
    logits_BxLxV = jnp.where(logits_BxLxV < kth_BxLx1, losses.NEG_INF, logits_BxLxV)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits_BxLxV, axis=-1)[..., ::-1]
    probs_sorted = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs_sorted, axis=-1) - probs_sorted
    keep = mass_before < top_p  # always keeps the top token
    threshold_BxLx1 = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits_BxLxV = jnp.where(logits_BxLxV < threshold_BxLx1, losses.NEG_INF, logits_BxLxV)
  return logits_BxLxV


# sample.draw_precision -> the mode of JAX's Gumbel noise (`categorical`'s docstring says what each resolves).
DRAW_PRECISIONS = {"float32": "low", "float64": "highest"}


def categorical(key, logits_xV, precision: str = "float32"):
  """A categorical draw from logits [..., V] by Gumbel-max, argmax(logits + g), at the noise resolution `precision`
  (`DRAW_PRECISIONS`):

  * "float32": JAX's default noise, g = -log(-log u) with u a float32 uniform on a 2^-23 grid in [tiny, 1), so
    -4.47 <= g <= -log(-log(1 - 2^-23)) ~= 15.9 (exact noise exceeds 15.9 with probability 1.2e-7 per token). A
    token more than ~20.4 nats below the best can never be drawn, and the far tail of every position's distribution
    is thinned: a sampler that reveals many positions over a large vocabulary loses low-probability tokens, and the
    entropy and generative perplexity of its samples come out too low (the float32-noise bias that ReMDM's and
    MDLM's users report).
  * "float64": JAX's mode="highest": u is a 64-bit fixed-point uniform made of two 32-bit words, and the noise is
    -log(-log1p(-u)) for u < 1/2 and -log(-log(u)) for u >= 1/2, each branch evaluating the exponential -log(1 - u) with
    float32's relative precision where it is small or large. The uniform's resolution, 2^-64, is finer than a float64
    uniform's (2^-53): g reaches ~44.4, past float64 noise's ~36.7, so no event a float64 draw can produce is cut. The
    sum and argmax stay float32 (their rounding moves near-ties by ~1e-7 relative; it cuts no tail). Twice the random
    bits of "float32"."""
  if precision not in DRAW_PRECISIONS:
    raise ValueError(f"draw precision must be one of {tuple(DRAW_PRECISIONS)}, got {precision!r}.")
  return jax.random.categorical(key, logits_xV, axis=-1, mode=DRAW_PRECISIONS[precision]).astype(jnp.int32)


def draw(logits_xV, cfg, key):
  """Token ids from logits [..., V] in any float dtype: the argmax when cfg.greedy, else a categorical draw (Gumbel-max:
  argmax(logits / temperature + g), g ~ Gumbel at the resolution cfg.draw_precision, `categorical`) after top-k and
  nucleus filtering, each only when switched on (`cfg`: anything with greedy, temperature, top_k, top_p and
  draw_precision).

  The division, the noise and the sum are float32 elementwise work that XLA fuses into the argmax's reduction, so no
  float32 copy of bfloat16 logits is kept. (Adding the noise in bfloat16 would quantize the sums to 1/16 at |logit|
  ~ 10 and break ties toward low ids, which biases the draw.)"""
  if cfg.greedy:
    return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
  logits_xV = logits_xV.astype(jnp.float32)
  if cfg.temperature != 1.0:
    logits_xV = logits_xV / cfg.temperature
  if cfg.top_k or cfg.top_p < 1.0:
    logits_xV = filter_logits(logits_xV, 1.0, cfg.top_k, cfg.top_p)
  return categorical(key, logits_xV, cfg.draw_precision)


def remove_never_sampled(logits_xV, special: special_tokens.SpecialIds):
  """Logits (any dtype, kept) with the ids that are never data tokens (`special.never_sampled`: pad, bos, mask, unk,
  less eos) set to NEG_INF; mask removal is SUBS, the others only matter for an undertrained model."""
  never_sampled = jnp.asarray(special.never_sampled, jnp.int32)
  return logits_xV.at[..., never_sampled].set(jnp.asarray(losses.NEG_INF, logits_xV.dtype))


def sampling_logits(logits_BxLxV, special: special_tokens.SpecialIds):
  """Float32 logits with the never-sampled ids removed (`remove_never_sampled`; `losses.drawable_logits`, which the
  calibration head's target shares)."""
  return losses.drawable_logits(logits_BxLxV, special)


# Confidence scores: how sure the model is of a position's candidate, in [0, 1], higher revealed first. A masked
# sampler's reveal policies rank by it; `threshold` and `confidence_stop` compare it with their level. A new score is
# one class here, one CONFIDENCES entry, and `sample.confidence` / `--confidence` selects it.


@dataclasses.dataclass(frozen=True)
class ProbabilityConfidence:
  """p_theta(candidate | x_t) = exp(logit[cand] - logsumexp(logits)) (MaskGIT; LLaDA's low-confidence remasking): one
  float32 reduction over the vocabulary and a gather, the softmax never materialized."""
  name: ClassVar[str] = "prob"

  def __call__(self, logits_xV, cand_x):
    lse_x = jax.nn.logsumexp(logits_xV.astype(jnp.float32), axis=-1)
    chosen_x = jnp.take_along_axis(logits_xV, cand_x[..., None], axis=-1)[..., 0].astype(jnp.float32)
    return jnp.exp(chosen_x - lse_x)


@dataclasses.dataclass(frozen=True)
class MarginConfidence:
  """p(top-1) - p(top-2): the margin between the two likeliest tokens (Kim et al., ICML 2025, "Train for the worst,
  plan for the best", top-probability margin), independent of the drawn candidate."""
  name: ClassVar[str] = "margin"

  def __call__(self, logits_xV, cand_x):
    del cand_x
    lse_x = jax.nn.logsumexp(logits_xV.astype(jnp.float32), axis=-1)
    top2_xx2 = jax.lax.top_k(logits_xV, 2)[0].astype(jnp.float32)
    return jnp.exp(top2_xx2[..., 0] - lse_x) - jnp.exp(top2_xx2[..., 1] - lse_x)


@dataclasses.dataclass(frozen=True)
class EntropyConfidence:
  """exp(-H(p_theta(. | x_t))), H = -sum_v p_v log p_v: entropy-ranked reveal, the position whose predictive
  distribution has the lowest entropy first (Kim et al., ICML 2025, "Train for the worst, plan for the best", compared
  there with top-probability and margin). exp(-H) is 1 for a one-hot prediction and 1/V for a uniform one, and orders
  positions exactly as -H does, so the threshold and confidence_stop levels and the Gumbel reveal noise on
  log(confidence) = -H keep their meaning. Independent of the drawn candidate. One float32 pass over the vocabulary
  (log-softmax, then sum p log p); ids removed as NEG_INF contribute exp(NEG_INF - lse) * (...) = 0."""
  name: ClassVar[str] = "entropy"

  def __call__(self, logits_xV, cand_x):
    del cand_x
    log_p_xV = jax.nn.log_softmax(logits_xV.astype(jnp.float32), axis=-1)
    entropy_x = -jnp.sum(jnp.exp(log_p_xV) * log_p_xV, axis=-1)
    return jnp.exp(-entropy_x)


@dataclasses.dataclass(frozen=True)
class CalibratedConfidence(ProbabilityConfidence):
  """A trained calibration head's forecast P(the greedy candidate is right | x_t) (seed 001 §9.7;
  models.base.CalibrationHead, model.calibration_head). It is not a function of the logits: the denoiser returns it
  as its step priority, and the masked sampler puts it in place of this score, which is p_theta(candidate | x_t) for
  callers that have only logits. It forecasts the argmax candidate: meant for greedy draws."""
  name: ClassVar[str] = "calibrated"


CONFIDENCES = {cls.name: cls for cls in (ProbabilityConfidence, MarginConfidence, EntropyConfidence,
                                         CalibratedConfidence)}


def confidence_scores(logits_BxLxV, cand_BxL, kind: str):
  """The `kind` confidence (a CONFIDENCES name) of each candidate, float32."""
  return CONFIDENCES[kind]()(logits_BxLxV, cand_BxL)


def top_k_mask(score_BxL, allowed_BxL, k_B):
  """True at the k_B highest-scoring allowed positions of each row."""
  ranked = jnp.where(allowed_BxL, score_BxL, -jnp.inf)
  order_BxL = jnp.argsort(-ranked, axis=-1)
  rank_BxL = jnp.argsort(order_BxL, axis=-1)
  return allowed_BxL & (rank_BxL < k_B[:, None])


def bottom_k_mask(score_BxL, allowed_BxL, k_B):
  """True at the k_B lowest-scoring allowed positions of each row."""
  return top_k_mask(-score_BxL, allowed_BxL, k_B)
