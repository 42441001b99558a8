"""The masked sampler's decoding strategies as components (docs/sampling.md has the table of legal combinations).

At each step of the reverse loop (`masked.masked_sample`) a `StepNetwork` turns the tokens into candidates and their
confidences, a `RevealPolicy` picks the masked positions of the current block to reveal, and a `Remask` the revealed
ones to mask again. Each component is a frozen dataclass built from a `SamplerConfig` by `from_config`, checks its own
fields in `check`, and reads the step through a `StepView`. A new strategy is one class and one entry in its registry
(`REVEALS`, `REMASKS`, `NETWORKS`; confidence scores: `primitives.CONFIDENCES`); `RULES` holds the few rules that span
components.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import primitives

KV_CACHES = ("dual", "prefix")  # Fast-dLLM's, for block decoding


@flax.struct.dataclass
class Blocks:
  """The block layout of a batch (fixed for the whole loop): which block each generated position belongs to (-1 for a
  fixed one), the rows' block counts, and the block length (0: one block)."""
  fixed_BxL: jax.Array
  block_of_BxL: jax.Array
  num_blocks_B: jax.Array
  block_length: int = flax.struct.field(pytree_node=False)

  @classmethod
  def of(cls, fixed_BxL, block_length: int) -> "Blocks":
    gen_BxL = ~fixed_BxL
    if block_length:
      rank_BxL = jnp.cumsum(gen_BxL, axis=1, dtype=jnp.int32) - 1
      block_of_BxL = jnp.where(gen_BxL, rank_BxL // block_length, -1)
      num_blocks_B = -(-jnp.sum(gen_BxL, axis=-1, dtype=jnp.int32) // block_length)
    else:
      block_of_BxL = jnp.where(gen_BxL, 0, -1)
      num_blocks_B = jnp.any(gen_BxL, axis=-1).astype(jnp.int32)
    return cls(fixed_BxL=fixed_BxL, block_of_BxL=block_of_BxL, num_blocks_B=num_blocks_B, block_length=block_length)

  @property
  def length(self) -> int:
    return self.block_of_BxL.shape[1]

  @property
  def position_1xL(self):
    return jnp.arange(self.length, dtype=jnp.int32)[None]

  def first_masked(self, x_BxL, mask_id: int):
    """The first block of each row that holds a mask (num_blocks_B when none does)."""
    blocks_BxL = jnp.where(x_BxL == mask_id, self.block_of_BxL, jnp.iinfo(jnp.int32).max)
    return jnp.minimum(jnp.min(blocks_BxL, axis=-1), self.num_blocks_B)

  def positions(self, block_B):
    """The positions of each row's block `block_B` [B, Q] (Q = block_length), padded with its first one, and which
    entries are real (the last block, or a done row, has fewer)."""
    queries = min(self.block_length, self.length)
    in_block_BxL = self.block_of_BxL == block_B[:, None]
    position_1xL = self.position_1xL
    order_BxL = jnp.argsort(jnp.where(in_block_BxL, position_1xL, self.length + position_1xL), axis=-1)
    positions_BxQ = order_BxL[:, :queries].astype(jnp.int32)
    real_BxQ = jnp.take_along_axis(in_block_BxL, positions_BxQ, axis=-1)
    return jnp.where(real_BxQ, positions_BxQ, positions_BxQ[:, :1]), real_BxQ


@flax.struct.dataclass
class StepView:
  """What every component may read at one step of the loop: the tokens, the current block of each row and its mask
  counts, the block's step budget, and its time t -> t' (`t_B` is the reveal policy's: `RevealPolicy.time`)."""
  step: jax.Array  # scalar int32: steps the batch has taken
  x_BxL: jax.Array
  masked_BxL: jax.Array
  live_B: jax.Array  # rows still decoding a block
  block_B: jax.Array  # the block each row is decoding
  block_step_B: jax.Array  # steps spent in it
  in_block_BxL: jax.Array
  masked_blk_BxL: jax.Array  # masked positions of the current block
  n_masked_blk_B: jax.Array
  n_blk_B: jax.Array  # open (not closed by EOS) positions of the current block
  budget_B: jax.Array  # the block's steps: floor((j+1) S / n_blk) - floor(j S / n_blk) for block j (>= 1)
  last_B: jax.Array  # this is the block's last budgeted step
  t_next_B: jax.Array  # t' = 1 - (i+1)/n (0 at the last step)
  revised_BxL: jax.Array  # revealed positions a remask may mask again: open, in the block, not the closing EOS
  conf_BxL: jax.Array  # the ranking score of each position at its last reveal
  t_B: jax.Array | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Remasking: which revealed positions of the block are masked again (LLaDA's low-confidence remasking, ReMDM).


@dataclasses.dataclass(frozen=True)
class NoRemask:
  """Nothing is masked again: every reveal is final (MDLM, MD4, LLaDA's default)."""
  name: ClassVar[str] = "none"
  selected_by: ClassVar[dict] = {}  # the SamplerConfig fields that select it (with example values)
  remasks: ClassVar[bool] = False
  keeps_revising: ClassVar[bool] = False  # a block is done once nothing in it is masked

  @classmethod
  def from_config(cls, cfg) -> "NoRemask":
    return cls()

  @classmethod
  def check(cls, cfg):
    """No fields of its own: nothing to check."""

  def ranked(self, view: StepView):
    """(positions to mask again, how many) for a ranked reveal."""
    return jnp.zeros_like(view.masked_BxL), None

  def alpha(self, schedule, t_B):
    """The alpha(t) that ancestral reveals follow."""
    return schedule.alpha(t_B)

  def sigma(self, t_B, alpha_t_B, alpha_s_B):
    """The probability sigma_t that an ancestral step masks a revealed position again."""
    return jnp.zeros_like(alpha_t_B)

  def draw(self, view: StepView, sigma_B, key):
    return jnp.zeros_like(view.masked_BxL)


def _check_eta(cfg):
  if not 0.0 <= cfg.remask_eta <= 1.0:
    raise ConfigError(f"sampler remask_eta must be in [0, 1], got {cfg.remask_eta}.")


@dataclasses.dataclass(frozen=True)
class LowConfidenceRemask(NoRemask):
  """While t' > t_off, the floor(eta x revealed) revealed positions of the block with the lowest confidence at their
  reveal are masked again and as many more masked ones revealed, so the masked count still follows the schedule
  (LLaDA's low-confidence remasking, Nie et al. 2025). A remasked position is predicted afresh at the next step (a
  masked-diffusion denoiser's outputs at visible positions are untrained, so nothing is re-predicted in place)."""
  name: ClassVar[str] = "low_confidence"
  selected_by: ClassVar[dict] = {"remasking": "low_confidence", "remask_eta": 0.25}
  remasks: ClassVar[bool] = True
  eta: float = 0.02
  t_off: float = 0.05

  @classmethod
  def from_config(cls, cfg) -> "LowConfidenceRemask":
    return cls(eta=cfg.remask_eta, t_off=cfg.remask_t_off)

  @classmethod
  def check(cls, cfg):
    _check_eta(cfg)

  def ranked(self, view: StepView):
    n_revised_B = jnp.sum(view.revised_BxL, axis=-1, dtype=jnp.int32)
    m_B = jnp.where(view.t_next_B > self.t_off, jnp.floor(self.eta * n_revised_B + 1e-4).astype(jnp.int32), 0)
    return primitives.bottom_k_mask(view.conf_BxL, view.revised_BxL, m_B), m_B


@dataclasses.dataclass(frozen=True)
class ReMDMCapRemask(NoRemask):
  """ReMDM's reverse step q_sigma(z_s | z_t, x) (Wang et al. 2025, "Remasking Discrete Diffusion Models with
  Inference-Time Scaling"): a revealed token is masked again with probability sigma_t = min(eta, (1 - alpha_s) /
  alpha_t) (the cap keeps the reveal probability <= 1) and a masked one revealed with probability
  (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t); sigma_t = 0 is MDLM. A block spends its whole step budget."""
  name: ClassVar[str] = "remdm_cap"
  selected_by: ClassVar[dict] = {"remasking": "remdm_cap", "remask_eta": 0.25}
  remasks: ClassVar[bool] = True
  keeps_revising: ClassVar[bool] = True
  eta: float = 0.02

  @classmethod
  def from_config(cls, cfg) -> "ReMDMCapRemask":
    return cls(eta=cfg.remask_eta)

  @classmethod
  def check(cls, cfg):
    _check_eta(cfg)

  def sigma(self, t_B, alpha_t_B, alpha_s_B):
    return jnp.where(alpha_t_B > 0, jnp.minimum(self.eta, (1.0 - alpha_s_B) / jnp.maximum(alpha_t_B, 1e-12)),
                     self.eta)

  def draw(self, view: StepView, sigma_B, key):
    return view.revised_BxL & (jax.random.uniform(jax.random.fold_in(key, 1), view.x_BxL.shape) < sigma_B[:, None])


@dataclasses.dataclass(frozen=True)
class ReMDMLoopRemask(ReMDMCapRemask):
  """ReMDM's loop schedule, written as one continuous alpha(t): alpha runs 0 -> alpha_on linearly over t in
  [1, t_on], stays at alpha_on over [t_on, t_off] while tokens are remasked with sigma = eta and revealed with
  probability eta alpha_on / (1 - alpha_on) (the masked fraction stays put while the sequence is revised), and runs
  alpha_on -> 1 over [t_off, 0]."""
  name: ClassVar[str] = "remdm_loop"
  selected_by: ClassVar[dict] = {"remasking": "remdm_loop", "remask_eta": 0.1}
  t_on: float = 0.55
  t_off: float = 0.05
  alpha_on: float = 0.9

  @classmethod
  def from_config(cls, cfg) -> "ReMDMLoopRemask":
    return cls(eta=cfg.remask_eta, t_on=cfg.remask_t_on, t_off=cfg.remask_t_off, alpha_on=cfg.remask_alpha_on)

  @classmethod
  def check(cls, cfg):
    _check_eta(cfg)
    if not 0.0 < cfg.remask_t_off < cfg.remask_t_on < 1.0:
      raise ConfigError(f"remdm_loop needs 0 < remask_t_off < remask_t_on < 1, got t_off={cfg.remask_t_off}, "
                        f"t_on={cfg.remask_t_on}.")
    if not 0.0 < cfg.remask_alpha_on < 1.0:
      raise ConfigError(f"remdm_loop needs 0 < remask_alpha_on < 1, got {cfg.remask_alpha_on}.")
    if cfg.remask_eta * cfg.remask_alpha_on > 1.0 - cfg.remask_alpha_on:
      raise ConfigError(f"remdm_loop reveals with probability eta alpha_on / (1 - alpha_on), which must be <= 1: "
                        f"lower remask_eta ({cfg.remask_eta}) to at most "
                        f"{(1.0 - cfg.remask_alpha_on) / cfg.remask_alpha_on:.4g}.")

  def alpha(self, schedule, t_B):
    a_on, t_on, t_off = self.alpha_on, self.t_on, self.t_off
    return jnp.where(t_B > t_on, a_on * (1.0 - t_B) / (1.0 - t_on),
                     jnp.where(t_B <= t_off, 1.0 - (1.0 - a_on) * t_B / t_off, a_on))

  def sigma(self, t_B, alpha_t_B, alpha_s_B):
    in_loop_B = (t_B <= self.t_on) & (t_B > self.t_off)
    return jnp.where(in_loop_B, self.eta, 0.0)


REMASKS = {cls.name: cls for cls in (NoRemask, LowConfidenceRemask, ReMDMCapRemask, ReMDMLoopRemask)}


# ---------------------------------------------------------------------------------------------------------------------
# Reveal policies: which masked positions of the current block get their candidate. Each returns (reveal_BxL,
# remask_BxL, score_BxL): the score is what `conf_BxL` keeps for a revealed position.


@dataclasses.dataclass(frozen=True)
class ConfidenceReveal:
  """Reveal the k most confident masked positions of the block (MaskGIT; LLaDA's low-confidence remasking), k bringing
  its masked count down to floor(n_block (1 - alpha(t'))) (the reveal schedule follows the masking schedule), at least
  one per step; alpha(0) = 1, so a block's last step reveals all of it.

  `reveal_noise` = tau > 0 ranks by log(confidence) + tau (1 - (i+1)/n) g, g ~ Gumbel (MaskGIT's "choice
  temperature", Chang et al. 2022): early steps reveal a noisy top-k instead of always the most predictable symbol.
  `confidence_stop` = c > 0 (the adaptive step budget of a block): once every masked position of the block has
  confidence >= c, the block is revealed at once and its remaining steps are not spent. `token_stop` = c > 0 (the
  same budget per token, seed 001 §9.1): every masked position whose confidence reaches c is revealed at this step
  besides the k of the schedule, and is final from then on (the loop's `final_BxL`: no remask touches it), so easy
  positions stop after the steps they need, hard ones take the schedule's, and a block whose positions are all
  revealed ends early; the steps a position used are its reveal step + 1 (`SampleOutput.reveal_step_BxL`). (With
  the schedule's floor of 1 instead of k this is Fast-dLLM's threshold decoding.) A ranked `Remask` masks m
  revealed positions again and k grows by m."""
  name: ClassVar[str] = "confidence"
  selected_by: ClassVar[dict] = {}  # the SamplerConfig fields that select it (with example values)
  schedule: object
  reveal_noise: float = 0.0
  confidence_stop: float = 0.0
  token_stop: float = 0.0

  @classmethod
  def from_config(cls, cfg) -> "ConfidenceReveal":
    return cls(schedule=cfg.schedule, reveal_noise=cfg.reveal_noise, confidence_stop=cfg.confidence_stop,
               token_stop=cfg.token_stop)

  @classmethod
  def check(cls, cfg):
    if cfg.confidence not in primitives.CONFIDENCES:
      raise ConfigError(f"sampler confidence must be one of {tuple(primitives.CONFIDENCES)}, got {cfg.confidence!r}.")
    for name in ("confidence_stop", "token_stop"):
      if not 0.0 <= getattr(cfg, name) <= 1.0:
        raise ConfigError(f"sampler {name} must be in [0, 1] (0: off), got {getattr(cfg, name)}.")

  def max_steps(self, steps: int, length: int) -> int:
    return steps

  def time(self, view: StepView):
    """The block's local time t = 1 - i/n at its step i of n."""
    return 1.0 - view.block_step_B / view.budget_B

  def count(self, view: StepView, confidence_BxL):
    """How many masked positions of the block to reveal (before confidence_stop and remasking)."""
    n_target_B = jnp.floor(view.n_blk_B * self.schedule.mask_rate(view.t_next_B) + 1e-4).astype(jnp.int32)
    return jnp.maximum(view.n_masked_blk_B - n_target_B, jnp.minimum(view.n_masked_blk_B, 1))

  def __call__(self, view: StepView, score_BxL, confidence_BxL, remask: NoRemask, key):
    if self.reveal_noise > 0:
      gumbel_BxL = jax.random.gumbel(key, score_BxL.shape)
      anneal_B = self.reveal_noise * (1.0 - (view.block_step_B + 1) / view.budget_B)
      score_BxL = jnp.log(jnp.maximum(score_BxL, 1e-20)) + anneal_B[:, None] * gumbel_BxL
    k_B = self.count(view, confidence_BxL)
    if self.confidence_stop:
      sure_B = jnp.all(jnp.where(view.masked_blk_BxL, confidence_BxL >= self.confidence_stop, True), axis=-1)
      k_B = jnp.where(sure_B, view.n_masked_blk_B, k_B)
    remask_BxL, m_B = remask.ranked(view)
    if m_B is not None:
      k_B = jnp.minimum(k_B + m_B, view.n_masked_blk_B)
    reveal_BxL = primitives.top_k_mask(score_BxL, view.masked_blk_BxL, k_B)
    if self.token_stop:
      reveal_BxL = reveal_BxL | (view.masked_blk_BxL & (confidence_BxL >= self.token_stop))
    return reveal_BxL, remask_BxL, score_BxL


@dataclasses.dataclass(frozen=True)
class ThresholdReveal(ConfidenceReveal):
  """Fast-dLLM's threshold parallel decoding (Wu et al. 2025): reveal every masked position of the block whose
  confidence exceeds c, at least one (the most confident) per step. A sample then takes at most n_gen steps (the
  loop's bound is L), and the denoiser is told the t whose mask rate is the block's masked fraction
  (`MaskingSchedule.time_of_mask_rate`)."""
  name: ClassVar[str] = "threshold"
  selected_by: ClassVar[dict] = {"threshold": 0.5}
  threshold: float = 0.5

  @classmethod
  def from_config(cls, cfg) -> "ThresholdReveal":
    return cls(schedule=cfg.schedule, reveal_noise=cfg.reveal_noise, confidence_stop=cfg.confidence_stop,
               token_stop=cfg.token_stop, threshold=cfg.threshold)

  @classmethod
  def check(cls, cfg):
    super().check(cfg)
    if not 0.0 <= cfg.threshold < 1.0:
      raise ConfigError(f"sampler threshold must be in [0, 1) (0: off), got {cfg.threshold}.")

  def max_steps(self, steps: int, length: int) -> int:
    return length

  def time(self, view: StepView):
    return self.schedule.time_of_mask_rate(view.n_masked_blk_B / jnp.maximum(view.n_blk_B, 1))

  def count(self, view: StepView, confidence_BxL):
    return jnp.maximum(jnp.sum(view.masked_blk_BxL & (confidence_BxL > self.threshold), -1, dtype=jnp.int32),
                       jnp.minimum(view.n_masked_blk_B, 1))


@dataclasses.dataclass(frozen=True)
class AncestralReveal:
  """The MD4 / MDLM ancestral step: each masked position of the block is revealed independently with probability
  (alpha(t') - (1 - sigma_t) alpha(t)) / (1 - alpha(t)) (sigma_t = 0 without ReMDM), with a token drawn from
  p_theta(x_0 | x_t): the exact reverse process of the forward chain given the model. The `Remask` gives alpha and
  sigma_t; the block's last step reveals everything and masks nothing."""
  name: ClassVar[str] = "ancestral"
  selected_by: ClassVar[dict] = {"method": "ancestral"}
  schedule: object

  @classmethod
  def from_config(cls, cfg) -> "AncestralReveal":
    return cls(schedule=cfg.schedule)

  @classmethod
  def check(cls, cfg):
    ConfidenceReveal.check(cfg)  # the confidence kind still scores the reveals (conf_BxL)

  def max_steps(self, steps: int, length: int) -> int:
    return steps

  time = ConfidenceReveal.time

  def probabilities(self, view: StepView, remask: NoRemask):
    """(reveal probability of a masked position, remask probability sigma of a revealed one), per row."""
    alpha_t, alpha_s = remask.alpha(self.schedule, view.t_B), remask.alpha(self.schedule, view.t_next_B)
    sigma_B = remask.sigma(view.t_B, alpha_t, alpha_s)
    p_reveal_B = (alpha_s - (1.0 - sigma_B) * alpha_t) / jnp.maximum(1.0 - alpha_t, 1e-12)
    return jnp.where(view.last_B, 1.0, jnp.clip(p_reveal_B, 0.0, 1.0)), jnp.where(view.last_B, 0.0, sigma_B)

  def __call__(self, view: StepView, score_BxL, confidence_BxL, remask: NoRemask, key):
    p_reveal_B, sigma_B = self.probabilities(view, remask)
    reveal_BxL = view.masked_blk_BxL & (jax.random.uniform(key, view.x_BxL.shape) < p_reveal_B[:, None])
    return reveal_BxL, remask.draw(view, sigma_B, key), score_BxL


REVEALS = {cls.name: cls for cls in (ConfidenceReveal, ThresholdReveal, AncestralReveal)}


def reveal_name(cfg) -> str:
  """The REVEALS entry a SamplerConfig selects: its `method`, "threshold" when a confidence method has threshold > 0."""
  return "threshold" if cfg.method == "confidence" and cfg.threshold else cfg.method


# ---------------------------------------------------------------------------------------------------------------------
# Step networks: the denoiser's call at one step, with or without reuse, as (candidates, confidences) over [B, L].


@flax.struct.dataclass
class NetworkOutput:
  cand_BxL: jax.Array  # candidate tokens (the current token where the network did not predict)
  confidence_BxL: jax.Array  # float32; 0 where it did not predict
  priority_BxL: jax.Array | None  # a stateful denoiser's priority score, or None
  model_carry: object
  passes: jax.Array  # scalar int32 forward passes this step
  state: object  # the network's own state, carried to the next step


@dataclasses.dataclass(frozen=True)
class Predictor:
  """(candidates, confidences) from logits [..., V]: the never-sampled ids removed, a draw (`primitives.draw`), and
  the model's own confidence in it (`primitives.CONFIDENCES`), not its confidence under the temperature/top-k/top-p
  filtered distribution it was drawn from."""
  greedy: bool
  temperature: float
  top_k: int
  top_p: float
  confidence: str
  draw_precision: str = "float32"
  special: special_tokens.SpecialIds = special_tokens.DEFAULT

  @classmethod
  def from_config(cls, cfg) -> "Predictor":
    return cls(greedy=cfg.greedy, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
               confidence=cfg.confidence, draw_precision=cfg.draw_precision, special=cfg.special)

  def __call__(self, logits_xV, key):
    logits_xV = primitives.remove_never_sampled(logits_xV, self.special)  # in the model's dtype
    cand_x = primitives.draw(logits_xV, self, key)
    return cand_x, primitives.confidence_scores(logits_xV, cand_x, self.confidence)


def denoiser_call(denoise_fn: Callable, fixed_BxL, guidance_scale: float, mask_id: int) -> Callable:
  """`(x, t, carry) -> (logits, priority, carry, passes)`: the denoiser, guided when guidance_scale = w > 0
  (classifier-free guidance, Ho & Salimans 2022 as used by LLaDA): (1 + w) l(x_t) - w l(x_t with every fixed position
  masked); the unconditional pass sees the same carry and its new carry is dropped."""

  def call(x_BxL, t_B, model_carry):
    logits_BxLxV, priority_BxL, new_carry = denoise_fn(x_BxL, t_B, model_carry)
    if not guidance_scale:
      return logits_BxLxV, priority_BxL, new_carry, jnp.int32(1)
    unconditional_BxLxV = denoise_fn(jnp.where(fixed_BxL, mask_id, x_BxL), t_B, model_carry)[0]
    w = guidance_scale
    guided = (1.0 + w) * logits_BxLxV.astype(jnp.float32) - w * unconditional_BxLxV.astype(jnp.float32)
    return guided.astype(logits_BxLxV.dtype), priority_BxL, new_carry, jnp.int32(2)

  return call


@dataclasses.dataclass(frozen=True)
class PlainNetwork:
  """One (guided) denoiser call per step."""
  name: ClassVar[str] = "none"
  selected_by: ClassVar[dict] = {}  # the SamplerConfig fields that select it (with example values)
  call: Callable
  predict: Predictor

  @classmethod
  def check(cls, cfg):
    """No fields of its own: nothing to check."""

  def init_state(self, x_BxL, init_carry, blocks: Blocks):
    return None

  def __call__(self, state, view: StepView, model_carry, key) -> NetworkOutput:
    logits_BxLxV, priority_BxL, model_carry, passes = self.call(view.x_BxL, view.t_B, model_carry)
    cand_BxL, confidence_BxL = self.predict(logits_BxLxV, key)
    return NetworkOutput(cand_BxL, confidence_BxL, priority_BxL, model_carry, passes, state)


@dataclasses.dataclass(frozen=True)
class UnchangedCacheNetwork(PlainNetwork):
  """MDLM's caching sampler (Sahoo et al. 2024 §4.2): when no token of the batch changed since the last call, its
  logits are reused (0 passes). Exact only for a denoiser that is a function of x_t alone (no time conditioning, no
  carried state; `masked.check_cache` refuses the others). Pays off for ancestral sampling with more steps than tokens,
  where many steps reveal nothing. State: ((logits, priority) of the last call, the tokens it saw)."""
  name: ClassVar[str] = "unchanged"
  selected_by: ClassVar[dict] = {"cache": "unchanged"}

  def init_state(self, x_BxL, init_carry, blocks: Blocks):
    batch = x_BxL.shape[0]
    shapes = jax.eval_shape(lambda x, c: self.call(x, jnp.ones((batch,), jnp.float32), c)[:2], x_BxL, init_carry)
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes), x_BxL

  def __call__(self, state, view: StepView, model_carry, key) -> NetworkOutput:
    last_outputs, last_x_BxL = state
    unchanged = (view.step > 0) & jnp.all(view.x_BxL == last_x_BxL)
    logits_BxLxV, priority_BxL, model_carry, passes = jax.lax.cond(
        unchanged, lambda: (*last_outputs, model_carry, jnp.int32(0)),
        lambda: self.call(view.x_BxL, view.t_B, model_carry))
    cand_BxL, confidence_BxL = self.predict(logits_BxLxV, key)
    return NetworkOutput(cand_BxL, confidence_BxL, priority_BxL, model_carry, passes,
                         ((logits_BxLxV, priority_BxL), view.x_BxL))


@dataclasses.dataclass(frozen=True)
class KVCacheNetwork:
  """Fast-dLLM's caches (Wu et al. 2025; block decoding only): every layer's keys and values from a full pass
  (`prefill(x, t, positions_BxQ) -> (logits_BxQxV, kv)`) at the start of each block, then each step recomputes only
  some rows (`step(x, t, positions_BxQ, kv) -> (logits_BxQxV, kv)`) and reads the rest from the cache: an
  approximation for a bidirectional denoiser (cached entries deeper than the first layer depended on tokens that have
  changed since), exact for a one-layer transformer. The full pass runs when a row has entered a new block since the
  cache was filled. State: (kv, the block of each row when it was filled). Subclasses choose the recomputed rows."""
  prefill: Callable
  step: Callable
  predict: Predictor
  blocks: Blocks

  @classmethod
  def check(cls, cfg):
    if not cfg.block_length or cfg.guidance_scale:
      raise ConfigError(f"sampler cache={cfg.cache!r} caches keys and values across the blocks of block decoding: "
                        "it needs block_length > 0 and no guidance (guidance_scale=0).")

  def init_state(self, x_BxL, init_carry, blocks: Blocks):
    batch = x_BxL.shape[0]
    queries = min(blocks.block_length, blocks.length)
    prefill_shapes = jax.eval_shape(lambda x: self.prefill(x, jnp.ones((batch,), jnp.float32),
                                                           jnp.zeros((batch, queries), jnp.int32)), x_BxL)
    return (jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), prefill_shapes[1]), jnp.full((batch,), -1, jnp.int32))

  def predictions_at(self, logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, key):
    """Candidates and confidences [B, L] from the logits of the rows at `positions_BxQ` (elsewhere: the current token
    and 0; entries that are not `real_BxQ` are padding and dropped)."""
    cand_BxQ, confidence_BxQ = self.predict(logits_BxQxV, key)
    rows_Bx1 = jnp.arange(x_BxL.shape[0])[:, None]
    scatter_BxQ = jnp.where(real_BxQ, positions_BxQ, x_BxL.shape[1])  # out of bounds: dropped
    cand_BxL = x_BxL.at[rows_Bx1, scatter_BxQ].set(cand_BxQ, mode="drop")
    confidence_BxL = jnp.zeros(x_BxL.shape, jnp.float32).at[rows_Bx1, scatter_BxQ].set(confidence_BxQ, mode="drop")
    return cand_BxL, confidence_BxL

  def __call__(self, state, view: StepView, model_carry, key) -> NetworkOutput:
    kv_cache, kv_block_B = state
    refresh = (view.step == 0) | jnp.any(view.live_B & (view.block_B != kv_block_B))
    kv_block_B = jnp.where(refresh, view.block_B, kv_block_B)
    cand_BxL, confidence_BxL, kv_cache = self.cached_predictions(kv_cache, refresh, view, key)
    return NetworkOutput(cand_BxL, confidence_BxL, None, model_carry, jnp.int32(1), (kv_cache, kv_block_B))


