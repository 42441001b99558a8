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
* Multi-timescale memory banks (`slow_slots` > 0; seed 001 §9.3): the last `slow_slots` of the M slots are "slow":
  they are written only in every `slow_every`-th block (blocks slow_every-1, 2 slow_every-1, ...), fast slots in every
  block, and their learned initial state is its own parameter, `slow_memory_init` [S, D] (the fast slots' is
  `memory_init` [M - S, D]), which the optimizer trains at `optimizer.slow_slots_lr_scale` times the learning rate
  (training/optimizer.py: an optax.multi_transform partition by parameter path). Slow in depth and slow in training
  time: the slots meant to hold the sequence's global state drift less from block to block and from batch to batch.
* Retrieval-conditioned memory (`retrieval_slots` = R > 0; seed 001 §9.6): R more slots initialized, at every forward
  pass, from the k nearest training windows of a datastore (models/retrieval.py): the neighbours' pooled states pass
  through a learned projection into R extra rows of the memory, which the blocks then read and write like any slot.
  With R = 0 the model and its parameters are exactly EcoHybrid's.
* Slot attention arithmetic (`memory_attention`), one function of the same parameters in every form:
  "projected" projects tokens and slots and attends (the textbook order); "absorbed" (default) folds the projections
  into the M slots (`layers.CrossAttention`: the read's W_q/W_o into the slots' keys and values, the write's W_k into
  the slot queries, W_v/W_o applied after pooling), so the L tokens are never projected: 4 H M D instead of 4 D^2 +
  4 M D multiply-adds per token and layer (192 vs 768 channels for base_110m:eco) and no [B, L, D] intermediates;
  "pallas" is "absorbed" with the read and its residual add in one Pallas kernel (`kernels.memory_read`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import kernels, layers, retrieval
from dlm_jax.models.partitioning import EMBED, SLOTS, logical
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
  # Retrieval-conditioned memory (models/retrieval.py): > 0 appends this many slots, one per nearest datastore window
  # of the visible input, to the memory_slots; 0: plain EcoHybrid (no retrieval parameters, no datastore).
  retrieval_slots: int = 0
  retrieval_windows: int = 1024  # datastore size N (windows of data.seq_len tokens spread over the training stream)
  retrieval_key_dim: int = 128  # E, the width of the fixed bag-of-tokens key projection
  # How the slot attentions are computed (the same function and parameters in each; module docstring):
  # "absorbed" (W_q/W_o folded into the slots for the read, W_k into the slot queries and W_v/W_o after pooling for the
  # write: the tokens are never projected), "projected" (the textbook order: project, attend, project) or "pallas"
  # (absorbed, with the read and its residual as one Pallas kernel, models/kernels.py; needs route_top_k = 0 and
  # M a power of two >= 16, and falls back to "absorbed" for sequence lengths without a power-of-two factor >= 16).
  memory_attention: str = "absorbed"
  # `attention`, `attention_dropout` and `rope_base` are unused: no self-attention (the slot attentions are short and
  # take the XLA path), no RoPE.

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
    if self.memory_attention not in ("absorbed", "projected", "pallas"):
      raise ConfigError("model.memory_attention must be 'absorbed', 'projected' or 'pallas', got "
                        f"{self.memory_attention!r}.")
    if self.retrieval_slots < 0 or (self.retrieval_slots and (self.retrieval_windows < self.retrieval_slots
                                                              or self.retrieval_key_dim < 1)):
      raise ConfigError(f"model.retrieval_slots={self.retrieval_slots} must be >= 0 and at most "
                        f"model.retrieval_windows={self.retrieval_windows}, with model.retrieval_key_dim >= 1.")
    if self.retrieval_slots and (self.route_top_k or self.memory_attention == "pallas"):
      raise ConfigError("model.retrieval_slots > 0 needs model.route_top_k=0 and model.memory_attention 'absorbed' or "
                        "'projected' (the router and the Pallas kernel are sized for the memory_slots alone).")
    if self.memory_attention == "pallas" and (self.route_top_k or not kernels.memory_read_fits(16, self.width,
                                                                                                 self.memory_slots)):
      raise ConfigError("model.memory_attention='pallas' needs model.route_top_k=0, model.memory_slots a power of two "
                        ">= 16 and model.width divisible by 16; use 'absorbed' (the same function in XLA).")

  def flops_per_token(self, seq_len: int) -> float:
    """The transformer's convention (6 x the multiply-adds of the matmuls per token, counting the attentions' score
    and value products), for the computation the config runs. Per layer and token: SwiGLU 3 D mlp_dim, router D M,
    the depthwise conv k D, and the slot attentions.
      projected: the tokens' write k/v (2 D^2) and read q + output (2 D^2) projections, the slots' own projections
        amortized over the sequence (4 D^2 M / L), and the two L x M attentions (4 M D, counted as 24 n_layers M D).
      absorbed/pallas: the four H M D products of the two attentions (write logits and pooling, read logits and
        values) and the slot-side projections and foldings amortized (8 D^2 M / L)."""
    d, m = self.width, self.memory_slots + self.retrieval_slots
    per_layer = 3 * d * self.mlp_dim + (d * m if self.route_top_k else 0) + self.conv_kernel * d
    if self.memory_attention == "projected":
      per_layer += 4 * d * d + 4 * d * d * m / seq_len
      return 6.0 * (self.num_layers * per_layer + self.vocab_size * d + self.retrieval_per_token(seq_len)) + (
          24.0 * self.num_layers * m * d)
    per_layer += 4 * self.num_heads * m * d + 8 * d * d * m / seq_len
    return 6.0 * (self.num_layers * per_layer + self.vocab_size * d + self.retrieval_per_token(seq_len))

  def retrieval_per_token(self, seq_len: int) -> float:
    """Multiply-adds per token of the retrieval: the [N, K] similarity and the k slots' projections, amortized over
    the sequence (the gathers and the pooling are not matmuls)."""
    if not self.retrieval_slots:
      return 0.0
    return (self.retrieval_windows * self.retrieval_key_dim + self.retrieval_slots * self.width**2) / seq_len


class DepthwiseConv(nnx.Module):
  """Centred depthwise temporal convolution, y[t, c] = b[c] + sum_j w[j, c] x[t + j - k//2, c] (zero padding).

  Written as k shifted multiply-adds, which XLA fuses into one pass over x (GPU and CPU alike); XLA:CPU's grouped
  `conv_general_dilated` with feature_group_count = d was ~5x slower here. `tests/test_eco_hybrid.py` checks it
  against `lax.conv_general_dilated`."""

  def __init__(self, width: int, kernel_size: int, *, dtype, rngs: nnx.Rngs):
    self.kernel_size, self.dtype = kernel_size, dtype
    self.kernel = nnx.Param(nnx.initializers.normal(1.0 / kernel_size)(rngs.params(), (kernel_size, width)),
                           **logical(None, EMBED))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32), **logical(EMBED))

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
    self.conv_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.conv = DepthwiseConv(cfg.width, cfg.conv_kernel, dtype=dtype, rngs=rngs)
    self.write_mem_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.write_tok_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.write = layers.CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.read_tok_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.read_mem_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.read = layers.CrossAttention(cfg.width, cfg.num_heads, dtype=dtype, rngs=rngs)
    self.router = (nnx.Linear(cfg.width, cfg.memory_slots, use_bias=False, dtype=jnp.float32,
                              kernel_init=layers.DEFAULT_INIT, rngs=rngs, kernel_metadata=logical(EMBED, SLOTS))
                   if cfg.route_top_k else None)
    self.mlp_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def write_memory(self, h_BxLxD, mem_BxMxD, layer_index):
    queries_BxMxD, tokens_BxLxD = self.write_mem_norm(mem_BxMxD), self.write_tok_norm(h_BxLxD)
    if self.cfg.memory_attention == "projected":
      update_BxMxD = self.write(queries_BxMxD, tokens_BxLxD)
    else:
      update_BxMxD = self.write.attend_short_queries(queries_BxMxD, tokens_BxLxD)
    cfg = self.cfg
    if cfg.slow_slots:
      slot_M = jnp.arange(mem_BxMxD.shape[1])  # (retrieved slots, after the memory_slots, are fast)
      is_slow_Mx1 = ((slot_M >= cfg.memory_slots - cfg.slow_slots) & (slot_M < cfg.memory_slots))[:, None]
      slow_turn = (layer_index % cfg.slow_every) == cfg.slow_every - 1
      update_BxMxD = jnp.where(is_slow_Mx1[None] & ~slow_turn, 0.0, update_BxMxD)
    return mem_BxMxD + update_BxMxD

  def read_memory(self, h_BxLxD, mem_BxMxD, drop=None):
    """Returns (h + drop(the read from the slots), load-balancing loss of this block or 0). The Pallas kernel runs
    without dropout (drop None) only: it adds the read to h in the same pass."""
    cfg = self.cfg
    balance = jnp.zeros((), jnp.float32)
    slots_BxMxD = self.read_mem_norm(mem_BxMxD)
    if (cfg.memory_attention == "pallas" and drop is None
        and kernels.memory_read_fits(h_BxLxD.shape[1], cfg.width, cfg.memory_slots)):
      keys_BxHxMxD, values_BxHxMxD = self.read.absorbed_context(slots_BxMxD)
      return kernels.memory_read(h_BxLxD, self.read_tok_norm.scale[...], keys_BxHxMxD, values_BxHxMxD,
                                 self.read_tok_norm.epsilon), balance
    attend = self.read if cfg.memory_attention == "projected" else self.read.attend_short_context
    x_BxLxD = self.read_tok_norm(h_BxLxD)
    if self.router is not None:
      chosen_BxLxM, gate_BxLx1, balance = layers.route_top_k(self.router(x_BxLxD.astype(jnp.float32)),
                                                               cfg.route_top_k)
      bias = layers.attention_bias(chosen_BxLxM, x_BxLxD.dtype)
      # Scaling by the gate keeps the router trained by the main loss too (as Switch scales expert outputs).
      read_BxLxD = attend(x_BxLxD, slots_BxMxD, bias) * gate_BxLx1.astype(x_BxLxD.dtype)
    else:
      read_BxLxD = attend(x_BxLxD, slots_BxMxD)
    return h_BxLxD + (read_BxLxD if drop is None else drop(read_BxLxD)), balance

  def mix(self, h_BxLxD, mem_BxMxD, layer_index, dropout_keys=(None, None), deterministic: bool = True):
    """The mixing path: conv, then the memory write and read in `memory_order`. Returns (h, mem, balance loss)."""
    drop = lambda x, key: self.dropout(x, deterministic=deterministic, rngs=key)
    h_BxLxD = h_BxLxD + drop(self.conv(self.conv_norm(h_BxLxD)), dropout_keys[0])
    if self.cfg.memory_order == "write_read":
      mem_BxMxD = self.write_memory(h_BxLxD, mem_BxMxD, layer_index)
    active = not deterministic and self.cfg.dropout > 0
    h_BxLxD, balance = self.read_memory(h_BxLxD, mem_BxMxD, (lambda x: drop(x, dropout_keys[1])) if active else None)
    if self.cfg.memory_order == "read_write":
      mem_BxMxD = self.write_memory(h_BxLxD, mem_BxMxD, layer_index)
    return h_BxLxD, mem_BxMxD, balance

  def cached_step(self, h_BxQxD, positions_BxQ, cache):
    """The block on the rows at `positions_BxQ` only (a KV-cached sampler step; deterministic): the convolution reads
    its window from the cached layer inputs of all L positions (the rows' own entries renewed), the read attends to
    the cached slots this layer read in the last full pass (the "natural cache" of seed 001's memory slots: they are
    not rewritten from the block), then the FFN. cache = (layer input h [B, L, D], slots read [B, M, D])."""
    h_all_BxLxD, slots_BxMxD = cache
    batch, length, _ = h_all_BxLxD.shape
    rows_Bx1 = jnp.arange(batch)[:, None]
    h_all_BxLxD = h_all_BxLxD.at[rows_Bx1, positions_BxQ].set(h_BxQxD.astype(h_all_BxLxD.dtype))
    half = self.conv.kernel_size // 2
    window_BxQxK = positions_BxQ[..., None] + (jnp.arange(self.conv.kernel_size) - half)[None, None]
    inside_BxQxKx1 = ((window_BxQxK >= 0) & (window_BxQxK < length))[..., None]
    window_BxQxKxD = self.conv_norm(h_all_BxLxD[rows_Bx1[..., None], jnp.clip(window_BxQxK, 0, length - 1)])
    window_BxQxKxD = jnp.where(inside_BxQxKx1, window_BxQxKxD, 0.0)  # the convolution's zero padding
    kernel_KxD = self.conv.kernel[...].astype(self.conv.dtype)
    conv_BxQxD = self.conv.bias[...].astype(self.conv.dtype)[None, None] + jnp.einsum(
        "bqkd,kd->bqd", window_BxQxKxD, kernel_KxD)
    h_BxQxD, _ = self.read_memory(h_BxQxD + conv_BxQxD, slots_BxMxD)
    return h_BxQxD + self.mlp(self.mlp_norm(h_BxQxD)), (h_all_BxLxD, slots_BxMxD)

  def __call__(self, h_BxLxD, mem_BxMxD, layer_index, dropout_key, deterministic: bool):
    keys = jax.random.split(dropout_key, 3)
    h_BxLxD, mem_BxMxD, balance = self.mix(h_BxLxD, mem_BxMxD, layer_index, keys[:2], deterministic)
    mlp_BxLxD = self.mlp(self.mlp_norm(h_BxLxD))
    return h_BxLxD + self.dropout(mlp_BxLxD, deterministic=deterministic, rngs=keys[2]), mem_BxMxD, balance


