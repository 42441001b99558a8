"""A new user's first contact (issue 26): every bad input is one line on stderr with status 2 and creates nothing;
divergence stops a run (or skips the update) and leaves only good checkpoints; corpora are text."""
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, tiny_config
from dlm_jax import objectives
from dlm_jax.data import corpus
from dlm_jax.errors import ConfigError, TrainingDiverged
from dlm_jax.training import checkpoint, config_checks, loop, metrics


def train_cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.train", *args], cwd=REPO, capture_output=True, text=True)


def assert_one_line_error(result, fragment: str):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (result.returncode,
                                                                                          result.stderr)
  assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("flag, fragment", [
    ("--config.train.batch_size=0", "--config.train.batch_size=0: must be an integer >= 1"),
    ("--config.train.grad_accum_steps=0", "--config.train.grad_accum_steps=0: must be an integer >= 1"),
    ("--config.train.log_every=0", "--config.train.log_every=0: must be an integer >= 1"),
    ("--config.optimizer.learning_rate=-1", "--config.optimizer.learning_rate=-1.0: must be a number >= 0"),
    ("--config.train.num_steps=0", "--config.train.num_steps=0: must be an integer >= 1"),
    ("--config=configs/nonexistent.py", "configs/nonexistent.py is not a file"),
    ("--config=configs/shakespeare_char.py:nosucharm", "takes 'diffusion', 'ar', "),
    ("--config.train.batch_size=abc", "--config.train.batch_size=abc: the field is an int (now 32); give an int"),
])
def test_a_bad_config_is_one_line_and_creates_nothing(flag, fragment, tmp_path):
  workdir = tmp_path / "run"
  assert_one_line_error(train_cli(flag, f"--workdir={workdir}"), fragment)
  assert not workdir.exists()


def test_a_corpus_that_is_not_text_and_a_workdir_that_cannot_be_one(tmp_path):
  nul = tmp_path / "zeros.txt"
  nul.write_bytes(b"\x00" * 5000)
  assert_one_line_error(train_cli(f"--config.data.path={nul}", f"--workdir={tmp_path / 'a'}"),
                        f"{nul} is not text (it holds NUL bytes)")
  a_file = tmp_path / "a_file"
  a_file.write_text("keep me")
  assert_one_line_error(train_cli(f"--workdir={a_file}"), f"--workdir={a_file} is a file, not a folder")
  assert a_file.read_text() == "keep me"
  assert_one_line_error(train_cli("--workdir=/proc/dlm_jax_run"), "--workdir=/proc/dlm_jax_run cannot be created")


def test_config_checks_name_each_rule():
  for field, value, fragment in [("train.ema_decay", 1.0, "in [0, 1)"), ("optimizer.min_lr_ratio", 1.5, "in [0, 1]"),
                                 ("eval.time_samples", 0, "an integer >= 1"), ("data.seq_len", 1, ">= 2"),
                                 ("train.spike_factor", 0.5, "0 (off) or > 1"), ("train.nan_policy", "ignore", "one of"),
                                 ("train.batch_size", 6, "divisible by --config.train.grad_accum_steps=4"),
                                 ("optimizer.learning_rate", float("nan"), "a number >= 0")]:
    config = tiny_config(**{"train.grad_accum_steps": 4} if field == "train.batch_size" else {})
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
      config_checks.check(config)
  config_checks.check(tiny_config())


def test_folders_skip_hidden_folders_and_files_that_are_not_text(tmp_path):
  (tmp_path / ".git").mkdir()
  (tmp_path / ".git" / "index").write_bytes(b"DIRC\x00\x00\x00\x02" * 100)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("hello world\n" * 50, encoding="utf-8")
  (tmp_path / "b.txt").write_text("second file\n" * 50, encoding="utf-8")
  (tmp_path / "image.png").write_bytes(bytes(range(256)) * 40)
  text = corpus.load_documents(str(tmp_path))
  assert text.docs == ["second file\n" * 50, "hello world\n" * 50]  # b.txt, notes/a.txt (sorted paths)
  assert "2 file(s), 1,200 bytes (b.txt, a.txt); 1 hidden skipped, 1 not text skipped" in text.summary
  assert corpus.not_text("tab\tnew line\n\r\x0c".encode()) == ""
  assert corpus.not_text(b"\x01\x02\x03abc") == "50% of its first 6 bytes are control characters"
  only_binary = tmp_path / "bin"
  only_binary.mkdir()
  (only_binary / "x.dat").write_bytes(b"\x00\x01" * 10)
  with pytest.raises(corpus.DataError, match="none of its 1 file"):
    corpus.load_documents(str(only_binary))
  late = tmp_path / "late_controls.txt"  # text for the first 64 KiB, then control characters
  late.write_bytes(b"a" * 70000 + b"\x01" * 150000)
  with pytest.raises(corpus.DataError, match="150,000 of its 220,000 characters are control characters"):
    corpus.load_documents(str(late))


