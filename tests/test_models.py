"""The baseline denoiser: shapes, bidirectional vs causal information flow, embedding paths, remat, time input."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlm_jax.models import DenoiserOutput, layers
from dlm_jax.models.transformer import Transformer, TransformerConfig

# float32: these tests check math; the GPU's "auto" dtype (bfloat16) has its own test below.
SMALL = dict(vocab_size=20, max_len=16, num_layers=2, num_heads=2, width=16, mlp_dim=32, dtype="float32")


def build(**overrides):
  return Transformer(TransformerConfig(**{**SMALL, **overrides}), rngs=nnx.Rngs(0))


def logits(model, *args, **kwargs):
  output = model(*args, **kwargs)
  assert isinstance(output, DenoiserOutput) and output.aux_losses == {} and output.aux_metrics == {}
  return output.logits_BxLxV


@pytest.fixture(scope="module")
def tokens():
  return jax.random.randint(jax.random.key(0), (3, 16), 0, 20)


def test_shapes_dtypes_and_per_layer_parameters(tokens):
  model = build()
  out = logits(model, tokens)
  chex.assert_shape(out, (3, 16, 20))
  assert out.dtype == jnp.float32
  assert len(model.blocks) == 2, "one parameter tree per layer"
  chex.assert_trees_all_equal_shapes(nnx.state(model.blocks[0], nnx.Param), nnx.state(model.blocks[1], nnx.Param))
  for leaf in jax.tree.leaves(nnx.state(model.blocks, nnx.Param)):
    assert leaf.dtype == jnp.float32, "parameters are float32 whatever the activation dtype"


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_activation_dtype_follows_the_config_and_backend(tokens, dtype):
  """"auto" is bfloat16 on GPU/TPU and float32 on CPU; the logits come out in the activation dtype, finite."""
  model = build(dtype=dtype)
  out = logits(model, tokens)
  expected = layers.compute_dtype(dtype)
  assert out.dtype == expected
  assert expected == (jnp.float32 if dtype == "auto" and jax.default_backend() == "cpu" else jnp.bfloat16)
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  np.testing.assert_allclose(np.asarray(out, np.float32), logits(build(), tokens), atol=0.05)


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_bidirectional_sees_the_future_causal_does_not(tokens, position):
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 20)
  bidir = build(position=position)
  assert not np.allclose(logits(bidir, tokens)[:, 0], logits(bidir, changed)[:, 0])
  causal = build(position=position, causal=True)
  np.testing.assert_allclose(logits(causal, tokens)[:, :-1], logits(causal, changed)[:, :-1], atol=1e-5)


def test_one_hot_embedding_equals_gather(tokens):
  one_hot, gather = build(embed_one_hot=True), build(embed_one_hot=False)
  np.testing.assert_allclose(logits(one_hot, tokens), logits(gather, tokens), rtol=1e-5, atol=1e-5)


def test_remat_changes_nothing_but_memory(tokens):
  def loss_and_grads(model):
    graphdef, params = nnx.split(model)
    f = lambda p: jnp.sum(logits(nnx.merge(graphdef, p), tokens) ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  plain, remat = loss_and_grads(build()), loss_and_grads(build(remat="full"))
  chex.assert_trees_all_close(plain, remat, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["transformer", pytest.param("eco_hybrid", marks=pytest.mark.slow)])
def test_unrolled_layer_loop_computes_the_same_function_and_gradient(tokens, model):
  from dlm_jax.models.eco_hybrid import EcoHybrid, EcoHybridConfig
  make = (lambda **kw: build(**kw)) if model == "transformer" else (
      lambda **kw: EcoHybrid(EcoHybridConfig(**SMALL, memory_slots=4, **kw), rngs=nnx.Rngs(0)))

  def loss_and_grads(m):
    graphdef, params = nnx.split(m)
    f = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens).logits_BxLxV ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  scanned, unrolled = make(layer_loop="scan"), make(layer_loop="unroll")
  assert not scanned.cfg.unroll_layers and unrolled.cfg.unroll_layers
  assert make().cfg.unroll_layers == (jax.default_backend() != "cpu")  # "auto"
  chex.assert_trees_all_close(loss_and_grads(scanned), loss_and_grads(unrolled), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="layer_loop"):
    make(layer_loop="vmap")


def test_per_layer_parameters_are_the_stacked_initialization_sliced():
  """stack_blocks initializes the layers as one nnx.vmap over split rngs (the layout checkpoints had before per-layer
  trees) and slices it: layer i's parameters are the i-th slice, and stacked_layout/per_layer_layout convert."""
  from dlm_jax.models.transformer import Block
  cfg = TransformerConfig(**SMALL)

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make_stacked(rngs):
    return Block(cfg, rngs=rngs)

  stacked = nnx.state(make_stacked(nnx.Rngs(0))).to_pure_dict()
  per_layer = nnx.State({"blocks": nnx.state(layers.stack_blocks(3, lambda r: Block(cfg, rngs=r), nnx.Rngs(0))
                                             ).raw_mapping})
  chex.assert_trees_all_equal(layers.stacked_layout(per_layer).to_pure_dict()["blocks"], stacked)
  chex.assert_trees_all_equal(layers.per_layer_layout(layers.stacked_layout(per_layer), per_layer), per_layer)


