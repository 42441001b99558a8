"""The pure train state: one pytree of arrays that the jitted step maps to the next, and Orbax saves whole."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax
from flax import nnx

from dlm_jax import models, objectives, special_tokens


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
  # The objective's own state (Objective.initial_state): the importance-sampled times' proposal
  # (diffusion/time_sampling.py); None for every stateless objective. Checkpointed, so a resumed run keeps it.
  objective_state: Any = None


def init_model_and_state(config, vocab_size: int, tx: optax.GradientTransformation, datastore=None,
                         special: special_tokens.SpecialIds = special_tokens.DEFAULT):
  """Returns (graphdef, other_state, TrainState) of the config's model for a tokenizer of `vocab_size` ids with the
  special ids `special`. `other_state` holds the non-Param variables: empty, except for EcoHybrid's retrieval
  datastore (models/retrieval.py), which `datastore` (windows [N, L]) fills."""
  model = models.get_model(config, vocab_size, nnx.Rngs(params=int(config.seed)), special)
  if datastore is not None:
    model.retrieval.fill(datastore)
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  return graphdef, other, state_from_params(config, params, tx)


def state_from_params(config, params, tx: optax.GradientTransformation) -> TrainState:
  """The first TrainState of a run whose parameters are `params`: step 0, a fresh optimizer over the trainable
  parameters (models.trainable_filter: all, or LoRA's adapters), the EMA and a distillation's teacher as copies, the
  objective's own state at its start."""
  ema = jax.tree.map(jax.numpy.copy, params) if float(config.train.ema_decay) > 0 else None
  teacher = jax.tree.map(jax.numpy.copy, params) if objectives.objective_class(config).needs_teacher else None
  trainable = models.split_trainable(params, models.trainable_filter(config.model))[0]
  return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(trainable),
                    ema_params=ema, rng=jax.random.key_data(jax.random.key(int(config.seed) + 1)),
                    teacher_params=teacher,
                    objective_state=objectives.objective_class(config).initial_state(config.diffusion))


def init_on_mesh(config, vocab_size: int, tx: optax.GradientTransformation, mesh, datastore=None,
                 special: special_tokens.SpecialIds = special_tokens.DEFAULT):
  """`init_model_and_state` with the TrainState laid out on `mesh` (training/sharding.MeshContext) by its parameters'
  logical axes. With config `mesh.sharded_init` (default) and more than one device the state is initialized inside
  one jit whose out_shardings are those layouts, so that no device ever holds the whole of an FSDP-split model (the
  values equal the eager ones: the same keys draw the same numbers under jit and sharding, jax_threefry_partitionable);
  otherwise it is built eagerly on the default device and then split (no compilation: seconds sooner on CPU, but the
  whole state must fit on one device)."""
  mesh_cfg = config.get("mesh")
  if mesh.mesh.size == 1 or not (mesh_cfg is None or mesh_cfg.get("sharded_init", True)):
    graphdef, other, state = init_model_and_state(config, vocab_size, tx, datastore, special)
    return graphdef, other, mesh.place(state)
  build = lambda: init_model_and_state(config, vocab_size, tx, datastore, special)[2]
  state = jax.jit(build, out_shardings=mesh.shardings(jax.eval_shape(build)))()
  graphdef, other = graph_and_other(config, vocab_size, datastore, special)
  return graphdef, other, state


def graph_and_other(config, vocab_size: int, datastore=None,
                    special: special_tokens.SpecialIds = special_tokens.DEFAULT):
  """(graphdef, non-parameter state) of the config's model without allocating its parameters: the graph structure
  (which holds the model's config, its mask id included), and the only non-Param state, EcoHybrid's retrieval
  datastore, filled from `datastore` (windows [N, L])."""
  model = nnx.eval_shape(lambda: models.get_model(config, vocab_size, nnx.Rngs(0), special))
  if getattr(model, "retrieval", None) is not None:
    if datastore is None:
      raise ValueError("This model has retrieval slots: pass its datastore windows.")
    model.retrieval.fill(datastore)
  graphdef, _, other = nnx.split(model, nnx.Param, ...)
  return graphdef, other


def abstract_state(config, vocab_size: int, tx):
  """Shapes/dtypes of the TrainState without allocating it (the restore target)."""
  return jax.eval_shape(lambda: init_model_and_state(config, vocab_size, tx)[2])
