"""Metric writers (JSONL: one object per line, step + scalars; TensorBoard event files), the console line, and the
throughput accounting behind its MFU.

MFU = model FLOPs per token x tokens per second / peak FLOP/s, with the model's FLOPs per token from its config
(`DenoiserConfig.flops_per_token`: 6 N_matmul + 12 n_layers L D for the transformer, head included) and the peak the
measured dense bf16 matmul ceiling of the device: 800 TFLOP/s on an H100 (a bf16 8192^3 matmul in JAX), 790 on an
H200 (788: a bf16 8192^3 matmul on random data through PyTorch). On other devices (CPU) MFU is not reported unless
config.peak_flops gives a peak. The copy bandwidths (bytes read + written per second of a large device-to-device copy)
are the ceilings memory-bound figures are read against: 2.95 TB/s on the H100, 4.3 TB/s on the H200.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import jax

# Measured dense bf16 matmul ceilings, FLOP/s.
PEAK_FLOPS = {"H100": 800e12, "H200": 790e12}
# Measured device-to-device copy bandwidths, bytes/s (read + written).
PEAK_BANDWIDTH = {"H100": 2.95e12, "H200": 4.3e12}


def device_peak_flops(override: float = 0.0):
  """The config override if > 0, else the measured ceiling of a known device, else None (MFU is then not shown)."""
  if override:
    return float(override)
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def device_peak_bandwidth():
  """The measured copy bandwidth of a known device (bytes/s), else None."""
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_BANDWIDTH.items() if k in kind), None)


def mfu(flops_per_token, tokens_per_s: float, peak):
  """Model FLOPs utilization, or None when the model's FLOPs per token or the device's peak is unknown."""
  return flops_per_token * tokens_per_s / peak if (flops_per_token and peak) else None


class MetricWriter:
  """Appends to WORKDIR/metrics.jsonl and WORKDIR/tensorboard.

  `resumed_step`: the step a resumed run restarts from. Rows the interrupted run logged after it (a run killed between
  checkpoints logs steps it then repeats) are dropped from metrics.jsonl (rewritten atomically), and TensorBoard is
  told to purge them (tensorboardX's purge_step), so every reader sees one row per step."""

  def __init__(self, workdir, use_tensorboard: bool = True, resumed_step: int | None = None, enabled: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled  # False: writes nothing (the non-primary processes of a multi-host run)
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    path = self.workdir / "metrics.jsonl"
    if resumed_step is not None and path.exists():
      kept = [r for r in read_jsonl(path) if r["step"] <= resumed_step]
      tmp = path.with_suffix(f".jsonl.tmp{os.getpid()}")
      tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
      os.replace(tmp, path)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = None
    if use_tensorboard:
      from tensorboardX import SummaryWriter
      purge = None if resumed_step is None else resumed_step + 1
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=purge)

  def scalars(self, step: int, prefix: str, values: dict):
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time()}
    record.update({f"{prefix}/{k}": float(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))

  def text(self, step: int, tag: str, text: str):
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.add_text(tag, text, int(step))
    with open(self.workdir / "samples.txt", "a", encoding="utf-8") as f:
      f.write(f"=== step {step} {tag} ===\n{text}\n")

  def close(self):
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def console_line(step, num_steps, metrics, tokens_per_s, mfu, eta_s) -> str:
  mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
  eta = f"{int(eta_s // 3600)}:{int(eta_s % 3600 // 60):02d}:{int(eta_s % 60):02d}"
  line = (f"step {step}/{num_steps} loss {metrics['loss']:.4f} tok/s {tokens_per_s:,.0f} MFU {mfu_text} "
          f"grad_norm {metrics['grad_norm']:.3f} lr {metrics['learning_rate']:.2e} ETA {eta}")
  print(line, flush=True)
  return line
