"""EcoHybrid denoiser (seed 001 §6, §9.2, §9.3): local depthwise convolution + a few global memory slots.

Every block mixes information in O(T k d + T M d), never O(T^2 d):

    h   <- h + DWConv_k(RMSNorm(h))                                    local mixing, kernel k, per channel
    mem <- mem + Attn(q = RMSNorm(mem), kv = RMSNorm(h))               memory -> tokens: slots read the token stream
    h   <- h + Attn(q = RMSNorm(h), kv = RMSNorm(mem) [top-k routed])  tokens -> memory: tokens read the slots
    h   <- h + SwiGLU(RMSNorm(h))                                      token FFN

The memory state `mem` [B, M, d] starts from M learned slots and is carried from block to block (the scan carry).
Choices the design document leaves open, made here and exposed in the config:

* Order (`memory_order`): "write_read" (default) updates the slots from the tokens before the tokens read them, so
  block 0 already mixes globally; "read_write" is the document's literal order (tokens read, then slots update), in
  which block 0's tokens read only the learned initial slots.
* Routing (§9.2, `route_top_k` > 0): a router W_r h gives each token logits over the M slots; the token attends only
  to its top-k slots (the other attention logits are masked). Load balancing (Switch Transformer, Fedus et al. 2022):
  L_balance = M * sum_j f_j P_j, with f_j the fraction of (token, choice) assignments to slot j and P_j the mean
  router probability of slot j; it is 1 under uniform use and grows with collapse. Added to the loss with weight
  `balance_weight` and logged as `aux/eco_balance`.
* Multi-timescale banks (§9.3, `slow_slots` > 0): the last `slow_slots` of the M slots are "slow": they are written only
  in every `slow_every`-th block (blocks slow_every-1, 2 slow_every-1, ...), fast slots in every block. The document's
  "lower learning rate" for slow slots is not implemented: the slower update schedule is the whole mechanism here.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class EcoHybridConfig(layers.DenoiserConfig):
  num_layers: int = 6
  memory_slots: int = 16
  conv_kernel: int = 7
  memory_order: str = "write_read"  # or "read_write" (seed 001 §6.1's literal order)
  route_top_k: int = 0  # 0: every token reads every slot; k > 0: top-k routing (§9.2)
  balance_weight: float = 0.01  # weight of the load-balancing loss when routing
  slow_slots: int = 0  # how many of the memory_slots are slow (§9.3)
  slow_every: int = 2  # slow slots are written every slow_every blocks
  position: str = "learned"  # "learned" absolute positions, or "none" (the convolution alone gives order)
  # `attention` and `rope_base` are unused: slot attention is short (M keys) and takes the XLA path; no RoPE.

  def __post_init__(self):
    super().__post_init__()
    if self.causal:
      raise ValueError("model.causal=True is not supported by eco_hybrid (memory slots see the whole sequence).")
    if self.memory_order not in ("write_read", "read_write"):
      raise ValueError(f"model.memory_order must be 'write_read' or 'read_write', got {self.memory_order!r}.")
    if not 0 <= self.route_top_k <= self.memory_slots:
      raise ValueError(f"model.route_top_k={self.route_top_k} must be in [0, memory_slots={self.memory_slots}].")
    if not 0 <= self.slow_slots < self.memory_slots or self.slow_every < 1:
      raise ValueError(f"model.slow_slots={self.slow_slots} must be in [0, memory_slots) and slow_every >= 1.")
    if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
      raise ValueError(f"model.conv_kernel must be odd and >= 1 (centred window), got {self.conv_kernel}.")
    if self.position not in ("learned", "none"):
      raise ValueError(f"model.position must be 'learned' or 'none' for eco_hybrid, got {self.position!r}.")


def route_top_k(router_logits_BxTxM, k: int):
  """Top-k slot routing (seed 001 §9.2) with the Switch Transformer load-balancing loss.

  Returns (chosen_BxTxM: exactly k True per token, gate_BxTx1: router probability mass of the chosen slots,
  balance: M * sum_j f_j P_j with f_j = share of the B T k assignments that went to slot j and P_j = mean router
  probability of slot j; 1 for perfectly uniform use, up to M / k when every token picks the same slots)."""
  num_slots = router_logits_BxTxM.shape[-1]
  _, index_BxTxK = jax.lax.top_k(router_logits_BxTxM, k)
  chosen_BxTxM = jnp.sum(jax.nn.one_hot(index_BxTxK, num_slots, dtype=jnp.float32), axis=-2) > 0
  probs_BxTxM = jax.nn.softmax(router_logits_BxTxM.astype(jnp.float32), axis=-1)
  fraction_M = jnp.mean(chosen_BxTxM.astype(jnp.float32), axis=(0, 1)) / k
  balance = num_slots * jnp.sum(fraction_M * jnp.mean(probs_BxTxM, axis=(0, 1)))
  gate_BxTx1 = jnp.sum(jnp.where(chosen_BxTxM, probs_BxTxM, 0.0), axis=-1, keepdims=True)
  return chosen_BxTxM, gate_BxTx1, balance


class DepthwiseConv(nnx.Module):
  """Centred depthwise temporal convolution, y[t, c] = b[c] + sum_j w[j, c] x[t + j - k//2, c] (zero padding).

  Written as k shifted multiply-adds, which XLA fuses into one pass over x (GPU and CPU alike); XLA:CPU's grouped
  `conv_general_dilated` with feature_group_count = d was ~5x slower here. `tests/test_eco_hybrid.py` checks it
  against `lax.conv_general_dilated`."""

  def __init__(self, width: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
    self.kernel_size, self.dtype = kernel_size, dtype
    self.kernel = nnx.Param(nnx.initializers.normal(1.0 / kernel_size)(rngs.params(), (kernel_size, width)))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32))

  def __call__(self, x_BxTxD):
    half = self.kernel_size // 2
    length = x_BxTxD.shape[1]
    padded = jnp.pad(x_BxTxD, ((0, 0), (half, half), (0, 0)))
    kernel = self.kernel[...].astype(self.dtype)
    out = self.bias[...].astype(self.dtype)[None, None]
    for j in range(self.kernel_size):
      out = out + padded[:, j:j + length] * kernel[j][None, None]
    return out


class CrossAttention(nnx.Module):
  """Multi-head attention of queries x [B, Q, d] over a context c [B, K, d] (K = M slots or T tokens)."""

  def __init__(self, width: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"model.width={width} must be divisible by model.num_heads={num_heads}.")
    self.num_heads, self.head_dim = num_heads, width // num_heads
    init = layers.DEFAULT_INIT
    self.q = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
    self.kv = nnx.Linear(width, 2 * width, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=init, rngs=rngs)

  def __call__(self, x_BxQxD, c_BxKxD, bias_BxHxQxK=None):
    b, q_len, _ = x_BxQxD.shape
    k_len = c_BxKxD.shape[1]
    q = self.q(x_BxQxD).reshape(b, q_len, self.num_heads, self.head_dim)
    k, v = jnp.split(self.kv(c_BxKxD).reshape(b, k_len, 2 * self.num_heads, self.head_dim), 2, axis=2)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias_BxHxQxK, implementation="xla")
    return self.out(out.reshape(b, q_len, -1))


class EcoBlock(nnx.Module):

  def __init__(self, cfg: EcoHybridConfig, *, rngs: nnx.Rngs):
    dtype = layers.compute_dtype(cfg.dtype)
    self.cfg = cfg
    self.conv_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.conv = DepthwiseConv(cfg.width, cfg.conv_kernel, dtype=dtype, rngs=rngs)
    self.write_mem_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.write_tok_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.write = CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.read_tok_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.read_mem_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.read = CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.router = (nnx.Linear(cfg.width, cfg.memory_slots, use_bias=False, dtype=jnp.float32,
                              kernel_init=layers.DEFAULT_INIT, rngs=rngs) if cfg.route_top_k else None)
    self.mlp_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def write_memory(self, h_BxTxD, mem_BxMxD, layer_index):
    update = self.write(self.write_mem_norm(mem_BxMxD), self.write_tok_norm(h_BxTxD))
    cfg = self.cfg
    if cfg.slow_slots:
      is_slow_Mx1 = (jnp.arange(cfg.memory_slots) >= cfg.memory_slots - cfg.slow_slots)[:, None]
      slow_turn = (layer_index % cfg.slow_every) == cfg.slow_every - 1
      update = jnp.where(is_slow_Mx1[None] & ~slow_turn, 0.0, update)
    return mem_BxMxD + update

  def read_memory(self, h_BxTxD, mem_BxMxD):
    """Returns (update to h, load-balancing loss of this block or 0)."""
    bias, balance = None, jnp.zeros((), jnp.float32)
    x = self.read_tok_norm(h_BxTxD)
    if self.router is not None:
      chosen_BxTxM, gate_BxTx1, balance = route_top_k(self.router(x.astype(jnp.float32)), self.cfg.route_top_k)
      bias = jnp.where(chosen_BxTxM, 0.0, -1e9)[:, None].astype(x.dtype)  # [B, 1, T, M]: same for every head
      # Scaling by the gate keeps the router trained by the main loss too (as Switch scales expert outputs).
      return self.read(x, self.read_mem_norm(mem_BxMxD), bias) * gate_BxTx1.astype(x.dtype), balance
    return self.read(x, self.read_mem_norm(mem_BxMxD)), balance

  def __call__(self, h_BxTxD, mem_BxMxD, layer_index, dropout_key, deterministic: bool):
    keys = jax.random.split(dropout_key, 3)
    drop = lambda x, key: self.dropout(x, deterministic=deterministic, rngs=key)
    h_BxTxD = h_BxTxD + drop(self.conv(self.conv_norm(h_BxTxD)), keys[0])
    if self.cfg.memory_order == "write_read":
      mem_BxMxD = self.write_memory(h_BxTxD, mem_BxMxD, layer_index)
    read, balance = self.read_memory(h_BxTxD, mem_BxMxD)
    h_BxTxD = h_BxTxD + drop(read, keys[1])
    if self.cfg.memory_order == "read_write":
      mem_BxMxD = self.write_memory(h_BxTxD, mem_BxMxD, layer_index)
    h_BxTxD = h_BxTxD + drop(self.mlp(self.mlp_norm(h_BxTxD)), keys[2])
    return h_BxTxD, mem_BxMxD, balance


class EcoHybrid(nnx.Module):
  """EcoHybrid denoiser. `model(tokens_BxL, t_B)` -> logits; `model.forward_with_aux(...)` -> (logits, aux losses)."""

  def __init__(self, cfg: EcoHybridConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = layers.compute_dtype(cfg.dtype)
    self.embedding = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.vocab_size, cfg.width), jnp.float32))
    if cfg.position == "learned":
      self.positions = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.max_len, cfg.width), jnp.float32))
    self.memory_init = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (cfg.memory_slots, cfg.width)))
    self.time_embedding = (layers.TimeEmbedding(cfg.width, dtype=self.dtype, rngs=rngs)
                           if cfg.time_conditioning else None)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return EcoBlock(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = nnx.RMSNorm(cfg.width, dtype=self.dtype, rngs=rngs)

  def forward_with_aux(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None):
    cfg = self.cfg
    batch, length = tokens_BxL.shape
    if length > cfg.max_len and cfg.position == "learned":
      raise ValueError(f"Sequence length {length} exceeds model.max_len={cfg.max_len}.")
    h = layers.embed_inputs(self.embedding[...], tokens_BxL, t_B, cfg, self.dtype, self.time_embedding)
    if cfg.position == "learned":
      h = h + self.positions[:length].astype(self.dtype)[None]
    mem = jnp.broadcast_to(self.memory_init[...].astype(self.dtype)[None], (batch, cfg.memory_slots, cfg.width))
    keys = jax.random.split(dropout_key if dropout_key is not None else jax.random.key(0), cfg.num_layers)
    block_def, block_state = nnx.split(self.blocks)

    def run_block(carry, layer):
      h, mem = carry
      state_l, key, index = layer
      h, mem, balance = nnx.merge(block_def, state_l)(h, mem, index, key, deterministic)
      return (h, mem), balance

    if cfg.remat != "none":
      run_block = jax.checkpoint(run_block, policy=layers.REMAT_POLICIES[cfg.remat])
    (h, _), balance_L = jax.lax.scan(run_block, (h, mem), (block_state, keys, jnp.arange(cfg.num_layers)))
    logits = self.final_norm(h) @ self.embedding[...].astype(self.dtype).T
    aux = {}
    if cfg.route_top_k:
      aux["eco_balance"] = cfg.balance_weight * jnp.mean(balance_L)
    return logits, aux

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None):
    return self.forward_with_aux(tokens_BxL, t_B, deterministic=deterministic, dropout_key=dropout_key)[0]
