"""Building blocks shared by the denoisers: dtype/attention selection, RoPE, self- and cross-attention, top-k routing,
SwiGLU, time embedding, and the layer stack (`stack_blocks`, `run_stack`; `stacked_layout` for older checkpoints)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.diffusion.losses import NEG_INF
from dlm_jax.errors import ConfigError
from dlm_jax.models import partitioning
from dlm_jax.models.partitioning import EMBED, HEADS, LAYERS, MLP, NORM, logical

DEFAULT_INIT = nnx.initializers.normal(stddev=0.02)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def rms_norm(width: int, *, dtype, rngs: nnx.Rngs, epsilon: float = 1e-6) -> nnx.RMSNorm:
  """nnx.RMSNorm over the last axis with its scale [D] named ("norm",) (replicated by the default rules)."""
  return nnx.RMSNorm(width, epsilon=epsilon, dtype=dtype, rngs=rngs, scale_metadata=logical(NORM))


def compute_dtype(name: str):
  """'auto' -> bfloat16 on GPU/TPU, float32 on CPU (CPU bf16 matmuls are slow and gain nothing)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def attention_implementation(name: str, dtype) -> str | None:
  """'auto' -> cuDNN flash attention on GPU with 16-bit activations, else XLA. (On an H100 at B=8, L=4096, H=16, K=64
  in bf16, `implementation="cudnn"` took 1.17 ms against 8.9 ms for the XLA path.)"""
  if name == "auto":
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and dtype in (jnp.bfloat16, jnp.float16) else "xla"
  if name not in ("xla", "cudnn"):
    raise ConfigError(f"model.attention must be 'auto', 'xla' or 'cudnn', got {name!r}.")
  return name


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0):
  """cos/sin tables [L, K/2] of rotary position embeddings (Su et al. 2021), K = head_dim."""
  inv_freq_K2 = 1.0 / (base**(jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_LxK2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_K2[None, :]
  return jnp.cos(angles_LxK2), jnp.sin(angles_LxK2)


def apply_rope(x_BxLxHxK, cos_LxK2, sin_LxK2):
  """Rotates channel pairs (x1, x2) = (first half, second half) of each head by the position angle. The tables are
  [L, K/2] (positions 0..L-1) or [B, L, K/2] (each row's own positions, e.g. rope_tables' rows gathered)."""
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  if cos_LxK2.ndim == 2:
    cos, sin = cos_LxK2[None, :, None, :], sin_LxK2[None, :, None, :]
  else:
    cos, sin = cos_LxK2[:, :, None, :], sin_LxK2[:, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


class SelfAttention(nnx.Module):
  """Multi-head self-attention (bidirectional, or causal for the AR arm) through `jax.nn.dot_product_attention`.

      q = x W_q (+ b_q), k = x W_k (+ b_k), v = x W_v (+ b_v)        (one fused [D, (H + 2 H_kv) K] projection `qkv`)
      out = concat_h softmax(q_h k_g(h)^T / sqrt(K) + mask) v_g(h)  W_o (+ b_o),   g(h) = h // (H / H_kv)

  With `num_kv_heads` < `num_heads` this is grouped-query attention (Ainslie et al. 2023; LLaMA 2/3, Qwen2): each
  key/value head serves H / H_kv query heads (jax.nn.dot_product_attention broadcasts them). `head_dim` K defaults to
  D / H; `qkv_bias` / `out_bias` add the biases of BERT, GPT-2 (both) and Qwen2 (qkv only). The baseline denoisers use
  the defaults: H_kv = H, K = D / H, no biases (parameters `qkv` [D, 3D] and `out` [D, D]).

  With `dropout` > 0 and a `dropout_key` (training), the attention probabilities are dropped out (nanoGPT's
  attn_dropout): softmax(q k^T / sqrt(K)) -> mask / (1 - p). jax.nn.dot_product_attention takes no dropout, so that
  case is computed explicitly (XLA, never cuDNN's fused kernel); evaluation and sampling keep the fused path."""

  def __init__(self, width: int, num_heads: int, *, causal: bool, implementation: str | None, dtype, rngs: nnx.Rngs,
               dropout: float = 0.0, num_kv_heads: int | None = None, head_dim: int | None = None,
               qkv_bias: bool = False, out_bias: bool = False):
    if head_dim is None and width % num_heads:
      raise ConfigError(f"model.width={width} must be divisible by model.num_heads={num_heads}.")
    num_kv_heads = num_kv_heads or num_heads
    if num_heads % num_kv_heads:
      raise ConfigError(f"model.num_heads={num_heads} must be a multiple of model.num_kv_heads={num_kv_heads}.")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim or width // num_heads
    self.causal, self.implementation, self.dropout = causal, implementation, dropout
    self.qkv = nnx.Linear(width, (num_heads + 2 * num_kv_heads) * self.head_dim, use_bias=qkv_bias, dtype=dtype,
                          kernel_init=DEFAULT_INIT, rngs=rngs, kernel_metadata=logical(EMBED, HEADS),
                          bias_metadata=logical(HEADS))
    self.out = nnx.Linear(num_heads * self.head_dim, width, use_bias=out_bias, dtype=dtype, kernel_init=DEFAULT_INIT,
                          rngs=rngs, kernel_metadata=logical(HEADS, EMBED), bias_metadata=logical(EMBED))

  def __call__(self, x_BxLxD, rope=None, dropout_key=None, return_kv: bool = False, mask_LxL=None):
    """The attention output [B, L, D]; with `return_kv` also the keys and values [B, L, H_kv, K] (RoPE applied),
    which a sampler's KV cache keeps. `mask_LxL`: a boolean [L, L] (True = may attend) besides causality (local
    attention windows)."""
    batch, length, _ = x_BxLxD.shape
    q, k, v = self.project(x_BxLxD, rope)
    if self.dropout and dropout_key is not None:
      out_BxLxHxK = self.attend_with_dropout(q, k, v, dropout_key, mask_LxL)
    else:
      out_BxLxHxK = jax.nn.dot_product_attention(
          q, k, v, is_causal=self.causal, implementation=self.implementation if mask_LxL is None else "xla",
          mask=None if mask_LxL is None else mask_LxL[None, None])
    out_BxLxD = self.out(out_BxLxHxK.reshape(batch, length, -1))
    return (out_BxLxD, (k, v)) if return_kv else out_BxLxD

  def project(self, x_BxQxD, rope=None, positions_BxQ=None):
    """Queries [B, Q, H, K], keys and values [B, Q, H_kv, K] of the rows x, rotated (RoPE) to positions 0..Q-1 or
    `positions_BxQ`."""
    batch, length, _ = x_BxQxD.shape
    qkv_BxQxF = self.qkv(x_BxQxD)
    q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    q = qkv_BxQxF[..., :q_size].reshape(batch, length, self.num_heads, self.head_dim)
    k = qkv_BxQxF[..., q_size:q_size + kv_size].reshape(batch, length, self.num_kv_heads, self.head_dim)
    v = qkv_BxQxF[..., q_size + kv_size:].reshape(batch, length, self.num_kv_heads, self.head_dim)
    if rope is not None:
      cos, sin = rope
      if positions_BxQ is not None:
        cos, sin = cos[positions_BxQ], sin[positions_BxQ]
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    return q, k, v

  def attend_with_cache(self, x_BxQxD, rope, positions_BxQ, k_cache_BxLxHxK, v_cache_BxLxHxK, mask_LxL=None):
    """Attention of the rows x (at `positions_BxQ` of an L-long sequence) over all L positions, whose keys and values
    come from the cache except at the rows' own positions, which are recomputed and written back (Fast-dLLM's dual
    cache step; bidirectional). `mask_LxL` as in `__call__` (its rows at the queries' positions are used). Returns
    (output [B, Q, D], updated cache)."""
    batch, queries, _ = x_BxQxD.shape
    q, k, v = self.project(x_BxQxD, rope, positions_BxQ)
    rows_Bx1 = jnp.arange(batch)[:, None]
    k_all = k_cache_BxLxHxK.at[rows_Bx1, positions_BxQ].set(k.astype(k_cache_BxLxHxK.dtype))
    v_all = v_cache_BxLxHxK.at[rows_Bx1, positions_BxQ].set(v.astype(v_cache_BxLxHxK.dtype))
    mask = None if mask_LxL is None else mask_LxL[positions_BxQ][:, None]  # [B, 1, Q, L]
    out_BxQxHxK = jax.nn.dot_product_attention(q, k_all, v_all, mask=mask,
                                               implementation=self.implementation if mask is None else "xla")
    return self.out(out_BxQxHxK.reshape(batch, queries, -1)), (k_all, v_all)

  def attend_with_dropout(self, q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, dropout_key, mask_LxL=None):
    groups = self.num_heads // self.num_kv_heads  # grouped-query attention: each key/value head serves `groups`
    k_BxLxHxK = jnp.repeat(k_BxLxGxK, groups, axis=2)
    v_BxLxHxK = jnp.repeat(v_BxLxGxK, groups, axis=2)
    logits_BxHxLxL = jnp.einsum("bqhk,bjhk->bhqj", q_BxLxHxK, k_BxLxHxK, preferred_element_type=jnp.float32)
    logits_BxHxLxL = logits_BxHxLxL * (self.head_dim**-0.5)
    length = q_BxLxHxK.shape[1]
    allowed_LxL = jnp.tril(jnp.ones((length, length), bool)) if self.causal else jnp.ones((length, length), bool)
    if mask_LxL is not None:
      allowed_LxL = allowed_LxL & mask_LxL
    logits_BxHxLxL = jnp.where(allowed_LxL[None, None], logits_BxHxLxL, NEG_INF)
    probs_BxHxLxL = jax.nn.softmax(logits_BxHxLxL, axis=-1)
    keep = jax.random.bernoulli(dropout_key, 1.0 - self.dropout, probs_BxHxLxL.shape)
    probs_BxHxLxL = jnp.where(keep, probs_BxHxLxL / (1.0 - self.dropout), 0.0).astype(v_BxLxHxK.dtype)
    return jnp.einsum("bhqj,bjhk->bqhk", probs_BxHxLxL, v_BxLxHxK)


class CrossAttention(nnx.Module):
  """Multi-head attention of queries x [B, Q, D] over a context c [B, J, D] (J = memory slots, cells or tokens).

      out_q = sum_h softmax_j(q_qh . k_jh / sqrt(K) + bias) v_jh W_o^h,   q = x W_q, k = c W_k, v = c W_v.

  `bias_BxHxQxJ` (broadcastable) is added to the attention logits; NEG_INF there removes a key. Three forms of the
  same function (same parameters; they differ only in float rounding), chosen by the caller:

  * "projected" (`__call__`): project queries and context, attend (jax.nn.dot_product_attention, the XLA path: the
    contexts or the query sets are short), project out.
  * "absorb_context" (`attend_short_context`, for many queries over a short context, as tokens reading M memory
    slots): W_q and W_o are folded into the context, k~_hj = W_q^h k_jh and v~_hj = v_jh W_o^h ([B, H, J, D]), so
        out_q = sum_h softmax_j(x_q . k~_hj / sqrt(K) + bias) v~_hj,
    two matmuls of inner size H J per query instead of the 2 D^2 of the q and output projections (weight absorption
    as in DeepSeek-V2's MLA). Fewer FLOPs and no [B, Q, D] intermediates when H J < D (192 vs 768 for base_110m:eco).
  * "absorb_queries" (`attend_short_queries`, for few queries over a long context, as M slots writing from L tokens):
    W_k is folded into the queries, q~_qh = W_k^h q_qh ([B, H, Q, D]), and the context is pooled before W_v:
        out_q = sum_h (sum_j softmax_j(q~_qh . c_j / sqrt(K) + bias) c_j) W_v^h W_o^h,
    so the long context is never projected (its k/v projection was 4 D^2 FLOPs per context row).
  """

  def __init__(self, width: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    if width % num_heads:
      raise ConfigError(f"model.width={width} must be divisible by model.num_heads={num_heads}.")
    self.num_heads, self.head_dim = num_heads, width // num_heads
    self.dtype = dtype
    self.q = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs,
                        kernel_metadata=logical(EMBED, HEADS))
    self.kv = nnx.Linear(width, 2 * width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs,
                         kernel_metadata=logical(EMBED, HEADS))
    self.out = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs,
                          kernel_metadata=logical(HEADS, EMBED))

  def __call__(self, x_BxQxD, c_BxJxD, bias_BxHxQxJ=None):
    batch, q_len, _ = x_BxQxD.shape
    c_len = c_BxJxD.shape[1]
    q_BxQxHxK = self.q(x_BxQxD).reshape(batch, q_len, self.num_heads, self.head_dim)
    k_BxJxHxK, v_BxJxHxK = jnp.split(self.kv(c_BxJxD).reshape(batch, c_len, 2 * self.num_heads, self.head_dim), 2,
                                     axis=2)
    out_BxQxHxK = jax.nn.dot_product_attention(q_BxQxHxK, k_BxJxHxK, v_BxJxHxK, bias=bias_BxHxQxJ,
                                               implementation="xla")
    return self.out(out_BxQxHxK.reshape(batch, q_len, -1))

  def _weights_by_head(self):
    """W_q, W_k, W_v as [D, H, K] and W_o as [H, K, D], in the activation dtype."""
    d, h, k = self.num_heads * self.head_dim, self.num_heads, self.head_dim
    w_kv = self.kv.kernel[...].astype(self.dtype).reshape(d, 2 * h, k)
    return (self.q.kernel[...].astype(self.dtype).reshape(d, h, k), w_kv[:, :h], w_kv[:, h:],
            self.out.kernel[...].astype(self.dtype).reshape(h, k, d))

  def absorbed_context(self, c_BxJxD):
    """(k~, v~) [B, H, J, D] of the "absorb_context" form: W_q folded into the keys (with 1/sqrt(K)), W_o into the
    values."""
    w_q, w_k, w_v, w_o = self._weights_by_head()
    k_BxJxHxK = jnp.einsum("bjd,dhk->bjhk", c_BxJxD, w_k)
    v_BxJxHxK = jnp.einsum("bjd,dhk->bjhk", c_BxJxD, w_v)
    keys_BxHxJxD = jnp.einsum("bjhk,dhk->bhjd", k_BxJxHxK, w_q) * jnp.asarray(self.head_dim**-0.5, self.dtype)
    values_BxHxJxD = jnp.einsum("bjhk,hkd->bhjd", v_BxJxHxK, w_o)
    return keys_BxHxJxD, values_BxHxJxD

  def attend_short_context(self, x_BxQxD, c_BxJxD, bias_BxHxQxJ=None):
    """The "absorb_context" form (class docstring); softmax in float32 as in the projected form."""
    keys_BxHxJxD, values_BxHxJxD = self.absorbed_context(c_BxJxD)
    logits_BxQxHxJ = jnp.einsum("bqd,bhjd->bqhj", x_BxQxD, keys_BxHxJxD, preferred_element_type=jnp.float32)
    if bias_BxHxQxJ is not None:
      logits_BxQxHxJ = logits_BxQxHxJ + jnp.swapaxes(bias_BxHxQxJ, 1, 2).astype(jnp.float32)
    probs_BxQxHxJ = jax.nn.softmax(logits_BxQxHxJ, axis=-1).astype(x_BxQxD.dtype)
    return jnp.einsum("bqhj,bhjd->bqd", probs_BxQxHxJ, values_BxHxJxD)

  def attend_short_queries(self, x_BxQxD, c_BxJxD, bias_BxHxQxJ=None):
    """The "absorb_queries" form (class docstring); softmax in float32 as in the projected form."""
    w_q, w_k, w_v, w_o = self._weights_by_head()
    q_BxQxHxK = jnp.einsum("bqd,dhk->bqhk", x_BxQxD, w_q)
    queries_BxHxQxD = jnp.einsum("bqhk,dhk->bhqd", q_BxQxHxK, w_k) * jnp.asarray(self.head_dim**-0.5, self.dtype)
    logits_BxHxQxJ = jnp.einsum("bhqd,bjd->bhqj", queries_BxHxQxD, c_BxJxD, preferred_element_type=jnp.float32)
    if bias_BxHxQxJ is not None:
      logits_BxHxQxJ = logits_BxHxQxJ + bias_BxHxQxJ.astype(jnp.float32)
    probs_BxHxQxJ = jax.nn.softmax(logits_BxHxQxJ, axis=-1).astype(x_BxQxD.dtype)
    pooled_BxHxQxD = jnp.einsum("bhqj,bjd->bhqd", probs_BxHxQxJ, c_BxJxD)
    v_BxQxHxK = jnp.einsum("bhqd,dhk->bqhk", pooled_BxHxQxD, w_v)
    return jnp.einsum("bqhk,hkd->bqd", v_BxQxHxK, w_o)


def route_top_k(router_logits_BxQxJ, k: int):
  """Top-k routing of each query over J choices (EcoHybrid's slot routing, HRM's cell selection) with the Switch
  Transformer load-balancing loss (Fedus et al. 2022).

  Returns (chosen_BxQxJ: exactly k True per query; gate_BxQx1: router probability mass of the chosen choices;
  balance = J * sum_j f_j P_j with f_j the share of the B Q k assignments that went to choice j and P_j the mean router
  probability of choice j: 1 for perfectly uniform use, up to J / k when every query picks the same k)."""
  num_choices = router_logits_BxQxJ.shape[-1]
  _, top_index = jax.lax.top_k(router_logits_BxQxJ, k)  # [B, Q, k]
  chosen_BxQxJ = jnp.sum(jax.nn.one_hot(top_index, num_choices, dtype=jnp.float32), axis=-2) > 0
  probs_BxQxJ = jax.nn.softmax(router_logits_BxQxJ.astype(jnp.float32), axis=-1)
  fraction_J = jnp.mean(chosen_BxQxJ.astype(jnp.float32), axis=(0, 1)) / k
  balance = num_choices * jnp.sum(fraction_J * jnp.mean(probs_BxQxJ, axis=(0, 1)))
  gate_BxQx1 = jnp.sum(jnp.where(chosen_BxQxJ, probs_BxQxJ, 0.0), axis=-1, keepdims=True)
  return chosen_BxQxJ, gate_BxQx1, balance


def attention_bias(chosen_BxQxJ, dtype):
  """Additive attention bias [B, 1, Q, J] (the same for every head): 0 on chosen keys, NEG_INF elsewhere."""
  return jnp.where(chosen_BxQxJ, 0.0, NEG_INF)[:, None].astype(dtype)


class SwiGLU(nnx.Module):
  """FFN(x) = W_down (silu(W_gate x) * W_up x)  (Shazeer 2020); W_gate|W_up as one [D, 2F] projection `gate_up`.

  `activation` replaces silu by another gate (GeGLU: exact GELU, ModernBERT)."""

  def __init__(self, width: int, hidden: int, *, dtype, rngs: nnx.Rngs, out_features: int | None = None,
               activation: Callable = jax.nn.silu):
    self.activation = activation
    self.gate_up = nnx.Linear(width, 2 * hidden, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs,
                              kernel_metadata=logical(EMBED, MLP))
    self.down = nnx.Linear(hidden, out_features or width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT,
                           rngs=rngs, kernel_metadata=logical(MLP, EMBED))

  def __call__(self, x):
    gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
    return self.down(self.activation(gate) * up)


def sinusoidal_embedding(t_B, dim: int, max_period: float = 10000.0):
  """Transformer-style sinusoidal features of a scalar time t in [0, 1] (scaled by 1000 as in DDPM/MDLM)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args_BxD2 = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args_BxD2), jnp.sin(args_BxD2)], axis=-1)


class TimeEmbedding(nnx.Module):
  """t -> MLP(sinusoidal(t)) in R^D, added to every position's state (MDLM's DiT-style conditioning)."""

  def __init__(self, width: int, *, dtype, rngs: nnx.Rngs):
    self.width = width
    self.hidden = nnx.Linear(width, width, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs,
                             kernel_metadata=logical(EMBED, MLP), bias_metadata=logical(MLP))
    self.out = nnx.Linear(width, width, dtype=dtype, kernel_init=nnx.initializers.zeros_init(), rngs=rngs,
                          kernel_metadata=logical(MLP, EMBED), bias_metadata=logical(EMBED))

  def __call__(self, t_B):
    return self.out(jax.nn.silu(self.hidden(sinusoidal_embedding(t_B, self.width))))


def stack_blocks(num_layers: int, make_block: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs) -> nnx.List:
  """`num_layers` blocks, each with its own parameter tree (an nnx.List), for `run_stack`.

  Per-layer trees mean the gradient of layer i is its own array: no [num_layers, ...] gradient is assembled (on an H100
  that assembly, 24 `concatenate` kernels, cost base_110m's unrolled step 4.3 of 76 ms). The blocks are initialized as
  one nnx.vmap over split rngs and then sliced, so their values equal those of the stacked layout this replaced;
  checkpoints written in that layout load through `stacked_layout`/`per_layer_layout`."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return make_block(rngs)

  stacked_state = nnx.state(make(rngs))
  block_def = nnx.graphdef(nnx.eval_shape(lambda: make_block(nnx.Rngs(0))))
  return nnx.List([nnx.merge(block_def, jax.tree.map(lambda x: x[i], stacked_state)) for i in range(num_layers)])


def run_stack(blocks: nnx.List, carry, apply_block: Callable, dropout_key, remat: str = "none", unroll: bool = False):
  """Runs the blocks of `stack_blocks` in turn: a Python loop (`unroll`) or one lax.scan over their stacked states
  (compile time flat in depth).

  `apply_block(block, carry, layer_index, dropout_key) -> (carry, per_layer_output)`; returns (carry, outputs stacked
  over layers). Layer i gets the i-th of split(dropout_key, num_layers). With remat ("full" or "dots") each layer's body
  is wrapped in `jax.checkpoint` under that policy. The scan stacks the per-layer parameters on each call (a copy of
  the parameters, and its gradient is slices of the scan's stacked gradient); the loop uses them as they are. (Not
  `nnx.scan`: it refuses modules whose values were traced at an outer level, which happens when a model runs inside the
  sampler's scan or an HRM iteration loop; split/merge around lax.scan has no such restriction.)"""
  block_def = nnx.graphdef(blocks[0])
  states = [nnx.state(block) for block in blocks]
  num_layers = len(states)
  layer_keys = jax.random.split(dropout_key if dropout_key is not None else jax.random.key(0), num_layers)

  def body(carry, layer):
    state, key, index = layer
    carry, output = apply_block(nnx.merge(block_def, state), carry, index, key)
    return partitioning.constrain_batch(carry), output

  if remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
  if not unroll:
    stacked = _constrain_stacked(jax.tree.map(lambda *xs: jnp.stack(xs), *states))
    return jax.lax.scan(body, carry, (stacked, layer_keys, jnp.arange(num_layers)))
  outputs = []
  for index, state in enumerate(states):
    carry, output = body(carry, (state, layer_keys[index], jnp.asarray(index, jnp.int32)))
    outputs.append(output)
  return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def _constrain_stacked(stacked_state):
  """The scan's stacked copy of the per-layer parameters, each constrained to ("layers", *its own logical axes)."""

  def constrain(variable):
    axes = variable.get_metadata().get("out_sharding") or (None,) * (variable[...].ndim - 1)
    return variable.replace(partitioning.constrain(variable[...], (LAYERS,) + tuple(axes)))

  return jax.tree.map(constrain, stacked_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _is_layer_list(mapping) -> bool:
  keys = list(mapping.keys()) if isinstance(mapping, dict) else []
  return bool(keys) and all(isinstance(k, int) for k in keys) and sorted(keys) == list(range(len(keys)))


def _is_state(node) -> bool:
  return isinstance(node, nnx.State)


def stacked_layout(tree):
  """`tree` (a train state, parameters, ...: any pytree holding nnx.States) with each per-layer list of
  `stack_blocks` (a State node keyed 0..n-1) replaced by one node whose leaves are the layers' leaves stacked on a
  leading axis: the layout checkpoints had before per-layer parameter trees. Takes arrays or ShapeDtypeStructs."""

  def stack(*leaves):
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct((len(leaves),) + first.shape, first.dtype, sharding=first.sharding)
    return jnp.stack(leaves)

  def convert(mapping):  # a State's raw nested dict
    if _is_layer_list(mapping):
      return jax.tree.map(stack, *[mapping[i] for i in range(len(mapping))])
    return {key: convert(child) if isinstance(child, dict) else child for key, child in mapping.items()}

  return jax.tree.map(lambda node: nnx.State(convert(node.raw_mapping)) if _is_state(node) else node, tree,
                      is_leaf=_is_state)


def per_layer_layout(stacked, like):
  """The inverse of `stacked_layout`: `stacked` with its stacked layer nodes split into the per-layer lists of `like`
  (a tree in the per-layer layout, e.g. the abstract train state)."""

  def convert(like_mapping, mapping):
    if _is_layer_list(like_mapping):
      return {i: jax.tree.map(lambda x: x[i], mapping) for i in range(len(like_mapping))}
    return {key: convert(child, mapping[key]) if isinstance(child, dict) else mapping[key]
            for key, child in like_mapping.items()}

  return jax.tree.map(
      lambda like_node, node: nnx.State(convert(like_node.raw_mapping, node.raw_mapping)) if _is_state(like_node)
      else node, like, stacked, is_leaf=_is_state)
