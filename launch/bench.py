"""Training and sampling throughput of a config; prints the result row, and appends it to BENCHMARKS.md with --record.

  python -m launch.bench --config=configs/base_110m.py          # the GPU benchmark (target: >= 55% MFU)
  python -m launch.bench                                        # CPU-sized: configs/default.py
  python -m launch.bench --config=configs/base_110m.py:eco --seq_lens=1024,2048,4096,8192,16384,32768 --batch=1
                                                                # sequence-length scaling
  python -m launch.bench --config=configs/base_110m.py:eco --hot_path --seq_lens=4096,16384 --batch=1
                                                                # is EcoHybrid's conv + memory path memory-bound?
  python -m launch.bench --config=configs/base_110m.py --profile  # kernel time per step by class, and the top kernels
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m launch.bench --config=configs/base_110m.py --scale_out
      --step_ms_from=OUT/results.jsonl                          # per-device memory and collectives per mesh shape;
                                                                # the 8-GPU projection from the GPU suite's step time
  ... --json_out=FILE                                           # any mode: its results as JSON too (the GPU suite)

MFU = (6 N_matmul + 12 L T d) x tokens/s / peak, with peak the measured bf16 matmul ceiling (790 TFLOP/s on the H200,
800 on the H100; n/a on CPU). Sampler: B=64 sequences of 256 new tokens in 64 steps (config.bench), with the step time
relative to one forward pass of the same batch.
"""
import datetime
import json
import math
import os
import pathlib
import sys

from absl import app, flags, logging

from dlm_jax import cli
from ml_collections import config_flags

from dlm_jax import models
from dlm_jax.benchmarks import hot_path, profile, report, scale_out, throughput
from dlm_jax.training import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
cli.config_preflight(str(REPO / "configs" / "default.py"))  # --help_config; unknown --config.FIELD named at once
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "default.py"), "Experiment config file.",
                                lock_config=True)
flags.DEFINE_bool("help_config", False, "Print every field of --config with its value, then exit.")
flags.DEFINE_bool("record", False, "Append the result rows to --output (default: only print them).")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file --record appends the result rows to.")
flags.DEFINE_list("seq_lens", [], "Sequence-length scaling mode: training step time and peak memory at these lengths.")
flags.DEFINE_integer("batch", 1, "Batch size of the scaling and hot-path modes.")
flags.DEFINE_bool("hot_path", False, "Hot-path mode (EcoHybrid configs): kernels, bytes, time and roofline of one "
                  "block's conv + memory attentions, forward and forward+backward, at each of --seq_lens "
                  "(default data.seq_len); see dlm_jax/benchmarks/hot_path.py for the decision rule.")
flags.DEFINE_bool("profile", False, "Profile mode: jax.profiler traces of the compiled train step, one sampler call "
                  "and one forward pass (the shapes of the throughput mode); prints kernel time per step by class "
                  "(matmul, attention, fusion, reduction, copy) and the top kernels with their call counts.")
flags.DEFINE_integer("head_memory", 0, "Head-memory mode: XLA's temporary memory of the tied head + loss + gradient "
                     "from full [B, L, V] logits and with this many rows per chunk (diffusion.loss_chunk).")
flags.DEFINE_string("profile_dir", "runs/profile", "Where --profile writes its traces (open them in Perfetto).")
flags.DEFINE_bool("scale_out", False, "Scale-out mode: per-device parameter/optimizer bytes on each --mesh_shapes "
                  "(from the shardings; measured too with --measure), and the collectives of the compiled train step "
                  "with the bytes each device sends per step (dlm_jax/benchmarks/scale_out.py). On CPU, simulate the "
                  "devices with XLA_FLAGS=--xla_force_host_platform_device_count=8.")
flags.DEFINE_list("mesh_shapes", ["8x1x1", "1x8x1", "2x4x1", "2x2x2", "1x4x2", "1x1x8"],
                  "Scale-out mode: (data, fsdp, tensor) shapes, each DATAxFSDPxTENSOR, their product the device count.")