@pytest.mark.parametrize("layer_loop", ["scan", "unroll"])
def test_only_the_scanned_loop_builds_stacked_parameter_arrays(tokens, layer_loop):
  """Unrolled, the gradient of each layer's parameters is its own array: the compiled forward + backward holds no
  [num_layers, ...] array shaped like a stacked parameter (on an H100 their assembly was 24 concatenate kernels).
  The scan stacks the parameters, so there they appear (which shows the check can fail)."""
  num_layers = 5  # a size no other dimension of SMALL or of the batch has
  model = build(num_layers=num_layers, layer_loop=layer_loop)
  graphdef, params = nnx.split(model)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens).logits_BxLxV ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  stacked = {"f32[%s]" % ",".join(map(str, (num_layers,) + leaf.shape))
             for leaf in jax.tree.leaves(nnx.state(model.blocks[0]))}
  found = {shape for shape in stacked if shape in hlo}
  assert (found == set()) == (layer_loop == "unroll"), found


def test_fused_add_norm_computes_the_same_function_and_gradient(tokens):
  """model.fused_add_norm (the attention residual + MLP RMSNorm as Pallas kernels, interpret mode here) changes only
  the float rounding; the HRM denoiser's blocks take the switch (and layer_loop) from its config."""
  from dlm_jax.models.hrm import HRMConfig

  def loss_and_grads(fused):
    model = build(fused_add_norm=fused)
    graphdef, params = nnx.split(model)
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(tokens).logits_BxLxV))))(params)

  with jax.default_matmul_precision("highest"):
    chex.assert_trees_all_close(loss_and_grads(True), loss_and_grads(False), rtol=1e-5, atol=1e-6)
  fields = {k: v for k, v in SMALL.items() if k != "num_layers"}
  hrm = HRMConfig(**fields, fused_add_norm=True, layer_loop="unroll").block_config(2)
  assert hrm.fused_add_norm and hrm.layer_loop == "unroll"


def test_time_conditioning_and_dropout(tokens):
  model = build(time_conditioning=True)
  # The output layer of the time MLP starts at zero (adaLN-zero style): t has no effect until trained.
  early, late = jnp.full((3,), 0.1), jnp.full((3,), 0.9)
  np.testing.assert_allclose(logits(model, tokens, early), logits(model, tokens, late), atol=1e-6)
  model.time_embedding.out.kernel[...] = jnp.ones_like(model.time_embedding.out.kernel[...])
  assert not np.allclose(logits(model, tokens, early), logits(model, tokens, late))
  with pytest.raises(ValueError, match="time_conditioning"):
    model(tokens)
  dropped = build(dropout=0.5)
  a = logits(dropped, tokens, deterministic=False, dropout_key=jax.random.key(1))
  b = logits(dropped, tokens, deterministic=False, dropout_key=jax.random.key(2))
  assert not np.allclose(a, b)
  np.testing.assert_allclose(logits(dropped, tokens), logits(dropped, tokens, deterministic=True))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_probability_dropout(tokens, causal):
  """nanoGPT's attn_dropout: the explicit path equals the fused attention when nothing is dropped; its mean over masks
  is the undropped output (the 1/(1-p) rescaling); it keeps a causal model causal; evaluation never drops."""
  model = build(causal=causal, attention_dropout=0.5)
  attention = model.blocks[0].attn
  q, k, v = (jax.random.normal(key, (1, 8, 2, 8)) for key in jax.random.split(jax.random.key(5), 3))
  fused = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
  with jax.default_matmul_precision("highest"):
    attention.dropout = 1e-9  # keeps every probability: the explicit path must be the same attention
    np.testing.assert_allclose(attention.attend_with_dropout(q, k, v, jax.random.key(0)), fused, rtol=1e-5,
                               atol=1e-6)
    attention.dropout = 0.5
    draws = jax.vmap(lambda key: attention.attend_with_dropout(q, k, v, key))(jax.random.split(jax.random.key(1),
                                                                                               4000))
  np.testing.assert_allclose(jnp.mean(draws, axis=0), fused, atol=6 * float(jnp.max(jnp.std(draws, axis=0))) / 63)
  train = lambda x, key: logits(model, x, deterministic=False, dropout_key=key)
  assert not np.allclose(train(tokens, jax.random.key(1)), train(tokens, jax.random.key(2)))
  np.testing.assert_allclose(logits(model, tokens), logits(build(causal=causal), tokens))  # eval: no dropout
  if causal:  # changing the last token leaves every earlier position's training output unchanged
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 20)
    np.testing.assert_allclose(train(tokens, jax.random.key(3))[:, :-1], train(changed, jax.random.key(3))[:, :-1],
                               rtol=1e-5, atol=1e-6)


