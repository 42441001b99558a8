"""Duo's discrete consistency distillation through the real train step, on a toy language whose sequences few-step
samplers get wrong: the distilled student at T/2 steps samples closer to the teacher's T-step distribution than the
teacher itself does at T/2 steps."""
import collections
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from dlm_jax import objectives, special_tokens
from dlm_jax.diffusion import uniform
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.sampling import SamplerConfig, make_sampler
from dlm_jax.training import optimizer, state as state_lib, step as step_lib

VOCAB, L, TEACHER_STEPS, ROUND_STEPS = 9, 8, 8, 120  # states {2, 5, 6, 7, 8}
STATE_IDS = np.flatnonzero(uniform.states(VOCAB, special_tokens.DEFAULT))


def toy_batch(rng, batch):
  """Sequences a b a b ... with a != b drawn from the states: 20 equally likely sequences, each position's marginal
  uniform, so a sampler that decides many positions at once (too few steps) makes invalid ones."""
  first = rng.integers(0, len(STATE_IDS), batch)
  second = (first + rng.integers(1, len(STATE_IDS), batch)) % len(STATE_IDS)
  pairs = np.stack([STATE_IDS[first], STATE_IDS[second]], axis=1)
  return np.tile(pairs, (1, L // 2)).astype(np.int32)


def tiny_config(objective: str, num_steps: int):
  c = default.get_config()
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 2, 2, 64, 128
  c.model.time_conditioning = True
  c.model.dtype = "float32"  # the same arithmetic on a GPU (where "auto" is bfloat16)
  c.data.seq_len = L
  c.diffusion.schedule = "linear"
  c.diffusion.objective = objective
  c.diffusion.curriculum_steps = 0
  # The exact "posterior" parameterization: on this toy it learns the language in 500 updates (training NELBO 0.52
  # nats/token, entropy 0.37), Duo's "mean" does not (1.00; its samples are then invalid at any step count).
  c.diffusion.parameterization = "posterior"
  c.diffusion.distill_teacher_steps = TEACHER_STEPS
  c.diffusion.distill_round_steps = ROUND_STEPS
  c.train.num_steps = num_steps
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 0 if objective == "dcd" else 20
  return c


def train(config, init_params=None, seed=0):
  tx = optimizer.make_optimizer(config.optimizer, int(config.train.num_steps))
  graphdef, other, state = state_lib.init_model_and_state(config, VOCAB, tx)
  if init_params is not None:
    copy = lambda: jax.tree.map(jnp.copy, init_params)
    state = state.replace(params=copy(), opt_state=tx.init(init_params), teacher_params=copy())
  objective = objectives.from_config(config, VOCAB)
  train_step = step_lib.make_train_step(graphdef, other, objective, tx, 0.0,
                                        optimizer.learning_rate_schedule(config.optimizer, 1))
  rng = np.random.default_rng(seed)
  for _ in range(int(config.train.num_steps)):
    state, metrics = train_step(state, jnp.asarray(toy_batch(rng, 64))[None])
  return graphdef, other, state, metrics


def is_valid(seq) -> bool:
  return seq[0] != seq[1] and all(seq[i] == seq[i % 2] for i in range(L))


def sequence_histogram(graphdef, other, params, steps, seed):
  """Counts of each of the 20 valid sequences, and of all invalid ones together (key None), over 2048 samples."""
  cfg = SamplerConfig(steps=steps, process="uniform", method="ancestral", parameterization="posterior",
                      schedule=MaskingSchedule("linear"))
  run = make_sampler(graphdef, other, cfg)
  tokens = jnp.zeros((2048, L), jnp.int32)
  out = np.asarray(run(params, jax.random.key(seed), tokens, jnp.zeros((2048, L), bool)).tokens_BxL)
  return collections.Counter(seq if is_valid(seq) else None for seq in map(tuple, out.tolist()))


def total_variation(p, q):
  n_p, n_q = sum(p.values()), sum(q.values())
  return 0.5 * sum(abs(p[k] / n_p - q[k] / n_q) for k in set(p) | set(q))


@pytest.mark.slow
def test_distilled_student_at_half_the_steps_matches_the_teacher_better_than_the_teacher_does():
  graphdef, other, teacher, _ = train(tiny_config("uniform", 500))
  teacher_params = teacher.params
  # Two rounds (gaps 1/T then 2/T): the student is then meant for T/2 steps.
  _, _, student, metrics = train(tiny_config("dcd", 2 * ROUND_STEPS), init_params=teacher_params, seed=1)
  assert float(metrics["distill_dt"]) == pytest.approx(2 / TEACHER_STEPS)
  # The teacher held during the second round is the student as it was after the first, not the original teacher.
  changed = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), student.teacher_params, teacher_params)
  assert max(jax.tree.leaves(changed)) > 0

  reference = sequence_histogram(graphdef, other, teacher_params, TEACHER_STEPS, seed=0)
  teacher_half = sequence_histogram(graphdef, other, teacher_params, TEACHER_STEPS // 2, seed=1)
  student_half = sequence_histogram(graphdef, other, student.params, TEACHER_STEPS // 2, seed=1)
  tv_teacher, tv_student = total_variation(reference, teacher_half), total_variation(reference, student_half)
  assert tv_student < tv_teacher, (tv_student, tv_teacher)
  # The gap is the few-step sampler's incoherence: the teacher at T/2 steps makes more invalid sequences.
  assert student_half[None] < teacher_half[None], (student_half[None], teacher_half[None])


@pytest.fixture(scope="module")
def tiny_duo_run(tmp_path_factory):
  """A tiny Duo run (soft-token curriculum for 6 of 12 steps, time conditioning) on the embedded corpus: workdir."""
  from conftest import tiny_config as tiny_trainer_config
  from dlm_jax.training import loop
  config = tiny_trainer_config(**{"diffusion.objective": "duo", "diffusion.curriculum_steps": 6,
                                  "model.time_conditioning": True, "sample.method": "ancestral",
                                  "sample.reveal_noise": 0.0, "train.ema_decay": 0.9})
  workdir = tmp_path_factory.mktemp("duo_run")
  summary = loop.train(config, str(workdir))
  assert np.isfinite(summary["eval_nll_per_token"])
  return workdir


def test_distill_cli_trains_a_resumable_student_that_samples_in_fewer_steps(tiny_duo_run, tmp_path):
  from conftest import REPO
  from dlm_jax.training import checkpoint, loop
  student = tmp_path / "student"
  result = subprocess.run([sys.executable, "-m", "launch.distill", f"--teacher_workdir={tiny_duo_run}",
                           f"--workdir={student}", "--teacher_steps=8", "--rounds=2", "--round_steps=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "the student samples with --steps=4" in result.stdout
  assert "Distillation finished at step 6" in result.stdout
  run = checkpoint.load_for_inference(student, weights="raw")
  assert run.config.diffusion.objective == "dcd" and run.config.distill.teacher_workdir == str(tiny_duo_run)
  # The same distillation interrupted inside its second round (whose teacher is then in the checkpoint) and resumed
  # ends with the same student.
  interrupted = tmp_path / "interrupted"
  loop.train(run.config, str(interrupted), stop_at_step=4)
  loop.train(run.config, str(interrupted))
  resumed = checkpoint.load_for_inference(interrupted, weights="raw")
  jax.tree.map(np.testing.assert_array_equal, run.params, resumed.params)
  sampled = subprocess.run([sys.executable, "-m", "launch.sample", f"--workdir={student}", "--steps=4",
                            "--method=greedy", "--num_samples=2", "--prompt=The"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sampled.stdout.count("--- sample") == 2 and "network calls 4" in sampled.stdout


# -- SDTT: self-distillation through time of a masked teacher (objectives/masked.SelfDistillationThroughTime) --------

def sdtt_objective(**fields):
  from conftest import tiny_config as tiny_trainer_config
  config = tiny_trainer_config(**{"diffusion.objective": "sdtt", "diffusion.schedule": "linear",
                                  "diffusion.distill_teacher_steps": 8, "diffusion.distill_round_steps": 10,
                                  **{f"diffusion.{k}": v for k, v in fields.items()}})
  return objectives.from_config(config, VOCAB)


def test_sdtt_targets_are_the_teachers_two_half_steps():
  """The teacher's logits depend on t and on how many tokens of the row are visible: the target of a position revealed
  at the first half step is p_teacher(. | x_t, t), of every other masked position p_teacher(. | x_m, t - dt/2), x_m
  holding the first step's draws; a masked position is revealed at the first step with probability
  (alpha(t - dt/2) - alpha(t)) / (1 - alpha(t)) = 0.25 at t = 0.8, dt = 0.4 (linear schedule)."""
  objective = sdtt_objective()
  mask = special_tokens.MASK

  def teacher(x, t):
    visible = jnp.sum(x != mask, axis=-1, keepdims=True).astype(jnp.float32)
    logits = jnp.arange(VOCAB, dtype=jnp.float32)[None, None] * (t[:, None, None] + 0.01 * visible[..., None])
    return type("Out", (), {"logits_BxLxV": jnp.broadcast_to(logits, x.shape + (VOCAB,))})()

  batch, length = 256, 32
  x0 = jnp.full((batch, length), 6, jnp.int32)
  t_B, dt_B = jnp.full((batch,), 0.8), jnp.full((batch,), 0.4)
  xt, masked = objective.corrupt(jax.random.key(0), x0, t_B, None)
  target, revealed = objective.teacher_targets(teacher, xt, masked, t_B, dt_B, jax.random.key(1))
  assert not np.any(np.asarray(revealed & ~masked))
  assert abs(float(jnp.sum(revealed) / jnp.sum(masked)) - 0.25) < 0.01
  log_softmax = lambda logits: jax.nn.log_softmax(logits.at[..., mask].set(-1e9), -1)
  first = log_softmax(teacher(xt, t_B).logits_BxLxV)
  x_m_visible = jnp.sum(xt != mask, -1) + jnp.sum(revealed, -1)  # the first step's draws are visible at the second
  second_logits = jnp.arange(VOCAB, dtype=jnp.float32)[None, None] * (0.6 + 0.01 * x_m_visible[:, None, None])
  second = log_softmax(jnp.broadcast_to(second_logits, (batch, length, VOCAB)))
  np.testing.assert_allclose(target, jnp.where(revealed[..., None], first, second), rtol=1e-5, atol=1e-5)


def test_sdtt_loss_vanishes_for_a_student_equal_to_a_time_free_teacher_and_rounds_double_the_step():
  objective = sdtt_objective()
  constant = lambda x, t: type("Out", (), {"logits_BxLxV": jnp.broadcast_to(
      jnp.arange(VOCAB, dtype=jnp.float32) * 0.3, x.shape + (VOCAB,))})()
  x0 = jnp.full((8, 16), 6, jnp.int32)
  loss, _, metrics = objective.loss(constant, x0, jax.random.key(0), step=jnp.int32(0), teacher_fn=constant)
  assert abs(float(loss)) < 1e-6
  assert float(metrics["distill_dt"]) == pytest.approx(2 / 8)
  assert float(objective.distillation_gap(25)) == pytest.approx(8 / 8)  # round 2: 2^3 / T, capped at 1
  timed = lambda x, t: type("Out", (), {"logits_BxLxV": jnp.broadcast_to(
      jnp.arange(VOCAB, dtype=jnp.float32)[None, None] * t[:, None, None], x.shape + (VOCAB,))})()
  assert float(objective.loss(constant, x0, jax.random.key(0), step=jnp.int32(0), teacher_fn=timed)[0]) > 1e-4
  with pytest.raises(ValueError, match="trains a student against a teacher"):
    objective.loss(constant, x0, jax.random.key(0))


def test_distill_cli_distills_a_masked_run_with_sdtt(trained_run, tmp_path):
  from conftest import REPO
  from dlm_jax.training import checkpoint
  teacher, _ = trained_run
  student = tmp_path / "student"
  result = subprocess.run([sys.executable, "-m", "launch.distill", f"--teacher_workdir={teacher}",
                           f"--workdir={student}", "--teacher_steps=8", "--rounds=2", "--round_steps=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "the student samples with --steps=2" in result.stdout and "Distillation finished at step 6" in result.stdout
  run = checkpoint.load_for_inference(student, weights="raw")
  assert run.config.diffusion.objective == "sdtt" and run.config.diffusion.distill_loss == "kl_fwd"
