"""Does XLA leave EcoHybrid's hot path memory-bound? The measurement that decides whether a fused kernel pays.

The hot path of an EcoBlock (dlm_jax/models/eco_hybrid.py) is its mixing path `EcoBlock.mix`, everything but its FFN:
  h <- h + DWConv(RMSNorm(h));  mem <- mem + Attn(RMSNorm(mem), RMSNorm(h));  h <- h + Attn(RMSNorm(h), RMSNorm(mem)).
For B x L tokens of width D, M slots, H heads, kernel k, its matmul FLOPs are (forward), with the slot attentions in
the "projected" form (model.memory_attention)
  2 B L D (k + 4 D)     conv taps; the k/v (write: 2D), q (read: D) and output (read: D) projections of the tokens
+ 8 B M D^2             the q (write), output (write) and k/v (read) projections of the slots
+ 8 B L M D             scores and weighted sums of the two attentions (L x M each),
and in the "absorbed" and "pallas" forms (the tokens are never projected; layers.CrossAttention)
  2 B L D k             conv taps
+ 8 B L H M D           write logits and pooling, read logits and values (H M D multiply-adds each per token)
+ 16 B M D^2            the slots' projections (write q, v, output; read k/v) and the foldings of W into them,
and 3x that for forward + backward. Its unavoidable HBM traffic is one read of its inputs (h, mem, parameters) and one
write of its outputs; everything XLA writes and reads back between its kernels comes on top.

`analyze` compiles the hot path (forward, and forward + backward), counts the kernels XLA launches (`kernel_census` of
the optimized HLO), takes XLA's post-fusion `bytes accessed`, times it, measures the device's copy bandwidth on the
spot, and compares with the roofline:
  t_roof(bytes) = max(FLOPs / peak FLOP/s, bytes / copy bandwidth).
Decision rule (written down before any GPU number was seen): a fused Pallas kernel is worth writing when the hot path
is memory-bound under XLA (XLA bytes / bandwidth > FLOPs / peak) and a kernel that moved only the unavoidable bytes
would be at least 1.5x faster than XLA's measured time (t_measured / t_roof(ideal bytes) >= 1.5). On a device without
a known FLOP peak (CPU) the FLOP side is left out and no verdict is given.
"""
from __future__ import annotations

import collections
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.models.eco_hybrid import EcoBlock
from dlm_jax.training import metrics

