"""The reverse process as one jitted `lax.while_loop`: no host round trip per step, a whole batch at a time, every
decoding strategy selected by `SamplerConfig` (static Python branches: a strategy that is off adds no work).

**Blocks** (`block_length` = b > 0; LLaDA's semi-autoregressive remasking, Nie et al. 2025; BD3-LM, Arriola et al.
2025). The generated (not fixed) positions of a row, in order, form blocks of b; the n_blk = ceil(n_gen / b) blocks are
decoded left to right, each by its own reverse process over its own time t in [1, 0], while later blocks stay masked.
Block j gets floor((j+1) S / n_blk) - floor(j S / n_blk) of the S = `steps` steps (S >= ceil(L / b) is required so
that every block gets one); a block that is finished early (see `confidence_stop`, `threshold`) hands the decoder to
the next one at once. b = 0: one block, i.e. the whole sequence. The denoiser is told the current block's time.

**Reveal policies** within the current block, at local step i of its n steps (t = 1 - i/n, t' = 1 - (i+1)/n):

* "confidence" (MaskGIT, LLaDA's low-confidence remasking): predict every masked position (greedy argmax, or a sample at
  `temperature` after top-k/top-p filtering), score each candidate by the model's probability of it,
  p_theta(candidate | x_t) before any filtering (or the top-1 minus top-2 margin), and reveal the k most confident,
  where k brings the block's masked count down to floor(n_block (1 - alpha(t'))) (the reveal schedule follows the
  masking schedule), at least one per step. With `reveal_noise` = tau > 0 the ranking score is
  log(confidence) + tau (1 - (i+1)/n) g, g ~ Gumbel (MaskGIT's "choice temperature", Chang et al. 2022): early steps
  reveal a noisy top-k instead of always the most predictable symbol, which keeps an undertrained model from filling a
  sequence with its most frequent token. alpha(0) = 1, so a block's last step reveals all of it.
  - `threshold` = c > 0 (Fast-dLLM's threshold parallel decoding, Wu et al. 2025): the schedule is replaced by "reveal
    every masked position of the block whose confidence exceeds c, at least one (the most confident) per step"; a
    sample then takes at most n_gen steps (the loop's bound is L), and the denoiser is told the t whose mask rate is
    the block's masked fraction (`MaskingSchedule.time_of_mask_rate`).
  - `confidence_stop` = c > 0 (seed 001 §9.1, the adaptive per-token step budget): when every masked position of the
    block has confidence >= c, the block is revealed at once and its remaining steps are not spent.
  - `remasking="low_confidence"`: while t' > `remask_t_off`, the floor(`remask_eta` x revealed) revealed positions of
    the block with the lowest confidence at their reveal are masked again, and as many more masked positions are revealed,
    so the masked count still follows the schedule. A remasked position is predicted afresh at the next step (a
    masked-diffusion denoiser's outputs at visible positions are untrained, so nothing is re-predicted in place).
* "ancestral" (MD4 / MDLM ancestral sampler): each masked position of the block is revealed independently with
  probability (alpha(t') - alpha(t)) / (1 - alpha(t)), with a token drawn from p_theta(x_0 | x_t): the exact reverse
  process of the forward chain given the model.
  - ReMDM (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"): the reverse step
    q_sigma(z_s | z_t, x) in which a revealed token is masked again with probability sigma_t and a masked one revealed
    with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t); sigma_t = 0 is MDLM.
    `remasking="remdm_cap"`: sigma_t = min(eta, (1 - alpha_s) / alpha_t) (eta = `remask_eta`; the cap keeps the reveal
    probability <= 1). `remasking="remdm_loop"`: alpha runs 0 -> alpha_on (`remask_alpha_on`) linearly in t over
    [1, t_on], stays at alpha_on over [t_on, t_off] while tokens are remasked with sigma = eta and revealed with
    probability eta alpha_on / (1 - alpha_on) (the masked fraction stays put while the sequence is revised), and runs
    alpha_on -> 1 over [t_off, 0] (the paper's loop schedule, written as one continuous alpha(t)). With ReMDM a block
    always spends its whole step budget: a fully revealed block can still be revised until its time reaches 0.

Fixed positions (`fixed_BxL`: a prompt, an infilling context) start unmasked and are never changed or remasked; the
remasking policies only touch the current block, so finished blocks are final.

**Variable length** (`eos_stop`): once a generated position holds EOS, every generated position after the first such
EOS is closed: set to PAD (revealed tokens there are discarded) and never revealed or counted; the output's
`lengths_B` is the number of generated tokens before the EOS (n_gen without one). A sample never ends with a mask.

**Caching** (`cache="unchanged"`, MDLM's caching sampler, Sahoo et al. 2024 §4.2): when no token of the batch changed
since the last network call, the last call's logits are reused. Exact only for a denoiser that is a function of x_t
alone (no time conditioning, no carried state); `make_sampler` refuses the others. It pays off for ancestral sampling
with more steps than tokens, where many steps reveal nothing. `cache="dual"` and `cache="prefix"` (Fast-dLLM, Wu et
al. 2025; block decoding only) keep every layer's keys and values from a full pass at the start of each block and then
recompute only the current block (dual) or everything from the current block on (prefix), reading the rest from the
cache: an approximation for a bidirectional denoiser (cached entries deeper than the first layer depended on tokens
that have changed since), exact for a one-layer transformer. The denoiser provides `kv_prefill` / `kv_step`
(the transformer: keys and values; EcoHybrid: layer inputs for the convolution and the slots its read used).

**Classifier-free guidance** (`guidance_scale` = w > 0; Ho & Salimans 2022 as used by LLaDA): logits =
(1 + w) l(x_t) - w l(x_t with every fixed position masked); w = 0 is conditional sampling (the second pass is not run).

Time-independent outputs: `reveal_step_BxL` (the step at which each position was last revealed, -1 for fixed
positions, the loop bound for a position closed by EOS), `confidence_BxL` (the ranking score at that reveal),
`steps_B` (steps each row took), `lengths_B`, `network_calls` (forward passes of the denoiser, a guided step counting
two), and with `record_trajectory` the tokens after every step `[max_steps + 1, B, L]` (entries after a batch's last
step repeat its final tokens). The optional `priority_BxL` is added to the confidence.

Every denoiser is driven through one interface (`dlm_jax.models.Denoiser.sample_step`):
`denoise_fn(x_BxL, t_B, carry) -> (logits_BxLxV, priority_BxL or None, carry)`, starting from `init_carry`. A stateless
denoiser passes its carry (None) through and reports no priority (`stateless` wraps a plain `(x, t) -> logits`
function). The HRM denoiser carries its memory cells across the reverse steps inside the loop and reports the
H-module's strategic priority, of which `strategic_weight` x priority is added to the confidence ("strategic
unmasking"; 0 switches it off). With guidance the unconditional pass sees the same carry and its new carry is dropped.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.diffusion import losses, objectives, schedules
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError

# greedy/tweedie: uniform-state / SEDD (transition.py); ddim/ddpm: continuous embedding diffusion (continuous.py)
METHODS = ("confidence", "ancestral", "greedy", "tweedie", "ddim", "ddpm")
GAUSSIAN_METHODS = ("ddim", "ddpm")
PROCESSES = ("absorbing", "uniform", "gaussian")
PARAMETERIZATIONS = ("posterior", "mean", "score")  # x_0 -> reverse step: uniform.py's two, or SEDD's scores
CONFIDENCES = ("prob", "margin")
REMASKING = ("none", "low_confidence", "remdm_cap", "remdm_loop")
CACHES = ("none", "unchanged", "dual", "prefix")
KV_CACHES = ("dual", "prefix")  # Fast-dLLM's, for block decoding
STRATEGY_FIELDS = ("block_length", "threshold", "confidence_stop", "eos_stop", "remasking", "remask_eta", "remask_t_on",
                   "remask_t_off", "remask_alpha_on", "guidance_scale", "cache")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every decoding strategy of `sample` (the module docstring gives the equations); defaults are plain confidence
  decoding of the whole sequence in `steps` steps."""
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
  block_length: int = 0  # semi-autoregressive blocks of this many generated positions; 0: one block
  threshold: float = 0.0  # Fast-dLLM: reveal every masked position with confidence > threshold (>= 1 a step); 0: off
  confidence_stop: float = 0.0  # seed 001 §9.1: reveal the rest of a block once all its confidences reach it; 0: off
  eos_stop: bool = False  # variable length: nothing after the first generated EOS is revealed or counted
  remasking: str = "none"  # "none", "low_confidence" (confidence method), "remdm_cap" or "remdm_loop" (ancestral)
  remask_eta: float = 0.02  # ReMDM's eta (remask probability cap / loop rate); low_confidence: fraction per step
  remask_t_on: float = 0.55  # remdm_loop: start of the loop (t runs 1 -> 0)
  remask_t_off: float = 0.05  # remdm_loop: end of the loop; low_confidence: no remasking once t' <= remask_t_off
  remask_alpha_on: float = 0.9  # remdm_loop: alpha held during the loop
  guidance_scale: float = 0.0  # classifier-free guidance w: (1 + w) cond - w uncond (fixed positions masked)
  cache: str = "none"  # "unchanged": logits reused while no token changes (MDLM); "dual"/"prefix": Fast-dLLM's
  # The model's forward process and output (set from the run's diffusion config by from_config): "absorbing" with an
  # x_0 denoiser is this module's sampler; "uniform", or parameterization "score" (SEDD), run transition.py's.
  process: str = "absorbing"
  parameterization: str = "mean"  # (ignored by the masked sampler)
  log_snr_max: float = 5.0  # process "gaussian": the run's log-SNR schedule (diffusion/gaussian.py)
  log_snr_min: float = -10.0
  # A thought model (config.thought; sampling/thought.py): whether the run has a thought, its forward process and the
  # steering step size.
  thought: bool = False
  thought_schedule: MaskingSchedule | None = None  # the training schedule, on whose clock the thought is noised
  thought_rate: float = 0.5
  thought_saliency: float = 0.0
  steer_scale: float = 0.0

  @classmethod
  def from_config(cls, config, **overrides) -> "SamplerConfig":
    """The sampler settings of a run's ml_collections config (`config.sample`, less `num_samples`), with `overrides`.
    The reveal schedule is `sample.reveal_schedule` or, when empty, the training schedule `diffusion.schedule` (with its
    exponent and eps)."""
    fields = dict(config.sample)
    fields.update(process_fields(config.diffusion))
    section = config.get("thought")
    if section is not None and section.get("enabled", False):
      fields.update(thought=True, thought_rate=float(section.rate), thought_saliency=float(section.saliency),
                    thought_schedule=schedules.from_config(config.diffusion))
    fields.update(overrides)
    fields.pop("num_samples", None)
    name = fields.pop("reveal_schedule", "") or config.diffusion.schedule
    reveal = dataclasses.replace(schedules.from_config(config.diffusion), name=name)
    return cls(schedule=reveal, **fields)

  @property
  def moves_every_position(self) -> bool:
    """Whether this is transition.py's sampler (uniform process or SEDD scores) rather than the masked one."""
    return self.process == "uniform" or self.parameterization == "score"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(f"sampler method must be one of {METHODS}, got {self.method!r}.")
    if self.process not in PROCESSES or self.parameterization not in PARAMETERIZATIONS:
      raise ConfigError(f"sampler process must be one of {PROCESSES} and parameterization one of "
                        f"{PARAMETERIZATIONS}, got {self.process!r} and {self.parameterization!r}.")
    if self.process == "gaussian" or self.method in GAUSSIAN_METHODS:
      if self.process != "gaussian" or self.method not in GAUSSIAN_METHODS:
        raise ConfigError(f"Continuous embedding diffusion (diffusion.objective='embedding') samples with method "
                          f"'ddim' or 'ddpm', and only it does; got method {self.method!r} for a {self.process} "
                          "model (sample.method / --method).")
      defaults = {f.name: f.default for f in dataclasses.fields(self)}
      masked_only = [name for name in STRATEGY_FIELDS + ("reveal_noise", "strategic_weight", "top_k", "top_p")
                     if getattr(self, name) != defaults[name]]
      if masked_only:
        raise ConfigError(f"The sampler options {sorted(masked_only)} are not DDIM/DDPM options; a continuous "
                          "embedding model's sampler takes steps, greedy and temperature. Reset them.")
    elif self.moves_every_position:
      allowed = ("tweedie",) if self.parameterization == "score" else ("ancestral", "greedy")
      if self.method not in allowed:
        raise ConfigError(f"A {'SEDD score' if self.parameterization == 'score' else 'uniform-state'} model samples "
                          f"with method {' or '.join(map(repr, allowed))} (sample.method / --method), not "
                          f"{self.method!r}.")
      defaults = {f.name: f.default for f in dataclasses.fields(self)}
      masked_only = [name for name in STRATEGY_FIELDS + ("reveal_noise", "strategic_weight")
                     if getattr(self, name) != defaults[name]]
      if masked_only:
        raise ConfigError(f"The sampler options {sorted(masked_only)} are masked-diffusion decoding strategies; a "
                          f"{self.process} {self.parameterization} model's sampler moves every position at every "
                          "step and takes steps, greedy, temperature, top_k and top_p. Reset them.")
    elif self.method in ("greedy", "tweedie"):
      raise ConfigError(f"sampler method {self.method!r} is for uniform-state or SEDD models; a masked x_0 model "
                        "samples with 'confidence' or 'ancestral'.")
    if self.confidence not in CONFIDENCES:
      raise ConfigError(f"sampler confidence must be one of {CONFIDENCES}, got {self.confidence!r}.")
    if self.steps < 1:
      raise ConfigError(f"sampler steps must be >= 1, got {self.steps}.")
    if self.temperature <= 0 and not self.greedy:
      raise ConfigError("sampler temperature must be > 0 (use greedy=True for argmax decoding).")
    if self.block_length < 0:
      raise ConfigError(f"sampler block_length must be >= 0 (0: one block), got {self.block_length}.")
    if not 0.0 <= self.threshold < 1.0:
      raise ConfigError(f"sampler threshold must be in [0, 1) (0: off), got {self.threshold}.")
    if not 0.0 <= self.confidence_stop <= 1.0:
      raise ConfigError(f"sampler confidence_stop must be in [0, 1] (0: off), got {self.confidence_stop}.")
    if (self.threshold or self.confidence_stop) and self.method != "confidence":
      raise ConfigError("sampler threshold and confidence_stop rank by confidence: use method='confidence'.")
    if self.remasking not in REMASKING:
      raise ConfigError(f"sampler remasking must be one of {REMASKING}, got {self.remasking!r}.")
    if self.remasking == "low_confidence" and (self.method != "confidence" or self.threshold):
      raise ConfigError("remasking='low_confidence' works with the confidence method's reveal schedule "
                        "(method='confidence', threshold=0).")
    if self.remasking.startswith("remdm") and self.method != "ancestral":
      raise ConfigError(f"remasking={self.remasking!r} is ReMDM's ancestral sampler: use method='ancestral'.")
    if self.remasking != "none" and not 0.0 <= self.remask_eta <= 1.0:
      raise ConfigError(f"sampler remask_eta must be in [0, 1], got {self.remask_eta}.")
    if self.remasking == "remdm_loop":
      if not 0.0 < self.remask_t_off < self.remask_t_on < 1.0:
        raise ConfigError(f"remdm_loop needs 0 < remask_t_off < remask_t_on < 1, got t_off={self.remask_t_off}, "
                          f"t_on={self.remask_t_on}.")
      if not 0.0 < self.remask_alpha_on < 1.0:
        raise ConfigError(f"remdm_loop needs 0 < remask_alpha_on < 1, got {self.remask_alpha_on}.")
      if self.remask_eta * self.remask_alpha_on > 1.0 - self.remask_alpha_on:
        raise ConfigError(f"remdm_loop reveals with probability eta alpha_on / (1 - alpha_on), which must be <= 1: "
                          f"lower remask_eta ({self.remask_eta}) to at most "
                          f"{(1.0 - self.remask_alpha_on) / self.remask_alpha_on:.4g}.")
    if self.guidance_scale < 0:
      raise ConfigError(f"sampler guidance_scale must be >= 0 (0: no guidance), got {self.guidance_scale}.")
    if self.cache not in CACHES:
      raise ConfigError(f"sampler cache must be one of {CACHES}, got {self.cache!r}.")
    if self.steer_scale < 0 or (self.steer_scale and not self.thought):
      raise ConfigError(f"sampler steer_scale must be >= 0 and is for thought models (config.thought), got "
                        f"{self.steer_scale}.")
    if self.thought and (self.cache != "none" or self.process != "absorbing"):
      raise ConfigError(f"A thought model samples masked text with cache='none' (the thought changes at every call, so "
                        f"no logits or keys can be reused); got cache={self.cache!r}.")
    if self.cache in KV_CACHES and (not self.block_length or self.guidance_scale):
      raise ConfigError(f"sampler cache={self.cache!r} caches keys and values across the blocks of block decoding: "
                        "it needs block_length > 0 and no guidance (guidance_scale=0).")

  @classmethod
  def strategy_defaults(cls) -> dict:
    """The decoding-strategy fields (all off by default) with their defaults, for config.sample."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in STRATEGY_FIELDS}

  def max_steps(self, length: int) -> int:
    """The loop's bound for sequences of `length` positions: `steps`, or `length` with threshold decoding."""
    return length if self.threshold else self.steps


