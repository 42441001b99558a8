"""The trainer: exact resume, checkpoint round trip, metrics files, clear stops, and the CLI entry points."""
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from conftest import REPO, tiny_config
from dlm_jax.errors import ConfigError, TrainingDiverged
from dlm_jax.training import checkpoint, loop, metrics


def train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir / "metrics.jsonl") if "train/loss" in r}


def test_run_writes_metrics_checkpoint_and_loss_falls(trained_run):
  workdir, summary = trained_run
  assert summary["step"] == 12 and not summary["stopped"]
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 13))
  assert np.mean([losses[s] for s in (10, 11, 12)]) < np.mean([losses[s] for s in (1, 2, 3)])
  assert np.isfinite(summary["eval_nll_per_token"])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [6, 12]


def test_interrupted_and_resumed_equals_uninterrupted(trained_run, tmp_path):
  """Stop at step 5 (as SIGTERM does: checkpoint, return), resume: steps 6..12 have the same losses and the final
  parameters are identical to the uninterrupted run's."""
  workdir, _ = trained_run
  config = tiny_config(**{"train.ema_decay": 0.9})
  first = loop.train(config, str(tmp_path), stop_at_step=5)
  assert first["stopped"] and first["step"] == 5
  second = loop.train(config, str(tmp_path))
  assert second["step"] == 12
  reference, resumed = train_losses(workdir), train_losses(tmp_path)
  for step in range(6, 13):
    np.testing.assert_allclose(resumed[step], reference[step], rtol=1e-6, err_msg=f"step {step}")
  params_ref = checkpoint.load_for_inference(workdir, weights="raw").params
  params_resumed = checkpoint.load_for_inference(tmp_path, weights="raw").params
  chex.assert_trees_all_close(params_ref, params_resumed, rtol=1e-6, atol=1e-7)


def test_resume_after_a_kill_between_checkpoints_logs_each_step_once(trained_run, tmp_path):
  """A run killed after step 12 but before its step-12 checkpoint (simulated: the checkpoint removed) resumes from
  step 6 and repeats steps 7-12; metrics.jsonl then holds each step once, with the repeated steps' values."""
  import shutil
  workdir, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints" / "12")
  loop.train(tiny_config(**{"train.ema_decay": 0.9}), str(copy))
  steps = [r["step"] for r in metrics.read_jsonl(copy / "metrics.jsonl") if "train/loss" in r]
  assert steps == list(range(1, 13))
  np.testing.assert_allclose([train_losses(copy)[s] for s in steps], [train_losses(workdir)[s] for s in steps],
                             rtol=1e-6)


