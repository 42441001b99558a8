"""Uniform-state diffusion (UDLM/Duo; diffusion/uniform.py): its NELBO, Duo's soft-token curriculum and Duo's discrete
consistency distillation."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import duality, forward, uniform
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.base import CorruptionObjective, check_distillation_fields

DUO_LOSSES = ("nelbo", "symmetric_kl")


class StateObjective:
  """What the objectives over the vocabulary's data states share (uniform-state and SEDD): the states, and the rule
  that the HRM denoiser (whose priority and memory losses are defined on masked positions) is not theirs."""

  @classmethod
  def check_model(cls, model_config):
    super().check_model(model_config)
    if model_config.name == "hrm":
      raise ConfigError(f"diffusion.objective={cls.name!r} with model hrm: the HRM denoiser's strategic unmasking and "
                        "memory losses are defined on masked positions. Use 'elbo' or 'masked_mean', or another model.")

  @property
  def states_V(self):
    """The process's states (diffusion/uniform.states) of this objective's vocabulary."""
    if not self.vocab_size:
      raise ValueError(f"diffusion.objective={self.name!r} needs the vocabulary size: build it with "
                       "objectives.from_config(config, vocab_size).")
    return uniform.states(self.vocab_size, self.special)


@dataclasses.dataclass(frozen=True)
class UniformELBO(StateObjective, CorruptionObjective):
  """The continuous-time NELBO of the process that replaces tokens by uniform draws over the K data states
  (Schiff et al. 2025, UDLM; Sahoo et al. 2025, Duo), antithetic t, the denoiser predicting x_0; an unbiased
  per-token NELBO. No mask id exists in this process, so there is no prompt dropping."""
  name: ClassVar[str] = "uniform"
  process: ClassVar[str] = "uniform"
  # x_0 -> reverse ratios: Duo's plug-in "mean" or the exact mixture "posterior" (tight at the optimum, but its loss has
  # a far larger variance: BENCHMARKS.md, "Beyond masking")
  parameterization: str = "mean"

  def __post_init__(self):
    super().__post_init__()
    if self.parameterization not in uniform.PARAMETERIZATIONS:
      raise ConfigError(f"diffusion.parameterization must be one of {uniform.PARAMETERIZATIONS}, got "
                        f"{self.parameterization!r}.")
    check_full_logits(self)
    if self.prompt_drop:
      raise ConfigError("diffusion.prompt_drop masks the prompt, which a uniform-state process has no mask for; "
                        "set it to 0 with this objective.")

  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    return uniform.corrupt(rng, x0_BxL, self.schedule.alpha(t_B), self.states_V, fixed_BxL)

  def sequence_nelbo(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL=None, weight_BxL=None):
    return uniform.nelbo_per_sequence(output.logits_BxLxV, x0_BxL, xt_BxL, t_B, self.schedule, self.states_V,
                                      self.parameterization, scored_BxL)

  def gaussian_corrupt(self, rng, x0_BxL, alpha_B, fixed_BxL, eps_BxLxV=None):
    """Duo's corruption through the Gaussian latent: (z_BxL = argmax w, w_BxLxV), with w = abar x_0 + sbar eps and
    abar = T^{-1}(alpha) (diffusion/duality.py); fixed positions keep x_0. `eps_BxLxV` shares the noise between calls
    (the distillation's coupled pair)."""
    states_V = self.states_V
    if eps_BxLxV is None:
      eps_BxLxV = jax.random.normal(rng, (*x0_BxL.shape, self.vocab_size), jnp.float32)
    dual = duality.GaussianDuality(int(states_V.sum()))
    w_BxLxV = dual.latents(x0_BxL, dual.gaussian_snr(alpha_B), eps_BxLxV, states_V)
    z_BxL = jnp.argmax(w_BxLxV, axis=-1).astype(x0_BxL.dtype)
    if fixed_BxL is not None:
      z_BxL = jnp.where(fixed_BxL, x0_BxL, z_BxL)
    return z_BxL, w_BxLxV


def check_full_logits(objective):
  """The uniform-state and SEDD objectives score full logits without self-conditioning."""
  if objective.self_conditioning or objective.loss_chunk:
    raise ConfigError(f"diffusion.objective={objective.name!r} scores full logits without self-conditioning: set "
                      "model.self_conditioning=False and diffusion.loss_chunk=0.")


@dataclasses.dataclass(frozen=True)
class Duo(UniformELBO):
  """"uniform" trained with Duo's curriculum (Sahoo et al. 2025; diffusion/duality.py): for the first
  `curriculum_steps` updates the corrupted tokens are argmax(w_t) of Gaussian latents w_t = abar_t x_0 + sbar_t eps,
  abar_t chosen so that the argmax follows the schedule's alpha(t), and the denoiser sees the soft tokens
  softmax(w_t / tau) instead of their one-hots, tau annealed log-linearly from 10^soft_tau_log10_start to
  10^soft_tau_log10_end; the loss is the uniform NELBO of z_t = argmax w_t (during the curriculum a low-variance
  surrogate, not a bound). Afterwards it is "uniform" exactly; evaluation always uses hard tokens.

  `duo_loss="symmetric_kl"` (seed 002's loss) trains instead on, per scored position i of a row at time t,

      w(t) [KL(q_i || p_i) + KL(p_i || q_i)],      w(t) = (1 - alpha_t) / (K alpha_t + 1 - alpha_t),

  averaged over the scored positions, with p_i = p_theta(x_0^i | z_t) over the K states and q_i the target one-hot
  smoothed to (1 - eps) 1{x_0^i} + eps / K (eps = `symkl_smoothing`): against an exact one-hot KL(p || q) is infinite
  unless p is one-hot, so the sketch's "symmetric KL with the one-hot" needs the smoothing to be a number (its reverse
  half is then ~ (1 - p_x) log(K / eps) - H(p): a linear charge on mass put on wrong tokens, the "penalises
  over-predicting wrong labels" of the sketch). The weight is the sketch's noise / (V clean + noise) with noise =
  1 - alpha_t, clean = alpha_t and V = K: the odds q_t(y | x) / q_t(x | x) of one given wrong state against the clean
  one. The sketch's comment says it tends to 1 as the noise vanishes; the formula tends to 0 there (and to 1 at pure
  noise): we implement the formula, as the issue asks, and note that it down-weights the nearly clean rows. It is not
  a likelihood bound: `nll_per_token` still logs the NELBO of the same batch, and evaluation is the NELBO."""
  name: ClassVar[str] = "duo"
  curriculum_steps: int = 0  # updates with soft tokens (Gaussian latents, tempered softmax)
  soft_tau_log10_start: float = -1.0  # log10 of the soft tokens' temperature at step 0 ...
  soft_tau_log10_end: float = -2.0  # ... annealed log-linearly to this at curriculum_steps (hard tokens after)
  # The training loss: "nelbo" (Duo's: the uniform NELBO) or "symmetric_kl" (seed 002: the noise-odds-weighted
  # symmetric KL to the target smoothed by symkl_smoothing; the class docstring)
  duo_loss: str = "nelbo"
  symkl_smoothing: float = 1e-4

  def __post_init__(self):
    super().__post_init__()
    if self.duo_loss not in DUO_LOSSES:
      raise ConfigError(f"diffusion.duo_loss must be one of {DUO_LOSSES}, got {self.duo_loss!r}.")
    if not 0.0 < self.symkl_smoothing < 1.0:
      raise ConfigError(f"diffusion.symkl_smoothing must be in (0, 1) (the symmetric KL to an exact one-hot is "
                        f"infinite), got {self.symkl_smoothing}.")

  def symmetric_kl(self, logits_BxLxV, x0_BxL, t_B):
    """[B, L]: w(t) [KL(q || p) + KL(p || q)] per position (class docstring), in nats."""
    states_V = jnp.asarray(self.states_V)
    num_states = jnp.sum(states_V)
    log_p_BxLxV = uniform.state_log_probs(logits_BxLxV, states_V)
    eps = self.symkl_smoothing
    q_BxLxV = (1.0 - eps) * jax.nn.one_hot(x0_BxL, self.vocab_size, dtype=jnp.float32) + eps / num_states
    log_q_BxLxV = jnp.log(q_BxLxV)
    p_BxLxV = jnp.exp(log_p_BxLxV)
    diff_BxLxV = jnp.where(states_V, log_q_BxLxV - log_p_BxLxV, 0.0)  # non-states: p = q = 0, no term
    kl_BxL = jnp.sum(jnp.where(states_V, q_BxLxV - p_BxLxV, 0.0) * diff_BxLxV, axis=-1)
    alpha_B = self.schedule.alpha(t_B)
    weight_B = (1.0 - alpha_B) / (num_states * alpha_B + 1.0 - alpha_B)
    return weight_B[:, None] * kl_BxL

  def batch_loss(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics, ratio_B=None):
    nelbo = super().batch_loss(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics, ratio_B)
    if self.duo_loss == "nelbo":
      return nelbo
    batch_size, seq_len = x0_BxL.shape
    if scored_BxL is None:
      scored_BxL = jnp.broadcast_to(jnp.arange(seq_len) >= self.prompt_length, x0_BxL.shape)
    symkl_BxL = self.symmetric_kl(output.logits_BxLxV, x0_BxL, t_B)
    loss = jnp.sum(jnp.where(scored_BxL, symkl_BxL, 0.0)) / self.scored_count(
        scored_BxL, batch_size * (seq_len - self.prompt_length))
    metrics["symmetric_kl"] = loss
    return loss

  def training_inputs(self, rng, x0_BxL, t_B, prompt_BxL, step):
    if self.curriculum_steps and step is not None:
      xt_BxL, input_BxLxV = self.curriculum_inputs(rng, x0_BxL, t_B, prompt_BxL, step)
      return xt_BxL, input_BxLxV, None, None  # (corrupted and weights: unused by the uniform NELBO)
    return super().training_inputs(rng, x0_BxL, t_B, prompt_BxL, step)

  def soft_tau(self, step):
    """Duo's soft-token temperature at update `step` of the curriculum."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(self.curriculum_steps, 1), 0.0, 1.0)
    return 10.0**(self.soft_tau_log10_start + (self.soft_tau_log10_end - self.soft_tau_log10_start) * frac)

  def curriculum_inputs(self, rng, x0_BxL, t_B, fixed_BxL, step):
    """Duo's curriculum: (z_t = argmax w_t, the denoiser's input [B, L, V]): the soft tokens softmax(w_t / tau) while
    step < curriculum_steps, the one-hots of z_t after (one compiled program; lax.cond runs one branch)."""
    z_BxL, w_BxLxV = self.gaussian_corrupt(rng, x0_BxL, self.schedule.alpha(t_B), fixed_BxL)
    hard_BxLxV = jax.nn.one_hot(z_BxL, self.vocab_size, dtype=jnp.float32)

    def soft(_):
      soft_BxLxV = duality.soft_tokens(w_BxLxV, self.soft_tau(step))
      return soft_BxLxV if fixed_BxL is None else jnp.where(fixed_BxL[..., None], hard_BxLxV, soft_BxLxV)

    input_BxLxV = jax.lax.cond(jnp.asarray(step) < self.curriculum_steps, soft, lambda _: hard_BxLxV, None)
    return z_BxL, input_BxLxV


@dataclasses.dataclass(frozen=True)
class ConsistencyDistillation(UniformELBO):
  """Duo's discrete consistency distillation of a "duo"/"uniform" teacher (Sahoo et al. 2025 §4, their
  `Distillation.nll`; run through `python -m launch.distill`).

  One Gaussian noise eps gives a deterministic pair on the probability-flow path of the Gaussian diffusion,
  w_t = abar_t x + sbar_t eps and w_s = abar_s x + sbar_s eps with s = t - dt, whose argmaxes z_t, z_s are samples of
  the uniform process at alpha(t) and alpha(s) (the duality). The student at (z_t, t) is trained to predict what the
  teacher predicts at the cleaner (z_s, s):
      loss = KL(p_student(x_0 | z_t) || p_teacher(x_0 | z_s))   ("kl_bwd"; "kl_fwd" swaps the arguments),
  summed over positions, averaged per token, t ~ U[dt, 1] (antithetic). dt = 2^n / T doubles every round n =
  step // distill_round_steps, and the train step sets the teacher to the student at the start of each round, so that
  after n rounds one student step covers 2^n of the original T teacher steps. Evaluated with the uniform NELBO (the
  student is a uniform-state x_0 model)."""
  name: ClassVar[str] = "dcd"
  needs_teacher: ClassVar[bool] = True
  distill_teacher_steps: int = 64  # T, the teacher's step count (round n jumps 2^n / T)
  distill_round_steps: int = 100  # updates per round (the teacher is refreshed from the student)
  distill_loss: str = "kl_bwd"  # "kl_bwd" KL(student || teacher) (Duo's default) or "kl_fwd"

  def __post_init__(self):
    super().__post_init__()
    check_distillation_fields(self)

  def distillation_gap(self, step):
    """dt = 2^n / T at round n = step // distill_round_steps (capped at 1/2): the time gap the student jumps."""
    rounds = jnp.asarray(step, jnp.int32) // self.distill_round_steps
    return jnp.minimum(2.0**rounds.astype(jnp.float32) / self.distill_teacher_steps, 0.5)

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    if teacher_fn is None or step is None:
      raise ValueError("diffusion.objective='dcd' trains a student against a teacher: run it through "
                       "python -m launch.distill, which passes the teacher and the step.")
    batch_size, seq_len = x0_BxL.shape
    t_rng, eps_rng = jax.random.split(rng)
    dt = self.distillation_gap(step)
    t_B = dt + (1.0 - dt) * forward.antithetic_times(t_rng, batch_size, 0.0)
    s_B = jnp.maximum(t_B - dt, self.t_min)
    prompt_BxL = self.prompt_mask(x0_BxL.shape)
    eps_BxLxV = jax.random.normal(eps_rng, (batch_size, seq_len, self.vocab_size), jnp.float32)
    zt_BxL, _ = self.gaussian_corrupt(None, x0_BxL, self.schedule.alpha(t_B), prompt_BxL, eps_BxLxV)
    zs_BxL, _ = self.gaussian_corrupt(None, x0_BxL, self.schedule.alpha(s_B), prompt_BxL, eps_BxLxV)
    output = denoise_fn(zt_BxL, t_B)
    student = uniform.state_log_probs(output.logits_BxLxV, self.states_V)
    teacher = jax.lax.stop_gradient(uniform.state_log_probs(teacher_fn(zs_BxL, s_B).logits_BxLxV, self.states_V))
    first, second = (student, teacher) if self.distill_loss == "kl_bwd" else (teacher, student)
    kl_BxL = jnp.sum(jnp.exp(first) * (first - second), axis=-1)
    if prompt_BxL is not None:
      kl_BxL = jnp.where(prompt_BxL, 0.0, kl_BxL)
    loss = jnp.sum(kl_BxL) / (batch_size * (seq_len - self.prompt_length))
    return loss, output, {"distill_kl": loss, "distill_dt": dt}
