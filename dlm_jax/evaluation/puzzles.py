"""Solving constraint puzzles with a trained run (data/puzzles.py; `python -m launch.solve`).

Every puzzle of a set is given to the sampler as it is: its given cells fixed, its blanks masked. The sampler fills
the blanks with a reveal policy (the strategies of evaluation/sampling_suite.py plus HRM's strategic priority) in a
number of steps; the filled grid is then checked:

* exact: the grid equals the set's solution (a Sudoku from `launch.puzzles` has exactly one, so this is "solved");
* blank accuracy: the share of blank cells filled with the solution's value;
* Sudoku: constraint violations, repeated digits per row, column and box (`puzzles.violations`, summed), and whether
  the grid is a valid completion (no violation: with a unique solution, the same as exact);
* maze: whether the marked cells form a shortest S-G path (`puzzles.check_maze`).

Figures are reported overall and per difficulty, with the tokens per second of the sampler (blanks filled per second
of the timed call, after a compiling call).
"""
from __future__ import annotations

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.data import puzzles
from dlm_jax.evaluation import sampling_suite
from dlm_jax.sampling import make_sampler, primitives


def policies(threshold: float = 0.9) -> dict[str, dict]:
  """Reveal policy name -> SamplerConfig overrides: MDLM/MD4's ancestral sampler; confidence-ranked reveal by the top
  probability, the top-2 margin or the entropy (Kim et al. 2025: adaptive reveal order); Fast-dLLM's threshold;
  the HRM denoiser's strategic priority added to the confidence ranking (`strategic_weight`; HRM runs only); the
  ranking by a trained calibration head's forecast that the cell is right (`confidence="calibrated"`; runs with
  model.calibration_head only)."""
  presets = sampling_suite.strategies(block_length=0, threshold=threshold, remask_eta=0.0)
  chosen = {name: presets[name] for name in ("ancestral", "confidence", "margin", "entropy", "threshold")}
  chosen["strategic"] = {"strategic_weight": 1.0}
  chosen["calibrated"] = {"confidence": "calibrated"}  # a run with model.calibration_head: the head's forecast
  # The rankings as such: no MaskGIT choice noise (the default config's reveal_noise = 4.5 randomizes early reveals:
  # on a medium-Sudoku checkpoint it brought the confidence ranking's blank accuracy to the random order's, BENCHMARKS).
  return {name: {**overrides, "reveal_noise": 0.0} for name, overrides in chosen.items()}


def grid_of(row_ids, tokenizer, examples: puzzles.PuzzleExamples) -> str:
  """The filled grid of a sampled row (the second half in the "prompted" layout)."""
  text = tokenizer.decode(np.asarray(row_ids))
  return text[-examples.cells:]


def check(grid: str, puzzle: dict) -> dict:
  """The figures of one filled grid against its puzzle (module docstring)."""
  blanks = [i for i, ch in enumerate(puzzle["puzzle"])
            if ch == (puzzles.BLANK if puzzle["task"] == "sudoku" else puzzles.OPEN)]
  right = sum(grid[i] == puzzle["solution"][i] for i in blanks)
  out = {"exact": grid == puzzle["solution"], "blank_right": right, "blanks": len(blanks)}
  if puzzle["task"] == "sudoku":
    v = puzzles.violations(grid)
    out.update(violations=v["rows"] + v["columns"] + v["boxes"], valid=v["rows"] + v["columns"] + v["boxes"] == 0
               and v["blanks"] == 0)
  else:
    out["valid"] = puzzles.check_maze(grid, puzzle["puzzle"], puzzle["size"])["valid"]
  return out


def summarize(checks: list[dict], puzzle_list: list[dict]) -> dict:
  """Overall and per-difficulty rates of `check` results."""
  def rates(rows):
    n = max(len(rows), 1)
    out = {"puzzles": len(rows), "exact": sum(r["exact"] for r in rows) / n,
           "blank_accuracy": sum(r["blank_right"] for r in rows) / max(sum(r["blanks"] for r in rows), 1),
           "valid": sum(r["valid"] for r in rows) / n}
    if rows and "violations" in rows[0]:
      out["violations_per_puzzle"] = sum(r["violations"] for r in rows) / n
    return out
  by = collections.defaultdict(list)
  for row, puzzle in zip(checks, puzzle_list):
    by[puzzle["difficulty"]].append(row)
  return {"all": rates(checks), **{name: rates(rows) for name, rows in sorted(by.items())}}


def conflicting_cells(grid: str, puzzle: str) -> list[int]:
  """The filled (non-clue) cells of a Sudoku grid that share a digit with another cell of a row, column or box: what
  verification-aware decoding remasks."""
  bad = set()
  for unit in puzzles.UNITS:
    seen = collections.defaultdict(list)
    for i in unit:
      seen[grid[i]].append(i)
    for cells in seen.values():
      if len(cells) > 1:
        bad.update(i for i in cells if puzzle[i] == puzzles.BLANK)
  return sorted(bad)


