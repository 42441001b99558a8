"""Validation NELBO of a trained run (AR arm: exact NLL) in nats/token, bits/token, bits/char and perplexity.

  python -m launch.evaluate --workdir=DIR [--path=FILES] [--num_windows=N] [--windows=first|spread] [--time_samples=K]

Windows are the first N non-overlapping `seq_len` windows of the run's validation split (or of --path; with
--windows=spread, N non-overlapping windows spread evenly over all of it); each is scored
with K antithetic time draws, seeded, so the figure is reproducible.
"""
import json

from absl import flags, logging

from dlm_jax import cli
from dlm_jax.data import pipeline
from dlm_jax.evaluation import likelihood
from dlm_jax.training import checkpoint

flags.DEFINE_string("workdir", "runs/default", "Training run to evaluate.")
flags.DEFINE_string("path", "", "Text to score instead of the run's validation split (files/folders).")
flags.DEFINE_integer("num_windows", 1000, "Maximum number of windows.")
flags.DEFINE_enum("windows", "first", ["first", "spread"], "The first windows, or windows spread over the whole text.")
flags.DEFINE_integer("time_samples", 8, "Antithetic time draws per window (diffusion; the AR arm's NLL needs one).")
flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
flags.DEFINE_integer("seed", 1234, "Evaluation seed.")
flags.DEFINE_bool("use_ema", True, "Use EMA parameters when present.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = checkpoint.load_for_inference(FLAGS.workdir, use_ema=FLAGS.use_ema)
  stream = pipeline.validation_stream(run.config.data, f"{FLAGS.workdir}/data_cache", run.tokenizer, FLAGS.path)
  windows = pipeline.eval_windows(stream, int(run.config.data.seq_len), FLAGS.num_windows, FLAGS.windows)
  objective = run.objective
  result = likelihood.evaluate(likelihood.make_eval_step(run.graphdef, run.other, objective), run.params, windows,
                               run.tokenizer, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                               time_samples=1 if objective.is_autoregressive else FLAGS.time_samples)
  result.update(seq_len=int(run.config.data.seq_len), objective=objective.kind)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  cli.run(main)
