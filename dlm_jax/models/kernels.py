"""Pallas kernels for the hot paths XLA leaves memory-bound, each beside the plain-JAX reference it must equal.

Both are written for Pallas's Triton lowering (GPU), whose loads and stores must have power-of-two sizes: they work in
tiles of rows x C channels, C the largest power of two <= 256 dividing D; `*_fits` says whether sizes qualify and the
callers take the XLA form otherwise. On CPU they run in Pallas's interpret mode (slow: for tests).

`memory_read`: EcoHybrid's memory read with its residual, one pass over the tokens,

    out_l = h_l + sum_h softmax_m( RMSNorm(h_l) . k~_hm ) v~_hm                        (per token l, head h, slot m)

with k~, v~ [B, H, M, D] the slots' keys and values with the read's W_q and W_o folded in (`CrossAttention.
absorbed_context`). Under XLA the read writes the normalized tokens, the [B, L, H, M] logits and probabilities and the
[B, L, D] read to memory and reads them back; the kernel reads each token tile once and writes its output once
(2 B L D elements, the unavoidable traffic). The GPU measured XLA's hot path at 4.5-14x its unavoidable bytes, which
by the rule in dlm_jax/benchmarks/hot_path.py calls for a kernel.

Its tiles are T tokens (a power of two >= 16 dividing L) and it needs M a power of two >= 16 (the minimum size of a
Triton matmul). Its backward is the XLA reference's (`jax.vjp` of `memory_read_reference`, recomputed): the gradients
of k~ and v~ reduce over every token, which a token-tiled kernel would write as [L / T, H M, D] partial sums, more
than its input.

`add_rms_norm`: the residual add and the RMSNorm after it (each transformer block's attention residual and MLP norm),

    total = h + branch,   normed = total / sqrt(mean(total^2) + eps) * scale,

forward and backward as row-tiled kernels. XLA computes the row statistic in one kernel and applies it in another,
reading `total` back; the kernel reads h and branch once and writes total and normed once. Its backward,
    g_h = g_branch = g_total + r (g_n - n mean(n g_n)),   g_n = g_normed scale,  n = total r,  r = 1/rms(total),
    g_scale = sum over rows of g_normed n,
is one row-local pass too, writing the scale gradient as [rows / T, D] partial sums (1/T of its input) that XLA adds.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt


KERNEL_NAMES = ("eco_memory_read", "add_rms_norm_forward", "add_rms_norm_backward")  # as they appear in profiles


def _largest_power_of_two_factor(n: int, cap: int) -> int:
  factor = 1
  while factor * 2 <= cap and n % (factor * 2) == 0:
    factor *= 2
  return factor


def _column_chunks(width: int) -> list:
  """The channel slices the kernels load and store: chunks of the largest power of two <= 256 dividing D."""
  chunk = _largest_power_of_two_factor(width, 256)
  return [pl.ds(c * chunk, chunk) for c in range(width // chunk)]


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


def _memory_read_kernel(h_ref, scale_ref, keys_ref, values_ref, out_ref, *, eps: float, columns):
  """One tile of T tokens: h_ref/out_ref [T, D], scale_ref [D], keys_ref/values_ref [H, M, D]."""
  width = h_ref.shape[-1]
  num_heads = keys_ref.shape[0]
  dtype = h_ref.dtype
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
  slot_spec = pl.BlockSpec((None, num_heads, slots, width), lambda b, i: (b, 0, 0, 0))
  token_spec = pl.BlockSpec((None, tokens, width), lambda b, i: (b, i, 0))
  return pl.pallas_call(
      functools.partial(_memory_read_kernel, eps=eps, columns=_column_chunks(width)),
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


# -- add_rms_norm -------------------------------------------------------------------------------------------------------
_ROWS = 32  # rows per tile (at most)


def add_rms_norm_fits(rows: int, width: int) -> bool:
  """Whether `add_rms_norm`'s kernels take `rows` x `width` (D) inputs."""
  return _largest_power_of_two_factor(rows, _ROWS) >= 8 and _largest_power_of_two_factor(width, 256) >= 16


def add_rms_norm_reference(h, branch, scale_D, eps: float):
  """(h + branch, RMSNorm(h + branch)) in h's dtype: the XLA form of `add_rms_norm`."""
  total = h + branch.astype(h.dtype)
  return total, rms_normalize(total, scale_D, eps).astype(h.dtype)


def _row_tiling(rows: int, width: int):
  return _largest_power_of_two_factor(rows, _ROWS), _column_chunks(width)


def _add_rms_norm_forward_kernel(h_ref, branch_ref, scale_ref, total_ref, normed_ref, *, eps: float, columns):
  width = h_ref.shape[-1]
  totals = [(h_ref[:, cols] + branch_ref[:, cols].astype(h_ref.dtype)) for cols in columns]
  totals32 = [t.astype(jnp.float32) for t in totals]
  inv_rms_Tx1 = jax.lax.rsqrt(sum(jnp.sum(t * t, axis=1) for t in totals32) / width + eps)[:, None]
  for t, t32, cols in zip(totals, totals32, columns):
    total_ref[:, cols] = t
    normed_ref[:, cols] = (t32 * inv_rms_Tx1 * scale_ref[cols].astype(jnp.float32)[None, :]).astype(normed_ref.dtype)