def _sample_all(run, sample, tokens_NxL, fixed_NxL, rng, batch_size: int):
  """(the sampled rows, the seconds of the timed calls). Each batch shape (a shorter last batch has its own) is
  compiled by an untimed call first, so no compilation is timed."""
  batches = [(jnp.asarray(tokens_NxL[s:s + batch_size]), jnp.asarray(fixed_NxL[s:s + batch_size]))
             for s in range(0, len(tokens_NxL), batch_size)]
  for tokens, fixed in {b[0].shape: b for b in batches}.values():
    jax.block_until_ready(sample(run.params, rng, tokens, fixed).tokens_BxL)  # compile
  filled, seconds = [], 0.0
  for index, (tokens, fixed) in enumerate(batches):
    began = time.perf_counter()
    filled.append(np.asarray(jax.block_until_ready(sample(run.params, jax.random.fold_in(rng, index * batch_size),
                                                          tokens, fixed).tokens_BxL)))
    seconds += time.perf_counter() - began
  return np.concatenate(filled), seconds


def solve(run, examples: puzzles.PuzzleExamples, overrides: dict, seed: int = 0, batch_size: int = 256,
          verify_rounds: int = 0) -> dict:
  """Samples every puzzle of `examples` with the run's sampler config and `overrides`; returns `summarize`'s figures
  with "tokens_per_s", "seconds" and the grids.

  `verify_rounds` > 0 (Sudoku, "grid" layout): verification-aware decoding, reported apart from the plain figures by
  the caller: after each pass the filled cells in conflict with another cell of a row, column or box are masked
  again and resampled with every other cell fixed, that many rounds (a rule-based verifier; the model never sees the
  rules)."""
  tokens_NxL, fixed_NxL = examples.inputs(run.tokenizer.special.mask)
  sample = make_sampler(run.graphdef, run.other, run.sampler_config(**overrides), run.objective)
  rng = jax.random.key(seed)
  rows, seconds = _sample_all(run, sample, tokens_NxL, fixed_NxL, rng, batch_size)
  if verify_rounds and (examples.task != "sudoku" or examples.layout != "grid"):
    raise ValueError("Verification-aware decoding checks Sudoku rows, columns and boxes in the 'grid' layout.")
  for round_ in range(verify_rounds):
    grids = [grid_of(row, run.tokenizer, examples) for row in rows]
    redo_NxL = np.zeros(fixed_NxL.shape, bool)
    for k, (grid, item) in enumerate(zip(grids, examples.puzzles)):
      redo_NxL[k, conflicting_cells(grid, item["puzzle"])] = True
    if not redo_NxL.any():
      break
    again, spent = _sample_all(run, sample, np.where(redo_NxL, run.tokenizer.special.mask, rows).astype(np.int32),
                               ~redo_NxL, jax.random.fold_in(rng, 1_000_003 + round_), batch_size)
    rows, seconds = np.where(redo_NxL, again, rows), seconds + spent
  grids = [grid_of(row, run.tokenizer, examples) for row in rows]
  checks = [check(grid, puzzle) for grid, puzzle in zip(grids, examples.puzzles)]
  result = summarize(checks, examples.puzzles)
  blanks = int((~fixed_NxL).sum())
  result.update(tokens_per_s=blanks / max(seconds, 1e-9), seconds=seconds, grids=grids)
  return result


