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

Conditional training (`prompt_length` = P > 0; seed 002's SFT-style objective, as in LLaDA's SFT): the first P tokens
of each window are a prompt that is never masked and never scored; the loss is the NELBO of tokens P+1..L given them,
-log p(x_{P+1..L} | x_{1..P}) <= sum_b NELBO_b / (B (L - P)). With `prompt_drop` = p (classifier-free guidance's
condition dropout, Ho & Salimans 2022) each example's prompt is replaced by mask tokens with probability p (still not
scored), so that the same network also learns p(x_{P+1..L}), the unconditional model the sampler's guidance_scale
contrasts with (the sampler's unconditional pass masks every fixed position).

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

from dlm_jax.diffusion import forward, losses
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError

OBJECTIVES = ("elbo", "masked_mean", "autoregressive")


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

  def __post_init__(self):
    if self.kind not in OBJECTIVES:
      raise ConfigError(f"Unknown objective {self.kind!r} (config diffusion.objective); choose one of {OBJECTIVES}.")
    if self.prompt_length < 0 or not 0.0 <= self.prompt_drop < 1.0:
      raise ConfigError(f"diffusion.prompt_length must be >= 0 and diffusion.prompt_drop in [0, 1), got "
                        f"{self.prompt_length} and {self.prompt_drop}.")
    if self.prompt_drop and not self.prompt_length:
      raise ConfigError("diffusion.prompt_drop drops the prompt: set diffusion.prompt_length > 0 too.")
    if self.prompt_length and self.is_autoregressive:
      raise ConfigError("diffusion.prompt_length is for diffusion objectives; the AR arm conditions on every prefix.")

  @property
  def is_autoregressive(self) -> bool:
    return self.kind == "autoregressive"

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

  def __call__(self, denoise_fn: Callable, x0_BxL, rng, with_aux: bool = True):
    batch_size, seq_len = x0_BxL.shape
    if self.is_autoregressive:
      output = denoise_fn(x0_BxL, jnp.zeros((batch_size,), jnp.float32))
      nll_BxLm1 = self.token_nll(output, x0_BxL, shift=True)
      loss, metrics = jnp.mean(nll_BxLm1), {"nll_per_token": jnp.mean(nll_BxLm1)}
    else:
      t_rng, mask_rng = jax.random.split(rng)
      t_B = self.sample_times(t_rng, batch_size)
      prompt_BxL = None
      if self.prompt_length:
        prompt_BxL = jnp.broadcast_to(jnp.arange(seq_len) < self.prompt_length, x0_BxL.shape)
      xt_BxL, masked_BxL = forward.corrupt(mask_rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=prompt_BxL)
      if self.prompt_drop:
        drop_B = jax.random.bernoulli(jax.random.fold_in(rng, 2), self.prompt_drop, (batch_size,))
        xt_BxL = jnp.where(prompt_BxL & drop_B[:, None], self.mask_id, xt_BxL)  # masked input, still not scored
      output = self.denoise(denoise_fn, xt_BxL, t_B, jax.random.fold_in(rng, 1))
      nll_BxL = self.token_nll(output, x0_BxL)
      metrics = {"masked_fraction": jnp.mean(masked_BxL.astype(jnp.float32))}
      if self.kind == "elbo":
        nelbo_B = losses.nelbo_per_sequence(nll_BxL, masked_BxL, t_B, self.schedule)
        loss = jnp.sum(nelbo_B) / (batch_size * (seq_len - self.prompt_length))
        metrics["nll_per_token"] = loss  # the NELBO bound on -log p per token
      else:
        loss = jnp.mean(losses.masked_mean_per_sequence(nll_BxL, masked_BxL))
    if with_aux:
      for name, value in output.aux_losses.items():
        metrics[f"aux/{name}"] = value
        loss = loss + value
      metrics.update({f"metric/{name}": value for name, value in output.aux_metrics.items()})
    metrics["loss"] = loss
    return loss, metrics


  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """Nats per scored token of -log p(x_2..L | x_1) (the module docstring's convention): exact for the AR arm, a
    one-sample NELBO with x_1 never masked for diffusion. No auxiliary losses."""
    batch_size, seq_len = x0_BxL.shape
    if self.is_autoregressive:
      output = denoise_fn(x0_BxL, jnp.zeros((batch_size,), jnp.float32))
      return jnp.mean(self.token_nll(output, x0_BxL, shift=True))
    t_rng, mask_rng = jax.random.split(rng)
    t_B = forward.antithetic_times(t_rng, batch_size, self.t_min)
    first_BxL = jnp.zeros(x0_BxL.shape, bool).at[:, 0].set(True)
    xt_BxL, masked_BxL = forward.corrupt(mask_rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=first_BxL)
    nll_BxL = self.token_nll(self.denoise(denoise_fn, xt_BxL, t_B), x0_BxL)
    return jnp.sum(losses.nelbo_per_sequence(nll_BxL, masked_BxL, t_B, self.schedule)) / (batch_size * (seq_len - 1))


def from_config(config) -> DiffusionObjective:
  from dlm_jax import special_tokens
  from dlm_jax.diffusion import schedules
  objective = config.diffusion.objective
  if config.model.get("causal", False) != (objective == "autoregressive"):
    raise ConfigError(
        f"config.model.causal={config.model.get('causal', False)} does not fit diffusion.objective={objective!r}: "
        "a causal model trains with objective 'autoregressive' and a bidirectional one with 'elbo' or 'masked_mean'.")
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
      prompt_drop=float(config.diffusion.get("prompt_drop", 0.0)))
