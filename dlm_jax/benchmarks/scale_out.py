"""Scale-out accounting: per-device memory of the train state on each mesh shape, and the collectives of the compiled
train step (python -m launch.bench --scale_out).

* Memory: parameter, optimizer-state and EMA bytes per device, computed from the shardings the logical-axis rules
  give (`sharding.bytes_per_device`, no allocation), and with `measure` also read off the devices' buffers after the
  sharded initialization (`sharding.measured_bytes_per_device`).
* Communication: the train step is lowered with abstract inputs (nothing is allocated) and compiled for the mesh; its
  optimized HLO lists every collective XLA's SPMD partitioner inserted. Per collective we count the bytes each device
  sends on a ring of n devices (n = its replica group): all-gather and reduce-scatter (n - 1)/n of the full tensor,
  all-reduce 2 (n - 1)/n, all-to-all (n - 1)/n of its operand, collective-permute all of it. The CPU compiler's HLO is
  the partitioner's plan; a GPU compile may combine or overlap the same collectives differently.
* Projection: with the single-device step time t_1 at the same global batch (measured on the GPU, `launch.bench`) and
  a bus bandwidth W, an n-device step takes between max(t_1 / n, c) (the FLOPs split evenly and the communication
  hidden behind them) and t_1 / n + c (none hidden), c = sent bytes / W. A projection, not a measurement: it ignores
  the lower efficiency of smaller per-device matmuls and any load imbalance.
"""
from __future__ import annotations

import math
import re

import jax
import numpy as np

from dlm_jax import models, objectives
from dlm_jax.models import partitioning
from dlm_jax.training import hf_checkpoints, optimizer, sharding, state as state_lib, step as step_lib

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}
_OP = re.compile(r"=\s*(?P<result>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"(pred|[fsu]\d+|bf16)\[([\d,]*)\]")


def _bytes_of(shapes_text: str) -> int:
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _SHAPE.findall(shapes_text))


def _group_size(line: str, num_devices: int) -> int:
  """The replica group size of a collective: from `replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}` (the
  product of the named axes), `[G,N]<=[...]` (iota groups of N) or `{{0,1,..}}` (explicit); else every device."""
  named = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
  if named:
    sizes = {k.strip("' "): int(v) for k, v in (item.split("=") for item in named.group(1).split(","))}
    return math.prod(sizes[a.strip("' ")] for a in named.group(2).split(",") if a.strip("' "))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if iota:
    return int(iota.group(2))
  explicit = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
  if explicit:
    return len(explicit.group(1).split(","))
  return num_devices


