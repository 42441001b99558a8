"""The GPU measurements, one device call each: `bash launch/gpu_suite.sh [CALL]` (docs/gpu.md).

  bash launch/stage_gpu.sh                 # here, before the device call: wheels, corpora, commit -> .gpu_stage/
  bash launch/gpu_suite.sh                 # on the device: the headline call
  bash launch/gpu_suite.sh tests|quality|sampling|pretrained|puzzles|profile|variants|hot_path
  GPU_DRY_RUN=1 bash launch/gpu_suite.sh [CALL]   # here: every stage at a shrunk size on CPU, same files and deadlines

Each call runs its stages in priority order under one deadline (GPU_BUDGET_S, default 510 s = 8.5 minutes, from the
call's start), each stage with its own cap (dlm_jax/benchmarks/suite.py): OUT (default runs/gpu_suite) receives
results.jsonl (one line per stage as it ends), summary.md (rewritten after each: the figures and the targets) and
suite.log; the work (checkpoints, traces, logs) lives in GPU_WORK_DIR (default /tmp/dlm_gpu_work), outside OUT.
The calls, their stages and the targets are below; the figures' definitions are those of `launch.bench`,
`launch.train` and `launch.sampler_suite`.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

from dlm_jax import cli
from dlm_jax.benchmarks import report, suite
from dlm_jax.benchmarks.suite import Stage
from dlm_jax.data import corpus  # no JAX: the runner must not take the device's memory

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGE_DIR = REPO / ".gpu_stage"  # what launch/stage_gpu.sh prepares and the device call carries (git-ignored)
flags.DEFINE_float("budget_s", float(os.environ.get("GPU_BUDGET_S", 510)),
                   "Seconds from the call's start by which every stage has ended (env GPU_BUDGET_S).")
flags.DEFINE_string("out_dir", os.environ.get("OUT") or str(REPO / "runs" / "gpu_suite"),
                    "Where results.jsonl, summary.md and suite.log go (env OUT: the device's returned folder).")
flags.DEFINE_string("work_dir", os.environ.get("GPU_WORK_DIR", "/tmp/dlm_gpu_work"),
                    "Work folder of checkpoints, traces and logs, outside OUT (env GPU_WORK_DIR).")
flags.DEFINE_bool("dry_run", os.environ.get("GPU_DRY_RUN", "").lower() not in ("", "0", "false"),
                  "Every stage at a shrunk size (CPU): same stages, files and deadlines (env GPU_DRY_RUN).")
flags.DEFINE_float("grace_s", 15.0, "Seconds between a cut stage's SIGTERM and its SIGKILL.")
flags.DEFINE_bool("list_calls", False, "Print the calls and their stages, then exit.")
flags.DEFINE_bool("list_data", False, "Print the corpora (relative to DLM_DATA_DIR) the calls read, then exit.")
flags.DEFINE_string("stage", None, "Prepare a device call in this folder (launch/stage_gpu.sh): the wheels of "
                    "--wheels, the corpora the calls read and the commit id; print the device command and carry.")
flags.DEFINE_string("wheels", str(REPO.parent / "shared" / "device" / "wheels-py312"),
                    "With --stage: the folder of the device's missing wheels.")
flags.DEFINE_string("stage_call", "headline", "With --stage: the call whose dry run (GPU_DRY_RUN=1 on this CPU) must "
                    "pass before anything is staged; '' stages without one (env GPU_SKIP_DRY_RUN=1 does the same). "
                    "--stage_call=puzzles also stages PUZZLE_SETS (generated once into runs/puzzles/gpu_stage).")
FLAGS = flags.FLAGS

# The targets the figures are read against (issue #24; base_110m at B=32, T=1024 unless said).
MFU_TARGET, SAMPLER_RATIO_TARGET, HRM_RATIO_TARGET = 0.55, 1.15, 0.6
AR_TARGET_NLL, AR_TARGET_S, NANOGPT_BEST = 1.45, 60.0, 1.4688
TINY_SHAKESPEARE = "en/tinyshakespeare.txt"
# Every corpus a call reads (the Shakespeare runs) and those the test suite reads when present (tests/test_data.py,
# tests/test_corruption.py); launch/stage_gpu.sh copies exactly these.
DATA_FILES = (TINY_SHAKESPEARE, "hi/tico19_test.txt", "hi/valid_flores_ntrex.txt",
              "hinglish/hinglish_top_train_valid.txt")
# Test files in the order the `tests` call runs them: the math first (exact values in float32), then the rest.
TEST_FILES = ("test_diffusion", "test_uniform", "test_gaussian", "test_corruption", "test_kernels", "test_models",
              "test_eco_hybrid", "test_hrm", "test_transition", "test_sampler", "test_thought", "test_retrieval",
              "test_distillation", "test_learning", "test_regression", "test_profile", "test_layout", "test_configs",
              "test_training", "test_data", "test_tokenization", "test_generation", "test_launch", "test_sharding",
              "test_notebooks", "test_gpu_suite", "test_objectives", "test_first_contact", "test_prepared",
              "test_protocols", "test_hf_tokenizer", "test_hf_fixtures", "test_hf_import", "test_puzzles",
              "test_calibration_head", "test_control")

# The puzzle sets of the `puzzles` call (issue #29, HRM's setting): name -> launch.puzzles flags. launch/stage_gpu.sh
# generates them here into .gpu_stage/puzzles (hard Sudokus take ~0.4 s each on one CPU core); the call's first stage
# finds them cached, or generates what is missing. A dry run generates 8 of each (mazes 9 x 9) in its work folder.
PUZZLE_SETS = {"sudoku_hard_train": ("--task=sudoku", "--difficulty=hard", "--count=1000", "--seed=0"),
               "sudoku_hard_test": ("--task=sudoku", "--difficulty=hard", "--count=1000", "--seed=1"),
               "maze31_train": ("--task=maze", "--size=31", "--count=1000", "--seed=0"),
               "maze31_test": ("--task=maze", "--size=31", "--count=1000", "--seed=1")}
SUDOKU_TARGET = 0.55  # HRM's Sudoku-Extreme exact rate (Wang et al. 2025)

# Dry-run sizes: the same configs shrunk to compile and run in seconds on 2 CPU cores.
SMALL_MODEL = ("--config.model.width=64", "--config.model.num_heads=2", "--config.model.mlp_dim=128")
SMALL_LAYERS = {"diffusion": ("--config.model.num_layers=2",), "eco": ("--config.model.num_layers=2",),
                "hrm": ("--config.model.l_layers=1", "--config.model.h_layers=1", "--config.model.l_steps=2",
                        "--config.model.memory_cells=4", "--config.model.memory_top_k=2")}
SMALL_BENCH = ("--config.data.seq_len=64", "--config.train.batch_size=4", "--config.bench.vocab_size=256",
               "--config.bench.train_steps=2", "--config.bench.warmup_steps=1", "--config.bench.sample_batch=4",
               "--config.bench.sample_new_tokens=32", "--config.bench.sample_steps=4",
               "--config.diffusion.loss_chunk=64")
SMALL_TRAIN = ("--config.model.width=32", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
               "--config.data.seq_len=32", "--config.train.batch_size=8", "--config.train.num_steps=12",
               "--config.train.log_every=4", "--config.train.checkpoint_every=6", "--config.eval.every=6",
               "--config.eval.num_windows=16", "--config.eval.batch_size=8", "--config.eval.time_samples=1")


def dry(*args):
  return tuple(args) if FLAGS.dry_run else ()


def data_path(rel: str) -> str:
  """Where the trainer will find corpus `rel` (dlm_jax/data/corpus.py: $DLM_DATA_DIR, else ../shared/data)."""
  return str((corpus.data_dir() or REPO.parent / "shared" / "data") / rel)


# ---- Collectors: a stage's metrics from the files it wrote ----

BENCH_SHOWN = ("train_tokens_per_s", "mfu", "train_step_ms", "compile_s", "train_peak_memory_GiB",
               "sample_tokens_per_s", "sample_step_over_forward")
TRAIN_SHOWN = ("steps", "best_nll", "best_step", "best_s_from_launch", "best_s_from_first_step",
               "train_tokens_per_s")
BENCH_KEYS = ("params_M", "batch", "seq_len", "train_tokens_per_s", "mfu", "train_step_ms", "compile_s",
              "train_peak_memory_GiB", "sample_tokens_per_s", "sample_step_over_forward", "forward_ms", "sample_ms",
              "sample_batch", "sample_new_tokens", "sample_steps", "peak_flops", "loss_finite")


def bench_figures(ctx):
  result = suite.read_json(ctx.work / "result.json")
  return {k: result[k] for k in BENCH_KEYS if k in result}


def scaling_figures(ctx):
  rows = suite.read_json(ctx.work / "result.json").get("rows", [])
  out = {}
  for r in rows:
    out[f"T{r['seq_len']}_step_ms"] = r["train_step_ms"]
    out[f"T{r['seq_len']}_peak_GiB"] = r["peak_memory_GiB"]
  return out


def hot_path_figures(ctx):
  rows = suite.read_json(ctx.work / "result.json").get("rows", [])
  return {f"{r['mode']}_T{r['seq_len']}_B{r['batch']}": {k: r[k] for k in ("ms", "tflops_per_s", "bandwidth_gb_s",
                                                                            "memory_bound", "fused_kernel_gain")}
          for r in rows} | {f"{r['mode']}_T{r['seq_len']}_ms": r["ms"] for r in rows}


def training_collector(targets=()):
  return lambda ctx: suite.training_figures(ctx.work / "run", ctx.launched_at, targets)


def pytest_collector(files):
  return lambda ctx: suite.pytest_figures(ctx.work / "report.jsonl", [f"tests/{f}.py" for f in files])


def sampler_figures(ctx):
  rows = suite.read_jsonl(ctx.work / "rows.jsonl")
  out = {"rows": len(rows)}
  for r in rows:
    if r["strategy"] != "real text":
      key = f"{r['strategy']}@{r['steps']}" + (f" ({r['settings']})" if r["strategy"] == "confidence_stop" else "")
      out[key] = {k: r.get(k) for k in ("judge_nll", "entropy", "tokens_per_s", "network_calls", "cache_agreement")}
    else:
      out["real_text_judge_nll"] = r["judge_nll"]
  return out


def solve_figures(ctx):
  """`launch.solve --json`'s rows (from the stage's log): exact, blank accuracy, valid and tokens/s per policy."""
  out = {}
  for line in ctx.log.read_text(encoding="utf-8", errors="replace").splitlines() if ctx.log.is_file() else []:
    if line.startswith("{") and '"policy"' in line:
      row = json.loads(line)
      if row.get("difficulty") == "all":
        for key in ("exact", "blank_accuracy", "valid", "tokens_per_s"):
          out[f"{row['policy']}_{key}"] = row.get(key)
  return out


def profile_figures(ctx):
  result = suite.read_json(ctx.work / "result.json")
  if result.get("markdown"):
    (ctx.work / "profile.md").write_text(result["markdown"], encoding="utf-8")
  key = lambda name: name.replace(" ", "_")
  return {f"{key(name)}_ms": s["total_ms"] for name, s in result.get("summaries", {}).items()} | {
      f"{key(name)}_{cls}_share": c["share"] for name, s in result.get("summaries", {}).items()
      for cls, c in s["classes"].items()}


# ---- The calls ----

def puzzle_dir() -> pathlib.Path:
  return (pathlib.Path(FLAGS.work_dir) / "puzzles" / "sets") if FLAGS.dry_run else STAGE_DIR / "puzzles"


def puzzle_set_flags(name: str) -> tuple[str, ...]:
  flags_ = PUZZLE_SETS[name]
  if FLAGS.dry_run:
    flags_ = tuple("--count=8" if f.startswith("--count") else "--size=9" if f.startswith("--size") else f
                   for f in flags_)
  return flags_


def puzzle_sets_stage():
  """launch.puzzles for every PUZZLE_SETS entry (instant when launch/stage_gpu.sh staged them: cached)."""
  commands = " && ".join(f"python -m launch.puzzles {' '.join(puzzle_set_flags(name))} --progress=false "
                         f"--output={puzzle_dir() / name} > /dev/null" for name in PUZZLE_SETS)
  return Stage("puzzle_sets", ("bash", "-c", commands), cap_s=60, min_s=5, show=(),
               what="the puzzle sets (staged by launch/stage_gpu.sh, else generated here)")


def puzzle_train_stage(name, task, *, cap, min_s, time_limit_s, what):
  """configs/{task}.py:hrm_gpu on the staged sets, stopping itself at `time_limit_s`."""
  train_set, test_set = ("sudoku_hard_train", "sudoku_hard_test") if task == "sudoku" else ("maze31_train",
                                                                                             "maze31_test")
  small = ()
  if FLAGS.dry_run:
    small = ("--config.model.width=32", "--config.model.num_heads=2", "--config.model.mlp_dim=64",
             "--config.model.l_layers=1", "--config.model.h_layers=1", "--config.model.memory_cells=4",
             "--config.model.memory_top_k=2", "--config.train.batch_size=8", "--config.train.num_steps=6",
             "--config.train.log_every=3", "--config.train.checkpoint_every=6", "--config.eval.every=6",
             "--config.eval.num_windows=8", "--config.eval.batch_size=8", "--config.data.augment=2",
             *(("--config.data.seq_len=81", "--config.model.grid_side=9") if task == "maze" else ()))
  return Stage(name, ("python", "-m", "launch.train", f"--config=configs/{task}.py:hrm_gpu", "--workdir={work}/run",
                      f"--config.data.path={puzzle_dir() / train_set}",
                      f"--config.data.valid_path={puzzle_dir() / test_set}", "--config.tensorboard=false",
                      f"--config.train.time_limit_s={time_limit_s}", *small),
               cap_s=cap, min_s=min_s, collect=training_collector(),
               needs=(str(puzzle_dir() / train_set / "puzzles.jsonl"),),
               show=TRAIN_SHOWN, what=what)


def puzzle_solve_stage(name, trained, test_set, policies, *, cap, min_s, what):
  """launch.solve on the held-out set; its --json rows are the figures."""
  return Stage(name, ("python", "-m", "launch.solve", f"--workdir={{root}}/{trained}/run",
                      f"--puzzles={puzzle_dir() / test_set}", f"--policies={policies}", "--steps=all", "--json",
                      "--batch_size=" + ("8" if FLAGS.dry_run else "500")),
               cap_s=cap, min_s=min_s, collect=solve_figures, show=None, what=what)


def environment_stage():
  return Stage("environment", ("python", "-c", "import json, sys; from dlm_jax.benchmarks import report; "
                               "json.dump(report.environment(), open(sys.argv[1], 'w'), indent=1)",
                               "{work}/environment.json"),
               cap_s=90, min_s=5, collect=lambda ctx: suite.read_json(ctx.work / "environment.json"), show=(),
               what="device, versions, the ceilings MFU and bandwidth are read against")


def bench_stage(name, arm, *flags_, cap, min_s, what):
  return Stage(name, ("python", "-m", "launch.bench", f"--config=configs/base_110m.py:{arm}", *flags_,
                      "--json_out={work}/result.json", *dry(*SMALL_MODEL, *SMALL_LAYERS[arm], *SMALL_BENCH)),
               cap_s=cap, min_s=min_s, collect=bench_figures, show=BENCH_SHOWN, what=what)


def llada_stage(name, *flags_, cap, min_s, what):
  """configs/llada.py's 1B bench (the tiny arm in a dry run): the sampler of a LLaDA-shaped model (issue 28)."""
  arm = "tiny" if FLAGS.dry_run else "1b"
  if FLAGS.dry_run:  # blocks that divide the tiny arm's 32 new tokens
    flags_ = tuple(f.replace("block_length=32", "block_length=8") for f in flags_)
  return Stage(name, ("python", "-m", "launch.bench", f"--config=configs/llada.py:{arm}", *flags_,
                      "--json_out={work}/result.json"),
               cap_s=cap, min_s=min_s, collect=bench_figures, show=BENCH_SHOWN, what=what)


