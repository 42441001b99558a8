"""text8 as MD4 trains and scores it (Shi et al. 2024, "Simplified and generalized masked diffusion", Table 2).

Paper figures (test bits per character, chunks of 256, every character scored): AR 1.23; MD4 <= 1.37; SEDD absorb
<= 1.39; D3PM absorb <= 1.45. BENCHMARKS.md, "Against the papers", sets ours beside them.

Data:  text8 (Mahoney's first 10^8 characters of English Wikipedia, 27 symbols: a-z and space; one line), the user's
       copy at data.path (relative paths under $DLM_DATA_DIR; e.g. `unzip text8.zip` from mattmahoney.net/dc). Split
       90M / 5M / 5M: train / validation (data.valid_fraction) / test (data.test_fraction), MD4's. Character tokenizer:
       the 27 symbols + our 5 reserved ids (never in the data: they only widen the softmax, which learns them away).
       Training windows are random crops of 256 (data.layout "wrapped"; one document, so no EOS); evaluation scores
       all 256 characters of each chunk, the first with no context (eval.score_all_tokens), as MD4 does.
Model: MD4's size: 12 layers, 12 heads, width 768, GLU MLP (SwiGLU, width 2048: the parameters of a 4x GELU MLP),
       RoPE positions, no dropout, ~85M parameters. MD4 conditions on t with adaLN-zero; this config does not
       condition on t at all (model.time_conditioning False): with the mask id removed from the output (SUBS) the
       masked denoiser's optimum does not depend on t (MDLM, Sahoo et al. 2024, §3.2: time conditioning made no
       difference), and dlm_jax's transformer has no adaLN path. Say so beside any figure it gives.
Recipe: MD4's: the linear masking schedule (alpha_t = 1 - t), continuous-time NELBO, AdamW lr 3e-4 with 2,000 warmup
       steps then cosine to 0, b2 0.999, no weight decay, no clipping, EMA 0.9999, batch 512, 10^6 steps (131B
       tokens). MD4's sweep also tried lr 5e-4, dropout 0.05, weight decay 0.03.
Compute: 6 N T = 6 x 85M x 1.31e11 = 6.7e19 FLOPs: about 2 days on one H100 at 40% MFU. Nobody runs that on CPU.

Arms:  "diffusion" (default), "ar" (the same backbone, causal; its test figure scores characters 2..256 of each chunk
       given the first: a causal model has no distribution for the first character without a BOS), and "cpu" /
       "cpu_ar": the same code and protocol at CPU scale on ../shared/data/en/text8_head.txt (the first 3.01M
       characters of text8, rebuilt; NOT the standard split: 90/5/5 of the head), 4 layers x 128, 1,000 steps of
       32 x 256. BENCHMARKS.md reports them as BPC against steps.

Commands:
  python -m launch.train --config=configs/text8.py --config.data.path=text8 --workdir=runs/text8
  python -m launch.evaluate --workdir=runs/text8 --split=test --num_windows=20000 --time_samples=4   # test BPC
  python -m launch.train --config=configs/text8.py:cpu --workdir=runs/text8_cpu                     # CPU, ~20 min
"""
from configs import default

ARMS = ("diffusion", "ar", "cpu", "cpu_ar")


def get_config(arm: str = "diffusion"):
  if arm not in ARMS:
    raise ValueError(f"configs/text8.py takes one of {ARMS}, got {arm!r}.")
  c = default.base_config()
  c.data.path = "text8"
  c.data.tokenizer = "char"
  c.data.valid_fraction = 0.05
  c.data.test_fraction = 0.05
  c.data.seq_len = 256
  c.data.layout = "wrapped"

  c.diffusion.objective = "elbo"
  c.diffusion.schedule = "linear"

  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 12, 12, 768, 2048
  c.model.dropout = c.model.attention_dropout = c.model.embedding_dropout = 0.0
  c.model.time_conditioning = False

  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 2000
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 0.0

  c.train.batch_size = 512
  c.train.num_steps = 1_000_000
  c.train.ema_decay = 0.9999
  c.train.log_every = 500
  c.train.checkpoint_every = 5000
  c.train.sample_every = 0

  c.eval.every = 5000
  c.eval.num_windows = 1024
  c.eval.windows = "spread"
  c.eval.batch_size = 64
  c.eval.score_all_tokens = True

  if arm.startswith("cpu"):
    c.data.path = "en/text8_head.txt"
    c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 4, 4, 128, 352
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.train.batch_size = 32
    c.train.num_steps = 1000
    c.train.ema_decay = 0.999
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.eval.every = 250
    c.eval.num_windows = 256
    c.eval.batch_size = 32
  if arm.endswith("ar"):
    default.causal_arm(c)
  return c
