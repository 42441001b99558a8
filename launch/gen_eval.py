"""Generation quality of a diffusion run, judged by an AR run on the same data or by a Hugging Face GPT-2 (MDLM's
protocol: samples decoded and retokenized; the judge runs in JAX, no torch) (dlm_jax/evaluation/generation.py).

  python -m launch.gen_eval --workdir=DIFFUSION_RUN --judge=AR_RUN|hf:GPT2_DIR [--path=FILES] [--prompt_len=32]
                            [--num_samples=64] [--steps=16,32,96] [--prompt_scripts=any|deva|latn|mixed] [--seed=0]

Prompts are the first `--prompt_len` tokens of `--num_samples` windows spread evenly over `--path` (default: the run's
validation split); the model fills in the rest of each window (prompt_len = 0: unconditional samples).
`--prompt_scripts=deva|latn|mixed` keeps only windows whose prompt is in that script (mixed: Devanagari and Latin
words). For every entry of `--steps` (a decode-step sweep), and for the real continuations of the
same prompts, it prints one markdown row: judge NLL of the generated tokens (nats/token; exp = generative
perplexity), mean unigram entropy of a sample (nats), script error rate (mixed-script words + words off the prompt's
script, per word; the two parts in brackets) and the seconds one batch took to sample (after compilation). `--json`
also prints each row as JSON.

Past the context window (`--continue_windows=K --continue_chunk=C`): prompts of context - C tokens continued by K C
tokens, window by window (launch.sample's --continue_chunk), with the first --steps entry per window; one row per
window: the judge NLL of the C tokens it drew next to that of the real C tokens at the same place, each judged in the
context that ends with them, and the drawn chunk's entropy; then the continuation's seconds and network calls
(dlm_jax/evaluation/generation.continuation).
"""
import json

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import generation
from launch import judged

flags.DEFINE_string("workdir", None, "Diffusion run to sample from.", required=True)
flags.DEFINE_string("judge", None, "Causal (AR) run trained on the same data with the same tokenizer, or hf:PATH, a "
                    "Hugging Face GPT-2 folder (the papers' judge; samples retokenized).", required=True)
flags.DEFINE_string("path", "", "Text whose windows give the prompts (files/folders); default: the validation split.")
flags.DEFINE_string("label", "", "Name of the prompt set in the table (default: --path or 'valid').")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per window (0: unconditional).")
flags.DEFINE_integer("num_samples", 64, "Prompts (windows), sampled as one batch.")
flags.DEFINE_enum("prompt_scripts", "any", ["any", "deva", "latn", "mixed"],
                  "Only windows whose prompt is all Devanagari, all Latin, or uses both scripts ('mixed').")
flags.DEFINE_list("steps", ["16", "32", "96"], "Reverse-step counts to sweep.")
flags.DEFINE_float("temperature", None, "Sampling temperature (default: the run's config).")
flags.DEFINE_string("method", None, "Sampler method (default: the run's config; see launch.sample --method).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
cli.define_draw_precision_flag("float64", "float64 (float32 noise flatters the judge NLL and the entropy)")
cli.define_checkpoint_flags()
flags.DEFINE_integer("continue_windows", 0, "> 0: judge a continuation past the context window instead, this many "
                     "windows of --continue_chunk new tokens after a prompt of context - C tokens.")
flags.DEFINE_integer("continue_chunk", 16, "With --continue_windows: new tokens per window.")
flags.DEFINE_bool("json", False, "Also print every row as a JSON line.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.continue_windows:
    return continuation_main()
  try:
    run, judge, windows = judged.load_runs_and_windows(
        FLAGS.workdir, FLAGS.judge, weights=FLAGS.weights, which=FLAGS.checkpoint, prompt_len=FLAGS.prompt_len,
        num_samples=FLAGS.num_samples, path=FLAGS.path, prompt_scripts=FLAGS.prompt_scripts)
  except ValueError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir} --judge={FLAGS.judge}: {e}") from e
  seq_len = int(run.config.data.seq_len)
  label = FLAGS.label or FLAGS.path or "valid"
  try:
    rows = generation.compare(run, judge, windows, FLAGS.prompt_len, FLAGS.steps, FLAGS.seed, FLAGS.temperature,
                              FLAGS.method, FLAGS.draw_precision)
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  for row in rows:
    row.update(run="real text" if row["steps"] == "n/a" else FLAGS.workdir, prompts=label)
  print(f"Sampling {run.describe()} with {FLAGS.draw_precision} draws; judge {judge.describe()}.")
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


def continuation_main():
  """--continue_windows: the per-window table of `generation.continuation` (module docstring)."""
  chunk, num_windows = FLAGS.continue_chunk, FLAGS.continue_windows
  try:
    run, judge, windows = judged.load_runs_and_windows(
        FLAGS.workdir, FLAGS.judge, weights=FLAGS.weights, which=FLAGS.checkpoint, prompt_len=0,
        num_samples=FLAGS.num_samples, path=FLAGS.path, prompt_scripts=FLAGS.prompt_scripts, continue_chunk=chunk,
        continue_windows=num_windows)
    context = run.objective.sample_length(int(run.config.data.seq_len))
    rows, cost = generation.continuation(run, judge, windows, chunk, int(FLAGS.steps[0]), FLAGS.seed,
                                         FLAGS.draw_precision)
  except (ValueError, ConfigError) as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir} --judge={FLAGS.judge}: {e}") from e
  print(f"Continuing {run.describe()} past its {context}-token context: {FLAGS.num_samples} prompts of "
        f"{context - chunk} tokens, {num_windows} windows of {chunk} new tokens, {FLAGS.steps[0]} steps each, "
        f"{FLAGS.draw_precision} draws; judge {judge.describe()}.")
  print("| window | new tokens | judge NLL, drawn (nats/token) | judge NLL, real text | entropy (nats) |")
  print("|---|---|---|---|---|")
  for r in rows:
    w = r["window"]
    print(f"| {w} | {w * chunk}-{(w + 1) * chunk} | {r['judge_nll']:.3f} | {r['real_judge_nll']:.3f} | "
          f"{r['entropy']:.3f} |")
  print(f"{cost['windows']} windows in {cost['seconds']:.2f} s after compilation "
        f"({FLAGS.num_samples * num_windows * chunk / cost['seconds']:.0f} new tokens/s), "
        f"{cost['network_calls']} network calls.")
  if FLAGS.json:
    for r in rows:
      print(json.dumps(r))
    print(json.dumps(cost))


if __name__ == "__main__":
  cli.run(main)