class NaNFrom:
  """An objective whose loss is multiplied by NaN (so the gradient is NaN too) at the updates whose 0-based index is
  in `steps`: an injected divergence."""

  def __init__(self, inner, steps):
    self.inner, self.steps = inner, steps

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def __call__(self, fn, x0, rng, with_aux=True, step=None, teacher_fn=None):
    loss, values = self.inner(fn, x0, rng, with_aux=with_aux, step=step, teacher_fn=teacher_fn)
    hit = jnp.isin(step, jnp.asarray(self.steps))
    loss = loss * jnp.where(hit, jnp.nan, 1.0)
    return loss, {**values, "loss": loss}


def inject(monkeypatch, steps):
  build = objectives.from_config
  monkeypatch.setattr(objectives, "from_config", lambda *a, **k: NaNFrom(build(*a, **k), steps))


def test_an_injected_nan_stops_the_run_and_removes_the_suspect_checkpoint(tmp_path, monkeypatch):
  """Update 4 (index 3) is NaN: the loss it reports was computed with step 3's parameters, so checkpoint 3 goes and
  checkpoint 2 is the latest; no best checkpoint holds a diverged state."""
  inject(monkeypatch, [3])
  config = tiny_config(**{"train.checkpoint_every": 1, "train.max_to_keep": 10, "eval.every": 2})
  with pytest.raises(TrainingDiverged, match=r"non-finite at step 4 \(loss nan.*the latest is step 2") as error:
    loop.train(config, str(tmp_path))
  assert error.value.step == 3
  assert checkpoint.manager(tmp_path, create=False).all_steps() == [1, 2]
  assert checkpoint.manager(tmp_path, create=False, which="best").all_steps() == [2]


def test_skip_step_drops_the_nan_update_and_goes_on(tmp_path, monkeypatch):
  inject(monkeypatch, [3])
  summary = loop.train(tiny_config(**{"train.nan_policy": "skip_step"}), str(tmp_path / "one"))
  assert summary["step"] == 12 and np.isfinite(summary["eval_nll_per_token"])
  rows = metrics.read_jsonl(tmp_path / "one" / "metrics.jsonl")
  assert [(r["step"], r["train/skipped_total"]) for r in rows if "train/skipped_total" in r] == [(4, 1.0)]
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
  inject(monkeypatch, list(range(3, 12)))  # every update from the 4th on: max_skipped_steps in a row stop it
  with pytest.raises(TrainingDiverged, match="3 updates in a row had a non-finite loss or gradient, the last at step 6"):
    loop.train(tiny_config(**{"train.nan_policy": "skip_step", "train.max_skipped_steps": 3}), str(tmp_path / "all"))


def test_divergence_checks_on_recorded_values():
  check = loop.Divergence(spike_factor=10.0, spike_window=20, batch_size=8)
  for step in range(1, 21):
    assert not check.check(step, {"loss": 2.0, "grad_norm": 1.0, "param_norm": 5.0})
  assert not check.check(21, {"loss": 19.9, "grad_norm": 1.0})  # below 10 x the median 2.0
  with pytest.raises(TrainingDiverged, match=r"jumped to 20.5 at step 22, 10 times its running median 2") as error:
    check.check(22, {"loss": 20.5})
  assert error.value.step == 21
  with pytest.raises(TrainingDiverged, match=r"non-finite at step 5 \(loss 3, grad_norm inf\)") as error:
    loop.Divergence().check(5, {"loss": 3.0, "grad_norm": float("inf")})
  assert error.value.step == 5  # a finite loss with a non-finite gradient: the update at step 5 is the suspect
  floor = loop.Divergence(spike_factor=10.0, spike_window=20)
  for step in range(1, 21):
    floor.check(step, {"loss": 1e-4})  # a distillation loss near 0: the median is floored at 0.1
  assert not floor.check(21, {"loss": 0.9})


def test_help_starts_with_what_a_newcomer_needs_and_help_config_explains_each_field():
  shown = train_cli("--help")
  first_block = shown.stdout.split("\n\n", 1)[0]
  assert shown.returncode == 0 and first_block.startswith("Start here"), shown.stdout[:500]
  for flag, meaning in [("--workdir=DIR", "resumes"), ("--config.train.num_steps=900", "optimizer updates"),
                        ("--config.data.path=embedded:pydoc_topics", "files/folders")]:
    assert any(flag in line and meaning in line for line in first_block.splitlines()), (flag, first_block)
  listing = train_cli("--help_config").stdout
  assert listing.startswith("Fields of configs/default.py, by section")
  assert "\ntrain\n" in listing and "\n  num_steps: 900\n      optimizer updates" in listing
  assert "\n  tokenizer: 'char'\n      \"char\" (alphabet built from the corpus), \"sentencepiece\"" in listing
  assert "\nmodel\n" in listing and "\n  width: 128\n      the model width D" in listing  # a dataclass field's comment
