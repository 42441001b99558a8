"""Orbax checkpoints of a run: train state (model, optimizer, EMA, step, rng), the Grain iterator, config, tokenizer.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Orbax writes each step to a temporary directory and renames it
when complete, so an interrupted save never leaves a half checkpoint that a resume would pick up.
"""
from __future__ import annotations

import pathlib

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that does not fit the run; the message says what differs and what to do."""


def manager(workdir, max_to_keep: int = 3, save_interval_steps: int = 1) -> ocp.CheckpointManager:
  directory = pathlib.Path(workdir).resolve() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                         create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, meta: dict, force: bool = False) -> bool:
  args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, step: int | None = None):
  """Restores the state into `abstract_state` (a pytree of ShapeDtypeStruct, each with a sharding so that a GPU
  checkpoint restores on CPU) and, if given, the iterator in place. Returns the state."""
  step = mngr.latest_step() if step is None else step
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"Checkpoint step {step} in {mngr.directory} does not match the model/optimizer this config builds ({e}). "
        "Resume with the config it was written with, or use a new --workdir.") from e
  return restored["state"]


def with_sharding(abstract_tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)