def collectives(hlo_text: str, num_devices: int) -> dict:
  """{op: {"count", "result_bytes", "sent_bytes"}} of the collectives in an optimized HLO module (the per-device
  program), with the bytes one device sends on a ring (module docstring)."""
  out = {op: {"count": 0, "result_bytes": 0, "sent_bytes": 0.0} for op in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    op, result = match.group("op"), match.group("result")
    if match.group("start"):  # an asynchronous pair's start: its result tuple ends with the collective's output
      result = _SHAPE.findall(result)[-1]
      result = f"{result[0]}[{result[1]}]"
    size = _bytes_of(result)
    n = _group_size(line, num_devices)
    if n <= 1:
      continue
    factor = {"all-gather": (n - 1) / n, "all-reduce": 2 * (n - 1) / n, "all-to-all": (n - 1) / n,
              "collective-permute": 1.0}.get(op)
    sent = size * factor if factor is not None else size * (n - 1)  # reduce-scatter: result is 1/n of the input
    out[op]["count"] += 1
    out[op]["result_bytes"] += size
    out[op]["sent_bytes"] += sent
  return out


def _rules(config) -> tuple:
  """The config's logical-axis rules (mesh.rules), without building its mesh: the shapes measured here are others."""
  mesh_cfg = config.get("mesh")
  return (sharding.rules_from_config(mesh_cfg.get("rules")) if mesh_cfg is not None else ()) or \
      partitioning.DEFAULT_RULES


def _setup(config):
  """(config, vocabulary size, optimizer); with train.init_from="hf:PATH" the config takes the checkpoint's model
  (only its config.json is read: nothing is loaded), so e.g. LoRA's per-device bytes of an 8B layout are measured
  from its shapes (bench.vocab_size: the checkpoint's vocabulary)."""
  config = hf_checkpoints.configure(config.copy_and_resolve_references())
  vocab = int(config.bench.vocab_size) or 128
  tx = optimizer.make_optimizer(config.optimizer, int(config.train.num_steps), config.model)
  return config, vocab, tx


def memory_rows(config, mesh_shapes, measure: bool = False) -> list[dict]:
  """Per-device bytes of the train state's parameters, optimizer state and EMA on each (data, fsdp, tensor) shape."""
  config, vocab, tx = _setup(config)
  abstract = state_lib.abstract_state(config, vocab, tx)
  rules = _rules(config)
  rows = []
  for shape in mesh_shapes:
    mesh = sharding.MeshContext(sharding.make_mesh(*shape), rules)
    row = {"mesh": "x".join(map(str, shape))}
    for name in ("params", "opt_state", "ema_params"):
      tree = getattr(abstract, name)
      row[name] = None if tree is None else sharding.bytes_per_device(tree, mesh.shardings(tree))
    row["total"] = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves((abstract.params,
                                                                                    abstract.opt_state)))
    if measure:
      config.mesh.sharded_init = True
      _, _, state = state_lib.init_on_mesh(config, vocab, tx, mesh)
      row["measured_params"] = sharding.measured_bytes_per_device(state.params)
      row["measured_opt_state"] = sharding.measured_bytes_per_device(state.opt_state)
      del state
    rows.append(row)
  return rows


def communication(config, mesh_shape, batch: int | None = None) -> dict:
  """The collectives of `config`'s compiled train step on the (data, fsdp, tensor) mesh at the config's batch and
  data.seq_len (or `batch`), from abstract inputs. The layer loop is unrolled (model.layer_loop="unroll", the GPU
  default), so that each collective in the HLO runs once per step: inside a lax.scan over layers it would run once
  per layer. With train.grad_accum_steps = A > 1 the counts are per micro-batch (the accumulation loop repeats the
  weight gathers A times)."""
  config, vocab, tx = _setup(config)
  config.model.layer_loop = "unroll"
  batch = batch or int(config.train.batch_size)
  seq_len, accum = int(config.data.seq_len), int(config.train.grad_accum_steps)
  mesh = sharding.MeshContext(sharding.make_mesh(*mesh_shape), _rules(config))
  objective = objectives.from_config(config, vocab)
  graphdef, other = state_lib.graph_and_other(config, vocab)
  abstract_state = mesh.abstract(state_lib.abstract_state(config, vocab, tx))
  tokens = jax.ShapeDtypeStruct((accum, batch // accum, seq_len), np.int32, sharding=mesh.train_batch)
  with mesh.activate():
    train_step = step_lib.make_train_step(graphdef, other, objective, tx, float(config.train.ema_decay),
                                          optimizer.learning_rate_schedule(config.optimizer, 10),
                                          mesh.shardings(abstract_state), mesh.train_batch,
                                          trainable=models.trainable_filter(config.model))
    hlo = train_step.lower(abstract_state, tokens).compile().as_text()
  ops = collectives(hlo, mesh.mesh.size)
  param_bytes = sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_state.params))
  return {"mesh": "x".join(map(str, mesh_shape)), "batch": batch, "seq_len": seq_len, "param_bytes": param_bytes,
          "ops": ops, "sent_bytes": sum(o["sent_bytes"] for o in ops.values())}


def projection(step_s_one_device: float, sent_bytes: float, bus_bytes_per_s: float,
               num_devices: int) -> tuple[float, float]:
  """(all communication hidden, none hidden) step-time bounds in seconds of the n-device step at the same global
  batch (module docstring)."""
  compute_s, comm_s = step_s_one_device / num_devices, sent_bytes / bus_bytes_per_s
  return max(compute_s, comm_s), compute_s + comm_s
