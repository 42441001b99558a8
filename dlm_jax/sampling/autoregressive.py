"""Left-to-right decoding for the causal control arm (diffusion.objective="autoregressive")."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dlm_jax.sampling.primitives import SampleOutput, draw, sampling_logits


def autoregressive_sample(logits_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg) -> SampleOutput:
  """Left-to-right sampling for the causal control arm: every position i >= 1 that is not fixed gets a token drawn from
  the full-length forward pass's prediction at i - 1 (no KV cache: the control arm's reference decoder, not a fast
  one), with cfg's greedy / temperature / top-k / top-p; the reveal step of position i is i - 1 and its confidence the
  model's probability of the token. Position 0 must be fixed (a prompt, or EOS: "a document starts here").
  `cfg.record_trajectory` keeps the tokens after every position ([L, B, L])."""
  batch, length = tokens_BxL.shape
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, cfg.special.mask).astype(jnp.int32)

  def step(carry, i):
    x_BxL, reveal_step_BxL, conf_BxL = carry
    logits = sampling_logits(logits_fn(x_BxL, jnp.zeros((batch,), jnp.float32)), cfg.special)[:, i - 1]
    nxt_B = draw(logits, cfg, jax.random.fold_in(rng, i))
    prob_B = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), nxt_B[:, None], axis=-1)[:, 0]
    new_B = ~fixed_BxL[:, i]
    x_BxL = x_BxL.at[:, i].set(jnp.where(new_B, nxt_B, x_BxL[:, i]))
    reveal_step_BxL = reveal_step_BxL.at[:, i].set(jnp.where(new_B, i - 1, -1))
    conf_BxL = conf_BxL.at[:, i].set(jnp.where(new_B, prob_B, 0.0))
    return (x_BxL, reveal_step_BxL, conf_BxL), (x_BxL if cfg.record_trajectory else None)

  init = (x_BxL, jnp.full((batch, length), -1, jnp.int32), jnp.zeros((batch, length), jnp.float32))
  (x_BxL, reveal_step_BxL, conf_BxL), steps = jax.lax.scan(step, init, jnp.arange(1, length))
  trajectory = jnp.concatenate([init[0][None], steps]) if cfg.record_trajectory else None
  return SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=reveal_step_BxL, confidence_BxL=conf_BxL,
                      trajectory_SxBxL=trajectory)
