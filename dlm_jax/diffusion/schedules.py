"""Masking schedules alpha(t) for absorbing-state (masked) diffusion.

In continuous time t in [0, 1] each token of x_0 is kept with probability alpha(t) and replaced by the mask token with
probability 1 - alpha(t) (MD4, Shi et al. 2024, eq. 3; MDLM, Sahoo et al. 2024, eq. 2). A schedule is a decreasing
function with alpha(0) = 1 (clean) and alpha(1) = 0 (or a tiny epsilon: fully masked).

The continuous-time negative ELBO (MD4 eq. 5, MDLM eq. 10) weights the cross-entropy of the masked tokens by

    w(t) = -alpha'(t) / (1 - alpha(t))  >= 0.

Schedules implemented (mask rate m(t) = 1 - alpha(t)):

| name        | alpha(t)                   | w(t)                          | source |
|-------------|----------------------------|-------------------------------|--------|
| linear      | 1 - t                      | 1 / t                         | MD4, LLaDA |
| cosine      | 1 - cos(pi/2 (1 - t))      | (pi/2) cot(pi t / 2)          | MD4; MaskGIT's cosine mask rate sin(pi t/2) (the default) |
| polynomial  | 1 - t^p                    | p / t                         | MD4 |
| loglinear   | 1 - (1 - eps) t            | 1 / t                         | MDLM (sigma(t) = -log(1 - (1-eps) t)) |

All functions are pure jnp functions of an array t and are safe under jit/vmap/grad.
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from dlm_jax.errors import ConfigError

SCHEDULES = ("linear", "cosine", "polynomial", "loglinear")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """alpha(t), alpha'(t) and the ELBO weight for one named schedule.

  Attributes:
    name: one of SCHEDULES.
    exponent: p of the polynomial schedule alpha = 1 - t^p (ignored by the others).
    eps: alpha(1) = eps for the log-linear schedule (MDLM uses 1e-3); ignored by the others.
  """
  name: str = "cosine"
  exponent: float = 2.0
  eps: float = 1e-3

  def __post_init__(self):
    if self.name not in SCHEDULES:
      raise ConfigError(f"Unknown masking schedule {self.name!r}; choose one of {SCHEDULES} "
                       "(config field diffusion.schedule).")
    if self.name == "polynomial" and self.exponent <= 0:
      raise ConfigError(f"diffusion.schedule_exponent must be > 0, got {self.exponent}.")
    if self.name == "loglinear" and not 0.0 <= self.eps < 1.0:
      raise ConfigError(f"diffusion.schedule_eps must be in [0, 1), got {self.eps}.")

  def alpha(self, t):
    """Probability that a token is still visible at time t."""
    t = jnp.asarray(t, jnp.float32)
    if self.name == "linear":
      return 1.0 - t
    if self.name == "cosine":
      return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))
    if self.name == "polynomial":
      return 1.0 - t**self.exponent
    return 1.0 - (1.0 - self.eps) * t  # loglinear

  def dalpha(self, t):
    """d alpha / dt (<= 0)."""
    t = jnp.asarray(t, jnp.float32)
    if self.name == "linear":
      return -jnp.ones_like(t)
    if self.name == "cosine":
      return -0.5 * math.pi * jnp.sin(0.5 * math.pi * (1.0 - t))
    if self.name == "polynomial":
      return -self.exponent * t**(self.exponent - 1.0)
    return -(1.0 - self.eps) * jnp.ones_like(t)

  def mask_rate(self, t):
    """1 - alpha(t): probability that a token is masked at time t."""
    return 1.0 - self.alpha(t)

  def one_minus_alpha(self, t):
    """1 - alpha(t) in closed form, accurate where alpha(t) rounds to 1 in float32 (t near 0), which the ratio
    (1 - alpha) / alpha of the uniform-state and score-entropy losses needs; `mask_rate` keeps the masked sampler's
    original arithmetic."""
    t = jnp.asarray(t, jnp.float32)
    if self.name == "linear":
      return t
    if self.name == "cosine":
      return jnp.sin(0.5 * math.pi * t)
    if self.name == "polynomial":
      return t**self.exponent
    return (1.0 - self.eps) * t  # loglinear

  def log_alpha(self, t):
    """log alpha(t), accurate at both ends in float32: log1p(-(1 - alpha)), and for the cosine schedule at
    t >= 1/2 log(2 sin^2(pi/4 (1 - t))) (1 - cos rounds to 0 in float32 near t = 1)."""
    t = jnp.asarray(t, jnp.float32)
    near_one = jnp.log1p(-self.one_minus_alpha(t))
    if self.name != "cosine":
      return near_one
    near_zero = math.log(2.0) + 2.0 * jnp.log(jnp.sin(0.25 * math.pi * (1.0 - t)))
    return jnp.where(t < 0.5, near_one, near_zero)

  def time_of_mask_rate(self, rate):
    """The inverse of mask_rate: the t in [0, 1] at which a token is masked with probability `rate` (clipped to the
    schedule's range; loglinear's mask rate never exceeds 1 - eps)."""
    rate = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    if self.name == "linear":
      return rate
    if self.name == "cosine":  # rate = cos(pi/2 (1 - t))
      return 1.0 - jnp.arccos(rate) / (0.5 * math.pi)
    if self.name == "polynomial":
      return rate**(1.0 / self.exponent)
    return jnp.minimum(rate / (1.0 - self.eps), 1.0)  # loglinear

  def weight(self, t):
    """ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)), written in closed form so it is exact near t = 0."""
    t = jnp.asarray(t, jnp.float32)
    if self.name in ("linear", "loglinear"):
      return 1.0 / t
    if self.name == "cosine":
      return 0.5 * math.pi / jnp.tan(0.5 * math.pi * t)
    return self.exponent / t


def from_config(diffusion_config) -> MaskingSchedule:
  """Builds the schedule named by `config.diffusion` (fields schedule, schedule_exponent, schedule_eps)."""
  return MaskingSchedule(
      name=diffusion_config.schedule,
      exponent=float(diffusion_config.get("schedule_exponent", 2.0)),
      eps=float(diffusion_config.get("schedule_eps", 1e-3)))
