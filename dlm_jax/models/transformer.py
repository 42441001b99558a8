"""The baseline denoiser (seed 001 §5): a bidirectional pre-norm transformer with a tied output head.

    h_0   = E[x] (+ P_pos if learned positions) (+ TimeMLP(t) if time conditioning)
    h_l+1 = h_l + Attn(RMSNorm(h_l)) ; h_l+1 = h_l+1 + SwiGLU(RMSNorm(h_l+1))     (RoPE inside Attn if enabled)
    logits = RMSNorm(h_L) E^T                                                        (tied head)

Attention is bidirectional for diffusion; `causal=True` gives the autoregressive control arm of seed 001 §5.2 on the
same code. Layers are created with `nnx.vmap` (one stacked parameter tree) and run with `lax.scan` over that tree
(compile time flat in depth), each optionally wrapped in `jax.checkpoint` (remat). Time conditioning is off by default: for masked diffusion the
number of masks already reveals t and MD4/MDLM find the conditioning unnecessary; it is a config switch.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class TransformerConfig(layers.DenoiserConfig):
  num_layers: int = 6
  position: str = "rope"  # "rope" or "learned"

  def __post_init__(self):
    super().__post_init__()
    if self.position not in ("rope", "learned"):
      raise ValueError(f"model.position must be 'rope' or 'learned', got {self.position!r}.")


class Block(nnx.Module):

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dtype = layers.compute_dtype(cfg.dtype)
    self.attn_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.attn = layers.SelfAttention(cfg.width, cfg.num_heads, causal=cfg.causal,
                                     implementation=layers.attention_implementation(cfg.attention, dtype),
                                     dtype=dtype, rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(cfg.width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, h_BxLxD, rope, dropout_key, deterministic: bool):
    attn_key, mlp_key = jax.random.split(dropout_key)
    h_BxLxD = h_BxLxD + self.dropout(self.attn(self.attn_norm(h_BxLxD), rope), deterministic=deterministic,
                                     rngs=attn_key)
    return h_BxLxD + self.dropout(self.mlp(self.mlp_norm(h_BxLxD)), deterministic=deterministic, rngs=mlp_key)


def run_stack(blocks, h_BxLxD, rope, dropout_key, deterministic: bool, remat: str = "none"):
  """Runs `nnx.vmap`-stacked Blocks as a plain lax.scan over their stacked state, merged inside the body.

  (nnx.scan refuses modules whose values were traced at an outer level, which happens when a model runs inside the
  sampler's scan or an HRM iteration loop; split/merge around lax.scan has no such restriction.)"""
  block_def, block_state = nnx.split(blocks)
  num_layers = jax.tree.leaves(block_state)[0].shape[0]
  keys_Lx = jax.random.split(dropout_key if dropout_key is not None else jax.random.key(0), num_layers)

  def run_block(h, layer):
    state_l, key = layer
    return nnx.merge(block_def, state_l)(h, rope, key, deterministic), None

  if remat != "none":
    run_block = jax.checkpoint(run_block, policy=layers.REMAT_POLICIES[remat])
  return jax.lax.scan(run_block, h_BxLxD, (block_state, keys_Lx))[0]


def make_blocks(cfg: TransformerConfig, rngs: nnx.Rngs):
  """cfg.num_layers Blocks with their parameters stacked on a leading axis (nnx.vmap over split rngs)."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Block(cfg, rngs=rngs)

  return make(rngs)


class Transformer(nnx.Module):
  """Baseline denoiser. Call: logits_BxLxV = model(tokens_BxL, t_B, deterministic=..., dropout_key=...)."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = layers.compute_dtype(cfg.dtype)
    self.embedding = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.vocab_size, cfg.width), jnp.float32))
    if cfg.position == "learned":
      self.positions = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.max_len, cfg.width), jnp.float32))
    self.time_embedding = (layers.TimeEmbedding(cfg.width, dtype=self.dtype, rngs=rngs)
                           if cfg.time_conditioning else None)
    self.blocks = make_blocks(cfg, rngs)
    self.final_norm = nnx.RMSNorm(cfg.width, dtype=self.dtype, rngs=rngs)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None):
    cfg = self.cfg
    length = tokens_BxL.shape[1]
    if length > cfg.max_len:
      raise ValueError(f"Sequence length {length} exceeds model.max_len={cfg.max_len}.")
    h_BxLxD = layers.embed_inputs(self.embedding[...], tokens_BxL, t_B, cfg, self.dtype, self.time_embedding)
    rope = None
    if cfg.position == "learned":
      h_BxLxD = h_BxLxD + self.positions[:length].astype(self.dtype)[None]
    else:
      rope = layers.rope_tables(length, cfg.width // cfg.num_heads, cfg.rope_base)
    h_BxLxD = run_stack(self.blocks, h_BxLxD, rope, dropout_key, deterministic, cfg.remat)
    h_BxLxD = self.final_norm(h_BxLxD)
    return h_BxLxD @ self.embedding[...].astype(self.dtype).T