_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (?:\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\((.*)$")
_NO_KERNEL = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional", "call",
              "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "copy-start", "copy-done"}


def kernel_census(hlo_text: str) -> collections.Counter:
  """Instructions of an optimized HLO module that launch device work, by kind: "fusion:<kind>" for fusions,
  "custom-call:<target>" for library calls (cuBLAS, cuDNN), else the opcode. Walks ENTRY and the computations it
  runs as while bodies/conditions, conditional branches and calls; a loop body is counted once, not per iteration.
  Fused computations and reducers are not walked (they run inside the kernel that calls them)."""
  bodies, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = header.group(2)
      bodies[current] = []
      entry = current if header.group(1) else entry
    elif line.startswith("}"):
      current = None
    elif current is not None:
      bodies[current].append(line)
  counts = collections.Counter()
  todo, seen = [entry], set()
  while todo:
    name = todo.pop()
    if name is None or name in seen or name not in bodies:
      continue
    seen.add(name)
    for line in bodies[name]:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      opcode, rest = match.groups()
      if opcode == "while":
        todo += re.findall(r"(?:body|condition)=%([\w.\-]+)", rest)
      elif opcode == "conditional":
        todo += re.findall(r"%([\w.\-]+)", rest.split("branch_computations=", 1)[-1].split("}", 1)[0])
      elif opcode == "call":
        todo += re.findall(r"to_apply=%([\w.\-]+)", rest)
      if opcode in _NO_KERNEL:
        continue
      if opcode == "fusion":
        kind = re.search(r"kind=(\w+)", rest)
        custom = re.search(r'"kind":"([^"]+)"', rest)
        counts[f"fusion:{custom.group(1) if custom else kind.group(1) if kind else '?'}"] += 1
      elif opcode == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        counts[f"custom-call:{target.group(1) if target else '?'}"] += 1
      else:
        counts[opcode] += 1
  return counts


def hot_path_flops(batch: int, seq_len: int, cfg) -> float:
  """Forward matmul/conv FLOPs of one block's hot path (module docstring) for EcoHybridConfig `cfg`."""
  b, l, d, m, k, h = batch, seq_len, cfg.width, cfg.memory_slots, cfg.conv_kernel, cfg.num_heads
  if cfg.memory_attention == "projected":
    return 2 * b * l * d * (k + 4 * d) + 8 * b * m * d * d + 8 * b * l * m * d
  return 2 * b * l * d * k + 8 * b * l * h * m * d + 16 * b * m * d * d


def hot_path(block: EcoBlock, h_BxLxD, mem_BxMxD):
  """The mixing path of an EcoBlock (conv + memory write + memory read, its FFN left out) at layer 0, without dropout;
  returns (h, mem)."""
  h_BxLxD, mem_BxMxD, _ = block.mix(h_BxLxD, mem_BxMxD, 0)
  return h_BxLxD, mem_BxMxD


def _median_seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def copy_bandwidth(num_bytes: int = 1 << 28, repeats: int = 10) -> float:
  """Measured bytes/s of a jitted elementwise pass (read + write) over `num_bytes` of float32 on the default device."""
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  fn = jax.jit(lambda a: a * 2.0)
  return 2 * num_bytes / _median_seconds(fn, (x,), repeats)


def _nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def analyze(cfg, batch: int, seq_len: int, repeats: int = 10, bandwidth: float | None = None,
            peak_flops: float | None = None) -> list[dict]:
  """One row per mode ("forward", "forward+backward") for an EcoBlock built from EcoHybridConfig `cfg`."""
  block = EcoBlock(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(block)
  dtype = block.conv.dtype
  keys = jax.random.split(jax.random.key(1), 2)
  h = jax.random.normal(keys[0], (batch, seq_len, cfg.width), jnp.float32).astype(dtype)
  mem = jax.random.normal(keys[1], (batch, cfg.memory_slots, cfg.width), jnp.float32).astype(dtype)
  bandwidth = bandwidth or copy_bandwidth()
  peak = peak_flops if peak_flops is not None else metrics.device_peak_flops()

  def forward(state, h, mem):
    return hot_path(nnx.merge(graphdef, state), h, mem)

  def forward_backward(state, h, mem):
    (out_h, out_mem), vjp = jax.vjp(forward, state, h, mem)
    return vjp((out_h, out_mem))  # cotangents shaped like the outputs: one full backward pass

  rows = []
  fwd_flops = hot_path_flops(batch, seq_len, cfg)
  for mode, fn, flops, factor in (("forward", forward, fwd_flops, 1), ("forward+backward", forward_backward,
                                                                       3 * fwd_flops, 2)):
    compiled = jax.jit(fn).lower(state, h, mem).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_bytes = float(cost.get("bytes accessed", float("nan")))
    # Unavoidable traffic: read inputs and parameters once, write outputs once (the backward writes gradients the size
    # of its inputs and also re-reads the forward's inputs: counted as `factor` passes over them).
    ideal_bytes = float(factor * (_nbytes(state) + _nbytes((h, mem))) + _nbytes((h, mem)))
    seconds = _median_seconds(compiled, (state, h, mem), repeats)
    census = kernel_census(compiled.as_text())
    flop_time = flops / peak if peak else 0.0
    roof_xla = max(flop_time, xla_bytes / bandwidth)
    roof_ideal = max(flop_time, ideal_bytes / bandwidth)
    memory_bound = xla_bytes / bandwidth > flop_time if peak else None
    gain = seconds / roof_ideal
    rows.append(dict(
        mode=mode, form=cfg.memory_attention, batch=batch, seq_len=seq_len, width=cfg.width, slots=cfg.memory_slots, dtype=str(np.dtype(dtype)),
        kernels=sum(census.values()), census=dict(sorted(census.items())),
        ms=seconds * 1e3, flops=flops, xla_bytes=xla_bytes, ideal_bytes=ideal_bytes,
        intensity=flops / xla_bytes, tflops_per_s=flops / seconds / 1e12,
        bandwidth_gb_s=xla_bytes / seconds / 1e9, copy_bandwidth_gb_s=bandwidth / 1e9,
        roofline_ms_xla_bytes=roof_xla * 1e3, roofline_ms_ideal_bytes=roof_ideal * 1e3,
        memory_bound=memory_bound, fused_kernel_gain=gain,
        write_kernel=(bool(memory_bound and gain >= 1.5) if peak else None)))
  return rows
