"""HRM denoiser: one-step gradient, ACT halting, static-loop vs while-loop equality, top-k memory, composite loss,
memory carried through the sampler, strategic unmasking, and training on the embedded default."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from conftest import tiny_config
from dlm_jax import special_tokens
from dlm_jax.models import layers
from dlm_jax.models.hrm import HRMConfig, HRMDenoiser
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.training import checkpoint, loop

SMALL = dict(vocab_size=24, max_len=32, num_heads=2, width=32, mlp_dim=64, l_layers=1, h_layers=1, h_cycles=2,
             l_steps=4, memory_cells=6, memory_content=2, memory_top_k=2)


def build(**overrides):
  return HRMDenoiser(HRMConfig(**{**SMALL, **overrides}), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
  x = jax.random.randint(jax.random.key(0), (2, 32), special_tokens.NUM_SPECIAL, 24)
  return jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, x.shape), special_tokens.MASK, x)


def test_one_step_gradient_is_autodiff_through_the_final_step_only(tokens):
  model = build(use_h_module=False, act=False, h_cycles=1)
  graphdef, state = nnx.split(model)
  loss = lambda logits: jnp.sum(jax.nn.log_softmax(logits)[..., 5])

  def model_loss(s):
    return loss(nnx.merge(graphdef, s)(tokens))

  def embed(m):
    return m.input_norm(jax.nn.one_hot(tokens, 24, dtype=jnp.float32) @ m.embedding[...])

  rope = layers.rope_tables(32, 16)
  z0 = jnp.broadcast_to(model.z_l_init[...], (2, 32, 32))
  z_star, _ = model.l_loop(z0, embed(model), rope, True, False)  # the halted state, a constant

  def final_step_only(s):
    m = nnx.merge(graphdef, s)
    return loss(m.head(m.f_l(z_star, embed(m), rope, None, True)))

  def unrolled(s):  # backpropagation through every iteration: what the one-step gradient avoids
    m = nnx.merge(graphdef, s)
    z = z0
    for _ in range(5):
      z = m.f_l(z, embed(m), rope, None, True)
    return loss(m.head(z))

  grads, reference, full = (jax.grad(f)(state) for f in (model_loss, final_step_only, unrolled))
  np.testing.assert_allclose(model_loss(state), unrolled(state), rtol=1e-5)  # same forward value
  chex.assert_trees_all_close(grads, reference, rtol=1e-5, atol=1e-7)
  differs = jax.tree.map(lambda a, b: not np.allclose(a, b, rtol=1e-3, atol=1e-6), grads, full)
  assert any(jax.tree.leaves(differs))


def _identity_l_module(model):
  """Zero the L-blocks' residual branches: f_L(z + inj) = RMSNorm(z + inj), whose fixed point is RMSNorm(inj)."""
  for block_param in (model.l_blocks.attn.out.kernel, model.l_blocks.mlp.down.kernel):
    block_param[...] = jnp.zeros_like(block_param[...])
  return model


def test_act_halts_on_converged_input_and_runs_to_max_otherwise():
  model = _identity_l_module(build(act_g_scale=1e-4, l_steps=5))
  inj = jax.random.normal(jax.random.key(2), (2, 32, 32))
  rope = layers.rope_tables(32, 16)
  converged = model.l_out_norm(inj)  # already the fixed point: the first iteration changes nothing
  far = 10.0 * jax.random.normal(jax.random.key(3), (2, 32, 32))
  for use_while in (False, True):
    _, stats = model.l_loop(converged, inj, rope, True, use_while)
    np.testing.assert_array_equal(stats.iterations_BxL, 1.0)
    _, stats = model.l_loop(far, inj, rope, True, use_while)
    np.testing.assert_array_equal(stats.iterations_BxL, 5.0)


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_static_loop_with_masks_equals_while_loop(tokens, granularity):
  train_mode = build(act_granularity=granularity, act_g_scale=0.02, l_steps=6)
  graphdef, state = nnx.split(train_mode)
  infer_mode = nnx.merge(graphdef, state)
  infer_mode.cfg = dataclasses.replace(train_mode.cfg, use_while_loop=True)
  a = train_mode.forward_with_aux(tokens)
  b = infer_mode.forward_with_aux(tokens)
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)