@dataclasses.dataclass(frozen=True)
class DualCacheNetwork(KVCacheNetwork):
  """Fast-dLLM's DualCache: each step recomputes the rows of each row's current block only."""
  name: ClassVar[str] = "dual"
  selected_by: ClassVar[dict] = {"cache": "dual", "block_length": 8}

  def cached_predictions(self, kv_cache, refresh, view: StepView, key):
    x_BxL, t_B = view.x_BxL, view.t_B
    positions_BxQ, real_BxQ = self.blocks.positions(view.block_B)
    logits_BxQxV, kv_cache = jax.lax.cond(refresh, lambda: self.prefill(x_BxL, t_B, positions_BxQ),
                                          lambda: self.step(x_BxL, t_B, positions_BxQ, kv_cache))
    return (*self.predictions_at(logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, key), kv_cache)


@dataclasses.dataclass(frozen=True)
class PrefixCacheNetwork(KVCacheNetwork):
  """Fast-dLLM's PrefixCache: each step recomputes every position from the earliest current block of the batch to the
  end, reading only the finished prefix from the cache (static shapes: the window [L - Q_k, L), Q_k = L - k b with
  k = floor(start / b), one compiled branch per k)."""
  name: ClassVar[str] = "prefix"
  selected_by: ClassVar[dict] = {"cache": "prefix", "block_length": 8}

  def cached_predictions(self, kv_cache, refresh, view: StepView, key):
    x_BxL, t_B = view.x_BxL, view.t_B
    batch, length = x_BxL.shape
    block_length = self.blocks.block_length

    def window(start: int):
      positions_BxQ = jnp.broadcast_to(jnp.arange(start, length, dtype=jnp.int32), (batch, length - start))
      return positions_BxQ, jnp.ones(positions_BxQ.shape, bool)

    def full_pass():
      positions_BxQ, real_BxQ = window(0)
      logits_BxLxV, new_kv = self.prefill(x_BxL, t_B, positions_BxQ)
      return (*self.predictions_at(logits_BxLxV, positions_BxQ, real_BxQ, x_BxL, key), new_kv)

    def suffix_pass(start: int):
      positions_BxQ, real_BxQ = window(start)
      logits_BxQxV, new_kv = self.step(x_BxL, t_B, positions_BxQ, kv_cache)
      return (*self.predictions_at(logits_BxQxV, positions_BxQ, real_BxQ, x_BxL, key), new_kv)

    first_BxL = (self.blocks.block_of_BxL == view.block_B[:, None]) & view.live_B[:, None]
    start = jnp.min(jnp.where(first_BxL, self.blocks.position_1xL, length))  # the earliest position of a current block
    buckets = -(-length // block_length)
    branches = [functools.partial(suffix_pass, k * block_length) for k in range(buckets)]
    bucket = jnp.clip(start // block_length, 0, buckets - 1)
    return jax.lax.cond(refresh, full_pass, lambda: jax.lax.switch(bucket, branches))


NETWORKS = {cls.name: cls for cls in (PlainNetwork, UnchangedCacheNetwork, DualCacheNetwork, PrefixCacheNetwork)}


def step_network(cfg, denoise_fn: Callable, blocks: Blocks, kv_cache_fns=None):
  """The NETWORKS entry `cfg.cache` selects, built for one call of the sampler."""
  predict = Predictor.from_config(cfg)
  if cfg.cache in KV_CACHES:
    if kv_cache_fns is None:
      raise ConfigError(f"sampler cache={cfg.cache!r} needs the denoiser's KV-cache functions (kv_cache_fns); "
                        "make_sampler passes them for a denoiser that has them.")
    return NETWORKS[cfg.cache](prefill=kv_cache_fns[0], step=kv_cache_fns[1], predict=predict, blocks=blocks)
  call = denoiser_call(denoise_fn, blocks.fixed_BxL, cfg.guidance_scale, cfg.special.mask)
  return NETWORKS[cfg.cache](call=call, predict=predict)


# ---------------------------------------------------------------------------------------------------------------------
# The rules that span components (each component's own fields are checked by its `check`).

RULES = (
    (lambda c: (c.threshold or c.confidence_stop or c.token_stop) and c.method != "confidence",
     "sampler threshold, confidence_stop and token_stop rank by confidence: use method='confidence'."),
    (lambda c: c.remasking == "low_confidence" and (c.method != "confidence" or c.threshold),
     "remasking='low_confidence' works with the confidence method's reveal schedule (method='confidence', "
     "threshold=0)."),
    (lambda c: c.remasking.startswith("remdm") and c.method != "ancestral",
     "remasking={c.remasking!r} is ReMDM's ancestral sampler: use method='ancestral'."),
)


def check(cfg):
  """Raises ConfigError for a masked-sampler config whose components or their combination are not legal."""
  if cfg.remasking not in REMASKS:
    raise ConfigError(f"sampler remasking must be one of {tuple(REMASKS)}, got {cfg.remasking!r}.")
  if cfg.cache not in NETWORKS:
    raise ConfigError(f"sampler cache must be one of {tuple(NETWORKS)}, got {cfg.cache!r}.")
  for broken, message in RULES:
    if broken(cfg):
      raise ConfigError(message.format(c=cfg))
  REVEALS.get(reveal_name(cfg), ConfidenceReveal).check(cfg)  # other families' methods: the confidence kind
  if cfg.remasking != "none":
    REMASKS[cfg.remasking].check(cfg)
  NETWORKS[cfg.cache].check(cfg)