class EcoHybrid(Denoiser):
  """EcoHybrid denoiser: `model(tokens_BxL, t_B)` -> DenoiserOutput (with `eco_balance` when routing)."""

  def __init__(self, cfg: EcoHybridConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=cfg.position == "learned")
    fast_slots = cfg.memory_slots - cfg.slow_slots
    self.memory_init = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (fast_slots, cfg.width)),
                                  **logical(SLOTS, EMBED))
    if cfg.slow_slots:  # its own parameter, so that the optimizer can give it its own learning rate
      self.slow_memory_init = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (cfg.slow_slots, cfg.width)),
                                         **logical(SLOTS, EMBED))
    self.blocks = layers.stack_blocks(cfg.num_layers, lambda r: EcoBlock(cfg, rngs=r), rngs)
    # Created after everything else, so that with the same seed every shared parameter equals plain EcoHybrid's.
    self.retrieval = (retrieval.RetrievalSlots(cfg.width, cfg.vocab_size, cfg.retrieval_slots, cfg.retrieval_windows,
                                               cfg.max_len, cfg.retrieval_key_dim, cfg.special, dtype=self.dtype,
                                               rngs=rngs)
                      if cfg.retrieval_slots else None)
    self.init_head(rngs)

  def initial_memory(self, tokens_BxL):
    """The memory every sequence starts from, [B, M (+ R), D]: the fast slots' learned state, then the slow slots',
    then (retrieval) the R slots of the nearest datastore windows of the visible tokens (soft tokens [B, L, V]: of
    their argmax)."""
    batch = tokens_BxL.shape[0]
    slots_MxD = self.memory_init[...]
    if self.cfg.slow_slots:
      slots_MxD = jnp.concatenate([slots_MxD, self.slow_memory_init[...]], axis=0)
    memory_BxMxD = jnp.broadcast_to(slots_MxD.astype(self.dtype)[None], (batch, *slots_MxD.shape))
    if self.retrieval is None:
      return memory_BxMxD
    ids_BxL = jnp.argmax(tokens_BxL, axis=-1) if tokens_BxL.ndim == 3 else tokens_BxL
    retrieved_BxRxD = self.retrieval(ids_BxL, self.embedding[...])
    return jnp.concatenate([memory_BxMxD, retrieved_BxRxD.astype(self.dtype)], axis=1)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None,
               self_cond_BxLxV=None) -> DenoiserOutput:
    cfg = self.cfg
    h_BxLxD = self.embed(tokens_BxL, t_B, deterministic, dropout_key, self_cond_BxLxV)
    mem_BxMxD = self.initial_memory(tokens_BxL)

    def apply(block, carry, index, key):
      h, mem, balance = block(*carry, index, key, deterministic)
      return (h, mem), balance

    (h_BxLxD, _), balance_per_layer = layers.run_stack(self.blocks, (h_BxLxD, mem_BxMxD), apply, dropout_key,
                                                        cfg.remat, cfg.unroll_layers)
    aux = {"eco_balance": cfg.balance_weight * jnp.mean(balance_per_layer)} if cfg.route_top_k else {}
    return self.output(h_BxLxD, aux)

  # -- the KV caches of block decoding (dlm_jax/sampling/strategies.py, cache="dual" or "prefix") ----------------------
  supports_kv_cache = True

  def kv_prefill(self, tokens_BxL, t_B, positions_BxQ):
    """A full forward pass that keeps, per layer, its input states [layers, B, L, D] and the slots its read attended
    to [layers, B, M, D]: (logits of the rows at `positions_BxQ` [B, Q, V], cache). Deterministic."""
    cfg = self.cfg
    h_BxLxD = self.embed(tokens_BxL, t_B)
    mem_BxMxD = self.initial_memory(tokens_BxL)

    def apply(block, carry, index, key):
      h, mem = carry
      new_h, new_mem, _ = block(h, mem, index, key, True)
      # The read attends to the slots after this layer's write ("write_read") or before it ("read_write").
      return (new_h, new_mem), (h, new_mem if cfg.memory_order == "write_read" else mem)

    (h_BxLxD, _), cache = layers.run_stack(self.blocks, (h_BxLxD, mem_BxMxD), apply, None, "none",
                                           cfg.unroll_layers)
    return self.head(jnp.take_along_axis(h_BxLxD, positions_BxQ[..., None], axis=1)), cache

  def kv_step(self, tokens_BxL, t_B, positions_BxQ, cache):
    """The forward pass of the rows at `positions_BxQ` only (EcoBlock.cached_step in every layer): (logits [B, Q, V],
    the cache with those rows' layer inputs renewed)."""
    tokens_BxQ = jnp.take_along_axis(tokens_BxL, positions_BxQ, axis=1)
    h_BxQxD = self.embed(tokens_BxQ, t_B, positions_BxL=positions_BxQ)
    apply = lambda block, h, index, _: block.cached_step(h, positions_BxQ, jax.tree.map(lambda c: c[index], cache))
    h_BxQxD, cache = layers.run_stack(self.blocks, h_BxQxD, apply, None, "none", self.cfg.unroll_layers)
    return self.head(h_BxQxD), cache
