"""Logical axis names of parameters and activations, and their mapping to mesh axes (MaxText's logical-axis rules).

Every parameter of the three denoisers is created with the logical names of its dimensions as Flax NNX variable
metadata (`out_sharding`, via `logical`), e.g. the token embedding [V, D] is ("vocab", "embed"), an MLP's up projection
[D, F] ("embed", "mlp"). A rules table maps each logical name to mesh axes (None: replicated over the mesh), e.g.

    ("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"), ...

so that FSDP (ZeRO-3: every parameter and its optimizer moments split over "fsdp") and tensor parallelism (Megatron's
split of the MLP hidden and attention-head dimensions over "tensor") are both nothing but a table; the table lives in
the config (`mesh.rules`, training/sharding.py). The metadata does nothing without a mesh: a model built and run
outside `sharding.MeshContext` is the plain single-device model.

A dimension whose size the mesh axes do not divide (a 67-character vocabulary over tensor=2, a [D, 1] head) stays
replicated (`fit_spec`): jit requires evenly divisible shardings, and such small tensors cost nothing to replicate.

Activations: `constrain(x, logical_axes)` is `jax.lax.with_sharding_constraint` under the active mesh and rules, and
the identity outside them. The denoisers constrain their residual stream (and EcoHybrid's memory, HRM's states) at
every block boundary to ("batch", "length", "act_embed"): batch over data x fsdp, replicated over "tensor" (Megatron's
layout between blocks); inside a block XLA's SPMD partitioner chooses.

Fused projections (attention's [D, 3D] qkv, SwiGLU's [D, 2F] gate|up) are split contiguously over "tensor", which does
not align with their q|k|v or gate|up halves: correct, at the price of a resharding per block under tensor > 1.
"""
from __future__ import annotations

import math

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P

# The logical names the denoisers use (the rules table maps each to mesh axes).
BATCH, LENGTH, ACT_EMBED = "batch", "length", "act_embed"  # activations
EMBED, MLP, HEADS, KV, VOCAB, LAYERS, SLOTS, NORM = "embed", "mlp", "heads", "kv", "vocab", "layers", "slots", "norm"

# The default table (config mesh.rules): FSDP over "fsdp", tensor parallelism over "tensor", batch over data x fsdp.
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (EMBED, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (KV, None),
    (VOCAB, "tensor"),
    (LAYERS, None),
    (SLOTS, None),
    (NORM, None),
)


def logical(*axes) -> dict:
  """Variable metadata naming a parameter's dimensions: `nnx.Param(value, **logical("vocab", "embed"))`, or
  `kernel_metadata=logical("embed", "mlp")` for nnx.Linear. Eager sharding is off: the parameter is created on the
  default device and placed on the mesh by the trainer (training/sharding.py)."""
  return {"out_sharding": tuple(axes), "eager_sharding": False}


def active_rules():
  """The logical-axis rules in force (`nnx.logical_axis_rules`), () outside them."""
  return tuple(flax_spmd.get_logical_axis_rules())


def mesh_axes(logical_axes, rules) -> tuple:
  """The mesh axes of each logical name under `rules` (a name absent from the rules, or None, is replicated)."""
  table = dict(rules)
  return tuple(table.get(name) if name is not None else None for name in logical_axes)


def fit_spec(shape, axes, mesh_shape: dict) -> P:
  """PartitionSpec(*axes) with every dimension that its mesh axes do not divide evenly (or that would reuse a mesh
  axis an earlier dimension took) replicated instead."""
  used, out = set(), []
  for size, entry in zip(shape, tuple(axes) + (None,) * (len(shape) - len(axes))):
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    names = tuple(n for n in names if mesh_shape.get(n, 1) > 1 and n not in used)
    ways = math.prod(mesh_shape[n] for n in names)
    if not names or size % ways:
      out.append(None)
      continue
    used.update(names)
    out.append(names[0] if len(names) == 1 else names)
  return P(*out)


def constrain(x, logical_axes):
  """x constrained to the mesh axes of `logical_axes` under the active mesh and rules; x itself outside them."""
  rules = active_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  return jax.lax.with_sharding_constraint(x, fit_spec(x.shape, mesh_axes(logical_axes, rules), dict(mesh.shape)))


def constrain_batch(tree):
  """Every array of `tree` (a block's carry: residual stream, memory slots, ...) constrained to ("batch", ...): its
  leading axis over the batch's mesh axes, the rest replicated."""
  return jax.tree.map(lambda x: constrain(x, (BATCH,) + (None,) * (x.ndim - 1)) if x.ndim else x, tree)
