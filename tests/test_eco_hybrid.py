"""EcoHybrid: shapes, linear cost in T (compiled FLOP counts), routing and load balancing, slow memory slots, and the
trainer + sampler on the embedded default."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import default as default_config
from conftest import tiny_config
from dlm_jax.benchmarks import hot_path
from dlm_jax.models.eco_hybrid import EcoBlock, EcoHybrid, EcoHybridConfig
from dlm_jax.models.layers import route_top_k
from dlm_jax.models.transformer import Transformer, TransformerConfig
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.special_tokens import MASK
from dlm_jax.training import checkpoint, loop

# float32: these tests check math (the GPU's "auto" dtype is bfloat16); the information-flow test also runs in bf16.
# The second and third variants of a parametrized equality run in the slow run (-m slow): the first guards the code
# path, the others the options' branches.
SLOW = pytest.mark.slow
SMALL = dict(vocab_size=20, max_len=1024, num_layers=2, num_heads=2, width=32, mlp_dim=64, memory_slots=4,
             dtype="float32")


def build(**overrides):
  return EcoHybrid(EcoHybridConfig(**{**SMALL, **overrides}), rngs=nnx.Rngs(0))


def test_shapes_and_aux_losses():
  tokens = jax.random.randint(jax.random.key(0), (3, 40), 0, 20)
  out = build()(tokens)
  assert out.logits_BxLxV.shape == (3, 40, 20) and out.aux_losses == {} and out.aux_metrics == {}
  aux = build(route_top_k=2, balance_weight=0.5)(tokens).aux_losses
  assert set(aux) == {"eco_balance"} and np.isfinite(float(aux["eco_balance"]))
  assert float(aux["eco_balance"]) >= 0.5 * 1.0 - 1e-5  # balance >= 1 (Cauchy-Schwarz), times the weight


def test_depthwise_conv_matches_lax_conv():
  from dlm_jax.models.eco_hybrid import DepthwiseConv
  conv = DepthwiseConv(8, 5, dtype=jnp.float32, rngs=nnx.Rngs(0))
  conv.bias[...] = jax.random.normal(jax.random.key(5), (8,))
  x = jax.random.normal(jax.random.key(6), (2, 19, 8))
  reference = jax.lax.conv_general_dilated(x, conv.kernel[...][:, None, :], window_strides=(1,), padding="SAME",
                                           dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=8)
  np.testing.assert_allclose(conv(x), reference + conv.bias[...][None, None], rtol=1e-5, atol=1e-5)


def _forward_flops(model, length):
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits_BxLxV)
  cost = fn.lower(state, jnp.zeros((2, length), jnp.int32)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_cost_is_linear_in_sequence_length():
  """Doubling T doubles EcoHybrid's compiled FLOPs; the baseline's attention makes its count grow faster."""
  eco = build(route_top_k=2)
  ratio = _forward_flops(eco, 1024) / _forward_flops(eco, 512)
  assert 1.9 < ratio < 2.05, ratio
  # XLA attention: cuDNN's is a custom call whose FLOPs cost_analysis does not count.
  baseline = Transformer(TransformerConfig(vocab_size=20, max_len=1024, num_layers=2, num_heads=2, width=32,
                                           mlp_dim=64, dtype="float32", attention="xla"), rngs=nnx.Rngs(0))
  assert _forward_flops(baseline, 1024) / _forward_flops(baseline, 512) > 2.5


def test_routing_picks_exactly_k_and_balance_loss_extremes():
  logits = jax.random.normal(jax.random.key(1), (2, 50, 8))
  chosen, gate, balance = route_top_k(logits, 3)
  np.testing.assert_array_equal(np.sum(chosen, axis=-1), 3)
  assert np.all((gate > 0) & (gate <= 1))
  # Uniform router, every slot used equally (token i picks slots i, i+1 mod 8 at k=2 after a tiny tilt).
  tilt = jax.nn.one_hot(jnp.arange(64) % 8, 8) * 1e-6 + jax.nn.one_hot((jnp.arange(64) + 1) % 8, 8) * 5e-7
  _, _, uniform = route_top_k(tilt[None], 2)
  np.testing.assert_allclose(uniform, 1.0, rtol=1e-5)
  # Collapse: every token puts all mass on slots 0 and 1: balance = M * (1/2 * 1/2 + 1/2 * 1/2) = M / k.
  collapsed = jnp.broadcast_to(jnp.asarray([50.0, 50.0, 0, 0, 0, 0, 0, 0]), (1, 10, 8))
  _, _, worst = route_top_k(collapsed, 2)
  np.testing.assert_allclose(worst, 8 / 2, rtol=1e-5)


def test_slow_slots_are_written_only_every_slow_every_blocks():
  model = build(slow_slots=2, slow_every=2)
  block = model.blocks[0]
  h = jax.random.normal(jax.random.key(2), (2, 16, 32))
  mem = jax.random.normal(jax.random.key(3), (2, 4, 32))
  early = block.write_memory(h, mem, jnp.asarray(0))
  np.testing.assert_array_equal(early[:, 2:], mem[:, 2:])  # slow slots untouched in block 0
  assert not np.allclose(early[:, :2], mem[:, :2])  # fast slots written
  late = block.write_memory(h, mem, jnp.asarray(1))
  assert not np.allclose(late[:, 2:], mem[:, 2:])  # block 1 = slow_every - 1: slow slots written


def test_slow_slots_train_at_their_own_learning_rate():
  """Seed 001 §9.3: the slow slots' initial state is its own parameter and its update is exactly
  optimizer.slow_slots_lr_scale times what the fast slots' update would be for the same value and gradient."""
  from dlm_jax.training import optimizer
  # (no weight decay: after the first update the two parameters differ, and so would their decay terms)
  config = tiny_config(**{"optimizer.slow_slots_lr_scale": 0.25, "optimizer.warmup_steps": 0,
                          "optimizer.weight_decay": 0.0})
  config.model = default_config.model_config("eco_hybrid")
  config.model.update(memory_slots=4, slow_slots=2)
  model = build(slow_slots=2, slow_every=2)
  params = nnx.state(model, nnx.Param)
  assert params["memory_init"].shape == params["slow_memory_init"].shape == (2, 32)
  # same value and gradient for the fast and the slow slots; every other parameter gets a zero gradient
  # (Variable.replace keeps each parameter's metadata, its logical axes, which is part of the tree's structure)
  params["slow_memory_init"] = params["slow_memory_init"].replace(params["memory_init"][...])
  grad = jax.random.normal(jax.random.key(4), (2, 32))
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["memory_init"] = grads["memory_init"].replace(grad)
  grads["slow_memory_init"] = grads["slow_memory_init"].replace(grad)
  tx = optimizer.make_optimizer(config.optimizer, 10, config.model)
  opt_state = tx.init(params)
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    fast, slow = updates["memory_init"][...], updates["slow_memory_init"][...]
    assert np.abs(fast).max() > 0
    np.testing.assert_allclose(slow, 0.25 * fast, rtol=1e-5)
    params = optax.apply_updates(params, updates)
  # without slow slots (or at scale 1) the optimizer is the plain chain: checkpoints keep their structure
  plain = jax.tree.structure(optimizer.make_optimizer(config.optimizer, 10).init(nnx.state(build(), nnx.Param)))
  config.model.slow_slots = 0
  assert jax.tree.structure(optimizer.make_optimizer(config.optimizer, 10, config.model).init(
      nnx.state(build(), nnx.Param))) == plain