@flax.struct.dataclass
class SampleOutput:
  tokens_BxL: jax.Array
  reveal_step_BxL: jax.Array  # int32; -1 for fixed positions
  confidence_BxL: jax.Array  # float32 score when revealed; 0 for fixed positions
  trajectory_SxBxL: jax.Array | None = None  # [max_steps + 1, B, L] when recorded
  steps_B: jax.Array | None = None  # int32 steps each row took
  lengths_B: jax.Array | None = None  # int32 generated tokens kept (before the first EOS with eos_stop)
  network_calls: jax.Array | None = None  # int32 forward passes of the denoiser for the batch


def process_fields(diffusion_config) -> dict:
  """{process, parameterization} of a run's diffusion config (its objective decides them: `objectives.process_of`).
  The AR arm gets the masked sampler's fields (its own decoder ignores them)."""
  objective = diffusion_config.objective
  process = objectives.process_of(objective, diffusion_config.get("sedd_process", "absorbing"))
  parameterization = "score" if objective == "sedd" else diffusion_config.get("parameterization", "mean")
  return {"process": process if process in ("uniform", "gaussian") else "absorbing",
          "parameterization": parameterization, "log_snr_max": float(diffusion_config.get("log_snr_max", 5.0)),
          "log_snr_min": float(diffusion_config.get("log_snr_min", -10.0))}


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


