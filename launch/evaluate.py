"""Validation NELBO of a trained run (AR arm: exact NLL) in nats/token, bits/token, bits/char and perplexity.

  python -m launch.evaluate --workdir=DIR [--path=FILES | --split=test] [--num_windows=N] [--windows=first|spread]
      [--time_samples=K]

By default it scores exactly what the run's in-training evaluation scored (the config's eval.num_windows windows,
eval.windows placement, eval.time_samples draws, eval.batch_size, eval.seed), so the figure equals the training log's;
each flag overrides one of them (e.g. --num_windows=100000 --time_samples=8 for a tighter figure over the whole
split). Windows are non-overlapping `seq_len` windows of the run's validation split (its test split with --split=test
and data.test_fraction > 0, e.g. configs/text8.py; or of --path; the padded layout: one document each): the first N, or N
spread evenly over all of it (--windows=spread). Every figure comes with its Monte Carlo standard error over the time
draws (`mc_stderr`, nats/token) and the window set it used.

`--window_search=0.1` also reports, for every clipped training window [low, high] on that grid (high - low at least
--window_min_width), the noise of the run's training loss under it (eval/loss_estimator_std's measure, over
--estimator_batches batches of the same windows) and the window where it is lowest: BD3-LM's data-driven window
(masked ELBO runs; issue #31). Its choice goes back into training as --config.diffusion.time_low/time_high.

`--calibration_bins=B` also reports the calibration of a diffusion run's reveal confidences on the same windows
(dlm_jax/evaluation/calibration.py): reliability-diagram data over B confidence bins and the expected calibration error.
"""
import json

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.data import pipeline
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import calibration, likelihood
from dlm_jax.training import checkpoint

flags.DEFINE_string("workdir", "runs/default", "Training run to evaluate.")
flags.DEFINE_string("path", "", "Text to score instead of the run's validation split (files/folders).")
flags.DEFINE_enum("split", "valid", ["valid", "test"], "The run's split to score: validation, or the test split its "
                  "data.test_fraction held out.")
flags.DEFINE_enum("oov", "error", ["error", "unk", "skip"],
                  "Characters of --path outside a char model's alphabet: stop and list them all (error), score each "
                  "as <unk> (unk), or drop them (skip); the report says how many.")
flags.DEFINE_enum("score", "nelbo", ["nelbo", "training_loss"],
                  "nelbo: the likelihood bound (token-level masking, whatever the training corruption); training_loss: "
                  "the run's own training objective (e.g. under script-aware corruption; a diagnostic, not a "
                  "likelihood).")
flags.DEFINE_integer("num_windows", None, "Maximum number of windows (default: the run's eval.num_windows).")
flags.DEFINE_enum("windows", None, ["first", "spread"],
                  "The first windows, or windows spread over the whole text (default: the run's eval.windows).")
flags.DEFINE_integer("time_samples", None, "Antithetic time draws per window (default: the run's eval.time_samples; "
                     "the AR arm's exact NLL needs one).")
flags.DEFINE_integer("batch_size", None, "Windows per batch (default: the run's eval.batch_size).")
flags.DEFINE_integer("seed", None, "Evaluation seed (default: the run's eval.seed).")
cli.define_checkpoint_flags()
flags.DEFINE_integer("calibration_bins", 0, "> 0: also the reliability diagram (this many bins) and ECE of the reveal "
                     "confidences on the same windows (diffusion runs).")
flags.DEFINE_float("window_search", 0.0, "> 0: the grid step of the clipped-window search (module docstring; masked "
                   "ELBO runs).")
flags.DEFINE_float("window_min_width", 0.3, "The narrowest window --window_search considers (high - low).")
flags.DEFINE_integer("estimator_batches", 8, "Batches of --window_search's two-draw noise estimate.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  ev = run.config.eval
  placement = cli.flag_or(FLAGS.windows, ev.get("windows", "first"))
  windows = pipeline.validation_windows(run.config.data, f"{FLAGS.workdir}/data_cache", run.tokenizer,
                                        cli.flag_or(FLAGS.num_windows, int(ev.num_windows)), placement, FLAGS.path,
                                        oov=FLAGS.oov, split=FLAGS.split)
  objective = run.objective
  time_samples = 1 if objective.is_autoregressive else cli.flag_or(FLAGS.time_samples, int(ev.time_samples))
  if FLAGS.score == "training_loss" and objective.needs_teacher:
    raise app.UsageError(f"--score=training_loss: {FLAGS.workdir} is a distillation student, whose training loss "
                         "needs its teacher; score it with --score=nelbo.")
  eval_step = likelihood.make_eval_step(run.graphdef, run.other, objective, FLAGS.score)
  result = likelihood.evaluate(eval_step, run.params, windows, run.tokenizer,
                               batch_size=cli.flag_or(FLAGS.batch_size, int(ev.batch_size)),
                               seed=cli.flag_or(FLAGS.seed, int(ev.seed)), time_samples=time_samples)
  result.update(seq_len=int(run.config.data.seq_len), objective=run.config.diffusion.objective, placement=placement,
                score=FLAGS.score,
                text=FLAGS.path or f"the run's {'test' if FLAGS.split == 'test' else 'validation'} split",
                step=run.step, checkpoint=run.checkpoint, weights=run.weights)
  if FLAGS.path:
    result["oov"] = pipeline.oov_report(FLAGS.path, run.tokenizer, FLAGS.oov)
  if FLAGS.window_search:
    if not hasattr(objective, "time_low") or objective.name != "elbo":
      raise app.UsageError(f"--window_search: {FLAGS.workdir} trained objective {objective.name!r}; the clipped "
                           "window belongs to the masked ELBO (diffusion.objective='elbo').")
    try:
      candidates = likelihood.window_grid(FLAGS.window_search, FLAGS.window_min_width)
    except ValueError as e:
      raise app.UsageError(f"--window_search={FLAGS.window_search}: {e}") from e
    try:
      result["window_search"] = likelihood.window_search(
          run.graphdef, run.other, objective, run.params, windows, candidates,
          batch_size=cli.flag_or(FLAGS.batch_size, int(ev.batch_size)), seed=cli.flag_or(FLAGS.seed, int(ev.seed)),
          batches=FLAGS.estimator_batches)
    except ConfigError as e:  # e.g. a run trained with time_exponent, which a window excludes
      raise app.UsageError(f"--window_search with --workdir={FLAGS.workdir}: {e}") from e
  if FLAGS.calibration_bins:
    try:
      result["calibration"] = calibration.calibrate(run, windows, cli.flag_or(FLAGS.batch_size, int(ev.batch_size)),
                                                    seed=cli.flag_or(FLAGS.seed, int(ev.seed)),
                                                    num_bins=FLAGS.calibration_bins, time_samples=time_samples)
    except ValueError as e:
      raise app.UsageError(f"--calibration_bins with --workdir={FLAGS.workdir}: {e}") from e
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