def train_stage(name, arm, *flags_, cap, min_s, time_limit_s, what, targets=()):
  """A Shakespeare-char run that stops itself (train.time_limit_s: checkpoint + final evaluation) before its cap."""
  return Stage(name, ("python", "-m", "launch.train", f"--config=configs/shakespeare_char.py:{arm}",
                      "--workdir={work}/run", "--config.tensorboard=false", "--config.train.sample_every=0",
                      f"--config.train.time_limit_s={time_limit_s}", *flags_, *dry(*SMALL_TRAIN)),
               cap_s=cap, min_s=min_s, collect=training_collector(targets), needs=(data_path(TINY_SHAKESPEARE),),
               show=TRAIN_SHOWN + tuple(f"s_to_{t}_from_first_step" for t in targets), what=what)


def scaling_stage(name, arm, seq_lens, *, cap, min_s, what):
  lens = ",".join(str(t) for t in (seq_lens if not FLAGS.dry_run else (64, 128)))
  return Stage(name, ("python", "-m", "launch.bench", f"--config=configs/base_110m.py:{arm}", f"--seq_lens={lens}",
                      "--batch=1", "--config.model.remat=full", "--json_out={work}/result.json",
                      *dry(*SMALL_MODEL, *SMALL_LAYERS[arm], *SMALL_BENCH[2:])),
               cap_s=cap, min_s=min_s, collect=scaling_figures, what=what)


