"""Golden values of the embedded default (`python -m launch.train` with no flags): a change that moves its losses shows
up here, whatever file it touched.

The values were recorded at commit e950d5b (before the one-home-per-concept refactor, which kept them bit for bit)
on the 2-core CPU machine, jax 0.10.2, Python 3.11.7 (the step-900 NELBO re-recorded on 2026-12-06), and all of them
again on 2026-12-07, when the embedded default began to train on the clipped times and then with a longer warm-up
(issue #31): see below.
The embedded corpus is CPython's `pydoc_data.topics`, which changes
between Python releases, so the values are keyed by a fingerprint of the corpus; on another corpus the tests skip and
say so. Tolerances are relative 1e-3: far above the float32 rounding a jax or XLA release reorders (~1e-6 after 20
steps), far below what a change to the data, model, objective or optimizer does (percents).
"""
import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from dlm_jax.data import corpus
from dlm_jax.training import loop

# corpus fingerprint -> {step: training loss (nats/token)} and the validation NELBO at step 900 (nats/token).
# Re-recorded on 2026-12-07 when the embedded default began to train on issue #31's clipped times t ~ U[0.3, 0.8]
# (configs/default.CLIPPED_TIME_WINDOW): its losses are the window's loss, not the ELBO's (on t ~ U[0, 1] they were
# 4.383554935455322, 4.48512077331543, 3.8721840381622314, 3.6162354946136475, the step-900 NELBO
# 2.5166445672512054), and again the same day when its warm-up grew from 50 to 150 updates (issue #31's third table;
# steps 10 and 20 were 4.027298927307129 and 3.621854782104492; steps 1 and 2 come before the warm-up's first
# non-zero learning rate shows and do not move).
GOLDEN_TRAIN_LOSS = {"d816f8d22e0cf35d": {1: 4.557426452636719, 2: 4.607700347900391, 10: 4.173665523529053,
                                          20: 3.9951274394989014}}
# Re-recorded on 2026-12-06 on the machine CI runs on: 2.4983557164669037 (3.6044 bits/char) was recorded on
# 2026-11-23 at 0c2aded, but that same commit gives 2.5166445672512054 here today, as do the 7 commits up to 8084ce9
# that a bisect tested, f48499f and d41cbb1: after 900 steps the float32 rounding of another XLA build or CPU is no
# longer ~1e-6 but 0.7% (the 20-step losses above still agree within their 1e-3).
# On the clipped times (2026-12-07, this machine, `python -m launch.train`): 2.418169617652893 (2.5166445672512054 on
# t ~ U[0, 1]); with the warm-up of 150 (the same day): 2.3386362195014954.
GOLDEN_EVAL_900 = {"d816f8d22e0cf35d": 2.3386362195014954}  # 3.3739 bits/char: the README's figure


def embedded_default():
  import importlib.util
  spec = importlib.util.spec_from_file_location("default_config", REPO / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.tensorboard = False
  config.model.dtype = "float32"  # the CPU default; on a GPU "auto" would mean bfloat16
  return config


def corpus_fingerprint() -> str:
  text = "\x00".join(corpus.embedded_documents("pydoc_topics"))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def golden(table):
  fingerprint = corpus_fingerprint()
  if fingerprint not in table:
    pytest.skip(f"The embedded corpus (pydoc_data.topics of Python {sys.version.split()[0]}) has fingerprint "
                f"{fingerprint}; the golden values were recorded on Python 3.11.7's ({sorted(table)}).")
  return table[fingerprint]


def test_embedded_default_losses_of_the_first_20_steps(tmp_path):
  expected = golden(GOLDEN_TRAIN_LOSS)
  with jax.default_matmul_precision("highest"):  # no TF32 on a GPU
    summary = loop.train(embedded_default(), str(tmp_path), stop_at_step=20)
  losses = {r["step"]: r["loss"] for r in summary["history"]}
  assert summary["step"] == 20 and sorted(losses) == list(range(1, 21))
  for step, value in expected.items():
    np.testing.assert_allclose(losses[step], value, rtol=1e-3, err_msg=f"step {step}")


@pytest.mark.slow
def test_embedded_default_reaches_the_documented_validation_nelbo(tmp_path):
  """`python -m launch.train` exactly as the README gives it, about 2-4 minutes on 2 CPU cores: the README's 3.37
  bits/char. In a subprocess with the user's XLA flags: the tests' level-0 compilation (tests/conftest.py) changes the
  float32 rounding, which 900 steps amplify to ~0.14% (2.5132 against 2.5166 nats), past the 1e-3 tolerance."""
  expected = golden(GOLDEN_EVAL_900)
  user_flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "").strip()
  result = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={tmp_path}"], cwd=REPO,
                          env=dict(os.environ, XLA_FLAGS=user_flags), capture_output=True, text=True, timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  evaluations = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                 if "eval/nll_per_token" in line]
  assert evaluations[-1]["step"] == 900
  np.testing.assert_allclose(evaluations[-1]["eval/nll_per_token"], expected, rtol=1e-3)
