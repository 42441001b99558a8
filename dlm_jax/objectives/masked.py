"""The absorbing-state (masked) objectives: MD4/MDLM's continuous-time NELBO and the masked-mean cross-entropy."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import corruption as corruption_lib
from dlm_jax.diffusion import forward, losses
from dlm_jax.objectives.base import CorruptionObjective


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
  corruption: corruption_lib.ScriptAwareCorruption | None = None  # None: token by token

  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    return forward.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=fixed_BxL)

  def training_inputs(self, rng, x0_BxL, t_B, prompt_BxL, step):
    if self.corruption is None:
      return super().training_inputs(rng, x0_BxL, t_B, prompt_BxL, step)
    xt_BxL, corrupted_BxL, weight_BxL = self.corruption.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id,
                                                                prompt_BxL)
    return xt_BxL, xt_BxL, corrupted_BxL, weight_BxL

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

  def sample_times(self, rng, batch_size: int):
    k_B = jax.random.randint(rng, (batch_size,), 1, self.num_timesteps + 1)
    return k_B.astype(jnp.float32) / self.num_timesteps

  def batch_loss(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL, weight_BxL, metrics):
    return jnp.mean(losses.masked_mean_per_sequence(self.token_nll(output, x0_BxL), corrupted_BxL))
