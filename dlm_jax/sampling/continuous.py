"""The reverse process of continuous embedding diffusion (diffusion/gaussian.py): DDIM or ancestral (DDPM) steps in
embedding space, one lax.scan, with the token readout at every step.

Start from z_1 ~ N(0, I) (fixed positions: their clean embeddings, as in training), and for i = 0 .. S-1 step from
t = 1 - i/S to s = 1 - (i+1)/S:

    logits = denoiser(z_t, t),   e_hat = softmax(logits / T) @ E  (CDCD's x_0 estimate; greedy: the argmax's row),
    z_s = alpha_s e_hat + sqrt(sigma_s^2 - c^2) eps_hat + c noise,   c = eta sigma_{t->s}  (gaussian.ddim_step),

with eta = 0 ("ddim": deterministic given z_1) or 1 ("ddpm": the ancestral step). The tokens at each step are the
argmax of the logits (the mask id excluded: it never occurs in training text); the result is the last step's. A
position's reveal step is the last step at which its argmax changed; its confidence the final step's probability.
A steered sampler (sampling/control.py's classifier guidance) adds its shift of the x_0 estimate to e_hat before the
step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import gaussian
from dlm_jax.diffusion.losses import NEG_INF
from dlm_jax.sampling.primitives import SampleOutput


def schedule_of(cfg) -> gaussian.LogSNRSchedule:
  """The run's log-SNR schedule, from a gaussian SamplerConfig's process fields."""
  return gaussian.LogSNRSchedule(cfg.log_snr_max, cfg.log_snr_min, cfg.log_snr_shape, cfg.position_skew)


def gaussian_sample(logits_fn, table_VxD, rng, tokens_BxL, fixed_BxL, cfg, x0_shift_fn=None):
  """`logits_fn(z_BxLxD, t_B) -> logits [B, L, V]`; `table_VxD` the normalized embedding table; `cfg` a
  SamplerConfig with process "gaussian" (method "ddim" or "ddpm", steps, greedy, temperature, log_snr_max/min/shape,
  position_skew, record_trajectory); `x0_shift_fn(z_BxLxD, t_B) -> [B, L, D]`, when given, is added to the x_0
  estimate at every step (control.gaussian_guidance). Returns a SampleOutput."""
  schedule = schedule_of(cfg)
  batch, length = tokens_BxL.shape
  steps, eta = int(cfg.steps), 1.0 if cfg.method == "ddpm" else 0.0
  table_VxD = table_VxD.astype(jnp.float32)
  clean_BxLxD = table_VxD[tokens_BxL]
  init_rng, loop_rng = jax.random.split(rng)
  z_BxLxD = jnp.where(fixed_BxL[..., None], clean_BxLxD,
                      jax.random.normal(init_rng, clean_BxLxD.shape, jnp.float32))
  start_BxL = jnp.where(fixed_BxL, tokens_BxL, cfg.special.mask).astype(jnp.int32)

  def step(carry, i):
    z_BxLxD, current_BxL, changed_BxL, _ = carry
    t_B = jnp.full((batch,), (steps - i) / steps, jnp.float32)
    s_B = jnp.full((batch,), (steps - i - 1) / steps, jnp.float32)
    logits_BxLxV = logits_fn(z_BxLxD, t_B).astype(jnp.float32).at[..., cfg.special.mask].set(NEG_INF)
    argmax_BxL = jnp.argmax(logits_BxLxV, axis=-1).astype(jnp.int32)
    if cfg.greedy:
      e_hat_BxLxD = table_VxD[argmax_BxL]
    else:
      e_hat_BxLxD = gaussian.expected_embedding(logits_BxLxV / cfg.temperature, table_VxD)
    if x0_shift_fn is not None:
      e_hat_BxLxD = e_hat_BxLxD + x0_shift_fn(z_BxLxD, t_B)
    z_BxLxD = gaussian.ddim_step(z_BxLxD, e_hat_BxLxD, t_B, s_B, schedule, jax.random.fold_in(loop_rng, i), eta)
    z_BxLxD = jnp.where(fixed_BxL[..., None], clean_BxLxD, z_BxLxD)
    now_BxL = jnp.where(fixed_BxL, start_BxL, argmax_BxL)  # start_BxL holds the fixed tokens
    changed_BxL = jnp.where(now_BxL != current_BxL, i, changed_BxL)
    return (z_BxLxD, now_BxL, changed_BxL, logits_BxLxV), (now_BxL if cfg.record_trajectory else None)

  init = (z_BxLxD, start_BxL, jnp.zeros((batch, length), jnp.int32),
          jnp.zeros((batch, length, table_VxD.shape[0]), jnp.float32))
  (_, final_BxL, changed_BxL, logits_BxLxV), trajectory = jax.lax.scan(step, init, jnp.arange(steps))
  prob_BxL = jnp.max(jax.nn.softmax(logits_BxLxV, axis=-1), axis=-1)
  return SampleOutput(
      tokens_BxL=final_BxL,
      reveal_step_BxL=jnp.where(fixed_BxL, -1, changed_BxL),
      confidence_BxL=jnp.where(fixed_BxL, 0.0, prob_BxL),
      trajectory_SxBxL=jnp.concatenate([start_BxL[None], trajectory]) if cfg.record_trajectory else None,
      steps_B=jnp.full((batch,), steps, jnp.int32),
      network_calls=jnp.asarray(steps, jnp.int32))
