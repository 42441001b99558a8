"""Quality against speed of every decoding strategy on a trained diffusion run (dlm_jax/evaluation/sampling_suite.py).

  python -m launch.sampler_suite --workdir=DIFFUSION_RUN --judge=AR_RUN [--strategies=confidence,threshold,...]
                                 [--steps=16,64] [--num_samples=64] [--prompt_len=32] [--block_length=32]
                                 [--threshold=0.9] [--confidence_stops=0.95,0.98,0.99] [--verifier_rounds=K]
                                 [--record]

Prompts are the first `--prompt_len` tokens of `--num_samples` validation windows spread over the split; every
strategy completes them in one batch (compiled, then timed). One markdown row per strategy and step count, after the
row of the real continuations: judge NLL (by --judge, the causal arm trained on the same data), unigram entropy,
distinct-2/3, script errors, tokens/s, batch seconds, network calls and the steps used. Each row is printed as soon as
it is scored (and appended to --rows_out as a JSON line, and the markdown table of the rows so far rewritten to
--table_out), so that a run cut short keeps its finished rows; the whole table is printed at the end. `--record`
appends the rows, with date, commit, device and command, to BENCHMARKS.md.

Seed 001's §10 sweeps, one command each:
  python -m launch.sampler_suite --workdir=R --judge=J --strategies=confidence --steps=8,12,16
  python -m launch.sampler_suite --workdir=R --judge=J --strategies=confidence_stop --steps=16 \\
      --confidence_stops=0.95,0.98,0.99
  python -m launch.sampler_suite --workdir=R --judge=J --strategies=confidence,confidence_stop,token_stop \\
      --steps=48 --confidence_stops=0.5,0.9     # §9.1's budget per block and per token
"""
import datetime
import json
import os
import pathlib
import sys

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.benchmarks import report
from dlm_jax.evaluation import sampling_suite
from launch import judged

REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("workdir", None, "Diffusion run to sample from.", required=True)
flags.DEFINE_string("judge", None, "Causal (AR) run trained on the same data with the same tokenizer.", required=True)
flags.DEFINE_list("strategies", ["confidence", "margin", "entropy", "ancestral", "ancestral_cache", "blocks",
                                 "blocks_dual_cache", "blocks_prefix_cache", "threshold", "threshold_blocks_dual_cache",
                                 "confidence_stop", "token_stop", "low_confidence_remasking", "remdm_cap",
                                 "remdm_loop", "guidance"],
                  "Strategies to run (dlm_jax/evaluation/sampling_suite.strategies; 'verifier' needs "
                  "--verifier_rounds > 0).")
flags.DEFINE_list("steps", ["16", "64"], "Reverse-step counts.")
flags.DEFINE_integer("num_samples", 64, "Prompts (validation windows), sampled as one batch.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per window (0: unprompted samples).")
flags.DEFINE_integer("block_length", 32, "Block length of the block strategies.")
flags.DEFINE_float("threshold", 0.9, "Confidence threshold of the threshold strategies.")
flags.DEFINE_list("confidence_stops", ["0.95", "0.98", "0.99"], "Values of the confidence_stop and token_stop "
                  "strategies.")
flags.DEFINE_float("remask_eta", 0.02, "eta of the remasking strategies.")
flags.DEFINE_float("guidance_scale", 1.0, "w of the guidance strategy (classifier-free guidance against the prompt).")
flags.DEFINE_integer("verifier_rounds", 0, "> 0: add the 'verifier' strategy with --judge as verifier.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
cli.define_draw_precision_flag("float64", "float64 (float32 noise flatters the judge NLL and the entropy)")
cli.define_checkpoint_flags()
flags.DEFINE_bool("json", False, "Also print every row as a JSON line.")
flags.DEFINE_string("rows_out", None, "Append each row to this JSONL file as soon as it is scored.")
flags.DEFINE_string("table_out", None, "Rewrite the markdown table of the rows so far to this file after each row.")
flags.DEFINE_bool("record", False, "Append the rows to --output.")
flags.DEFINE_string("output", str(REPO / "BENCHMARKS.md"), "Markdown file --record appends to.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  names = list(FLAGS.strategies) + (["verifier"] if FLAGS.verifier_rounds and "verifier" not in FLAGS.strategies
                                    else [])
  try:
    sampling_suite.check_names(names)
    if "verifier" in names and FLAGS.verifier_rounds < 1:
      raise ValueError("the 'verifier' strategy needs --verifier_rounds >= 1.")
    run, judge, windows = judged.load_runs_and_windows(
        FLAGS.workdir, FLAGS.judge, weights=FLAGS.weights, which=FLAGS.checkpoint, prompt_len=FLAGS.prompt_len,
        num_samples=FLAGS.num_samples)
    streamed = []

    def on_row(row):
      """Each row as it comes: printed, appended to --rows_out, the table so far rewritten to --table_out."""
      streamed.append(row)
      print(sampling_suite.markdown_rows([row]), end="", flush=True)
      if FLAGS.rows_out:
        with open(FLAGS.rows_out, "a", encoding="utf-8") as f:
          f.write(json.dumps(row) + "\n")
      if FLAGS.table_out:
        tmp = f"{FLAGS.table_out}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
          f.write(sampling_suite.HEADER + sampling_suite.markdown_rows(streamed))
        os.replace(tmp, FLAGS.table_out)

    print(sampling_suite.HEADER, end="", flush=True)
    rows = sampling_suite.run_suite(
        run, judge, windows, FLAGS.prompt_len, names, [int(s) for s in FLAGS.steps], block_length=FLAGS.block_length,
        threshold=FLAGS.threshold, confidence_stops=[float(c) for c in FLAGS.confidence_stops],
        remask_eta=FLAGS.remask_eta, guidance_scale=FLAGS.guidance_scale, verifier_rounds=FLAGS.verifier_rounds,
        seed=FLAGS.seed, on_row=on_row, draw_precision=FLAGS.draw_precision)
  except ValueError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir} --judge={FLAGS.judge}: {e}") from e
  command = "python -m launch.sampler_suite " + " ".join(a for a in sys.argv[1:] if not a.startswith("--output"))
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__})"
  seq_len = int(run.config.data.seq_len)
  title = (f"Sampler suite: {run.describe()}; judge {judge.describe()}; {FLAGS.num_samples} prompts x "
           f"{FLAGS.prompt_len} tokens, {seq_len - FLAGS.prompt_len} generated, {FLAGS.draw_precision} draws; "
           f"{datetime.date.today().isoformat()}, commit {report.commit(REPO)}, {device}, `{command.strip()}`")
  table = sampling_suite.HEADER + sampling_suite.markdown_rows(rows)
  print(f"\n{title}\n\n{table}")
  if FLAGS.json:
    for r in rows:
      print(json.dumps(r))
  if FLAGS.record:
    with open(FLAGS.output, "a", encoding="utf-8") as f:
      f.write(f"\n{title}\n\n{table}")


if __name__ == "__main__":
  cli.run(main)
