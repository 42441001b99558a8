"""Generate a set of constraint puzzles, deterministic by seed (dlm_jax/data/puzzles.py).

  python -m launch.puzzles --task=sudoku --difficulty=easy|medium|hard --count=N --seed=S --output=DIR
  python -m launch.puzzles --task=maze --size=15 --count=N --seed=S --output=DIR
  python -m launch.puzzles --combine=DIR1,DIR2,DIR3 --count=100 --output=DIR   # the first N of each set, in one set

Writes DIR/puzzles.jsonl (one puzzle per line: puzzle, solution, clues, search effort or path length, difficulty) and
DIR/meta.json (the command's settings and the set's clue and effort distributions, also printed). Every Sudoku has
exactly one solution; a set that exists with the same settings is kept (cached), another is refused. Train on one
set, validate and solve on another seed's: --config=configs/sudoku.py (its docstring has the commands).
"""
import json
import pathlib
import sys

from absl import app, flags

from dlm_jax import cli

flags.DEFINE_enum("task", "sudoku", ["sudoku", "maze"], "Puzzle family.")
flags.DEFINE_enum("difficulty", "medium", ["easy", "medium", "hard"], "Sudoku: clue band (easy 36-45, medium 28-35, "
                  "hard <= 26 and needing search).")
flags.DEFINE_integer("size", 15, "Maze: N of the N x N grid (odd).")
flags.DEFINE_integer("count", 1000, "Puzzles in the set.")
flags.DEFINE_integer("seed", 0, "Seed: puzzle i is drawn from (seed, i, attempt).")
flags.DEFINE_string("output", None, "Folder to write.", required=True)
flags.DEFINE_bool("progress", True, "Print a progress line.")
flags.DEFINE_list("combine", [], "Instead of generating: sets written by this command whose first --count puzzles "
                  "each go into one set (e.g. easy, medium and hard test sets, solved per difficulty).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from dlm_jax.data import puzzles
  settings = {"task": FLAGS.task, "difficulty": FLAGS.difficulty if FLAGS.task == "sudoku" else f"{FLAGS.size}x"
              f"{FLAGS.size}", "count": FLAGS.count, "seed": FLAGS.seed,
              **({"size": FLAGS.size} if FLAGS.task == "maze" else {})}
  if FLAGS.combine:
    settings = {"combine": [str(pathlib.Path(p)) for p in FLAGS.combine], "count": FLAGS.count}
  out = pathlib.Path(FLAGS.output)
  if (out / "meta.json").is_file():
    meta = json.loads((out / "meta.json").read_text())
    if meta.get("settings") == settings and (out / puzzles.FILE).is_file():
      print(f"{out} already holds this set (cached):\n{json.dumps(meta['report'], indent=1)}")
      return
    raise app.UsageError(f"--output={out} holds another set ({meta.get('settings')}); choose another folder.")

  if FLAGS.combine:
    parts = [puzzles.read_set(path, "--combine")[:FLAGS.count] for path in FLAGS.combine]
    if len({part[0]["task"] for part in parts}) > 1:
      raise app.UsageError(f"--combine={','.join(FLAGS.combine)}: the sets hold different tasks; combine one task.")
    items = [item for part in parts for item in part]
    puzzles.write_set(out, items, {"settings": settings, "report": puzzles.report(items)})
    print(f"Wrote {len(items):,} puzzles ({', '.join(str(len(p)) for p in parts)} from {', '.join(FLAGS.combine)}) "
          f"to {out / puzzles.FILE}.")
    return

  def progress(done, total, seconds):
    if FLAGS.progress and (done == total or done % max(total // 50, 1) == 0):
      rate = done / max(seconds, 1e-9)
      sys.stdout.write(f"\r{done:,}/{total:,} puzzles, {rate:,.1f}/s, ETA {(total - done) / max(rate, 1e-9):,.0f} s ")
      sys.stdout.flush()

  items, report = puzzles.generate(FLAGS.task, FLAGS.difficulty, FLAGS.count, FLAGS.seed, FLAGS.size, progress)
  print()
  puzzles.write_set(out, items, {"settings": settings, "report": report})
  print(f"Wrote {len(items):,} puzzles to {out / puzzles.FILE}.\n{json.dumps(report, indent=1)}")


if __name__ == "__main__":
  cli.run(main)
