"""Thought tensors: an n-D latent that the denoiser reads beside the text and rewrites into an (n-1)-D evolved thought.

The idea (our seed 003, "diffusion thought tensors"; no published system has them) is a persistent state for a
diffusion LM: a tensor T that is noised and denoised together with the text, conditions every position through
cross-attention, and after a generation is compressed into a new thought that seeds the next generation. The sketch
leaves open what T holds, where a clean T comes from in training and how an (n-1)-D output can seed an n-D input; we
choose (and the objective, process.py, trains) this:

**T is a memory of past generations.** With `model.thought_dims` = (d_1, ..., d_n), n >= 2, the last axis is the
memory depth H = d_n: T[..., k] is the (n-1)-D evolved thought e of the k-th most recent generation (window of text),
    T_next = push(T, e) = concat(e[..., None], T[..., :H-1])   (the oldest thought drops out),
so the n-D -> (n-1)-D step is exact, and "the evolved thought of one generation initializes the next" is a push. The
empty memory is T = 0. For the seed's sizes, (8, 8, 4) holds 4 thoughts of 8 x 8 and (32, 32, 16) 16 of 32 x 32.

**Encoder** (n-D -> d_1 tokens of width D): T is read as d_1 rows of F = d_2 ... d_n features (every memory slot's row
i in token i),
    u_i = W_2 silu(W_1 T[i] + b_1) + b_2 + P[i] + TimeMLP(t_thought),
with learned row embeddings P and the thought's own noise level t_thought (the thought is Gaussian-noised, the text
masked: the denoiser must be told the thought's noise level even when it infers the text's from the masks).

**Cross-attention** (every transformer block, after self-attention): h <- h + CrossAttn(RMSNorm(h), u) with a
zero-initialized output projection, so an untrained thought pathway adds nothing; called without a thought, a block
skips it and computes exactly the baseline's function (`ThoughtTransformer(..., thought=None)`).

**Decoder** (the seed pools the text and maps it to the thought; we let each thought token read the text): the tokens
read the final normalized text states, r = u + CrossAttn(RMSNorm(u), RMSNorm(h_L)), r <- r + SwiGLU(RMSNorm(r)), and
    reconstruction T_hat_0 = per-row linear map of r back to F features:  the x_0 estimate of the clean thought, which
                              the thought's reverse (DDIM) step uses;
    evolved e = per-row map to d_2 ... d_{n-1} features, scaled to unit root-mean-square: the (n-1)-D thought of this
                generation. The fixed scale keeps the memory at unit variance per element, the variance of the
                Gaussian prior the thought is diffused towards (as diffusion/gaussian.py normalizes token embeddings),
                and it cannot collapse to zero.
**Alignment heads**: a linear code of the flattened thought and of the mean (stop-gradient) token embedding of a text,
for the contrastive thought-text alignment loss and metric (process.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import layers
from dlm_jax.models.base import DenoiserOutput
from dlm_jax.models.partitioning import EMBED, MLP, logical
from dlm_jax.models.transformer import Block, Transformer, TransformerConfig, make_blocks, run_blocks
from dlm_jax.proj.thought import process as thought_process


def unit_rms(x, axes):
  """x / sqrt(mean(x^2) + 1e-6) over `axes`."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + 1e-6)


class ThoughtEncoder(nnx.Module):
  """n-D thought -> d_1 tokens of width D (module docstring)."""

  def __init__(self, dims: tuple, width: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.dims, self.dtype = dims, dtype
    features = math.prod(dims[1:])
    self.inp = nnx.Linear(features, hidden, dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                          kernel_metadata=logical(None, MLP), bias_metadata=logical(MLP))
    self.out = nnx.Linear(hidden, width, dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                          kernel_metadata=logical(MLP, EMBED), bias_metadata=logical(EMBED))
    self.rows = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (dims[0], width), jnp.float32), **logical(None, EMBED))
    self.time_embedding = layers.TimeEmbedding(width, dtype=dtype, rngs=rngs)

  def __call__(self, z_BxT, t_B):
    batch = z_BxT.shape[0]
    rows_BxJxF = z_BxT.reshape(batch, self.dims[0], -1).astype(self.dtype)
    tokens_BxJxD = self.out(jax.nn.silu(self.inp(rows_BxJxF)))
    return tokens_BxJxD + self.rows[...].astype(self.dtype)[None] + self.time_embedding(t_B)[:, None].astype(self.dtype)


