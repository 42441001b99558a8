"""Solve a puzzle set with a trained run: exact-solve rate, blank-cell accuracy, constraint violations, per difficulty,
for each reveal policy and step count (dlm_jax/evaluation/puzzles.py).

  python -m launch.solve --workdir=RUN --puzzles=DIR [--policies=confidence,margin,entropy,ancestral,threshold]
                         [--steps=all,all/2,all/4] [--greedy=true] [--count=N] [--json]

`--steps`: integers, or "all" (the most blanks of a puzzle in the set: one cell per step) and "all/K". Every policy
draws greedily by default (the argmax of each revealed cell; --nogreedy samples at the run's temperature). "strategic"
(HRM runs) adds the H-module's priority to the confidence ranking; "calibrated" (runs with model.calibration_head)
ranks by the calibration head's forecast that a cell is right. One markdown row per (policy, steps), with the
sampler's tokens/s; --json also prints each row as JSON. `--verify_rounds=K` adds, in rows of their own marked
"+ verify xK", verification-aware decoding: the filled cells in conflict with a row, column or box remasked and
resampled K rounds (never mixed into the plain rows). `--act` (HRM runs) adds, after the table, per policy and step
count, the L-iterations ACT spent at the masked cells, at the cells each step revealed and at the clues, per
difficulty (evaluation/puzzles.act_profile). `--reset_carry` (HRM runs) starts every reverse step from the learned
memory contents, as training does, instead of carrying the previous step's (SamplerConfig.reset_carry).
"""
import json

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.data import puzzles
from dlm_jax.evaluation import puzzles as puzzle_eval
from dlm_jax.training import checkpoint

flags.DEFINE_string("workdir", None, "The trained run.", required=True)
flags.DEFINE_string("puzzles", None, "A set written by launch.puzzles (folder or its puzzles.jsonl).", required=True)
flags.DEFINE_list("policies", ["confidence", "margin", "entropy", "ancestral"], "Reveal policies: "
                  + ", ".join(puzzle_eval.policies()))
