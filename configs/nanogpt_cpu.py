"""nanoGPT's own CPU recipe for Tiny Shakespeare, in dlm_jax: the yardstick of diffusion's sample efficiency (issue #31).

nanoGPT's README runs config/train_shakespeare_char.py on a CPU with `--block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` (its validation loss: ~1.88 nats/char).
This config is configs/shakespeare_char.py (nanoGPT's data split, lr 1e-3, warmup 100, cosine to 1e-4, beta2 0.99,
weight decay 0.1 on matrices) at those settings: 4 layers, 4 heads, width 128, context 64, batch 12, 2,000 updates,
no dropout, a SwiGLU MLP of width 344 (nanoGPT's 4x GELU MLP's parameters), RoPE positions; the diffusion arms train
on t ~ U[0, 1] (MDLM's ELBO; not the Shakespeare configs' clipped window, which is a flag here:
--config.diffusion.time_low=0.3 --config.diffusion.time_high=0.8).
Arms: "ar" (causal, next-token loss), "diffusion" (masked diffusion, MDLM's log-linear NELBO), "diffusion_learned"
(the diffusion arm with nanoGPT's learned absolute positions instead of RoPE), "diffusion_from_ar" (the diffusion arm
with Dream's shifted logits, to start from an AR run: --config.train.init_from_run=AR_RUN; issue #31's conversion),
"diffusion_best" (issue #31's best recipe, its target row: 1,750 updates of diffusion_from_ar on the clipped times
t ~ U[0.3, 0.8] with two masks per sequence, to follow 250 updates of the AR arm; needs
--config.train.init_from_run=AR_RUN), "diffusion_budget" (the best recipe found within 1.5x the AR arm's wall time:
1,500 updates of diffusion_best with two masks per sequence for the first 1,100 only, to follow 500 AR updates).
Evaluation every 500 updates on 512 validation windows (4 time samples per window for the NELBO).
  python -m launch.train --config=configs/nanogpt_cpu.py:ar --workdir=runs/ngpt_ar
  python -m launch.train --config=configs/nanogpt_cpu.py:diffusion --workdir=runs/ngpt_diffusion
  python -m launch.train --config=configs/nanogpt_cpu.py:ar --workdir=runs/ngpt_ar1000 --config.train.num_steps=1000
  python -m launch.train --config=configs/nanogpt_cpu.py:diffusion_from_ar --workdir=runs/ngpt_converted \
      --config.train.init_from_run=runs/ngpt_ar1000 --config.train.num_steps=1000
  python -m launch.train --config=configs/nanogpt_cpu.py:ar --workdir=runs/ngpt_ar250 --config.train.num_steps=250
  python -m launch.train --config=configs/nanogpt_cpu.py:diffusion_best --workdir=runs/ngpt_best \
      --config.train.init_from_run=runs/ngpt_ar250
  python -m launch.train --config=configs/nanogpt_cpu.py:ar --workdir=runs/ngpt_ar500 --config.train.num_steps=500
  python -m launch.train --config=configs/nanogpt_cpu.py:diffusion_budget --workdir=runs/ngpt_budget \
      --config.train.init_from_run=runs/ngpt_ar500
Hardware: CPU, 2 cores, 2-3 minutes per arm. Results: BENCHMARKS.md, "Diffusion sample efficiency".
"""
from configs import default, shakespeare_char

ARMS = ("ar", "diffusion", "diffusion_learned", "diffusion_from_ar", "diffusion_best", "diffusion_budget")


def get_config(arm: str = "diffusion"):
  if arm not in ARMS:
    raise ValueError(f"configs/nanogpt_cpu.py takes one of {ARMS}, got {arm!r}.")
  c = shakespeare_char.get_config("ar" if arm == "ar" else "diffusion")
  if arm != "ar":  # the yardstick is MDLM's ELBO on t ~ U[0, 1]; the clipped window is a flag of the table's rows
    c.diffusion.time_low, c.diffusion.time_high = 0.0, 1.0
  c.data.seq_len = 64
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 4, 4, 128, 344
  c.model.dropout = c.model.attention_dropout = c.model.embedding_dropout = 0.0
  if arm == "diffusion_learned":
    c.model.position = "learned"
  if arm in ("diffusion_from_ar", "diffusion_best", "diffusion_budget"):
    c.model.shift_logits = True
  c.train.batch_size = 12
  c.train.num_steps = 2000
  if arm in ("diffusion_best", "diffusion_budget"):  # 250 AR updates + 1,750 of these: 2,000 in all
    c.diffusion.time_low, c.diffusion.time_high = default.CLIPPED_TIME_WINDOW
    c.diffusion.masks_per_sequence = 2
    c.train.num_steps = 1750
  if arm == "diffusion_budget":  # 500 AR updates + 1,500 of these; the second mask pays most early (lr high)
    c.train.num_steps = 1500
    c.diffusion.masks_per_sequence_steps = 1100
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 0
  c.eval.every = 500
  c.eval.num_windows = 512
  c.eval.batch_size = 64
  return c