class ThoughtDecoder(nnx.Module):
  """Thought tokens that read the final text states -> (reconstruction [B, *dims], evolved [B, *dims[:-1]])."""

  def __init__(self, dims: tuple, width: int, hidden: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.dims, self.dtype = dims, dtype
    self.read_norm = layers.rms_norm(width, dtype=dtype, rngs=rngs)
    self.read = layers.CrossAttention(width, num_heads, dtype=dtype, rngs=rngs)
    self.mlp_norm = layers.rms_norm(width, dtype=dtype, rngs=rngs)
    self.mlp = layers.SwiGLU(width, hidden, dtype=dtype, rngs=rngs)
    self.out_norm = layers.rms_norm(width, dtype=dtype, rngs=rngs)
    self.reconstruction = nnx.Linear(width, math.prod(dims[1:]), dtype=dtype, kernel_init=layers.DEFAULT_INIT,
                                     rngs=rngs, kernel_metadata=logical(EMBED, None), bias_metadata=logical(None))
    self.evolved = nnx.Linear(width, math.prod(dims[1:-1]), dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                              kernel_metadata=logical(EMBED, None), bias_metadata=logical(None))
    self.thought_code = nnx.Linear(math.prod(dims), width, use_bias=False, dtype=jnp.float32,
                                   kernel_init=layers.DEFAULT_INIT, rngs=rngs, kernel_metadata=logical(None, EMBED))
    self.text_code = nnx.Linear(width, width, use_bias=False, dtype=jnp.float32, kernel_init=layers.DEFAULT_INIT,
                                rngs=rngs, kernel_metadata=logical(EMBED, None))

  def __call__(self, tokens_BxJxD, hidden_BxLxD):
    batch = tokens_BxJxD.shape[0]
    r_BxJxD = tokens_BxJxD + self.read(self.read_norm(tokens_BxJxD), hidden_BxLxD.astype(self.dtype))
    r_BxJxD = self.out_norm(r_BxJxD + self.mlp(self.mlp_norm(r_BxJxD)))
    reconstruction = self.reconstruction(r_BxJxD).astype(jnp.float32).reshape(batch, *self.dims)
    evolved = self.evolved(r_BxJxD).astype(jnp.float32).reshape(batch, *self.dims[:-1])
    return {"reconstruction": reconstruction, "evolved": unit_rms(evolved, tuple(range(1, len(self.dims))))}

  def alignment_codes(self, memory_BxT, text_embeddings_BxLxD):
    """(thought code, text code) [B, D], each of unit norm: W_T vec(T) and W_X mean_l E[x_l]."""
    a_BxD = self.thought_code(memory_BxT.reshape(memory_BxT.shape[0], -1).astype(jnp.float32))
    b_BxD = self.text_code(jnp.mean(text_embeddings_BxLxD.astype(jnp.float32), axis=1))
    normalize = lambda x: x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)
    return normalize(a_BxD), normalize(b_BxD)


class ThoughtCrossAttention(nnx.Module):
  """h + CrossAttn(RMSNorm(h), u), the output projection zero-initialized (the pathway starts as the identity)."""

  def __init__(self, width: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
    self.norm = layers.rms_norm(width, dtype=dtype, rngs=rngs)
    self.attn = layers.CrossAttention(width, num_heads, dtype=dtype, rngs=rngs)
    self.attn.out.kernel[...] = jnp.zeros_like(self.attn.out.kernel[...])

  def __call__(self, h_BxLxD, tokens_BxJxD):
    return self.attn(self.norm(h_BxLxD), tokens_BxJxD)


def pathway_parameters(dims, width: int, hidden: int, num_layers: int) -> int:
  """The parameters the thought pathway adds to a transformer (per-block cross-attention, encoder, decoder and
  alignment heads), for parameter-matched baselines (dlm_jax/proj/thought/configs/small.py)."""
  rows, features, evolved, total = dims[0], math.prod(dims[1:]), math.prod(dims[1:-1]), math.prod(dims)
  d = width
  cross_attention = 4 * d * d + d  # norm + q, kv, out (no biases)
  encoder = features * hidden + hidden + hidden * d + d + rows * d + (2 * d * d + 2 * d)
  decoder = (3 * d + 4 * d * d + 3 * d * hidden + d * features + features + d * evolved + evolved + total * d + d * d)
  return num_layers * cross_attention + encoder + decoder


# -- the thought denoiser: the baseline transformer with the pathway (model.name "thought") ----------------------------


@dataclasses.dataclass(frozen=True)
class ThoughtTransformerConfig(TransformerConfig):
  # The n-D thought's shape (n >= 2; the last axis is the memory depth), e.g. (8, 8, 4) (seed 003's mini model).
  thought_dims: tuple = (8, 8, 4)
  thought_hidden: int = 256  # the encoder's and decoder's MLP width

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "thought_dims", thought_process.check_dims(self.thought_dims))
    if not self.thought_dims:
      raise ConfigError("model.name='thought' needs a thought shape: model.thought_dims of n >= 2 sizes, e.g. "
                        "(8, 8, 4); without a thought use model.name='transformer'.")
    if self.causal:
      raise ConfigError("model.thought_dims gives a diffusion denoiser a thought; the AR arm (model.causal=True) has "
                        "none. Use model.name='transformer'.")

  @classmethod
  def check_objective(cls, objective: str):
    """The thought pathway is trained by the thought objective only (objective.py)."""
    if objective != "thought":
      raise ConfigError(f"model.name='thought' (a thought shape) is trained by the thought objective: set "
                        f"--config.diffusion.objective=thought (dlm_jax/proj/thought/configs/small.py), or use "
                        f"model.name='transformer'; got diffusion.objective={objective!r}.")


