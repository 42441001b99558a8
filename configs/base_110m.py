"""The benchmark model: a 12-layer, 768-wide bidirectional transformer, SentencePiece 32k vocabulary, T = 1024.

Benchmark (GPU; prints the row, --record appends it to BENCHMARKS.md):
  python -m launch.bench --config=configs/base_110m.py
  bash launch/gpu_suite.sh      # on the lent GPU: this row and the headline figures in one call (docs/gpu.md)
Training on real text first needs the tokenizer:
  python -m launch.tokenizer --input=en,hi/dakshina_wiki.txt,hinglish --vocab_size=32000 --output=runs/spm32k/spm.model
  python -m launch.train --config=configs/base_110m.py --workdir=runs/base_110m
Hardware: one GPU (the lent machine is an H200; bf16 activations, cuDNN attention, fp32 parameters and loss).
Target: >= 55% MFU training at B=32, T=1024 (PyTorch peer, on an H100: 29.7%); sampler step <= 1.15x a forward pass;
:eco >= the baseline's tokens/s, :hrm >= 0.6x. Measured figures (or that they are still to be measured) are in
BENCHMARKS.md.

Arms at matched parameter count: "diffusion" (baseline, 109.5M), "eco" (EcoHybrid, SwiGLU 1024: 110.4M with its
learned positions), "hrm" (6 L + 6 H layers, SwiGLU 1792: 109.6M), e.g. `--config=configs/base_110m.py:eco`.
"""
from configs import default


def get_config(arm: str = "diffusion"):
  if arm not in ("diffusion", "eco", "hrm"):
    raise ValueError(f"configs/base_110m.py takes 'diffusion', 'eco' or 'hrm', got {arm!r}.")
  c = default.base_config()
  c.data.path = "en,hi/dakshina_wiki.txt,hinglish"
  c.data.valid_path = "hi/valid_flores_ntrex.txt"
  c.data.tokenizer = "sentencepiece"
  c.data.tokenizer_path = "runs/spm32k/spm.model"
  c.data.seq_len = 1024

  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 12, 12, 768, 2048
  c.model.dropout = 0.0
  c.model.remat = "none"
  # Score the loss 4096 token rows at a time from the tied head: never the [32768, 32000] logits (XLA's temporary
  # memory of head + loss + gradient: 9.95 GiB -> 1.22 GiB in bfloat16, `python -m launch.bench
  # --config=configs/base_110m.py --head_memory=4096 --config.model.dtype=bfloat16`, CPU compile).
  c.diffusion.loss_chunk = 4096

  c.optimizer.learning_rate = 6e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.b2 = 0.95

  c.train.batch_size = 32
  c.train.num_steps = 50_000
  c.train.log_every = 100
  c.train.checkpoint_every = 2000
  c.train.sample_every = 2000
  c.train.ema_decay = 0.9999

  c.eval.every = 2000
  c.eval.num_windows = 256
  c.eval.batch_size = 32

  c.bench = default.bench_config(vocab_size=32000)
  if arm == "eco":
    c.model = default.model_config("eco_hybrid")
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 12, 12, 768, 1024
  elif arm == "hrm":
    c.model = default.model_config("hrm")
    c.model.num_heads, c.model.width, c.model.mlp_dim, c.model.l_layers, c.model.h_layers = 12, 768, 1792, 6, 6
  return c
