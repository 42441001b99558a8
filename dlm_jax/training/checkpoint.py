"""Orbax checkpoints of a run: train state (model, optimizer, EMA, step, rng), the Grain iterator, config, tokenizer.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. Orbax writes each step to a temporary directory and renames it
when complete, so an interrupted save never leaves a half checkpoint that a resume would pick up.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import pathlib
import socket
import tempfile
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from dlm_jax import models, objectives
from dlm_jax.data import pipeline, tokenizers
from dlm_jax.models import layers
from dlm_jax.training import optimizer, state as state_lib


class CheckpointError(ValueError):
  """A checkpoint that does not fit the run; the message says what differs and what to do."""


CHECKPOINTS = ("latest", "best")  # what --checkpoint selects: WORKDIR/checkpoints, WORKDIR/best


DATASTORE_FILE = "retrieval_datastore.npy"  # a retrieval run's datastore windows (models/retrieval.py)


def save_datastore(workdir, windows_NxL) -> pathlib.Path:
  """Writes WORKDIR/retrieval_datastore.npy atomically (temporary file + rename)."""
  path = pathlib.Path(workdir) / DATASTORE_FILE
  tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
  np.save(tmp, np.asarray(windows_NxL, np.int32))
  os.replace(tmp, path)
  return path


def load_datastore(workdir):
  """The datastore windows of a retrieval run; CheckpointError naming the file when it is missing."""
  path = pathlib.Path(workdir) / DATASTORE_FILE
  if not path.is_file():
    raise CheckpointError(f"{path} is missing: a run with model.retrieval_slots > 0 keeps its retrieval datastore "
                          "there (written when training starts). Restore the file, or resume training in this workdir "
                          "to write it again from the same data.")
  return np.load(path)


def manager(workdir, max_to_keep: int = 3, save_interval_steps: int = 1, create: bool = True,
            which: str = "latest") -> ocp.CheckpointManager:
  """The run's Orbax manager of WORKDIR/checkpoints ("latest": the resumable ones, with the data iterator) or of
  WORKDIR/best ("best": the one checkpoint with the best validation NELBO so far, without the iterator; its meta holds
  {"best": {"step", "nll_per_token"}}). Created when `create`; read-only users pass False."""
  if which not in CHECKPOINTS:
    raise CheckpointError(f"--checkpoint must be one of {CHECKPOINTS}, got {which!r}.")
  directory = pathlib.Path(workdir).resolve() / ("checkpoints" if which == "latest" else "best")
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep if which == "latest" else 1,
                                         save_interval_steps=save_interval_steps if which == "latest" else 1,
                                         create=create, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def best_so_far(best_mngr: ocp.CheckpointManager) -> dict | None:
  """{"step", "nll_per_token"} of the run's best checkpoint, or None before the first evaluation."""
  step = best_mngr.latest_step()
  if step is None:
    return None
  try:
    return restore_meta(best_mngr, step).get("best")
  except Exception as e:  # damaged: the next evaluation writes a new best
    print(f"WARNING: the best checkpoint {best_mngr.directory}/{step} does not read ({type(e).__name__}); the next "
          "evaluation starts the best-so-far over.", flush=True)
    return None


