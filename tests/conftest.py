"""Shared test setup: strict numpy rank promotion, full matmul precision and JAX's persistent compilation cache.

On a GPU machine run the suite as on CPU; under pytest-xdist (`-n 2`, the README's command) each worker is set not to
preallocate the GPU's memory (XLA_PYTHON_CLIENT_PREALLOCATE=false), else the first would take 75% of it.

The cache (default ~/.cache/dlm_jax/jax_compilation_cache, override with JAX_COMPILATION_CACHE_DIR) makes a second run
of the suite several times faster on CPU (a rerun measured 49 s -> 13 s).

With DLM_TEST_REPORT=FILE each test's outcome is appended to FILE as a JSON line the moment it is known
({"nodeid", "outcome": passed | failed | skipped, "duration"}; written by the controlling process under xdist), so
that a run cut short by the GPU suite's deadline still says which tests ran (launch/gpu_suite.py, call `tests`).
"""
import importlib.util
import json
import os
import pathlib

from dlm_jax import cli  # (imports no jax)

REPO = pathlib.Path(__file__).resolve().parents[1]
# Set as environment variables (not only jax.config) so the subprocesses the tests start (launch.sample, the notebook
# kernel) share the cache. It lives outside the clone so that CI runs on the same machine reuse it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cli.compilation_cache_dir()))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# On CPU, XLA's backend optimization level 0: a fresh clone's suite compiles hundreds of small programs, and at level 0
# each compiles in about two thirds of the time while the tiny test models run about as fast (a cold subset measured
# 102 s -> 66 s, warm 26 s -> 30 s). Exact-value and golden tests hold at either level. Not on a GPU machine.
if importlib.util.find_spec("jax_cuda12_plugin") is None and "xla_backend_optimization_level" not in \
    os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the cache variables)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests that check math run their models in float32 (model.dtype="float32": on a GPU "auto" means bfloat16); at full
# matmul precision, so that float32 on a GPU means float32 and not TF32. CPU results do not change.
jax.config.update("jax_default_matmul_precision", "highest")


_REPORTS_HERE = False  # whether this process writes DLM_TEST_REPORT's lines


def pytest_configure(config):
  global _REPORTS_HERE
  config.addinivalue_line("markers", "slow: longer than a few seconds on 2 CPU cores; excluded by default")
  # An xdist worker has `workerinput`; its reports reach the controller, which writes them. (Not the environment's
  # PYTEST_XDIST_WORKER: a pytest started by a test inside a worker inherits it.)
  _REPORTS_HERE = bool(os.environ.get("DLM_TEST_REPORT")) and not hasattr(config, "workerinput")


def pytest_runtest_logreport(report):
  """DLM_TEST_REPORT (module docstring): one line per test, from its call phase, or from the setup or teardown phase
  that failed or skipped it."""
  if not _REPORTS_HERE:
    return
  if report.when == "call" or report.outcome != "passed":
    with open(os.environ["DLM_TEST_REPORT"], "a", encoding="utf-8") as f:
      f.write(json.dumps({"nodeid": report.nodeid, "outcome": report.outcome, "when": report.when,
                          "duration": round(report.duration, 3)}) + "\n")


@pytest.fixture(scope="session")
def repo_root():
  return REPO


