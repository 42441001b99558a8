"""Sudoku as infilling (issue #29; data/puzzles.py): the given cells fixed, the blanks masked and scored.

  python -m launch.puzzles --task=sudoku --difficulty=medium --count=3000 --seed=0 --output=runs/puzzles/medium_train
  python -m launch.puzzles --task=sudoku --difficulty=medium --count=300 --seed=1 --output=runs/puzzles/medium_test
  python -m launch.train --config=configs/sudoku.py --workdir=runs/sudoku          # arms: :eco, :hrm, :hrm_noact, :ar
  python -m launch.solve --workdir=runs/sudoku --puzzles=runs/puzzles/medium_test --policies=confidence,margin,ancestral
  # the 30-minute recipe that solves 96.0% of medium_test (BENCHMARKS.md, "The loss weighted towards heavily masked
  # levels"): the baseline arm, 3,700 steps, lr 2e-3, an EMA, training times weighted towards heavy masking
  python -m launch.train --config=configs/sudoku.py --workdir=runs/sudoku96 --config.train.num_steps=3700 \
      --config.optimizer.learning_rate=2e-3 --config.train.ema_decay=0.999 --config.diffusion.time_exponent=2
  python -m launch.puzzles --task=sudoku --difficulty=easy --count=100 --seed=3 --output=runs/puzzles/easy_test100
  python -m launch.puzzles --task=sudoku --difficulty=hard --count=100 --seed=2 --output=runs/puzzles/hard_test100
  python -m launch.puzzles --combine=runs/puzzles/easy_test100,runs/puzzles/medium_test,runs/puzzles/hard_test100 \
      --count=100 --output=runs/puzzles/mixed_test    # per difficulty: launch.solve, notebooks/sudoku_solving.ipynb

`--config.data.path` / `--config.data.valid_path` name the sets (defaults above). Arms at matched parameters
(~0.8M at the CPU size): "diffusion" (baseline transformer), "eco" (EcoHybrid), "hrm" (HRM with ACT), "hrm_noact",
"hrm_h1" (one H-cycle), "hrm_bptt" (TRM's gradient: the last H-cycle backpropagated in full, model.gradient), "ar"
(the causal control: the "prompted" layout, puzzle then solution, blanks filled row-major given every clue). Append "_gpu" for the GPU size (e.g. :hrm_gpu: ~6M, 1,000 augmentations per puzzle).
Hardware: CPU size ~25 minutes on 2 cores for the baseline's 3,000 steps (~12k tokens/s; HRM ~8.3k, EcoHybrid
~14.5k; the AR arm's 162-token windows ~2x). Grid positions (row, column, box embeddings) for every arm. Results, or what is still to
measure, are in BENCHMARKS.md ("Sudoku").
"""
from configs import default

ARMS = ("diffusion", "eco", "hrm", "hrm_noact", "hrm_h1", "hrm_bptt", "ar")


def get_config(arm: str = "diffusion"):
  gpu = arm.endswith("_gpu")
  base = arm[:-len("_gpu")] if gpu else arm
  if base not in ARMS:
    raise ValueError(f"configs/sudoku.py takes {ARMS} (each with a '_gpu' suffix for the GPU size), got {arm!r}.")
  c = default.base_config()
  c.data.layout = "puzzle"
  # The CPU size trains on medium puzzles; the GPU size on HRM's setting, 1,000 hard puzzles (seed 0) x 1,000
  # augmentations, validated on 1,000 others (seed 1): launch/gpu_suite.py's PUZZLE_SETS, its `puzzles` call.
  c.data.path = "runs/puzzles/hard_train" if gpu else "runs/puzzles/medium_train"
  c.data.valid_path = "runs/puzzles/hard_test" if gpu else "runs/puzzles/medium_test"
  c.data.tokenizer = "char"
  c.data.puzzle_layout = "prompted" if base == "ar" else "grid"
  c.data.seq_len = 162 if base == "ar" else 81
  c.data.augment = 1000 if gpu else 8
  # Matched parameters (within 2%, tests/test_configs.py): the baseline's SwiGLU is 2.75 x the width; EcoHybrid's
  # gives back its conv, slots and learned positions, HRM's its memory cells and ACT head (shakespeare_char_small's
  # recipe).
  width, layers, heads = (384, 6, 6) if gpu else (128, 4, 4)
  mlp = int(width * 2.75) // 8 * 8
  if base.startswith("hrm"):
    c.model = default.model_config("hrm")
    c.model.update(dict(l_layers=layers // 2, h_layers=layers // 2, h_cycles=1 if base == "hrm_h1" else 2,
                        l_steps=2, memory_cells=16, memory_content=4, memory_top_k=4, act=base != "hrm_noact",
                        gradient="last_cycle" if base == "hrm_bptt" else "one_step"))
    mlp = mlp * (264 if gpu else 224) // 352 // 8 * 8
    # The sampler restarts the memory cells from their learned contents at every reverse step, as training does:
    # carried from step to step they took one seed of :hrm from 89 / 31 / 2% to 4 / 0 / 0% exact (easy / medium /
    # hard; BENCHMARKS.md "The HRM sampler's memory").
    c.sample.reset_carry = True
  elif base == "eco":
    c.model = default.model_config("eco_hybrid")
    c.model.num_layers = layers
    mlp = (mlp - 4 * width // 3) // 8 * 8
  else:
    c.model.num_layers = layers
  c.model.width, c.model.num_heads, c.model.mlp_dim = width, heads, mlp
  # Row, column and box embeddings on top of RoPE (DenoiserConfig.grid_side): at 500 steps of the CPU baseline they
  # took the training loss to 0.25 nats/token, where RoPE alone was at 1.6 (and 0.43 after 3,000; BENCHMARKS.md).
  c.model.grid_side, c.model.grid_box = 9, 3
  c.model.causal = base == "ar"
  c.diffusion.objective = "autoregressive" if base == "ar" else "elbo"
  c.diffusion.schedule = "loglinear"
  c.train.num_steps = 20000 if gpu else 3000
  c.train.batch_size = 256 if gpu else 64
  c.train.checkpoint_every = 1000
  c.train.log_every = 100
  c.train.sample_every = 0
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 200
  c.eval.every = 1000
  c.eval.num_windows = 256
  c.eval.batch_size = 64
  c.sample.num_samples = 0
  c.sample.method = "confidence"
  c.sample.greedy = True
  c.sample.reveal_noise = 0.0  # the confidence ranking as such (launch.solve's policies set it too)
  return c
