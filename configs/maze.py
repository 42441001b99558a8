"""Mazes as infilling (issue #29; data/puzzles.py, HRM's setting): an N x N grid of walls, open cells, S and G; the
walls, S and G are given, every open cell is a blank whose answer is "on the shortest path" ("o") or not (".").

  python -m launch.puzzles --task=maze --size=15 --count=4000 --seed=0 --output=runs/puzzles/maze15_train
  python -m launch.puzzles --task=maze --size=15 --count=300 --seed=1 --output=runs/puzzles/maze15_test
  python -m launch.train --config=configs/maze.py --workdir=runs/maze               # arms as configs/sudoku.py
  python -m launch.solve --workdir=runs/maze --puzzles=runs/puzzles/maze15_test --policies=confidence,margin

Arms: configs/sudoku.py's ("diffusion", "eco", "hrm", "hrm_noact", "hrm_h1", "hrm_bptt", "ar"), with "_gpu" for
HRM's 30 x 30 mazes (data from --size=31: odd sizes, walls on the even rows and columns) at the GPU size. CPU size:
15 x 15 = 225 cells, ~0.8M parameters. Results, or that they are still to be measured, are in BENCHMARKS.md ("Sudoku and mazes").
"""
from configs import sudoku


def get_config(arm: str = "diffusion"):
  c = sudoku.get_config(arm)
  gpu = arm.endswith("_gpu")
  size = 31 if gpu else 15
  c.data.path = f"runs/puzzles/maze{size}_train"
  c.data.valid_path = f"runs/puzzles/maze{size}_test"
  c.data.seq_len = size * size * (2 if c.data.puzzle_layout == "prompted" else 1)
  c.data.augment = 8  # the square's symmetries
  c.model.grid_side, c.model.grid_box = size, 0  # row and column embeddings, no boxes
  if c.model.name == "eco_hybrid":  # its learned positions grow with the grid: give them back in the SwiGLU
    layers = int(c.model.num_layers)
    c.model.mlp_dim -= -(-(size * size - 81) // (3 * layers) // 8) * 8
  return c