def tiny_config(**overrides):
  """configs/default.py shrunk to compile and run in seconds on CPU (same code paths)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("default_config", REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.tensorboard = True
  c.data.seq_len = 32
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 2, 2, 32, 64
  c.train.num_steps, c.train.batch_size = 12, 8
  c.train.log_every, c.train.checkpoint_every, c.train.sample_every = 4, 6, 0
  c.optimizer.warmup_steps = 2
  c.eval.every, c.eval.num_windows, c.eval.batch_size, c.eval.time_samples = 12, 16, 8, 1
  c.eval.estimator_batches = 0  # (one more compiled function per run; tests/test_training.py measures it)
  c.sample.num_samples, c.sample.steps = 2, 8
  return with_overrides(c, overrides)


def with_overrides(c, overrides: dict):
  """c with each "section.field": value of `overrides` set (in place; returns c)."""
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
  """A tiny diffusion model trained for 12 steps on the embedded corpus, with EMA: (workdir, summary)."""
  from dlm_jax.training import loop
  workdir = tmp_path_factory.mktemp("trained_run")
  summary = loop.train(tiny_config(**{"train.ema_decay": 0.9}), str(workdir))
  return workdir, summary


@pytest.fixture(scope="session")
def trained_ar_run(tmp_path_factory):
  """The causal control arm of `trained_run`'s config (same corpus and tokenizer): a judge and verifier. Workdir."""
  from dlm_jax.training import loop
  workdir = tmp_path_factory.mktemp("trained_ar_run")
  loop.train(tiny_config(**{"model.causal": True, "diffusion.objective": "autoregressive"}), str(workdir))
  return workdir


@pytest.fixture(scope="session")
def trained_hrm_run(tmp_path_factory):
  """A tiny HRM denoiser (memory cells, ACT) trained for 16 steps on the embedded corpus: (workdir, summary)."""
  from configs import default
  from dlm_jax.training import loop
  config = tiny_config(**{"train.num_steps": 16, "eval.every": 16, "eval.num_windows": 8})
  config.model = default.model_config("hrm")
  config.model.update(dict(num_heads=2, width=32, mlp_dim=64, l_layers=1, h_layers=1, h_cycles=2, l_steps=3,
                           memory_cells=4, memory_content=2, memory_top_k=2))
  workdir = tmp_path_factory.mktemp("trained_hrm_run")
  return workdir, loop.train(config, str(workdir))


@pytest.fixture(scope="session")
def puzzle_runs(tmp_path_factory):
  """48 easy Sudokus to train on, 8 to solve, and two tiny runs on them, a transformer with a calibration head
  (`root / "run"`, model.calibration_head, so that the "calibrated" policy solves too) and an HRM
  denoiser with memory cells and ACT (`root / "hrm"`): they learn little, the tests check the machinery. Returns
  root."""
  from configs import default
  from dlm_jax.data import puzzles
  from dlm_jax.training import loop
  root = tmp_path_factory.mktemp("puzzles")
  for name, count, seed in (("train", 48, 0), ("test", 8, 1)):
    items, report = puzzles.generate("sudoku", "easy", count, seed)
    puzzles.write_set(root / name, items, {"settings": {"seed": seed}, "report": report})
  overrides = {"data.layout": "puzzle", "data.path": str(root / "train"), "data.valid_path": str(root / "test"),
               "data.seq_len": 81, "data.augment": 4, "train.num_steps": 6, "eval.every": 6, "eval.num_windows": 8,
               "diffusion.objective": "elbo"}
  loop.train(tiny_config(**overrides, **{"model.calibration_head": True}), str(root / "run"))
  config = tiny_config(**overrides)
  config.model = default.model_config("hrm")
  config.model.update(dict(num_heads=2, width=32, mlp_dim=64, l_layers=1, h_layers=1, h_cycles=2, l_steps=3,
                           memory_cells=4, memory_content=2, memory_top_k=2))
  loop.train(config, str(root / "hrm"))
  return root


def tiny_thought_config(**overrides):
  """tiny_config with a thought (4, 4, 2) and rows of 2 context windows + 1 target window of 16 tokens."""
  from dlm_jax.proj.thought.configs import small
  c = small.make_arm(tiny_config(), "thought", (4, 4, 2), hidden=32, context_windows=2, window=16)
  return with_overrides(c, overrides)


@pytest.fixture(scope="session")
def trained_thought_run(tmp_path_factory):
  """A tiny thought model (dlm_jax/proj/thought/) trained for 12 steps on the embedded corpus: (workdir, summary)."""
  from dlm_jax.training import loop
  workdir = tmp_path_factory.mktemp("trained_thought_run")
  return workdir, loop.train(tiny_thought_config(), str(workdir))
