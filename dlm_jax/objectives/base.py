"""`Objective`: what every training objective shares, and the loop of the corruption-based ones.

An objective is a frozen dataclass whose fields are its `config.diffusion` settings (declared once, with their
defaults and comments, in its class) plus the run's context (`CONTEXT_FIELDS`: the masking schedule, the tokenizer's
special ids, the vocabulary size, self-conditioning, the script-aware corruption; a class's `run_context` adds its own,
e.g. a wing's config section). Its protocol:

    objective(denoise_fn, x0_BxL, rng, *, step=None, teacher_fn=None, with_aux=True, objective_state=None)
        -> (loss, metrics)
    objective.evaluation_nll(denoise_fn, x0_BxL, rng) -> nats per scored token
    name, process, is_autoregressive, needs_teacher, sampler, check_model(model_config), sample_length(seq_len)
    initial_state(diffusion_config), update_state(objective_state, stats)

An objective may keep a training state of its own (MaskedELBO's importance-sampled times: their proposal): the
class's `initial_state` builds it (None: stateless, every other objective), TrainState.objective_state carries it,
the loss reads it and returns its update's statistics as metrics["objective_stats"], which the train step removes,
sums over micro-batches and hands to `update_state`.

`denoise_fn(x_BxL, t_B)` is any pure function (a merged NNX model in the trainer, a lookup table in the tests)
returning a `DenoiserOutput`: its aux_losses (already weighted: EcoHybrid's slot load balancing, HRM's memory, ACT and
priority terms) are added to the loss and logged as `aux/NAME`, its aux_metrics only logged as `metric/NAME`; with
`with_aux=False` (evaluation) both are left out. `nll_per_token` stays the pure likelihood term.

Evaluation (`evaluation_nll`) scores every objective on the same targets: tokens 2..L of each window given token 1,
-log p(x_2..L | x_1) / (L - 1) nats per scored token: the AR arm's next-token NLL, a diffusion model's NELBO of the
forward process that never corrupts x_1 (docs/objectives.md says why).

Conditional training (`prompt_length` = P > 0, LLaDA's SFT): the first P tokens of a window are never corrupted nor
scored, -log p(x_{P+1..L} | x_{1..P}) <= sum_b NELBO_b / (B (L - P)); with `prompt_drop` = p each example's prompt is
masked with probability p (classifier-free guidance's condition dropout, Ho & Salimans 2022).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import forward, losses, time_sampling
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax import special_tokens

# Fields given by the run rather than by config.diffusion.
DISTILLATION_LOSSES = ("kl_bwd", "kl_fwd")  # KL(student || teacher), KL(teacher || student)


def check_distillation_fields(objective):
  """Raises ConfigError for a distillation objective's (dcd, sdtt) distill_loss, distill_teacher_steps or
  distill_round_steps out of range."""
  if objective.distill_loss not in DISTILLATION_LOSSES:
    raise ConfigError(f"diffusion.distill_loss must be one of {DISTILLATION_LOSSES}, got {objective.distill_loss!r}.")
  if objective.distill_teacher_steps < 2 or objective.distill_round_steps < 1:
    raise ConfigError(f"diffusion.distill_teacher_steps must be >= 2 and diffusion.distill_round_steps >= 1, got "
                      f"{objective.distill_teacher_steps} and {objective.distill_round_steps}.")


CONTEXT_FIELDS = ("schedule", "special", "vocab_size", "self_conditioning", "corruption", "padded", "score_all_tokens",
                  "conditioned")


@dataclasses.dataclass(frozen=True)
class Objective(abc.ABC):
  """The fields every objective has; a subclass sets `name` and `process` and implements `loss` and
  `evaluation_nll` (or the hooks of `CorruptionObjective`); the abstract methods below are that contract."""
  name: ClassVar[str] = ""
  process: ClassVar[str] = "absorbing"  # the forward process: "absorbing", "uniform", "gaussian", "autoregressive"
  is_autoregressive: ClassVar[bool] = False
  needs_teacher: ClassVar[bool] = False  # trained against a teacher's denoise function (distillation)
  outputs: ClassVar[str] = "x0"  # what the denoiser's logits are: "x0" (p_theta(x_0 | x_t)) or "score" (SEDD)
  # The sampling.SAMPLERS family that generates from a model trained so; "": the family of the run's SamplerConfig
  # (its forward process).
  sampler: ClassVar[str] = ""
  # Section fields (besides the dataclass's own) that this objective reads: see objectives.SECTION_FIELDS.
  reads: ClassVar[tuple[str, ...]] = ()
  supports_padded: ClassVar[bool] = False  # trains on data.layout="padded" windows (padding never corrupted/scored)
  supports_score_all_tokens: ClassVar[bool] = False  # its evaluation can score token 1 too (eval.score_all_tokens)
  # Trains a denoiser's calibration head (model.calibration_head; `with_calibration_loss`): the masked objectives.
  trains_calibration_head: ClassVar[bool] = False

  schedule: MaskingSchedule = MaskingSchedule("cosine")
  special: special_tokens.SpecialIds = special_tokens.DEFAULT  # the tokenizer's (`mask_id` is its mask)
  vocab_size: int = 0  # the uniform-state and SEDD objectives draw from (and score) the states of this vocabulary
  # Self-conditioning (model.self_conditioning): a first, gradient-free pass's estimate of x_0 is fed back to the
  # denoiser; in training for a random half of the examples (zeros for the others), in evaluation for all.
  self_conditioning: bool = False
  t_min: float = 1e-5  # the smallest time drawn (antithetic t in [t_min, 1])
  # > 0: the loss scores loss_chunk token rows at a time from the tied head, never holding [B, L, V] logits
  # (losses.tied_head_nll); 0: from the full logits.
  loss_chunk: int = 0
  # Conditional (SFT-style) training: the first prompt_length tokens of a window are never masked nor scored; each
  # example's prompt is masked with probability prompt_drop (classifier-free guidance's unconditional model).
  prompt_length: int = 0
  prompt_drop: float = 0.0
  # data.layout == "padded" (data/pipeline.py): one document per window, then the tokenizer's pad id; pad positions
  # are fixed (never corrupted) and never scored, and per-token figures divide by the tokens that are not padding
  # (MDLM's attention-mask-weighted loss).
  padded: bool = False
  # data.layout "chat" or "puzzle" (data/chat.py, data/puzzles.py): each window's given positions (an SFT example's
  # prompt, a puzzle's clues) carry
  # special_tokens.FIXED_FLAG; they are never corrupted nor scored, per-token figures divide by the scored tokens
  # (LLaDA's SFT: the loss over the response only). The per-example form of prompt_length.
  conditioned: bool = False
  # eval.score_all_tokens: evaluation scores every token of a window, the first with no context (MD4's and MDLM's
  # protocol: a window's NELBO over all L tokens), instead of tokens 2..L given the first (the figure the AR arm's
  # exact NLL is set beside).
  score_all_tokens: bool = False

  @property
  def mask_id(self) -> int:
    """The absorbing state: the tokenizer's mask id."""
    return self.special.mask

  def __post_init__(self):
    if self.prompt_length < 0 or not 0.0 <= self.prompt_drop < 1.0:
      raise ConfigError(f"diffusion.prompt_length must be >= 0 and diffusion.prompt_drop in [0, 1), got "
                        f"{self.prompt_length} and {self.prompt_drop}.")
    if self.prompt_drop and not self.prompt_length:
      raise ConfigError("diffusion.prompt_drop drops the prompt: set diffusion.prompt_length > 0 too.")
    if self.score_all_tokens and not self.supports_score_all_tokens:
      raise ConfigError(f"eval.score_all_tokens scores a window's first token without context; objective "
                        f"{self.name!r} scores tokens 2..L given the first (the AR arm has no distribution for token 1 "
                        "without a BOS). Set eval.score_all_tokens=False.")
    if (self.padded or self.conditioned) and not self.supports_padded:
      layout = "chat' or 'puzzle" if self.conditioned else "padded"
      raise ConfigError(f"data.layout='{layout}' trains objectives 'elbo', 'masked_mean' and 'autoregressive', not "
                        f"{self.name!r}: use another objective (or data.layout='wrapped').")

  @classmethod
  def process_of(cls, diffusion_config) -> str:
    """The forward process a run's `config.diffusion` gives this objective (the sampler's family reads it)."""
    return cls.process

  @classmethod
  def run_context(cls, config) -> dict:
    """Fields of this class that come from the run's config outside config.diffusion (none here)."""
    return {}

  @classmethod
  def check_model(cls, model_config):
    """Raises ConfigError when the denoiser of `model_config` (config.model) cannot be trained with this objective."""
    if model_config.get("causal", False) != cls.is_autoregressive:
      raise ConfigError(
          f"config.model.causal={model_config.get('causal', False)} does not fit diffusion.objective={cls.name!r}: "
          "a causal model trains with objective 'autoregressive' and a bidirectional one with a diffusion objective.")
    if model_config.get("calibration_head", False) and not cls.trains_calibration_head:
      raise ConfigError(f"config.model.calibration_head=True: diffusion.objective={cls.name!r} does not train it (the "
                        "masked objectives 'elbo' and 'masked_mean' do). Set model.calibration_head=False.")

  def sample_length(self, seq_len: int) -> int:
    """The tokens one generation fills: data.seq_len (an objective whose rows hold more than one generation says
    otherwise)."""
    return seq_len

  # -- shared pieces -------------------------------------------------------------------------------------------------
  def token_nll(self, output, targets_BxL, shift: bool = False):
    """-log p_theta(target) per position under SUBS (the mask id removed), from the logits or chunk by chunk. With
    `shift`, position i scores target i + 1 (the AR arm): [B, L - 1]."""
    if self.loss_chunk and output.hidden_BxLxD is not None:
      hidden_BxLxD = output.hidden_BxLxD[:, :-1] if shift else output.hidden_BxLxD
      targets_BxL = targets_BxL[:, 1:] if shift else targets_BxL
      return losses.tied_head_nll(hidden_BxLxD, output.head_VxD, targets_BxL, self.mask_id, self.loss_chunk)
    logits_BxLxV = losses.subs_logits(output.logits_BxLxV, self.mask_id)
    return losses.next_token_nll(logits_BxLxV, targets_BxL) if shift else losses.token_nll(logits_BxLxV, targets_BxL)

  def with_calibration_loss(self, output, x0_BxL, corrupted_BxL, scored_BxL=None):
    """`output` with the calibration head's loss (models.base.CalibrationHead) in its aux losses as "calibration":
    the mean over the corrupted (and scored) positions of the binary cross-entropy of its logit c against
    y = 1[the greedy candidate argmax_v p_theta(v | x_t) = x_0],  -y log sigmoid(c) - (1 - y) log sigmoid(-c).
    Unchanged when the denoiser has no head."""
    if getattr(output, "calibration_BxL", None) is None:  # (a denoiser's own output class may lack the field)
      return output
    where_BxL = corrupted_BxL if scored_BxL is None else corrupted_BxL & scored_BxL
    y_BxL = jax.lax.stop_gradient(losses.greedy_correct(output.logits_BxLxV, x0_BxL, self.special))
    c_BxL = output.calibration_BxL.astype(jnp.float32)
    bce_BxL = -y_BxL * jax.nn.log_sigmoid(c_BxL) - (1.0 - y_BxL) * jax.nn.log_sigmoid(-c_BxL)
    loss = jnp.sum(jnp.where(where_BxL, bce_BxL, 0.0)) / jnp.maximum(jnp.sum(where_BxL), 1)
    return output.replace(aux_losses={**output.aux_losses, "calibration": loss})

  def denoise(self, denoise_fn: Callable, xt_BxL, t_B, rng=None):
    """The denoiser's output at x_t; with self-conditioning, a second pass given the first pass's estimate of x_0
    (losses.self_condition_input): for every example when `rng` is None (evaluation), else for each example with
    probability 1/2 (training; the others get zeros, the sampler's input at its first step)."""
    if not self.self_conditioning:
      return denoise_fn(xt_BxL, t_B)
    estimate_BxLxV = losses.self_condition_input(denoise_fn(xt_BxL, t_B).logits_BxLxV, self.mask_id)
    if rng is not None:
      keep_B = jax.random.bernoulli(rng, 0.5, (xt_BxL.shape[0],))
      estimate_BxLxV = jnp.where(keep_B[:, None, None], estimate_BxLxV, 0.0)
    return denoise_fn(xt_BxL, t_B, estimate_BxLxV)

  def prompt_mask(self, shape):
    """bool [B, L]: the never-corrupted, never-scored prompt positions, or None without a prompt."""
    return jnp.broadcast_to(jnp.arange(shape[1]) < self.prompt_length, shape) if self.prompt_length else None

  def split_condition(self, x0_BxL):
    """(the window's ids, bool [B, L] of its conditioning positions or None): with `conditioned`, the positions that
    carry special_tokens.FIXED_FLAG (which is cleared)."""
    if not self.conditioned:
      return x0_BxL, None
    return special_tokens.split_fixed(x0_BxL)

  def fixed_mask(self, x0_BxL, prompt_BxL, condition_BxL=None):
    """bool [B, L] or None: the positions never corrupted nor scored: the prompt's, the conditioning positions
    (`split_condition`) and, with `padded`, the padding."""
    masks = [m for m in (prompt_BxL, condition_BxL, x0_BxL == self.special.pad if self.padded else None)
             if m is not None]
    if not masks:
      return None
    fixed_BxL = masks[0]
    for m in masks[1:]:
      fixed_BxL = fixed_BxL | m
    return fixed_BxL

  def scored_count(self, scored_BxL, default: int):
    """The per-token figures' denominator: the scored positions with `padded` or `conditioned`, else `default`
    (B (L - P) or B (L - 1): every window full)."""
    return jnp.maximum(jnp.sum(scored_BxL), 1) if self.padded or self.conditioned else default

  # -- the protocol ----------------------------------------------------------------------------------------------------
  @classmethod
  def initial_state(cls, diffusion_config):
    """The objective's own training state at step 0 (module docstring), a pytree of arrays; None: stateless."""
    return None

  def update_state(self, objective_state, stats):
    """The state after one update whose losses gave `stats` (metrics["objective_stats"], summed over micro-batches)."""
    return objective_state

  def variant_at(self, step: int) -> "Objective | None":
    """The objective that makes update `step` (counted from 0) when it is not this one; None (here) when it is. An
    objective whose training batch changes its layout during a run (CorruptionObjective.masks_per_sequence_steps)
    returns that update's variant; the trainer jits one step per distinct variant (objectives are frozen dataclasses:
    equal variants share it), so a class should have few. None rather than `self` keeps a wrapper that forwards
    attributes to an objective (a test's NaN injector) in charge of the updates it does not change. The NELBO
    evaluation uses the configured objective (a variant's evaluation_nll is the same); the logged estimator noise
    (eval/loss_estimator_std) is that of the last update's variant."""
    return None

  @abc.abstractmethod
  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    """(loss, the denoiser's output, metrics) of one batch, before the auxiliary losses. `objective_state`: the
    class's training state (`initial_state`), None for a stateless objective (or, for a stateful one, its step-0
    state)."""

  @abc.abstractmethod
  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """Nats per scored token of -log p(x_2..L | x_1) (module docstring); no auxiliary losses."""

  def __call__(self, denoise_fn: Callable, x0_BxL, rng, with_aux: bool = True, step=None, teacher_fn=None,
               objective_state=None):
    """(loss, metrics): `loss` plus the denoiser's auxiliary losses (`with_aux`). `step` (the update count) drives
    Duo's curriculum and the distillation rounds; `teacher_fn` is the distillation teacher's denoise function;
    `objective_state` the objective's own state (`initial_state`)."""
    # (passed only when there is one: a stateless objective's `loss` written before the field may not take it)
    stateful = {} if objective_state is None else {"objective_state": objective_state}
    loss, output, metrics = self.loss(denoise_fn, x0_BxL, rng, step=step, teacher_fn=teacher_fn, **stateful)
    if with_aux:
      for name, value in output.aux_losses.items():
        metrics[f"aux/{name}"] = value
        loss = loss + value
      metrics.update({f"metric/{name}": value for name, value in output.aux_metrics.items()})
    metrics["loss"] = loss
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class CorruptionObjective(Objective):
  """An objective that corrupts x_0 at a random time and scores the denoiser's output: the masked and uniform-state
  NELBOs, masked-mean and SEDD. Subclasses give `training_inputs`, `corrupt`, `sequence_nelbo` (and may override
  `sample_times` and `batch_loss`)."""
  supports_score_all_tokens: ClassVar[bool] = True
  # k > 1: the training loss draws k (time, corruption) pairs per sequence, the batch's B sequences repeated k times
  # (k B rows, stratified times over all of them) and the loss their mean: the same unbiased per-token NELBO with
  # about 1/k of the Monte Carlo variance of the times and masks, at k times the compute per update (issue #31).
  # Evaluation is unchanged (one draw per window and time sample).
  masks_per_sequence: int = 1
  # N > 0: the k draws for the first N updates only, one draw per sequence after them (0: every update). Measured on
  # issue #31's nanoGPT recipe, the extra draws pay most early, while the learning rate is high (the gradient's noise
  # then sets how far each update strays; the cosine decay damps it later): at 1,500 updates after 500 AR updates, two
  # draws for the first 900 gave 2.106 / 2.109 nats/char (two seeds), for the last 900 2.132, three for the first 450
  # 2.121 (one draw throughout 2.166 / 2.163, two 2.083).
  masks_per_sequence_steps: int = 0

  def __post_init__(self):
    super().__post_init__()
    if self.masks_per_sequence < 1:
      raise ConfigError(f"diffusion.masks_per_sequence must be >= 1, got {self.masks_per_sequence}.")
    if self.masks_per_sequence_steps < 0 or (self.masks_per_sequence_steps and self.masks_per_sequence == 1):
      raise ConfigError(f"diffusion.masks_per_sequence_steps={self.masks_per_sequence_steps} limits the extra draws "
                        "of diffusion.masks_per_sequence >= 2 to the first N updates: use N >= 0 with "
                        f"masks_per_sequence >= 2 (got {self.masks_per_sequence}), or 0.")
    if self.masks_per_sequence > 1 and self.needs_teacher:
      raise ConfigError(f"diffusion.masks_per_sequence={self.masks_per_sequence}: the distillation objective "
                        f"{self.name!r} draws its own corruption per sequence; use 1.")

  def variant_at(self, step: int) -> "Objective | None":
    """From update `masks_per_sequence_steps` on, `one_draw_per_sequence()`; None before it."""
    if self.masks_per_sequence_steps and step >= self.masks_per_sequence_steps:
      return self.one_draw_per_sequence()
    return None

  def one_draw_per_sequence(self) -> "CorruptionObjective":
    """This objective with one (time, corruption) draw per sequence (a subclass resets what needs two draws)."""
    return dataclasses.replace(self, masks_per_sequence=1, masks_per_sequence_steps=0)

  def sample_times(self, rng, batch_size: int):
    """The training times: `times_from_uniform` of antithetic u (forward.antithetic_times)."""
    return self.times_from_uniform(forward.antithetic_times(rng, batch_size, self.t_min))

  def times_from_uniform(self, u_B):
    """The training time of each uniform draw u in [0, 1): t = max(u, t_min) here (a subclass may warp or clip it)."""
    return jnp.maximum(u_B, self.t_min)

  def training_times(self, rng, batch_size: int, objective_state):
    """(t_B, importance): `sample_times` and None here; with importance-sampled times (MaskedELBO) the times drawn
    from the learned proposal and (density ratio r_B, bin_B, the number of bins) (diffusion/time_sampling.py)."""
    return self.sample_times(rng, batch_size), None

  @abc.abstractmethod
  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    """(x_t, corrupted) with hard tokens, token by token (the process every evaluation scores); fixed positions
    untouched."""

  def training_inputs(self, rng, x0_BxL, t_B, prompt_BxL, step):
    """(x_t, the denoiser's input, corrupted_BxL, weight_BxL or None) of a training batch: `corrupt` by default."""
    xt_BxL, corrupted_BxL = self.corrupt(rng, x0_BxL, t_B, prompt_BxL)
    return xt_BxL, xt_BxL, corrupted_BxL, None

  @abc.abstractmethod
  def sequence_nelbo(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL=None, weight_BxL=None):
    """Each sequence's one-sample NELBO in nats."""

  def corruption_metrics(self, x0_BxL, xt_BxL, corrupted_BxL):
    """Positions whose token differs from x_0 (a uniform redraw may give x_0 back)."""
    return {"corrupted_fraction": jnp.mean((xt_BxL != x0_BxL).astype(jnp.float32))}

  def batch_loss(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics, ratio_B=None):
    """The scalar loss: sum_b NELBO_b / (B (L - P)), an unbiased per-token NELBO, logged as nll_per_token. With
    importance-sampled times each NELBO_b is weighted by its density ratio r_b, and metrics["sequence_loss"] holds
    the unweighted NELBO_b / (L - P) (the proposal's statistics)."""
    batch_size, seq_len = x0_BxL.shape
    nelbo_B = self.sequence_nelbo(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL)
    if ratio_B is not None:
      metrics["sequence_loss"] = jax.lax.stop_gradient(nelbo_B) / (seq_len - self.prompt_length)
      nelbo_B = nelbo_B * ratio_B
    loss = jnp.sum(nelbo_B) / self.scored_count(scored_BxL, batch_size * (seq_len - self.prompt_length))
    metrics["nll_per_token"] = loss  # the NELBO bound on -log p per token
    return loss

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    if self.masks_per_sequence > 1:
      x0_BxL = jnp.tile(x0_BxL, (self.masks_per_sequence, 1))
    batch_size = x0_BxL.shape[0]
    x0_BxL, condition_BxL = self.split_condition(x0_BxL)
    t_rng, mask_rng = jax.random.split(rng)
    t_B, importance = self.training_times(t_rng, batch_size, objective_state)
    prompt_BxL = self.prompt_mask(x0_BxL.shape)
    fixed_BxL = self.fixed_mask(x0_BxL, prompt_BxL, condition_BxL)
    scored_BxL = None if fixed_BxL is None else ~fixed_BxL
    xt_BxL, input_BxL, corrupted_BxL, weight_BxL = self.training_inputs(mask_rng, x0_BxL, t_B, fixed_BxL, step)
    if self.prompt_drop:
      drop_B = jax.random.bernoulli(jax.random.fold_in(rng, 2), self.prompt_drop, (batch_size,))
      input_BxL = jnp.where(prompt_BxL & drop_B[:, None], self.mask_id, xt_BxL)  # masked input, still not scored
    output = self.denoise(denoise_fn, input_BxL, t_B, jax.random.fold_in(rng, 1))
    metrics = self.corruption_metrics(x0_BxL, xt_BxL, corrupted_BxL)
    if importance is None:
      loss = self.batch_loss(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics)
    else:
      ratio_B, bin_B, num_bins = importance
      loss = self.batch_loss(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics, ratio_B)
      metrics["objective_stats"] = time_sampling.batch_statistics(bin_B, metrics.pop("sequence_loss"), num_bins)
      metrics["importance_ratio_max"] = jnp.max(ratio_B)
    if self.trains_calibration_head:
      output = self.with_calibration_loss(output, x0_BxL, corrupted_BxL, scored_BxL)
    return loss, output, metrics

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """A one-sample NELBO per scored token (hard tokens, token by token, whatever the training curriculum): of tokens
    2..L with x_1 never corrupted, or of all L with `score_all_tokens`; with `padded`, the padding never corrupted nor
    counted."""
    batch_size, seq_len = x0_BxL.shape
    x0_BxL, condition_BxL = self.split_condition(x0_BxL)
    first_BxL = jnp.zeros(x0_BxL.shape, bool)
    if not self.score_all_tokens:
      first_BxL = first_BxL.at[:, 0].set(True)
    first_BxL = self.fixed_mask(x0_BxL, first_BxL, condition_BxL)
    t_rng, mask_rng = jax.random.split(rng)
    t_B = forward.antithetic_times(t_rng, batch_size, self.t_min)
    xt_BxL, corrupted_BxL = self.corrupt(mask_rng, x0_BxL, t_B, first_BxL)
    output = self.denoise(denoise_fn, xt_BxL, t_B)
    nelbo_B = self.sequence_nelbo(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, ~first_BxL)
    return jnp.sum(nelbo_B) / self.scored_count(~first_BxL, batch_size * (seq_len - 1 + self.score_all_tokens))