def test_embedding_dropout_zeroes_a_fraction_p_of_the_inputs_and_rescales_the_rest(tokens):
  model = build(embedding_dropout=0.25)
  h = model.embed(tokens, None)
  dropped = model.embed(tokens, None, deterministic=False, dropout_key=jax.random.key(0))
  zero = np.asarray(dropped == 0)
  assert abs(zero.mean() - 0.25) < 0.05  # 768 values
  np.testing.assert_allclose(np.asarray(dropped)[~zero], np.asarray(h / 0.75)[~zero], rtol=1e-6)
  np.testing.assert_array_equal(model.embed(tokens, None, deterministic=True, dropout_key=jax.random.key(0)), h)
  with pytest.raises(ValueError, match="model.embedding_dropout must be in"):
    build(embedding_dropout=1.0)


def test_self_conditioning_enters_through_a_zero_initialized_map_and_the_sampler_carries_it(tokens):
  """The previous estimate p(x_0 | x_t) enters as W_sc (p @ E), W_sc zero at initialization (so a new model computes
  what it would without it); the sampler's carry is that estimate, zeros before the first step."""
  from dlm_jax.diffusion import losses
  from dlm_jax.models.hrm import HRMConfig
  from dlm_jax.sampling import sampler as sampler_lib
  from dlm_jax.special_tokens import MASK
  model = build(self_conditioning=True)
  estimate = jax.nn.softmax(jax.random.normal(jax.random.key(4), (3, 16, 20)), axis=-1)
  np.testing.assert_array_equal(logits(model, tokens, self_cond_BxLxV=estimate), logits(model, tokens))
  model.self_condition.kernel[...] = jnp.full_like(model.self_condition.kernel[...], 0.1)
  assert not np.allclose(logits(model, tokens, self_cond_BxLxV=estimate), logits(model, tokens))
  np.testing.assert_allclose(logits(model, tokens, self_cond_BxLxV=jnp.zeros_like(estimate)), logits(model, tokens))

  carry = model.init_sample_carry(3, 16)
  chex.assert_trees_all_equal(carry, jnp.zeros((3, 16, 20)))
  step_logits, _, carry = model.sample_step(tokens, jnp.full((3,), 0.5), carry)
  np.testing.assert_allclose(step_logits, logits(model, tokens, jnp.full((3,), 0.5)))  # zeros: no self-conditioning
  np.testing.assert_allclose(carry, losses.self_condition_input(step_logits, MASK), rtol=1e-6)
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  fixed = jnp.zeros((3, 16), bool).at[:, :4].set(True)
  out = sampler_lib.make_sampler(graphdef, other, sampler_lib.SamplerConfig(steps=4))(
      params, jax.random.key(0), jnp.where(fixed, tokens, MASK), fixed)
  assert not bool(jnp.any(out.tokens_BxL == MASK)) and bool(jnp.all(out.tokens_BxL[:, :4] == tokens[:, :4]))
  with pytest.raises(ValueError, match="self_conditioning"):
    build(causal=True, self_conditioning=True)
  with pytest.raises(ValueError, match="self_conditioning"):
    HRMConfig(**{k: v for k, v in SMALL.items() if k != "num_layers"}, self_conditioning=True)