def test_slow_slot_parameter_split_keeps_the_function():
  """The fast and slow initial slots concatenated are the memory the blocks start from."""
  model = build(slow_slots=1)
  memory = model.initial_memory(jnp.zeros((2, 5), jnp.int32))
  np.testing.assert_array_equal(memory[0, :3], model.memory_init[...])
  np.testing.assert_array_equal(memory[1, 3:], model.slow_memory_init[...])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("order", ["write_read", "read_write"])
def test_information_flows_globally_through_memory(order, dtype):
  """Position 0's logits depend on position 63, far outside the conv window (2 layers of kernel 3 reach 2 positions):
  the derivative with respect to position 63's learned position vector is nonzero, through the slots only.

  (At initialization the slot path is weak: changing token 63 moves position 0's logits by ~1e-5 relative, which
  float32 resolves and bfloat16 rounds away in the forward pass. The derivative exposes the dependency in both.)"""
  model = build(memory_order=order, conv_kernel=3, dtype=dtype)
  tokens = jax.random.randint(jax.random.key(4), (1, 64), 0, 20)
  graphdef, positions, rest = nnx.split(model, nnx.PathContains("positions"), ...)

  def position_0_logits(positions):
    return jnp.sum(nnx.merge(graphdef, positions, rest)(tokens).logits_BxLxV[0, 0].astype(jnp.float32))

  grad_LxD = np.asarray(jax.tree.leaves(jax.jit(jax.grad(position_0_logits))(positions))[0], np.float32)
  assert np.abs(grad_LxD[63]).max() > 0, "no path from position 63 to position 0"
  assert np.abs(grad_LxD[:3]).min(axis=-1).max() > 100 * np.abs(grad_LxD[3:]).max(), "the conv reach dominates"