flags.DEFINE_bool("measure", False, "Scale-out mode: also initialize the state on each mesh and read its bytes.")
flags.DEFINE_float("step_ms", 0.0, "Scale-out mode: the measured single-device train step at the config's batch (ms, "
                   "from the throughput mode on the GPU) for the step-time projection; 0: no projection.")
flags.DEFINE_string("step_ms_from", None, "Scale-out mode: read --step_ms from the GPU suite's results.jsonl (the "
                    "train_step_ms of its bench_base_110m row).")
flags.DEFINE_float("bus_gb_s", 450.0, "Scale-out mode: the assumed per-GPU bus bandwidth of the projection (GB/s; "
                   "H100/H200 SXM NVLink 4: 900 GB/s both directions, 450 one way).")
flags.DEFINE_string("hf_import", None, "Import mode: wall time and peak host memory of loading a Hugging Face "
                    "checkpoint folder, or 'llama:SIZE' (small, 1b) for a random LLaDA-shaped one written to "
                    "--hf_synth_dir first; with a projection to LLaDA-8B (dlm_jax/benchmarks/hf_import.py).")
flags.DEFINE_string("hf_synth_dir", "runs/hf_synth", "Import mode: where 'llama:SIZE' checkpoints are written once.")
flags.DEFINE_string("json_out", None, "Also write the mode's results to this JSON file (rewritten as rows come in the "
                    "scaling mode, so that a run cut short keeps its finished lengths).")
FLAGS = flags.FLAGS
SCALE_OUT_HEADER = ("| date | commit | device | command | mesh (data x fsdp x tensor) | params MB/device | "
                    "optimizer MB/device | measured MB/device (params + optimizer) | collectives per step (count: MB "
                    "sent per device) | sent MB/device/step | projected step ms (hidden .. not hidden) |\n"
                    "|---|---|---|---|---|---|---|---|---|---|---|\n")

HOT_PATH_HEADER = ("| date | commit | device | command | mode | B x T x d, M | kernels | ms | TFLOP/s | XLA bytes "
                   "(MB) | GB/s (copy GB/s) | FLOP/byte | memory-bound | fused-kernel gain bound | write kernel |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
SCALING_HEADER = ("| date | commit | device | command | model | B x T | train step ms | peak GiB |\n"
                  "|---|---|---|---|---|---|---|---|\n")
HEADER = ("| date | commit | device | command | params (M) | B x T | train tok/s | MFU | step ms | compile s | "
          "peak GiB | sampler tok/s (B, new, steps) | sampler step / forward |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  command = "python -m launch.bench " + " ".join(a for a in sys.argv[1:] if not a.startswith("--output"))
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__})"
  prefix = f"| {datetime.date.today().isoformat()} | {report.commit(REPO)} | {device} | `{command.strip()}` |"
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  write = lambda header, rows: (report.append_rows(FLAGS.output, header, rows) if FLAGS.record
                                else print(f"(not recorded; --record appends to {FLAGS.output})\n{header}{rows}"))
  stamp = {"date": datetime.date.today().isoformat(), "commit": report.commit(REPO), "device": device,
           "command": command.strip()}
  if FLAGS.hf_import:
    write(IMPORT_HEADER, import_rows(prefix, stamp))
  elif FLAGS.head_memory:
    memory = throughput.head_loss_memory(FLAGS.config, FLAGS.head_memory)
    print(f"{prefix[2:-2]}\n{memory}")
    write_json(stamp, memory)
  elif FLAGS.profile:
    print(f"{prefix[2:-2]}\n")
    summaries = throughput.profile(FLAGS.config, FLAGS.profile_dir)
    text = "\n".join(profile.format_summary(title, summary) for title, summary in summaries.items())
    print(text)
    write_json(stamp, {"summaries": summaries, "markdown": f"{prefix[2:-2]}\n\n{text}"})
  elif FLAGS.scale_out:
    write(SCALE_OUT_HEADER, scale_out_rows(prefix, fmt, stamp))
  elif FLAGS.hot_path:
    write(HOT_PATH_HEADER, hot_path_rows(prefix, fmt, stamp))
  elif FLAGS.seq_lens:
    rows = throughput.scaling(FLAGS.config, [int(t) for t in FLAGS.seq_lens], FLAGS.batch,
                              on_row=lambda rows: write_json(stamp, {"rows": rows}))
    for r in rows:
      print(r)
    write(SCALING_HEADER, "".join(f"{prefix} {r['model']} | {r['batch']} x {r['seq_len']} | {r['train_step_ms']:.1f} | "
                                  f"{fmt(r['peak_memory_GiB'], '.2f')} |\n" for r in rows))
  else:
    r = throughput.run(FLAGS.config)
    for key, value in r.items():
      print(f"{key:>26}: {value}")
    write_json(stamp, r)
    write(HEADER, f"{prefix} {r['params_M']:.1f} | {r['batch']} x {r['seq_len']} | {r['train_tokens_per_s']:,.0f} | "
                  f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | {r['train_step_ms']:.1f} | "
                  f"{r['compile_s']:.1f} | {fmt(r['train_peak_memory_GiB'], '.2f')} | "
                  f"{r['sample_tokens_per_s']:,.0f} ({r['sample_batch']}, {r['sample_new_tokens']}, "
                  f"{r['sample_steps']}) | {r['sample_step_over_forward']:.2f} |\n")


