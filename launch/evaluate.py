"""Validation NELBO of a trained run (AR arm: exact NLL) in nats/token, bits/token, bits/char and perplexity.

  python -m launch.evaluate --workdir=DIR [--path=FILES] [--num_windows=N] [--windows=first|spread] [--time_samples=K]

Windows are the first N non-overlapping `seq_len` windows of the run's validation split (or of --path; with
--windows=spread, N non-overlapping windows spread evenly over all of it); each is scored
with K antithetic time draws, seeded, so the figure is reproducible.
"""
import json

from absl import app, flags, logging

from dlm_jax.data import pipeline
from dlm_jax.diffusion import objectives
from dlm_jax.evaluation import likelihood
from dlm_jax.training import checkpoint, step as step_lib

flags.DEFINE_string("workdir", "runs/default", "Training run to evaluate.")
flags.DEFINE_string("path", "", "Text to score instead of the run's validation split (files/folders).")
flags.DEFINE_integer("num_windows", 1000, "Maximum number of windows.")
flags.DEFINE_enum("windows", "first", ["first", "spread"], "The first windows, or windows spread over the whole text.")
flags.DEFINE_integer("time_samples", 8, "Antithetic time draws per window (diffusion).")
flags.DEFINE_integer("batch_size", 32, "Windows per batch.")
flags.DEFINE_integer("seed", 1234, "Evaluation seed.")
flags.DEFINE_bool("use_ema", True, "Use EMA parameters when present.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, tokenizer, graphdef, other, params = checkpoint.load_for_inference(FLAGS.workdir, use_ema=FLAGS.use_ema)
  data = config.data
  if FLAGS.path:
    data.unlock()
    data.path, data.valid_path = FLAGS.path, FLAGS.path
  streams = pipeline.load_token_streams(data, f"{FLAGS.workdir}/data_cache", tokenizer=tokenizer)
  windows = pipeline.eval_windows(streams.valid, int(data.seq_len), FLAGS.num_windows, FLAGS.windows)
  objective = objectives.from_config(config)
  time_samples = 1 if objective.is_autoregressive else FLAGS.time_samples
  nats = step_lib.evaluate(step_lib.make_eval_step(graphdef, other, objective), params, windows,
                           FLAGS.batch_size, FLAGS.seed, time_samples)
  used = windows[:(len(windows) // min(FLAGS.batch_size, len(windows))) * min(FLAGS.batch_size, len(windows))]
  num_chars = sum(len(tokenizer.decode(row)) for row in used)
  result = likelihood.report(nats, used.size, num_chars)
  result.update(windows=int(len(used)), seq_len=int(data.seq_len), time_samples=time_samples,
                objective=objective.kind)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