def damage(step_dir, how):
  """Damages one checkpoint the ways a full disk or a killed copy does."""
  if how == "largest file cut in half":
    largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = largest.read_bytes()
    largest.write_bytes(data[:len(data) // 2])
  else:
    (step_dir / how).write_bytes(b"")


@pytest.mark.parametrize("how", ["state/_METADATA", "data/process_0-of-1.json", "meta/metadata",
                                 "largest file cut in half"])
def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_previous_one(trained_run, tmp_path,
                                                                                             capsys, how):
  import shutil
  workdir, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  damage(copy / "checkpoints" / "12", how)
  summary = loop.train(tiny_config(**{"train.ema_decay": 0.9}), str(copy))
  out = capsys.readouterr().out
  assert "checkpoint step 12" in out and "is damaged" in out and "Resumed from" in out and "at step 6" in out
  assert summary["step"] == 12
  assert (copy / "checkpoints_damaged" / "12").is_dir(), "the damaged step is kept, moved aside"
  np.testing.assert_allclose([train_losses(copy)[s] for s in range(1, 13)],
                             [train_losses(workdir)[s] for s in range(1, 13)], rtol=1e-6)


def test_a_checkpoint_of_another_model_is_a_mismatch_not_damage(trained_run):
  """Restoring into a different model's state (as after a code change) is refused as a mismatch, files untouched."""
  from dlm_jax.training import optimizer, state as state_lib
  workdir, summary = trained_run
  config = tiny_config(**{"train.ema_decay": 0.9, "model.mlp_dim": 96})
  tx = optimizer.make_optimizer(config.optimizer, 12)
  abstract = state_lib.abstract_state(config, summary["vocab_size"], tx)
  abstract = checkpoint.with_sharding(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  mngr = checkpoint.manager(workdir, create=False)
  with pytest.raises(checkpoint.CheckpointError, match="does not match the model/optimizer"):
    checkpoint.restore_newest_intact(mngr, abstract)
  assert sorted(mngr.all_steps()) == [6, 12] and not (workdir / "checkpoints_damaged").exists()
  mngr.close()


def test_a_checkpoint_with_stacked_layer_parameters_restores_into_per_layer_trees(trained_run, tmp_path):
  """Checkpoints written before per-layer parameter trees hold each layer list as one stacked array per parameter;
  they restore (train state, optimizer state and EMA alike) into the per-layer layout, value for value."""
  import shutil

  import orbax.checkpoint as ocp

  from dlm_jax.models import layers
  from dlm_jax.training import optimizer, state as state_lib
  workdir, summary = trained_run
  config = tiny_config(**{"train.ema_decay": 0.9})
  tx = optimizer.make_optimizer(config.optimizer, 12)
  abstract = state_lib.abstract_state(config, summary["vocab_size"], tx)
  abstract = checkpoint.with_sharding(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  mngr = checkpoint.manager(workdir, create=False)
  state = checkpoint.restore(mngr, abstract, step=12)
  mngr.close()
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints" / "12" / "state")
  with ocp.StandardCheckpointer() as writer:
    writer.save(copy / "checkpoints" / "12" / "state", layers.stacked_layout(state))
  stacked_shapes = {x.shape for x in jax.tree.leaves(layers.stacked_layout(abstract.params))}
  assert (config.model.num_layers, config.model.width) in stacked_shapes  # the norms' scales, stacked

  mngr = checkpoint.manager(copy, create=False)
  step, restored = checkpoint.restore_newest_intact(mngr, abstract)
  mngr.close()
  assert step == 12
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(checkpoint.load_for_inference(copy).params, checkpoint.load_for_inference(workdir).params)


def test_no_intact_checkpoint_is_one_clear_error(trained_run, tmp_path):
  import shutil
  workdir, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  for step in ("6", "12"):
    damage(copy / "checkpoints" / step, "meta/metadata")
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint in .* is intact"):
    loop.train(tiny_config(**{"train.ema_decay": 0.9}), str(copy))


def test_checkpoint_round_trip_restores_config_tokenizer_and_ema(trained_run):
  workdir, summary = trained_run
  run = checkpoint.load_for_inference(workdir)
  ema, raw = run.params, checkpoint.load_for_inference(workdir, weights="raw").params
  assert run.config.data.seq_len == 32 and run.config.train.ema_decay == 0.9 and run.step == 12
  assert run.tokenizer.to_dict() == summary["tokenizer"].to_dict()
  assert not run.objective.is_autoregressive
  assert jax.tree.structure(ema) == jax.tree.structure(raw)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(raw)))


def test_tokenizer_mismatch_with_checkpoint_is_refused(trained_run):
  workdir, _ = trained_run
  config = tiny_config(**{"data.tokenizer": "sentencepiece", "data.tokenizer_path": "x.model"})
  with pytest.raises(checkpoint.CheckpointError, match="data.tokenizer: 'char' -> 'sentencepiece'"):
    loop.train(config, str(workdir))


def test_resume_reports_config_changes_field_by_field(trained_run, tmp_path, capsys):
  """A resumed run may change num_steps or the learning rate (printed), not the model (refused, naming the field)."""
  import shutil
  workdir, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  with pytest.raises(checkpoint.CheckpointError, match=r"model.width: 32 -> 48"):
    loop.train(tiny_config(**{"train.ema_decay": 0.9, "model.width": 48}), str(copy))
  summary = loop.train(tiny_config(**{"train.ema_decay": 0.9, "train.num_steps": 14,
                                      "optimizer.learning_rate": 1e-3}), str(copy))
  assert summary["step"] == 14
  assert "changed config fields: optimizer.learning_rate: 0.002 -> 0.001; train.num_steps: 12 -> 14" in \
      capsys.readouterr().out


def test_one_trainer_per_workdir(tmp_path):
  """While one trainer holds the workdir, a second is refused with the holder's PID and host; afterwards it runs."""
  import os
  import socket
  with checkpoint.workdir_lock(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match=f"in use by another trainer \\(pid {os.getpid()} on host "
                       f"{socket.gethostname()}"):
      loop.train(tiny_config(), str(tmp_path))
  with checkpoint.workdir_lock(tmp_path):  # taking it again without an error shows the first was released
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on host ")  # and this holder is named
  assert (tmp_path / ".lock").read_text() == ""  # released: the holder's line is cleared


def test_unwritable_checkpoints_folder_is_reported_before_training(tmp_path, monkeypatch):
  """The write probe's PermissionError becomes one CheckpointError naming the folder (runs as root too, where a chmod
  cannot make a folder unwritable: the probe is made to fail instead)."""
  import tempfile

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints is not writable \(Permission denied\)"):
    loop.train(tiny_config(), str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder: a read-only checkpoints folder needs a "
                    "non-root user")
def test_unwritable_checkpoints_folder_fails_at_once(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "checkpoints").chmod(0o500)
  try:
    with pytest.raises(checkpoint.CheckpointError, match="checkpoints is not writable"):
      loop.train(tiny_config(), str(tmp_path))
  finally:
    (tmp_path / "checkpoints").chmod(0o700)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate": 1e30, "optimizer.grad_clip": 0.0, "eval.every": 0})
  with pytest.raises(TrainingDiverged, match=r"non-finite at step \d+"):
    loop.train(config, str(tmp_path))


def test_time_limit_stops_after_a_final_evaluation_and_a_checkpoint(tmp_path, capsys):
  """train.time_limit_s: the first step alone (it compiles) outlasts 1 ms, so the run stops after it as on SIGTERM,
  with that step evaluated (eval.every does not divide it) and checkpointed as the latest and the best."""
  summary = loop.train(tiny_config(**{"train.time_limit_s": 1e-3, "eval.every": 6}), str(tmp_path / "run"))
  assert summary["timed_out"] and summary["stopped"] and summary["step"] == 1 and not summary["stopped_early"]
  rows = metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in rows if "eval/nll_per_token" in r] == [1]
  assert summary["best"]["step"] == 1 and summary["eval_nll_per_token"] == summary["best"]["nll_per_token"]
  assert checkpoint.manager(tmp_path / "run", create=False).latest_step() == 1
  assert "Stopping at step 1: train.time_limit_s=0.001 s have passed." in capsys.readouterr().out
  from dlm_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"train.time_limit_s=-1.0: must be a number >= 0"):
    loop.train(tiny_config(**{"train.time_limit_s": -1.0}), str(tmp_path / "negative"))