IMPORT_HEADER = ("| date | commit | device | command | checkpoint | params (M) | file MB | load s | read MB/s | "
                 "peak host MB over baseline | float32 params MB | projected LLaDA-8B: load s, device GB, host GB "
                 "beyond the model |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def import_rows(prefix: str, stamp: dict) -> str:
  """--hf_import: the checkpoint loaded in a fresh process (peak memory is a high-water mark), one row."""
  import subprocess
  from dlm_jax.benchmarks import hf_import
  spec = FLAGS.hf_import
  if spec.startswith("llama:"):
    size = spec.split(":", 1)[1]
    if size not in hf_import.SHAPES:
      raise app.UsageError(f"--hf_import={spec}: the sizes are {sorted(hf_import.SHAPES)}.")
    folder = hf_import.synthesize(pathlib.Path(FLAGS.hf_synth_dir) / size, size)
  else:
    folder = pathlib.Path(spec.removeprefix("hf:"))
  code = ("import json; from configs import default; from dlm_jax.benchmarks import hf_import; "
          f"print('RESULT', json.dumps(hf_import.measure({str(folder)!r}, default.base_config())))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
  if out.returncode or not lines:
    raise app.UsageError(f"--hf_import={spec}: loading failed:\n{out.stderr[-3000:]}")
  measured = json.loads(lines[-1][len("RESULT "):])
  # A projection from a checkpoint small enough for per-file latency to dominate would be noise.
  projected = hf_import.projection(measured, "8b") if measured["file_MB"] >= 100 else None
  print(json.dumps({"measured": measured, "projected_8b": projected}, indent=1))
  write_json(stamp, {"measured": measured, "projected_8b": projected})
  if projected is None:
    projection = "n/a (file < 100 MB)"
  else:
    projection = (f"{projected['load_s']:.0f} s, {projected['device_GB_float32']:.1f} GB, "
                  f"{projected['host_beyond_model_GB']:.1f} GB")
  return (f"{prefix} {spec} | {measured['params_M']:.2f} | {measured['file_MB']:.1f} | {measured['load_s']:.2f} | "
          f"{measured['read_MB_per_s']:.0f} | {measured['peak_host_MB_over_baseline']:.0f} | "
          f"{measured['float32_params_MB']:.0f} | {projection} |\n")


def write_json(stamp: dict, result: dict):
  """--json_out: the result with its date, commit, device and command, written whole (atomically)."""
  if FLAGS.json_out:
    path = pathlib.Path(FLAGS.json_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**stamp, **result}, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def step_ms_from_results(path: str) -> float:
  """The single-GPU base_110m step time the GPU suite measured: train_step_ms of the last ok bench_base_110m row."""
  try:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise app.UsageError(f"--step_ms_from={path}: {e.strerror}; give the results.jsonl a GPU suite call returned.")
  rows = [json.loads(line) for line in lines if line.strip()]
  steps = [r["metrics"]["train_step_ms"] for r in rows if r.get("stage") == "bench_base_110m"
           and r.get("status") == "ok" and "train_step_ms" in r.get("metrics", {})]
  if not steps:
    raise app.UsageError(f"--step_ms_from={path}: no finished bench_base_110m stage with a train_step_ms in it (run "
                         "the headline call: bash launch/gpu_suite.sh).")
  return float(steps[-1])


def scale_out_rows(prefix, fmt, stamp) -> str:
  try:
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in FLAGS.mesh_shapes]
  except ValueError:
    shapes = []
  if not shapes or any(len(shape) != 3 for shape in shapes):
    raise app.UsageError(f"--mesh_shapes={','.join(FLAGS.mesh_shapes)}: give DATAxFSDPxTENSOR shapes, e.g. "
                         "8x1x1,1x8x1.")
  step_ms = step_ms_from_results(FLAGS.step_ms_from) if FLAGS.step_ms_from else FLAGS.step_ms
  memory = scale_out.memory_rows(FLAGS.config, shapes, measure=FLAGS.measure)
  lines, rows = "", []
  for shape, mem in zip(shapes, memory):
    comm = scale_out.communication(FLAGS.config, shape)
    ops = ", ".join(f"{op} {o['count']}: {o['sent_bytes'] / 1e6:,.1f}" for op, o in comm["ops"].items() if o["count"])
    measured = (f"{mem['measured_params'] / 1e6:,.1f} + {mem['measured_opt_state'] / 1e6:,.1f}"
                if FLAGS.measure else "n/a")
    projected, low, high = "n/a", None, None
    if step_ms:
      low, high = scale_out.projection(step_ms / 1e3, comm["sent_bytes"], FLAGS.bus_gb_s * 1e9, math.prod(shape))
      projected = f"{1e3 * low:.1f} .. {1e3 * high:.1f} (projection: t_1 = {step_ms} ms, {FLAGS.bus_gb_s} GB/s)"
    print(mem, comm["mesh"], ops)
    rows.append({"mesh": comm["mesh"], **mem, "sent_bytes": comm["sent_bytes"], "ops": comm["ops"],
                 "step_ms_one_device": step_ms or None, "projected_step_ms": None if low is None else
                 [1e3 * low, 1e3 * high]})
    lines += (f"{prefix} {comm['mesh']} | {mem['params'] / 1e6:,.1f} | {mem['opt_state'] / 1e6:,.1f} | {measured} | "
              f"{ops or 'none'} | {comm['sent_bytes'] / 1e6:,.1f} | {projected} |\n")
  write_json(stamp, {"rows": rows})
  return lines


def hot_path_rows(prefix, fmt, stamp) -> str:
  config = FLAGS.config
  if config.model.name != "eco_hybrid":
    raise app.UsageError(f"--hot_path measures EcoHybrid's conv + memory path; --config has model.name="
                         f"{config.model.name!r}. Use an ':eco' arm, e.g. --config=configs/base_110m.py:eco.")
  cfg = models.model_config(config, int(config.bench.vocab_size) or 128)
  peak = metrics.device_peak_flops(float(config.get("peak_flops", 0.0)))
  lines, rows = "", []
  for seq_len in [int(t) for t in FLAGS.seq_lens] or [int(config.data.seq_len)]:
    for r in hot_path.analyze(cfg, FLAGS.batch, seq_len, peak_flops=peak):
      print(r)
      rows.append(r)
      write_json(stamp, {"rows": rows})
      lines += (f"{prefix} {r['mode']}, {r['form']} | "
                f"{r['batch']} x {r['seq_len']} x {r['width']}, {r['slots']} ({r['dtype']}) | {r['kernels']} | "
                f"{r['ms']:.3f} | {r['tflops_per_s']:.2f} | {r['xla_bytes'] / 1e6:,.1f} | "
                f"{r['bandwidth_gb_s']:,.0f} ({r['copy_bandwidth_gb_s']:,.0f}) | {r['intensity']:.1f} | "
                f"{fmt(r['memory_bound'], '')} | {r['fused_kernel_gain']:.2f}x | {fmt(r['write_kernel'], '')} |\n")
  return lines


if __name__ == "__main__":
  cli.run(main)
