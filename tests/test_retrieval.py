"""Retrieval-conditioned memory slots (models/retrieval.py, seed 001 §9.6): exact top-k, queries that never see the
masked tokens, EcoHybrid unchanged when off, and a retrieval run that trains, checkpoints its datastore and reloads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from conftest import tiny_config
from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.models import retrieval
from dlm_jax.models.eco_hybrid import EcoHybrid, EcoHybridConfig
from dlm_jax.training import checkpoint, loop

SMALL = dict(vocab_size=20, max_len=64, num_layers=2, num_heads=2, width=32, mlp_dim=64, memory_slots=4,
             dtype="float32")
TOKENS = (jnp.arange(2 * 24).reshape(2, 24) * 7) % 20
# EcoHybrid(SMALL, Rngs(0))(TOKENS) recorded at acbebc1, before retrieval and the slow-slot parameter existed.
GOLDEN_LOGITS_0 = np.array([[-0.03579916, 0.03758493, 0.13969794, -0.13175233],
                            [0.05317492, -0.02353805, -0.09543534, -0.1159167]], np.float32)
GOLDEN_SUM_SQUARES = 12.39484977722168


def brute_force_top_k(queries, windows, projection, k):
  """numpy float64: bag-of-token keys, cosine similarity, the k largest."""
  def keys(tokens):
    raw = projection[tokens].astype(np.float64).sum(axis=1)
    return raw / np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-6)
  scores = keys(queries) @ keys(windows).T
  return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][:, :k]


def test_top_k_is_exact_against_brute_force():
  rng = np.random.default_rng(0)
  vocab, length, num_windows, k = 50, 16, 300, 5
  windows = rng.integers(special_tokens.NUM_SPECIAL, vocab, (num_windows, length))
  queries = rng.integers(special_tokens.NUM_SPECIAL, vocab, (7, length))
  projection = retrieval.key_projection(vocab, 32, special_tokens.DEFAULT)
  keys = retrieval.encode(jnp.asarray(windows), jnp.asarray(projection))
  scores, index = retrieval.top_k_neighbours(retrieval.encode(jnp.asarray(queries), jnp.asarray(projection)), keys, k)
  expected_index, expected_scores = brute_force_top_k(queries, windows, projection, k)
  np.testing.assert_array_equal(index, expected_index)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
  # a window retrieves itself first, with similarity 1
  scores, index = retrieval.top_k_neighbours(keys[:10], keys, 1)
  np.testing.assert_array_equal(index[:, 0], np.arange(10))
  np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-6)


def test_query_ignores_masked_and_special_tokens():
  projection = jnp.asarray(retrieval.key_projection(30, 16, special_tokens.DEFAULT))
  tokens = jnp.asarray([[7, 8, 9, 10, 11, 12]])
  masked = tokens.at[0, 1:3].set(special_tokens.MASK)
  visible_only = jnp.asarray([[7, 10, 11, 12]])
  np.testing.assert_allclose(retrieval.encode(masked, projection), retrieval.encode(visible_only, projection),
                             rtol=1e-6)
  assert float(jnp.linalg.norm(retrieval.encode(jnp.full((1, 6), special_tokens.MASK), projection))) == 0.0


def test_retrieval_off_is_eco_hybrid_unchanged():
  model = EcoHybrid(EcoHybridConfig(**SMALL), rngs=nnx.Rngs(0))
  logits = model(TOKENS).logits_BxLxV
  np.testing.assert_allclose(logits[0, :2, :4], GOLDEN_LOGITS_0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(jnp.sum(logits**2)), GOLDEN_SUM_SQUARES, rtol=1e-5)
  _, params, other = nnx.split(model, nnx.Param, ...)
  assert jax.tree.leaves(other) == [] and model.retrieval is None
  assert "retrieval" not in params


def retrieval_model(**overrides):
  cfg = EcoHybridConfig(**{**SMALL, "retrieval_slots": 3, "retrieval_windows": 12, "retrieval_key_dim": 8,
                           **overrides})
  model = EcoHybrid(cfg, rngs=nnx.Rngs(0))
  windows = np.random.default_rng(1).integers(special_tokens.NUM_SPECIAL, 20, (12, 64))
  model.retrieval.fill(windows)
  return model, windows


def test_retrieved_slots_condition_the_memory_and_train():
  model, windows = retrieval_model()
  plain = EcoHybrid(EcoHybridConfig(**SMALL), rngs=nnx.Rngs(0))
  # every parameter the two share is identical (retrieval's are created last), yet the outputs differ
  shared = nnx.state(plain, nnx.Param).flat_state()
  with_retrieval = dict(nnx.state(model, nnx.Param).flat_state())
  for path, value in shared:
    np.testing.assert_array_equal(value[...], with_retrieval[path][...])
  tokens = jnp.asarray(windows[:2, :24])
  assert not np.allclose(model(tokens).logits_BxLxV, plain(tokens).logits_BxLxV)
  memory = model.initial_memory(tokens)
  assert memory.shape == (2, 4 + 3, 32)
  # the first retrieved slot comes from the query's own window (the nearest by construction)
  _, index = model.retrieval.neighbours(jnp.asarray(windows[:2]))
  np.testing.assert_array_equal(index[:, 0], [0, 1])
  # the projection and the offsets get gradients through the loss
  graphdef, params, other = nnx.split(model, nnx.Param, ...)

  def loss(p):
    return jnp.mean(nnx.merge(graphdef, p, other)(tokens).logits_BxLxV ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(grads["retrieval"]["proj"]["kernel"][...]).max()) > 0
  assert float(jnp.abs(grads["retrieval"]["slot_offsets"][...]).max()) > 0


def test_rejects_bad_retrieval_config():
  with pytest.raises(ConfigError, match="retrieval_slots"):
    EcoHybridConfig(**SMALL, retrieval_slots=5, retrieval_windows=4)
  with pytest.raises(ConfigError, match="route_top_k=0"):
    EcoHybridConfig(**SMALL, retrieval_slots=2, route_top_k=2)
  model = EcoHybrid(EcoHybridConfig(**SMALL, retrieval_slots=2, retrieval_windows=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="4 windows of 64 tokens"):
    model.retrieval.fill(np.zeros((3, 64), np.int32))


def test_datastore_windows_are_spread_and_cut_out_of_training():
  stream = np.arange(special_tokens.NUM_SPECIAL, 1000)
  windows, rest = retrieval.datastore_windows(stream, 10, 20, special_tokens.EOS)
  assert windows.shape == (20, 10)
  assert windows[0, 0] < 60 and windows[-1, -1] > 940  # spread over the whole stream
  kept = rest[rest != special_tokens.EOS]
  assert np.intersect1d(kept, windows).size == 0  # no datastore token is trained on
  np.testing.assert_array_equal(np.sort(np.concatenate([kept, windows.ravel()])), stream)  # nothing else is lost
  assert (rest == special_tokens.EOS).sum() == 20  # each cut is a document boundary
  with pytest.raises(ValueError, match="more than half"):
    retrieval.datastore_windows(stream, 10, 60, special_tokens.EOS)


def test_retrieval_run_trains_saves_its_datastore_and_reloads(tmp_path):
  config = tiny_config(**{"train.num_steps": 6, "eval.every": 6, "train.checkpoint_every": 6})
  config.model = default_config.model_config("eco_hybrid")
  config.model.update(num_layers=2, num_heads=2, width=32, mlp_dim=64, memory_slots=4, retrieval_slots=2,
                      retrieval_windows=8, dtype="float32")
  summary = loop.train(config, str(tmp_path))
  assert np.isfinite(summary["eval_nll_per_token"])
  saved = np.load(tmp_path / checkpoint.DATASTORE_FILE)
  assert saved.shape == (8, 32)
  run = checkpoint.load_for_inference(tmp_path)
  np.testing.assert_array_equal(run.model().retrieval.windows[...], saved)
  # a missing datastore file is one clear error
  (tmp_path / checkpoint.DATASTORE_FILE).unlink()
  with pytest.raises(checkpoint.CheckpointError, match="retrieval_datastore.npy is missing"):
    checkpoint.load_for_inference(tmp_path)