def _lowest_k(score_BxL, allowed_BxL, k_B):
  """True at the k_B lowest-scoring allowed positions of each row."""
  return _reveal_top_k(-score_BxL, allowed_BxL, k_B)


def _remdm_loop_alpha(cfg: SamplerConfig, t):
  """ReMDM's loop schedule as one continuous alpha(t): 0 -> alpha_on linearly over t in [1, t_on], alpha_on over
  [t_on, t_off], alpha_on -> 1 linearly over [t_off, 0]."""
  a_on, t_on, t_off = cfg.remask_alpha_on, cfg.remask_t_on, cfg.remask_t_off
  return jnp.where(t > t_on, a_on * (1.0 - t) / (1.0 - t_on),
                   jnp.where(t <= t_off, 1.0 - (1.0 - a_on) * t / t_off, a_on))


def _ancestral_probabilities(cfg: SamplerConfig, t_B, t_next_B, last_B):
  """(reveal probability of a masked position, remask probability sigma of a revealed one), per row, for the step
  t -> t' (MDLM's ancestral step, or ReMDM's; see the module docstring)."""
  if cfg.remasking == "remdm_loop":
    alpha_t, alpha_s = _remdm_loop_alpha(cfg, t_B), _remdm_loop_alpha(cfg, t_next_B)
  else:
    alpha_t, alpha_s = cfg.schedule.alpha(t_B), cfg.schedule.alpha(t_next_B)
  sigma_B = jnp.zeros_like(alpha_t)
  if cfg.remasking == "remdm_cap":
    sigma_B = jnp.where(alpha_t > 0, jnp.minimum(cfg.remask_eta, (1.0 - alpha_s) / jnp.maximum(alpha_t, 1e-12)),
                        cfg.remask_eta)
  elif cfg.remasking == "remdm_loop":
    in_loop_B = (t_B <= cfg.remask_t_on) & (t_B > cfg.remask_t_off)
    sigma_B = jnp.where(in_loop_B, cfg.remask_eta, 0.0)
  p_reveal_B = (alpha_s - (1.0 - sigma_B) * alpha_t) / jnp.maximum(1.0 - alpha_t, 1e-12)
  return jnp.where(last_B, 1.0, jnp.clip(p_reveal_B, 0.0, 1.0)), jnp.where(last_B, 0.0, sigma_B)


