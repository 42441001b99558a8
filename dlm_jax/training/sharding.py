"""The device mesh ("data", "fsdp", "tensor"), the shardings derived from the logical-axis rules, multi-host start-up.

One SPMD program for 1 device, 8 GPUs or many hosts (the MaxText/nanodo recipe, no home-made scheme):

* The mesh has three axes, sized by the config: `mesh.data` (pure data parallelism: parameters replicated),
  `mesh.fsdp` (data parallelism with every parameter and optimizer moment split: ZeRO-3/FSDP; XLA all-gathers a weight
  where it is used and reduce-scatters its gradient) and `mesh.tensor` (Megatron-style tensor parallelism of the MLP
  hidden and attention-head dimensions). One size may be -1: all remaining devices.
* Parameters carry logical axis names (models/partitioning.py); `mesh.rules` maps each name to mesh axes. The train
  state's shardings (parameters, EMA, the optimizer's moments, which mirror the parameters' tree and metadata) come
  from those names; scalars and RNG keys are replicated. Batches split their batch axis over the "batch" rule's axes
  (data x fsdp by default).
* The train step is jitted with those in/out shardings under `MeshContext.activate()` (the mesh and the rules in
  force), where the denoisers constrain their activations at block boundaries (partitioning.constrain).
* Multi-host: `initialize_distributed` (jax.distributed.initialize, under SLURM or with a coordinator address); each
  process feeds the rows of the global batch that its devices hold (pipeline.train_iterator's shard), and
  `jax.make_array_from_process_local_data` assembles the global array.

`jax.make_mesh` defaults to Explicit axis types in jax 0.10-0.11, which breaks `nnx.Embed`-style gathers under jit;
the mesh here uses Auto axes (XLA's SPMD partitioner propagates the shardings).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import grain
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlm_jax.errors import ConfigError
from dlm_jax.models import partitioning

MESH_AXES = ("data", "fsdp", "tensor")


def rules_from_config(rules_cfg) -> tuple:
  """The logical-axis rules of config `mesh.rules`: each field a logical name, its value the mesh axes it is split
  over, comma-separated ("data,fsdp"), or "" for replicated. Raises ConfigError naming an unknown mesh axis."""
  rules = []
  for name, value in (rules_cfg.items() if rules_cfg is not None else ()):
    axes = tuple(a.strip() for a in str(value or "").split(",") if a.strip())
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f"mesh.rules.{name}={value!r} names mesh axes {unknown}; the mesh axes are {MESH_AXES} "
                        "(comma-separated, or '' for replicated).")
    rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return tuple(rules)


def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int | None = None) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with a -1 filled in so that their product is the device count; ConfigError otherwise."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  sizes = [int(data), int(fsdp), int(tensor)]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh.data/fsdp/tensor = {sizes}: each must be a positive size, one of them may be -1 (all "
                      "remaining devices).")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise ConfigError(f"mesh.data/fsdp/tensor = {sizes}: {num_devices} device(s) are not divisible by {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh.data x mesh.fsdp x mesh.tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)}, "
                      f"but there are {num_devices} device(s). Make the product the device count (or set one to -1).")
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> jax.sharding.Mesh:
  """The ("data", "fsdp", "tensor") mesh over every device of every process (Auto axis types)."""
  return jax.make_mesh(mesh_shape(data, fsdp, tensor), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


@dataclasses.dataclass(frozen=True)
class MeshContext:
  """A mesh with its logical-axis rules: the shardings of train states and batches, and the context to trace in."""
  mesh: jax.sharding.Mesh
  rules: tuple = partitioning.DEFAULT_RULES

  @classmethod
  def from_config(cls, config) -> "MeshContext":
    """From config.mesh (data/fsdp/tensor sizes and rules); a config without one gets a data-parallel mesh."""
    mesh_cfg = config.get("mesh")
    if mesh_cfg is None:
      return cls(make_mesh())
    rules = rules_from_config(mesh_cfg.get("rules")) or partitioning.DEFAULT_RULES
    return cls(make_mesh(mesh_cfg.get("data", -1), mesh_cfg.get("fsdp", 1), mesh_cfg.get("tensor", 1)), rules)

  @classmethod
  def from_flag(cls, spec: str, flag: str = "--mesh") -> "MeshContext | None":
    """The mesh of a launcher flag "DATA,FSDP,TENSOR" (e.g. "-1,1,1": data parallel over every device; "1,-1,1":
    FSDP), with the default rules; None for "" (one device)."""
    if not spec:
      return None
    try:
      sizes = [int(x) for x in spec.split(",")]
    except ValueError:
      sizes = []
    if len(sizes) != 3:
      raise ConfigError(f"{flag}={spec!r}: give three sizes DATA,FSDP,TENSOR (one may be -1), e.g. {flag}=-1,1,1.")
    return cls(make_mesh(*sizes))

  def place_rows(self, rows_NxL):
    """A host batch every process holds whole (sampler prompts, evaluation windows) on the mesh: split over the batch
    axes when its rows divide evenly, else replicated."""
    rows_NxL = np.asarray(rows_NxL)
    if len(rows_NxL) % self.batch_ways:
      return jax.device_put(rows_NxL, self.replicated)
    sharding = self.batch_sharding(rows_NxL.ndim, 0)
    mine = rows_NxL
    if jax.process_count() > 1:
      shard = self.data_shard(len(rows_NxL), sharding)
      size = len(rows_NxL) // shard.shard_count
      mine = rows_NxL[shard.shard_index * size:(shard.shard_index + 1) * size]
    return jax.make_array_from_process_local_data(sharding, mine, rows_NxL.shape)

  @contextlib.contextmanager
  def activate(self):
    """The mesh and the rules in force: jitted functions traced inside constrain their activations accordingly."""
    with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
      yield self

  def bind(self, fn):
    """`fn` (a jitted function) called, and so traced, under `activate()`; the wrapper keeps `fn` as `.fn`."""
    def call(*args, **kwargs):
      with self.activate():
        return fn(*args, **kwargs)
    call.fn = fn
    return call

  def describe(self) -> str:
    return " x ".join(f"{name}={size}" for name, size in self.mesh.shape.items())

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_axes(self):
    """The mesh axes of the logical "batch" axis (data x fsdp by default)."""
    return partitioning.mesh_axes((partitioning.BATCH,), self.rules)[0]

  @property
  def batch_ways(self) -> int:
    """Into how many parts a batch is split."""
    axes = self.batch_axes
    names = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[n] for n in names)

  def batch_sharding(self, ndim: int = 2, batch_axis: int = 0) -> NamedSharding:
    """Arrays whose axis `batch_axis` is the batch: split over the batch's mesh axes, the rest replicated."""
    spec = [None] * ndim
    spec[batch_axis] = self.batch_axes
    return NamedSharding(self.mesh, P(*spec))

  @property
  def train_batch(self) -> NamedSharding:
    """Training batches [A, B, L] (A gradient-accumulation micro-batches), split along B."""
    return self.batch_sharding(3, 1)

  @property
  def eval_batch(self) -> NamedSharding:
    """Evaluation windows and sampler rows [N, L], split along N."""
    return self.batch_sharding(2, 0)

  def data_shard(self, rows: int, sharding: NamedSharding | None = None, axis: int = 0) -> grain.sharding.ShardOptions:
    """Which block of `rows` batch rows this process feeds under `sharding` (default: split over the batch's mesh
    axes): shard s of S holds rows rows/S * s .. rows/S * (s + 1) - 1. With the batch split over every process this
    is grain.sharding.ShardByJaxProcess(); when processes share rows (batch axes that do not span the processes,
    e.g. pure tensor parallelism) several processes feed the same block."""
    sharding = sharding or self.batch_sharding(1, 0)
    shape = [1] * max(len(sharding.spec), axis + 1)
    shape[axis] = rows
    spans = sorted({(s[axis].start or 0, rows if s[axis].stop is None else s[axis].stop)
                    for s in sharding.addressable_devices_indices_map(tuple(shape)).values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start or rows % (stop - start) or start % (stop - start):
      raise ConfigError(f"This process's devices hold rows {spans} of a {rows}-row batch on the mesh "
                        f"({self.describe()}): not one aligned block. Order the mesh so that each process's devices "
                        "are neighbours along the batch axes (jax.make_mesh does on GPU/TPU/CPU clusters).")
    return grain.sharding.ShardOptions(shard_index=start // (stop - start), shard_count=rows // (stop - start))

  def leaf_sharding(self, leaf) -> NamedSharding:
    """A parameter-like Variable: the mesh axes of its logical names (partitioning.fit_spec); anything else (steps,
    counts, RNG keys, non-annotated state) replicated."""
    if isinstance(leaf, nnx.Variable):
      axes = leaf.get_metadata().get("out_sharding")
      value = leaf.get_value()
      if axes and hasattr(value, "shape"):
        spec = partitioning.fit_spec(value.shape, partitioning.mesh_axes(axes, self.rules), dict(self.mesh.shape))
        return NamedSharding(self.mesh, spec)
    return self.replicated

  def shardings(self, tree):
    """The NamedSharding of every array of `tree` (a TrainState, parameters, ...; arrays or ShapeDtypeStructs), as a
    tree of the same structure (Variables keep their place, holding their sharding)."""
    def one(x):
      sharding = self.leaf_sharding(x)
      return x.replace(sharding) if isinstance(x, nnx.Variable) else sharding
    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))

  def abstract(self, tree):
    """`tree` as ShapeDtypeStructs carrying their shardings on this mesh (an Orbax restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, self.shardings(tree))

  def place(self, tree):
    """`tree` (host or single-device arrays) laid out on the mesh by `shardings`."""
    return jax.device_put(tree, self.shardings(tree))

  def check_batch(self, global_batch: int, accum: int, what: str = "train.batch_size"):
    """ConfigError unless each micro-batch splits evenly over the batch's mesh axes and over the processes."""
    if global_batch % accum:
      raise ConfigError(f"{what}={global_batch} must be divisible by train.grad_accum_steps={accum}.")
    micro, ways = global_batch // accum, max(self.batch_ways, jax.process_count())
    if micro % ways:
      raise ConfigError(f"{what}={global_batch} / train.grad_accum_steps={accum} = {micro} sequences per micro-batch "
                        f"must be divisible by the {self.batch_ways} batch shards of the mesh ({self.describe()}, "
                        f"batch over {self.batch_axes}) and by the {jax.process_count()} process(es).")


def bytes_per_device(tree, shardings=None) -> int:
  """Bytes that the largest-loaded device holds of `tree` when laid out by `shardings` (a matching tree of
  NamedShardings; default: each array's own sharding), computed from the shard shapes."""
  leaves = jax.tree.leaves(tree)
  sharding_leaves = jax.tree.leaves(shardings) if shardings is not None else [x.sharding for x in leaves]
  per_device = {}
  for x, sharding in zip(leaves, sharding_leaves, strict=True):
    size = math.prod(sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    for device in sharding.device_set:
      per_device[device] = per_device.get(device, 0) + size
  return max(per_device.values()) if per_device else 0


def measured_bytes_per_device(tree) -> int:
  """Bytes that the largest-loaded addressable device actually holds of the arrays of `tree` (their shards' buffers)."""
  per_device = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values()) if per_device else 0


# -- multi-host ----------------------------------------------------------------------------------------------------


DISTRIBUTED_MODES = ("auto", "on", "off")


def cluster_detected() -> bool:
  """Whether this process was launched by a cluster manager JAX can read (SLURM, Open MPI) or given a coordinator."""
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID") and
              int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("OMPI_COMM_WORLD_SIZE"))