def _add_rms_norm_backward_kernel(total_ref, scale_ref, g_total_ref, g_normed_ref, g_in_ref, g_scale_ref, *,
                                  eps: float, columns):
  width = total_ref.shape[-1]
  totals = [total_ref[:, cols].astype(jnp.float32) for cols in columns]
  inv_rms_Tx1 = jax.lax.rsqrt(sum(jnp.sum(t * t, axis=1) for t in totals) / width + eps)[:, None]
  normed = [t * inv_rms_Tx1 for t in totals]  # n = total / rms, before the scale
  g_normed = [g_normed_ref[:, cols].astype(jnp.float32) for cols in columns]
  g_n = [g * scale_ref[cols].astype(jnp.float32)[None, :] for g, cols in zip(g_normed, columns)]
  mean_ng_Tx1 = (sum(jnp.sum(n * g, axis=1) for n, g in zip(normed, g_n)) / width)[:, None]
  for n, g, gn, cols in zip(normed, g_n, g_normed, columns):
    g_in = g_total_ref[:, cols].astype(jnp.float32) + inv_rms_Tx1 * (g - n * mean_ng_Tx1)
    g_in_ref[:, cols] = g_in.astype(g_in_ref.dtype)
    g_scale_ref[:, cols] = jnp.sum(gn * n, axis=0, keepdims=True)


def _rows_call(kernel, inputs, outputs, width: int, rows: int, *, name: str):
  """A pallas_call over row tiles of [rows, width] inputs; `inputs`/`outputs` list which are row-tiled ("rows"),
  the whole [width] vector ("vector") or [rows / tile, width] partial sums ("partial")."""
  tile, _ = _row_tiling(rows, width)
  spec = {"rows": pl.BlockSpec((tile, width), lambda i: (i, 0)), "vector": pl.BlockSpec((width,), lambda i: (0,)),
          "partial": pl.BlockSpec((1, width), lambda i: (i, 0))}
  return pl.pallas_call(kernel, out_shape=[o[1] for o in outputs], grid=(rows // tile,),
                        in_specs=[spec[kind] for kind in inputs], out_specs=[spec[o[0]] for o in outputs],
                        interpret=jax.default_backend() == "cpu",
                        compiler_params=plt.CompilerParams(num_warps=4, num_stages=1), name=name)


def _add_rms_norm_pallas(h, branch, scale_D, eps):
  shape, width = h.shape, h.shape[-1]
  h2, branch2 = h.reshape(-1, width), branch.reshape(-1, width).astype(h.dtype)
  rows = h2.shape[0]
  _, columns = _row_tiling(rows, width)
  kernel = functools.partial(_add_rms_norm_forward_kernel, eps=eps, columns=columns)
  out = jax.ShapeDtypeStruct(h2.shape, h.dtype)
  total, normed = _rows_call(kernel, ["rows", "rows", "vector"], [("rows", out), ("rows", out)], width, rows,
                             name="add_rms_norm_forward")(h2, branch2, scale_D)
  return total.reshape(shape), normed.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def add_rms_norm(h, branch, scale_D, eps: float):
  """(h + branch, RMSNorm(h + branch) * scale) as Pallas kernels, forward and backward (module docstring); sizes must
  satisfy `add_rms_norm_fits` (rows = all leading dimensions together)."""
  return _add_rms_norm_pallas(h, branch, scale_D, eps)


def _add_rms_norm_forward(h, branch, scale_D, eps):
  total, normed = _add_rms_norm_pallas(h, branch, scale_D, eps)
  return (total, normed), (total, scale_D, jnp.zeros((), branch.dtype))  # the last: branch's dtype


def _add_rms_norm_backward(eps, residuals, cotangents):
  total, scale_D, branch_like = residuals
  g_total, g_normed = cotangents
  shape, width = total.shape, total.shape[-1]
  rows = math.prod(shape[:-1])
  tile, columns = _row_tiling(rows, width)
  kernel = functools.partial(_add_rms_norm_backward_kernel, eps=eps, columns=columns)
  g_in, g_scale_partial = _rows_call(
      kernel, ["rows", "vector", "rows", "rows"],
      [("rows", jax.ShapeDtypeStruct((rows, width), total.dtype)),
       ("partial", jax.ShapeDtypeStruct((rows // tile, width), jnp.float32))], width, rows,
      name="add_rms_norm_backward")(total.reshape(rows, width), scale_D, g_total.reshape(rows, width),
                                    g_normed.reshape(rows, width))
  g_in = g_in.reshape(shape)
  return g_in, g_in.astype(branch_like.dtype), jnp.sum(g_scale_partial, axis=0).astype(scale_D.dtype)


add_rms_norm.defvjp(_add_rms_norm_forward, _add_rms_norm_backward)
