"""The reverse process as one jitted `lax.scan`: no host round trip per step, a whole batch at a time.

Time runs t_s = 1 - s/S for s = 0..S; step s goes from t_s to t_{s+1}. Two policies (`SamplerConfig.method`):

* "confidence" (MaskGIT, LLaDA's low-confidence remasking): at each step predict every masked position (greedy argmax,
  or a sample at `temperature` after top-k/top-p filtering), score each candidate by the model's probability of it,
  p_theta(candidate | x_t) before any filtering (or the top-1 minus top-2 margin), and reveal the k_s most confident,
  where k_s brings the number of masked positions down to floor(n_gen (1 - alpha(t_{s+1}))) (the reveal schedule
  follows the masking schedule), at least one per step. With `reveal_noise` = tau > 0 the ranking score is
  log(confidence) + tau (1 - (s+1)/S) g, g ~ Gumbel (MaskGIT's "choice temperature", Chang et al. 2022): early steps
  reveal a noisy top-k instead of always the most predictable symbol, which keeps an undertrained model from filling a
  sequence with its most frequent token (spaces, for a character model). alpha(t_S) = alpha(0) = 1, so the last step
  reveals everything; a fallback pass fills any mask still left (argmax of one more forward pass, only run if needed).
* "ancestral" (MD4 / MDLM ancestral sampler): each masked position is revealed independently with probability
  (alpha(t_{s+1}) - alpha(t_s)) / (1 - alpha(t_s)), with a token drawn from p_theta(x_0 | x_t) — the exact reverse
  process of the forward chain given the model.

Positions with `fixed_BxL` (a prompt, an infilling context) start unmasked and are never changed. With
`record_trajectory`, the output also holds the tokens after every step `[S+1, B, L]`; `reveal_step_BxL` (the step at
which each position was revealed, -1 for fixed positions) and `confidence_BxL` (the score at reveal) are always kept.
The optional `priority_BxL` is added to the confidence.

Every denoiser is driven through one interface (`dlm_jax.models.Denoiser.sample_step`):
`denoise_fn(x_BxL, t_B, carry) -> (logits_BxLxV, priority_BxL or None, carry)`, starting from `init_carry`. A stateless
denoiser passes its carry (None) through and reports no priority (`stateless` wraps a plain `(x, t) -> logits`
function). The HRM denoiser carries its memory cells across the reverse steps inside the scan and reports the
H-module's strategic priority, of which `strategic_weight` x priority is added to the confidence ("strategic
unmasking"; 0 switches it off).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.diffusion import losses, schedules
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError

METHODS = ("confidence", "ancestral")
CONFIDENCES = ("prob", "margin")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  steps: int = 64
  method: str = "confidence"
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0  # 0: no top-k filtering
  top_p: float = 1.0  # 1.0: no nucleus filtering
  confidence: str = "prob"
  reveal_noise: float = 0.0  # MaskGIT's choice temperature: Gumbel noise on log-confidence, annealed to 0
  strategic_weight: float = 0.0  # weight of a stateful denoiser's priority score in the reveal ranking
  schedule: MaskingSchedule = MaskingSchedule("cosine")
  record_trajectory: bool = False

  @classmethod
  def from_config(cls, config, **overrides) -> "SamplerConfig":
    """The sampler settings of a run's ml_collections config (`config.sample`, less `num_samples`), with `overrides`.
    The reveal schedule is `sample.reveal_schedule` or, when empty, the training schedule `diffusion.schedule` (with its
    exponent and eps)."""
    fields = dict(config.sample)
    fields.update(overrides)
    fields.pop("num_samples", None)
    name = fields.pop("reveal_schedule", "") or config.diffusion.schedule
    reveal = dataclasses.replace(schedules.from_config(config.diffusion), name=name)
    return cls(schedule=reveal, **fields)

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(f"sampler method must be one of {METHODS}, got {self.method!r}.")
    if self.confidence not in CONFIDENCES:
      raise ConfigError(f"sampler confidence must be one of {CONFIDENCES}, got {self.confidence!r}.")
    if self.steps < 1:
      raise ConfigError(f"sampler steps must be >= 1, got {self.steps}.")
    if self.temperature <= 0 and not self.greedy:
      raise ConfigError("sampler temperature must be > 0 (use greedy=True for argmax decoding).")


@flax.struct.dataclass
class SampleOutput:
  tokens_BxL: jax.Array
  reveal_step_BxL: jax.Array  # int32; -1 for fixed positions
  confidence_BxL: jax.Array  # float32 score when revealed; 0 for fixed positions
  trajectory_SxBxL: jax.Array | None = None  # [steps + 1, B, L] when recorded


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


def draw(logits_xV, cfg: SamplerConfig, key):
  """Token ids from logits [..., V] in any float dtype: the argmax when cfg.greedy, else a categorical draw (Gumbel-max:
  argmax(logits / temperature + g), g ~ Gumbel) after top-k and nucleus filtering, each only when switched on.

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
  return jax.random.categorical(key, logits_xV, axis=-1).astype(jnp.int32)