@pytest.mark.parametrize("overrides", [dict(), pytest.param(dict(memory_order="read_write", slow_slots=4), marks=SLOW),
                                       pytest.param(dict(route_top_k=3), marks=SLOW)])
def test_memory_attention_forms_compute_the_same_function_and_gradient(overrides):
  """"projected", "absorbed" and "pallas" (the read as a Pallas kernel, interpret mode here) are one function of the
  same parameters: equal logits, aux losses and gradients up to float32 rounding."""
  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 20)
  forms = ["projected", "absorbed"] + ([] if overrides.get("route_top_k") else ["pallas"])

  def loss_and_grads(form):
    model = build(memory_slots=16, memory_attention=form, **overrides)
    graphdef, params = nnx.split(model)

    def loss(p):
      out = nnx.merge(graphdef, p)(tokens)
      return jnp.sum(jnp.sin(out.logits_BxLxV)) + sum(out.aux_losses.values())

    return jax.jit(jax.value_and_grad(loss))(params)

  with jax.default_matmul_precision("highest"):
    results = {form: loss_and_grads(form) for form in forms}
  for form in forms[1:]:
    chex.assert_trees_all_close(results[form], results["projected"], rtol=2e-4, atol=2e-5)


def test_pallas_memory_read_falls_back_where_the_kernel_cannot_run():
  """With dropout active, or a length without a power-of-two tile >= 16, the read takes the XLA absorbed form; a
  config the kernel can never run is refused."""
  model = build(memory_slots=16, memory_attention="pallas", dropout=0.1)
  jaxpr_of = lambda length, deterministic: str(jax.make_jaxpr(
      lambda t: model(t, deterministic=deterministic, dropout_key=jax.random.key(1)).logits_BxLxV)(
          jnp.zeros((1, length), jnp.int32)))
  assert "eco_memory_read" in jaxpr_of(32, True)
  assert "eco_memory_read" not in jaxpr_of(32, False)  # dropout on the read: XLA
  assert "eco_memory_read" not in jaxpr_of(40, True)  # 40 = 8 x 5
  with pytest.raises(ValueError, match="memory_attention='pallas'"):
    build(memory_slots=16, memory_attention="pallas", route_top_k=2)
  with pytest.raises(ValueError, match="memory_attention='pallas'"):
    build(memory_slots=4, memory_attention="pallas")
  with pytest.raises(ValueError, match="memory_attention"):
    build(memory_attention="flash")


def test_rejects_bad_config():
  with pytest.raises(ValueError, match="route_top_k"):
    build(route_top_k=5)
  with pytest.raises(ValueError, match="conv_kernel"):
    build(conv_kernel=4)
  with pytest.raises(ValueError, match="causal"):
    build(causal=True)


def test_trains_on_embedded_default_and_samples(tmp_path):
  config = tiny_config(**{"train.num_steps": 16, "eval.every": 0})
  config.model = default_config.model_config("eco_hybrid")
  config.model.update(dict(num_layers=2, num_heads=2, width=32, mlp_dim=64, memory_slots=4, conv_kernel=5,
                           route_top_k=2))
  summary = loop.train(config, str(tmp_path))
  losses = [r["loss"] for r in summary["history"]]
  assert np.mean(losses[-4:]) < np.mean(losses[:4])
  assert all("aux/eco_balance" in r for r in summary["history"])
  run = checkpoint.load_for_inference(tmp_path)
  fixed = jnp.zeros((2, 32), bool).at[:, :4].set(True)
  tokens = jnp.full((2, 32), 7, jnp.int32)
  out = sampler_lib.make_sampler(run.graphdef, run.other, sampler_lib.SamplerConfig(steps=8))(
      run.params, jax.random.key(0), tokens, fixed)
  assert not np.any(np.asarray(out.tokens_BxL) == 3)
  np.testing.assert_array_equal(np.asarray(out.tokens_BxL)[:, :4], 7)