def act_profile(run, examples: puzzles.PuzzleExamples, overrides: dict, seed: int = 0, batch_size: int = 64) -> dict:
  """Where an HRM run's ACT spends its L-iterations while it solves (issue #29: computation against difficulty).

  Every puzzle is sampled with its trajectory recorded (`overrides` as in `solve`, one block); each reverse step s of
  S is then replayed through `HRMDenoiser.inspect` at t = 1 - s/S with the memory carried from step to step (or reset
  at each, with `reset_carry`), which is exactly the sampler's model call (notebooks/inside_hrm.ipynb). Returns numpy
  arrays over the N puzzles:

  * `iterations_NxSxL`: the L-iterations at every cell and step, averaged over the H-cycles (1 .. model.l_steps);
  * `masked_NxSxL`: the cells still masked at the step's input; `revealed_step_NxL`: the step at which each blank was
    revealed (-1 for a clue); `confidence_NxL`: its ranking score then;
  * `per_puzzle`: per puzzle, the mean L-iterations at the masked cells over the steps it took (`at_masked`), at the
    cells the step revealed (`at_revealed`), at the clues (`at_clues`), and their sum over its steps at the masked
    cells divided by its blanks (`per_blank`: the L-iterations a blank cell cost while it was masked);
  * `by_difficulty`: those figures averaged per difficulty, with the set's clue counts and search effort;
  * `replay_agreement`: with greedy draws, the share of revealed cells whose token is the replayed step's argmax (1.0
    when the replay is the sampler's own call; lower with sampled draws).
  """
  if run.config.model.name != "hrm":
    raise ValueError(f"act_profile reads the HRM denoiser's ACT trace; the run's model is {run.config.model.name!r}.")
  tokens_NxL, fixed_NxL = examples.inputs(run.tokenizer.special.mask)
  config = run.sampler_config(**{**overrides, "record_trajectory": True, "block_length": 0})
  sample = make_sampler(run.graphdef, run.other, config, run.objective)
  special = run.tokenizer.special

  @jax.jit
  def inspect(params, x_BxL, t_B, content):
    logits_BxLxV, trace, content = nnx.merge(run.graphdef, params, run.other).inspect(x_BxL, t_B, content)
    choice_BxL = jnp.argmax(primitives.sampling_logits(logits_BxLxV, special), axis=-1)
    return choice_BxL, trace["l_iterations_CxBxL"], content

  steps, mask_id = config.steps, special.mask
  iterations, trajectories, reveal_steps, confidences, choices = [], [], [], [], []
  for start in range(0, len(tokens_NxL), batch_size):
    tokens, fixed = jnp.asarray(tokens_NxL[start:start + batch_size]), jnp.asarray(fixed_NxL[start:start + batch_size])
    out = sample(run.params, jax.random.fold_in(jax.random.key(seed), start), tokens, fixed)
    trajectory_SxBxL = np.asarray(out.trajectory_SxBxL)
    initial = content = nnx.merge(run.graphdef, run.params, run.other).init_sample_carry(tokens.shape[0])
    per_step, choice_per_step = [], []
    for s in range(steps):
      t_B = jnp.full((tokens.shape[0],), 1.0 - s / steps, jnp.float32)
      choice_BxL, iterations_CxBxL, content = inspect(run.params, jnp.asarray(trajectory_SxBxL[s]), t_B, content)
      content = initial if config.reset_carry else content  # the sampler's own carry (SamplerConfig.reset_carry)
      per_step.append(np.asarray(iterations_CxBxL, np.float32).mean(0))
      choice_per_step.append(np.asarray(choice_BxL))
    iterations.append(np.stack(per_step, axis=1))
    choices.append(np.stack(choice_per_step, axis=1))
    trajectories.append(np.swapaxes(trajectory_SxBxL, 0, 1))
    reveal_steps.append(np.where(np.asarray(fixed), -1, np.asarray(out.reveal_step_BxL)))
    confidences.append(np.asarray(out.confidence_BxL))
  iterations_NxSxL = np.concatenate(iterations)
  trajectory_NxSxL = np.concatenate(trajectories)
  masked_NxSxL = trajectory_NxSxL[:, :-1] == mask_id
  revealed_NxSxL = masked_NxSxL & (trajectory_NxSxL[:, 1:] != mask_id)
  # Greedy draws: the replayed argmax is the token the sampler revealed (1.0 when the replay is the sampler's call).
  replay_agreement = float((np.concatenate(choices) == trajectory_NxSxL[:, 1:])[revealed_NxSxL].mean())
  per_puzzle = []
  for k in range(len(iterations_NxSxL)):
    live = masked_NxSxL[k].any(-1)  # the steps this puzzle took
    its, masked, revealed = iterations_NxSxL[k][live], masked_NxSxL[k][live], revealed_NxSxL[k][live]
    per_puzzle.append({"at_masked": float(its[masked].mean()),
                       "at_revealed": float(its[revealed].mean()) if revealed.any() else float("nan"),
                       "at_clues": float(its[:, fixed_NxL[k]].mean()),
                       "per_blank": float(its[masked].sum() / max((~fixed_NxL[k]).sum(), 1))})
  by = collections.defaultdict(list)
  for figures, item in zip(per_puzzle, examples.puzzles):
    by[item["difficulty"]].append((figures, item))
  by_difficulty = {}
  for name, rows in sorted(by.items()):
    by_difficulty[name] = {"puzzles": len(rows), **{key: float(np.mean([f[key] for f, _ in rows]))
                                                   for key in ("at_masked", "at_revealed", "at_clues", "per_blank")},
                           "clues": float(np.mean([item.get("clues", 0) for _, item in rows])),
                           "effort": float(np.mean([item.get("effort", 0) for _, item in rows]))}
  return {"iterations_NxSxL": iterations_NxSxL, "masked_NxSxL": masked_NxSxL,
          "revealed_step_NxL": np.concatenate(reveal_steps), "confidence_NxL": np.concatenate(confidences),
          "trajectory_NxSxL": trajectory_NxSxL, "per_puzzle": per_puzzle, "by_difficulty": by_difficulty,
          "l_steps": int(run.config.model.l_steps), "replay_agreement": replay_agreement}
