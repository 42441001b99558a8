"""The jitted train step: a pure function of (TrainState, batch), the model merged inside.

Following flax's gemma example, the NNX model is split once into (graphdef, params, other); the step merges it inside
the differentiated function, so the hot loop pays no Python graph traversal (NNX's graph traversal costs ~ms per call).
Gradient accumulation is a `lax.scan` over micro-batches inside the one compiled step (batch shape [A, B_micro, L]);
the state buffer is donated; step k's randomness is fold_in(rng, k) (big_vision).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dlm_jax import models
from dlm_jax.objectives import Objective
from dlm_jax.training.state import TrainState


def ema_decay_at(step, ema_decay: float, warmup: bool):
  """The EMA's decay for the update that follows `step` updates: `ema_decay`, or with `warmup`
      decay_t = min(ema_decay, (1 + t) / (10 + t))
  (the num_updates warm-up of TensorFlow's ExponentialMovingAverage), so that early on the average follows the
  weights instead of staying near their initialization: at 0.9999 without it, step 1,300 still weighs the initial
  weights by 0.9999^1300 = 0.88."""
  if not warmup:
    return jnp.asarray(ema_decay, jnp.float32)
  t = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(ema_decay), (1.0 + t) / (10.0 + t))


def make_train_step(graphdef, other, objective: Objective, tx: optax.GradientTransformation,
                    ema_decay: float, lr_schedule, state_sharding=None, batch_sharding=None, ema_warmup: bool = True,
                    skip_nonfinite: bool = False, trainable=None):
  """Returns jitted `train_step(state, batch_AxBxL) -> (state, metrics)`. With `skip_nonfinite` (train.nan_policy
  "skip_step"), an update whose loss, gradient or new parameters are not finite is dropped: the parameters, optimizer
  moments, EMA and the objective's own state stay as they were, the step counter (and so the data and the schedule)
  advances, and metrics["skipped"] is 1. `trainable` (models.trainable_filter; None: every parameter): the parameters
  that are differentiated and updated (LoRA's adapters); the others are held fixed and get no gradient, and the
  optimizer state (`state.opt_state`) covers the trainable ones only."""

  def loss_fn(trainable_params, frozen_params, x0_BxL, key, step, teacher_params, objective_state):
    params = models.join_trainable(trainable_params, frozen_params)
    loss_key, dropout_key = jax.random.split(key)
    fn = models.denoise_fn(graphdef, params, other, deterministic=False, dropout_key=dropout_key)
    teacher_fn = None if teacher_params is None else models.denoise_fn(graphdef, teacher_params, other)
    # (the objective's own state only when it has one: a stateless objective's __call__ may not take it)
    stateful = {} if objective_state is None else {"objective_state": objective_state}
    return objective(fn, x0_BxL, loss_key, step=step, teacher_fn=teacher_fn, **stateful)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch_AxBxL):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    accum = batch_AxBxL.shape[0]
    teacher = state.teacher_params
    if teacher is not None:  # distillation: the teacher becomes the student at the start of every round
      refresh = state.step % objective.distill_round_steps == 0
      teacher = jax.tree.map(lambda p, t: jnp.where(refresh, p, t), state.params, teacher)

    trainable_params, frozen_params = models.split_trainable(state.params, trainable)

    def micro_step(grads_acc, inputs):
      index, x0_BxL = inputs
      (_, metrics), grads = grad_fn(trainable_params, frozen_params, x0_BxL, jax.random.fold_in(step_key, index),
                                    state.step, teacher, state.objective_state)
      stats = metrics.pop("objective_stats", None)  # the objective's state update, summed below, not logged
      return jax.tree.map(jnp.add, grads_acc, grads), (metrics, stats)

    zeros = jax.tree.map(jnp.zeros_like, trainable_params)
    grads, (metrics, stats) = jax.lax.scan(micro_step, zeros, (jnp.arange(accum), batch_AxBxL))
    grads = jax.tree.map(lambda g: g / accum, grads)
    metrics = jax.tree.map(jnp.mean, metrics)
    objective_state = state.objective_state
    if stats is not None:
      objective_state = objective.update_state(objective_state, jax.tree.map(lambda x: jnp.sum(x, axis=0), stats))
    updates, opt_state = tx.update(grads, state.opt_state, trainable_params)
    params = models.join_trainable(optax.apply_updates(trainable_params, updates), frozen_params)
    ema = state.ema_params
    if ema is not None:
      decay = ema_decay_at(state.step, ema_decay, ema_warmup)
      ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    metrics.update(grad_norm=optax.global_norm(grads), update_norm=optax.global_norm(updates),
                   param_norm=optax.global_norm(params), learning_rate=lr_schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                              teacher_params=teacher, objective_state=objective_state)
    if skip_nonfinite:
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["param_norm"])
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      new_state = new_state.replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                                    ema_params=None if ema is None else keep(ema, state.ema_params),
                                    # (a non-finite loss's statistics would poison the importance proposal for good)
                                    objective_state=keep(objective_state, state.objective_state))
      metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,), in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, None))
