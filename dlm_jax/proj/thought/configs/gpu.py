"""Thought tensors at the seed's size for one GPU: 12 layers x 768 (seed 003's model), thought (32, 32, 16), windows of
256 characters of Tiny Shakespeare.

Arms (as small.py, whose `make_arm` builds both):
  "thought":  the thought transformer; rows of 3 context windows + 1 target window (data.seq_len 1024); the thought
              holds 16 evolved thoughts of 32 x 32, encoder/decoder hidden width 512 (the seed's).
  "baseline": no thought, windows of 256, SwiGLU widened to the thought model's parameter count
              (tests/test_configs.py).
Commands (`bash dlm_jax/proj/thought/compare.sh runs/thought_gpu dlm_jax/proj/thought/configs/gpu.py`; needs more GPU
time than one device call, docs/gpu.md):
  python -m launch.train --config=dlm_jax/proj/thought/configs/gpu.py:thought --workdir=runs/thought_gpu
  python -m launch.train --config=dlm_jax/proj/thought/configs/gpu.py:baseline --workdir=runs/thought_gpu_base
  python -m dlm_jax.proj.thought.report --workdir=runs/thought_gpu --baseline_workdir=runs/thought_gpu_base
Expected: not measured yet (no GPU has run it; BENCHMARKS.md, "Thought tensors", lists it as owed).
"""
from configs import default
from dlm_jax.proj.thought.configs import small

HIDDEN, DIMS = 512, (32, 32, 16)
WINDOW, CONTEXT_WINDOWS = 256, 3


def get_config(arm: str = "thought"):
  c = default.base_config()
  c.data.path = "en/tinyshakespeare.txt"
  c.diffusion.schedule = "loglinear"
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 12, 12, 768, 2048
  c.optimizer.learning_rate = 6e-4
  c.optimizer.warmup_steps = 200
  c.train.batch_size = 32
  c.train.num_steps = 5000
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 1000
  c.eval.every = 500
  c.eval.num_windows = 100
  c.eval.batch_size = 32
  c.eval.time_samples = 4
  return small.make_arm(c, arm, DIMS, HIDDEN, CONTEXT_WINDOWS, WINDOW)