def remove_never_sampled(logits_xV):
  """Logits (any dtype, kept) with the ids that are never data tokens (special_tokens.NEVER_SAMPLED: pad, bos, mask,
  unk) set to NEG_INF; mask removal is SUBS, the others only matter for an undertrained model."""
  return logits_xV.at[..., jnp.asarray(special_tokens.NEVER_SAMPLED)].set(jnp.asarray(losses.NEG_INF, logits_xV.dtype))


def confidence_scores(logits_BxLxV, cand_BxL, kind: str):
  """The model's probability of each candidate, p(cand) = exp(logit[cand] - logsumexp(logits)) ("prob"), or its top-1
  minus top-2 probability ("margin"). One float32 reduction (the logsumexp) over the vocabulary and a gather: the
  softmax over the whole vocabulary is never materialized."""
  lse_BxL = jax.nn.logsumexp(logits_BxLxV.astype(jnp.float32), axis=-1)
  if kind == "margin":
    top2_BxLx2 = jax.lax.top_k(logits_BxLxV, 2)[0].astype(jnp.float32)
    return jnp.exp(top2_BxLx2[..., 0] - lse_BxL) - jnp.exp(top2_BxLx2[..., 1] - lse_BxL)
  chosen_BxL = jnp.take_along_axis(logits_BxLxV, cand_BxL[..., None], axis=-1)[..., 0].astype(jnp.float32)
  return jnp.exp(chosen_BxL - lse_BxL)


def sampling_logits(logits_BxLxV):
  """Float32 logits with the never-sampled ids removed (`remove_never_sampled`)."""
  return remove_never_sampled(logits_BxLxV.astype(jnp.float32))


def _reveal_top_k(score_BxL, masked_BxL, k_B):
  """True at the k_B highest-scoring masked positions of each row."""
  ranked = jnp.where(masked_BxL, score_BxL, -jnp.inf)
  order_BxL = jnp.argsort(-ranked, axis=-1)
  rank_BxL = jnp.argsort(order_BxL, axis=-1)
  return masked_BxL & (rank_BxL < k_B[:, None])


def stateless(logits_fn: Callable) -> Callable:
  """`(x, t) -> logits` as the sampler's `(x, t, carry) -> (logits, None, carry)`."""
  return lambda x_BxL, t_B, carry: (logits_fn(x_BxL, t_B), None, carry)


def sample(denoise_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg: SamplerConfig, priority_BxL=None,
           init_carry=None) -> SampleOutput:
  """Runs the reverse process. `tokens_BxL` holds the fixed tokens (other entries are ignored); pure and jittable.
  `denoise_fn(x, t, carry) -> (logits, step_priority_BxL or None, carry)`, the carry starting at `init_carry`."""
  mask_id = special_tokens.MASK
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, mask_id).astype(jnp.int32)
  n_gen_B = jnp.sum(~fixed_BxL, axis=-1)
  batch = x_BxL.shape[0]
  schedule = cfg.schedule

  def step(carry, s):
    x_BxL, reveal_step_BxL, conf_BxL, key, model_carry = carry
    key, sample_key, reveal_key = jax.random.split(key, 3)
    t, t_next = 1.0 - s / cfg.steps, 1.0 - (s + 1) / cfg.steps
    t_B = jnp.full((batch,), t, jnp.float32)
    step_priority_BxL = priority_BxL
    logits_BxLxV, model_priority_BxL, model_carry = denoise_fn(x_BxL, t_B, model_carry)
    logits_BxLxV = remove_never_sampled(logits_BxLxV)  # in the model's dtype
    if cfg.strategic_weight and model_priority_BxL is not None:
      weighted = cfg.strategic_weight * model_priority_BxL.astype(jnp.float32)
      step_priority_BxL = weighted if step_priority_BxL is None else step_priority_BxL + weighted
    masked_BxL = x_BxL == mask_id
    cand_BxL = draw(logits_BxLxV, cfg, sample_key)
    # Confidence is the model's own probability of the candidate (LLaDA's low-confidence remasking), not the
    # probability under the temperature/top-k/top-p-filtered distribution the candidate was drawn from.
    score_BxL = confidence_scores(logits_BxLxV, cand_BxL, cfg.confidence)
    if step_priority_BxL is not None:
      score_BxL = score_BxL + step_priority_BxL
    if cfg.method == "confidence":
      if cfg.reveal_noise > 0:
        gumbel_BxL = jax.random.gumbel(reveal_key, score_BxL.shape)
        anneal = cfg.reveal_noise * (1.0 - (s + 1) / cfg.steps)
        score_BxL = jnp.log(jnp.maximum(score_BxL, 1e-20)) + anneal * gumbel_BxL
      n_masked_B = jnp.sum(masked_BxL, axis=-1)
      n_target_B = jnp.floor(n_gen_B * schedule.mask_rate(t_next) + 1e-4).astype(jnp.int32)
      k_B = jnp.maximum(n_masked_B - n_target_B, jnp.minimum(n_masked_B, 1))
      reveal_BxL = _reveal_top_k(score_BxL, masked_BxL, k_B)
    else:
      alpha_t, alpha_next = schedule.alpha(t), schedule.alpha(t_next)
      p_unmask = jnp.where(s == cfg.steps - 1, 1.0, (alpha_next - alpha_t) / jnp.maximum(1.0 - alpha_t, 1e-12))
      reveal_BxL = masked_BxL & (jax.random.uniform(reveal_key, x_BxL.shape) < p_unmask)
    x_BxL = jnp.where(reveal_BxL, cand_BxL, x_BxL)
    reveal_step_BxL = jnp.where(reveal_BxL, s, reveal_step_BxL)
    conf_BxL = jnp.where(reveal_BxL, score_BxL, conf_BxL)
    return (x_BxL, reveal_step_BxL, conf_BxL, key, model_carry), (x_BxL if cfg.record_trajectory else None)

  init = (x_BxL, jnp.where(fixed_BxL, -1, cfg.steps).astype(jnp.int32), jnp.zeros(x_BxL.shape, jnp.float32), rng,
          init_carry)
  (x_BxL, reveal_step_BxL, conf_BxL, _, model_carry), steps_SxBxL = jax.lax.scan(step, init, jnp.arange(cfg.steps))

  def fallback_fill(x_BxL):
    t0_B = jnp.zeros((batch,), jnp.float32)
    logits = sampling_logits(denoise_fn(x_BxL, t0_B, model_carry)[0])
    return jnp.where(x_BxL == mask_id, jnp.argmax(logits, axis=-1).astype(jnp.int32), x_BxL)

  x_BxL = jax.lax.cond(jnp.any(x_BxL == mask_id), fallback_fill, lambda x: x, x_BxL)
  trajectory = None
  if cfg.record_trajectory:
    trajectory = jnp.concatenate([jnp.where(fixed_BxL, tokens_BxL, mask_id)[None].astype(jnp.int32), steps_SxBxL])
    trajectory = trajectory.at[-1].set(x_BxL)
  return SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=reveal_step_BxL, confidence_BxL=conf_BxL,
                      trajectory_SxBxL=trajectory)


