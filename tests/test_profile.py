"""The profile parser: exact sums and classes on a hand-written GPU-style trace, invariants on a CPU recording."""
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.benchmarks import profile


def write_trace(path, events):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    json.dump({"traceEvents": events}, f)
  return path


def test_gpu_trace_sums_device_kernels_by_name_and_class(tmp_path):
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
          {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
  kernels = [("nvjet_hsh_256x128_gemm", 400.0), ("nvjet_hsh_256x128_gemm", 600.0),  # 2 calls in 2 steps
             ("cudnn_generated_fort_native_sdpa_sm90", 300.0), ("cudnn_generated_fort_native_sdpa_sm90", 300.0),
             ("loop_multiply_fusion", 50.0), ("loop_multiply_fusion", 150.0),
             ("input_reduce_fusion_3", 80.0), ("input_reduce_fusion_3", 120.0),
             ("memcpy128", 10.0), ("wrapped_concatenate", 90.0), ("some_kernel", 0.5), ("some_kernel", 1.5),
             ("add_rms_norm_forward", 4.0)]
  events = meta + [{"ph": "X", "pid": 7, "tid": 1, "name": n, "ts": i, "dur": d} for i, (n, d) in enumerate(kernels)]
  events.append({"ph": "X", "pid": 1, "tid": 2, "name": "PjitFunction(step)", "ts": 0, "dur": 5000.0})  # host: ignored
  summary = profile.summarize(profile.kernel_events(write_trace(tmp_path / "t.json.gz", events)), steps=2)
  assert summary["total_ms"] == pytest.approx(2.106 / 2)
  expected = {"matmul": 0.5, "attention": 0.3, "fusion": 0.1, "reduction": 0.1, "copy": 0.05, "pallas": 0.002,
              "other": 0.001}
  assert {k: pytest.approx(v) for k, v in expected.items()} == {k: v["ms"] for k, v in summary["classes"].items()}
  assert list(summary["classes"]) == ["matmul", "attention", "fusion", "reduction", "copy", "pallas", "other"]
  assert {k: v["launches"] for k, v in summary["classes"].items()} == {
      "matmul": 1, "attention": 1, "fusion": 1, "reduction": 1, "copy": 1, "pallas": 0.5, "other": 1}
  assert sum(v["share"] for v in summary["classes"].values()) == pytest.approx(1.0)
  top = summary["top"][0]
  assert (top["name"], top["class"], top["calls"], top["ms"]) == ("nvjet_hsh_256x128_gemm", "matmul", 1.0,
                                                                  pytest.approx(0.5))
  assert [k["name"] for k in summary["top"]][-1] == "some_kernel"
  text = profile.format_summary("train step", summary)
  assert "| matmul | 0.500 | 47.5% | 1 |" in text and "| `memcpy128` | copy | 0.5 | 0.005 |" in text


def test_cpu_trace_of_a_jitted_function(tmp_path):
  """On CPU the host events that execute HLO ops are the kernels; the loop's own event is not counted on top of its
  body's ops."""
  @jax.jit
  def f(a, b):
    return jax.lax.fori_loop(0, 3, lambda _, x: jnp.tanh(x @ b), a).sum()

  a, b = jnp.ones((128, 128)), jnp.full((128, 128), 0.01)
  jax.block_until_ready(f(a, b))
  trace = profile.record(lambda: f(a, b), steps=4, directory=tmp_path)
  events = profile.kernel_events(trace)
  assert events and not any(e["name"].split(".")[0] in profile.CONTROL_FLOW for e in events)
  summary = profile.summarize(events, steps=4)
  assert summary["total_ms"] > 0
  assert sum(v["ms"] for v in summary["classes"].values()) == pytest.approx(summary["total_ms"])
  calls = [k["calls"] for k in summary["top"]]
  np.testing.assert_array_equal(calls, np.round(calls))  # whole calls per step
  assert max(calls) >= 3  # the loop body's matmul runs 3 times a step