@flax.struct.dataclass
class _LoopState:
  step: jax.Array  # scalar int32: steps taken by the batch
  x_BxL: jax.Array
  reveal_step_BxL: jax.Array
  conf_BxL: jax.Array
  key: jax.Array
  model_carry: object
  block_B: jax.Array  # the block each row is decoding (num_blocks_B when done)
  block_step_B: jax.Array  # steps spent in it
  steps_B: jax.Array
  calls: jax.Array  # scalar int32 forward passes
  cache: object  # (logits, priority) of the last call, with cache="unchanged"
  cache_x_BxL: object  # the tokens that call saw
  kv_cache: object  # cache="dual"/"prefix": the denoiser's per-layer keys and values
  kv_block_B: object  # the block each row was decoding when kv_cache was filled
  trajectory: object  # [max_steps + 1, B, L] with record_trajectory


def sample(denoise_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg: SamplerConfig, priority_BxL=None,
           init_carry=None, kv_cache_fns=None, return_carry: bool = False) -> SampleOutput:
  """Runs the reverse process. `tokens_BxL` holds the fixed tokens (other entries are ignored); pure and jittable.
  `denoise_fn(x, t, carry) -> (logits, step_priority_BxL or None, carry)`, the carry starting at `init_carry`.
  With cache="dual" or "prefix", `kv_cache_fns` = (prefill(x, t, positions_BxQ) -> (logits_BxQxV, kv),
  step(x, t, positions_BxQ, kv) -> (logits_BxQxV, kv)), e.g. `Transformer.kv_prefill` and `kv_step`. A uniform-state
  or SEDD model's config runs `transition.transition_sample` instead. `return_carry`: (output, the denoiser's carry
  after the last step) (the masked sampler only)."""
  if cfg.moves_every_position:
    from dlm_jax.sampling import transition  # transition.py builds this module's SampleOutput
    return transition.transition_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, init_carry)
  mask_id = special_tokens.MASK
  batch, length = tokens_BxL.shape
  fixed_BxL = jnp.asarray(fixed_BxL, bool)
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, mask_id).astype(jnp.int32)
  gen_BxL = ~fixed_BxL
  position_1xL = jnp.arange(length, dtype=jnp.int32)[None]
  schedule = cfg.schedule
  max_steps = cfg.max_steps(length)
  if cfg.block_length:
    if cfg.steps < -(-length // cfg.block_length) and not cfg.threshold:
      raise ConfigError(f"block decoding gives every block at least one step: with block_length={cfg.block_length} "
                        f"and {length} positions, steps must be >= {-(-length // cfg.block_length)}, got {cfg.steps}.")
    rank_BxL = jnp.cumsum(gen_BxL, axis=1, dtype=jnp.int32) - 1
    block_of_BxL = jnp.where(gen_BxL, rank_BxL // cfg.block_length, -1)
    num_blocks_B = -(-jnp.sum(gen_BxL, axis=-1, dtype=jnp.int32) // cfg.block_length)
  else:
    block_of_BxL = jnp.where(gen_BxL, 0, -1)
    num_blocks_B = jnp.any(gen_BxL, axis=-1).astype(jnp.int32)
  remdm = cfg.remasking.startswith("remdm")
  if cfg.cache in KV_CACHES and kv_cache_fns is None:
    raise ConfigError(f"sampler cache={cfg.cache!r} needs the denoiser's KV-cache functions (kv_cache_fns); "
                      "make_sampler passes them for a denoiser that has them.")
  queries = min(cfg.block_length, length)

  def block_positions(block_B):
    """The positions of each row's current block [B, Q] (Q = block_length), padded with its first one, and which
    entries are real (the last block, or a done row, has fewer)."""
    in_block_BxL = block_of_BxL == block_B[:, None]
    order_BxL = jnp.argsort(jnp.where(in_block_BxL, position_1xL, length + position_1xL), axis=-1)
    positions_BxQ = order_BxL[:, :queries].astype(jnp.int32)
    real_BxQ = jnp.take_along_axis(in_block_BxL, positions_BxQ, axis=-1)
    return jnp.where(real_BxQ, positions_BxQ, positions_BxQ[:, :1]), real_BxQ

  def first_masked_block(x_BxL):
    blocks_BxL = jnp.where(x_BxL == mask_id, block_of_BxL, jnp.iinfo(jnp.int32).max)
    return jnp.minimum(jnp.min(blocks_BxL, axis=-1), num_blocks_B)

  def network(x_BxL, t_B, model_carry):
    """(logits, priority, carry, passes): the denoiser's call, guided when guidance_scale > 0."""
    logits_BxLxV, model_priority_BxL, new_carry = denoise_fn(x_BxL, t_B, model_carry)
    if not cfg.guidance_scale:
      return logits_BxLxV, model_priority_BxL, new_carry, jnp.int32(1)
    unconditional_BxLxV = denoise_fn(jnp.where(fixed_BxL, mask_id, x_BxL), t_B, model_carry)[0]
    w = cfg.guidance_scale
    guided = (1.0 + w) * logits_BxLxV.astype(jnp.float32) - w * unconditional_BxLxV.astype(jnp.float32)
    return guided.astype(logits_BxLxV.dtype), model_priority_BxL, new_carry, jnp.int32(2)

  def predict(logits_xV, sample_key):
    """(candidates, confidences) from logits [..., V]: the never-sampled ids removed, a draw, and the model's own
    probability of it (LLaDA's low-confidence remasking), not its probability under the temperature/top-k/top-p
    filtered distribution it was drawn from."""
    logits_xV = remove_never_sampled(logits_xV)  # in the model's dtype
    cand_x = draw(logits_xV, cfg, sample_key)
    return cand_x, confidence_scores(logits_xV, cand_x, cfg.confidence)

  def predictions_at(logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, sample_key):
    """Candidates and confidences [B, L] from the logits of the rows at `positions_BxQ` (elsewhere: the current token
    and 0; entries that are not `real_BxQ` are padding and dropped)."""
    cand_BxQ, confidence_BxQ = predict(logits_BxQxV, sample_key)
    rows_Bx1 = jnp.arange(batch)[:, None]
    scatter_BxQ = jnp.where(real_BxQ, positions_BxQ, length)  # out of bounds: dropped
    cand_BxL = x_BxL.at[rows_Bx1, scatter_BxQ].set(cand_BxQ, mode="drop")
    confidence_BxL = jnp.zeros(x_BxL.shape, jnp.float32).at[rows_Bx1, scatter_BxQ].set(confidence_BxQ, mode="drop")
    return cand_BxL, confidence_BxL

  def kv_cached_predictions(st, x_BxL, t_B, live_B, sample_key):
    """(candidates, confidences, KV cache, the blocks it was filled at) of a KV-cached step. A full pass that keeps
    every layer's keys and values runs when a row has entered a new block since the cache was filled. Otherwise:
    "dual" (Fast-dLLM's DualCache) recomputes the rows of each row's current block only, every other position read
    from the cache; "prefix" (Fast-dLLM's PrefixCache) recomputes every position from the earliest current block of
    the batch to the end (static shapes: the window [L - Q_k, L), Q_k = L - k b with k = floor(start / b), one
    compiled branch per k), reading only the finished prefix from the cache."""
    prefill_fn, step_fn = kv_cache_fns
    refresh = (st.step == 0) | jnp.any(live_B & (st.block_B != st.kv_block_B))
    kv_block_B = jnp.where(refresh, st.block_B, st.kv_block_B)
    if cfg.cache == "dual":
      positions_BxQ, real_BxQ = block_positions(st.block_B)
      logits_BxQxV, kv_cache = jax.lax.cond(refresh, lambda: prefill_fn(x_BxL, t_B, positions_BxQ),
                                            lambda: step_fn(x_BxL, t_B, positions_BxQ, st.kv_cache))
      return (*predictions_at(logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, sample_key), kv_cache, kv_block_B)

    def window(start: int):
      positions_BxQ = jnp.broadcast_to(jnp.arange(start, length, dtype=jnp.int32), (batch, length - start))
      return positions_BxQ, jnp.ones(positions_BxQ.shape, bool)

    def full_pass():
      positions_BxQ, real_BxQ = window(0)
      logits_BxLxV, kv_cache = prefill_fn(x_BxL, t_B, positions_BxQ)
      return (*predictions_at(logits_BxLxV, positions_BxQ, real_BxQ, x_BxL, sample_key), kv_cache)

    def suffix_pass(start: int):
      positions_BxQ, real_BxQ = window(start)
      logits_BxQxV, kv_cache = step_fn(x_BxL, t_B, positions_BxQ, st.kv_cache)
      return (*predictions_at(logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, sample_key), kv_cache)

    first_BxL = (block_of_BxL == st.block_B[:, None]) & live_B[:, None]
    start = jnp.min(jnp.where(first_BxL, position_1xL, length))  # the earliest position of a current block
    buckets = -(-length // cfg.block_length)
    branches = [functools.partial(suffix_pass, k * cfg.block_length) for k in range(buckets)]
    bucket = jnp.clip(start // cfg.block_length, 0, buckets - 1)
    cand_BxL, confidence_BxL, kv_cache = jax.lax.cond(refresh, full_pass, lambda: jax.lax.switch(bucket, branches))
    return cand_BxL, confidence_BxL, kv_cache, kv_block_B

  def body(st: _LoopState) -> _LoopState:
    key, sample_key, reveal_key = jax.random.split(st.key, 3)
    x_BxL = st.x_BxL
    masked_BxL = x_BxL == mask_id
    live_B = st.block_B < num_blocks_B
    in_block_BxL = block_of_BxL == st.block_B[:, None]
    masked_blk_BxL = masked_BxL & in_block_BxL
    n_masked_blk_B = jnp.sum(masked_blk_BxL, axis=-1, dtype=jnp.int32)
    open_blk_BxL = in_block_BxL & (x_BxL != special_tokens.PAD)  # closed (after EOS) positions hold PAD
    n_blk_B = jnp.sum(open_blk_BxL, axis=-1, dtype=jnp.int32)
    # The block's step budget and local time: block j of n_blk gets floor((j+1) S / n_blk) - floor(j S / n_blk) steps.
    blocks_B = jnp.maximum(num_blocks_B, 1)
    budget_B = jnp.maximum(((st.block_B + 1) * cfg.steps) // blocks_B - (st.block_B * cfg.steps) // blocks_B, 1)
    last_B = st.block_step_B + 1 >= budget_B
    if cfg.threshold:
      t_B = schedule.time_of_mask_rate(n_masked_blk_B / jnp.maximum(n_blk_B, 1))
    else:
      t_B = 1.0 - st.block_step_B / budget_B
    t_next_B = jnp.where(last_B, 0.0, 1.0 - (st.block_step_B + 1) / budget_B)

    kv_cache, kv_block_B = st.kv_cache, st.kv_block_B
    if cfg.cache in KV_CACHES:
      cand_BxL, confidence_BxL, kv_cache, kv_block_B = kv_cached_predictions(st, x_BxL, t_B, live_B, sample_key)
      model_priority_BxL, model_carry, passes = None, st.model_carry, jnp.int32(1)
      cache, cache_x_BxL = st.cache, st.cache_x_BxL
    elif cfg.cache == "unchanged":
      unchanged = (st.step > 0) & jnp.all(x_BxL == st.cache_x_BxL)
      logits_BxLxV, model_priority_BxL, model_carry, passes = jax.lax.cond(
          unchanged, lambda: (*st.cache, st.model_carry, jnp.int32(0)), lambda: network(x_BxL, t_B, st.model_carry))
      cache, cache_x_BxL = (logits_BxLxV, model_priority_BxL), x_BxL
    else:
      logits_BxLxV, model_priority_BxL, model_carry, passes = network(x_BxL, t_B, st.model_carry)
      cache, cache_x_BxL = st.cache, st.cache_x_BxL
    if cfg.cache not in KV_CACHES:
      cand_BxL, confidence_BxL = predict(logits_BxLxV, sample_key)
    step_priority_BxL = priority_BxL
    if cfg.strategic_weight and model_priority_BxL is not None:
      weighted = cfg.strategic_weight * model_priority_BxL.astype(jnp.float32)
      step_priority_BxL = weighted if step_priority_BxL is None else step_priority_BxL + weighted
    score_BxL = confidence_BxL if step_priority_BxL is None else confidence_BxL + step_priority_BxL
    # Revealed positions that a remasking policy may mask again: generated, open, in the block, not the closing EOS.
    revised_BxL = open_blk_BxL & ~masked_BxL
    if cfg.eos_stop:
      revised_BxL = revised_BxL & (x_BxL != special_tokens.EOS)
    remask_BxL = jnp.zeros_like(masked_BxL)
    if cfg.method == "confidence":
      if cfg.reveal_noise > 0:
        gumbel_BxL = jax.random.gumbel(reveal_key, score_BxL.shape)
        anneal_B = cfg.reveal_noise * (1.0 - (st.block_step_B + 1) / budget_B)
        score_BxL = jnp.log(jnp.maximum(score_BxL, 1e-20)) + anneal_B[:, None] * gumbel_BxL
      at_least_one_B = jnp.minimum(n_masked_blk_B, 1)
      if cfg.threshold:
        k_B = jnp.maximum(jnp.sum(masked_blk_BxL & (confidence_BxL > cfg.threshold), -1, dtype=jnp.int32),
                          at_least_one_B)
      else:
        n_target_B = jnp.floor(n_blk_B * schedule.mask_rate(t_next_B) + 1e-4).astype(jnp.int32)
        k_B = jnp.maximum(n_masked_blk_B - n_target_B, at_least_one_B)
      if cfg.confidence_stop:
        sure_B = jnp.all(jnp.where(masked_blk_BxL, confidence_BxL >= cfg.confidence_stop, True), axis=-1)
        k_B = jnp.where(sure_B, n_masked_blk_B, k_B)
      if cfg.remasking == "low_confidence":
        n_revised_B = jnp.sum(revised_BxL, axis=-1, dtype=jnp.int32)
        m_B = jnp.where(t_next_B > cfg.remask_t_off,
                        jnp.floor(cfg.remask_eta * n_revised_B + 1e-4).astype(jnp.int32), 0)
        remask_BxL = _lowest_k(st.conf_BxL, revised_BxL, m_B)
        k_B = jnp.minimum(k_B + m_B, n_masked_blk_B)
      reveal_BxL = _reveal_top_k(score_BxL, masked_blk_BxL, k_B)
    else:
      p_reveal_B, sigma_B = _ancestral_probabilities(cfg, t_B, t_next_B, last_B)
      reveal_BxL = masked_blk_BxL & (jax.random.uniform(reveal_key, x_BxL.shape) < p_reveal_B[:, None])
      if remdm:
        remask_draw_BxL = jax.random.uniform(jax.random.fold_in(reveal_key, 1), x_BxL.shape)
        remask_BxL = revised_BxL & (remask_draw_BxL < sigma_B[:, None])
    new_x_BxL = jnp.where(reveal_BxL, cand_BxL, x_BxL)
    reveal_step_BxL = jnp.where(reveal_BxL, st.step, st.reveal_step_BxL)
    conf_BxL = jnp.where(reveal_BxL, score_BxL, st.conf_BxL)
    if cfg.remasking != "none":
      new_x_BxL = jnp.where(remask_BxL, mask_id, new_x_BxL)
      reveal_step_BxL = jnp.where(remask_BxL, max_steps, reveal_step_BxL)
      conf_BxL = jnp.where(remask_BxL, 0.0, conf_BxL)
    if cfg.eos_stop:
      first_eos_B = jnp.min(jnp.where(gen_BxL & (new_x_BxL == special_tokens.EOS), position_1xL, length), axis=-1)
      closed_BxL = gen_BxL & (position_1xL > first_eos_B[:, None])
      new_x_BxL = jnp.where(closed_BxL, special_tokens.PAD, new_x_BxL)
      reveal_step_BxL = jnp.where(closed_BxL, max_steps, reveal_step_BxL)
      conf_BxL = jnp.where(closed_BxL, 0.0, conf_BxL)
    # A block is done when nothing in it is masked (with ReMDM: and its time has reached 0); the row then moves to the
    # first block that still holds a mask (num_blocks_B when none does).
    done_blk_B = ~jnp.any((new_x_BxL == mask_id) & in_block_BxL, axis=-1)
    if remdm:
      done_blk_B = done_blk_B & last_B
    block_B = jnp.where(live_B & done_blk_B, first_masked_block(new_x_BxL), st.block_B)
    block_step_B = jnp.where(block_B != st.block_B, 0, st.block_step_B + 1)
    # Rows that were already done take no step (their tokens cannot change: nothing of theirs is masked or revisable).
    new_x_BxL = jnp.where(live_B[:, None], new_x_BxL, x_BxL)
    trajectory = st.trajectory
    if cfg.record_trajectory:
      trajectory = jax.lax.dynamic_update_index_in_dim(trajectory, new_x_BxL, st.step + 1, axis=0)
    return _LoopState(step=st.step + 1, x_BxL=new_x_BxL, reveal_step_BxL=reveal_step_BxL, conf_BxL=conf_BxL, key=key,
                      model_carry=model_carry, block_B=jnp.where(live_B, block_B, st.block_B),
                      block_step_B=jnp.where(live_B, block_step_B, st.block_step_B),
                      steps_B=st.steps_B + live_B.astype(jnp.int32), calls=st.calls + passes, cache=cache,
                      cache_x_BxL=cache_x_BxL, kv_cache=kv_cache, kv_block_B=kv_block_B, trajectory=trajectory)

  cache = cache_x = None
  if cfg.cache == "unchanged":
    shapes = jax.eval_shape(lambda x, c: network(x, jnp.ones((batch,), jnp.float32), c)[:2], x_BxL, init_carry)
    cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    cache_x = x_BxL
  kv_cache = kv_block = None
  if cfg.cache in KV_CACHES:
    prefill_shapes = jax.eval_shape(lambda x: kv_cache_fns[0](x, jnp.ones((batch,), jnp.float32),
                                                              jnp.zeros((batch, queries), jnp.int32)), x_BxL)
    kv_cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), prefill_shapes[1])
    kv_block = jnp.full((batch,), -1, jnp.int32)
  trajectory = None
  if cfg.record_trajectory:
    trajectory = jnp.broadcast_to(x_BxL, (max_steps + 1, batch, length))
  init = _LoopState(step=jnp.int32(0), x_BxL=x_BxL,
                    reveal_step_BxL=jnp.where(fixed_BxL, -1, max_steps).astype(jnp.int32),
                    conf_BxL=jnp.zeros(x_BxL.shape, jnp.float32), key=rng, model_carry=init_carry,
                    block_B=first_masked_block(x_BxL), block_step_B=jnp.zeros((batch,), jnp.int32),
                    steps_B=jnp.zeros((batch,), jnp.int32), calls=jnp.int32(0), cache=cache, cache_x_BxL=cache_x,
                    kv_cache=kv_cache, kv_block_B=kv_block, trajectory=trajectory)
  st = jax.lax.while_loop(lambda st: (st.step < max_steps) & jnp.any(st.block_B < num_blocks_B), body, init)
  x_BxL, model_carry = st.x_BxL, st.model_carry

  def fallback_fill(x_BxL):
    t0_B = jnp.zeros((batch,), jnp.float32)
    logits = sampling_logits(denoise_fn(x_BxL, t0_B, model_carry)[0])
    return jnp.where(x_BxL == mask_id, jnp.argmax(logits, axis=-1).astype(jnp.int32), x_BxL)

  x_BxL = jax.lax.cond(jnp.any(x_BxL == mask_id), fallback_fill, lambda x: x, x_BxL)
  trajectory = st.trajectory
  if cfg.record_trajectory:
    after_last_Sx1x1 = (jnp.arange(max_steps + 1) > st.step)[:, None, None]
    trajectory = jnp.where(after_last_Sx1x1, x_BxL[None], trajectory).at[-1].set(x_BxL)
  kept_BxL = gen_BxL & (x_BxL != special_tokens.PAD)
  if cfg.eos_stop:
    kept_BxL = kept_BxL & (x_BxL != special_tokens.EOS)
  output = SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=st.reveal_step_BxL, confidence_BxL=st.conf_BxL,
                        trajectory_SxBxL=trajectory, steps_B=st.steps_B,
                        lengths_B=jnp.sum(kept_BxL, axis=-1, dtype=jnp.int32), network_calls=st.calls)
  return (output, model_carry) if return_carry else output


def check_cache(model, cfg: SamplerConfig, batch: int, length: int):
  """Raises ConfigError when cfg's cache does not fit this denoiser: MDLM's cache reuses logits when no token changed,
  which is only the same computation for a denoiser of x_t alone (no time conditioning, no carry); the dual KV cache
  needs a denoiser with `kv_prefill`/`kv_step` and no carried state."""
  carries = model.init_sample_carry(batch, length) is not None
  if cfg.cache == "unchanged" and (model.cfg.time_conditioning or carries):
    raise ConfigError(f"sampler cache='unchanged' reuses the last logits when no token changed, which is exact only "
                      f"for a denoiser of the tokens alone; this {type(model).__name__} also depends on t or carries "
                      "state (time conditioning, self-conditioning, HRM memory). Use cache='none'.")
  if cfg.cache in KV_CACHES and (not model.supports_kv_cache or carries or model.cfg.causal):
    raise ConfigError(f"sampler cache={cfg.cache!r} needs a bidirectional denoiser with a KV cache (transformer, "
                      f"EcoHybrid) and no carried state; this {type(model).__name__} has none or carries state (self-conditioning, "
                      "HRM memory). Use cache='none'.")


def kv_cache_functions(model_fn, cfg: SamplerConfig):
  """(prefill, step) of the dual KV cache for `sample`, from `model_fn()` (the merged denoiser), or None."""
  if cfg.cache not in KV_CACHES:
    return None
  return (lambda x, t, positions: model_fn().kv_prefill(x, t, positions),
          lambda x, t, positions, kv: model_fn().kv_step(x, t, positions, kv))


def make_sampler(graphdef, other, cfg: SamplerConfig):
  """jit(sample) over (params, rng, tokens_BxL, fixed_BxL) for a split NNX denoiser, through its `sample_step` and
  `init_sample_carry`."""
  from flax import nnx

  if cfg.process == "gaussian":
    from dlm_jax.sampling import continuous

    @jax.jit
    def run_continuous(params, rng, tokens_BxL, fixed_BxL):
      model = lambda: nnx.merge(graphdef, params, other)
      logits_fn = lambda z, t: model()(tokens_BxL, t, embeddings_BxLxD=z).logits_BxLxV
      return continuous.gaussian_sample(logits_fn, model().diffusion_table(), rng, tokens_BxL, fixed_BxL, cfg)

    return run_continuous

  if cfg.thought:  # text and thought sampled jointly from noise (sampling/thought.py for persistence and steering)
    from dlm_jax.sampling import thought

    @jax.jit
    def run_thought(params, rng, tokens_BxL, fixed_BxL):
      model = lambda: nnx.merge(graphdef, params, other)
      process = thought.process_of(model().cfg, cfg)
      start_rng, loop_rng = jax.random.split(rng)
      start = thought.from_noise(start_rng, tokens_BxL.shape[0], process.dims)
      return thought.thought_sample(model, loop_rng, tokens_BxL, fixed_BxL, start, cfg, process).text

    return run_thought

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    # Merged at each call site: an NNX module must not cross into the loop's trace level.
    model = lambda: nnx.merge(graphdef, params, other)
    check_cache(model(), cfg, *tokens_BxL.shape)
    denoise = lambda x, t, carry: model().sample_step(x, t, carry)
    return sample(denoise, rng, tokens_BxL, fixed_BxL, cfg, init_carry=model().init_sample_carry(*tokens_BxL.shape),
                  kv_cache_fns=kv_cache_functions(model, cfg))

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