def test_stop_on_signals_sets_flag():
  import os
  import signal
  flag = {"stop": False}
  with loop.stop_on_signals(flag):
    os.kill(os.getpid(), signal.SIGTERM)
  assert flag["stop"]


def test_sample_cli_prompt_and_suffix_are_kept(trained_run):
  workdir, _ = trained_run
  result = subprocess.run(
      [sys.executable, "-m", "launch.sample", f"--workdir={workdir}", "--prompt=The ", "--suffix=.",
       "--length=10", "--num_samples=2", "--steps=5", "--stream", "--stream_delay=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  samples = result.stdout.split("--- sample ")[1:]
  assert len(samples) == 2
  for s in samples:
    text = s.split("\n", 1)[1].split("\n[")[0].rstrip("\n")
    assert text.startswith("The ") and text.endswith(".") and len(text) == 4 + 10 + 1, repr(text)
  # the tour's one-token-per-step demo (docs/tour.md) shows text, not one character repeated.
  demo = subprocess.run(
      [sys.executable, "-m", "launch.sample", f"--workdir={workdir}", "--prompt=The ", "--length=20", "--steps=20",
       "--reveal_schedule=linear", "--temperature=0.8", "--num_samples=2"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert demo.returncode == 0, demo.stderr[-2000:]
  generated = "".join(s.split("\n", 1)[1][4:24] for s in demo.stdout.split("--- sample ")[1:])
  assert len(set(generated)) > 3, repr(generated)


def test_training_samples_are_shown_on_the_console_with_their_file(tmp_path, capsys):
  loop.train(tiny_config(**{"train.num_steps": 4, "train.sample_every": 4, "train.checkpoint_every": 4,
                            "eval.every": 0, "tensorboard": False}), str(tmp_path))
  out = capsys.readouterr().out
  assert f"step 4 sample (all 2 in {tmp_path / 'samples.txt'}): " in out
  assert (tmp_path / "samples.txt").read_text(encoding="utf-8").startswith("=== step 4 samples ===")


@pytest.mark.parametrize("model_name", ["transformer", "eco_hybrid", "hrm"])
def test_weight_decay_reaches_matrices_only(model_name):
  """AdamW's decoupled decay (as nanoGPT: every weight of dimension >= 2, embeddings included) and nothing else:
  with zero gradients, one step moves each matrix by -lr * weight_decay * itself and leaves norms and biases."""
  import jax.numpy as jnp
  from flax import nnx

  from configs import default as default_config
  from dlm_jax import models
  from dlm_jax.training import optimizer
  config = tiny_config(**{"optimizer.warmup_steps": 0, "optimizer.weight_decay": 0.5,
                          "optimizer.learning_rate": 0.1})
  config.model = default_config.model_config(model_name)
  config.model.update(num_heads=2, width=16, mlp_dim=32)
  params = nnx.state(models.get_model(config, 20, nnx.Rngs(0)), nnx.Param)
  tx = optimizer.make_optimizer(config.optimizer, 10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  names = []
  for (path, param), update in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(updates)):
    name = jax.tree_util.keystr(path)
    names.append(name)
    expected = -0.1 * 0.5 * param if param.ndim >= 2 else jnp.zeros_like(param)
    np.testing.assert_allclose(update, expected, rtol=1e-6, atol=1e-9, err_msg=name)
  assert any("norm" in n and "scale" in n for n in names) and any("embedding" in n for n in names)


def test_ema_decay_warms_up():
  from dlm_jax.training import step as step_lib
  decay = lambda t, warmup=True: float(step_lib.ema_decay_at(t, 0.999, warmup))
  np.testing.assert_allclose([decay(0), decay(1), decay(90), decay(10 ** 6)],
                             [0.1, 2 / 11, 0.91, 0.999], rtol=1e-6)
  assert decay(0, warmup=False) == pytest.approx(0.999)


def test_best_checkpoint_follows_the_validation_nelbo_and_early_stop(tmp_path):
  """WORKDIR/best holds the evaluation with the lowest NELBO (of the EMA weights, logged as eval/; the raw weights'
  as eval_raw/); with a zero learning rate every evaluation ties, so early_stop_evals=2 stops after the third."""
  config = tiny_config(**{"train.ema_decay": 0.99, "eval.every": 3, "train.checkpoint_every": 3})
  summary = loop.train(config, str(tmp_path / "run"))
  evals = {r["step"]: r["eval/nll_per_token"] for r in metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl")
           if "eval/nll_per_token" in r}
  raws = [r for r in metrics.read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_raw/nll_per_token" in r]
  assert sorted(evals) == [3, 6, 9, 12] and len(raws) == 4
  best_step = min(evals, key=evals.get)
  assert summary["best"] == {"step": best_step, "nll_per_token": pytest.approx(evals[best_step])}
  best = checkpoint.load_for_inference(tmp_path / "run", which="best")
  assert (best.step, best.checkpoint, best.weights) == (best_step, "best", "ema")
  assert "best-validation checkpoint, step" in best.describe() and "EMA weights" in best.describe()

  frozen = tiny_config(**{"optimizer.learning_rate": 0.0, "eval.every": 2, "train.early_stop_evals": 2})
  summary = loop.train(frozen, str(tmp_path / "frozen"))
  assert summary["stopped_early"] and summary["step"] == 6 and summary["best"]["step"] == 2
  assert checkpoint.manager(tmp_path / "frozen", create=False).latest_step() == 6
  with pytest.raises(checkpoint.CheckpointError, match="no best checkpoint"):
    checkpoint.load_for_inference(_trained_without_eval(tmp_path), which="best")


def _trained_without_eval(tmp_path):
  workdir = tmp_path / "no_eval"
  loop.train(tiny_config(**{"eval.every": 0, "train.num_steps": 2}), str(workdir))
  return workdir


def test_self_conditioning_trains_end_to_end_and_its_map_learns(tmp_path):
  config = tiny_config(**{"model.self_conditioning": True, "train.num_steps": 4, "eval.every": 4})
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["step"] == 4 and np.isfinite(summary["eval_nll_per_token"])
  run = checkpoint.load_for_inference(tmp_path / "run")
  assert float(np.abs(np.asarray(run.params["self_condition"]["kernel"][...])).max()) > 0  # left zero, it would be 0


def test_loss_estimator_std_estimates_the_draws_spread():
  """Two draws per batch: a loss whose draws are 2 N(0, 1) gives ~2 (sampling error of 256 pairs: ~4.4%); a loss
  without randomness gives 0 exactly; too few windows for a batch gives None."""
  from dlm_jax.evaluation import likelihood
  windows = np.zeros((256 * 4, 8), np.int32)
  noisy = lambda params, batch, key: 2.0 * jax.random.normal(key)
  std = likelihood.loss_estimator_std(noisy, None, windows, batch_size=4, seed=0, batches=256)
  assert 1.8 < std < 2.2, std
  assert likelihood.loss_estimator_std(lambda p, b, k: 1.5, None, windows, batch_size=4, seed=0, batches=8) == 0.0
  assert likelihood.loss_estimator_std(noisy, None, windows[:0], batch_size=4, seed=0, batches=8) is None


@pytest.mark.parametrize("causal", [False, True])
def test_training_logs_the_loss_estimators_std(tmp_path, causal):
  """eval/loss_estimator_std: the diffusion loss's Monte Carlo noise is positive; the AR arm's exact loss has none."""
  overrides = {"train.num_steps": 4, "eval.every": 4, "eval.estimator_batches": 2, "tensorboard": False}
  if causal:
    overrides.update({"model.causal": True, "diffusion.objective": "autoregressive"})
  loop.train(tiny_config(**overrides), str(tmp_path))
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "eval/loss_estimator_std" in line]
  assert len(logged) == 1 and logged[0]["step"] == 4
  assert (logged[0]["eval/loss_estimator_std"] == 0.0) if causal else (logged[0]["eval/loss_estimator_std"] > 0.05)


def test_init_from_run_starts_from_its_weights_and_tokenizer(trained_ar_run, tmp_path):
  """train.init_from_run: a diffusion arm with shifted logits starts from the AR run's parameters (with a zero learning
  rate they are still those after 2 updates) and its tokenizer; another architecture is refused naming the field."""
  ar = checkpoint.load_for_inference(trained_ar_run)
  overrides = {"train.init_from_run": str(trained_ar_run), "model.shift_logits": True, "train.num_steps": 2,
               "train.checkpoint_every": 2, "eval.every": 0, "optimizer.learning_rate": 0.0, "tensorboard": False}
  loop.train(tiny_config(**overrides), str(tmp_path / "converted"))
  converted = checkpoint.load_for_inference(tmp_path / "converted", weights="raw")
  assert not converted.config.model.causal and converted.config.model.shift_logits
  chex.assert_trees_all_equal(converted.params, ar.params)
  assert converted.tokenizer.to_dict() == ar.tokenizer.to_dict()
  with pytest.raises(ConfigError, match="train.init_from_run=.*other parameters"):
    loop.train(tiny_config(**{**overrides, "model.width": 48}), str(tmp_path / "wider"))


def test_importance_sampled_times_learn_their_proposal_and_resume_with_it(tmp_path):
  """diffusion.time_sampling='importance': the proposal is part of the train state: it leaves the uniform once every
  bin has losses (the logged density ratio's batch max is 1 at step 1, then moves), and a run stopped at step 3 and
  resumed repeats the uninterrupted run's losses (a resumed run that lost its proposal would draw other times)."""
  overrides = {"diffusion.time_sampling": "importance", "diffusion.importance_bins": 4,
               "diffusion.importance_warmup": 1, "train.num_steps": 6, "train.checkpoint_every": 3, "eval.every": 6,
               "eval.estimator_batches": 1, "tensorboard": False}
  loop.train(tiny_config(**overrides), str(tmp_path / "whole"))
  assert loop.train(tiny_config(**overrides), str(tmp_path / "split"), stop_at_step=3)["stopped"]
  loop.train(tiny_config(**overrides), str(tmp_path / "split"))
  whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
  np.testing.assert_allclose([split[s] for s in range(4, 7)], [whole[s] for s in range(4, 7)], rtol=1e-6)
  records = metrics.read_jsonl(tmp_path / "whole" / "metrics.jsonl")
  ratios = [r["train/importance_ratio_max"] for r in records if "train/importance_ratio_max" in r]
  assert ratios[0] == 1.0 and max(ratios[1:]) > 1.0 and min(ratios[1:]) != 1.0, ratios  # step 1: uniform
  assert any(r.get("eval/loss_estimator_std", 0) > 0 for r in records)


def test_extra_masks_for_the_first_updates_equal_a_run_resumed_with_one_mask(tmp_path):
  """diffusion.masks_per_sequence_steps=3 with two masks: updates 1-3 draw two masks per sequence, 4-6 one. The same
  as a run stopped at step 3 with two masks throughout and resumed with one (the trainer switches jitted steps at
  update 3, nothing else): equal losses at steps 4-6, equal weights, and the same estimator noise at step 6 (that
  of the one-mask loss the last updates used). Its first three losses differ from a one-mask run's (the extra draws
  were made)."""
  base = {"train.num_steps": 6, "train.checkpoint_every": 3, "eval.every": 6, "eval.estimator_batches": 1,
          "tensorboard": False}
  loop.train(tiny_config(**base, **{"diffusion.masks_per_sequence": 2, "diffusion.masks_per_sequence_steps": 3}),
             str(tmp_path / "scheduled"))
  assert loop.train(tiny_config(**base, **{"diffusion.masks_per_sequence": 2}), str(tmp_path / "split"),
                    stop_at_step=3)["stopped"]
  loop.train(tiny_config(**base), str(tmp_path / "split"))
  loop.train(tiny_config(**base), str(tmp_path / "one"), stop_at_step=3)
  scheduled, split, one = (train_losses(tmp_path / name) for name in ("scheduled", "split", "one"))
  np.testing.assert_allclose([split[s] for s in range(1, 7)], [scheduled[s] for s in range(1, 7)], rtol=1e-6)
  assert all(abs(one[s] - scheduled[s]) > 1e-4 for s in range(1, 4)), (one, scheduled)
  estimator_std = [[r["eval/loss_estimator_std"] for r in metrics.read_jsonl(tmp_path / name / "metrics.jsonl")
                    if "eval/loss_estimator_std" in r] for name in ("scheduled", "split")]
  np.testing.assert_allclose(*estimator_std, rtol=1e-6)  # step 6's noise is the one-mask loss's, the one trained
  chex.assert_trees_all_close(checkpoint.load_for_inference(tmp_path / "scheduled", weights="raw").params,
                              checkpoint.load_for_inference(tmp_path / "split", weights="raw").params,
                              rtol=1e-6, atol=1e-7)


def test_a_checkpoint_written_before_the_objective_state_existed_still_loads(trained_run, tmp_path):
  """A TrainState saved without the objective_state field (every checkpoint before issue #31's importance sampling)
  restores: its fields as saved, the new one as at step 0."""
  import shutil
  import orbax.checkpoint as ocp
  workdir, _ = trained_run
  shutil.copytree(workdir, tmp_path / "old")
  mngr = checkpoint.manager(tmp_path / "old")
  meta = checkpoint.restore_meta(mngr, 12)
  stored = mngr.restore(12, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert "objective_state" in stored
  del stored["objective_state"]
  mngr.close()
  for step in ("6", "12"):
    shutil.rmtree(tmp_path / "old" / "checkpoints" / step)
  mngr = checkpoint.manager(tmp_path / "old")
  checkpoint.save(mngr, 12, stored, None, meta, force=True)
  mngr.wait_until_finished()
  mngr.close()
  loaded = checkpoint.load_for_inference(tmp_path / "old")
  chex.assert_trees_all_equal(loaded.params, checkpoint.load_for_inference(workdir).params)
