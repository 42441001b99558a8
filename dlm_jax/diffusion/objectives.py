"""The training objective as one callable: corrupt x_0, run the denoiser, score it.

`DiffusionObjective(denoise_fn, x0_BxL, rng)` returns (scalar loss in nats per token, metrics). `denoise_fn(x_BxL,
t_B)` is any pure function (a merged NNX model in the trainer, a lookup table in the tests) returning logits_BxLxV, or
(logits_BxLxV, aux_losses) or (logits_BxLxV, aux_losses, aux_metrics): aux_losses maps names to already-weighted
auxiliary losses (EcoHybrid's slot load balancing, HRM's memory and ACT terms), added to the loss and logged as
`aux/NAME`; aux_metrics (e.g. HRM's mean number of L-iterations) are only logged, as `metric/NAME`.
`nll_per_token` stays the pure likelihood term.

kinds (config `diffusion.objective`):
  * "elbo": continuous-time NELBO with antithetic t (MD4/MDLM); loss = sum_b NELBO_b / (B L). Unbiased per-token NELBO.
  * "masked_mean": seed 001 §3: t ~ Uniform{1..T}/T (T = `num_timesteps`), mask rate 1 - alpha(t),
    loss = mean over sequences of the masked-mean CE. Not a bound.
  * "autoregressive": the causal control arm (seed 001 §5.2): next-token NLL, loss = mean over B (L - 1) predictions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import forward, losses
from dlm_jax.diffusion.schedules import MaskingSchedule

OBJECTIVES = ("elbo", "masked_mean", "autoregressive")


@dataclasses.dataclass(frozen=True)
class DiffusionObjective:
  schedule: MaskingSchedule
  mask_id: int
  kind: str = "elbo"
  num_timesteps: int = 32
  t_min: float = 1e-5

  def __post_init__(self):
    if self.kind not in OBJECTIVES:
      raise ValueError(f"Unknown objective {self.kind!r} (config diffusion.objective); choose one of {OBJECTIVES}.")

  @property
  def is_autoregressive(self) -> bool:
    return self.kind == "autoregressive"

  def sample_times(self, rng, batch_size: int):
    if self.kind == "masked_mean":
      k_B = jax.random.randint(rng, (batch_size,), 1, self.num_timesteps + 1)
      return k_B.astype(jnp.float32) / self.num_timesteps
    return forward.antithetic_times(rng, batch_size, self.t_min)

  def __call__(self, denoise_fn: Callable, x0_BxL, rng):
    batch_size, seq_len = x0_BxL.shape
    if self.is_autoregressive:
      logits_BxLxV, aux, extra = _split_aux(denoise_fn(x0_BxL, jnp.zeros((batch_size,), jnp.float32)))
      nll_BxLm1 = losses.next_token_nll(losses.subs_logits(logits_BxLxV, self.mask_id), x0_BxL)
      return _with_aux(jnp.mean(nll_BxLm1), {"nll_per_token": jnp.mean(nll_BxLm1)}, aux, extra)
    t_rng, mask_rng = jax.random.split(rng)
    t_B = self.sample_times(t_rng, batch_size)
    xt_BxL, masked_BxL = forward.corrupt(mask_rng, x0_BxL, t_B, self.schedule, self.mask_id)
    logits_BxLxV, aux, extra = _split_aux(denoise_fn(xt_BxL, t_B))
    logits_BxLxV = losses.subs_logits(logits_BxLxV, self.mask_id)
    nll_BxL = losses.token_nll(logits_BxLxV, x0_BxL)
    metrics = {"masked_fraction": jnp.mean(masked_BxL.astype(jnp.float32))}
    if self.kind == "elbo":
      nelbo_B = losses.nelbo_per_sequence(nll_BxL, masked_BxL, t_B, self.schedule)
      loss = jnp.sum(nelbo_B) / (batch_size * seq_len)
      metrics["nll_per_token"] = loss  # the NELBO bound on -log p per token
    else:
      loss = jnp.mean(losses.masked_mean_per_sequence(nll_BxL, masked_BxL))
    return _with_aux(loss, metrics, aux, extra)


def _split_aux(output):
  """logits | (logits, aux_losses) | (logits, aux_losses, aux_metrics) -> the triple."""
  if not isinstance(output, tuple):
    return output, {}, {}
  return output if len(output) == 3 else (output[0], output[1], {})


def _with_aux(loss, metrics, aux_losses, aux_metrics):
  for name, value in aux_losses.items():
    metrics[f"aux/{name}"] = value
    loss = loss + value
  for name, value in aux_metrics.items():
    metrics[f"metric/{name}"] = value
  metrics["loss"] = loss
  return loss, metrics


def from_config(config) -> DiffusionObjective:
  from dlm_jax import special_tokens
  from dlm_jax.diffusion import schedules
  objective = config.diffusion.objective
  if config.model.get("causal", False) != (objective == "autoregressive"):
    raise ValueError(
        f"config.model.causal={config.model.get('causal', False)} does not fit diffusion.objective={objective!r}: "
        "a causal model trains with objective 'autoregressive' and a bidirectional one with 'elbo' or 'masked_mean'.")
  return DiffusionObjective(
      schedule=schedules.from_config(config.diffusion), mask_id=special_tokens.MASK, kind=objective,
      num_timesteps=int(config.diffusion.get("num_timesteps", 32)), t_min=float(config.diffusion.get("t_min", 1e-5)))
