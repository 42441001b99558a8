"""The absorbing-state (masked) objectives: MD4/MDLM's continuous-time NELBO and the masked-mean cross-entropy."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import corruption as corruption_lib
from dlm_jax.diffusion import forward, losses, time_sampling
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.base import CorruptionObjective, check_distillation_fields


@dataclasses.dataclass(frozen=True)
class MaskedELBO(CorruptionObjective):
  """The continuous-time NELBO of masked diffusion with antithetic t (MD4, Shi et al. 2024; MDLM, Sahoo et al. 2024):
      NELBO = E_t [ alpha'(t) / (1 - alpha(t)) sum_{i masked} log p_theta(x_0^i | x_t) ],
  one sample per sequence, loss = sum_b NELBO_b / (B L): an unbiased per-token NELBO.

  Script-aware corruption (`diffusion.corruption` = "script_aware" or "span"; diffusion/corruption.py): training masks
  whole grapheme clusters or words, each on its script's schedule, and weights each token by its unit's w_u(t). That
  is a bound given the segmentation, not on -log p(x_0), so `evaluation_nll` always masks token by token."""
  name: ClassVar[str] = "elbo"
  reads: ClassVar[tuple[str, ...]] = ("corruption", "script_rates", "unit_fraction")
  supports_padded: ClassVar[bool] = True
  trains_calibration_head: ClassVar[bool] = True
  corruption: corruption_lib.ScriptAwareCorruption | None = None  # None: token by token
  # Training emphasis over the masking levels: training draws t = 1 - (1 - u)^k (u the antithetic times) and keeps the
  # ELBO's integrand l(t), so its loss is the weighted ELBO  int_0^1 p_k(t) l(t) dt,  p_k(t) = (1 - t)^(1/k - 1) / k.
  # k = 1 is the ELBO; k > 1 weights the heavily masked levels more (p_2(0.9) / p_2(0.1) = 3; issue #29: the levels
  # at which a greedy Sudoku solve goes wrong). Evaluation scores the ELBO itself, whatever k; the logged training
  # nll_per_token is then the weighted loss, not the bound.
  time_exponent: float = 1.0
  # How the masks_per_sequence = 2 draws of a sequence relate (issue #31): "independent", or "complementary"
  # (DiffuCoder's coupled sampling, Gong et al. 2025): the second draw masks exactly the tokens the first keeps, so
  # every token of the sequence is scored once per pair. `complementary_pair` gives the second draw's time and weight.
  mask_coupling: str = "independent"
  # BD3-LM's clipped noise schedule (Arriola et al. 2025): training draws t ~ U[time_low, time_high] (antithetic) and
  # keeps the ELBO's integrand, a loss over the middle masking levels only, whose estimator varies less than the
  # ELBO's (the levels near t = 0, where w(t) = 1/t is large and few tokens are masked, are the noisiest). Not a bound
  # unless the window is [0, 1]; evaluation scores the ELBO whatever the window. (masked_mean and sdtt draw their own
  # times: the window does not apply to them.)
  time_low: float = 0.0
  time_high: float = 1.0
  # A block-size curriculum (issue #31; LLaDA 2.0's warm-up from block diffusion towards the full sequence, the
  # block-wise NELBO of BD3-LM, Arriola et al. 2025): for the first block_curriculum_steps updates each sequence is cut
  # into blocks of S tokens, S growing by doublings from block_curriculum_start to L over those updates
  # (`curriculum_block_size`); one block b per sequence is drawn uniformly, the tokens before it stay clean, its
  # tokens are masked at rate 1 - alpha(t), every token after it is masked (a masked suffix is what semi-autoregressive
  # block decoding shows the denoiser; BD3-LM drops the suffix with an attention mask instead), and the block's
  # masked tokens are scored with weight n_blocks w(t): an unbiased estimate of sum_b NELBO(x_b | x_<b), the bound of
  # the block-autoregressive model. S = 1 is next-token prediction given a clean prefix (with model.shift_logits,
  # exactly what a causal run's states were trained for); S = L is the ELBO above. 0: off.
  block_curriculum_steps: int = 0
  block_curriculum_start: int = 1
  # Importance-sampled times (issue #31; diffusion/time_sampling.py): "uniform" draws the uniform variable u of the
  # times above antithetically; "importance" draws it from a proposal learned online, piecewise constant on
  # importance_bins equal bins of u, q_k proportional to the standard deviation of the per-token loss of the
  # sequences drawn in bin k (from exponential moving averages of l and l^2, decay importance_decay per update of the
  # bin; Neyman's allocation for stratified times), mixed with importance_floor of the uniform (the density ratio
  # stays <= 1 / floor), uniform until each bin has importance_warmup losses; each sequence's NELBO is weighted by
  # the density ratio 1 / (K q_k), so the loss keeps its expectation (the window's or time_exponent's loss, whatever
  # they are) with less Monte Carlo variance (on nanoGPT's CPU recipe it did not help: BENCHMARKS.md). The
  # proposal is part of the train state (TrainState.objective_state) and of its checkpoints.
  time_sampling: str = "uniform"
  importance_bins: int = 16
  importance_decay: float = 0.99
  importance_floor: float = 0.1
  importance_warmup: int = 10

  MASK_COUPLINGS: ClassVar[tuple[str, ...]] = ("independent", "complementary")
  TIME_SAMPLINGS: ClassVar[tuple[str, ...]] = ("uniform", "importance")

  def __post_init__(self):
    super().__post_init__()
    if not self.time_exponent > 0:
      raise ConfigError(f"diffusion.time_exponent must be > 0 (1 = the ELBO), got {self.time_exponent}.")
    if not 0.0 <= self.time_low < self.time_high <= 1.0:
      raise ConfigError(f"diffusion.time_low and time_high must satisfy 0 <= low < high <= 1, got {self.time_low} and "
                        f"{self.time_high}.")
    if (self.time_low, self.time_high) != (0.0, 1.0) and (self.time_exponent != 1.0 or self.coupled):
      raise ConfigError("diffusion.time_low/time_high clip the training times; use them without time_exponent and "
                        "mask_coupling='complementary' (or reset them: --config.diffusion.time_low=0 "
                        "--config.diffusion.time_high=1).")
    if self.block_curriculum_steps < 0 or self.block_curriculum_start < 1:
      raise ConfigError(f"diffusion.block_curriculum_steps must be >= 0 and block_curriculum_start >= 1, got "
                        f"{self.block_curriculum_steps} and {self.block_curriculum_start}.")
    if self.block_curriculum_steps and (self.coupled or self.corruption is not None or self.name != "elbo"):
      raise ConfigError("diffusion.block_curriculum_steps draws its own blocks: use it with objective 'elbo', "
                        "token-by-token corruption and mask_coupling='independent'.")
    if self.time_sampling not in self.TIME_SAMPLINGS:
      raise ConfigError(f"diffusion.time_sampling must be one of {self.TIME_SAMPLINGS}, got {self.time_sampling!r}.")
    if self.importance and (self.name != "elbo" or self.coupled):
      raise ConfigError(f"diffusion.time_sampling='importance' weights the ELBO's uniform times: use it with objective "
                        f"'elbo' and mask_coupling='independent' (got objective {self.name!r}, mask_coupling "
                        f"{self.mask_coupling!r}), or set diffusion.time_sampling='uniform'.")
    if self.importance and not (self.importance_bins >= 2 and 0.0 < self.importance_floor <= 1.0
                                and 0.0 <= self.importance_decay < 1.0 and self.importance_warmup >= 0):
      raise ConfigError(f"diffusion.time_sampling='importance' needs importance_bins >= 2, 0 < importance_floor <= 1, "
                        f"0 <= importance_decay < 1 and importance_warmup >= 0; got {self.importance_bins}, "
                        f"{self.importance_floor}, {self.importance_decay} and {self.importance_warmup}.")
    if self.mask_coupling not in self.MASK_COUPLINGS:
      raise ConfigError(f"diffusion.mask_coupling must be one of {self.MASK_COUPLINGS}, got {self.mask_coupling!r}.")
    if self.mask_coupling == "complementary" and (self.masks_per_sequence != 2 or self.corruption is not None
                                                  or self.time_exponent != 1.0 or self.name != "elbo"):
      raise ConfigError("diffusion.mask_coupling='complementary' pairs two draws of each sequence: it needs "
                        "diffusion.masks_per_sequence=2, token-by-token corruption (diffusion.corruption='uniform'), "
                        f"diffusion.time_exponent=1 and objective 'elbo'; got masks_per_sequence="
                        f"{self.masks_per_sequence}, corruption {self.corruption}, time_exponent {self.time_exponent}, "
                        f"objective {self.name!r}.")

  @property
  def coupled(self) -> bool:
    return self.mask_coupling == "complementary"

  def one_draw_per_sequence(self) -> "MaskedELBO":
    """One draw per sequence, so no complementary pairs either."""
    return dataclasses.replace(self, masks_per_sequence=1, masks_per_sequence_steps=0, mask_coupling="independent")

  @property
  def importance(self) -> bool:
    return self.time_sampling == "importance"

  @classmethod
  def initial_state(cls, diffusion_config):
    """The importance proposal's state (time_sampling.initial_state) with time_sampling "importance", else None."""
    if diffusion_config.get("time_sampling", "uniform") != "importance":
      return None
    return time_sampling.initial_state(int(diffusion_config.get("importance_bins", cls.importance_bins)))

  def update_state(self, objective_state, stats):
    if not self.importance or objective_state is None:
      return objective_state
    return time_sampling.update(objective_state, stats, self.importance_decay)

  def training_times(self, rng, batch_size: int, objective_state):
    """Importance-sampled times (the fields' comment) from `objective_state`'s proposal (None: the step-0 state, a
    uniform proposal), or the plain antithetic times."""
    if not self.importance:
      return super().training_times(rng, batch_size, objective_state)
    state = time_sampling.initial_state(self.importance_bins) if objective_state is None else objective_state
    q_K = time_sampling.proposal(state, self.importance_floor, self.importance_warmup)
    u_B, ratio_B, bin_B = time_sampling.sample(rng, batch_size, q_K)
    return self.times_from_uniform(u_B), (ratio_B, bin_B, self.importance_bins)

  def complementary_pair(self, t_B):
    """(t'_B, c_B): the time at which the complement of a mask drawn at t is a draw of the forward process,
    m(t') = 1 - m(t) (m = 1 - alpha, the mask rate; `MaskingSchedule.time_of_mask_rate`), and the weight that keeps the
    pair's estimator unbiased, c(t) = -alpha'(t) / alpha(t).

    Why c and not w(t'): in mask-rate coordinates the NELBO is int_0^1 H(m) / m dm, H(m) = E[sum_masked -log p] under
    masks of rate m. The first draw, t ~ U, estimates it with w(t) = m'(t) / m(t). The complement has rate
    mu = 1 - m(t); substituting mu gives int_0^1 H(mu) / mu dmu = int_0^1 H(1 - m(t)) m'(t) / (1 - m(t)) dt, so its
    weight is m'(t) / (1 - m(t)) = -alpha'(t) / alpha(t). For the linear and log-linear schedules t' = 1 - t and
    c(t) = w(t'); for the others t' is not uniform and only c is right. Each draw is unbiased alone; the pair's mean
    is. (t is kept in [t_min, 1 - t_min], where c is finite: the dropped mass is O(t_min) nats per token.)"""
    schedule = self.schedule
    return schedule.time_of_mask_rate(1.0 - schedule.mask_rate(t_B)), -schedule.dalpha(t_B) / schedule.alpha(t_B)

  def sample_times(self, rng, batch_size: int):
    """Antithetic t ~ U[t_min, 1), warped to 1 - (1 - t)^time_exponent (the class's training emphasis) or mapped
    into [time_low, time_high] (BD3-LM's clipped window: `times_from_uniform`); coupled:
    the first half's antithetic times (in [t_min, 1 - t_min]), then their complements' t' (`complementary_pair`)."""
    if self.coupled:
      t_H = jnp.minimum(super().sample_times(rng, batch_size // 2), 1.0 - self.t_min)
      return jnp.concatenate([t_H, jnp.maximum(self.complementary_pair(t_H)[0], self.t_min)])
    return super().sample_times(rng, batch_size)

  def times_from_uniform(self, u_B):
    """u in [0, 1) -> t: into [time_low, time_high] (the window), or warped to 1 - (1 - u)^time_exponent; at least
    t_min."""
    u_B = jnp.maximum(u_B, self.t_min)
    if (self.time_low, self.time_high) != (0.0, 1.0):
      return jnp.maximum(self.time_low + (self.time_high - self.time_low) * u_B, self.t_min)
    return u_B if self.time_exponent == 1.0 else 1.0 - (1.0 - u_B) ** self.time_exponent

  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    return forward.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=fixed_BxL)

  def curriculum_block_size(self, step, length: int):
    """The block size S at training step `step` (an int or a traced scalar; None: the curriculum is over):
    block_curriculum_start 2^floor(log2(L / start) step / N), at most L, and L from step N = block_curriculum_steps
    on."""
    if not self.block_curriculum_steps or step is None:
      return jnp.asarray(length, jnp.int32)
    start = min(self.block_curriculum_start, length)
    doublings = jnp.floor(jnp.log2(length / start) * jnp.asarray(step, jnp.float32) / self.block_curriculum_steps)
    size = jnp.minimum(start * jnp.exp2(doublings), length).astype(jnp.int32)
    return jnp.where(jnp.asarray(step) >= self.block_curriculum_steps, length, size)

  def block_inputs(self, rng, x0_BxL, t_B, fixed_BxL, step):
    """The curriculum's training batch (the field's comment): (x_t, the denoiser's input, the scored block's masked
    tokens, per-token weights n_blocks w(t))."""
    batch, length = x0_BxL.shape
    size = self.curriculum_block_size(step, length)
    num_blocks = (length + size - 1) // size
    block_rng, mask_rng = jax.random.split(rng)
    block_B = jax.random.randint(block_rng, (batch,), 0, num_blocks)
    block_of_BxL = (jnp.arange(length, dtype=jnp.int32) // size)[None]
    free_BxL = jnp.ones(x0_BxL.shape, bool) if fixed_BxL is None else ~fixed_BxL
    scored_BxL = self.corrupt(mask_rng, x0_BxL, t_B, ~((block_of_BxL == block_B[:, None]) & free_BxL))[1]
    masked_BxL = scored_BxL | ((block_of_BxL > block_B[:, None]) & free_BxL)
    xt_BxL = jnp.where(masked_BxL, jnp.asarray(self.mask_id, x0_BxL.dtype), x0_BxL)
    weight_B = self.schedule.weight(t_B) * num_blocks.astype(jnp.float32)
    return xt_BxL, xt_BxL, scored_BxL, jnp.broadcast_to(weight_B[:, None], x0_BxL.shape)

  def training_inputs(self, rng, x0_BxL, t_B, prompt_BxL, step):
    if self.coupled:
      return self.complementary_inputs(rng, x0_BxL, t_B, prompt_BxL)
    if self.block_curriculum_steps and step is not None:
      return self.block_inputs(rng, x0_BxL, t_B, prompt_BxL, step)
    if self.corruption is None:
      return super().training_inputs(rng, x0_BxL, t_B, prompt_BxL, step)
    xt_BxL, corrupted_BxL, weight_BxL = self.corruption.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id,
                                                                prompt_BxL)
    return xt_BxL, xt_BxL, corrupted_BxL, weight_BxL

  def complementary_inputs(self, rng, x0_BxL, t_B, fixed_BxL):
    """The coupled batch (rows 0..H-1 and H..2H-1 the same sequences, `sample_times`' t and t'): the first half
    masked at t, the second half masked exactly where the first is not (fixed positions in neither), with per-token
    weights w(t) and c(t) (`complementary_pair`)."""
    half = x0_BxL.shape[0] // 2
    fixed_BxL = jnp.zeros(x0_BxL.shape, bool) if fixed_BxL is None else fixed_BxL
    first_HxL = forward.corrupt(rng, x0_BxL[:half], t_B[:half], self.schedule, self.mask_id, fixed_BxL[:half])[1]
    masked_BxL = jnp.concatenate([first_HxL, ~first_HxL & ~fixed_BxL[half:]])
    weight_B = jnp.concatenate([self.schedule.weight(t_B[:half]), self.complementary_pair(t_B[:half])[1]])
    xt_BxL = jnp.where(masked_BxL, jnp.asarray(self.mask_id, x0_BxL.dtype), x0_BxL)
    return xt_BxL, xt_BxL, masked_BxL, jnp.broadcast_to(weight_B[:, None], x0_BxL.shape)

  def corruption_metrics(self, x0_BxL, xt_BxL, corrupted_BxL):
    return {"masked_fraction": jnp.mean(corrupted_BxL.astype(jnp.float32))}

  def sequence_nelbo(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL=None, weight_BxL=None):
    """`weight_BxL` replaces w(t) by each token's unit weight (script-aware corruption)."""
    return losses.nelbo_per_sequence(self.token_nll(output, x0_BxL), corrupted_BxL, t_B, self.schedule, weight_BxL)


@dataclasses.dataclass(frozen=True)
class MaskedMean(MaskedELBO):
  """The mean cross-entropy of the masked positions at a discrete timestep t ~ Uniform{1..T}/T, mask rate
  1 - alpha(t); loss = mean over sequences of the masked-mean CE (the pre-MDLM recipe). Not a bound: its evaluation is
  the masked NELBO."""
  name: ClassVar[str] = "masked_mean"
  num_timesteps: int = 32  # T, the discrete timesteps

  def __post_init__(self):
    super().__post_init__()
    if self.time_exponent != 1.0:
      raise ConfigError("diffusion.time_exponent warps the ELBO's continuous times; objective 'masked_mean' draws "
                        "discrete timesteps. Set diffusion.time_exponent=1.0 or objective 'elbo'.")

  def sample_times(self, rng, batch_size: int):
    k_B = jax.random.randint(rng, (batch_size,), 1, self.num_timesteps + 1)
    return k_B.astype(jnp.float32) / self.num_timesteps

  def batch_loss(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics, ratio_B=None):
    return jnp.mean(losses.masked_mean_per_sequence(self.token_nll(output, x0_BxL), corrupted_BxL))


@dataclasses.dataclass(frozen=True)
class SelfDistillationThroughTime(MaskedELBO):
  """SDTT, self-distillation through time (Deschenaux & Gulcehre 2024, "Beyond Autoregression: Fast LLMs via
  Self-Distillation Through Time"), for a masked-diffusion teacher ("elbo" run, any denoiser; `python -m
  launch.distill`): the student learns to do in one reverse step what the teacher does in two.

  At round n = step // distill_round_steps the student's step is dt = 2^(n+1) / T (capped at 1). From x_t (the
  forward process at t ~ U[dt, 1], antithetic), the teacher takes two ancestral steps of dt / 2,

      p_1 = p_teacher(. | x_t, t);  each masked position revealed with probability
            (alpha(t - dt/2) - alpha(t)) / (1 - alpha(t)) by a draw from p_1, giving x_m;
      p_2 = p_teacher(. | x_m, t - dt/2),

  and the target of every position masked in x_t is the teacher distribution that revealed it (p_1 for the positions
  revealed at the first step, p_2 for all others: revealed at the second step, or still masked). The student at
  (x_t, t) is trained on
      KL(target || p_student)   ("kl_fwd", SDTT's choice)   or   KL(p_student || target)   ("kl_bwd"),
  summed over the masked positions and averaged per scored token; the mask id is removed from every distribution
  (SUBS). The train step sets the teacher to the student at the start of each round, so after n rounds one student
  step covers 2^(n+1) of the original T teacher steps. Evaluated with the masked NELBO (it is a masked x_0 model)."""
  name: ClassVar[str] = "sdtt"
  needs_teacher: ClassVar[bool] = True
  trains_calibration_head: ClassVar[bool] = False
  distill_teacher_steps: int = 64  # T, the teacher's step count (round n: one student step covers 2^(n+1) / T)
  distill_round_steps: int = 100  # updates per round (the teacher is refreshed from the student)
  distill_loss: str = "kl_bwd"  # "kl_fwd" KL(target || student) (SDTT's) or "kl_bwd" KL(student || target)

  def __post_init__(self):
    super().__post_init__()
    check_distillation_fields(self)
    if self.corruption is not None or self.time_exponent != 1.0:
      raise ConfigError("diffusion.objective='sdtt' distills token-by-token masking at uniform times; set "
                        "diffusion.corruption='uniform' and diffusion.time_exponent=1.0.")

  def distillation_gap(self, step):
    """The student's step dt = 2^(n+1) / T at round n = step // distill_round_steps, at most 1."""
    rounds = jnp.asarray(step, jnp.int32) // self.distill_round_steps
    return jnp.minimum(2.0 ** (rounds + 1).astype(jnp.float32) / self.distill_teacher_steps, 1.0)

  def teacher_targets(self, teacher_fn: Callable, xt_BxL, masked_BxL, t_B, dt_B, rng):
    """log target [B, L, V] (class docstring: the teacher's two steps of dt / 2 from x_t) and the first step's
    reveals [B, L]."""
    mid_B = jnp.maximum(t_B - dt_B / 2.0, 0.0)
    log_p1_BxLxV = jax.nn.log_softmax(losses.subs_logits(teacher_fn(xt_BxL, t_B).logits_BxLxV, self.mask_id), -1)
    alpha_t_B, alpha_m_B = self.schedule.alpha(t_B), self.schedule.alpha(mid_B)
    reveal_prob_B = (alpha_m_B - alpha_t_B) / jnp.maximum(1.0 - alpha_t_B, 1e-6)
    reveal_rng, draw_rng = jax.random.split(rng)
    revealed_BxL = masked_BxL & (jax.random.uniform(reveal_rng, xt_BxL.shape) < reveal_prob_B[:, None])
    drawn_BxL = jax.random.categorical(draw_rng, log_p1_BxLxV, axis=-1).astype(xt_BxL.dtype)
    xm_BxL = jnp.where(revealed_BxL, drawn_BxL, xt_BxL)
    log_p2_BxLxV = jax.nn.log_softmax(losses.subs_logits(teacher_fn(xm_BxL, mid_B).logits_BxLxV, self.mask_id), -1)
    return jax.lax.stop_gradient(jnp.where(revealed_BxL[..., None], log_p1_BxLxV, log_p2_BxLxV)), revealed_BxL

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    if teacher_fn is None or step is None:
      raise ValueError("diffusion.objective='sdtt' trains a student against a teacher: run it through "
                       "python -m launch.distill, which passes the teacher and the step.")
    batch_size = x0_BxL.shape[0]
    x0_BxL, condition_BxL = self.split_condition(x0_BxL)
    fixed_BxL = self.fixed_mask(x0_BxL, self.prompt_mask(x0_BxL.shape), condition_BxL)
    t_rng, mask_rng, teacher_rng = jax.random.split(rng, 3)
    dt = self.distillation_gap(step)
    t_B = dt + (1.0 - dt) * forward.antithetic_times(t_rng, batch_size, 0.0)
    t_B = jnp.maximum(t_B, self.t_min)
    xt_BxL, masked_BxL = self.corrupt(mask_rng, x0_BxL, t_B, fixed_BxL)
    target_BxLxV, revealed_BxL = self.teacher_targets(teacher_fn, xt_BxL, masked_BxL, t_B,
                                                      jnp.full((batch_size,), dt), teacher_rng)
    output = denoise_fn(xt_BxL, t_B)
    student_BxLxV = jax.nn.log_softmax(losses.subs_logits(output.logits_BxLxV, self.mask_id), -1)
    first, second = (target_BxLxV, student_BxLxV) if self.distill_loss == "kl_fwd" else (student_BxLxV, target_BxLxV)
    kl_BxL = jnp.sum(jnp.exp(first) * (first - second), axis=-1)  # (the removed mask id: exp(NEG_INF) = 0)
    kl_BxL = jnp.where(masked_BxL, kl_BxL, 0.0)
    scored_BxL = None if fixed_BxL is None else ~fixed_BxL
    loss = jnp.sum(kl_BxL) / self.scored_count(scored_BxL, batch_size * (x0_BxL.shape[1] - self.prompt_length))
    return loss, output, {"distill_kl": loss, "distill_dt": dt,
                          "distill_first_step_reveals": jnp.sum(revealed_BxL) / jnp.maximum(jnp.sum(masked_BxL), 1)}
