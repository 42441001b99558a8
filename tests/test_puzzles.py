"""Constraint puzzles as infilling (data/puzzles.py, evaluation/puzzles.py, launch.puzzles, launch.solve)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from dlm_jax import special_tokens
from dlm_jax.data import puzzles, tokenizers
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import puzzles as puzzle_eval
from dlm_jax.training import checkpoint

# A classic puzzle (30 clues) and its unique solution.
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def test_the_solver_finds_the_solution_and_counts_a_second_one():
  solutions, guesses = puzzles.solve(PUZZLE)
  assert solutions == [SOLUTION] and guesses == 0  # propagation alone solves it
  assert puzzles.solve(".." + SOLUTION[2:])[0] == [SOLUTION]  # the rest of row 0 pins the two blanks
  assert len(puzzles.solve("." * 81, limit=3)[0]) == 3  # an empty grid has many: the search stops at `limit`
  assert puzzles.solve("55" + "." * 79)[0] == []  # a contradiction
  with pytest.raises(ValueError, match="81 characters"):
    puzzles.solve("123")


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generated_sudokus_have_one_solution_in_their_band(difficulty):
  items, report = puzzles.generate("sudoku", difficulty, 4, seed=7)
  low, high = puzzles.DIFFICULTIES[difficulty]
  for item in items:
    assert puzzles.solve(item["puzzle"], limit=2)[0] == [item["solution"]]
    assert all(p in (".", s) for p, s in zip(item["puzzle"], item["solution"]))
    assert low <= item["clues"] == 81 - item["puzzle"].count(".") <= high
    assert puzzles.violations(item["solution"]) == {"rows": 0, "columns": 0, "boxes": 0, "blanks": 0}
    assert item["effort"] == puzzles.search_effort(item["puzzle"])
    if difficulty == "hard":
      assert item["effort"] >= 1
  assert report["count"] == 4 and report["clues"]["min"] >= low
  # Deterministic by seed, and the first puzzles do not depend on the count.
  again, _ = puzzles.generate("sudoku", difficulty, 2, seed=7)
  assert again == items[:2]


def test_sudoku_augmentation_maps_solutions_to_solutions_and_clues_to_clues():
  rng = np.random.default_rng(0)
  for _ in range(20):
    cells, digits = puzzles.sudoku_permutation(rng)
    assert sorted(cells) == list(range(81)) and sorted(digits[1:]) == list(range(1, 10))
    puzzle, solution = puzzles.apply_sudoku(PUZZLE, cells, digits), puzzles.apply_sudoku(SOLUTION, cells, digits)
    assert puzzles.violations(solution)["rows"] + puzzles.violations(solution)["columns"] == 0
    assert puzzles.violations(solution)["boxes"] == 0
    assert puzzle.count(".") == PUZZLE.count(".") and all(p in (".", s) for p, s in zip(puzzle, solution))
    assert puzzles.solve(puzzle, limit=2)[0] == [solution]  # still exactly one solution: the transformed one


def test_violations_and_checks_on_hand_made_grids():
  swapped = SOLUTION[1] + SOLUTION[0] + SOLUTION[2:]  # 3 and 5 swapped in row 0: their columns and box 0 break
  v = puzzles.violations(swapped)
  assert v == {"rows": 0, "columns": 2, "boxes": 0, "blanks": 0}
  item = {"task": "sudoku", "puzzle": PUZZLE, "solution": SOLUTION, "difficulty": "medium"}
  assert puzzle_eval.check(SOLUTION, item) == {"exact": True, "blank_right": 51, "blanks": 51, "violations": 0,
                                               "valid": True}
  wrong = puzzle_eval.check(SOLUTION[:2] + "9" + SOLUTION[3:], item)  # a blank filled wrong: row, column, box
  assert wrong["exact"] is False and wrong["blank_right"] == 50 and wrong["violations"] == 3
  # Verification-aware decoding remasks the filled cells in conflict, never a clue: the wrong 9 at cell 2 repeats the
  # 9s at cells 6 (row 0, a blank), 19 (box 0, a clue: kept) and 29 (column 2, a blank).
  assert puzzle_eval.conflicting_cells(SOLUTION[:2] + "9" + SOLUTION[3:], PUZZLE) == [2, 6, 29]
  assert puzzle_eval.conflicting_cells(SOLUTION, PUZZLE) == []
  summary = puzzle_eval.summarize([puzzle_eval.check(SOLUTION, item), wrong], [item, item])
  assert summary["all"]["exact"] == 0.5 and summary["medium"]["blank_accuracy"] == 101 / 102


def test_mazes_have_a_unique_shortest_path_and_symmetries_keep_it():
  items, report = puzzles.generate("maze", "", 3, seed=3, size=11)
  for item in items:
    n = item["size"]
    assert puzzles.check_maze(item["solution"], item["puzzle"], n) == {
        "valid": True, "marked": item["path_length"] - 1, "shortest": item["path_length"]}
    for k in range(8):
      cells = puzzles.maze_symmetry(k, n)
      moved = lambda grid: "".join(grid[i] for i in cells)
      assert puzzles.check_maze(moved(item["solution"]), moved(item["puzzle"]), n)["valid"]
    detour = list(item["solution"])
    detour[item["solution"].index("o")] = "."  # a gap in the path
    assert not puzzles.check_maze("".join(detour), item["puzzle"], n)["valid"]
  assert report["path_length"]["min"] >= 2
  with pytest.raises(ConfigError, match="odd size"):
    puzzles.generate_maze(np.random.default_rng(0), 10)


def test_windows_fix_the_clues_and_the_prompted_layout_fixes_the_puzzle():
  char = tokenizers.CharTokenizer.from_texts([puzzles.alphabet("sudoku")])
  item = {"task": "sudoku", "puzzle": PUZZLE, "solution": SOLUTION, "difficulty": "medium", "clues": 30}
  clue_cells = [ch != "." for ch in PUZZLE]
  grid = puzzles.PuzzleExamples([item], char, "grid")
  ids, given = special_tokens.split_fixed(grid.window(0, 81, char.special))
  assert char.decode(ids) == SOLUTION and given.tolist() == clue_cells
  tokens, fixed = grid.inputs(char.special.mask)
  assert fixed[0].tolist() == clue_cells and (tokens[0][~fixed[0]] == char.special.mask).all()
  assert (tokens[0][fixed[0]] == ids[given]).all()
  prompted = puzzles.PuzzleExamples([item], char, "prompted")
  ids, given = special_tokens.split_fixed(prompted.window(0, 162, char.special))
  assert given[:81].all() and given[81:].tolist() == clue_cells and char.decode(ids[81:]) == SOLUTION
  assert ids[:81].tolist() == [char.special.pad if ch == "." else int(char.encode(ch)[0]) for ch in PUZZLE]
  augmented = puzzles.PuzzleExamples([item], char, "grid", augment=5, seed=1)
  assert len(augmented) == 5
  windows = [special_tokens.split_fixed(augmented.window(k, 81, char.special)) for k in range(5)]
  assert len({char.decode(w[0]) for w in windows}) > 1  # transforms differ
  for ids_k, given_k in windows:
    assert puzzles.violations(char.decode(ids_k))["rows"] == 0 and given_k.sum() == 30
  with pytest.raises(ConfigError, match="set data.seq_len=81"):
    grid.window(0, 64, char.special)


def test_the_policies_rank_without_choice_noise():
  """launch.solve's policies are the rankings as such (MaskGIT's choice noise made a checkpoint's confidence reveal
  no better than a random order, BENCHMARKS.md "Sudoku")."""
  chosen = puzzle_eval.policies(threshold=0.8)
  assert set(chosen) == {"ancestral", "confidence", "margin", "entropy", "threshold", "strategic", "calibrated"}
  assert all(overrides["reveal_noise"] == 0.0 for overrides in chosen.values())
  assert chosen["margin"]["confidence"] == "margin" and chosen["threshold"]["threshold"] == 0.8


def test_a_puzzle_run_trains_and_no_policy_ever_changes_a_clue(puzzle_runs):
  root = puzzle_runs
  run = checkpoint.load_for_inference(str(root / "run"))
  examples = puzzles.PuzzleExamples(puzzles.read_set(root / "test"), run.tokenizer)
  for name, overrides in puzzle_eval.policies().items():
    if name == "strategic":
      continue  # HRM runs only
    result = puzzle_eval.solve(run, examples, {**overrides, "steps": 12, "greedy": name != "ancestral"})
    assert result["all"]["puzzles"] == 8 and 0.0 <= result["all"]["blank_accuracy"] <= 1.0
    for grid, item in zip(result["grids"], examples.puzzles):
      assert all(g == p for g, p in zip(grid, item["puzzle"]) if p != "."), name  # clues as given
      assert "." not in grid and len(grid) == 81  # every blank filled with a digit
  verified = puzzle_eval.solve(run, examples, {**puzzle_eval.policies()["margin"], "steps": 12}, verify_rounds=2)
  for grid, item in zip(verified["grids"], examples.puzzles):
    assert all(g == p for g, p in zip(grid, item["puzzle"]) if p != ".") and "." not in grid


def test_launch_puzzles_and_solve_from_the_command_line(puzzle_runs, tmp_path):
  root = puzzle_runs
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  made = subprocess.run([sys.executable, "-m", "launch.puzzles", "--task=sudoku", "--difficulty=easy", "--count=3",
                         "--seed=1", f"--output={tmp_path / 'set'}", "--progress=false"], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=300)
  assert made.returncode == 0, made.stderr[-2000:]
  written = [json.loads(line) for line in (tmp_path / "set" / puzzles.FILE).read_text().splitlines()]
  assert [w["puzzle"] for w in written] == [p["puzzle"] for p in puzzles.read_set(root / "test")[:3]]
  again = subprocess.run([sys.executable, "-m", "launch.puzzles", "--task=sudoku", "--difficulty=easy", "--count=3",
                          "--seed=1", f"--output={tmp_path / 'set'}"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
  assert again.returncode == 0 and "already holds this set (cached)" in again.stdout
  combined = subprocess.run([sys.executable, "-m", "launch.puzzles", f"--combine={tmp_path / 'set'},{root / 'test'}",
                             "--count=2", f"--output={tmp_path / 'both'}"], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=300)
  assert combined.returncode == 0, combined.stderr[-2000:]
  assert puzzles.read_set(tmp_path / "both") == written[:2] + puzzles.read_set(root / "test")[:2]
  solved = subprocess.run([sys.executable, "-m", "launch.solve", f"--workdir={root / 'run'}",
                           f"--puzzles={root / 'test'}", "--policies=confidence,margin", "--steps=all,all/4"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert solved.returncode == 0, solved.stderr[-2000:]
  rows = [line for line in solved.stdout.splitlines() if line.startswith("| confidence") or line.startswith("| margin")]
  assert len(rows) == 2 * 2 * 2  # 2 policies x 2 step counts x (all, easy)


def test_act_profile_replays_the_sampler_and_counts_iterations_per_reveal_step(puzzle_runs):
  root = puzzle_runs
  run = checkpoint.load_for_inference(str(root / "hrm"))
  examples = puzzles.PuzzleExamples(puzzles.read_set(root / "test")[:4], run.tokenizer)
  steps = 10
  profile = puzzle_eval.act_profile(run, examples, {**puzzle_eval.policies()["confidence"], "steps": steps,
                                                     "greedy": True}, batch_size=3)  # two batches, the last short
  tokens, fixed = examples.inputs(run.tokenizer.special.mask)
  assert profile["replay_agreement"] == 1.0  # the replayed argmax is what the sampler revealed, at every reveal
  iterations = profile["iterations_NxSxL"]
  assert iterations.shape == (4, steps, 81) and iterations.min() >= 1.0 and iterations.max() <= 3.0  # l_steps = 3
  masked = profile["masked_NxSxL"]
  np.testing.assert_array_equal(masked[:, 0], ~fixed)  # step 0 sees every blank masked, no clue
  assert (masked[:, 1:] <= masked[:, :-1]).all()  # nothing is masked again
  # A blank's recorded reveal step is the step after which it stops being masked.
  first_unmasked = np.argmin(np.concatenate([masked, np.zeros_like(masked[:, :1])], axis=1), axis=1) - 1
  np.testing.assert_array_equal(np.where(fixed, -1, first_unmasked), profile["revealed_step_NxL"])
  assert set(profile["by_difficulty"]) == {"easy"} and profile["by_difficulty"]["easy"]["puzzles"] == 4
  figures = profile["per_puzzle"][0]
  its, msk = iterations[0], masked[0]
  assert figures["at_masked"] == pytest.approx(its[msk].mean(), rel=1e-6)
  assert figures["per_blank"] == pytest.approx(its[msk].sum() / (~fixed[0]).sum(), rel=1e-6)
  # With the memory reset at every reverse step (SamplerConfig.reset_carry) the replay resets it too.
  reset = puzzle_eval.act_profile(run, examples, {**puzzle_eval.policies()["confidence"], "steps": steps,
                                                   "greedy": True, "reset_carry": True}, batch_size=4)
  assert reset["replay_agreement"] == 1.0
  transformer = checkpoint.load_for_inference(str(root / "run"))
  with pytest.raises(ValueError, match="HRM denoiser's ACT trace"):
    puzzle_eval.act_profile(transformer, examples, {"steps": 4})


def test_launch_solve_reports_act_for_hrm_runs_and_refuses_it_for_others(puzzle_runs):
  root = puzzle_runs
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  solve = lambda run, *more: subprocess.run([sys.executable, "-m", "launch.solve", f"--workdir={root / run}",
                                             f"--puzzles={root / 'test'}", "--count=3", "--policies=confidence",
                                             "--steps=6", "--act", *more],
                                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  hrm = solve("hrm", "--reset_carry")  # the memory reset at every reverse step, in the sampler and in the replay
  assert hrm.returncode == 0, hrm.stderr[-2000:]
  assert "memory reset every step" in hrm.stdout
  lines = hrm.stdout.splitlines()
  act = lines.index(next(line for line in lines if line.startswith("# ACT, confidence, 6 steps")))
  assert "replay agreement 100.0%" in lines[act]
  assert lines[act + 3].startswith("| easy | 3 |")  # the table after the plain rows
  assert all(not line.startswith("| confidence") for line in lines[act:])
  other = solve("run")
  assert other.returncode != 0 and "--act reads the HRM denoiser's ACT trace" in other.stderr
  calibrated = subprocess.run([sys.executable, "-m", "launch.solve", f"--workdir={root / 'hrm'}",
                               f"--puzzles={root / 'test'}", "--count=3", "--policies=calibrated", "--steps=6"],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert calibrated.returncode != 0 and "was trained without one" in calibrated.stderr
