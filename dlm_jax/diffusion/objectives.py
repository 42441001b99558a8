"""The training objective as one callable: corrupt x_0, run the denoiser, score it.

`DiffusionObjective(denoise_fn, x0_BxL, rng)` returns (scalar loss in nats per token, metrics). `denoise_fn(x_BxL,
t_B)` is any pure function (a merged NNX model in the trainer, a lookup table in the tests) returning a
`dlm_jax.models.DenoiserOutput`: its aux_losses (already weighted: EcoHybrid's slot load balancing, HRM's memory, ACT
and priority terms) are added to the loss and logged as `aux/NAME`, its aux_metrics (e.g. HRM's mean number of
L-iterations) are only logged, as `metric/NAME`; with `with_aux=False` (evaluation) both are left out.
`nll_per_token` stays the pure likelihood term.

kinds (config `diffusion.objective`):
  * "elbo": continuous-time NELBO with antithetic t (MD4/MDLM); loss = sum_b NELBO_b / (B L). Unbiased per-token NELBO.
  * "masked_mean": the mean cross-entropy of the masked positions at a discrete timestep, t ~ Uniform{1..T}/T
    (T = `num_timesteps`), mask rate 1 - alpha(t); loss = mean over sequences of the masked-mean CE. Not a bound.
  * "autoregressive": the causal control arm (the same network, causal, trained on next-token prediction): next-token
    NLL, loss = mean over B (L - 1) predictions.
  * "uniform": uniform-state diffusion (UDLM/Duo; `diffusion.uniform`): the continuous-time NELBO of the process that
    replaces tokens by uniform draws over the K data states, antithetic t, the denoiser predicting x_0
    (`diffusion.parameterization`: Duo's "mean", the default, or "posterior", exact at the optimum). Unbiased per-token
    NELBO.
  * "duo": "uniform" trained with Duo's curriculum (`diffusion.duality`): for the first `curriculum_steps` updates the
    corrupted tokens are argmax(w_t) of Gaussian latents w_t = abar_t x_0 + sbar_t eps with abar_t chosen so that the
    argmax follows the schedule's alpha(t), and the denoiser sees the soft tokens softmax(w_t / tau) instead of their
    one-hots, tau annealed log-linearly from 10^`soft_tau_log10_start` to 10^`soft_tau_log10_end`; the loss is the
    uniform NELBO of z_t = argmax w_t (the soft input carries more than z_t, so during the curriculum the loss is a
    low-variance surrogate, not a bound). Afterwards it is "uniform" exactly. Evaluation always uses hard tokens.
  * "sedd": SEDD's denoising score entropy (`diffusion.score_entropy`) for `sedd_process` "absorbing" or "uniform":
    the denoiser outputs log concrete scores instead of x_0 logits. A NELBO too, so evaluation sits in the same tables.
  * "dcd": Duo's discrete consistency distillation of a "duo"/"uniform" teacher (`distillation_loss`); evaluated with
    the uniform NELBO (the student is a uniform-state x_0 model).

Script-aware corruption (`diffusion.corruption` = "script_aware" or "span", absorbing objectives only;
`diffusion/corruption.py`): training masks whole grapheme clusters or words, each on its script's schedule, and
weights each token by its unit's w_u(t). That is a bound given the segmentation, not on -log p(x_0) (the module says
why), so `evaluation_nll` always masks token by token.

Conditional training (`prompt_length` = P > 0; seed 002's SFT-style objective, as in LLaDA's SFT): the first P tokens
of each window are a prompt that is never masked and never scored; the loss is the NELBO of tokens P+1..L given them,
-log p(x_{P+1..L} | x_{1..P}) <= sum_b NELBO_b / (B (L - P)). With `prompt_drop` = p (classifier-free guidance's
condition dropout, Ho & Salimans 2022) each example's prompt is replaced by mask tokens with probability p (still not
scored), so that the same network also learns p(x_{P+1..L}), the unconditional model the sampler's guidance_scale
contrasts with (the sampler's unconditional pass masks every fixed position).

Thought tensors (`thought`, config.thought.enabled; diffusion/thought.py): the "elbo" objective on the last window of
each row given a Gaussian-noised memory of thoughts that the earlier windows wrote, plus the thought's reconstruction,
coherence and alignment losses; evaluation scores that window given the full memory.

Evaluation (`evaluation_nll`) scores every arm on the same targets: tokens 2..L of each window given token 1,
    -log p(x_2..L | x_1) / (L - 1)  nats per scored token.
For the AR arm this is its next-token NLL; for a diffusion model it is the NELBO of the forward process that never
masks x_1 (a bound on the same conditional: each position is masked independently, so clamping x_1 only removes its
term), whatever objective it was trained with. Scoring x_1 too would charge diffusion for a token with no context that
the AR arm never predicts (0.010 nats/char of a measured AR-vs-diffusion gap at L = 64).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import corruption as corruption_lib
from dlm_jax.diffusion import duality, forward, gaussian, losses, score_entropy, uniform
from dlm_jax.diffusion import thought as thought_lib
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError

OBJECTIVES = ("elbo", "masked_mean", "autoregressive", "uniform", "duo", "sedd", "dcd", "embedding")
UNIFORM_X0 = ("uniform", "duo", "dcd")  # uniform-state objectives whose denoiser predicts x_0
BEYOND_MASKING = UNIFORM_X0 + ("sedd",)


def process_of(kind: str, sedd_process: str = "absorbing") -> str:
  """The forward process of objective `kind`: "absorbing" (masking), "uniform", "gaussian" (continuous embedding
  diffusion) or "autoregressive"."""
  if kind == "autoregressive":
    return "autoregressive"
  if kind == "embedding":
    return "gaussian"
  if kind in UNIFORM_X0 or (kind == "sedd" and sedd_process == "uniform"):
    return "uniform"
  return "absorbing"
DISTILLATION_LOSSES = ("kl_bwd", "kl_fwd")


@dataclasses.dataclass(frozen=True)
class DiffusionObjective:
  schedule: MaskingSchedule
  mask_id: int
  kind: str = "elbo"
  num_timesteps: int = 32
  t_min: float = 1e-5
  # > 0: score tokens `loss_chunk` rows at a time from the denoiser's hidden states and tied head
  # (losses.tied_head_nll) instead of from [B, L, V] logits; 0 (or a denoiser without hidden/head): from the logits.
  loss_chunk: int = 0
  # Self-conditioning (model.self_conditioning): a first, gradient-free pass's estimate of x_0 is fed back to the
  # denoiser; in training for a random half of the examples (zeros for the others), in evaluation for all.
  self_conditioning: bool = False
  prompt_length: int = 0  # > 0: the first prompt_length tokens are never masked nor scored (SFT-style)
  prompt_drop: float = 0.0  # probability that an example's prompt is masked (classifier-free guidance training)
  vocab_size: int = 0  # the uniform-state and SEDD objectives draw from (and score) the states of this vocabulary
  parameterization: str = "mean"  # uniform-state x_0 models: "mean" or "posterior" (diffusion/uniform.py)
  sedd_process: str = "absorbing"  # "sedd": the forward process, "absorbing" or "uniform"
  # "duo": the soft-token curriculum lasts this many updates; tau = 10^(start + (end - start) step / curriculum_steps)
  curriculum_steps: int = 0
  soft_tau_log10_start: float = -1.0
  soft_tau_log10_end: float = -2.0
  # "dcd": the teacher's step count T and the updates per round; round n matches the student at t to the teacher at
  # t - 2^n / T (the teacher is the student's copy from the start of the round).
  distill_teacher_steps: int = 64
  distill_round_steps: int = 100
  distill_loss: str = "kl_bwd"  # "kl_bwd": KL(student || teacher) (Duo's default), "kl_fwd": KL(teacher || student)
  # Training-time masking of the absorbing objectives (diffusion/corruption.py): None = token by token; else whole
  # grapheme clusters or words with per-script schedules. Evaluation always masks token by token.
  corruption: corruption_lib.ScriptAwareCorruption | None = None
  # "embedding": continuous diffusion of the normalized token embeddings (diffusion/gaussian.py) on a linear log-SNR
  # schedule, trained on anchor_weight x the rounding cross-entropy of the denoiser's logits (CDCD's loss) plus
  # nelbo_weight x its NELBO (`embedding_nelbo`; always logged and evaluated).
  log_snr_max: float = 5.0
  log_snr_min: float = -10.0
  anchor_weight: float = 1.0
  nelbo_weight: float = 0.0
  # A thought tensor beside the masked text (diffusion/thought.py; config.thought): rows are K context windows and a
  # target window; the loss and the evaluation are the ThoughtProcess's.
  thought: thought_lib.ThoughtProcess | None = None

  def __post_init__(self):
    if self.kind not in OBJECTIVES:
      raise ConfigError(f"Unknown objective {self.kind!r} (config diffusion.objective); choose one of {OBJECTIVES}.")
    if self.parameterization not in uniform.PARAMETERIZATIONS:
      raise ConfigError(f"diffusion.parameterization must be one of {uniform.PARAMETERIZATIONS}, got "
                        f"{self.parameterization!r}.")
    if self.sedd_process not in score_entropy.PROCESSES:
      raise ConfigError(f"diffusion.sedd_process must be one of {score_entropy.PROCESSES}, got {self.sedd_process!r}.")
    if self.distill_loss not in DISTILLATION_LOSSES:
      raise ConfigError(f"diffusion.distill_loss must be one of {DISTILLATION_LOSSES}, got {self.distill_loss!r}.")
    if self.kind == "dcd" and (self.distill_teacher_steps < 2 or self.distill_round_steps < 1):
      raise ConfigError(f"diffusion.distill_teacher_steps must be >= 2 and diffusion.distill_round_steps >= 1, got "
                        f"{self.distill_teacher_steps} and {self.distill_round_steps}.")
    if self.process == "uniform" and self.prompt_drop:
      raise ConfigError("diffusion.prompt_drop masks the prompt, which a uniform-state process has no mask for; "
                        "set it to 0 with this objective.")
    if self.kind in BEYOND_MASKING and (self.self_conditioning or self.loss_chunk):
      raise ConfigError(f"diffusion.objective={self.kind!r} scores full logits without self-conditioning: set "
                        "model.self_conditioning=False and diffusion.loss_chunk=0.")
    if self.corruption is not None and self.process != "absorbing":
      raise ConfigError(f"diffusion.corruption masks grapheme clusters or words: it needs an absorbing objective "
                        f"('elbo' or 'masked_mean'), not {self.kind!r}. Set diffusion.corruption='uniform'.")
    if self.prompt_length < 0 or not 0.0 <= self.prompt_drop < 1.0:
      raise ConfigError(f"diffusion.prompt_length must be >= 0 and diffusion.prompt_drop in [0, 1), got "
                        f"{self.prompt_length} and {self.prompt_drop}.")
    if self.prompt_drop and not self.prompt_length:
      raise ConfigError("diffusion.prompt_drop drops the prompt: set diffusion.prompt_length > 0 too.")
    if self.kind == "embedding" and (self.self_conditioning or self.loss_chunk or self.prompt_drop):
      raise ConfigError("diffusion.objective='embedding' scores full logits without self-conditioning or prompt "
                        "dropping: set model.self_conditioning=False, diffusion.loss_chunk=0, diffusion.prompt_drop=0.")
    if self.anchor_weight < 0 or self.nelbo_weight < 0 or (self.kind == "embedding" and
                                                            not self.anchor_weight + self.nelbo_weight):
      raise ConfigError(f"diffusion.anchor_weight ({self.anchor_weight}) and diffusion.nelbo_weight "
                        f"({self.nelbo_weight}) must be >= 0, and not both 0.")
    if self.prompt_length and self.is_autoregressive:
      raise ConfigError("diffusion.prompt_length is for diffusion objectives; the AR arm conditions on every prefix.")
    if self.thought is not None and (self.kind != "elbo" or self.prompt_length or self.corruption is not None or
                                     self.self_conditioning or self.loss_chunk):
      raise ConfigError("config.thought trains masked text with the 'elbo' objective, without a prompt, script-aware "
                        "corruption, self-conditioning or loss_chunk.")

  def sample_length(self, seq_len: int) -> int:
    """The tokens one generation fills: data.seq_len, or a thought run's window W = seq_len / (K + 1)."""
    return seq_len if self.thought is None else self.thought.window_length(seq_len)

  @property
  def log_snr_schedule(self) -> gaussian.LogSNRSchedule:
    return gaussian.LogSNRSchedule(self.log_snr_max, self.log_snr_min)

  def embedding_nelbo(self, denoise_fn: Callable, x0_BxL, rng, fixed_BxL, t_B=None):
    """Continuous embedding diffusion (diffusion/gaussian.py) at one time draw: (per-position terms {"diffusion",
    "prior", "reconstruction", "rounding"} [B, L] in nats, output). Positions in `fixed_BxL` (the prompt, or token 1 in
    evaluation) stay at their clean embeddings, are seen by the denoiser and are not scored (their terms are 0).
    The NELBO per position is diffusion + prior + reconstruction; "rounding" is the anchor loss -log p_theta(x_0 | z_t)
    of the denoiser's logits, which is no part of the bound.

    The training loss is anchor_weight x rounding + nelbo_weight x NELBO, by default the rounding cross-entropy alone
    (CDCD, Dieleman et al. 2022: with e_hat = softmax(logits) @ E the cross-entropy trains the same estimate the bound
    scores). The bound itself is a poor training signal for this parameterization: its MSE weight -SNR'(t)/2 grows as
    e^lambda near t = 0, so that early in training, when e_hat is still the average embedding, the few draws near t = 0
    dominate the loss (about 2e3 nats/token on the tiny test model, with the gradient clipped) and the estimate of
    the high-noise steps barely moves; VDM avoids it by predicting eps, which a softmax over tokens cannot."""
    t_rng, z_rng, rec_rng = jax.random.split(rng, 3)
    schedule = self.log_snr_schedule
    if t_B is None:
      t_B = forward.antithetic_times(t_rng, x0_BxL.shape[0], 0.0)
    table_VxD = denoise_fn.diffusion_table()
    e_BxLxD = table_VxD[x0_BxL]
    z_BxLxD, _ = gaussian.forward_sample(z_rng, e_BxLxD, t_B, schedule)
    if fixed_BxL is not None:
      z_BxLxD = jnp.where(fixed_BxL[..., None], e_BxLxD, z_BxLxD)
    output = denoise_fn(x0_BxL, t_B, embeddings_BxLxD=z_BxLxD)
    e_hat_BxLxD = gaussian.expected_embedding(output.logits_BxLxV, table_VxD)
    terms = {"diffusion": gaussian.diffusion_loss(e_BxLxD, e_hat_BxLxD, t_B, schedule),
             "prior": gaussian.prior_kl(e_BxLxD, schedule),
             "reconstruction": gaussian.reconstruction_nll(rec_rng, e_BxLxD, x0_BxL, table_VxD, schedule),
             "rounding": gaussian.rounding_cross_entropy(output.logits_BxLxV, x0_BxL)}
    if fixed_BxL is not None:
      terms = {name: jnp.where(fixed_BxL, 0.0, value) for name, value in terms.items()}
    return terms, output

  @property
  def is_autoregressive(self) -> bool:
    return self.kind == "autoregressive"

  @property
  def process(self) -> str:
    """The forward process: "absorbing" (masking), "uniform" or "autoregressive" (`process_of`)."""
    return process_of(self.kind, self.sedd_process)

  def sample_times(self, rng, batch_size: int):
    if self.kind == "masked_mean":
      k_B = jax.random.randint(rng, (batch_size,), 1, self.num_timesteps + 1)
      return k_B.astype(jnp.float32) / self.num_timesteps
    return forward.antithetic_times(rng, batch_size, self.t_min)

  def token_nll(self, output, targets_BxL, shift: bool = False):
    """-log p_theta(target) per position under SUBS (the mask id removed), from the logits or chunk by chunk. With
    `shift`, position i scores target i + 1 (the AR arm): [B, L - 1]."""
    if self.loss_chunk and output.hidden_BxLxD is not None:
      hidden_BxLxD = output.hidden_BxLxD[:, :-1] if shift else output.hidden_BxLxD
      targets_BxL = targets_BxL[:, 1:] if shift else targets_BxL
      return losses.tied_head_nll(hidden_BxLxD, output.head_VxD, targets_BxL, self.mask_id, self.loss_chunk)
    logits_BxLxV = losses.subs_logits(output.logits_BxLxV, self.mask_id)
    return losses.next_token_nll(logits_BxLxV, targets_BxL) if shift else losses.token_nll(logits_BxLxV, targets_BxL)

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

  @property
  def states_V(self):
    """The uniform-state process's states (diffusion/uniform.states) of this objective's vocabulary."""
    if not self.vocab_size:
      raise ValueError(f"diffusion.objective={self.kind!r} needs the vocabulary size: build it with "
                       "objectives.from_config(config, vocab_size).")
    return uniform.states(self.vocab_size)

  def prompt_mask(self, shape):
    """bool [B, L]: the never-corrupted, never-scored prompt positions, or None without a prompt."""
    return jnp.broadcast_to(jnp.arange(shape[1]) < self.prompt_length, shape) if self.prompt_length else None

  def soft_tau(self, step):
    """Duo's soft-token temperature at update `step` of the curriculum."""
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(self.curriculum_steps, 1), 0.0, 1.0)
    return 10.0**(self.soft_tau_log10_start + (self.soft_tau_log10_end - self.soft_tau_log10_start) * frac)

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

  def sequence_nelbo(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL=None, weight_BxL=None):
    """Each sequence's one-sample NELBO in nats under this objective's process and parameterization. `corrupted_BxL`
    marks the masked positions of the absorbing process (unused by the others); `weight_BxL` replaces its w(t) by
    each token's unit weight (script-aware corruption)."""
    if self.kind == "sedd":
      return score_entropy.nelbo_per_sequence(output.logits_BxLxV, x0_BxL, xt_BxL, t_B, self.schedule, self.states_V,
                                              self.sedd_process, self.mask_id, scored_BxL)
    if self.process == "uniform":
      return uniform.nelbo_per_sequence(output.logits_BxLxV, x0_BxL, xt_BxL, t_B, self.schedule, self.states_V,
                                        self.parameterization, scored_BxL)
    return losses.nelbo_per_sequence(self.token_nll(output, x0_BxL), corrupted_BxL, t_B, self.schedule, weight_BxL)

  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    """(x_t, corrupted) under this objective's forward process with hard tokens, token by token (the process every
    evaluation scores); fixed positions untouched."""
    if self.process == "uniform":
      return uniform.corrupt(rng, x0_BxL, self.schedule.alpha(t_B), self.states_V, fixed_BxL)
    return forward.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=fixed_BxL)

  def training_corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    """(x_t, corrupted, weight_BxL or None): `corrupt`, or the script-aware corruption's units and weights."""
    if self.corruption is None:
      return (*self.corrupt(rng, x0_BxL, t_B, fixed_BxL), None)
    return self.corruption.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL)

  def __call__(self, denoise_fn: Callable, x0_BxL, rng, with_aux: bool = True, step=None, teacher_fn=None):
    """(loss, metrics). `step` (the update count) drives Duo's curriculum and the distillation rounds; `teacher_fn`
    is the distillation teacher's denoise function."""
    batch_size, seq_len = x0_BxL.shape
    if self.is_autoregressive:
      output = denoise_fn(x0_BxL, jnp.zeros((batch_size,), jnp.float32))
      nll_BxLm1 = self.token_nll(output, x0_BxL, shift=True)
      loss, metrics = jnp.mean(nll_BxLm1), {"nll_per_token": jnp.mean(nll_BxLm1)}
    elif self.thought is not None:
      loss, output, metrics = self.thought.loss(self, denoise_fn, x0_BxL, rng)
    elif self.kind == "dcd":
      loss, output, metrics = self.distillation_loss(denoise_fn, teacher_fn, x0_BxL, rng, step)
    elif self.kind == "embedding":
      terms, output = self.embedding_nelbo(denoise_fn, x0_BxL, rng, self.prompt_mask(x0_BxL.shape))
      scored = batch_size * (seq_len - self.prompt_length)
      per_token = {name: jnp.sum(value) / scored for name, value in terms.items()}
      nelbo = per_token["diffusion"] + per_token["prior"] + per_token["reconstruction"]
      loss = self.nelbo_weight * nelbo + self.anchor_weight * per_token["rounding"]
      metrics = {"nll_per_token": nelbo, **{f"embedding/{name}": value for name, value in per_token.items()}}
    else:
      t_rng, mask_rng = jax.random.split(rng)
      t_B = self.sample_times(t_rng, batch_size)
      prompt_BxL = self.prompt_mask(x0_BxL.shape)
      scored_BxL = None if prompt_BxL is None else ~prompt_BxL
      if self.kind == "duo" and self.curriculum_steps and step is not None:
        xt_BxL, input_BxL = self.curriculum_inputs(mask_rng, x0_BxL, t_B, prompt_BxL, step)
        corrupted_BxL = weight_BxL = None  # (unused by the uniform NELBO)
      else:
        xt_BxL, corrupted_BxL, weight_BxL = self.training_corrupt(mask_rng, x0_BxL, t_B, prompt_BxL)
        input_BxL = xt_BxL
      if self.prompt_drop:
        drop_B = jax.random.bernoulli(jax.random.fold_in(rng, 2), self.prompt_drop, (batch_size,))
        input_BxL = jnp.where(prompt_BxL & drop_B[:, None], self.mask_id, xt_BxL)  # masked input, still not scored
      output = self.denoise(denoise_fn, input_BxL, t_B, jax.random.fold_in(rng, 1))
      if self.process == "absorbing":
        metrics = {"masked_fraction": jnp.mean(corrupted_BxL.astype(jnp.float32))}
      else:  # positions whose token differs from x_0 (a uniform redraw may give x_0 back)
        metrics = {"corrupted_fraction": jnp.mean((xt_BxL != x0_BxL).astype(jnp.float32))}
      if self.kind == "masked_mean":
        loss = jnp.mean(losses.masked_mean_per_sequence(self.token_nll(output, x0_BxL), corrupted_BxL))
      else:
        nelbo_B = self.sequence_nelbo(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL)
        loss = jnp.sum(nelbo_B) / (batch_size * (seq_len - self.prompt_length))
        metrics["nll_per_token"] = loss  # the NELBO bound on -log p per token
    if with_aux:
      for name, value in output.aux_losses.items():
        metrics[f"aux/{name}"] = value
        loss = loss + value
      metrics.update({f"metric/{name}": value for name, value in output.aux_metrics.items()})
    metrics["loss"] = loss
    return loss, metrics

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

  def distillation_gap(self, step):
    """dt = 2^n / T at round n = step // distill_round_steps (capped at 1/2): the time gap the student jumps."""
    rounds = jnp.asarray(step, jnp.int32) // self.distill_round_steps
    return jnp.minimum(2.0**rounds.astype(jnp.float32) / self.distill_teacher_steps, 0.5)

  def distillation_loss(self, denoise_fn, teacher_fn, x0_BxL, rng, step):
    """Duo's discrete consistency distillation (Sahoo et al. 2025 §4, their `Distillation.nll`).

    One Gaussian noise eps gives a deterministic pair on the probability-flow path of the Gaussian diffusion,
    w_t = abar_t x + sbar_t eps and w_s = abar_s x + sbar_s eps with s = t - dt, whose argmaxes z_t, z_s are samples of
    the uniform process at alpha(t) and alpha(s) (the duality). The student at (z_t, t) is trained to predict what the
    teacher predicts at the cleaner (z_s, s):
        loss = KL(p_student(x_0 | z_t) || p_teacher(x_0 | z_s))   ("kl_bwd"; "kl_fwd" swaps the arguments),
    summed over positions, averaged per token, t ~ U[dt, 1] (antithetic). dt = 2^n / T doubles every round, and the
    caller (the train step) sets the teacher to the student at the start of each round, so that after n rounds one
    student step covers 2^n of the original T teacher steps."""
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

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """Nats per scored token of -log p(x_2..L | x_1) (the module docstring's convention): exact for the AR arm, a
    one-sample NELBO with x_1 never corrupted for diffusion (hard tokens, whatever the training curriculum). No
    auxiliary losses."""
    batch_size, seq_len = x0_BxL.shape
    if self.is_autoregressive:
      output = denoise_fn(x0_BxL, jnp.zeros((batch_size,), jnp.float32))
      return jnp.mean(self.token_nll(output, x0_BxL, shift=True))
    if self.thought is not None:  # the target window given the memory of every context window
      return self.thought.depth_nll(self, denoise_fn, x0_BxL, rng, self.thought.context_windows)
    first_BxL = jnp.zeros(x0_BxL.shape, bool).at[:, 0].set(True)
    if self.kind == "embedding":
      terms, _ = self.embedding_nelbo(denoise_fn, x0_BxL, rng, first_BxL)
      nelbo = terms["diffusion"] + terms["prior"] + terms["reconstruction"]
      return jnp.sum(nelbo) / (batch_size * (seq_len - 1))
    t_rng, mask_rng = jax.random.split(rng)
    t_B = forward.antithetic_times(t_rng, batch_size, self.t_min)
    xt_BxL, corrupted_BxL = self.corrupt(mask_rng, x0_BxL, t_B, first_BxL)
    output = self.denoise(denoise_fn, xt_BxL, t_B)
    nelbo_B = self.sequence_nelbo(output, x0_BxL, xt_BxL, t_B, corrupted_BxL, ~first_BxL)
    return jnp.sum(nelbo_B) / (batch_size * (seq_len - 1))