def initialize_distributed(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> bool:
  """Starts JAX's multi-controller runtime (jax.distributed.initialize) and returns whether it did.

  mode "auto": when a coordinator address is given or a cluster launch is detected (SLURM with more than one task,
  Open MPI, JAX_COORDINATOR_ADDRESS); "on": always (on SLURM, JAX reads the coordinator, process count and id from the
  environment); "off": never (single process). `num_processes`/`process_id` (0/-1: from the environment) go with an
  explicit coordinator address "host:port" reachable from every process. On CPU the processes' collectives run over
  gloo (TCP)."""
  if mode not in DISTRIBUTED_MODES:
    raise ConfigError(f"--distributed must be one of {DISTRIBUTED_MODES}, got {mode!r}.")
  if mode == "off" or (mode == "auto" and not coordinator_address and not cluster_detected()):
    return False
  if coordinator_address and (num_processes < 1 or process_id < 0):
    raise ConfigError(f"--coordinator_address={coordinator_address} needs --num_processes (>= 1) and --process_id "
                      "(0 .. num_processes - 1) for this process.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs use NCCL
  kwargs = {}
  if coordinator_address:
    kwargs = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  jax.distributed.initialize(**kwargs)
  return True


def is_primary() -> bool:
  """Whether this process writes the run's host-side files (metrics, samples, datastore): process 0."""
  return jax.process_index() == 0
