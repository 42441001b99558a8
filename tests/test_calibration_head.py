"""The trained confidence-calibration head (seed 001 §9.7; models.base.CalibrationHead, model.calibration_head): it
trains alone (the denoiser's gradient is the same with and without it), its loss is the binary cross-entropy against
the greedy candidate's correctness at the corrupted positions, the masked sampler ranks reveals by its forecast with
confidence="calibrated", and the calibration evaluation reports its reliability beside the raw confidence's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from configs import default
from dlm_jax import models, objectives, special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.data import puzzles
from dlm_jax.evaluation import calibration
from dlm_jax.models.base import CalibrationHead
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.training import checkpoint

VOCAB = special_tokens.NUM_SPECIAL + 6


def config_of(head: bool, **overrides):
  c = tiny_config(**{"data.seq_len": 16, "model.calibration_head": head, **overrides})
  c.model.update(num_layers=1, num_heads=2, width=16, mlp_dim=32, dtype="float32")
  return c


def rows(n=8, length=16, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(special_tokens.NUM_SPECIAL, VOCAB, (n, length)), jnp.int32)


def split(config):
  return nnx.split(models.get_model(config, VOCAB, nnx.Rngs(0)), nnx.Param, ...)


def loss_and_grads(config, params_of=None):
  objective = objectives.from_config(config, VOCAB)
  graphdef, params, other = split(config)
  if params_of is not None:
    params = params_of(params)
  loss = lambda p: objective(models.denoise_fn(graphdef, p, other), rows(), jax.random.key(3))
  (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return value, metrics, params, grads


def with_random_head_output(params):
  """The head's zero-initialized output layer set to random values, so that a gradient through the head into the
  denoiser (a broken stop-gradient) would be non-zero."""
  state = nnx.to_pure_dict(params)
  kernel = state["calibration"]["out"]["kernel"]
  state["calibration"]["out"]["kernel"] = jax.random.normal(jax.random.key(7), kernel.shape)
  nnx.replace_by_pure_dict(params, state)
  return params


def test_the_head_trains_alone_and_leaves_the_denoisers_gradient_unchanged():
  _, plain_metrics, plain_params, plain_grads = loss_and_grads(config_of(False))
  _, metrics, params, grads = loss_and_grads(config_of(True), with_random_head_output)
  plain, with_head = nnx.to_pure_dict(plain_grads), nnx.to_pure_dict(grads)
  head_grads = with_head.pop("calibration")
  # Created last: every other parameter is the plain model's, and so is its gradient.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), plain, with_head)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(plain_params),
               {k: v for k, v in nnx.to_pure_dict(params).items() if k != "calibration"})
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(head_grads))  # the head itself learns
  assert "aux/calibration" in metrics and "aux/calibration" not in plain_metrics
  np.testing.assert_allclose(metrics["nll_per_token"], plain_metrics["nll_per_token"], rtol=1e-6)


def test_the_heads_loss_is_the_binary_cross_entropy_of_the_greedy_candidates_correctness():
  """A head whose output is the constant b (zero kernel): its loss is the mean over the corrupted positions of
  -y log sigmoid(b) - (1 - y) log sigmoid(-b), y = 1[argmax of the drawable logits = x_0]."""
  config = config_of(True)
  objective = objectives.from_config(config, VOCAB)
  graphdef, params, other = split(config)
  state = nnx.to_pure_dict(params)
  state["calibration"]["out"]["bias"] = jnp.full_like(state["calibration"]["out"]["bias"], 0.7)
  nnx.replace_by_pure_dict(params, state)
  fn = models.denoise_fn(graphdef, params, other)
  x0 = rows()
  _, output, _ = objective.loss(fn, x0, jax.random.key(3))
  np.testing.assert_allclose(output.calibration_BxL, 0.7, rtol=1e-6)
  # the same corruption as the loss's (objectives.base.CorruptionObjective.loss)
  t_rng, mask_rng = jax.random.split(jax.random.key(3))
  t_B = objective.sample_times(t_rng, x0.shape[0])
  xt, corrupted = objective.corrupt(mask_rng, x0, t_B, None)
  logits = np.asarray(fn(xt, t_B).logits_BxLxV, np.float64)
  logits[..., list(special_tokens.DEFAULT.never_sampled)] = -np.inf
  y = (logits.argmax(-1) == np.asarray(x0))[np.asarray(corrupted)]
  assert 0 < y.mean() < 1  # both outcomes occur, so the two terms are both checked
  b = 0.7
  expected = np.mean(np.where(y, np.log1p(np.exp(-b)), np.log1p(np.exp(b))))
  np.testing.assert_allclose(output.aux_losses["calibration"], expected, rtol=1e-5)


def test_objectives_and_denoisers_that_do_not_train_the_head_refuse_it():
  with pytest.raises(ConfigError, match="does not train it"):
    objectives.from_config(config_of(True, **{"diffusion.objective": "duo", "model.time_conditioning": True}), VOCAB)
  hrm = config_of(False)
  hrm.model = default.model_config("hrm")
  hrm.model.calibration_head = True
  with pytest.raises(ConfigError, match="calibration_head is not supported by hrm"):
    models.get_model(hrm, VOCAB, nnx.Rngs(0))


def test_calibrated_confidence_ranks_reveals_by_the_heads_forecast():
  """Every position's probability ranks left to right, the head's forecast right to left: "prob" reveals position 0
  first, "calibrated" the last; without a head, "calibrated" is refused."""
  def denoise(x, t, carry, forecast=True):
    length = x.shape[1]
    strength = jnp.linspace(3.0, 1.0, length)[None, :, None]  # the left positions surest
    logits = jnp.zeros(x.shape + (12,)).at[..., 6].set(1.0) * strength
    forecast_BxL = jnp.broadcast_to(jnp.linspace(0.1, 0.9, length), x.shape) if forecast else None
    return logits, forecast_BxL, carry

  def reveal_steps(confidence, fn=denoise):
    cfg = sampler_lib.SamplerConfig(steps=6, greedy=True, confidence=confidence,
                                    schedule=sampler_lib.MaskingSchedule("linear"))
    out = sampler_lib.sample(fn, jax.random.key(0), jnp.zeros((1, 6), jnp.int32), jnp.zeros((1, 6), bool), cfg)
    return np.asarray(out.reveal_step_BxL[0])

  np.testing.assert_array_equal(reveal_steps("prob"), np.arange(6))
  np.testing.assert_array_equal(reveal_steps("calibrated"), np.arange(6)[::-1])
  with pytest.raises(ConfigError, match="calibration head"):
    reveal_steps("calibrated", lambda x, t, c: denoise(x, t, c, forecast=False))


def test_a_denoiser_with_a_head_returns_its_forecast_as_the_sampler_priority():
  config = config_of(True)
  model = models.get_model(config, VOCAB, nnx.Rngs(0))
  tokens = rows(2).at[:, ::2].set(special_tokens.MASK)
  logits, priority, _ = model.sample_step(tokens, jnp.full((2,), 0.5), None)
  output = model(tokens, jnp.full((2,), 0.5))
  np.testing.assert_allclose(priority, jax.nn.sigmoid(output.calibration_BxL), rtol=1e-6)
  target = CalibrationHead.target(logits, rows(2), special_tokens.DEFAULT)  # losses.greedy_correct
  assert target.shape == (2, 16) and set(np.unique(np.asarray(target))) <= {0.0, 1.0}
  assert models.get_model(config_of(False), VOCAB, nnx.Rngs(0)).sample_step(tokens, jnp.full((2,), 0.5), None)[1] \
      is None


def test_calibration_reports_the_heads_reliability_beside_the_raw_confidences(puzzle_runs):
  run = checkpoint.load_for_inference(str(puzzle_runs / "run"))  # trained with a calibration head
  solutions = [item["solution"] for item in puzzles.read_set(puzzle_runs / "test")]
  windows = np.asarray([run.tokenizer.encode(s) for s in solutions], np.int32)
  result = calibration.calibrate(run, windows, batch_size=4, num_bins=5)
  head = result["head"]
  # the same predictions, scored by the head's forecast instead of the raw confidence
  assert head["predictions"] == result["predictions"] > 0 and head["accuracy"] == result["accuracy"]
  assert sum(b["count"] for b in head["bins"]) == head["predictions"]
  assert head["mean_confidence"] != result["mean_confidence"]
  hrm = checkpoint.load_for_inference(str(puzzle_runs / "hrm"))
  assert "head" not in calibration.calibrate(hrm, windows, batch_size=4, num_bins=5)
