"""SEDD's denoising score entropy (Lou et al. 2024; diffusion/score_entropy.py)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from dlm_jax.diffusion import forward, score_entropy, uniform
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.base import CorruptionObjective
from dlm_jax.objectives.uniform import StateObjective, check_full_logits


@dataclasses.dataclass(frozen=True)
class ScoreEntropy(StateObjective, CorruptionObjective):
  """The denoising score entropy of the absorbing or uniform process (`sedd_process`): the denoiser outputs log
  concrete scores s_theta(x_t, t)_y ~ p_t(y) / p_t(x_t) instead of x_0 logits, and the loss
      E_t [ sum_i sum_{y != x_t^i} Q_t(x_t^i, y) (s_y - p_y/p_x log s_y + K(p_y/p_x)) ]
  is a NELBO too (Lou et al. 2024, eq. 13), so its evaluation sits in the same tables as every other arm's."""
  name: ClassVar[str] = "sedd"
  outputs: ClassVar[str] = "score"
  sedd_process: str = "absorbing"  # the forward process, "absorbing" or "uniform"

  def __post_init__(self):
    super().__post_init__()
    if self.sedd_process not in score_entropy.PROCESSES:
      raise ConfigError(f"diffusion.sedd_process must be one of {score_entropy.PROCESSES}, got {self.sedd_process!r}.")
    check_full_logits(self)
    if self.process == "uniform" and self.prompt_drop:
      raise ConfigError("diffusion.prompt_drop masks the prompt, which a uniform-state process has no mask for; "
                        "set it to 0 with this objective.")

  @property
  def process(self) -> str:
    return self.sedd_process

  @classmethod
  def process_of(cls, diffusion_config) -> str:
    return diffusion_config.get("sedd_process", "absorbing")

  def corrupt(self, rng, x0_BxL, t_B, fixed_BxL):
    if self.sedd_process == "uniform":
      return uniform.corrupt(rng, x0_BxL, self.schedule.alpha(t_B), self.states_V, fixed_BxL)
    return forward.corrupt(rng, x0_BxL, t_B, self.schedule, self.mask_id, fixed_BxL=fixed_BxL)

  def corruption_metrics(self, x0_BxL, xt_BxL, corrupted_BxL):
    if self.sedd_process == "absorbing":
      return {"masked_fraction": jnp.mean(corrupted_BxL.astype(jnp.float32))}
    return super().corruption_metrics(x0_BxL, xt_BxL, corrupted_BxL)

  def sequence_nelbo(self, output, x0_BxL, xt_BxL, t_B, corrupted_BxL, scored_BxL=None, weight_BxL=None):
    return score_entropy.nelbo_per_sequence(output.logits_BxLxV, x0_BxL, xt_BxL, t_B, self.schedule, self.states_V,
                                            self.sedd_process, self.mask_id, scored_BxL)
