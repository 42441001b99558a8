"""Where the time of a compiled step goes: a jax.profiler trace, summed by kernel.

`record(fn, steps, directory)` runs `fn` `steps` times under `jax.profiler.trace(..., create_perfetto_trace=True)`,
which writes a Chrome-trace JSON (`perfetto_trace.json.gz`). `kernel_events` reads the device's work from it:
the complete ("X") events of the device processes (`/device:GPU:0` ... on a GPU, one event per kernel launch), or, on a
CPU, which has no device process, the host events that execute an HLO op (their args name `hlo_op`), less the
control-flow ops (while, conditional, call), whose events enclose the ops of their bodies. `summarize`
divides by the number of steps and groups by kernel name and by class:

| class | kernel names containing (first match wins, in this order) |
|---|---|
| pallas | the names this project gives its Pallas kernels (`models.kernels.KERNEL_NAMES`) |
| attention | cudnn, fmha, flash, sdpa, attention |
| matmul | gemm, xmma, nvjet, cutlass, cublas, wgmma, matmul, dot, ynn (XLA:CPU's YNNPACK dot fusions) |
| copy | memcpy, memset, concatenate, copy, transpose, dynamic-update-slice / dynamic_update_slice |
| reduction | reduce, reduction |
| fusion | fusion, triton |
| other | anything else |

Kernel time is summed over all streams, so overlapping kernels count twice; a step's wall time can be shorter.
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib

import jax

from dlm_jax.models import kernels

CLASSES = (
    ("pallas", kernels.KERNEL_NAMES),
    ("attention", ("cudnn", "fmha", "flash", "sdpa", "attention")),
    ("matmul", ("gemm", "xmma", "nvjet", "cutlass", "cublas", "wgmma", "matmul", "dot", "ynn")),
    ("copy", ("memcpy", "memset", "concatenate", "copy", "transpose", "dynamic-update-slice", "dynamic_update_slice")),
    ("reduction", ("reduce", "reduction")),
    ("fusion", ("fusion", "triton")),
)


CONTROL_FLOW = ("while", "conditional", "call")


def classify(kernel_name: str) -> str:
  name = kernel_name.lower()
  return next((cls for cls, keys in CLASSES if any(k in name for k in keys)), "other")


def record(fn, steps: int, directory) -> pathlib.Path:
  """Runs `fn()` (already compiled and warmed up) `steps` times under the profiler; returns the trace file."""
  directory = pathlib.Path(directory)
  with jax.profiler.trace(str(directory), create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(fn())
  traces = sorted(directory.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {directory}.")
  return traces[-1]


def kernel_events(trace_path) -> list[dict]:
  """The device work of a Chrome trace: [{"name", "dur_us"}] (see the module docstring)."""
  with gzip.open(trace_path, "rt", encoding="utf-8") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  device_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
                 and str(e.get("args", {}).get("name", "")).startswith("/device:")}
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  if device_pids:
    chosen = [e for e in complete if e.get("pid") in device_pids]
  else:
    chosen = [e for e in complete if "hlo_op" in e.get("args", {})
              and e["args"]["hlo_op"].split(".")[0] not in CONTROL_FLOW]
  return [{"name": e["name"], "dur_us": float(e["dur"])} for e in chosen]


def summarize(events: list[dict], steps: int, top: int = 15) -> dict:
  """Per step: total kernel ms; ms, share and launches by class (the fusion launches per step are what fusing
  elementwise work reduces); and the `top` kernels by time with calls per step."""
  by_kernel = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    by_kernel[e["name"]][0] += 1
    by_kernel[e["name"]][1] += e["dur_us"]
  total_ms = sum(t for _, t in by_kernel.values()) / 1e3 / steps
  by_class, launches = collections.Counter(), collections.Counter()
  for name, (calls, t) in by_kernel.items():
    by_class[classify(name)] += t / 1e3 / steps
    launches[classify(name)] += calls / steps
  kernels = sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:top]
  return {
      "steps": steps,
      "total_ms": total_ms,
      "classes": {cls: {"ms": ms, "share": ms / total_ms if total_ms else 0.0, "launches": launches[cls]}
                  for cls, ms in by_class.most_common()},
      "top": [{"name": name, "class": classify(name), "calls": calls / steps, "ms": t / 1e3 / steps}
              for name, (calls, t) in kernels],
  }


def format_summary(title: str, summary: dict) -> str:
  lines = [f"## {title}: {summary['total_ms']:.2f} ms of kernel time per step ({summary['steps']} steps traced)",
           "| class | ms / step | share | launches / step |", "|---|---|---|---|"]
  lines += [f"| {cls} | {v['ms']:.3f} | {100 * v['share']:.1f}% | {v['launches']:g} |"
            for cls, v in summary["classes"].items()]
  lines += ["", "| kernel | class | calls / step | ms / step |", "|---|---|---|---|"]
  lines += [f"| `{k['name'][:90]}` | {k['class']} | {k['calls']:g} | {k['ms']:.3f} |" for k in summary["top"]]
  return "\n".join(lines) + "\n"
