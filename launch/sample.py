"""Sample from a trained run with the jitted reverse sampler.

  python -m launch.sample --workdir=DIR [--prompt=TEXT] [--suffix=TEXT] [--num_samples=N] [--steps=S] [--length=L]
                          [--method=confidence|ancestral] [--greedy] [--temperature=T] [--top_k=K] [--top_p=P]
                          [--stream]

`--prompt` is fixed at the start, `--suffix` at the end (infilling); `--length` new tokens are generated between them.
`--stream` replays the first sample's denoising trajectory in the terminal, step by step (with --steps equal to
--length and --reveal_schedule=linear, one token per step). A causal (AR control) run samples left to right (and
streams token by token).
"""
import time

import jax
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.sampling import SamplerConfig, display, make_text_sampler, prompt_batch
from dlm_jax.training import checkpoint

flags.DEFINE_string("workdir", "runs/default", "Training run to sample from.")
flags.DEFINE_string("prompt", "", "Text fixed at the start of every sample.")
flags.DEFINE_string("suffix", "", "Text fixed at the end (infilling between --prompt and --suffix).")
flags.DEFINE_integer("num_samples", 4, "Batch size.")
flags.DEFINE_integer("steps", None, "Reverse steps (default: the run's config.sample.steps).")
flags.DEFINE_integer("length", None, "New tokens to generate (default: fill the model's context).")
flags.DEFINE_enum("method", None, ["confidence", "ancestral"], "Sampler (default: the run's config).")
flags.DEFINE_bool("greedy", None, "Argmax candidates instead of sampling them.")
flags.DEFINE_float("temperature", None, "Sampling temperature.")
flags.DEFINE_integer("top_k", None, "Top-k filtering (0 = off).")
flags.DEFINE_float("top_p", None, "Nucleus filtering (1.0 = off).")
flags.DEFINE_string("reveal_schedule", None, "Reveal schedule (linear, cosine, ...; default: the training schedule).")
flags.DEFINE_float("reveal_noise", None, "MaskGIT choice temperature on the reveal ranking (0 = pure confidence).")
flags.DEFINE_float("strategic_weight", None, "HRM denoiser: weight of the H-module's priority in the reveal ranking.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("stream", False, "Show the first sample filling in, step by step.")
flags.DEFINE_float("stream_delay", 0.05, "Seconds between frames of --stream.")
flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                  "Parameters to use: the EMA (when the run kept one) or the raw ones.")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                  "The latest checkpoint, or the one with the best validation NELBO (WORKDIR/best).")
FLAGS = flags.FLAGS


SAMPLER_FLAGS = ("steps", "method", "greedy", "temperature", "top_k", "top_p", "reveal_schedule", "reveal_noise",
                 "strategic_weight")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  autoregressive = run.objective.is_autoregressive
  try:
    tokens, fixed = prompt_batch(run.tokenizer, FLAGS.num_samples, int(run.config.data.seq_len), FLAGS.length,
                                 FLAGS.prompt, FLAGS.suffix, autoregressive)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  overrides = {k: getattr(FLAGS, k) for k in SAMPLER_FLAGS if getattr(FLAGS, k) is not None}
  cfg = SamplerConfig.from_config(run.config, **overrides, record_trajectory=FLAGS.stream)
  sample_texts = make_text_sampler(run.graphdef, run.other, run.tokenizer, cfg, autoregressive)
  start = time.perf_counter()
  samples = sample_texts(run.params, jax.random.key(FLAGS.seed), tokens, fixed)
  elapsed = time.perf_counter() - start
  if FLAGS.stream:
    display.stream(display.trajectory_frames(run.tokenizer, samples.output.trajectory_SxBxL[:, 0]), FLAGS.stream_delay)
  print(f"# {run.describe()}")
  for i, text in enumerate(samples.texts):
    print(f"--- sample {i} ---\n{text}")
  print(f"[{FLAGS.num_samples} x {int((~fixed[0]).sum())} new tokens in {elapsed:.2f} s including compilation]")


if __name__ == "__main__":
  cli.run(main)
