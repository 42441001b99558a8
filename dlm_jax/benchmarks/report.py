"""Where a benchmark row comes from and where it goes: the commit and the machine it measured, and the markdown table
it joins. Imports no JAX at module level (the GPU suite's runner uses `commit` without touching the device)."""
from __future__ import annotations

import os
import pathlib
import platform
import subprocess


def commit(repo) -> str:
  """The short HEAD commit of `repo`, with "+dirty" when tracked files other than BENCHMARKS.md differ from it. A
  copy without git (the GPU machine's) reports $DLM_COMMIT, which launch/gpu_suite.sh sets from the commit that
  launch/stage_gpu.sh wrote beside the staged files; "unknown" when neither is there."""
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
                           cwd=repo, capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return os.environ.get("DLM_COMMIT", "").strip() or "unknown"


def environment() -> dict:
  """The machine a measurement ran on: device kind and count, platform, memory, the ceilings MFU and bandwidth are
  read against (training.metrics; None where the device is not a known one), and the versions of Python, JAX,
  jaxlib, cuDNN and CUDA (None off a CUDA build), flax, optax, orbax and grain."""
  import importlib.metadata
  import jax
  from dlm_jax.training import metrics
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  versions = {}
  for package in ("jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  cuda = {"cudnn": None, "cuda_runtime": None, "cuda_driver": None}
  try:
    from jax._src.lib import cuda_versions  # jax's own cuDNN check reads the same module
    if cuda_versions is not None and device.platform == "gpu":
      cuda = {"cudnn": cuda_versions.cudnn_get_version(),
              "cuda_runtime": getattr(cuda_versions, "cuda_runtime_get_version", lambda: None)(),
              "cuda_driver": getattr(cuda_versions, "cuda_driver_get_version", lambda: None)()}
  except Exception:  # a private module: its absence or a change must not stop a measurement
    pass
  return {"device": device.device_kind, "device_count": jax.device_count(), "platform": device.platform,
          "memory_GiB": stats["bytes_limit"] / 2**30 if "bytes_limit" in stats else None,
          "peak_flops": metrics.device_peak_flops(), "peak_bandwidth": metrics.device_peak_bandwidth(),
          "python": platform.python_version(), "jax": jax.__version__, **versions, **cuda,
          "cpus": os.cpu_count(), "commit": commit(pathlib.Path(__file__).resolve().parents[2])}


def append_rows(path, header: str, rows: str):
  """Adds `rows` at the end of the markdown table that starts with `header` in the file at `path` (a new table at the
  end of the file if there is none)."""
  out = pathlib.Path(path)
  text = out.read_text(encoding="utf-8") if out.exists() else ""
  if header not in text:
    text += ("\n" if text and not text.endswith("\n\n") else "") + header
  start = text.index(header) + len(header)
  end = text.find("\n\n", start - 1)
  end = len(text) if end < 0 else end + 1
  out.write_text(text[:end] + rows + text[end:], encoding="utf-8")
  print(f"Appended to {out}:\n{rows}")