flags.DEFINE_list("steps", ["all"], "Step counts: integers, 'all' (the most blanks of a puzzle) or 'all/K'.")
flags.DEFINE_bool("greedy", True, "Argmax each revealed cell (else sample at the run's temperature).")
flags.DEFINE_integer("count", 0, "Solve only the first N puzzles (0: all).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 256, "Puzzles per sampler call.")
flags.DEFINE_integer("verify_rounds", 0, "Sudoku: also report verification-aware decoding (cells in conflict with a "
                     "row, column or box remasked and resampled, this many rounds) in rows of their own.")
flags.DEFINE_bool("act", False, "HRM runs: also report the L-iterations ACT spends per reveal step against "
                  "difficulty, for each policy and step count (evaluation/puzzles.act_profile).")
flags.DEFINE_bool("reset_carry", None, "HRM runs: start every reverse step from the learned memory contents, as "
                  "training does (true), or from the previous step's (false); default: the run's "
                  "sample.reset_carry (SamplerConfig.reset_carry).")
flags.DEFINE_bool("json", False, "Also print every row as a JSON line.")
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


def step_counts(specs, most_blanks: int) -> list[int]:
  out = []
  for spec in specs:
    spec = spec.strip()
    if spec.startswith("all"):
      divisor = int(spec.split("/", 1)[1]) if "/" in spec else 1
      out.append(max(most_blanks // divisor, 1))
    elif spec.isdigit() and int(spec) > 0:
      out.append(int(spec))
    else:
      raise app.UsageError(f"--steps={','.join(specs)}: {spec!r} is not a positive integer, 'all' or 'all/K'.")
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  if run.config.data.get("layout") != "puzzle":
    raise app.UsageError(f"--workdir={FLAGS.workdir} was not trained on puzzles (data.layout="
                         f"{run.config.data.get('layout')!r}); train with --config=configs/sudoku.py or maze.py.")
  items = puzzles.read_set(FLAGS.puzzles, "--puzzles")
  items = items[:FLAGS.count] if FLAGS.count else items
  examples = puzzles.PuzzleExamples(items, run.tokenizer, run.config.data.get("puzzle_layout", "grid"))
  if examples.length != int(run.config.data.seq_len):
    raise app.UsageError(f"--puzzles={FLAGS.puzzles}: windows of {examples.length} tokens; the run was trained on "
                         f"{run.config.data.seq_len}.")
  known = puzzle_eval.policies()
  unknown = [p for p in FLAGS.policies if p not in known]
  if unknown:
    raise app.UsageError(f"--policies: unknown {unknown}; choose from {sorted(known)}.")
  if "calibrated" in FLAGS.policies and not run.config.model.get("calibration_head", False):
    raise app.UsageError(f"--policies=calibrated ranks by a calibration head's forecast; --workdir={FLAGS.workdir} "
                         "was trained without one (model.calibration_head=False).")
  if FLAGS.act and run.config.model.name != "hrm":
    raise app.UsageError(f"--act reads the HRM denoiser's ACT trace; --workdir={FLAGS.workdir} trained "
                         f"model.name={run.config.model.name!r}.")
  reset_carry = (bool(run.config.sample.get("reset_carry", False)) if FLAGS.reset_carry is None
                 else FLAGS.reset_carry)
  blank = puzzles.BLANK if examples.task == "sudoku" else puzzles.OPEN
  most_blanks = max(p["puzzle"].count(blank) for p in items)
  print(f"# {run.describe()}; {len(items)} {examples.task} puzzles from {FLAGS.puzzles} (most blanks {most_blanks})"
        + ("; memory reset every step" if reset_carry else ""))
  print("| policy | steps | difficulty | puzzles | exact | blank accuracy | valid | violations / puzzle | tokens/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  profiles = []
  for policy in FLAGS.policies:
    for steps in step_counts(FLAGS.steps, most_blanks):
      overrides = {**known[policy], "steps": steps, "greedy": FLAGS.greedy, "reset_carry": reset_carry}
      for rounds in (0, FLAGS.verify_rounds) if FLAGS.verify_rounds else (0,):
        report_rows(policy if not rounds else f"{policy} + verify x{rounds}", steps,
                    puzzle_eval.solve(run, examples, overrides, FLAGS.seed, FLAGS.batch_size, rounds))
      if FLAGS.act:
        profiles.append((policy, steps, puzzle_eval.act_profile(run, examples, overrides, FLAGS.seed)))
  for policy, steps, profile in profiles:  # after the table of plain rows
    report_act(policy, steps, profile)


def report_rows(policy: str, steps: int, result: dict):
  """One markdown row per difficulty (and overall) of a `puzzle_eval.solve` result; with --json, its JSON too."""
  for name, r in result.items():
    if not isinstance(r, dict):
      continue
    print(f"| {policy} | {steps} | {name} | {r['puzzles']} | {r['exact']:.1%} | {r['blank_accuracy']:.1%} | "
          f"{r['valid']:.1%} | {r.get('violations_per_puzzle', float('nan')):.2f} | {result['tokens_per_s']:,.0f} |",
          flush=True)
    if FLAGS.json:
      print(json.dumps({"policy": policy, "steps": steps, "difficulty": name, **r,
                        "tokens_per_s": result["tokens_per_s"]}))


def report_act(policy: str, steps: int, profile: dict):
  """The ACT rows of a `puzzle_eval.act_profile`: mean L-iterations per cell and reverse step, per difficulty."""
  print(f"\n# ACT, {policy}, {steps} steps: mean L-iterations per cell and step (of at most {profile['l_steps']}; "
        f"replay agreement {profile['replay_agreement']:.1%})")
  print("| difficulty | puzzles | clues | search effort | masked cells | revealed cells | clue cells | per blank |")
  print("|---|---|---|---|---|---|---|---|")
  for name, r in profile["by_difficulty"].items():
    print(f"| {name} | {r['puzzles']} | {r['clues']:.1f} | {r['effort']:.1f} | {r['at_masked']:.3f} | "
          f"{r['at_revealed']:.3f} | {r['at_clues']:.3f} | {r['per_blank']:.2f} |", flush=True)
    if FLAGS.json:
      print(json.dumps({"act": True, "policy": policy, "steps": steps, "difficulty": name, **r}))


if __name__ == "__main__":
  cli.run(main)
