"""The causal control arm: the same network, causal, trained on next-token prediction."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax.numpy as jnp

from dlm_jax.errors import ConfigError
from dlm_jax.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class Autoregressive(Objective):
  """Next-token NLL, loss = mean over the B (L - 1) predictions of -log p_theta(x_{i+1} | x_{<=i}); its evaluation is
  the same exact NLL of tokens 2..L given token 1, the figure every diffusion arm's bound is set beside."""
  name: ClassVar[str] = "autoregressive"
  sampler: ClassVar[str] = "autoregressive"  # left to right (sampling/autoregressive.py)
  process: ClassVar[str] = "autoregressive"
  is_autoregressive: ClassVar[bool] = True
  supports_padded: ClassVar[bool] = True  # the padding is never a target

  def __post_init__(self):
    super().__post_init__()
    if self.prompt_length:
      raise ConfigError("diffusion.prompt_length is for diffusion objectives; the AR arm conditions on every prefix.")

  def next_token_nll(self, denoise_fn: Callable, x0_BxL):
    output = denoise_fn(x0_BxL, jnp.zeros((x0_BxL.shape[0],), jnp.float32))
    return output, self.token_nll(output, x0_BxL, shift=True)

  def mean_nll(self, nll_BxLm1, x0_BxL, condition_BxL=None):
    """The mean over the targets x_2..L (with `padded`, over those that are not padding; with `conditioned`, over
    those that are not conditioning positions)."""
    fixed_BxL = self.fixed_mask(x0_BxL, None, condition_BxL)
    if fixed_BxL is None:
      return jnp.mean(nll_BxLm1)
    target_BxLm1 = ~fixed_BxL[:, 1:]
    return jnp.sum(jnp.where(target_BxLm1, nll_BxLm1, 0.0)) / self.scored_count(target_BxLm1, 0)

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    x0_BxL, condition_BxL = self.split_condition(x0_BxL)
    output, nll_BxLm1 = self.next_token_nll(denoise_fn, x0_BxL)
    loss = self.mean_nll(nll_BxLm1, x0_BxL, condition_BxL)
    return loss, output, {"nll_per_token": loss}

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    x0_BxL, condition_BxL = self.split_condition(x0_BxL)
    return self.mean_nll(self.next_token_nll(denoise_fn, x0_BxL)[1], x0_BxL, condition_BxL)
