"""FLOP accounting for MFU (GUIDE §4): model FLOPs per token = 6 N_matmul + 12 L T d (attention), head included.

N_matmul counts the weights that multiply activations: per transformer layer 4 d^2 (qkv + out) + 3 d d_ff (SwiGLU),
plus the V x d output head. The one-hot embedding product is not counted (it is a lookup in the usual convention).
MFU = FLOPs per token * tokens per second / peak, with peak the measured bf16 matmul ceiling of the device.
"""
from __future__ import annotations

import jax

# Measured dense bf16 matmul ceilings (GUIDE §4; device README), FLOP/s.
PEAK_FLOPS = {"H100": 800e12, "H200": 790e12}


def transformer_matmul_params(cfg) -> int:
  per_layer = 4 * cfg.width * cfg.width + 3 * cfg.width * cfg.mlp_dim
  return cfg.num_layers * per_layer + cfg.vocab_size * cfg.width


def eco_hybrid_flops_per_token(cfg, seq_len: int) -> float:
  """EcoHybrid, same convention: per layer and token, the token-side matmuls (write kv 2d^2, read q + out 2d^2,
  SwiGLU 3 d d_ff, router d M), the slot-side ones amortized over the sequence (write q + out and read kv: 4 d^2 M / T),
  the depthwise conv (k d), and the two slot attentions (4 M d multiply-adds: 24 L M d FLOPs)."""
  d, m = cfg.width, cfg.memory_slots
  per_layer = 4 * d * d + 3 * d * cfg.mlp_dim + (d * m if cfg.route_top_k else 0) + 4 * d * d * m / seq_len
  per_layer += cfg.conv_kernel * d
  return 6.0 * (cfg.num_layers * per_layer + cfg.vocab_size * d) + 24.0 * cfg.num_layers * m * d


def flops_per_token(cfg, seq_len: int) -> float | None:
  """Training FLOPs per token (forward + backward) of a denoiser config; None for the HRM denoiser, whose work per
  token depends on how many L-iterations ACT runs (its MFU is not reported)."""
  if hasattr(cfg, "memory_slots"):
    return eco_hybrid_flops_per_token(cfg, seq_len)
  if hasattr(cfg, "num_layers"):
    return 6.0 * transformer_matmul_params(cfg) + 12.0 * cfg.num_layers * seq_len * cfg.width
  return None


def device_peak_flops(override: float = 0.0):
  """The config override if > 0, else the measured ceiling of a known device, else None (MFU is then not shown)."""
  if override:
    return float(override)
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
