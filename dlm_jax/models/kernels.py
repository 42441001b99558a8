"""Pallas kernels for the hot paths XLA leaves memory-bound, each beside the plain-JAX reference it must equal.

`memory_read`: EcoHybrid's memory read with its residual, one pass over the tokens,

    out_l = h_l + sum_h softmax_m( RMSNorm(h_l) . k~_hm ) v~_hm                        (per token l, head h, slot m)

with k~, v~ [B, H, M, D] the slots' keys and values with the read's W_q and W_o folded in (`CrossAttention.
absorbed_context`). Under XLA the read writes the normalized tokens, the [B, L, H, M] logits and probabilities and the
[B, L, D] read to memory and reads them back; the kernel reads each token tile once and writes its output once
(2 B L D elements, the unavoidable traffic). The GPU measured XLA's hot path at 4.5-14x its unavoidable bytes, which
by the rule in dlm_jax/benchmarks/hot_path.py calls for a kernel.

The kernel is written for Pallas's Triton lowering (GPU), whose loads and stores must have power-of-two sizes: it
works in tiles of T tokens x C channels (T and C powers of two >= 16 that divide L and D) and needs M a power of two
>= 16 (the minimum size of a Triton matmul). `memory_read_fits` says whether shapes qualify; the caller takes the XLA
form otherwise. On CPU it runs in Pallas's interpret mode (slow: for tests). Its backward is the XLA reference's
(`jax.vjp` of `memory_read_reference`, recomputed): the gradients of k~ and v~ reduce over every token, which a
token-tiled kernel would write as [L / T, H M, D] partial sums, more than its input.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt


def _largest_power_of_two_factor(n: int, cap: int) -> int:
  factor = 1
  while factor * 2 <= cap and n % (factor * 2) == 0:
    factor *= 2
  return factor


def memory_read_fits(length: int, width: int, slots: int) -> bool:
  """Whether `memory_read`'s kernel takes these sizes (L tokens, D channels, M slots)."""
  return (_largest_power_of_two_factor(length, 64) >= 16 and _largest_power_of_two_factor(width, 256) >= 16
          and slots >= 16 and slots & (slots - 1) == 0)


def rms_normalize(x, scale_D, eps: float):
  """RMSNorm(x) = x / sqrt(mean(x^2) + eps) * scale, in float32."""
  x32 = x.astype(jnp.float32)
  scale = scale_D.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + scale_D.shape)
  return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * scale


def memory_read_reference(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps: float):
  """The XLA form of `memory_read` (module docstring): the same arithmetic in the same dtypes."""
  normed_BxLxD = rms_normalize(h_BxLxD, scale_D, eps).astype(h_BxLxD.dtype)
  logits_BxLxHxM = jnp.einsum("bld,bhmd->blhm", normed_BxLxD, keys_BxHxMxD, preferred_element_type=jnp.float32)
  probs_BxLxHxM = jax.nn.softmax(logits_BxLxHxM, axis=-1).astype(h_BxLxD.dtype)
  read_BxLxD = jnp.einsum("blhm,bhmd->bld", probs_BxLxHxM, values_BxHxMxD, preferred_element_type=jnp.float32)
  return (h_BxLxD.astype(jnp.float32) + read_BxLxD).astype(h_BxLxD.dtype)


def _memory_read_kernel(h_ref, scale_ref, keys_ref, values_ref, out_ref, *, eps: float, chunk: int):
  """One tile of T tokens: h_ref/out_ref [T, D], scale_ref [D], keys_ref/values_ref [H, M, D]."""
  width = h_ref.shape[-1]
  num_heads = keys_ref.shape[0]
  dtype = h_ref.dtype
  columns = [pl.ds(c * chunk, chunk) for c in range(width // chunk)]
  h_chunks = [h_ref[:, cols].astype(jnp.float32) for cols in columns]  # [T, C] each
  mean_square_T = sum(jnp.sum(x * x, axis=1) for x in h_chunks) / width
  inv_rms_Tx1 = jax.lax.rsqrt(mean_square_T + eps)[:, None]
  normed = [(x * inv_rms_Tx1 * scale_ref[cols].astype(jnp.float32)[None, :]).astype(dtype)
            for x, cols in zip(h_chunks, columns)]
  out_chunks = list(h_chunks)
  for head in range(num_heads):
    logits_TxM = sum(plt.dot(n, keys_ref[head, :, cols], trans_b=True) for n, cols in zip(normed, columns))
    logits_TxM = logits_TxM.astype(jnp.float32)
    weights_TxM = jnp.exp(logits_TxM - jnp.max(logits_TxM, axis=1, keepdims=True))
    probs_TxM = (weights_TxM / jnp.sum(weights_TxM, axis=1, keepdims=True)).astype(dtype)
    for c, cols in enumerate(columns):
      out_chunks[c] = out_chunks[c] + plt.dot(probs_TxM, values_ref[head, :, cols]).astype(jnp.float32)
  for out, cols in zip(out_chunks, columns):
    out_ref[:, cols] = out.astype(out_ref.dtype)


def _memory_read_pallas(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps: float):
  batch, length, width = h_BxLxD.shape
  num_heads, slots = keys_BxHxMxD.shape[1:3]
  tokens = _largest_power_of_two_factor(length, 64)
  chunk = _largest_power_of_two_factor(width, 256)
  slot_spec = pl.BlockSpec((None, num_heads, slots, width), lambda b, i: (b, 0, 0, 0))
  token_spec = pl.BlockSpec((None, tokens, width), lambda b, i: (b, i, 0))
  return pl.pallas_call(
      functools.partial(_memory_read_kernel, eps=eps, chunk=chunk),
      out_shape=jax.ShapeDtypeStruct(h_BxLxD.shape, h_BxLxD.dtype),
      grid=(batch, length // tokens),
      in_specs=[token_spec, pl.BlockSpec((width,), lambda b, i: (0,)), slot_spec, slot_spec],
      out_specs=token_spec,
      interpret=jax.default_backend() == "cpu",
      compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
      name="eco_memory_read",
  )(h_BxLxD, scale_D, keys_BxHxMxD.astype(h_BxLxD.dtype), values_BxHxMxD.astype(h_BxLxD.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def memory_read(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps: float):
  """h + sum_h softmax_m(RMSNorm(h) . k~_hm) v~_hm as one Pallas kernel (module docstring); the sizes must satisfy
  `memory_read_fits`. Differentiable: the backward is `memory_read_reference`'s."""
  return _memory_read_pallas(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps)


def _memory_read_forward(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps):
  out = _memory_read_pallas(h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD, eps)
  return out, (h_BxLxD, scale_D, keys_BxHxMxD, values_BxHxMxD)


def _memory_read_backward(eps, residuals, cotangent):
  _, vjp = jax.vjp(lambda *args: memory_read_reference(*args, eps), *residuals)
  return vjp(cotangent)


memory_read.defvjp(_memory_read_forward, _memory_read_backward)
