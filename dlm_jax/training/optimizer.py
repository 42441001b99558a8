"""optax AdamW with linear warmup + cosine decay, global-norm clipping and decoupled weight decay on matrices only.

Parameter groups with their own learning rate (`lr_scales`): parameters whose path matches a group's regex get
`scale` x the schedule's learning rate, through an optax.multi_transform partition by parameter path (after the
global-norm clipping, which stays global). Today's group: EcoHybrid's slow memory slots (`slow_memory_init`, seed 001
§9.3) at `optimizer.slow_slots_lr_scale`. Without a group the optimizer is the plain chain, so its state has the same
structure as in every earlier checkpoint.
"""
from __future__ import annotations

import re

import jax
import optax

SLOW_SLOTS_PATH = r"(^|/)slow_memory_init(/|$)"


def learning_rate_schedule(opt_config, num_steps: int, scale: float = 1.0):
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to `min_lr_ratio` * peak; all
  multiplied by `scale`."""
  warmup = min(int(opt_config.warmup_steps), max(num_steps - 1, 0))
  peak = float(opt_config.learning_rate) * scale
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
      end_value=peak * float(opt_config.min_lr_ratio))


def lr_scales(opt_config, model_config=None) -> dict[str, float]:
  """{path regex: learning-rate scale} of the parameter groups that differ from the base rate (module docstring)."""
  scales = {}
  if model_config is not None and int(model_config.get("slow_slots", 0) or 0) > 0:
    scale = float(opt_config.get("slow_slots_lr_scale", 1.0))
    if scale <= 0:
      raise ValueError(f"optimizer.slow_slots_lr_scale must be > 0, got {scale}.")
    if scale != 1.0:
      scales[SLOW_SLOTS_PATH] = scale
  return scales


def path_name(path) -> str:
  """'blocks/mlp/w1/value'-style name of a jax tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_labels(params, scales: dict[str, float]):
  """The group label of every leaf: the first regex of `scales` its path matches, or "base"."""
  def label(path, _):
    name = path_name(path)
    return next((pattern for pattern in scales if re.search(pattern, name)), "base")
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(opt_config, num_steps: int, model_config=None) -> optax.GradientTransformation:
  """Built once per run (the transform is static in the compiled step; a new one would recompile). `model_config`
  (config.model) decides the parameter groups (`lr_scales`)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # no decay on norms and biases

  def adamw(scale: float):
    return optax.adamw(learning_rate_schedule(opt_config, num_steps, scale), b1=float(opt_config.b1),
                       b2=float(opt_config.b2), eps=1e-8, weight_decay=float(opt_config.weight_decay),
                       mask=decay_mask)

  scales = lr_scales(opt_config, model_config)
  if scales:
    groups = {"base": adamw(1.0), **{pattern: adamw(scale) for pattern, scale in scales.items()}}
    update = optax.multi_transform(groups, lambda params: param_labels(params, scales))
  else:
    update = adamw(1.0)
  return optax.chain(
      optax.clip_by_global_norm(float(opt_config.grad_clip)) if opt_config.grad_clip else optax.identity(),
      update,
  )