@flax.struct.dataclass
class ThoughtOutput(DenoiserOutput):
  """DenoiserOutput plus the decoder's {"reconstruction": x_0 estimate of the thought [B, *dims], "evolved": the
  (n-1)-D evolved thought [B, *dims[:-1]]}."""
  thought: Any = None


class ThoughtBlock(Block):
  """The transformer block with a cross-attention to the thought tokens after self-attention (module docstring);
  called without thought tokens it is exactly the baseline block."""

  def __init__(self, cfg: ThoughtTransformerConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    # Created last, so that a thought model's other parameters equal the baseline's of the same seed.
    self.thought = ThoughtCrossAttention(cfg.width, cfg.num_heads, dtype=layers.compute_dtype(cfg.dtype), rngs=rngs)

  def __call__(self, h_BxLxD, rope, dropout_key, deterministic: bool, return_kv: bool = False, thought_BxJxD=None):
    """h + attn, then + CrossAttn(RMSNorm(.), thought tokens), then the MLP residual."""
    if thought_BxJxD is None:
      return super().__call__(h_BxLxD, rope, dropout_key, deterministic, return_kv)
    attn_BxLxD, kv, (attn_key, mlp_key) = self.self_attention(h_BxLxD, rope, dropout_key, deterministic, return_kv)
    h_BxLxD = h_BxLxD + self.dropout(attn_BxLxD, deterministic=deterministic, rngs=attn_key)
    cross_BxLxD = self.thought(h_BxLxD, thought_BxJxD)  # the MLP residual adds it
    h_BxLxD = self.mlp_residual(h_BxLxD, self.dropout(cross_BxLxD, deterministic=deterministic, rngs=attn_key),
                                mlp_key, deterministic)
    return (h_BxLxD, kv) if return_kv else h_BxLxD


class ThoughtTransformer(Transformer):
  """The transformer denoiser with the thought pathway: `model(tokens, t, thought=ThoughtInput(z, t_thought))` ->
  ThoughtOutput; without `thought`, the baseline's function (and DenoiserOutput)."""

  def __init__(self, cfg: ThoughtTransformerConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=cfg.position == "learned")
    self.blocks = make_blocks(cfg, rngs, ThoughtBlock)
    self.thought_encoder = ThoughtEncoder(cfg.thought_dims, cfg.width, cfg.thought_hidden, dtype=self.dtype,
                                          rngs=rngs)
    self.thought_decoder = ThoughtDecoder(cfg.thought_dims, cfg.width, cfg.thought_hidden, cfg.num_heads,
                                          dtype=self.dtype, rngs=rngs)
    self.init_head(rngs)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None, self_cond_BxLxV=None,
               embeddings_BxLxD=None, thought: "thought_process.ThoughtInput | None" = None) -> DenoiserOutput:
    if thought is None:
      return super().__call__(tokens_BxL, t_B, deterministic=deterministic, dropout_key=dropout_key,
                              self_cond_BxLxV=self_cond_BxLxV, embeddings_BxLxD=embeddings_BxLxD)
    h_BxLxD = self.embed(tokens_BxL, t_B, deterministic, dropout_key, self_cond_BxLxV,
                         embeddings_BxLxD=embeddings_BxLxD)
    tokens_BxJxD = self.thought_encoder(thought.z, thought.t_B)
    h_BxLxD = run_blocks(self.blocks, h_BxLxD, self._rope(tokens_BxL.shape[1]), dropout_key, deterministic, self.cfg,
                         thought_BxJxD=tokens_BxJxD)
    output = self.output(h_BxLxD)
    return ThoughtOutput(**{f.name: getattr(output, f.name) for f in dataclasses.fields(output)},
                         thought=self.thought_decoder(tokens_BxJxD, output.hidden_BxLxD))

  def thought_alignment(self, memory_BxT, tokens_BxL):
    """The unit-norm (thought code, text code) pair of ThoughtDecoder.alignment_codes; the text side reads the token
    embeddings through stop_gradient (the alignment loss must not move the embedding table)."""
    text_BxLxD = jax.lax.stop_gradient(self.embedding[...])[tokens_BxL]
    return self.thought_decoder.alignment_codes(memory_BxT, text_BxLxD)


REGISTERED = (ThoughtTransformer, ThoughtTransformerConfig)  # models.MODELS["thought"]
