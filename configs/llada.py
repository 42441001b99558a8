"""A LLaDA-shaped denoiser (LLaMA layout, bidirectional, multi-head attention, untied head, LLaDA's 126,464-token
vocabulary) of random weights, for measuring the sampler at the scale of the models users import.

  python -m launch.bench --config=configs/llada.py                      # 1.0B non-embedding parameters, T = 1024
  python -m launch.bench --config=configs/llada.py --config.sample.block_length=32 --config.sample.cache=dual \
      --config.sample.threshold=0.9                                   # Fast-dLLM's decoding of the same model
  bash launch/gpu_suite.sh pretrained                                   # both, on the lent GPU, in one call

Arms: "1b" (default; width 2048, 20 layers, 16 heads of 128, SwiGLU 5632: 1.03B + 0.52B embedding and head
parameters; dlm_jax/benchmarks/hf_import.SHAPES["1b"]) and "tiny" (the same layout at width 64, for CPU dry runs).
Hardware: one GPU (bf16 activations, float32 parameters). The sampler row: B = 8 prompts of 256 tokens each
generating 256 new ones in 256 steps (plain confidence decoding, one token per step) against blocks of 32 with the
dual KV cache and threshold 0.9. Measured figures, or that they are still to be measured, are in BENCHMARKS.md.
A real checkpoint instead: python -m launch.sample --hf=PATH ... (docs/pretrained.md).
"""
from configs import default

SHAPES = {"1b": dict(width=2048, num_layers=20, num_heads=16, mlp_dim=5632),
          "tiny": dict(width=64, num_layers=2, num_heads=2, mlp_dim=128)}


def get_config(arm: str = "1b"):
  if arm not in SHAPES:
    raise ValueError(f"configs/llada.py takes {tuple(SHAPES)}, got {arm!r}.")
  c = default.base_config()
  c.data.seq_len = 512 if arm == "1b" else 64
  c.model = default.model_config("pretrained")
  for field, value in SHAPES[arm].items():
    c.model[field] = value
  c.model.family = "llama"
  c.model.head = "untied"
  c.model.rope_base = 500000.0
  c.model.norm_epsilon = 1e-5
  c.model.max_positions = 4096
  c.diffusion.loss_chunk = 4096 if arm == "1b" else 0
  c.train.batch_size = 8 if arm == "1b" else 4
  c.bench.vocab_size = 126464 if arm == "1b" else 512
  c.bench.sample_batch = 8 if arm == "1b" else 2
  c.bench.sample_new_tokens = 256 if arm == "1b" else 32
  c.bench.sample_steps = 256 if arm == "1b" else 32
  c.sample.method = "confidence"
  return c