def pytest_stage(name, files, *, workers, cap, min_s, what):
  return Stage(name, ("python", "-m", "pytest", "-p", "no:cacheprovider", *(("-n", str(workers), "--dist",
                      "loadfile") if workers else ()), *[f"tests/{f}.py" for f in files]),
               cap_s=cap, min_s=min_s, collect=pytest_collector(files),
               show=("passed", "failed", "skipped", "failing", "files_not_reached"),
               env=(("DLM_TEST_REPORT", "{work}/report.jsonl"), ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")), what=what)


SAMPLER_STRATEGIES = ("confidence,margin,entropy,threshold_blocks_dual_cache,blocks_dual_cache,blocks,threshold,"
                      "blocks_prefix_cache,confidence_stop,ancestral,ancestral_cache,remdm_loop")


def calls() -> dict[str, list[Stage]]:
  """Call name -> its stages in priority order. Caps and minimums are estimates for the H200 (none of these stages
  has run there yet): a minimum is what a stage needs to produce any figure, a cap the most it may take."""
  env = environment_stage()
  ar_targets = (AR_TARGET_NLL, NANOGPT_BEST)
  return {
      "headline": [
          env,
          bench_stage("bench_base_110m", "diffusion", cap=210, min_s=90,
                      what="base_110m: train tok/s, MFU, step ms, compile s, peak GiB, sampler tok/s, step/forward"),
          train_stage("anchor_ar", "ar", cap=170, min_s=75, time_limit_s=150, targets=ar_targets,
                      what="Shakespeare-char AR arm: best validation, wall time from launch and from the first step "
                           f"(nanoGPT: {NANOGPT_BEST} at ~1.5 min on an H100)"),
          bench_stage("bench_eco", "eco", cap=180, min_s=90, what="base_110m:eco at T=1024 (target: >= the baseline)"),
          bench_stage("bench_hrm", "hrm", cap=210, min_s=100,
                      what=f"base_110m:hrm at T=1024 (target: >= {HRM_RATIO_TARGET}x the baseline)"),
          pytest_stage("kernel_tests", ("test_kernels",), workers=0, cap=120, min_s=40,
                       what="the Pallas kernels' tests, compiled natively (Triton)"),
          scaling_stage("scaling_eco", "eco", (4096, 16384, 32768), cap=200, min_s=80,
                        what="EcoHybrid step at B=1, T=4k/16k/32k (target: t(32k)/t(4k) <= 10)"),
          scaling_stage("scaling_diffusion", "diffusion", (16384,), cap=120, min_s=60,
                        what="baseline step at B=1, T=16k (target: EcoHybrid <= 1/3 of it)"),
      ],
      "tests": [
          env,
          pytest_stage("tests", TEST_FILES if not FLAGS.dry_run else ("test_profile", "test_layout"), workers=4,
                       cap=480, min_s=60, what="the test suite on the GPU, math first, -n 4, preallocation off"),
      ],
      "quality": [
          env,
          train_stage("quality_diffusion", "diffusion", "--config.train.num_steps=5000", cap=235, min_s=120,
                      time_limit_s=205, what="Shakespeare-char diffusion arm, 5,000-step schedule cut at 205 s: "
                                             "best NELBO and its time"),
          train_stage("quality_eco", "eco", "--config.train.num_steps=5000", cap=235, min_s=120, time_limit_s=205,
                      what="Shakespeare-char EcoHybrid arm, the same"),
      ],
      "sampling": [
          env,
          train_stage("train_ar", "ar", cap=110, min_s=60, time_limit_s=85, what="the judge (AR arm), 85 s"),
          train_stage("train_diffusion", "diffusion", cap=140, min_s=80, time_limit_s=115,
                      what="the diffusion run the strategies sample, 115 s"),
          Stage("sampler_suite", ("python", "-m", "launch.sampler_suite", "--workdir={root}/train_diffusion/run",
                                  "--judge={root}/train_ar/run", "--prompt_len=0", "--block_length=32",
                                  f"--strategies={SAMPLER_STRATEGIES}", "--rows_out={work}/rows.jsonl",
                                  "--table_out={work}/sampler_suite.md",
                                  *(("--num_samples=8", "--steps=4", "--block_length=8") if FLAGS.dry_run
                                    else ("--num_samples=64", "--steps=64,16"))),
                cap_s=240, min_s=60, collect=sampler_figures, artifacts=("sampler_suite.md",),
                what="every decoding strategy at B=64, 256 new tokens, judged by the AR arm (rows as they come)"),
          bench_stage("bench_sampler_dual_cache", "diffusion", "--config.sample.block_length=32",
                      "--config.sample.cache=dual", cap=150, min_s=90,
                      what="base_110m sampler with blocks of 32 + the dual KV cache"),
      ],
      "pretrained": [
          env,
          llada_stage("bench_llada_1b_confidence", cap=230, min_s=120,
                      what="LLaDA-shaped random 1B (configs/llada.py): train tok/s and plain confidence decoding, "
                           "B=8, 256 new tokens in 256 steps"),
          llada_stage("bench_llada_1b_dual_threshold", "--config.sample.block_length=32", "--config.sample.cache=dual",
                      "--config.sample.threshold=0.9", cap=230, min_s=120,
                      what="the same model decoded in blocks of 32 with the dual KV cache and threshold 0.9"),
      ],
      "puzzles": [
          env,
          puzzle_sets_stage(),
          puzzle_train_stage("train_sudoku_hrm", "sudoku", cap=230, min_s=90, time_limit_s=190,
                             what="HRM-sized Sudoku (configs/sudoku.py:hrm_gpu): 1,000 hard puzzles x 1,000 "
                                  "augmentations, 190 s"),
          puzzle_solve_stage("solve_sudoku_hrm", "train_sudoku_hrm", "sudoku_hard_test", "confidence,margin",
                             cap=70, min_s=30, what="its exact-solve rate on 1,000 held-out hard puzzles "
                                                    f"(target >= {SUDOKU_TARGET:.0%}, HRM's Sudoku-Extreme figure)"),
          puzzle_train_stage("train_maze_hrm", "maze", cap=130, min_s=70, time_limit_s=95,
                             what="HRM-sized 31 x 31 mazes (configs/maze.py:hrm_gpu), 1,000 x 8 symmetries, 95 s"),
          puzzle_solve_stage("solve_maze_hrm", "train_maze_hrm", "maze31_test", "confidence", cap=50, min_s=20,
                             what="shortest paths found on 1,000 held-out mazes"),
      ],
      "profile": [
          env,
          Stage("profile_base_110m", ("python", "-m", "launch.bench", "--config=configs/base_110m.py", "--profile",
                                      "--profile_dir={work}/traces", "--json_out={work}/result.json",
                                      *dry(*SMALL_MODEL, *SMALL_LAYERS["diffusion"], *SMALL_BENCH)),
                cap_s=420, min_s=120, collect=profile_figures, artifacts=("profile.md",),
                what="kernel time per class and the top kernels: train step, sampler call, forward (base_110m)"),
      ],
      "variants": [
          env,
          bench_stage("bench_full_logits", "diffusion", "--config.diffusion.loss_chunk=0", cap=180, min_s=90,
                      what="base_110m with the loss from full [B, L, V] logits (what chunking buys)"),
          bench_stage("bench_layer_scan", "diffusion", "--config.model.layer_loop=scan", cap=180, min_s=90,
                      what="base_110m with the layer scan kept (what unrolling buys)"),
          bench_stage("bench_fused_add_norm", "diffusion", "--config.model.fused_add_norm=true", cap=180, min_s=90,
                      what="base_110m with the fused residual add + RMSNorm Pallas kernels"),
      ],
      "hot_path": [env] + [
          Stage(f"hot_path_{form}", ("python", "-m", "launch.bench", "--config=configs/base_110m.py:eco",
                                     "--hot_path", "--seq_lens=" + ("64" if FLAGS.dry_run else "1024"),
                                     "--batch=" + ("2" if FLAGS.dry_run else "32"),
                                     f"--config.model.memory_attention={form}", "--json_out={work}/result.json",
                                     *dry(*SMALL_MODEL, *SMALL_LAYERS["eco"], *SMALL_BENCH)),
                cap_s=150, min_s=60, collect=hot_path_figures,
                what=f"EcoHybrid's conv + memory path, {form} memory attention, B=32 x T=1024: bytes, roofline")
          for form in ("absorbed", "projected", "pallas")],
  }


# ---- Targets: the figures read against the goals ----

def _metric(results, stage, key):
  r = next((r for r in results if r.stage == stage and r.status in ("ok", "cut")), None)
  return None if r is None else r.metrics.get(key)


def targets(results) -> list[tuple[str, str, str]]:
  """(target, the figure, met | not met | not measured) for each target a call's stages measure."""
  rows = []

  def check(name, value, ok, shown):
    rows.append((name, "n/a" if value is None else shown, "not measured" if value is None else
                 ("met" if ok else "not met")))

  names = {r.stage for r in results}
  if "bench_base_110m" in names:
    mfu = _metric(results, "bench_base_110m", "mfu")
    check(f"base_110m MFU >= {MFU_TARGET:.0%}", mfu, mfu is not None and mfu >= MFU_TARGET,
          f"{100 * (mfu or 0):.1f}%")
    ratio = _metric(results, "bench_base_110m", "sample_step_over_forward")
    check(f"sampler step <= {SAMPLER_RATIO_TARGET}x a forward", ratio,
          ratio is not None and ratio <= SAMPLER_RATIO_TARGET, f"{ratio or 0:.2f}x")
    base = _metric(results, "bench_base_110m", "train_tokens_per_s")
    for stage, factor, label in (("bench_eco", 1.0, "EcoHybrid tok/s >= the baseline's at T=1024"),
                                 ("bench_hrm", HRM_RATIO_TARGET, f"HRM tok/s >= {HRM_RATIO_TARGET}x the baseline's")):
      arm = _metric(results, stage, "train_tokens_per_s")
      value = None if (arm is None or not base) else arm / base
      check(label, value, value is not None and value >= factor, f"{value or 0:.2f}x the baseline")
  if "anchor_ar" in names:
    seconds = _metric(results, "anchor_ar", f"s_to_{AR_TARGET_NLL}_from_first_step")
    best = _metric(results, "anchor_ar", "best_nll")
    shown = (f"reached at {seconds:.0f} s" if seconds is not None else
             f"best {best:.4f}, not reached" if best is not None else "")
    check(f"AR arm <= {AR_TARGET_NLL} nats/char within {AR_TARGET_S:.0f} s of training", best,
          seconds is not None and seconds <= AR_TARGET_S, shown)
  if "solve_sudoku_hrm" in names:
    solved = next((r.metrics for r in results if r.stage == "solve_sudoku_hrm" and r.status in ("ok", "cut")), {})
    exact = max((v for k, v in solved.items() if k.endswith("_exact") and v is not None), default=None)
    check(f"HRM-sized Sudoku >= {SUDOKU_TARGET:.0%} exact on 1,000 hard puzzles", exact,
          exact is not None and exact >= SUDOKU_TARGET, f"{100 * (exact or 0):.1f}% (best policy)")
  for stage in ("kernel_tests", "tests"):
    if stage in names:
      failed = _metric(results, stage, "failed")
      passed = _metric(results, stage, "passed")
      check(f"{stage}: 0 GPU test failures", failed, failed == 0, f"{failed} failed, {passed} passed")
  if "scaling_eco" in names:
    t4, t32 = _metric(results, "scaling_eco", "T4096_step_ms"), _metric(results, "scaling_eco", "T32768_step_ms")
    value = None if (t4 is None or t32 is None) else t32 / t4
    check("EcoHybrid t(32k) / t(4k) <= 10", value, value is not None and value <= 10, f"{value or 0:.1f}")
    eco16, base16 = (_metric(results, "scaling_eco", "T16384_step_ms"),
                     _metric(results, "scaling_diffusion", "T16384_step_ms"))
    value = None if (eco16 is None or base16 is None) else eco16 / base16
    check("EcoHybrid step <= 1/3 of the baseline's at T=16k", value, value is not None and value <= 1 / 3,
          f"{value or 0:.2f}x the baseline")
  return rows


def render(call, stamp, results, budget_s):
  rows = targets(results)
  extra = ""
  if rows:
    extra = ("\n## Targets" + (" (dry run: shrunk models on CPU, the figures mean nothing)" if stamp.get("dry_run")
                               else "") + "\n\n| target | figure | verdict |\n|---|---|---|\n"
             + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows))
  extra += "\n## Stages\n\n" + "".join(f"- `{r.stage}`: {r.what}. `{r.command}`\n" for r in results)
  return suite.summary_markdown(call, stamp, results, budget_s, extra)


def add_device_to_stamp(s, result):
  if result.stage == "environment" and result.metrics:
    m = result.metrics
    s.stamp["device"] = f"{m.get('device')} x{m.get('device_count')} ({m.get('platform')})"
    s.stamp["versions"] = (f"jax {m.get('jax')}, jaxlib {m.get('jaxlib')}, cuDNN {m.get('cudnn')}, "
                           f"python {m.get('python')}")
    s.stamp["ceilings"] = (f"{(m.get('peak_flops') or 0) / 1e12:.0f} TFLOP/s bf16, "
                           f"{(m.get('peak_bandwidth') or 0) / 1e12:.1f} TB/s copy" if m.get("peak_flops") else
                           "none known for this device (MFU n/a)")


# ---- Staging (launch/stage_gpu.sh) ----

def stage_device_call(folder: pathlib.Path, wheels: pathlib.Path, dry_run_call: str = "",
                      with_puzzles: bool = False) -> list[str]:
  """Fills `folder` (inside the repo, git-ignored) with what a device call reads: whl/ (the wheels the device lacks),
  data/ (DATA_FILES from DLM_DATA_DIR), with `with_puzzles` puzzles/ (PUZZLE_SETS, generated once into
  runs/puzzles/gpu_stage and kept there) and COMMIT, after the dry run of `dry_run_call` passed (none if ''); returns
  the lines to print."""
  if not wheels.is_dir() or not list(wheels.glob("*.whl")):
    raise app.UsageError(f"--wheels={wheels}: no .whl files there (the device's missing packages: "
                         "../shared/device/wheels-py312).")
  sources = [(pathlib.Path(data_path(rel)), rel) for rel in DATA_FILES]
  missing = [str(p) for p, _ in sources if not p.is_file()]
  if missing:
    raise app.UsageError(f"corpora not found: {', '.join(missing)}; set DLM_DATA_DIR to the shared corpora.")
  checked = dry_run_before_staging(dry_run_call) if dry_run_call else ["No dry run before staging (--stage_call='')."]
  if folder.exists():
    shutil.rmtree(folder)
  copied = suite.copy_tree_files([(w, f"whl/{w.name}") for w in sorted(wheels.glob("*.whl"))], folder)
  copied += suite.copy_tree_files([(p, f"data/{rel}") for p, rel in sources], folder)
  if with_puzzles:
    copied += suite.copy_tree_files([(path, f"puzzles/{path.parent.name}/{path.name}")
                                     for path in generate_puzzle_sets(REPO / "runs" / "puzzles" / "gpu_stage")], folder)
  commit = report.commit(REPO)
  (folder / "COMMIT").write_text(commit + "\n", encoding="utf-8")
  rel = folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder
  return checked + [f"Staged {copied / 2**20:.1f} MiB in {rel}/ for commit {commit}.",
                    f'carry: ["{rel}"]',
                    "command: bash launch/gpu_suite.sh        (the headline call; or: tests, quality, sampling, "
                    "pretrained, puzzles, profile, variants, hot_path)",
                    "timeout_s: 600 (the call ends by itself within GPU_BUDGET_S = 510 s plus start-up)"]


def generate_puzzle_sets(root: pathlib.Path) -> list[pathlib.Path]:
  """PUZZLE_SETS written (or found cached) under `root` by launch.puzzles; returns their files."""
  files = []
  for name, flags_ in PUZZLE_SETS.items():
    print(f"Puzzle set {name} ({' '.join(flags_)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "launch.puzzles", *flags_, "--progress=false", f"--output={root / name}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    files += sorted((root / name).iterdir())
  return files


def dry_run_before_staging(call: str) -> list[str]:
  """The call shrunk on this CPU (GPU_DRY_RUN=1 bash launch/gpu_suite.sh CALL), as the last check before device
  time is spent on it: every stage must end "ok". Its files go to a temporary folder; returns the lines to print."""
  with tempfile.TemporaryDirectory(prefix="dlm_stage_dry_run_") as tmp:
    out = pathlib.Path(tmp) / "out"
    print(f"Dry run of the {call!r} call on this CPU before staging (~2 minutes; --stage_call='' skips it) ...",
          flush=True)
    env = {**os.environ, "GPU_DRY_RUN": "1", "OUT": str(out), "GPU_WORK_DIR": str(pathlib.Path(tmp) / "work")}
    result = subprocess.run(["bash", str(REPO / "launch" / "gpu_suite.sh"), *([] if call == "headline" else [call])],
                            cwd=REPO, env=env, capture_output=True, text=True)
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    bad = [f"{r['stage']} {r['status']}" for r in rows if r["status"] != "ok"]
    if result.returncode != 0 or bad or not rows:
      tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
      raise app.UsageError(f"the dry run of the {call!r} call failed ({', '.join(bad) or tail[0]}): run "
                           f"'GPU_DRY_RUN=1 bash launch/gpu_suite.sh {'' if call == 'headline' else call}' and fix it "
                           "before spending device time on it.")
    return [f"Dry run of the {call!r} call: {len(rows)} stages ok in "
            f"{sum(r.get('wall_s') or 0 for r in rows):.0f} s."]


def main(argv):
  names = argv[1:]
  if FLAGS.list_data:
    print("\n".join(DATA_FILES))
    return
  if FLAGS.stage:
    call = "" if os.environ.get("GPU_SKIP_DRY_RUN", "") not in ("", "0") else FLAGS.stage_call
    if call and call not in calls():
      raise app.UsageError(f"--stage_call={call!r}: choose one of {', '.join(calls())}, or '' for no dry run.")
    print("\n".join(stage_device_call(pathlib.Path(FLAGS.stage).resolve(), pathlib.Path(FLAGS.wheels), call,
                                      with_puzzles=FLAGS.stage_call == "puzzles")))
    return
  table = calls()
  if FLAGS.list_calls:
    for name, stages in table.items():
      print(f"{name}: " + ", ".join(f"{s.name} (min {s.min_s:.0f} s, cap {s.cap_s:.0f} s)" for s in stages))
    return
  if len(names) > 1 or (names and names[0] not in table):
    raise app.UsageError(f"call {' '.join(names)!r}: choose one of {', '.join(table)} (no argument: headline).")
  call = names[0] if names else "headline"
  work = pathlib.Path(FLAGS.work_dir) / call
  if work.exists():  # a fresh folder: a trainer must not resume an earlier call's run
    if not (work / ".dlm_gpu_suite").exists() and any(work.iterdir()):
      raise app.UsageError(f"--work_dir: {work} exists and was not made by this suite; choose another GPU_WORK_DIR.")
    shutil.rmtree(work)
  work.mkdir(parents=True)
  (work / ".dlm_gpu_suite").touch()
  stamp = {"commit": report.commit(REPO), "date": suite.now_stamp(), "dry_run": FLAGS.dry_run}
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
  if FLAGS.dry_run:  # the shrunk run is a CPU run, also on a machine with a GPU
    env["JAX_PLATFORMS"] = "cpu"
  stages = table[call]
  runner = suite.Suite(call, stages, FLAGS.out_dir, work, FLAGS.budget_s, grace_s=FLAGS.grace_s, stamp=stamp,
                       render=render, env=env, on_result=add_device_to_stamp,
                       echo=lambda line: print(line, flush=True), cwd=REPO)
  print(f"GPU suite, call {call!r}{' (dry run)' if FLAGS.dry_run else ''}: {len(stages)} stages, budget "
        f"{FLAGS.budget_s:.0f} s; OUT={FLAGS.out_dir}, work in {work}", flush=True)
  results = runner.run()
  print("\n" + (pathlib.Path(FLAGS.out_dir) / "summary.md").read_text(encoding="utf-8"), flush=True)
  print(json.dumps({r.stage: r.status for r in results}))


if __name__ == "__main__":
  cli.run(main)
