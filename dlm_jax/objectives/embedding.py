"""Continuous diffusion of the normalized token embeddings (diffusion/gaussian.py)."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import forward, gaussian
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class EmbeddingDiffusion(Objective):
  """VDM's continuous-time bound (Kingma et al. 2021) on the normalized token embeddings e = E[x_0], log-SNR
  lambda(t) from log_snr_max (t = 0) to log_snr_min (t = 1), linear or Diffusion-LM's square root (log_snr_shape),
  optionally on a clock of each position's own (position_skew):
  NELBO = prior KL + E_t[-SNR'(t)/2 |e - e_hat|^2] + the
  Gaussian readout -log p(x_0 | z_0), with CDCD's estimate e_hat = softmax(logits) E (Dieleman et al. 2022).

  The training loss is anchor_weight x the rounding cross-entropy -log p_theta(x_0 | z_t) + nelbo_weight x the NELBO
  (always logged as nll_per_token, and evaluated), by default the cross-entropy alone: it trains the same estimate the
  bound scores, while the bound's MSE weight -SNR'(t)/2 grows as e^lambda near t = 0, so that early in training the few
  draws near t = 0 dominate the loss (about 2e3 nats/token on the tiny test model) and the high-noise steps barely
  move; VDM avoids it by predicting eps, which a softmax over tokens cannot. The denoiser must see the noise level
  (model.time_conditioning) and take embeddings (the transformer)."""
  name: ClassVar[str] = "embedding"
  process: ClassVar[str] = "gaussian"
  log_snr_max: float = 5.0  # lambda(0)
  log_snr_min: float = -10.0  # lambda(1)
  log_snr_shape: str = "linear"  # "linear" (VDM) or "sqrt" (Diffusion-LM's square-root schedule; gaussian.py)
  # Position-dependent noise levels (gaussian.LogSNRSchedule): position i runs the schedule on its own clock, shifted
  # by position_skew (1 - i / (L - 1)), so that later positions are noisier and the reverse process resolves left to
  # right (AR-Diffusion's linear skew; seed 004's SeqDiffuSeq item). 0: one schedule for every position.
  position_skew: float = 0.0
  anchor_weight: float = 1.0  # weight of the rounding cross-entropy (CDCD's loss)
  nelbo_weight: float = 0.0  # weight of the NELBO

  def __post_init__(self):
    super().__post_init__()
    if self.self_conditioning or self.loss_chunk or self.prompt_drop:
      raise ConfigError("diffusion.objective='embedding' scores full logits without self-conditioning or prompt "
                        "dropping: set model.self_conditioning=False, diffusion.loss_chunk=0, diffusion.prompt_drop=0.")
    if self.anchor_weight < 0 or self.nelbo_weight < 0 or not self.anchor_weight + self.nelbo_weight:
      raise ConfigError(f"diffusion.anchor_weight ({self.anchor_weight}) and diffusion.nelbo_weight "
                        f"({self.nelbo_weight}) must be >= 0, and not both 0.")

  @classmethod
  def check_model(cls, model_config):
    super().check_model(model_config)
    if model_config.name != "transformer" or not model_config.get("time_conditioning"):
      raise ConfigError("diffusion.objective='embedding' feeds noisy embeddings to the transformer denoiser, which "
                        "must see the noise level: set model.name='transformer' and model.time_conditioning=True.")

  @property
  def log_snr_schedule(self) -> gaussian.LogSNRSchedule:
    return gaussian.LogSNRSchedule(self.log_snr_max, self.log_snr_min, self.log_snr_shape, self.position_skew)

  def embedding_nelbo(self, denoise_fn: Callable, x0_BxL, rng, fixed_BxL, t_B=None):
    """One time draw: (per-position terms {"diffusion", "prior", "reconstruction", "rounding"} [B, L] in nats,
    output). Positions in `fixed_BxL` (the prompt, or token 1 in evaluation) stay at their clean embeddings, are seen
    by the denoiser and are not scored. The NELBO per position is diffusion + prior + reconstruction; "rounding" is
    the anchor loss, no part of the bound."""
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

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    batch_size, seq_len = x0_BxL.shape
    terms, output = self.embedding_nelbo(denoise_fn, x0_BxL, rng, self.prompt_mask(x0_BxL.shape))
    scored = batch_size * (seq_len - self.prompt_length)
    per_token = {name: jnp.sum(value) / scored for name, value in terms.items()}
    nelbo = per_token["diffusion"] + per_token["prior"] + per_token["reconstruction"]
    loss = self.nelbo_weight * nelbo + self.anchor_weight * per_token["rounding"]
    return loss, output, {"nll_per_token": nelbo, **{f"embedding/{name}": value for name, value in per_token.items()}}

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    batch_size, seq_len = x0_BxL.shape
    first_BxL = jnp.zeros(x0_BxL.shape, bool).at[:, 0].set(True)
    terms, _ = self.embedding_nelbo(denoise_fn, x0_BxL, rng, first_BxL)
    nelbo = terms["diffusion"] + terms["prior"] + terms["reconstruction"]
    return jnp.sum(nelbo) / (batch_size * (seq_len - 1))