def test_rejects_sequences_longer_than_max_len(tokens):
  with pytest.raises(ValueError, match="exceeds model.max_len=16"):
    build()(jnp.concatenate([tokens, tokens], axis=1))


def test_rejects_bad_config():
  with pytest.raises(ValueError, match="divisible"):
    build(width=15)
  with pytest.raises(ValueError, match="model.position"):
    build(position="alibi")


@pytest.mark.parametrize("position", ["rope", "learned"])
@pytest.mark.parametrize("layer_loop", ["scan", "unroll"])
def test_kv_cache_prefill_and_unchanged_step_equal_the_full_forward(tokens, position, layer_loop):
  """kv_prefill's logits at the gathered rows are the full forward's; a kv_step from that cache, with nothing changed,
  recomputes the same logits and leaves the cache as it was (Fast-dLLM's dual cache, exact when nothing changed)."""
  model = build(position=position, layer_loop=layer_loop)
  positions = jnp.asarray([[3, 4, 5, 6], [0, 1, 2, 3], [12, 13, 14, 15]], jnp.int32)
  t = jnp.full((3,), 0.5)
  full = logits(model, tokens, t)
  gathered = jnp.take_along_axis(full, positions[..., None], axis=1)
  prefill_logits, cache = model.kv_prefill(tokens, t, positions)
  chex.assert_shape(cache[0], (2, 3, 16, 2, 8))
  np.testing.assert_allclose(prefill_logits, gathered, rtol=1e-5, atol=1e-5)
  step_logits, new_cache = model.kv_step(tokens, t, positions, cache)
  np.testing.assert_allclose(step_logits, gathered, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(new_cache, cache, rtol=1e-5, atol=1e-5)


def test_dual_cache_sampling_is_exact_for_one_layer_and_refused_where_it_cannot_apply(tokens):
  """With one layer, the keys and values outside the block depend only on their own tokens, which do not change while
  the block is decoded: the cached sampler decodes exactly what the uncached one does (greedy)."""
  from dlm_jax.errors import ConfigError
  from dlm_jax.sampling import sampler as sampler_lib
  from dlm_jax.special_tokens import MASK
  fixed = jnp.zeros((3, 16), bool).at[:, :3].set(True)
  x = jnp.where(fixed, tokens, MASK)
  cfg = sampler_lib.SamplerConfig(steps=8, block_length=4, greedy=True, schedule=sampler_lib.MaskingSchedule("linear"))
  dual = sampler_lib.SamplerConfig(**{**cfg.__dict__, "cache": "dual"})
  for num_layers, exact in ((1, True), (2, False)):
    graphdef, params, other = nnx.split(build(num_layers=num_layers), nnx.Param, ...)
    plain = sampler_lib.make_sampler(graphdef, other, cfg)(params, jax.random.key(0), x, fixed)
    for cache in ("dual", "prefix"):
      cached_cfg = sampler_lib.SamplerConfig(**{**cfg.__dict__, "cache": cache})
      cached = sampler_lib.make_sampler(graphdef, other, cached_cfg)(params, jax.random.key(0), x, fixed)
      assert not bool(jnp.any(cached.tokens_BxL == MASK))
      np.testing.assert_array_equal(cached.tokens_BxL[:, :3], tokens[:, :3])
      if exact:
        np.testing.assert_array_equal(cached.tokens_BxL, plain.tokens_BxL, err_msg=cache)
      assert int(cached.network_calls) == int(plain.network_calls) == 7  # blocks of 4, 4, 4, 1: the last, 1 step
  graphdef, params, other = nnx.split(build(self_conditioning=True), nnx.Param, ...)
  with pytest.raises(ConfigError, match="cache='dual' needs a bidirectional denoiser"):
    sampler_lib.make_sampler(graphdef, other, dual)(params, jax.random.key(0), x, fixed)
  with pytest.raises(ConfigError, match="block_length > 0"):
    sampler_lib.SamplerConfig(cache="dual")


def test_grid_positions_add_row_column_and_box_embeddings_and_leave_other_draws_alone(tokens):
  """model.grid_side / grid_box (puzzles): h_0 gains R[r] + C[c] + B[b] of each cell of a row-major side x side grid,
  and the KV-cached step embeds gathered rows at their own cells. (A model without them draws no key for them: the
  golden-value tests hold the rest of the initialization.)"""
  plain, grid = build(), build(grid_side=4, grid_box=2)
  plain_params, grid_params = nnx.state(plain, nnx.Param), nnx.state(grid, nnx.Param)
  grid_only = {"grid_rows", "grid_columns", "grid_boxes"}
  assert set(grid_params.keys()) - set(plain_params.keys()) == grid_only
  chex.assert_trees_all_equal(plain_params["embedding"], grid_params["embedding"])  # drawn before the tables
  rows, columns, boxes = (np.asarray(getattr(grid, name)[...]) for name in ("grid_rows", "grid_columns", "grid_boxes"))
  assert rows.shape == columns.shape == boxes.shape == (4, 16)
  added = np.asarray(grid.embed(tokens, None)) - np.asarray(plain.embed(tokens, None))  # the same E
  for p in range(16):
    r, c = divmod(p, 4)
    np.testing.assert_allclose(added[:, p], np.broadcast_to(rows[r] + columns[c] + boxes[2 * (r // 2) + c // 2],
                                                             (3, 16)), rtol=1e-6, atol=1e-6)
  # A KV-cached step embeds the gathered rows at their own cells.
  positions = jnp.asarray([[3, 4, 5, 6], [0, 1, 2, 3], [12, 13, 14, 15]], jnp.int32)
  t = jnp.full((3,), 0.5)
  gathered = jnp.take_along_axis(logits(grid, tokens, t), positions[..., None], axis=1)
  _, cache = grid.kv_prefill(tokens, t, positions)
  np.testing.assert_allclose(grid.kv_step(tokens, t, positions, cache)[0], gathered, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="grid_box=3 must divide model.grid_side=4"):
    build(grid_side=4, grid_box=3)


@pytest.mark.parametrize("name", ["transformer", "eco_hybrid", "hrm"])
def test_the_head_is_tied_to_the_input_embedding(name):
  """logits = RMSNorm(h) E^T with E the token embedding itself (MDLM, MD4: a tied head): no separate output matrix,
  and a change to one row of E moves that token's logit."""
  from configs import default
  from conftest import tiny_config
  from dlm_jax import models
  config = tiny_config()
  if name != "transformer":
    config.model = default.model_config(name)
    config.model.update(dict(num_heads=2, width=32, mlp_dim=64, dtype="float32"))
  model = models.get_model(config, 20, nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 5, 20)
  out = model(tokens, jnp.full((2,), 0.5))
  table = np.asarray(model.embedding[...])
  if out.head_VxD is not None:  # the chunked-scoring path (transformer, EcoHybrid)
    np.testing.assert_array_equal(np.asarray(out.head_VxD), table)
    np.testing.assert_allclose(out.logits_BxLxV, np.asarray(out.hidden_BxLxD) @ table.T, rtol=1e-5, atol=1e-5)
  h = jax.random.normal(jax.random.key(2), (2, 16, 32))
  np.testing.assert_allclose(model.head(h), np.asarray(model.final_norm(h)) @ table.T, rtol=1e-5, atol=1e-5)
  matrices = [path for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param))
              if 20 in np.shape(leaf.get_value()) and "embedding" not in "/".join(map(str, path))]
  assert not matrices, matrices  # no other parameter has a vocabulary axis


def test_shifted_logits_read_the_previous_positions_state(tokens):
  """model.shift_logits (Dream's alignment): position j's logits are the unshifted model's logits of position j - 1,
  position 0's its own; the same parameters, the same final states. The AR arm refuses it, and so do the KV caches."""
  from dlm_jax.errors import ConfigError
  from dlm_jax.sampling import SamplerConfig, masked
  plain, shifted = build(), build(shift_logits=True)
  chex.assert_trees_all_equal(nnx.state(plain, nnx.Param), nnx.state(shifted, nnx.Param))
  out, out_shifted = plain(tokens).logits_BxLxV, shifted(tokens).logits_BxLxV
  chex.assert_trees_all_close(out_shifted[:, 1:], out[:, :-1], rtol=1e-6)
  chex.assert_trees_all_close(out_shifted[:, 0], out[:, 0], rtol=1e-6)
  with pytest.raises(ConfigError, match="shift_logits"):
    TransformerConfig(**SMALL, shift_logits=True, causal=True)
  with pytest.raises(ConfigError, match="shifts its logits"):
    masked.check_cache(shifted, SamplerConfig(cache="dual", block_length=4), *tokens.shape)
