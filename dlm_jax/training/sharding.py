"""The device mesh and the shardings of the train state and batches (data parallelism over all local devices).

`jax.make_mesh` defaults to Explicit axis types in jax 0.10-0.11, which breaks `nnx.Embed`-style gathers under jit;
the mesh here uses Auto axes.
"""
from __future__ import annotations

import dataclasses

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlm_jax.errors import ConfigError


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh ("data") over all local devices."""
  return jax.make_mesh((jax.local_device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Replicated state; training batches [A, B, L] split over "data" along B; evaluation windows [N, L] along N."""
  mesh: jax.sharding.Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def train_batch(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(None, "data"))

  @property
  def eval_batch(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("data"))


def check_batch_size(global_batch: int, accum: int):
  if global_batch % (accum * jax.device_count()):
    raise ConfigError(f"train.batch_size={global_batch} must be divisible by train.grad_accum_steps={accum} x "
                     f"{jax.device_count()} device(s).")
