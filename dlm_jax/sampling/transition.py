"""Reverse samplers that move every position at every step: uniform-state diffusion (Duo/UDLM) and SEDD's scores.

The masked sampler (`masked.masked_sample`) reveals tokens once; here each of the S = `steps` steps t_k = 1 - k/S ->
s = 1 - (k+1)/S draws every non-fixed position afresh from a per-position reverse transition, so a token placed early
can be corrected later ("self-correction"):

* uniform process, x_0-predicting denoiser (`method`):
  - "ancestral": z_s ~ p_theta(z_s | z_t), the reverse posterior of `diffusion.uniform.reverse_probs` for the model's
    parameterization ("posterior": sum_v p_theta(v | z_t) q(z_s | z_t, v); "mean": Duo's plug-in). The start is
    z_1 ~ Uniform(states) (exact when alpha(1) = 0).
  - "greedy" (self-correcting refinement): z_s = argmax_y p_theta(z_s = y | z_t). A position keeps its token unless the
    model moves the posterior's mode; with a model that is certain of the current token it never changes. The last
    step (s = 0) is argmax p_theta(x_0 | z_t) itself.
* score denoiser (SEDD; `method="tweedie"`, absorbing or uniform process): SEDD's Tweedie step per position,
  `diffusion.score_entropy.tweedie_probs`. The absorbing process starts all-masked and never changes a revealed token;
  a position still masked after the last step (an imperfect score can leave mass on staying masked) takes the
  model's highest-scoring token.

`greedy=True` takes the argmax of each step's transition for any method; `temperature` divides the denoiser's logits
(x_0 models) before the step, `top_k`/`top_p` filter them. Fixed positions never change. The outputs are those of the
masked sampler: `reveal_step_BxL` is the last step at which a position changed (-1 if it never did), `confidence_BxL`
the transition's probability of the token chosen then, `trajectory_SxBxL` the tokens after every step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm_jax.diffusion import score_entropy, uniform
from dlm_jax.sampling import primitives
from dlm_jax.sampling.primitives import SampleOutput, filter_logits

ALPHA_FLOOR = 1e-6  # alpha_t at t = 1 for schedules with alpha(1) = 0 (the Tweedie step divides by alpha_t / alpha_s)


def transition_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, init_carry=None):
  """Runs the reverse process of `cfg.process` / `cfg.parameterization` (module docstring); pure and jittable.
  `denoise_fn(x, t, carry) -> (logits, priority or None, carry)` as for `masked.masked_sample`."""
  batch, length = tokens_BxL.shape
  steps = cfg.steps
  t0_B = jnp.ones((batch,), jnp.float32)
  vocab = jax.eval_shape(lambda x: denoise_fn(x, t0_B, init_carry)[0], tokens_BxL).shape[-1]
  states_V = uniform.states(vocab, cfg.special)
  mask_id = cfg.special.mask
  init_key, loop_key = jax.random.split(rng)
  fixed_BxL = fixed_BxL.astype(bool)
  if cfg.process == "uniform":
    start_BxL = uniform.prior_sample(init_key, tokens_BxL.shape, states_V)
  else:
    start_BxL = jnp.full(tokens_BxL.shape, mask_id, jnp.int32)
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, start_BxL).astype(jnp.int32)

  def transition(logits_BxLxV, x_BxL, t_B, s_B):
    alpha_t = jnp.maximum(cfg.schedule.alpha(t_B), ALPHA_FLOOR)
    alpha_s = cfg.schedule.alpha(s_B)
    if cfg.parameterization == "score":
      log_s = score_entropy.log_scores(logits_BxLxV, x_BxL, alpha_t, 1.0 - alpha_t, states_V, cfg.process)
      return score_entropy.tweedie_probs(log_s, x_BxL, alpha_t, alpha_s, states_V, cfg.process, mask_id)
    logits_BxLxV = logits_BxLxV.astype(jnp.float32)
    if cfg.temperature != 1.0 or cfg.top_k or cfg.top_p < 1.0:
      logits_BxLxV = filter_logits(logits_BxLxV, cfg.temperature, cfg.top_k, cfg.top_p)
    probs_BxLxV = jnp.exp(uniform.state_log_probs(logits_BxLxV, states_V))
    return uniform.reverse_probs(probs_BxLxV, x_BxL, alpha_t, alpha_s, states_V, cfg.parameterization)

  def body(carry, k):
    x_BxL, reveal_step_BxL, conf_BxL, model_carry = carry
    t_B = jnp.full((batch,), 1.0 - k / steps, jnp.float32)
    s_B = jnp.full((batch,), 1.0 - (k + 1) / steps, jnp.float32)
    logits_BxLxV, _, model_carry = denoise_fn(x_BxL, t_B, model_carry)
    probs_BxLxV = transition(logits_BxLxV, x_BxL, t_B, s_B)
    if cfg.greedy or cfg.method == "greedy":
      new_BxL = jnp.argmax(probs_BxLxV, axis=-1).astype(jnp.int32)
    else:
      new_BxL = primitives.categorical(jax.random.fold_in(loop_key, k), jnp.log(probs_BxLxV), cfg.draw_precision)
    new_BxL = jnp.where(fixed_BxL, x_BxL, new_BxL)
    changed_BxL = new_BxL != x_BxL
    prob_BxL = jnp.take_along_axis(probs_BxLxV, new_BxL[..., None], axis=-1)[..., 0]
    reveal_step_BxL = jnp.where(changed_BxL, k, reveal_step_BxL)
    conf_BxL = jnp.where(changed_BxL, prob_BxL, conf_BxL)
    return (new_BxL, reveal_step_BxL, conf_BxL, model_carry), (new_BxL if cfg.record_trajectory else None)

  init = (x_BxL, jnp.full((batch, length), -1, jnp.int32), jnp.zeros((batch, length), jnp.float32), init_carry)
  (x_BxL, reveal_step_BxL, conf_BxL, model_carry), frames = jax.lax.scan(body, init, jnp.arange(steps))
  calls = steps
  if cfg.process == "absorbing":
    def fill(x_BxL):
      logits_BxLxV = denoise_fn(x_BxL, jnp.full((batch,), 1.0 / steps, jnp.float32), model_carry)[0]
      best_BxL = jnp.argmax(jnp.where(jnp.asarray(states_V)[None, None], logits_BxLxV.astype(jnp.float32),
                                      -jnp.inf), axis=-1).astype(jnp.int32)
      return jnp.where(x_BxL == mask_id, best_BxL, x_BxL)

    left_masked = jnp.any(x_BxL == mask_id)
    x_BxL = jax.lax.cond(left_masked, fill, lambda x: x, x_BxL)
    calls = calls + left_masked.astype(jnp.int32)
  trajectory = None
  if cfg.record_trajectory:
    trajectory = jnp.concatenate([init[0][None], frames[:-1], x_BxL[None]])
  return SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=reveal_step_BxL, confidence_BxL=conf_BxL,
                      trajectory_SxBxL=trajectory, steps_B=jnp.full((batch,), steps, jnp.int32),
                      lengths_B=jnp.full((batch,), int(length), jnp.int32) - jnp.sum(fixed_BxL, axis=-1,
                                                                                      dtype=jnp.int32),
                      network_calls=jnp.asarray(calls, jnp.int32))
