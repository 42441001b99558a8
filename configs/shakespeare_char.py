"""Tiny Shakespeare, character level, nanoGPT's model size: the trainer's correctness anchor on real data.

Data:  ../shared/data/en/tinyshakespeare.txt (via $DLM_DATA_DIR), first 90% train / last 10% validation — the exact
       split of nanoGPT's data/shakespeare_char/prepare.py. Char vocabulary: 65 characters + 5 reserved ids.
Model: 6 layers, 6 heads, width 384, context 256, dropout 0.2 (nanoGPT's config/train_shakespeare_char.py) at
       nanoGPT's places: the input embedding, the attention probabilities and each residual branch's output; with
       RoPE and a SwiGLU MLP of width 1024 (same parameter count as nanoGPT's 4x GELU MLP). Weight decay 0.1 on
       every matrix, embeddings included, none on norms and biases (nanoGPT's grouping).
Arms:  "diffusion" (default): bidirectional, continuous-time NELBO (log-linear schedule, MDLM's), trained on the
       clipped times t ~ U[0.3, 0.8] like every masked arm here (configs/default.clip_training_times, issue #31).
       "ar": causal control arm, next-token loss (the same network, causal).
       "eco": the EcoHybrid denoiser (conv + 16 memory slots) at the baseline's parameter count: its blocks hold two
              slot attentions (8 d^2) where the baseline has one self-attention (4 d^2), so its SwiGLU is narrower:
              8 d^2 + 3 d f' = 4 d^2 + 3 d f  ->  f' = f - 4d/3 = 512  (10.78M vs 10.65M parameters).
       "hrm":  the HRM denoiser: 3 L-layers + 3 H-layers (the baseline's 6 blocks), 2 H-cycles x up to 4 L-steps,
              16 memory cells; SwiGLU 768 pays for the memory, ACT and priority heads (10.68M parameters).

Commands:
  python -m launch.train --config=configs/shakespeare_char.py:ar --workdir=runs/shakespeare_ar
  python -m launch.train --config=configs/shakespeare_char.py --workdir=runs/shakespeare_diffusion
  python -m launch.train --config=configs/shakespeare_char.py:eco --workdir=runs/shakespeare_eco
  python -m launch.train --config=configs/shakespeare_char.py:hrm --workdir=runs/shakespeare_hrm
Hardware and expected result: one GPU (the lent machine is an H200). nanoGPT (unmodified) reaches its best validation
loss 1.4688 nats/char at iteration 1750 in about 1.5 minutes on an H100; the AR arm must reach <= 1.45 nats/char
within 60 s of training (from its first step; `bash launch/gpu_suite.sh` measures it, stage anchor_ar). The measured
figures (or that they are still to be measured) are in BENCHMARKS.md.
"""
from configs import default


def get_config(arm: str = "diffusion"):
  if arm not in ("diffusion", "ar", "eco", "hrm", "duo", "sedd", "duo_dcd", "embedding"):
    raise ValueError(f"configs/shakespeare_char.py takes 'diffusion', 'ar', 'eco', 'hrm', 'duo', 'sedd', 'duo_dcd' "
                     f"or 'embedding', got {arm!r}.")
  c = default.base_config()
  c.data.path = "en/tinyshakespeare.txt"
  # The log-linear schedule (MDLM) beat cosine at CPU scale in two seeds and over 2,000 steps: BENCHMARKS.md,
  # "Diffusion training recipe". (The AR arm ignores it.)
  c.diffusion.schedule = "loglinear"
  c.data.valid_fraction = 0.1
  c.data.seq_len = 256

  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 6, 6, 384, 1024
  c.model.dropout = c.model.attention_dropout = c.model.embedding_dropout = 0.2

  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1

  c.train.batch_size = 64
  c.train.num_steps = 2500
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 500

  c.eval.every = 250
  c.eval.num_windows = 1000  # all 435 non-overlapping validation windows
  c.eval.batch_size = 64
  c.eval.time_samples = 4

  if arm == "eco":
    c.model = default.model_config("eco_hybrid")
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 6, 6, 384, 512
    c.model.dropout = c.model.embedding_dropout = 0.2  # no self-attention: no attention-probability dropout
  if arm == "hrm":
    c.model = default.model_config("hrm")
    c.model.num_heads, c.model.width, c.model.mlp_dim, c.model.l_layers, c.model.h_layers = 6, 384, 768, 3, 3
    c.model.dropout = c.model.attention_dropout = c.model.embedding_dropout = 0.2
  if arm == "ar":
    c.model.causal = True
    c.diffusion.objective = "autoregressive"
    c.eval.time_samples = 1  # exact NLL: no Monte Carlo over t
  if arm in ("duo", "sedd", "duo_dcd", "embedding"):
    default.beyond_masking_arm(c, arm)
  return default.clip_training_times(c)  # the masked arms train on t ~ U[0.3, 0.8] (issue #31)
