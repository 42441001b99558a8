"""CPU-scale comparison of the three denoisers on Tiny Shakespeare: ~0.8M parameters each, 500 steps.

The same data and split as configs/shakespeare_char.py, shrunk so that every arm trains in a few minutes on 2 CPU
cores: width 128, 4 heads, context 128, batch 16, 500 steps (1.02M training characters), no dropout.
The masked arms (diffusion, eco, hrm) train on the clipped times t ~ U[0.3, 0.8] (configs/default.clip_training_times,
issue #31; evaluation scores the full ELBO); rows of BENCHMARKS.md before 2026-12-07's issue #31 section trained on
t ~ U[0, 1] (--config.diffusion.time_low=0 reproduces them). Every arm warms the learning rate up over 150 updates
(issue #31's third table: 50 until then, --config.optimizer.warmup_steps=50 reproduces older rows; 150 gave the
diffusion arm 2.427 / 2.354 against 2.537 / 2.421 in two seeds, EcoHybrid 2.182 against 2.311, the AR arm 1.692
against 1.703).
Arms (matched parameter counts, checked by tests/test_configs.py):
  "diffusion": baseline transformer, 4 layers, SwiGLU 352.
  "ar":        the same transformer, causal, next-token loss.
  "eco":       EcoHybrid, 4 layers, 16 slots, kernel 7, SwiGLU 172 (352 - 4*128/3, less its learned positions).
  "hrm":       HRM denoiser, 2 L + 2 H layers, 2 H-cycles x up to 2 L-steps, 16 cells x 4, top-4, SwiGLU 224.
  "duo", "sedd", "duo_dcd", "embedding": the beyond-masking arms (configs/default.beyond_masking_arm).
Commands (all of them, and a summary table: `bash launch/compare_small.sh`):
  python -m launch.train --config=configs/shakespeare_char_small.py:eco --workdir=runs/small_eco
  python -m launch.train --config=configs/shakespeare_char_small.py:eco --workdir=runs/small_eco_m8 \
      --config.model.memory_slots=8
  python -m launch.train --config=configs/shakespeare_char_small.py:hrm --workdir=runs/small_hrm_no_h \
      --config.model.use_h_module=false
Results: BENCHMARKS.md, "Denoiser comparison (CPU scale)".
"""
from configs import default


def get_config(arm: str = "diffusion"):
  if arm not in ("diffusion", "ar", "eco", "hrm", "duo", "sedd", "duo_dcd", "embedding"):
    raise ValueError(f"configs/shakespeare_char_small.py takes 'diffusion', 'ar', 'eco', 'hrm', 'duo', 'sedd', "
                     f"'duo_dcd' or 'embedding', got {arm!r}.")
  c = default.base_config()
  c.data.path = "en/tinyshakespeare.txt"
  # The log-linear schedule (MDLM) beat cosine at CPU scale in two seeds and over 2,000 steps: BENCHMARKS.md,
  # "Diffusion training recipe". (The AR arm ignores it.)
  c.diffusion.schedule = "loglinear"
  c.data.valid_fraction = 0.1
  c.data.seq_len = 128
  c.train.batch_size = 16
  c.train.num_steps = 500
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.sample_every = 0
  c.eval.every = 250
  c.eval.num_windows = 128
  c.eval.batch_size = 32
  c.eval.time_samples = 4
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 150  # a small batch's diffusion loss wants a long warm-up (issue #31)
  if arm == "eco":
    c.model = default.model_config("eco_hybrid")
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 4, 4, 128, 172
  elif arm == "hrm":
    c.model = default.model_config("hrm")
    c.model.update(dict(num_heads=4, width=128, mlp_dim=224, l_layers=2, h_layers=2, h_cycles=2, l_steps=2,
                        memory_cells=16, memory_content=4, memory_top_k=4))
  else:
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 4, 4, 128, 352
  if arm == "ar":
    c.model.causal = True
    c.diffusion.objective = "autoregressive"
    c.eval.time_samples = 1
  if arm in ("duo", "sedd", "duo_dcd", "embedding"):
    default.beyond_masking_arm(c, arm)
  return default.clip_training_times(c)  # the masked arms train on t ~ U[0.3, 0.8] (issue #31)
