"""The baseline denoiser: a bidirectional pre-norm transformer with a tied output head.

    h_0   = E[x] (+ P_pos if learned positions) (+ TimeMLP(t) if time conditioning)
    h_l+1 = h_l + Attn(RMSNorm(h_l)) ; h_l+1 = h_l+1 + SwiGLU(RMSNorm(h_l+1))     (RoPE inside Attn if enabled)
    logits = RMSNorm(h_L) E^T                                                        (tied head)

Attention is bidirectional for diffusion; `causal=True` gives the autoregressive control arm (next-token prediction
with the same blocks, parameters and data) on the same code. Layers are created with `nnx.vmap` (one stacked parameter
tree) and run with `lax.scan` over that tree (`layers.run_stack`: compile time flat in depth), each optionally wrapped
in `jax.checkpoint` (remat). Time conditioning is off by default: for masked diffusion the number of masks already
reveals t and MD4/MDLM find the conditioning unnecessary; it is a config switch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import kernels, layers
from dlm_jax.models.base import Denoiser, DenoiserConfig, DenoiserOutput


@dataclasses.dataclass(frozen=True)
class TransformerConfig(DenoiserConfig):
  num_layers: int = 6  # transformer blocks
  position: str = "rope"  # "rope" or "learned"

  def __post_init__(self):
    super().__post_init__()
    if self.position not in ("rope", "learned"):
      raise ConfigError(f"model.position must be 'rope' or 'learned', got {self.position!r}.")

  def flops_per_token(self, seq_len: int) -> float:
    """6 N_matmul + 12 n_layers L D (Kaplan et al. 2020; PaLM's MFU convention), N_matmul = the weights that multiply
    activations: per layer 4 D^2 (qkv + out) + 3 D mlp_dim (SwiGLU), plus the V x D head. The one-hot embedding
    product is not counted (a lookup in the usual convention)."""
    d = self.width
    matmul_params = self.num_layers * (4 * d * d + 3 * d * self.mlp_dim) + self.vocab_size * d
    return 6.0 * matmul_params + 12.0 * self.num_layers * seq_len * d


ATTENTION_DROPOUT_STREAM = 1_000_002  # fold_in stream of the attention-probability dropout (see base.py)


class Block(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dtype = layers.compute_dtype(cfg.dtype)
    self.attn_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.attn = layers.SelfAttention(cfg.width, cfg.num_heads, causal=cfg.causal,
                                     implementation=layers.attention_implementation(cfg.attention, dtype),
                                     dtype=dtype, rngs=rngs, dropout=cfg.attention_dropout)
    self.mlp_norm = layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)
    self.fused_add_norm = cfg.fused_add_norm

  def __call__(self, h_BxLxD, rope, dropout_key, deterministic: bool, return_kv: bool = False):
    attn_BxLxD, kv, (attn_key, mlp_key) = self.self_attention(h_BxLxD, rope, dropout_key, deterministic, return_kv)
    h_BxLxD = self.mlp_residual(h_BxLxD, self.dropout(attn_BxLxD, deterministic=deterministic, rngs=attn_key),
                                mlp_key, deterministic)
    return (h_BxLxD, kv) if return_kv else h_BxLxD

  def self_attention(self, h_BxLxD, rope, dropout_key, deterministic: bool, return_kv: bool = False):
    """(Attn(RMSNorm(h)), its keys and values or None, (attention dropout key, MLP dropout key))."""
    attn_key, mlp_key = jax.random.split(dropout_key)
    probs_key = None if deterministic else jax.random.fold_in(dropout_key, ATTENTION_DROPOUT_STREAM)
    attn_BxLxD = self.attn(self.attn_norm(h_BxLxD), rope, probs_key, return_kv=return_kv)
    attn_BxLxD, kv = attn_BxLxD if return_kv else (attn_BxLxD, None)
    return attn_BxLxD, kv, (attn_key, mlp_key)

  def mlp_residual(self, h_BxLxD, attn_BxLxD, mlp_key, deterministic: bool):
    """h + attn, then + SwiGLU(RMSNorm(.)) (the residual add and the norm as one kernel with fused_add_norm)."""
    batch, length, width = h_BxLxD.shape
    if self.fused_add_norm and kernels.add_rms_norm_fits(batch * length, width):
      h_BxLxD, x_BxLxD = kernels.add_rms_norm(h_BxLxD, attn_BxLxD, self.mlp_norm.scale[...], self.mlp_norm.epsilon)
    else:
      h_BxLxD = h_BxLxD + attn_BxLxD
      x_BxLxD = self.mlp_norm(h_BxLxD)
    return h_BxLxD + self.dropout(self.mlp(x_BxLxD), deterministic=deterministic, rngs=mlp_key)

  def cached_step(self, h_BxQxD, rope, positions_BxQ, kv_cache):
    """The block on the rows at `positions_BxQ` only, attending over every position through the KV cache (which it
    updates at those positions): SelfAttention.attend_with_cache. Deterministic."""
    attn_BxQxD, kv_cache = self.attn.attend_with_cache(self.attn_norm(h_BxQxD), rope, positions_BxQ, *kv_cache)
    return self.mlp_residual(h_BxQxD, attn_BxQxD, None, True), kv_cache


def make_blocks(cfg: TransformerConfig, rngs: nnx.Rngs, block_class=Block):
  """cfg.num_layers blocks (Block, or a subclass) with their parameters stacked on a leading axis."""
  return layers.stack_blocks(cfg.num_layers, lambda r: block_class(cfg, rngs=r), rngs)


def run_blocks(blocks, h_BxLxD, rope, dropout_key, deterministic: bool, cfg: DenoiserConfig, **block_inputs):
  """h through every stacked block in turn (cfg: remat and layer_loop); `block_inputs` go to every block."""
  apply = lambda block, h, _, key: (block(h, rope, key, deterministic, **block_inputs), None)
  return layers.run_stack(blocks, h_BxLxD, apply, dropout_key, cfg.remat, cfg.unroll_layers)[0]


class Transformer(Denoiser):
  """Baseline denoiser: `model(tokens_BxL, t_B, deterministic=..., dropout_key=...)` -> DenoiserOutput."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=cfg.position == "learned")
    self.blocks = make_blocks(cfg, rngs)
    self.init_head(rngs)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None,
               self_cond_BxLxV=None, embeddings_BxLxD=None) -> DenoiserOutput:
    h_BxLxD = self.embed(tokens_BxL, t_B, deterministic, dropout_key, self_cond_BxLxV,
                         embeddings_BxLxD=embeddings_BxLxD)
    h_BxLxD = run_blocks(self.blocks, h_BxLxD, self._rope(tokens_BxL.shape[1]), dropout_key, deterministic, self.cfg)
    return self.output(h_BxLxD)

  # -- Fast-dLLM's KV caches for block decoding (dlm_jax/sampling/strategies.py, cache="dual" or "prefix") -------------
  supports_kv_cache = True

  def _rope(self, length: int):
    cfg = self.cfg
    return None if cfg.position == "learned" else layers.rope_tables(length, cfg.width // cfg.num_heads, cfg.rope_base)

  def kv_prefill(self, tokens_BxL, t_B, positions_BxQ):
    """A full forward pass that keeps every layer's keys and values ([layers, B, L, H, K] each): (logits of the rows
    at `positions_BxQ` [B, Q, V], cache). Deterministic."""
    h_BxLxD = self.embed(tokens_BxL, t_B)
    rope = self._rope(tokens_BxL.shape[1])
    apply = lambda block, h, _, key: block(h, rope, key, True, return_kv=True)
    h_BxLxD, kv_cache = layers.run_stack(self.blocks, h_BxLxD, apply, None, "none", self.cfg.unroll_layers)
    return self.head(jnp.take_along_axis(h_BxLxD, positions_BxQ[..., None], axis=1)), kv_cache

  def kv_step(self, tokens_BxL, t_B, positions_BxQ, kv_cache):
    """The forward pass of the rows at `positions_BxQ` only, every other position's keys and values read from the
    cache (stale where they depended on rows that changed since `kv_prefill`: Fast-dLLM's approximation):
    (logits [B, Q, V], the cache with those rows' keys and values renewed)."""
    tokens_BxQ = jnp.take_along_axis(tokens_BxL, positions_BxQ, axis=1)
    h_BxQxD = self.embed(tokens_BxQ, t_B, positions_BxL=positions_BxQ)
    rope = self._rope(tokens_BxL.shape[1])
    apply = lambda block, h, index, _: block.cached_step(h, rope, positions_BxQ,
                                                          jax.tree.map(lambda c: c[index], kv_cache))
    h_BxQxD, kv_cache = layers.run_stack(self.blocks, h_BxQxD, apply, None, "none", self.cfg.unroll_layers)
    return self.head(h_BxQxD), kv_cache
