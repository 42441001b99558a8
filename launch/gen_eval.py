"""Generation quality of a diffusion run, judged by an AR run on the same data (dlm_jax/evaluation/generation.py).

  python -m launch.gen_eval --workdir=DIFFUSION_RUN --judge=AR_RUN [--path=FILES] [--prompt_len=32]
                            [--num_samples=64] [--steps=16,32,96] [--prompt_scripts=any|deva|latn|mixed] [--seed=0]

Prompts are the first `--prompt_len` tokens of `--num_samples` windows spread evenly over `--path` (default: the run's
validation split); the model fills in the rest of each window (prompt_len = 0: unconditional samples).
`--prompt_scripts=deva|latn|mixed` keeps only windows whose prompt is in that script (mixed: Devanagari and Latin
words). For every entry of `--steps` (the decode-step sweep of seed 001 §10), and for the real continuations of the
same prompts, it prints one markdown row: judge NLL of the generated tokens (nats/token; exp = generative
perplexity), mean unigram entropy of a sample (nats), script error rate (mixed-script words + words off the prompt's
script, per word; the two parts in brackets) and the seconds one batch took to sample (after compilation). `--json`
also prints each row as JSON.
"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from dlm_jax.data import pipeline, tokenizers
from dlm_jax.evaluation import generation
from dlm_jax.training import checkpoint, loop
from dlm_jax.sampling import sampler as sampler_lib

flags.DEFINE_string("workdir", None, "Diffusion run to sample from.", required=True)
flags.DEFINE_string("judge", None, "Causal (AR) run trained on the same data with the same tokenizer.", required=True)
flags.DEFINE_string("path", "", "Text whose windows give the prompts (files/folders); default: the validation split.")
flags.DEFINE_string("label", "", "Name of the prompt set in the table (default: --path or 'valid').")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per window (0: unconditional).")
flags.DEFINE_integer("num_samples", 64, "Prompts (windows), sampled as one batch.")
flags.DEFINE_enum("prompt_scripts", "any", ["any", "deva", "latn", "mixed"],
                  "Only windows whose prompt is all Devanagari, all Latin, or uses both scripts ('mixed').")
flags.DEFINE_list("steps", ["16", "32", "96"], "Reverse-step counts to sweep.")
flags.DEFINE_float("temperature", None, "Sampling temperature (default: the run's config).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("use_ema", True, "Use EMA parameters when the runs kept them.")
flags.DEFINE_bool("json", False, "Also print every row as a JSON line.")
FLAGS = flags.FLAGS


def _windows(config, tokenizer, workdir):
  data = config.data
  if FLAGS.path:
    data.unlock()
    data.path, data.valid_path = FLAGS.path, FLAGS.path
  streams = pipeline.load_token_streams(data, f"{workdir}/data_cache", tokenizer=tokenizer)
  try:
    return generation.select_windows(streams.valid, int(data.seq_len), FLAGS.num_samples, FLAGS.prompt_len,
                                     tokenizer, FLAGS.prompt_scripts)
  except ValueError as e:
    raise app.UsageError(f"--prompt_scripts={FLAGS.prompt_scripts}: {e}") from e


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config, tokenizer, graphdef, other, params = checkpoint.load_for_inference(FLAGS.workdir, use_ema=FLAGS.use_ema)
  if config.model.get("causal", False):
    raise app.UsageError(f"--workdir={FLAGS.workdir} is a causal (AR) run; gen_eval judges diffusion runs.")
  j_config, j_tokenizer, j_graphdef, j_other, j_params = checkpoint.load_for_inference(FLAGS.judge,
                                                                                       use_ema=FLAGS.use_ema)
  if not j_config.model.get("causal", False):
    raise app.UsageError(f"--judge={FLAGS.judge} is not a causal (AR) run: train one with the config's ':ar' arm.")
  if tokenizers.fingerprint(j_tokenizer) != tokenizers.fingerprint(tokenizer):
    raise app.UsageError(f"--judge={FLAGS.judge} was trained with a different tokenizer than --workdir={FLAGS.workdir}; "
                         "train the judge on the same corpus (same config, ':ar' arm).")
  seq_len = int(config.data.seq_len)
  if int(j_config.data.seq_len) < seq_len:
    raise app.UsageError(f"--judge's context ({j_config.data.seq_len}) is shorter than the run's ({seq_len}).")
  if not 0 <= FLAGS.prompt_len < seq_len:
    raise app.UsageError(f"--prompt_len={FLAGS.prompt_len} must be in [0, {seq_len}) (data.seq_len of the run).")

  windows = _windows(config, tokenizer, FLAGS.workdir)
  tokens, fixed = generation.prompts_from_windows(windows, FLAGS.prompt_len)
  generated = ~fixed
  judge = generation.judge_nll_fn(lambda x, t: nnx.merge(j_graphdef, j_params, j_other)(x, t))
  label = FLAGS.label or FLAGS.path or "valid"
  rows = [dict(run="real text", prompts=label, steps="n/a", sample_s=None,
               **generation.quality(windows, generated, tokenizer, judge, FLAGS.prompt_len))]
  for steps in map(int, FLAGS.steps):
    with config.unlocked():
      config.sample.steps = steps
      if FLAGS.temperature is not None:
        config.sample.temperature = FLAGS.temperature
    run = sampler_lib.make_sampler(graphdef, other, loop.sampler_config(config))
    rng = jax.random.key(FLAGS.seed)
    jax.block_until_ready(run(params, rng, jnp.asarray(tokens), jnp.asarray(fixed)))  # compile
    start = time.perf_counter()
    out = np.asarray(jax.block_until_ready(run(params, rng, jnp.asarray(tokens), jnp.asarray(fixed)).tokens_BxL))
    seconds = time.perf_counter() - start
    rows.append(dict(run=FLAGS.workdir, prompts=label, steps=steps, sample_s=seconds,
                     **generation.quality(out, generated, tokenizer, judge, FLAGS.prompt_len)))

  print(f"| run | prompts ({FLAGS.num_samples} x {FLAGS.prompt_len} tokens, {seq_len - FLAGS.prompt_len} generated) "
        "| steps | judge NLL (nats/token) | entropy (nats) | script errors (mixed + off-script) | sample s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['run']} | {r['prompts']} | {r['steps']} | {r['judge_nll']:.3f} | {r['entropy']:.3f} | "
          f"{r['script_error_rate']:.2%} ({r['mixed_word_rate']:.2%} + {r['off_script_rate']:.2%}) | "
          f"{'n/a' if r['sample_s'] is None else format(r['sample_s'], '.2f')} |")
  if FLAGS.json:
    for r in rows:
      print(json.dumps(r))


if __name__ == "__main__":
  app.run(main)
