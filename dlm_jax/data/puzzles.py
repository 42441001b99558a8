"""Constraint puzzles as infilling (data.layout = "puzzle"): Sudoku and mazes, generated here, deterministic by seed.

**Sudoku.** A grid is 81 characters, row-major, "1".."9", with "." for a blank in a puzzle. `solve` is constraint
propagation (naked singles: a cell with one candidate; hidden singles: a digit with one place in a row, column or
box) and depth-first search on the cell with the fewest candidates; it counts solutions up to a limit and reports
its search effort (the guesses it made: 0 for a puzzle propagation alone solves). `generate_sudoku` draws a full grid
(the search over a random digit order from an empty grid), then removes clues in a random order while the puzzle keeps
exactly one solution, stopping at the difficulty's clue target; the difficulty is then read off the result:

| difficulty | clues | search effort (guesses of `solve`) |
|---|---|---|
| easy | 36-45 | any |
| medium | 28-35 | any |
| hard | <= 26 (down to what uniqueness allows, ~22-26) | >= 1: propagation alone does not solve it |

A candidate outside its difficulty's band is discarded and another drawn (counted in the set's report).

**Mazes** (HRM's setting): an N x N grid of walls "#" and open cells "." with a start "S" and a goal "G"; the solution
marks the shortest path's open cells "o" (walls, S and G unchanged). The maze is a depth-first-carved perfect maze on
the odd cells with `loops` extra walls knocked out (several routes: the shortest one must be found, and it is unique
by construction: a maze whose shortest path is not unique is discarded), S and G the pair of open cells farthest apart
in a random sample. Difficulty = the shortest path's length.

**As diffusion data.** Each example is a window whose given cells (the clues; a maze's walls, S and G) carry
special_tokens.FIXED_FLAG: never masked, never scored (the per-example form of diffusion.prompt_length), and whose
blank cells are the target. `data.puzzle_layout`: "grid" (the L cells: the diffusion arms) or "prompted" (the puzzle
with a Sudoku's blanks as the pad id, then the solution: 2L cells, the clues of the second half fixed too; the autoregressive
control arm fills the blanks row-major, given every clue). Augmentation (`data.augment`, Sudoku; HRM's and TRM's
recipe): a digit permutation, row permutations within each band, a band permutation, the same for columns and stacks,
and a transposition, drawn per (example, draw) from a seed: each maps solutions to solutions and clues to clues.
Mazes are augmented by the 8 symmetries of the square.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np

from dlm_jax import special_tokens
from dlm_jax.data import corpus
from dlm_jax.errors import ConfigError

TASKS = ("sudoku", "maze")
DIFFICULTIES = {"easy": (36, 45), "medium": (28, 35), "hard": (17, 26)}
DIGITS = "123456789"
BLANK = "."
WALL, OPEN, START, GOAL, PATH = "#", ".", "S", "G", "o"
LAYOUTS = ("grid", "prompted")
FILE = "puzzles.jsonl"

# -- Sudoku ------------------------------------------------------------------------------------------------------------
ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
BOXES = [[(br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3)] for br in range(3) for bc in range(3)]
UNITS = ROWS + COLS + BOXES
PEERS = [sorted({p for unit in UNITS if i in unit for p in unit} - {i}) for i in range(81)]
ALL = (1 << 9) - 1  # candidate bitmask: bit d-1 for digit d


def _digits(mask: int):
  return [d + 1 for d in range(9) if mask >> d & 1]


def _propagate(cands: list[int]) -> bool:
  """Naked and hidden singles until nothing changes; False on a contradiction."""
  changed = True
  while changed:
    changed = False
    for i in range(81):
      mask = cands[i]
      if mask == 0:
        return False
      if mask & (mask - 1) == 0:  # a single candidate: remove it from the peers
        for p in PEERS[i]:
          if cands[p] & mask:
            cands[p] &= ~mask
            if cands[p] == 0:
              return False
            changed = True
    for unit in UNITS:
      for d in range(9):
        bit = 1 << d
        places = [i for i in unit if cands[i] & bit]
        if not places:
          return False
        if len(places) == 1 and cands[places[0]] != bit:
          cands[places[0]] = bit
          changed = True
  return True


def _candidates(grid: str) -> list[int] | None:
  cands = [ALL] * 81
  for i, ch in enumerate(grid):
    if ch != BLANK:
      cands[i] = 1 << (int(ch) - 1)
  return cands if _propagate(cands) else None


def solve(grid: str, limit: int = 2, rng: np.random.Generator | None = None) -> tuple[list[str], int]:
  """(up to `limit` solutions of the puzzle `grid`, the guesses the search made). Depth-first search on the cell with
  the fewest candidates after propagation; `rng` shuffles the order digits are tried in (generation)."""
  if len(grid) != 81 or any(ch not in DIGITS + BLANK for ch in grid):
    raise ValueError(f"A Sudoku grid is 81 characters of 1-9 and '.', got {grid!r}.")
  solutions, guesses = [], 0
  start = _candidates(grid)
  if start is None:
    return [], 0
  stack = [start]
  while stack and len(solutions) < limit:
    cands = stack.pop()
    open_cells = [i for i in range(81) if cands[i] & (cands[i] - 1)]
    if not open_cells:
      solutions.append("".join(str(_digits(m)[0]) for m in cands))
      continue
    cell = min(open_cells, key=lambda i: bin(cands[i]).count("1"))
    digits = _digits(cands[cell])
    if rng is not None:
      rng.shuffle(digits)
    guesses += 1
    for d in reversed(digits):  # pushed in reverse: tried in order
      child = list(cands)
      child[cell] = 1 << (d - 1)
      if _propagate(child):
        stack.append(child)
  return solutions, guesses


def search_effort(grid: str) -> int:
  """The guesses `solve` needs to find the first solution (0: propagation alone solves it)."""
  return solve(grid, limit=1)[1]


def random_solution(rng: np.random.Generator) -> str:
  return solve(BLANK * 81, limit=1, rng=rng)[0][0]


def sudoku_difficulty(clues: int, effort: int) -> str | None:
  for name, (low, high) in DIFFICULTIES.items():
    if low <= clues <= high and (name != "hard" or effort >= 1):
      return name
  return None


def generate_sudoku(rng: np.random.Generator, difficulty: str) -> dict | None:
  """One puzzle of `difficulty` with exactly one solution, or None when this draw missed the band."""
  low, high = DIFFICULTIES[difficulty]
  target = int(rng.integers(low, high + 1))
  solution = random_solution(rng)
  puzzle = list(solution)
  clues = 81
  for i in rng.permutation(81):
    if clues <= target:
      break
    kept, puzzle[i] = puzzle[i], BLANK
    if len(solve("".join(puzzle), limit=2)[0]) != 1:
      puzzle[i] = kept
    else:
      clues -= 1
  puzzle = "".join(puzzle)
  effort = search_effort(puzzle)
  if sudoku_difficulty(clues, effort) != difficulty:
    return None
  return {"task": "sudoku", "puzzle": puzzle, "solution": solution, "clues": clues, "effort": effort,
          "difficulty": difficulty}


def violations(grid: str) -> dict:
  """Repeated digits in rows, columns and boxes of a filled grid (pairs of equal cells per unit, by kind), and blanks."""
  out = {"rows": 0, "columns": 0, "boxes": 0, "blanks": grid.count(BLANK)}
  for kind, units in (("rows", ROWS), ("columns", COLS), ("boxes", BOXES)):
    for unit in units:
      values = [grid[i] for i in unit if grid[i] in DIGITS]
      out[kind] += len(values) - len(set(values))
  return out


# -- Sudoku augmentation -----------------------------------------------------------------------------------------------
def sudoku_permutation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(cell map [81]: new cell i takes old cell map[i], digit map [10]: '0'->0 unused, d -> new digit) of a random
  validity-preserving transform: bands and the rows in each, stacks and the columns in each, a transposition, and a
  digit relabelling."""
  rows = np.concatenate([band * 3 + rng.permutation(3) for band in rng.permutation(3)])
  cols = np.concatenate([stack * 3 + rng.permutation(3) for stack in rng.permutation(3)])
  cells = (rows[:, None] * 9 + cols[None, :])
  if rng.random() < 0.5:
    cells = cells.T
  digits = np.concatenate([[0], rng.permutation(9) + 1])
  return cells.reshape(81), digits


