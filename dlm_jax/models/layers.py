"""Building blocks shared by the denoisers: dtype/attention selection, RoPE, attention, SwiGLU, time embedding."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_INIT = nnx.initializers.normal(stddev=0.02)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """The fields every denoiser takes (config.model, less `name`); each model's config adds its own."""
  vocab_size: int
  max_len: int
  num_heads: int = 6
  width: int = 384
  mlp_dim: int = 1024  # SwiGLU hidden width
  dropout: float = 0.0
  time_conditioning: bool = False
  causal: bool = False
  remat: str = "none"  # "none", "full" or "dots"
  dtype: str = "auto"  # "auto", "float32" or "bfloat16" (activations; parameters are always float32)
  attention: str = "auto"  # "auto", "xla" or "cudnn"
  embed_one_hot: bool = True  # E[x] as one_hot(x) @ E: its backward is a matmul, not a scatter (GUIDE §4)
  rope_base: float = 10000.0

  def __post_init__(self):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}.")


def embed_inputs(table_VxD, tokens_BxL, t_B, cfg: DenoiserConfig, dtype, time_embedding=None):
  """E[x] (as one_hot(x) @ E when cfg.embed_one_hot) plus, with time conditioning, TimeMLP(t) at every position."""
  table_VxD = table_VxD.astype(dtype)
  if cfg.embed_one_hot:
    h_BxLxD = jax.nn.one_hot(tokens_BxL, cfg.vocab_size, dtype=dtype) @ table_VxD
  else:
    h_BxLxD = table_VxD[tokens_BxL]
  if time_embedding is not None:
    if t_B is None:
      raise ValueError("This model was built with model.time_conditioning=True and needs t.")
    h_BxLxD = h_BxLxD + time_embedding(t_B)[:, None, :].astype(dtype)
  return h_BxLxD


def compute_dtype(name: str):
  """'auto' -> bfloat16 on GPU/TPU, float32 on CPU (CPU bf16 matmuls are slow and gain nothing)."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def attention_implementation(name: str, dtype) -> str | None:
  """'auto' -> cuDNN flash attention on GPU with 16-bit activations (7.5x the XLA path on an H100, GUIDE §4), else XLA."""
  if name == "auto":
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and dtype in (jnp.bfloat16, jnp.float16) else "xla"
  if name not in ("xla", "cudnn"):
    raise ValueError(f"model.attention must be 'auto', 'xla' or 'cudnn', got {name!r}.")
  return name


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0):
  """cos/sin tables [L, head_dim/2] of rotary position embeddings (Su et al. 2021)."""
  inv_freq = 1.0 / (base**(jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_LxH2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.cos(angles_LxH2), jnp.sin(angles_LxH2)


def apply_rope(x_BxLxNxH, cos_LxH2, sin_LxH2):
  """Rotates channel pairs (x1, x2) = (first half, second half) of each head by the position angle."""
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos_LxH2[None, :, None, :], sin_LxH2[None, :, None, :]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxNxH.dtype)


class SelfAttention(nnx.Module):
  """Multi-head self-attention through `jax.nn.dot_product_attention` (bidirectional, or causal for the AR arm)."""

  def __init__(self, width: int, num_heads: int, *, causal: bool, implementation: str | None, dtype, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"model.width={width} must be divisible by model.num_heads={num_heads}.")
    self.num_heads, self.head_dim = num_heads, width // num_heads
    self.causal, self.implementation = causal, implementation
    self.qkv = nnx.Linear(width, 3 * width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs)
    self.out = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs)

  def __call__(self, x_BxLxD, rope=None):
    batch, length, _ = x_BxLxD.shape
    qkv_BxLx3xNxH = self.qkv(x_BxLxD).reshape(batch, length, 3, self.num_heads, self.head_dim)
    q, k, v = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out_BxLxNxH = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal, implementation=self.implementation)
    return self.out(out_BxLxNxH.reshape(batch, length, -1))


class SwiGLU(nnx.Module):
  """FFN(x) = W_down (silu(W_gate x) * W_up x)  (Shazeer 2020)."""

  def __init__(self, width: int, hidden: int, *, dtype, rngs: nnx.Rngs, out_features: int | None = None):
    self.gate_up = nnx.Linear(width, 2 * hidden, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs)
    self.down = nnx.Linear(hidden, out_features or width, use_bias=False, dtype=dtype, kernel_init=DEFAULT_INIT,
                           rngs=rngs)

  def __call__(self, x):
    gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
    return self.down(jax.nn.silu(gate) * up)


def sinusoidal_embedding(t_B, dim: int, max_period: float = 10000.0):
  """Transformer-style sinusoidal features of a scalar time t in [0, 1] (scaled by 1000 as in DDPM/MDLM)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args_BxH = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args_BxH), jnp.sin(args_BxH)], axis=-1)


class TimeEmbedding(nnx.Module):
  """t -> MLP(sinusoidal(t)) in R^D, added to every position's state (seed 001 §5.1, MDLM's DiT conditioning)."""

  def __init__(self, width: int, *, dtype, rngs: nnx.Rngs):
    self.width = width
    self.hidden = nnx.Linear(width, width, dtype=dtype, kernel_init=DEFAULT_INIT, rngs=rngs)
    self.out = nnx.Linear(width, width, dtype=dtype, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, t_B):
    return self.out(jax.nn.silu(self.hidden(sinusoidal_embedding(t_B, self.width))))
