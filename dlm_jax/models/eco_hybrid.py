"""EcoHybrid denoiser: local depthwise convolution + a few global memory slots instead of self-attention.

Every block mixes information in O(L k D + L M D), never O(L^2 D):

    h   <- h + DWConv_k(RMSNorm(h))                                    local mixing, kernel k, per channel
    mem <- mem + Attn(q = RMSNorm(mem), kv = RMSNorm(h))               memory -> tokens: slots read the token stream
    h   <- h + Attn(q = RMSNorm(h), kv = RMSNorm(mem) [top-k routed])  tokens -> memory: tokens read the slots
    h   <- h + SwiGLU(RMSNorm(h))                                      token FFN

The first three lines are the block's mixing path (`EcoBlock.mix`, the hot path that dlm_jax/benchmarks/hot_path.py
measures); the FFN follows. The memory state `mem` [B, M, D] starts from M learned slots and is carried from block to
block (the scan carry). Choices, each exposed in the config:

* Order (`memory_order`): "write_read" (default) updates the slots from the tokens before the tokens read them, so
  block 0 already mixes globally; "read_write" (tokens read, then slots update: the order of the original EcoHybrid
  sketch) has block 0's tokens read only the learned initial slots.
* Routing (`route_top_k` > 0): a router W_r h gives each token logits over the M slots; the token attends only to its
  top-k slots (the other attention logits are masked), and the read is scaled by the router mass on them. Load
  balancing (Switch Transformer, Fedus et al. 2022): L_balance = M * sum_j f_j P_j, with f_j the fraction of (token,
  choice) assignments to slot j and P_j the mean router probability of slot j; it is 1 under uniform use and grows
  with collapse. Added to the loss with weight `balance_weight` and logged as `aux/eco_balance`.
* Multi-timescale memory banks (`slow_slots` > 0): the last `slow_slots` of the M slots are "slow": they are written
  only in every `slow_every`-th block (blocks slow_every-1, 2 slow_every-1, ...), fast slots in every block. A separate
  (lower) learning rate for the slow slots is not implemented: the slower update schedule is the whole mechanism here.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import layers
from dlm_jax.models.base import Denoiser, DenoiserConfig, DenoiserOutput


@dataclasses.dataclass(frozen=True)
class EcoHybridConfig(DenoiserConfig):
  num_layers: int = 6
  memory_slots: int = 16  # M
  conv_kernel: int = 7  # odd: a centred window
  memory_order: str = "write_read"  # or "read_write" (tokens read the slots before the slots are written)
  route_top_k: int = 0  # 0: every token reads every slot; k > 0: each token reads only its top-k slots
  balance_weight: float = 0.01  # weight of the load-balancing loss when routing
  slow_slots: int = 0  # how many of the memory_slots are slow (multi-timescale memory)
  slow_every: int = 2  # slow slots are written every slow_every blocks
  position: str = "learned"  # "learned" absolute positions, or "none" (the convolution alone gives order)
  # `attention` and `rope_base` are unused: slot attention is short (M keys) and takes the XLA path; no RoPE.

  def __post_init__(self):
    super().__post_init__()
    if self.causal:
      raise ConfigError("model.causal=True is not supported by eco_hybrid (memory slots see the whole sequence).")
    if self.memory_order not in ("write_read", "read_write"):
      raise ConfigError(f"model.memory_order must be 'write_read' or 'read_write', got {self.memory_order!r}.")
    if not 0 <= self.route_top_k <= self.memory_slots:
      raise ConfigError(f"model.route_top_k={self.route_top_k} must be in [0, memory_slots={self.memory_slots}].")
    if not 0 <= self.slow_slots < self.memory_slots or self.slow_every < 1:
      raise ConfigError(f"model.slow_slots={self.slow_slots} must be in [0, memory_slots) and slow_every >= 1.")
    if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
      raise ConfigError(f"model.conv_kernel must be odd and >= 1 (centred window), got {self.conv_kernel}.")
    if self.position not in ("learned", "none"):
      raise ConfigError(f"model.position must be 'learned' or 'none' for eco_hybrid, got {self.position!r}.")

  def flops_per_token(self, seq_len: int) -> float:
    """The transformer's convention (6 N_matmul + the attentions' score and value products): per layer and token the
    token-side matmuls (write kv 2 D^2, read q + out 2 D^2, SwiGLU 3 D mlp_dim, router D M), the slot-side ones
    amortized over the sequence (write q + out and read kv: 4 D^2 M / L), the depthwise conv (k D), and the two slot
    attentions (4 M D multiply-adds per token and layer: 24 n_layers M D FLOPs)."""
    d, m = self.width, self.memory_slots
    per_layer = 4 * d * d + 3 * d * self.mlp_dim + (d * m if self.route_top_k else 0) + 4 * d * d * m / seq_len
    per_layer += self.conv_kernel * d
    return 6.0 * (self.num_layers * per_layer + self.vocab_size * d) + 24.0 * self.num_layers * m * d


class DepthwiseConv(nnx.Module):
  """Centred depthwise temporal convolution, y[t, c] = b[c] + sum_j w[j, c] x[t + j - k//2, c] (zero padding).

  Written as k shifted multiply-adds, which XLA fuses into one pass over x (GPU and CPU alike); XLA:CPU's grouped
  `conv_general_dilated` with feature_group_count = d was ~5x slower here. `tests/test_eco_hybrid.py` checks it
  against `lax.conv_general_dilated`."""

  def __init__(self, width: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
    self.kernel_size, self.dtype = kernel_size, dtype
    self.kernel = nnx.Param(nnx.initializers.normal(1.0 / kernel_size)(rngs.params(), (kernel_size, width)))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))

  def __call__(self, x_BxLxD):
    half = self.kernel_size // 2
    length = x_BxLxD.shape[1]
    padded = jnp.pad(x_BxLxD, ((0, 0), (half, half), (0, 0)))
    kernel = self.kernel[...].astype(self.dtype)
    out = self.bias[...].astype(self.dtype)[None, None]
    for j in range(self.kernel_size):
      out = out + padded[:, j:j + length] * kernel[j][None, None]
    return out


class EcoBlock(nnx.Module):

  def __init__(self, cfg: EcoHybridConfig, *, rngs: nnx.Rngs):
    dtype = layers.compute_dtype(cfg.dtype)
    self.cfg = cfg
    self.conv_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.conv = DepthwiseConv(cfg.width, cfg.conv_kernel, dtype=dtype, rngs=rngs)
    self.write_mem_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.write_tok_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.write = layers.CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.read_tok_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.read_mem_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.read = layers.CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.router = (nnx.Linear(cfg.width, cfg.memory_slots, use_bias=False, dtype=jnp.float32,
                              kernel_init=layers.DEFAULT_INIT, rngs=rngs) if cfg.route_top_k else None)
    self.mlp_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def write_memory(self, h_BxLxD, mem_BxMxD, layer_index):
    update_BxMxD = self.write(self.write_mem_norm(mem_BxMxD), self.write_tok_norm(h_BxLxD))
    cfg = self.cfg
    if cfg.slow_slots:
      is_slow_Mx1 = (jnp.arange(cfg.memory_slots) >= cfg.memory_slots - cfg.slow_slots)[:, None]
      slow_turn = (layer_index % cfg.slow_every) == cfg.slow_every - 1
      update_BxMxD = jnp.where(is_slow_Mx1[None] & ~slow_turn, 0.0, update_BxMxD)
    return mem_BxMxD + update_BxMxD

  def read_memory(self, h_BxLxD, mem_BxMxD):
    """Returns (update to h, load-balancing loss of this block or 0)."""
    balance = jnp.zeros((), jnp.float32)
    x_BxLxD = self.read_tok_norm(h_BxLxD)
    if self.router is not None:
      chosen_BxLxM, gate_BxLx1, balance = layers.route_top_k(self.router(x_BxLxD.astype(jnp.float32)),
                                                               self.cfg.route_top_k)
      bias = layers.attention_bias(chosen_BxLxM, x_BxLxD.dtype)
      # Scaling by the gate keeps the router trained by the main loss too (as Switch scales expert outputs).
      return self.read(x_BxLxD, self.read_mem_norm(mem_BxMxD), bias) * gate_BxLx1.astype(x_BxLxD.dtype), balance
    return self.read(x_BxLxD, self.read_mem_norm(mem_BxMxD)), balance

  def mix(self, h_BxLxD, mem_BxMxD, layer_index, dropout_keys=(None, None), deterministic: bool = True):
    """The mixing path: conv, then the memory write and read in `memory_order`. Returns (h, mem, balance loss)."""
    drop = lambda x, key: self.dropout(x, deterministic=deterministic, rngs=key)
    h_BxLxD = h_BxLxD + drop(self.conv(self.conv_norm(h_BxLxD)), dropout_keys[0])
    if self.cfg.memory_order == "write_read":
      mem_BxMxD = self.write_memory(h_BxLxD, mem_BxMxD, layer_index)
    read_BxLxD, balance = self.read_memory(h_BxLxD, mem_BxMxD)
    h_BxLxD = h_BxLxD + drop(read_BxLxD, dropout_keys[1])
    if self.cfg.memory_order == "read_write":
      mem_BxMxD = self.write_memory(h_BxLxD, mem_BxMxD, layer_index)
    return h_BxLxD, mem_BxMxD, balance

  def __call__(self, h_BxLxD, mem_BxMxD, layer_index, dropout_key, deterministic: bool):
    keys = jax.random.split(dropout_key, 3)
    h_BxLxD, mem_BxMxD, balance = self.mix(h_BxLxD, mem_BxMxD, layer_index, keys[:2], deterministic)
    mlp_BxLxD = self.mlp(self.mlp_norm(h_BxLxD))
    return h_BxLxD + self.dropout(mlp_BxLxD, deterministic=deterministic, rngs=keys[2]), mem_BxMxD, balance


class EcoHybrid(Denoiser):
  """EcoHybrid denoiser: `model(tokens_BxL, t_B)` -> DenoiserOutput (with `eco_balance` when routing)."""

  def __init__(self, cfg: EcoHybridConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=cfg.position == "learned")
    self.memory_init = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (cfg.memory_slots, cfg.width)))
    self.blocks = layers.stack_blocks(cfg.num_layers, lambda r: EcoBlock(cfg, rngs=r), rngs)
    self.init_head(rngs)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None) -> DenoiserOutput:
    cfg = self.cfg
    h_BxLxD = self.embed(tokens_BxL, t_B)
    mem_BxMxD = jnp.broadcast_to(self.memory_init[...].astype(self.dtype)[None],
                                 (tokens_BxL.shape[0], cfg.memory_slots, cfg.width))

    def apply(block, carry, index, key):
      h, mem, balance = block(*carry, index, key, deterministic)
      return (h, mem), balance

    (h_BxLxD, _), balance_per_layer = layers.run_stack(self.blocks, (h_BxLxD, mem_BxMxD), apply, dropout_key,
                                                        cfg.remat, cfg.unroll_layers)
    aux = {"eco_balance": cfg.balance_weight * jnp.mean(balance_per_layer)} if cfg.route_top_k else {}
    return self.output(h_BxLxD, aux)