def from_config(config, vocab_size: int = 0, tokenizer=None) -> DiffusionObjective:
  """The objective of `config.diffusion`; `vocab_size` (the tokenizer's) is needed by the uniform-state and SEDD
  objectives, the `tokenizer` itself by a script-aware `diffusion.corruption`."""
  from dlm_jax import special_tokens
  from dlm_jax.diffusion import schedules
  objective = config.diffusion.objective
  if config.model.get("causal", False) != (objective == "autoregressive"):
    raise ConfigError(
        f"config.model.causal={config.model.get('causal', False)} does not fit diffusion.objective={objective!r}: "
        "a causal model trains with objective 'autoregressive' and a bidirectional one with a diffusion objective.")
  if objective == "embedding" and (config.model.name != "transformer" or not config.model.get("time_conditioning")):
    raise ConfigError("diffusion.objective='embedding' feeds noisy embeddings to the transformer denoiser, which must "
                      "see the noise level: set model.name='transformer' and model.time_conditioning=True.")
  if config.model.name == "hrm" and objective in BEYOND_MASKING:
    raise ConfigError(f"diffusion.objective={objective!r} with model hrm: the HRM denoiser's strategic unmasking and "
                      "memory losses are defined on masked positions. Use 'elbo' or 'masked_mean', or another model.")
  prompt_length = int(config.diffusion.get("prompt_length", 0))
  if prompt_length >= int(config.data.seq_len):
    raise ConfigError(f"diffusion.prompt_length={prompt_length} leaves nothing to score in windows of "
                      f"{config.data.seq_len} tokens (data.seq_len): make it smaller.")
  return DiffusionObjective(
      schedule=schedules.from_config(config.diffusion), mask_id=special_tokens.MASK, kind=objective,
      num_timesteps=int(config.diffusion.get("num_timesteps", 32)), t_min=float(config.diffusion.get("t_min", 1e-5)),
      loss_chunk=int(config.diffusion.get("loss_chunk", 0)),
      self_conditioning=bool(config.model.get("self_conditioning", False)),
      prompt_length=prompt_length,
      prompt_drop=float(config.diffusion.get("prompt_drop", 0.0)),
      vocab_size=int(vocab_size),
      parameterization=config.diffusion.get("parameterization", "mean"),
      sedd_process=config.diffusion.get("sedd_process", "absorbing"),
      curriculum_steps=int(config.diffusion.get("curriculum_steps", 0)),
      soft_tau_log10_start=float(config.diffusion.get("soft_tau_log10_start", -1.0)),
      soft_tau_log10_end=float(config.diffusion.get("soft_tau_log10_end", -2.0)),
      distill_teacher_steps=int(config.diffusion.get("distill_teacher_steps", 64)),
      distill_round_steps=int(config.diffusion.get("distill_round_steps", 100)),
      distill_loss=config.diffusion.get("distill_loss", "kl_bwd"),
      corruption=corruption_lib.from_config(config.diffusion, tokenizer),
      log_snr_max=float(config.diffusion.get("log_snr_max", 5.0)),
      log_snr_min=float(config.diffusion.get("log_snr_min", -10.0)),
      anchor_weight=float(config.diffusion.get("anchor_weight", 1.0)),
      nelbo_weight=float(config.diffusion.get("nelbo_weight", 0.0)),
      thought=thought_lib.from_config(config))