@contextlib.contextmanager
def workdir_lock(workdir):
  """Holds an exclusive lock on WORKDIR/.lock while a trainer runs (fcntl.flock: released on exit, also when the
  process dies, so a crash leaves no stale lock). A second trainer on the same workdir gets a CheckpointError naming
  the holder's PID and host."""
  path = pathlib.Path(workdir) / ".lock"
  with open(path, "a+", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown process"
      raise CheckpointError(f"{workdir} is in use by another trainer ({holder}). Wait for it to finish, stop it, or "
                            "use another --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)


def check_writable(workdir):
  """Raises CheckpointError within a moment when WORKDIR/checkpoints cannot be written (Orbax would log the error and
  then wait out a 300 s timeout)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test").close()  # create and delete: the probe
  except OSError as e:
    raise CheckpointError(f"{directory} is not writable ({e.strerror}). Fix its permissions, or use another "
                          "--workdir.") from None


# Config fields a resumed run may not change (the model, the data and its tokens, the objective, the batch layout the
# data iterator was saved with); every other change (num_steps, learning rate, eval, sampling, ...) is allowed and
# printed.
FIXED_ON_RESUME = ("model.", "data.", "diffusion.objective", "seed", "train.batch_size", "train.grad_accum_steps")


def migrate_config(saved: dict) -> dict:
  """A run config saved by an older version, in today's names (a config of today passes unchanged). Before thought
  tensors became a wing (dlm_jax/proj/thought/), a thought run was a "transformer" with a non-empty
  model.thought_dims and config.thought.enabled=True with diffusion.objective "elbo"; every other run carried
  model.thought_dims=() (and thought_hidden) and a disabled config.thought. Now the first is model "thought" with
  objective "thought" (config.thought without `enabled`), the others have neither."""
  saved = copy.deepcopy(saved)
  model, thought = saved.get("model"), saved.get("thought")
  if isinstance(model, dict) and model.get("name") == "transformer" and ("thought_dims" in model
                                                                          or "thought_hidden" in model):
    if tuple(model.get("thought_dims") or ()):
      model["name"] = "thought"
    else:
      model.pop("thought_dims", None)
      model.pop("thought_hidden", None)
  if isinstance(thought, dict) and "enabled" in thought:
    if thought.pop("enabled"):
      saved["diffusion"]["objective"] = "thought"
    else:
      del saved["thought"]
  return saved


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
  """(refused, allowed): 'field: saved -> current' for each field both configs have and that differs, split by
  FIXED_ON_RESUME. Fields only one side has (added to the code since the checkpoint) are not compared."""
  def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out.update(flat(value, f"{prefix}{key}."))
      else:
        out[f"{prefix}{key}"] = value
    return out

  before, after = flat(migrate_config(saved)), flat(current)
  changed = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in sorted(set(before) & set(after)) if before[k] != after[k]]
  refused = [c for c in changed if c.split(":")[0].startswith(FIXED_ON_RESUME)]
  return refused, [c for c in changed if c not in refused]


def save(mngr: ocp.CheckpointManager, step: int, state, data_iterator, meta: dict, force: bool = False) -> bool:
  args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return mngr.save(step, args=ocp.args.Composite(**args), force=force)


def restore_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None, step: int | None = None):
  """Restores the state into `abstract_state` (a pytree of ShapeDtypeStruct, each with a sharding: the mesh to restore
  onto, whatever the mesh or device that wrote it) and, if given, the iterator in place. Returns the state.

  A checkpoint written before per-layer parameter trees (its layers' arrays stacked on a leading axis) is restored in
  that layout and split into the per-layer one (`models.layers.per_layer_layout`). A checkpoint whose stored arrays
  have other shapes than `abstract_state` in either layout raises CheckpointError (the config or the code differs from
  the run's); any other failure (a damaged file) propagates as it is."""
  step = mngr.latest_step() if step is None else step
  # The iterator's state (the global batch index) is the same in every process (pipeline.train_iterator), so a run
  # resumed with another number of processes than wrote the checkpoint reads it from any process's file.
  iterator_file = None
  if data_iterator is not None:
    data_dir = pathlib.Path(mngr.directory) / str(step) / "data"
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    others = sorted(data_dir.glob("process_*-of-*.json"))
    iterator_file = None if own.exists() or not others else others[0]

  def restore_as(target, missing=()):
    # `missing`: TrainState fields the checkpoint predates (objective_state): the fields it has are restored, the
    # others start as at step 0 (zeros: the initial objective state) or stay None.
    stored = target
    if missing:
      stored = {name: getattr(target, name) for name in _state_fields(target) if name not in missing}
    args = {"state": ocp.args.StandardRestore(stored)}
    if data_iterator is not None and iterator_file is None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = mngr.restore(step, args=ocp.args.Composite(**args))["state"]
    if iterator_file is not None:
      data_iterator.set_state(json.loads(iterator_file.read_text()))
    if missing:
      restored = target.replace(**restored, **{name: _zeros_like_abstract(getattr(target, name)) for name in missing})
    return restored

  shapes = lambda tree: sorted((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))
  try:
    return restore_as(abstract_state)
  except Exception as e:
    try:
      stored = _stored_shapes(mngr, step)
    except Exception:
      stored = []
    if not stored:
      raise  # the array metadata itself is unreadable: damage
    missing = _fields_added_since(mngr, step, abstract_state)
    present = abstract_state.replace(**{name: None for name in missing}) if missing else abstract_state
    if missing and stored == shapes(present):
      return restore_as(abstract_state, missing)
    stacked_abstract = layers.stacked_layout(abstract_state)
    if stored == shapes(layers.stacked_layout(present)) and stored != shapes(present):
      return layers.per_layer_layout(restore_as(stacked_abstract, missing), abstract_state)
    if stored != shapes(present):
      raise CheckpointError(
          f"Checkpoint step {step} in {mngr.directory} does not match the model/optimizer this config builds (its "
          "arrays have other shapes). Resume with the config it was written with, or use a new --workdir.") from e
    raise


def _state_fields(state) -> list[str]:
  return [field.name for field in dataclasses.fields(state)] if dataclasses.is_dataclass(state) else []


def _fields_added_since(mngr: ocp.CheckpointManager, step: int, abstract_state) -> list[str]:
  """The TrainState fields of `abstract_state` that the checkpoint does not hold (it predates them): [] for a
  checkpoint of this code, or when its metadata cannot be read (the restore then reports what is wrong)."""
  fields = _state_fields(abstract_state)
  try:
    stored = ocp.StandardCheckpointer().metadata(pathlib.Path(mngr.directory) / str(step) / "state").item_metadata
    keys = set(stored.keys())
  except Exception:
    return []
  return [name for name in fields if name not in keys] if "params" in keys else []


def _zeros_like_abstract(tree):
  """Zeros of `tree`'s ShapeDtypeStructs, each on its sharding (None stays None)."""
  def zeros(x):
    value = jax.numpy.zeros(x.shape, x.dtype)
    return jax.device_put(value, x.sharding) if getattr(x, "sharding", None) is not None else value
  return jax.tree.map(zeros, tree)


def _stored_shapes(mngr: ocp.CheckpointManager, step: int) -> list:
  """(shape, dtype) of every array the checkpoint's state holds, sorted, from its metadata."""
  metadata = ocp.StandardCheckpointer().metadata(pathlib.Path(mngr.directory) / str(step) / "state")
  leaves = jax.tree.leaves(metadata.item_metadata, is_leaf=lambda x: hasattr(x, "shape"))
  return sorted((tuple(x.shape), str(x.dtype)) for x in leaves)


def move_aside(mngr: ocp.CheckpointManager, step: int) -> pathlib.Path:
  """Moves checkpoint `step` out of the manager's folder to WORKDIR/checkpoints_damaged/<step> (never deletes it)."""
  source = pathlib.Path(mngr.directory) / str(step)
  target = pathlib.Path(mngr.directory).parent / "checkpoints_damaged" / str(step)
  if target.exists():
    target = target.with_name(f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  target.parent.mkdir(parents=True, exist_ok=True)
  source.rename(target)
  mngr.reload()
  return target


def _report_damage(mngr, step: int, error: Exception):
  reason = (str(error).strip().splitlines() or [""])[0][:200]
  moved = move_aside(mngr, step)
  print(f"WARNING: checkpoint step {step} in {mngr.directory} is damaged ({type(error).__name__}: {reason}); moved it "
        f"to {moved}. Trying the previous checkpoint.", flush=True)


def newest_readable_meta(mngr: ocp.CheckpointManager):
  """(step, meta) of the newest checkpoint whose metadata (config, tokenizer) reads, moving damaged ones aside;
  (None, None) when the folder holds no checkpoint. Raises CheckpointError when checkpoints exist and none reads."""
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return step, restore_meta(mngr, step)
    except Exception as e:  # an unreadable JSON file or missing item: damage
      _report_damage(mngr, step, e)
  if steps:
    raise CheckpointError(f"No checkpoint in {mngr.directory} is intact (all moved to "
                          f"{pathlib.Path(mngr.directory).parent / 'checkpoints_damaged'}). Start over with a new "
                          "--workdir.")
  return None, None


def restore_newest_intact(mngr: ocp.CheckpointManager, abstract_state, data_iterator=None):
  """(step, state) of the newest checkpoint that restores, moving damaged ones aside with a warning that names the
  step and the error. A checkpoint of another model (CheckpointError) stops at once: the config is at fault, not the
  files. Raises CheckpointError naming the folder when none restores."""
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      restore_meta(mngr, step)
      return step, restore(mngr, abstract_state, data_iterator, step)
    except CheckpointError:
      raise
    except Exception as e:
      _report_damage(mngr, step, e)
  raise CheckpointError(f"No checkpoint in {mngr.directory} restores (damaged ones moved to "
                        f"{pathlib.Path(mngr.directory).parent / 'checkpoints_damaged'}). Start over with a new "
                        "--workdir.")


def saved_tokenizer(meta: dict, data_config, workdir):
  """The tokenizer stored in a checkpoint's `meta` (`restore_meta`), after checking that `data_config` asks for the
  same one (a resumed run must keep its token ids). Raises CheckpointError naming the mismatch and what to do."""
  saved = tokenizers.from_dict(meta["tokenizer"])
  if pipeline.tokenizer_kind(data_config.tokenizer) != saved.kind:
    raise CheckpointError(
        f"{workdir} holds a checkpoint trained with a {saved.kind!r} tokenizer but data.tokenizer="
        f"{data_config.tokenizer!r}. Use the same tokenizer, or a new --workdir.")
  if saved.kind != "char":
    current = pipeline.build_tokenizer(data_config)
    if tokenizers.fingerprint(current) != tokenizers.fingerprint(saved):
      named = (f"data.tokenizer_path={data_config.tokenizer_path!r}" if saved.kind == "sentencepiece"
               else f"data.tokenizer={data_config.tokenizer!r}")
      raise CheckpointError(
          f"{named} is not the tokenizer the checkpoint in {workdir} was trained with (vocab {current.vocab_size} vs "
          f"{saved.vocab_size}). Point it at the original one, or use a new --workdir.")
  return saved


def with_sharding(abstract_tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)


@dataclasses.dataclass
class LoadedRun:
  """A trained run, ready for inference: its config and tokenizer, the split model (graphdef, non-parameter state,
  parameters) and the checkpoint step."""
  config: ml_collections.ConfigDict
  tokenizer: Any
  graphdef: Any
  other: Any
  params: Any
  step: int
  weights: str = "raw"  # "ema" or "raw": which parameters `params` are
  checkpoint: str = "latest"  # "latest" or "best"
  workdir: str = ""

  def describe(self) -> str:
    """One line for the launchers' output: which checkpoint and which weights."""
    if self.workdir.startswith("hf:"):  # training/hf_checkpoints.load_run
      return f"{self.workdir}: a Hugging Face checkpoint as imported ({self.config.model.get('family')} layout)"
    kind = "best-validation" if self.checkpoint == "best" else "latest"
    weights = "EMA weights" if self.weights == "ema" else "raw (non-EMA) weights"
    return f"{self.workdir}: {kind} checkpoint, step {self.step}, {weights}"

  @property
  def objective(self) -> objectives.Objective:
    """The run's training objective; `objective.is_autoregressive` says whether it is the causal control arm."""
    return objectives.from_config(self.config, self.tokenizer.vocab_size, self.tokenizer)

  def model(self) -> models.Denoiser:
    return nnx.merge(self.graphdef, self.params, self.other)

  @property
  def model_config(self) -> models.DenoiserConfig:
    """The model's frozen dataclass config (e.g. `.num_layers`)."""
    return models.model_config(self.config, self.tokenizer.vocab_size, self.tokenizer.special)

  def sampler_config(self, **overrides):
    """The run's `sampling.SamplerConfig` (config.sample, its tokenizer's special ids) with `overrides`."""
    from dlm_jax.sampling.config import SamplerConfig
    return SamplerConfig.from_config(self.config, self.tokenizer.special, **overrides)


WEIGHTS = ("ema", "raw")  # what --weights selects


def load_for_inference(workdir, step: int | None = None, weights: str = "ema", which: str = "latest",
                       mesh=None) -> LoadedRun:
  """The latest (or given) checkpoint of a run, or its best by validation (`which="best"`), on the default device or,
  with `mesh` (training/sharding.MeshContext), laid out on that mesh by the parameters' logical axes (whatever the
  mesh the run was trained on).

  The model is rebuilt from the config saved in the checkpoint. `weights="ema"` returns the EMA parameters when the
  run kept them (else the raw ones, and `LoadedRun.weights` says "raw"); "raw" the optimizer's. Raises
  CheckpointError naming the directory when there is nothing to load; creates nothing.
  """
  if weights not in WEIGHTS:
    raise CheckpointError(f"--weights must be one of {WEIGHTS}, got {weights!r}.")
  folder = pathlib.Path(workdir) / ("checkpoints" if which == "latest" else "best")
  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
    raise CheckpointError(f"No run at {workdir} (no {pathlib.Path(workdir) / 'checkpoints'} folder). Check --workdir, "
                          f"or train first: python -m launch.train --workdir={workdir}")
  if which not in CHECKPOINTS:
    raise CheckpointError(f"--checkpoint must be one of {CHECKPOINTS}, got {which!r}.")
  mngr = manager(workdir, create=False, which=which) if folder.is_dir() else None
  if mngr is None or mngr.latest_step() is None:  # only WORKDIR/best can be missing or empty here
    raise CheckpointError(f"The run at {workdir} has no best checkpoint ({folder}): it has not been evaluated yet, or "
                          "was trained before best checkpoints were kept. Use --checkpoint=latest."
                          if which == "best" else
                          f"No checkpoint in {folder}. Train first: python -m launch.train --workdir={workdir}")
  step = mngr.latest_step() if step is None else step
  meta = restore_meta(mngr, step)
  config = ml_collections.ConfigDict(migrate_config(meta["config"]))
  tokenizer = tokenizers.from_dict(meta["tokenizer"])
  tx = optimizer.make_optimizer(config.optimizer, int(config.train.num_steps), config.model)
  abstract = state_lib.abstract_state(config, tokenizer.vocab_size, tx)
  if mesh is None:
    target = with_sharding(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  else:
    target = mesh.abstract(abstract)
  state = restore(mngr, target, None, step)
  mngr.close()
  # The graph structure only: parameters come from the checkpoint; the only non-Param state, a retrieval datastore,
  # from the run's datastore file.
  datastore = load_datastore(workdir) if int(config.model.get("retrieval_slots", 0) or 0) else None
  graphdef, other = state_lib.graph_and_other(config, tokenizer.vocab_size, datastore, tokenizer.special)
  if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(other)):
    raise CheckpointError(f"Model {config.model.name!r} holds non-parameter state that neither checkpoints nor the "
                          "run's files carry.")
  used = "ema" if (weights == "ema" and state.ema_params is not None) else "raw"
  params = state.ema_params if used == "ema" else state.params
  return LoadedRun(config, tokenizer, graphdef, other, params, int(step), used, which, str(workdir))
