"""Pallas kernels against their plain-JAX references (interpret mode on CPU; the Triton lowering on a GPU)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlm_jax.models import kernels, layers


def read_inputs(batch, length, width, heads, slots, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  h = jax.random.normal(keys[0], (batch, length, width)).astype(dtype)
  scale = 1.0 + 0.1 * jax.random.normal(keys[1], (width,))
  slot_keys = 0.3 * jax.random.normal(keys[2], (batch, heads, slots, width))
  slot_values = jax.random.normal(keys[3], (batch, heads, slots, width))
  return h, scale, slot_keys.astype(dtype), slot_values.astype(dtype)


# (B, L, D, H, M): one tile and one channel chunk; several tiles (48 = 3 x 16) and chunks (96 = 3 x 32).
SHAPES = [(2, 64, 64, 2, 16), (1, 48, 96, 3, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_memory_read_kernel_equals_the_reference_and_its_gradient(shape):
  args = read_inputs(*shape)
  assert kernels.memory_read_fits(shape[1], shape[2], shape[4])
  with jax.default_matmul_precision("highest"):
    out = kernels.memory_read(*args, 1e-6)
    reference = kernels.memory_read_reference(*args, 1e-6)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a, 1e-6))))
    grads = jax.grad(loss(kernels.memory_read), argnums=(0, 1, 2, 3))(*args)
    reference_grads = jax.grad(loss(kernels.memory_read_reference), argnums=(0, 1, 2, 3))(*args)
  chex.assert_trees_all_close(grads, reference_grads, rtol=1e-4, atol=1e-4)


def test_memory_read_kernel_in_bfloat16_is_within_rounding_of_the_reference():
  args = read_inputs(*SHAPES[0], dtype=jnp.bfloat16)
  out = kernels.memory_read(*args, 1e-6)
  assert out.dtype == jnp.bfloat16
  reference = kernels.memory_read_reference(*args, 1e-6).astype(jnp.float32)
  # bf16 keeps 8 bits: outputs of size ~3 round to steps of 1/64; the kernel adds the residual in float32.
  np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=2e-2, atol=2e-2)


def test_memory_read_reference_is_rmsnorm_then_the_absorbed_cross_attention():
  """The kernel's reference is the EcoHybrid read it replaces: h + CrossAttention.attend_short_context(RMSNorm(h),
  slots), with the slots' keys and values from CrossAttention.absorbed_context."""
  batch, length, width, heads, slots = 2, 32, 32, 2, 16
  attention = layers.CrossAttention(width, heads, dtype=jnp.float32, rngs=nnx.Rngs(0))
  norm = nnx.RMSNorm(width, dtype=jnp.float32, rngs=nnx.Rngs(1))
  norm.scale[...] = 1.0 + 0.1 * jax.random.normal(jax.random.key(2), (width,))
  h = jax.random.normal(jax.random.key(3), (batch, length, width))
  memory = jax.random.normal(jax.random.key(4), (batch, slots, width))
  with jax.default_matmul_precision("highest"):
    expected = h + attention.attend_short_context(norm(h), memory)
    keys, values = attention.absorbed_context(memory)
    np.testing.assert_allclose(kernels.memory_read_reference(h, norm.scale[...], keys, values, norm.epsilon),
                               expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(expected, h + attention(norm(h), memory), rtol=1e-5, atol=1e-5)  # the projected form


def test_memory_read_fits_only_power_of_two_tiles_triton_can_load():
  assert kernels.memory_read_fits(1024, 768, 16)  # base_110m:eco: tiles of 64 tokens x 256 channels
  assert kernels.memory_read_fits(48, 96, 32)
  assert not kernels.memory_read_fits(100, 768, 16)  # 100 = 4 x 25: no tile of >= 16 tokens
  assert not kernels.memory_read_fits(1024, 24, 16)  # 24 = 8 x 3: no chunk of >= 16 channels
  assert not kernels.memory_read_fits(1024, 768, 4)  # a Triton matmul needs >= 16 rows
  assert not kernels.memory_read_fits(1024, 768, 24)


@pytest.mark.parametrize("shape", [(2, 16, 64), (3, 24, 96)])  # one channel chunk; 3 chunks of 32 and 9 tiles of 8 rows
def test_add_rms_norm_kernels_equal_the_reference_forward_and_backward(shape):
  keys = jax.random.split(jax.random.key(0), 3)
  h, branch = jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape)
  scale = 1.0 + 0.1 * jax.random.normal(keys[2], shape[-1:])
  assert kernels.add_rms_norm_fits(shape[0] * shape[1], shape[2])
  out, reference = kernels.add_rms_norm(h, branch, scale, 1e-6), kernels.add_rms_norm_reference(h, branch, scale, 1e-6)
  np.testing.assert_array_equal(out[0], reference[0])  # the sum is exact
  np.testing.assert_allclose(out[1], reference[1], rtol=1e-5, atol=1e-6)
  # A loss that weighs both outputs differently, so that each cotangent matters.
  loss = lambda fn: (lambda *a: jnp.sum(jnp.sin(fn(*a, 1e-6)[0])) + jnp.sum(jnp.cos(2.0 * fn(*a, 1e-6)[1])))
  grads = jax.grad(loss(kernels.add_rms_norm), argnums=(0, 1, 2))(h, branch, scale)
  reference_grads = jax.grad(loss(kernels.add_rms_norm_reference), argnums=(0, 1, 2))(h, branch, scale)
  chex.assert_trees_all_close(grads, reference_grads, rtol=1e-5, atol=1e-5)


def test_add_rms_norm_in_bfloat16_and_its_size_rule():
  h = jax.random.normal(jax.random.key(0), (4, 8, 64)).astype(jnp.bfloat16)
  total, normed = kernels.add_rms_norm(h, h, jnp.ones((64,)), 1e-6)
  assert total.dtype == normed.dtype == jnp.bfloat16
  ref_total, ref_normed = kernels.add_rms_norm_reference(h, h, jnp.ones((64,)), 1e-6)
  np.testing.assert_array_equal(total, ref_total)
  np.testing.assert_allclose(normed.astype(jnp.float32), ref_normed.astype(jnp.float32), rtol=1e-2, atol=1e-2)
  assert kernels.add_rms_norm_fits(32 * 1024, 768) and kernels.add_rms_norm_fits(24, 64)
  assert not kernels.add_rms_norm_fits(12, 64)  # 12 = 4 x 3: no tile of >= 8 rows
  assert not kernels.add_rms_norm_fits(64, 24)
