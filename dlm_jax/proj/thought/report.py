"""The thought-tensor metrics of a trained thought run (dlm_jax/proj/thought/metrics.py), as JSON.

  python -m dlm_jax.proj.thought.report --workdir=RUN [--baseline_workdir=BASE] [--num_windows=N] [--time_samples=K]
                                         [--num_samples=B] [--steps=S] [--out=FILE.json]

Scores the run's validation rows (the first N non-overlapping rows of (K + 1) W tokens, its eval.* settings by
default): the target-window NELBO for every memory depth 0..K (0: the empty memory, i.e. the same network without its
thought), the baseline run's NELBO of the same target windows (a run without a thought whose data.seq_len is W),
diversity, the compression probe, thought-text alignment, the coherence of consecutive windows' thoughts, and the
stability of the thought along the reverse process of B generations from noise and B given the first ones' memory.
"""
import json

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.data import pipeline
from dlm_jax.proj.thought import metrics as thought_eval
from dlm_jax.training import checkpoint

flags.DEFINE_string("workdir", None, "The thought run.", required=True)
flags.DEFINE_string("baseline_workdir", "", "A run without a thought, trained on windows of the thought run's W.")
flags.DEFINE_integer("num_windows", None, "Validation rows (default: the run's eval.num_windows).")
flags.DEFINE_integer("time_samples", None, "Antithetic time draws per row (default: the run's eval.time_samples).")
flags.DEFINE_integer("batch_size", None, "Rows per batch (default: the run's eval.batch_size).")
flags.DEFINE_integer("num_samples", 8, "Generations whose thought trajectories give the stability figures.")
flags.DEFINE_integer("steps", 64, "Reverse steps of those generations.")
flags.DEFINE_integer("seed", 0, "Seed of the time draws, the probe's split and the generations.")
flags.DEFINE_string("out", "", "Also write the JSON here.")
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = thought_eval.load_thought_run(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  ev = run.config.eval
  seq_len = int(run.config.data.seq_len)
  baseline = None
  if FLAGS.baseline_workdir:
    baseline = checkpoint.load_for_inference(FLAGS.baseline_workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
    width = run.objective.sample_length(seq_len)
    if baseline.objective.name == "thought" or int(baseline.config.data.seq_len) != width:
      raise app.UsageError(f"--baseline_workdir={FLAGS.baseline_workdir} must be a run without a thought on windows "
                           f"of {width} tokens (the thought run's W), got data.seq_len="
                           f"{baseline.config.data.seq_len}.")
    if baseline.tokenizer.vocab_size != run.tokenizer.vocab_size:
      raise app.UsageError(f"--baseline_workdir={FLAGS.baseline_workdir} has another tokenizer than --workdir.")
  stream = pipeline.validation_stream(run.config.data, f"{FLAGS.workdir}/data_cache", run.tokenizer, "")
  windows = pipeline.eval_windows(stream, seq_len, cli.flag_or(FLAGS.num_windows, int(ev.num_windows)),
                                  ev.get("windows", "first"))
  result = thought_eval.report(run, windows, baseline=baseline,
                               batch_size=cli.flag_or(FLAGS.batch_size, int(ev.batch_size)), seed=FLAGS.seed,
                               time_samples=cli.flag_or(FLAGS.time_samples, int(ev.time_samples)),
                               num_samples=FLAGS.num_samples, steps=FLAGS.steps)
  result.update(workdir=FLAGS.workdir, step=run.step, weights=run.weights, checkpoint=run.checkpoint,
                baseline_workdir=FLAGS.baseline_workdir)
  text = json.dumps(result, indent=2, ensure_ascii=False)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main)