def apply_sudoku(grid: str, cells: np.ndarray, digits: np.ndarray) -> str:
  return "".join(ch if ch == BLANK else str(digits[int(ch)]) for ch in (grid[i] for i in cells))


# -- mazes -------------------------------------------------------------------------------------------------------------
def _neighbours(i: int, n: int):
  r, c = divmod(i, n)
  for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
    if 0 <= r + dr < n and 0 <= c + dc < n:
      yield (r + dr) * n + c + dc


def shortest_paths(grid: str, n: int, source: int) -> tuple[np.ndarray, np.ndarray]:
  """BFS from `source` over non-wall cells: (distance [n*n], -1 unreachable; number of shortest paths, capped at 2)."""
  dist = np.full(n * n, -1, np.int64)
  count = np.zeros(n * n, np.int64)
  dist[source], count[source] = 0, 1
  frontier = [source]
  while frontier:
    nxt = []
    for i in frontier:
      for j in _neighbours(i, n):
        if grid[j] == WALL:
          continue
        if dist[j] < 0:
          dist[j] = dist[i] + 1
          nxt.append(j)
        if dist[j] == dist[i] + 1:
          count[j] = min(count[j] + count[i], 2)
    frontier = nxt
  return dist, count


def generate_maze(rng: np.random.Generator, n: int, loops: int | None = None) -> dict | None:
  """One N x N maze (odd N) with a unique shortest path from S to G, or None when this draw's is not unique."""
  if n % 2 == 0 or n < 5:
    raise ConfigError(f"--size={n}: a maze is an odd size >= 5 (walls on the even rows and columns).")
  cells = [WALL] * (n * n)
  start = (1, 1)
  cells[n + 1] = OPEN
  stack, seen = [start], {start}
  while stack:  # depth-first carving of a perfect maze on the odd cells
    r, c = stack[-1]
    options = [(r + dr, c + dc) for dr, dc in ((2, 0), (-2, 0), (0, 2), (0, -2))
               if 0 < r + dr < n - 1 and 0 < c + dc < n - 1 and (r + dr, c + dc) not in seen]
    if not options:
      stack.pop()
      continue
    nr, nc = options[int(rng.integers(len(options)))]
    cells[((r + nr) // 2) * n + (c + nc) // 2] = OPEN
    cells[nr * n + nc] = OPEN
    seen.add((nr, nc))
    stack.append((nr, nc))
  inner_walls = [i for i in range(n * n) if cells[i] == WALL and 0 < i // n < n - 1 and 0 < i % n < n - 1
                 and ((i // n) % 2) != ((i % n) % 2)]
  for i in rng.permutation(inner_walls)[:n // 2 if loops is None else loops]:
    cells[int(i)] = OPEN
  grid = "".join(cells)
  open_cells = [i for i in range(n * n) if grid[i] == OPEN]
  probe = int(open_cells[int(rng.integers(len(open_cells)))])
  dist, _ = shortest_paths(grid, n, probe)
  source = int(np.argmax(dist))
  dist, count = shortest_paths(grid, n, source)
  goal = int(np.argmax(dist))
  if count[goal] != 1:
    return None
  path = [goal]
  while path[-1] != source:
    path.append(next(j for j in _neighbours(path[-1], n) if dist[j] == dist[path[-1]] - 1))
  puzzle = list(grid)
  puzzle[source], puzzle[goal] = START, GOAL
  solution = list(puzzle)
  for i in path[1:-1]:
    solution[i] = PATH
  return {"task": "maze", "size": n, "puzzle": "".join(puzzle), "solution": "".join(solution),
          "path_length": int(dist[goal]), "clues": sum(ch != OPEN for ch in puzzle), "difficulty": f"{n}x{n}"}


def maze_symmetry(k: int, n: int) -> np.ndarray:
  """Cell map of the k-th of the square's 8 symmetries (k in 0..7)."""
  index = np.arange(n * n).reshape(n, n)
  index = np.rot90(index, k % 4)
  return (index.T if k >= 4 else index).reshape(n * n)


def check_maze(grid: str, puzzle: str, n: int) -> dict:
  """Whether a filled maze marks a shortest S-G path: {"valid": the marked cells are open in the puzzle and form a
  connected S-G path of the shortest length, "marked": cells marked "o", "shortest": its length}."""
  source, goal = puzzle.index(START), puzzle.index(GOAL)
  dist, _ = shortest_paths(puzzle, n, source)
  marked = {i for i, ch in enumerate(grid) if ch == PATH}
  legal = all(puzzle[i] == OPEN for i in marked) and all(grid[i] == puzzle[i] for i in range(n * n)
                                                          if puzzle[i] != OPEN)
  on_path = marked | {source, goal}
  reach, frontier = {source}, [source]
  while frontier:
    frontier = [j for i in frontier for j in _neighbours(i, n) if j in on_path and j not in reach]
    reach.update(frontier)
  valid = legal and goal in reach and len(marked) + 1 == int(dist[goal])
  return {"valid": bool(valid), "marked": len(marked), "shortest": int(dist[goal])}


# -- sets on disk ------------------------------------------------------------------------------------------------------
def generate(task: str, difficulty: str, count: int, seed: int, size: int = 9, progress=None) -> tuple[list, dict]:
  """(`count` puzzles, the set's report) drawn from seed `seed`: each puzzle from its own stream
  (seed, index, attempt), so a set's first k puzzles do not depend on its count."""
  if task not in TASKS:
    raise ConfigError(f"--task={task!r}: choose one of {TASKS}.")
  if task == "sudoku" and difficulty not in DIFFICULTIES:
    raise ConfigError(f"--difficulty={difficulty!r}: choose one of {tuple(DIFFICULTIES)}.")
  puzzles, discarded, started = [], 0, time.monotonic()
  for index in range(count):
    for attempt in range(10_000):
      rng = np.random.default_rng([seed, index, attempt])
      item = generate_sudoku(rng, difficulty) if task == "sudoku" else generate_maze(rng, size)
      if item is not None:
        break
      discarded += 1
    else:
      raise RuntimeError(f"No {difficulty} {task} after 10,000 draws: the band is too narrow.")
    puzzles.append({"id": index, **item})
    if progress is not None:
      progress(index + 1, count, time.monotonic() - started)
  return puzzles, report(puzzles, discarded)


def report(puzzles: list[dict], discarded: int = 0) -> dict:
  """The clue (and search-effort or path-length) distribution of a set: min, mean, max and a histogram."""
  def stats(values):
    values = np.asarray(values)
    unique, counts = np.unique(values, return_counts=True)
    return {"min": int(values.min()), "mean": float(values.mean()), "max": int(values.max()),
            "histogram": {int(u): int(c) for u, c in zip(unique, counts)}}
  out = {"count": len(puzzles), "discarded_draws": discarded, "clues": stats([p["clues"] for p in puzzles])}
  key = "effort" if puzzles and puzzles[0]["task"] == "sudoku" else "path_length"
  out[key] = stats([p[key] for p in puzzles])
  return out


def write_set(folder, puzzles: list[dict], meta: dict):
  """FOLDER/puzzles.jsonl (one puzzle per line) and FOLDER/meta.json (the command's settings and the report),
  each written atomically."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(p) + "\n" for p in puzzles)
  corpus.write_atomic(folder / FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  corpus.write_atomic(folder / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8"))


def read_set(path, flag: str = "data.path") -> list[dict]:
  """The puzzles of a folder written by `launch.puzzles` (or its puzzles.jsonl), every one checked for shape."""
  root = pathlib.Path(path).expanduser()
  file = root / FILE if root.is_dir() else root
  if not file.is_file():
    raise corpus.DataError(f"{flag}={path}: no {FILE} there. Generate a set first: python -m launch.puzzles "
                           "--task=sudoku --difficulty=medium --count=1000 --seed=0 --output=DIR")
  puzzles = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
  for p in puzzles:
    if len(p["puzzle"]) != len(p["solution"]):
      raise corpus.DataError(f"{file}: puzzle {p.get('id')} and its solution differ in length.")
  if len({len(p["puzzle"]) for p in puzzles}) > 1:
    raise corpus.DataError(f"{file}: the puzzles are of different sizes; one set holds one size.")
  return puzzles


# -- windows -----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PuzzleExamples:
  """Puzzles as training windows (module docstring), with the interface of pipeline.Documents (len, window).

  With `augment` > 1 the example space is puzzles x augment: example k is puzzle k % P under the transform drawn from
  (seed, k); the shuffled iterator over it is deterministic and resumable. `augment` = 1 serves the puzzles as they
  are (evaluation)."""
  puzzles: list
  tokenizer: object
  layout: str = "grid"
  augment: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ConfigError(f"data.puzzle_layout must be one of {LAYOUTS}, got {self.layout!r}.")
    self.task = self.puzzles[0]["task"]
    self.cells = len(self.puzzles[0]["puzzle"])

  @property
  def length(self) -> int:
    return self.cells * (2 if self.layout == "prompted" else 1)

  def __len__(self) -> int:
    return len(self.puzzles) * max(int(self.augment), 1)

  def example(self, index: int) -> tuple[str, str]:
    """(puzzle, solution) of example `index`, transformed."""
    item = self.puzzles[index % len(self.puzzles)]
    puzzle, solution = item["puzzle"], item["solution"]
    if self.augment <= 1:
      return puzzle, solution
    rng = np.random.default_rng([self.seed, index])
    if self.task == "sudoku":
      cells, digits = sudoku_permutation(rng)
      return apply_sudoku(puzzle, cells, digits), apply_sudoku(solution, cells, digits)
    n = int(round(len(puzzle) ** 0.5))
    cells = maze_symmetry(int(rng.integers(8)), n)
    return "".join(puzzle[i] for i in cells), "".join(solution[i] for i in cells)

  def window(self, index: int, seq_len: int, special) -> np.ndarray:
    """int32 [seq_len]: the solution's ids with the puzzle's given cells marked FIXED_FLAG ("grid"), or the puzzle
    (blanks included, all fixed) then the solution ("prompted")."""
    puzzle, solution = self.example(index)
    if seq_len != self.length:
      raise ConfigError(f"data.seq_len={seq_len}, but a {self.task} window in layout {self.layout!r} is "
                        f"{self.length} tokens: set data.seq_len={self.length}.")
    given = np.array([ch != BLANK if self.task == "sudoku" else ch != OPEN for ch in puzzle])
    ids = np.asarray(self.tokenizer.encode(solution), np.int32)
    if self.layout == "prompted":  # a Sudoku blank is the pad id there: no answer token stands for "unknown"
      blank = np.array([ch == BLANK for ch in puzzle]) if self.task == "sudoku" else np.zeros(self.cells, bool)
      prompt = np.asarray(self.tokenizer.encode(puzzle.replace(BLANK, DIGITS[0]) if self.task == "sudoku" else puzzle),
                          np.int32)
      ids = np.concatenate([np.where(blank, self.tokenizer.special.pad, prompt).astype(np.int32), ids])
      given = np.concatenate([np.ones(self.cells, bool), given])
    return special_tokens.mark_fixed(ids, given)

  def inputs(self, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_NxL with the blanks as `mask_id`, fixed_NxL) of every puzzle as it is: what a solver samples from."""
    rows = [special_tokens.split_fixed(self.window(i, self.length, None)) for i in range(len(self.puzzles))]
    ids = np.stack([r[0] for r in rows])
    fixed = np.stack([r[1] for r in rows])
    return np.where(fixed, ids, mask_id).astype(np.int32), fixed

  def solutions(self) -> np.ndarray:
    return np.stack([special_tokens.split_fixed(self.window(i, self.length, None))[0]
                     for i in range(len(self.puzzles))])


def alphabet(task: str) -> str:
  """The characters of a task's solutions, the character tokenizer's alphabet: a Sudoku's digits (its blank is never
  a token: masked in "grid" windows, the pad id in a "prompted" puzzle), a maze's five cell kinds."""
  return DIGITS if task == "sudoku" else WALL + OPEN + START + GOAL + PATH
