"""The jitted train and eval steps: pure functions of (TrainState, batch), the model merged inside.

Following flax's gemma example and GUIDE §3, the NNX model is split once into (graphdef, params, other); the step
merges it inside the differentiated function, so the hot loop pays no Python graph traversal. Gradient accumulation is
a `lax.scan` over micro-batches inside the one compiled step (batch shape [accum, B_micro, L]); the state buffer is
donated; step k's randomness is fold_in(rng, k) (big_vision).
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dlm_jax.diffusion.objectives import DiffusionObjective
from dlm_jax.training.state import TrainState


def denoise_fn(graphdef, params, other, *, deterministic: bool, dropout_key=None, with_aux: bool = False):
  """The (x_BxL, t_B) -> logits callable of a split NNX model, as DiffusionObjective expects. With `with_aux`, a model
  that has `forward_with_aux` returns (logits, auxiliary losses) instead (training adds them; evaluation does not)."""

  def fn(x_BxL, t_B):
    # Merged per call (trace-time only): a module merged outside a lax.scan must not be used inside it.
    model = nnx.merge(graphdef, params, other)
    forward = model.forward_with_aux if (with_aux and hasattr(model, "forward_with_aux")) else model
    return forward(x_BxL, t_B, deterministic=deterministic, dropout_key=dropout_key)

  return fn


def make_train_step(graphdef, other, objective: DiffusionObjective, tx: optax.GradientTransformation,
                    ema_decay: float, lr_schedule, state_sharding=None, batch_sharding=None):
  """Returns jitted `train_step(state, batch_AxBxL) -> (state, metrics)`."""

  def loss_fn(params, x0_BxL, key):
    loss_key, dropout_key = jax.random.split(key)
    fn = denoise_fn(graphdef, params, other, deterministic=False, dropout_key=dropout_key, with_aux=True)
    return objective(fn, x0_BxL, loss_key)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch_AxBxL):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    accum = batch_AxBxL.shape[0]

    def micro_step(grads_acc, inputs):
      index, x0_BxL = inputs
      (_, metrics), grads = grad_fn(state.params, x0_BxL, jax.random.fold_in(step_key, index))
      return jax.tree.map(jnp.add, grads_acc, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, metrics = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), batch_AxBxL))
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics.update(grad_norm=optax.global_norm(grads), update_norm=optax.global_norm(updates),
                   param_norm=optax.global_norm(params), learning_rate=lr_schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,), in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, None))


def make_eval_step(graphdef, other, objective: DiffusionObjective):
  """Returns jitted `eval_step(params, x0_BxL, key) -> nats per token` (one antithetic-t estimate, no dropout)."""

  @jax.jit
  def eval_step(params, x0_BxL, key):
    loss, _ = objective(denoise_fn(graphdef, params, other, deterministic=True), x0_BxL, key)
    return loss

  return eval_step


def evaluate(eval_step, params, windows_NxL, batch_size: int, seed: int, time_samples: int, place=None):
  """Mean NELBO (or AR NLL) in nats per token over fixed windows; deterministic for a seed: batch i, repeat r use
  key fold_in(fold_in(key(seed), r), i). Each batch draws its own antithetic times."""
  n = windows_NxL.shape[0]
  batch_size = min(batch_size, n)
  num_batches = n // batch_size
  base = jax.random.key(seed)
  total = 0.0
  for r in range(time_samples):
    for i in range(num_batches):
      batch = windows_NxL[i * batch_size:(i + 1) * batch_size]
      batch = place(batch) if place is not None else batch
      total += float(eval_step(params, batch, jax.random.fold_in(jax.random.fold_in(base, r), i)))
  return total / (time_samples * num_batches)
