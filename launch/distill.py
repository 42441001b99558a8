"""Distill a trained run to fewer sampling steps: Duo's discrete consistency distillation (uniform-state teachers) or
SDTT, self-distillation through time (masked teachers).

  python -m launch.distill --teacher_workdir=RUN --workdir=NEW [--teacher_steps=64] [--rounds=5] [--round_steps=100]

The student is the teacher's model with the teacher's weights, config and tokenizer. A "duo", "uniform" or "dcd"
teacher trains it with diffusion.objective="dcd" (dlm_jax/objectives/uniform.ConsistencyDistillation): round n (n = 0
.. rounds-1, `round_steps` updates each) matches the student at t to the teacher at t - 2^n / T, the teacher being the
student as it was at the round's start; after the last round one student step covers 2^(rounds-1) / T: sample it with
--steps=T / 2^(rounds-1). An "elbo" (masked; transformer, EcoHybrid, ...) or "sdtt" teacher trains it with
diffusion.objective="sdtt" (dlm_jax/objectives/masked.SelfDistillationThroughTime): in round n one student step of
2^(n+1) / T matches the teacher's two steps of half that; sample it with --steps=T / 2^rounds. Checkpoints,
evaluation (the student's NELBO) and resume are the trainer's: re-running with the same --workdir resumes where it
stopped, teacher included.
"""
import os

import ml_collections
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.training import checkpoint, loop

flags.DEFINE_string("teacher_workdir", None, "The trained run: uniform-state (diffusion.objective 'duo', 'uniform', "
                    "'dcd') or masked ('elbo', 'sdtt').")
flags.DEFINE_string("workdir", None, "Directory of the distilled student (checkpoints, metrics).")
flags.DEFINE_integer("teacher_steps", None, "T, the teacher's step count (default: its config.sample.steps).")
flags.DEFINE_integer("rounds", 5, "Step-halving rounds; round n's gap is 2^n / T (dcd) or 2^(n+1) / T (sdtt).")
flags.DEFINE_integer("round_steps", 100, "Updates per round (the teacher is refreshed from the student after each).")
flags.DEFINE_float("learning_rate", None, "Peak learning rate (default: the teacher's).")
flags.DEFINE_enum("distill_loss", None, ["kl_bwd", "kl_fwd"], "KL(student || teacher) or KL(teacher || student); "
                  "default: kl_bwd for dcd (Duo's), kl_fwd for sdtt (SDTT's).")
flags.DEFINE_integer("seed", 0, "Seed of the student's data order and noise.")
flags.mark_flags_as_required(["teacher_workdir", "workdir"])
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


def student_config(teacher_config, teacher_workdir: str, weights: str, which: str):
  """The student's config: the teacher's, with the dcd (uniform-state teacher) or sdtt (masked teacher) objective and
  these flags."""
  config = teacher_config.copy_and_resolve_references()
  objective = config.diffusion.objective
  if objective in ("duo", "uniform", "dcd"):
    student_objective, default_loss, student_steps = "dcd", "kl_bwd", 2 ** (FLAGS.rounds - 1)
  elif objective in ("elbo", "sdtt"):
    student_objective, default_loss, student_steps = "sdtt", "kl_fwd", 2 ** FLAGS.rounds
  else:
    raise app.UsageError(f"--teacher_workdir={teacher_workdir} holds a diffusion.objective={objective!r} run; "
                         "distillation needs a uniform-state x_0 model ('duo', 'uniform', or a 'dcd' student: Duo's "
                         "consistency distillation) or a masked one ('elbo', or an 'sdtt' student: SDTT).")
  steps = FLAGS.teacher_steps or int(config.sample.steps)
  if steps < 2 ** FLAGS.rounds:
    raise app.UsageError(f"--teacher_steps={steps} with --rounds={FLAGS.rounds}: the last round's gap "
                         f"2^{FLAGS.rounds - 1}/{steps} leaves the student fewer than 2 steps; lower --rounds.")
  with config.unlocked():
    config.diffusion.objective = student_objective
    config.diffusion.distill_teacher_steps = steps
    config.diffusion.distill_round_steps = FLAGS.round_steps
    config.diffusion.distill_loss = FLAGS.distill_loss or default_loss
    # the teacher's training-time window (an elbo run's time_low/time_high) is not the student's: SDTT draws its own
    config.diffusion.time_low, config.diffusion.time_high = 0.0, 1.0
    if "distill" not in config:  # a teacher saved before the field existed
      config.distill = ml_collections.ConfigDict()
    config.distill.teacher_workdir = str(teacher_workdir)
    config.distill.teacher_weights = weights
    config.distill.teacher_checkpoint = which
    config.train.num_steps = FLAGS.rounds * FLAGS.round_steps
    config.train.checkpoint_every = min(int(config.train.checkpoint_every), FLAGS.round_steps)
    config.eval.every = FLAGS.round_steps
    config.optimizer.warmup_steps = 0
    if FLAGS.learning_rate is not None:
      config.optimizer.learning_rate = FLAGS.learning_rate
    config.seed = config.data.seed = FLAGS.seed
    config.sample.steps = max(steps // student_steps, 1)
  return config


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    teacher = checkpoint.load_for_inference(FLAGS.teacher_workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  except checkpoint.CheckpointError as e:
    raise app.UsageError(f"--teacher_workdir: {e}") from e
  config = student_config(teacher.config, FLAGS.teacher_workdir, FLAGS.weights, FLAGS.checkpoint)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  print(f"# teacher: {teacher.describe()}; T = {config.diffusion.distill_teacher_steps} steps, {FLAGS.rounds} rounds "
        f"of {FLAGS.round_steps} updates; the student samples with --steps={config.sample.steps}", flush=True)
  summary = loop.train(config, FLAGS.workdir)
  status = "stopped early" if summary["stopped"] else "finished"
  print(f"Distillation {status} at step {summary['step']}; checkpoint in {FLAGS.workdir}/checkpoints. Sample with: "
        f"python -m launch.sample --workdir={FLAGS.workdir} --steps={config.sample.steps}")


if __name__ == "__main__":
  cli.run(main)