def test_memory_top_k_selects_exactly_k_cells():
  model = build(memory_cells=9, memory_top_k=3)
  chosen, balance = model.select_cells(jax.random.normal(jax.random.key(4), (5, 32, 32)))
  np.testing.assert_array_equal(np.sum(chosen, axis=-1), 3)
  assert float(balance) >= 1.0 - 1e-5


def test_composite_loss_terms_finite_and_scale_with_lambda(tokens):
  base = build(memory_weight=0.01, act_weight=0.1, priority_weight=0.1)
  doubled = build(memory_weight=0.02, act_weight=0.2, priority_weight=0.2)
  _, losses, metrics = base.forward_with_aux(tokens)
  _, losses2, _ = doubled.forward_with_aux(tokens)
  assert set(losses) == {"hrm_memory", "hrm_act", "hrm_priority"}
  for name in losses:
    assert np.isfinite(float(losses[name])) and float(losses[name]) > 0
    np.testing.assert_allclose(losses2[name], 2 * losses[name], rtol=1e-5)
  assert 1.0 <= float(metrics["hrm_l_iterations"]) <= SMALL["l_steps"]
  _, off, _ = build(use_memory=False, act=False, priority_weight=0.0).forward_with_aux(tokens)
  assert off == {}


def test_memory_persists_across_sampler_steps(tokens):
  model = build()
  carry = model.init_sample_carry(2)
  _, priority, carry2 = model.sample_step(tokens, jnp.ones((2,)), carry)
  assert carry2.shape == carry.shape and not np.allclose(carry2, carry)
  assert priority.shape == (2, 32)


def test_strategic_priority_changes_reveal_order():
  def denoise(x, t, carry):
    logits = jnp.zeros(x.shape + (12,)).at[..., 6].set(1.0)  # the same confidence everywhere
    priority = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.float32), x.shape)  # favour the right end
    return logits, priority, carry + 1

  cfg = sampler_lib.SamplerConfig(steps=8, greedy=True, strategic_weight=1.0,
                                  schedule=sampler_lib.MaskingSchedule("linear"))
  out = sampler_lib.sample(denoise, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8), bool), cfg,
                           init_carry=jnp.zeros(()))
  np.testing.assert_array_equal(out.reveal_step_BxL[0], np.arange(8)[::-1])


def test_trains_on_embedded_default_and_samples(tmp_path):
  config = tiny_config(**{"train.num_steps": 16, "eval.every": 16, "eval.num_windows": 8})
  config.model = default_config.model_config("hrm")
  config.model.update(dict(num_heads=2, width=32, mlp_dim=64, l_layers=1, h_layers=1, h_cycles=2, l_steps=3,
                           memory_cells=4, memory_content=2, memory_top_k=2))
  summary = loop.train(config, str(tmp_path))
  history = summary["history"]
  assert np.mean([r["loss"] for r in history[-4:]]) < np.mean([r["loss"] for r in history[:4]])
  for key in ("aux/hrm_memory", "aux/hrm_act", "aux/hrm_priority", "metric/hrm_l_iterations"):
    assert all(np.isfinite(r[key]) for r in history), key
  _, tokenizer, graphdef, other, params = checkpoint.load_for_inference(tmp_path)
  fixed = jnp.zeros((2, 32), bool).at[:, :4].set(True)
  out = sampler_lib.make_sampler(graphdef, other, sampler_lib.SamplerConfig(steps=6, strategic_weight=0.5))(
      params, jax.random.key(0), jnp.full((2, 32), 9, jnp.int32), fixed)
  assert not np.any(np.asarray(out.tokens_BxL) == special_tokens.MASK)
  np.testing.assert_array_equal(np.asarray(out.tokens_BxL)[:, :4], 9)
