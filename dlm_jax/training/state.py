"""The pure train state: one pytree of arrays that the jitted step maps to the next, and Orbax saves whole."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax
from flax import nnx

from dlm_jax import models


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of optimizer updates applied
  params: Any  # nnx.State of the model's nnx.Param variables
  opt_state: optax.OptState
  ema_params: Any  # same structure as params, or None when train.ema_decay == 0
  rng: jax.Array  # base key; step k uses fold_in(rng, k)
  # Distillation (diffusion.objective="dcd"): the teacher's parameters, refreshed from params at each round's start;
  # None otherwise. Part of the state, so an interrupted distillation resumes with its teacher.
  teacher_params: Any = None


def init_model_and_state(config, vocab_size: int, tx: optax.GradientTransformation, datastore=None):
  """Returns (graphdef, other_state, TrainState). `other_state` holds the non-Param variables: empty, except for
  EcoHybrid's retrieval datastore (models/retrieval.py), which `datastore` (windows [N, L]) fills."""
  model = models.get_model(config, vocab_size, nnx.Rngs(params=int(config.seed)))
  if datastore is not None:
    model.retrieval.fill(datastore)
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  ema = jax.tree.map(jax.numpy.copy, params) if float(config.train.ema_decay) > 0 else None
  teacher = jax.tree.map(jax.numpy.copy, params) if config.diffusion.objective == "dcd" else None
  state = TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params),
                     ema_params=ema, rng=jax.random.key_data(jax.random.key(int(config.seed) + 1)),
                     teacher_params=teacher)
  return graphdef, other, state


def abstract_state(config, vocab_size: int, tx):
  """Shapes/dtypes of the TrainState without allocating it (the restore target)."""
  return jax.eval_shape(lambda: init_model_and_state(config, vocab_size, tx)[2])
