"""Thought tensors at CPU scale (seed 003's "mini" model): 4 layers, width 256, thought (8, 8, 4), windows of 64.

Arms:
  "thought":  the transformer with the thought pathway (../model.py): each row is 3 context windows and a target
              window of 64 characters (data.seq_len 256); the target is denoised with the memory of the context
              windows' evolved thoughts (../process.py).
  "baseline": the same transformer without a thought, on windows of 64 characters, its SwiGLU widened so that it has
              the thought model's parameter count (tests/test_configs.py checks it); the same optimizer, steps and
              target windows per batch (it does not read the 192 context characters).
Data: the embedded default corpus (runs anywhere); --config.data.path=en/tinyshakespeare.txt for Tiny Shakespeare.
Commands (both arms and the report: `bash dlm_jax/proj/thought/compare.sh`):
  python -m launch.train --config=dlm_jax/proj/thought/configs/small.py:thought --workdir=runs/thought_small
  python -m launch.train --config=dlm_jax/proj/thought/configs/small.py:baseline --workdir=runs/thought_small_base
  python -m dlm_jax.proj.thought.report --workdir=runs/thought_small --baseline_workdir=runs/thought_small_base
Results: BENCHMARKS.md, "Thought tensors".
"""
from configs import default
from dlm_jax.proj.thought import model as thought
from dlm_jax.proj.thought import objective

HIDDEN, DIMS = 256, (8, 8, 4)
WINDOW, CONTEXT_WINDOWS = 64, 3


def get_config(arm: str = "thought"):
  c = default.base_config()
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 4, 4, 256, 683
  c.train.batch_size = 16
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.sample_every = 0
  c.eval.every = 200
  c.eval.num_windows = 64
  c.eval.batch_size = 16
  c.eval.time_samples = 4
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 40
  c.diffusion.schedule = "loglinear"
  return make_arm(c, arm, DIMS, HIDDEN, CONTEXT_WINDOWS, WINDOW)


def make_arm(c, arm: str, dims, hidden: int, context_windows: int, window: int):
  """Turns a transformer "elbo" config (its model sizes set) into arm "thought" (model "thought" with thought_dims,
  objective "thought" with config.thought, rows of (context_windows + 1) windows) or "baseline" (windows of `window`,
  its SwiGLU widened by the thought pathway's parameters), in place."""
  if arm not in ("thought", "baseline"):
    raise ValueError(f"The thought configs take arm 'thought' or 'baseline', got {arm!r}.")
  if arm == "baseline":
    width, layers = int(c.model.width), int(c.model.num_layers)
    c.data.seq_len = window
    c.model.mlp_dim = int(c.model.mlp_dim) + round(thought.pathway_parameters(dims, width, hidden, layers)
                                                    / (3 * width * layers))
    return c
  sizes = {k: v for k, v in c.model.items() if k != "name"}
  c.model = default.model_config("thought")  # the transformer with the thought pathway (model.py)
  c.model.update(sizes)
  c.model.thought_dims = tuple(dims)
  c.model.thought_hidden = hidden
  c.diffusion.objective = "thought"
  c.thought = objective.config_section()  # the thought's process and loss weights (process.ThoughtProcess)
  c.thought.context_windows = context_windows
  c.data.seq_len = (context_windows + 1) * window
  return c
