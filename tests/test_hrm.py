"""HRM denoiser: one-step gradient, ACT halting, static-loop vs while-loop equality, top-k memory, composite loss,
memory carried through the sampler, strategic unmasking, and training on the embedded default."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.models import layers
from dlm_jax.models.hrm import HRMConfig, HRMDenoiser
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.training import checkpoint

# float32: these tests check math and exact replays (the GPU's "auto" dtype is bfloat16).
SMALL = dict(vocab_size=24, max_len=32, num_heads=2, width=32, mlp_dim=64, l_layers=1, h_layers=1, h_cycles=2,
             l_steps=4, memory_cells=6, memory_content=2, memory_top_k=2, dtype="float32")


def build(**overrides):
  return HRMDenoiser(HRMConfig(**{**SMALL, **overrides}), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
  x = jax.random.randint(jax.random.key(0), (2, 32), special_tokens.NUM_SPECIAL, 24)
  return jnp.where(jax.random.bernoulli(jax.random.key(1), 0.5, x.shape), special_tokens.MASK, x)


@pytest.mark.parametrize("gradient", ["one_step", "last_cycle"])
def test_one_step_gradient_is_autodiff_through_the_final_step_only_and_last_cycle_through_all(tokens, gradient):
  model = build(use_h_module=False, act=False, h_cycles=1, gradient=gradient)
  graphdef, state = nnx.split(model)
  loss = lambda logits: jnp.sum(jax.nn.log_softmax(logits)[..., 5])

  def model_loss(s):
    return loss(nnx.merge(graphdef, s)(tokens).logits_BxLxV)

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

  # (jitted: one compile per function instead of one per operation)
  grads, reference, full = (jax.jit(jax.grad(f))(state) for f in (model_loss, final_step_only, unrolled))
  np.testing.assert_allclose(jax.jit(model_loss)(state), jax.jit(unrolled)(state), rtol=1e-5)  # same forward value
  expected, other = (reference, full) if gradient == "one_step" else (full, reference)
  chex.assert_trees_all_close(grads, expected, rtol=1e-5, atol=1e-7)
  differs = jax.tree.map(lambda a, b: not np.allclose(a, b, rtol=1e-3, atol=1e-6), grads, other)
  assert any(jax.tree.leaves(differs))


def test_last_cycle_gradient_changes_only_the_gradient_and_needs_the_static_loop(tokens):
  """The full model (H-module, memory, ACT): gradient="last_cycle" computes the same logits and a different gradient
  (the L-blocks now learn through the last cycle's iterations); with the while loop it is refused."""
  one_step = build(act_g_scale=0.02)
  graphdef, state = nnx.split(one_step)
  through = nnx.merge(graphdef, state)
  through.cfg = dataclasses.replace(one_step.cfg, gradient="last_cycle")
  loss = lambda m: jnp.sum(jax.nn.log_softmax(m(tokens).logits_BxLxV)[..., 5])
  chex.assert_trees_all_close(one_step(tokens).logits_BxLxV, through(tokens).logits_BxLxV, rtol=1e-6, atol=1e-6)
  grad_one, grad_through = (nnx.state(jax.jit(nnx.grad(loss))(m)) for m in (one_step, through))
  l_blocks = lambda g: jax.tree.leaves(g["l_blocks"])
  assert any(not np.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(l_blocks(grad_one), l_blocks(grad_through)))
  with pytest.raises(ConfigError, match="use_while_loop"):
    HRMConfig(**{**SMALL, "gradient": "last_cycle", "use_while_loop": True})


def _identity_l_module(model):
  """Zero the L-blocks' residual branches: f_L(z + inj) = RMSNorm(z + inj), whose fixed point is RMSNorm(inj)."""
  for block in model.l_blocks:
    for block_param in (block.attn.out.kernel, block.mlp.down.kernel):
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
  a = train_mode(tokens)
  b = infer_mode(tokens)
  chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("selection, shape", [("pooled", (5, 9)), ("position", (5, 32, 9)),
                                              ("centered", (5, 32, 9))])
def test_memory_top_k_selects_exactly_k_cells(selection, shape):
  model = build(memory_cells=9, memory_top_k=3, memory_selection=selection)
  z_h = jax.random.normal(jax.random.key(4), (5, 32, 32))
  chosen, gate, balance = model.select_cells(z_h)
  assert chosen.shape == shape
  assert gate.shape == ((5, 1, 1) if selection == "pooled" else (5, 32, 1))
  assert np.all((np.asarray(gate) > 0) & (np.asarray(gate) <= 1))
  np.testing.assert_array_equal(np.sum(chosen, axis=-1), 3)
  assert float(balance) >= 1.0 - 1e-5


def test_memory_read_attends_only_to_each_positions_chosen_cells():
  model = build(memory_cells=6, memory_top_k=3, memory_selection="position")
  z_h = jax.random.normal(jax.random.key(4), (1, 32, 32))
  content = jax.random.normal(jax.random.key(5), (1, 6, 2, 32))
  chosen = np.zeros((1, 32, 6), bool)
  chosen[:, 0, :3] = True  # position 0 reads cells 0-2, every other position cells 3-5
  chosen[:, 1:, 3:] = True
  base = model.read_memory(z_h, content, jnp.asarray(chosen))
  changed = model.read_memory(z_h, content.at[:, 0].add(5.0), jnp.asarray(chosen))
  assert not np.allclose(base[:, 0], changed[:, 0])
  np.testing.assert_allclose(base[:, 1:], changed[:, 1:], atol=1e-6)
  pooled = build(memory_cells=6, memory_top_k=3)  # [B, N]: the same cells for every position
  base = pooled.read_memory(z_h, content, jnp.asarray(chosen[:, 0]))
  np.testing.assert_allclose(base, pooled.read_memory(z_h, content.at[:, 4].add(5.0), jnp.asarray(chosen[:, 0])),
                             atol=1e-6)


def test_composite_loss_terms_finite_and_scale_with_lambda(tokens):
  base = build(memory_weight=0.01, act_weight=0.1, priority_weight=0.1)
  doubled = build(memory_weight=0.02, act_weight=0.2, priority_weight=0.2)
  out, out2 = base(tokens), doubled(tokens)
  losses, metrics, losses2 = out.aux_losses, out.aux_metrics, out2.aux_losses
  assert set(losses) == {"hrm_memory", "hrm_act", "hrm_priority"}
  for name in losses:
    assert np.isfinite(float(losses[name])) and float(losses[name]) > 0
    np.testing.assert_allclose(losses2[name], 2 * losses[name], rtol=1e-5)
  assert 1.0 <= float(metrics["hrm_l_iterations"]) <= SMALL["l_steps"]
  assert build(use_memory=False, act=False, priority_weight=0.0)(tokens).aux_losses == {}


def test_memory_persists_across_sampler_steps(tokens):
  model = build()
  carry = model.init_sample_carry(2)
  _, priority, carry2 = model.sample_step(tokens, jnp.ones((2,)), carry)
  assert carry2.shape == carry.shape and not np.allclose(carry2, carry)
  assert priority.shape == (2, 32)
  # The carried contents are read: step 2 from them differs from step 2 from fresh cells (a sampler step that dropped
  # its carry would still run and sample).
  with_memory, _, _ = model.sample_step(tokens, jnp.full((2,), 0.5), carry2)
  fresh, _, _ = model.sample_step(tokens, jnp.full((2,), 0.5), carry)
  # (4.7e-4 at initialization, where the gate passes k/N of the read; identical inputs give identical logits)
  assert np.abs(np.asarray(with_memory) - np.asarray(fresh)).max() > 1e-5


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


@pytest.mark.parametrize("reset_carry", [False, True])
def test_reset_carry_starts_every_reverse_step_from_the_initial_carry(reset_carry):
  """The carry counts the denoiser's calls and the logits favour token 5 + count: carried from step to step, the
  position revealed at step s holds 5 + s; reset at every step (SamplerConfig.reset_carry), every one holds 5."""
  def denoise(x, t, carry):
    logits = jnp.zeros(x.shape + (12,)).at[..., 5 + carry].set(10.0)
    priority = jnp.broadcast_to(-jnp.arange(x.shape[1], dtype=jnp.float32), x.shape)  # reveal left to right
    return logits, priority, carry + 1

  cfg = sampler_lib.SamplerConfig(steps=6, greedy=True, strategic_weight=1.0, reset_carry=reset_carry,
                                  schedule=sampler_lib.MaskingSchedule("linear"))
  out = sampler_lib.sample(denoise, jax.random.key(0), jnp.zeros((1, 6), jnp.int32), jnp.zeros((1, 6), bool), cfg,
                           init_carry=jnp.zeros((), jnp.int32))
  np.testing.assert_array_equal(out.reveal_step_BxL[0], np.arange(6))
  np.testing.assert_array_equal(out.tokens_BxL[0], np.full(6, 5) if reset_carry else 5 + np.arange(6))


def test_trains_on_embedded_default_and_samples(trained_hrm_run):
  workdir, summary = trained_hrm_run
  history = summary["history"]
  assert np.mean([r["loss"] for r in history[-4:]]) < np.mean([r["loss"] for r in history[:4]])
  for key in ("aux/hrm_memory", "aux/hrm_act", "aux/hrm_priority", "metric/hrm_l_iterations"):
    assert all(np.isfinite(r[key]) for r in history), key
  run = checkpoint.load_for_inference(workdir)
  fixed = jnp.zeros((2, 32), bool).at[:, :4].set(True)
  out = sampler_lib.make_sampler(run.graphdef, run.other, sampler_lib.SamplerConfig(steps=6, strategic_weight=0.5))(
      run.params, jax.random.key(0), jnp.full((2, 32), 9, jnp.int32), fixed)
  assert not np.any(np.asarray(out.tokens_BxL) == special_tokens.MASK)
  np.testing.assert_array_equal(np.asarray(out.tokens_BxL)[:, :4], 9)


def test_inspect_replays_the_samplers_model_calls_and_reports_act_and_memory():
  model = build()
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  steps = 4
  cfg = sampler_lib.SamplerConfig(steps=steps, greedy=True, record_trajectory=True,
                                  schedule=sampler_lib.MaskingSchedule("linear"))
  fixed = jnp.zeros((2, 32), bool).at[:, :3].set(True)
  out = sampler_lib.make_sampler(graphdef, other, cfg)(params, jax.random.key(0), jnp.full((2, 32), 7, jnp.int32),
                                                       fixed)
  trajectory = np.asarray(out.trajectory_SxBxL)
  content = model.init_sample_carry(2)
  for s in range(steps):
    logits, trace, content = model.inspect(jnp.asarray(trajectory[s]), jnp.full((2,), 1.0 - s / steps), content)
    # Greedy: every position revealed at step s got the argmax of the replayed logits -- the replay (with the memory
    # carried from step to step) is the sampler's own computation.
    revealed = (trajectory[s] == special_tokens.MASK) & (trajectory[s + 1] != special_tokens.MASK)
    assert revealed.any()
    candidates = np.asarray(jnp.argmax(sampler_lib.sampling_logits(logits, special_tokens.DEFAULT), axis=-1))
    np.testing.assert_array_equal(candidates[revealed], trajectory[s + 1][revealed])
    iterations = np.asarray(trace["l_iterations_CxBxL"])
    assert iterations.shape == (2, 2, 32)
    np.testing.assert_array_equal(iterations, np.round(iterations))
    assert iterations.min() >= 1 and iterations.max() <= SMALL["l_steps"]
    assert np.all(np.asarray(trace["chosen_cells_CxBxN"]).sum(-1) == SMALL["memory_top_k"])
    assert trace["act_score_BxL"].shape == trace["act_contribution_BxL"].shape == (2, 32)
  no_act = build(act=False, use_memory=False)
  _, trace, _ = no_act.inspect(jnp.asarray(trajectory[0]), jnp.ones((2,)), no_act.init_sample_carry(2))
  np.testing.assert_array_equal(trace["l_iterations_CxBxL"], SMALL["l_steps"])
  assert "chosen_cells_CxBxN" not in trace and "act_score_BxL" not in trace


def test_memory_gate_gives_the_selection_a_gradient_from_the_denoising_loss(tokens):
  """Without the gate, the hard top-k leaves the selection weights W (`select`) with a zero gradient from the main
  loss; with it, they get one."""
  def grad_norm_of_select(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      logits = nnx.merge(graphdef, p, rest)(tokens, jnp.ones((2,))).logits_BxLxV
      return jnp.mean(logits ** 2)  # any function of the logits alone (no auxiliary loss)

    return float(jnp.linalg.norm(jax.jit(jax.grad(loss))(params)["select"]["kernel"][...]))

  assert grad_norm_of_select(build(memory_gate=False)) == 0.0
  assert grad_norm_of_select(build(memory_gate=True)) > 0.0


def test_new_configs_gate_the_read_and_configs_saved_before_the_gate_load_ungated():
  from configs import default
  from conftest import tiny_config
  from dlm_jax import models
  config = tiny_config()
  config.model = default.model_config("hrm")
  assert models.model_config(config, 24).memory_gate is True
  saved = config.model.to_dict()
  del saved["memory_gate"]  # a checkpoint written before the field existed
  config.model = type(config.model)(saved)
  assert models.model_config(config, 24).memory_gate is False


def test_logit_change_rms_equals_the_rms_of_the_logit_difference():
  """ACT's rms change of the logits, computed through the Gram matrix of the tied head, equals the rms over the
  vocabulary of head(z_b) - head(z_a) computed from the logits."""
  model = build()
  z_a, z_b = (jax.random.normal(jax.random.key(k), (2, 32, 32)) for k in (7, 8))
  table = model.embedding[...]
  direct = jnp.sqrt(jnp.mean(jnp.square(model.head(z_b) - model.head(z_a)), axis=-1))
  via_gram = model.logit_change_rms(model.head_features(z_a), model.head_features(z_b), table.T @ table / 24)
  np.testing.assert_allclose(via_gram, direct, rtol=1e-4)
  np.testing.assert_array_equal(model.logit_change_rms(model.head_features(z_a), model.head_features(z_a),
                                                       table.T @ table / 24), 0.0)
