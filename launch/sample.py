"""Sample from a trained run with the jitted reverse sampler.

  python -m launch.sample --workdir=DIR [--prompt=TEXT] [--suffix=TEXT] [--num_samples=N] [--steps=S] [--length=L]
                          [--method=confidence|ancestral] [--greedy] [--temperature=T] [--top_k=K] [--top_p=P]
                          [--stream]

`--prompt` is fixed at the start, `--suffix` at the end (infilling); `--length` new tokens are generated between them.
`--stream` replays the first sample's denoising trajectory in the terminal, step by step (with --steps equal to
--length and --reveal_schedule=linear, one token per step as in seed 002's demo). A causal (AR control) run samples
left to right.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from dlm_jax import special_tokens
from dlm_jax.sampling import display, sampler as sampler_lib
from dlm_jax.training import checkpoint, loop

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
flags.DEFINE_bool("use_ema", True, "Use the EMA parameters when the run kept them.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, tokenizer, graphdef, other, params = checkpoint.load_for_inference(FLAGS.workdir, use_ema=FLAGS.use_ema)
  prompt_ids = tokenizer.encode(FLAGS.prompt, source="--prompt") if FLAGS.prompt else np.zeros((0,), np.int32)
  suffix_ids = tokenizer.encode(FLAGS.suffix, source="--suffix") if FLAGS.suffix else np.zeros((0,), np.int32)
  max_len = int(config.data.seq_len)
  fixed_len = len(prompt_ids) + len(suffix_ids)
  length = FLAGS.length if FLAGS.length is not None else max_len - fixed_len
  if length < 1 or fixed_len + length > max_len:
    raise app.UsageError(f"--prompt ({len(prompt_ids)} tokens) + --length ({length}) + --suffix ({len(suffix_ids)} "
                         f"tokens) must fit the model's context of {max_len} tokens (data.seq_len of the run) with "
                         "--length >= 1.")
  row = np.concatenate([prompt_ids, np.full((length,), special_tokens.MASK, np.int32), suffix_ids])
  fixed_row = np.concatenate([np.ones(len(prompt_ids), bool), np.zeros(length, bool), np.ones(len(suffix_ids), bool)])
  tokens = jnp.asarray(np.tile(row, (FLAGS.num_samples, 1)))
  fixed = jnp.asarray(np.tile(fixed_row, (FLAGS.num_samples, 1)))
  rng = jax.random.key(FLAGS.seed)

  if config.model.get("causal", False):
    from flax import nnx
    if len(suffix_ids):
      raise app.UsageError("--suffix (infilling) needs a diffusion model; this run is the causal control arm.")
    if not len(prompt_ids):
      tokens = tokens.at[:, 0].set(special_tokens.EOS)
    run = jax.jit(lambda p, r, x: sampler_lib.autoregressive_sample(
        lambda x_, t_: nnx.merge(graphdef, p, other)(x_, t_), r, x, max(len(prompt_ids), 1),
        temperature=FLAGS.temperature or 1.0, top_k=FLAGS.top_k or 0, top_p=FLAGS.top_p or 1.0,
        greedy=bool(FLAGS.greedy)))
    start = time.perf_counter()
    out = np.asarray(run(params, rng, tokens))
    elapsed = time.perf_counter() - start
    texts = [tokenizer.decode(r) for r in out]
  else:
    overrides = {k: getattr(FLAGS, k) for k in ("steps", "method", "greedy", "temperature", "top_k", "top_p",
                                                "reveal_schedule", "reveal_noise", "strategic_weight")
                 if getattr(FLAGS, k) is not None}
    with config.unlocked():
      config.sample.update(overrides)
    cfg = loop.sampler_config(config, record_trajectory=FLAGS.stream)
    run = sampler_lib.make_sampler(graphdef, other, cfg)
    start = time.perf_counter()
    out = run(params, rng, tokens, fixed)
    out = jax.block_until_ready(out)
    elapsed = time.perf_counter() - start
    if FLAGS.stream:
      display.stream(display.trajectory_frames(tokenizer, out.trajectory_SxBxL[:, 0]), FLAGS.stream_delay)
    texts = [tokenizer.decode(r) for r in np.asarray(out.tokens_BxL)]
  for i, text in enumerate(texts):
    print(f"--- sample {i} ---\n{text}")
  print(f"[{FLAGS.num_samples} x {length} new tokens in {elapsed:.2f} s including compilation]")


if __name__ == "__main__":
  app.run(main)