HLO_WITH_LOOP = """HloModule m

%fused_computation (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %e = f32[4]{0} exponential(%p)
}

%body (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %x = f32[4]{0} get-tuple-element(%t), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation
  %g = f32[4]{0} custom-call(%f), custom_call_target="__cublas$gemm"
  ROOT %r = (s32[], f32[4]{0}) tuple(%x, %g)
}

%cond (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %f0 = f32[4]{0} fusion(%a), kind=kInput, calls=%fused_computation
  %w = (s32[], f32[4]{0}) while(%i), condition=%cond, body=%body
  ROOT %o = f32[4]{0} get-tuple-element(%w), index=1
}
"""


def test_kernel_census_walks_loop_bodies_but_not_fused_computations():
  assert hot_path.kernel_census(HLO_WITH_LOOP) == {"fusion:kInput": 1, "fusion:kLoop": 1,
                                                    "custom-call:__cublas$gemm": 1}


@pytest.mark.parametrize("form", ["projected", "absorbed"])
def test_hot_path_flop_formula_matches_xla_and_the_analysis_runs(form):
  cfg = EcoHybridConfig(**{**SMALL, "conv_kernel": 5, "memory_slots": 16, "memory_attention": form})
  block = EcoBlock(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(block)
  h, mem = jnp.ones((2, 64, 32)), jnp.ones((2, 16, 32))
  compiled = jax.jit(lambda s, h, m: hot_path.hot_path(nnx.merge(graphdef, s), h, m)).lower(state, h, mem).compile()
  xla_flops = compiled.cost_analysis()["flops"]
  # XLA also counts the norms' and softmaxes' elementwise FLOPs: a few percent above the matmul/conv count.
  assert 1.0 <= xla_flops / hot_path.hot_path_flops(2, 64, cfg) <= 1.15
  census = hot_path.kernel_census(compiled.as_text())
  assert sum(census.values()) >= 1 and all(not k.startswith(("parameter", "tuple")) for k in census)
  rows = hot_path.analyze(cfg, batch=2, seq_len=64, repeats=2, bandwidth=1e10, peak_flops=1e12)
  assert [r["mode"] for r in rows] == ["forward", "forward+backward"] and rows[0]["form"] == form
  fwd, both = rows
  assert both["flops"] == 3 * fwd["flops"] and both["ideal_bytes"] > fwd["ideal_bytes"]
  for r in rows:
    assert r["xla_bytes"] >= r["ideal_bytes"] > 0 and r["ms"] > 0 and r["fused_kernel_gain"] > 0
    assert isinstance(r["memory_bound"], bool) and isinstance(r["write_kernel"], bool)


@pytest.mark.parametrize("overrides", [dict(), pytest.param(dict(memory_order="read_write", route_top_k=2,
                                                                 memory_attention="projected", conv_kernel=5),
                                                            marks=SLOW)])
def test_dual_cache_prefill_and_unchanged_step_equal_the_full_forward(overrides):
  """EcoHybrid's dual cache keeps each layer's input states (the convolution's neighbours) and the slots it read:
  with nothing changed, a step over some rows recomputes the full forward's logits there; the sampler runs with it."""
  model = build(**overrides)
  tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 20)
  positions = jnp.asarray([[0, 1, 2, 3], [20, 21, 22, 23]], jnp.int32)  # both sequence ends: the zero padding
  full = nnx.jit(lambda m, x: m(x).logits_BxLxV)(model, tokens)  # (jitted: one compile, not one per operation)
  gathered = jnp.take_along_axis(full, positions[..., None], axis=1)
  prefill_logits, cache = nnx.jit(lambda m, x, p: m.kv_prefill(x, None, p))(model, tokens, positions)
  np.testing.assert_allclose(prefill_logits, gathered, rtol=1e-5, atol=1e-5)
  step_logits, new_cache = nnx.jit(lambda m, x, p, c: m.kv_step(x, None, p, c))(model, tokens, positions, cache)
  np.testing.assert_allclose(step_logits, gathered, rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_close(new_cache, cache, rtol=1e-5, atol=1e-5)
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  fixed = jnp.zeros((2, 24), bool).at[:, :4].set(True)
  for cache in ("dual", "prefix"):
    cfg = sampler_lib.SamplerConfig(steps=10, block_length=5, cache=cache)
    out = sampler_lib.make_sampler(graphdef, other, cfg)(params, jax.random.key(0), tokens, fixed)
    assert not bool(jnp.any(out.tokens_BxL == MASK))
    np.testing.assert_array_equal(out.tokens_BxL[:, :4], tokens[:, :4])
