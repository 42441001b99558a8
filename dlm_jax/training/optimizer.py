"""optax AdamW with linear warmup + cosine decay, global-norm clipping and decoupled weight decay on matrices only."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(opt_config, num_steps: int):
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to `min_lr_ratio` * peak."""
  warmup = min(int(opt_config.warmup_steps), max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(opt_config.learning_rate), warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=float(opt_config.learning_rate) * float(opt_config.min_lr_ratio))


def make_optimizer(opt_config, num_steps: int) -> optax.GradientTransformation:
  """Built once per run (the transform is static in the compiled step; a new one would recompile)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on norms and biases
  return optax.chain(
      optax.clip_by_global_norm(float(opt_config.grad_clip)) if opt_config.grad_clip else optax.identity(),
      optax.adamw(learning_rate_schedule(opt_config, num_steps), b1=float(opt_config.b1), b2=float(opt_config.b2),
                  eps=1e-8, weight_decay=float(opt_config.weight_decay), mask=decay_mask),
  )