def make_sampler(graphdef, other, cfg: SamplerConfig):
  """jit(sample) over (params, rng, tokens_BxL, fixed_BxL) for a split NNX denoiser, through its `sample_step` and
  `init_sample_carry`."""
  from flax import nnx

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    # Merged at each call site: an NNX module must not cross into the scan's trace level.
    model = lambda: nnx.merge(graphdef, params, other)
    denoise = lambda x, t, carry: model().sample_step(x, t, carry)
    return sample(denoise, rng, tokens_BxL, fixed_BxL, cfg, init_carry=model().init_sample_carry(*tokens_BxL.shape))

  return run


def autoregressive_sample(logits_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg: SamplerConfig) -> SampleOutput:
  """Left-to-right sampling for the causal control arm: every position i >= 1 that is not fixed gets a token drawn from
  the full-length forward pass's prediction at i - 1 (no KV cache: the control arm's reference decoder, not a fast
  one), with cfg's greedy / temperature / top-k / top-p; the reveal step of position i is i - 1 and its confidence the
  model's probability of the token. Position 0 must be fixed (a prompt, or EOS: "a document starts here").
  `cfg.record_trajectory` keeps the tokens after every position ([L, B, L])."""
  batch, length = tokens_BxL.shape
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, special_tokens.MASK).astype(jnp.int32)

  def step(carry, i):
    x_BxL, reveal_step_BxL, conf_BxL = carry
    logits = sampling_logits(logits_fn(x_BxL, jnp.zeros((batch,), jnp.float32)))[:, i - 1]
    nxt_B = draw(logits, cfg, jax.random.fold_in(rng, i))
    prob_B = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), nxt_B[:, None], axis=-1)[:, 0]
    new_B = ~fixed_BxL[:, i]
    x_BxL = x_BxL.at[:, i].set(jnp.where(new_B, nxt_B, x_BxL[:, i]))
    reveal_step_BxL = reveal_step_BxL.at[:, i].set(jnp.where(new_B, i - 1, -1))
    conf_BxL = conf_BxL.at[:, i].set(jnp.where(new_B, prob_B, 0.0))
    return (x_BxL, reveal_step_BxL, conf_BxL), (x_BxL if cfg.record_trajectory else None)

  init = (x_BxL, jnp.full((batch, length), -1, jnp.int32), jnp.zeros((batch, length), jnp.float32))
  (x_BxL, reveal_step_BxL, conf_BxL), steps = jax.lax.scan(step, init, jnp.arange(1, length))
  trajectory = jnp.concatenate([init[0][None], steps]) if cfg.record_trajectory else None
  return SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=reveal_step_BxL, confidence_BxL=conf_BxL,
                      trajectory_SxBxL=trajectory)
