"""The objective registry's contract: every registered objective builds from a config, trains (finite loss and
gradients under jit) and evaluates above the true conditional entropy of its data; config.diffusion is generated
from the classes, and a field the chosen objective ignores draws one warning naming it."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging
from flax import nnx

from conftest import tiny_config, tiny_thought_config
from configs import default
from dlm_jax import models, objectives, special_tokens
from dlm_jax.errors import ConfigError

# A stationary Markov chain over 3 data tokens: the true conditional entropy of tokens 2..L given token 1 is
# (L - 1) h, h its entropy rate; no model, and no bound on a model's NLL, can average below it.
TRANSITION = np.asarray([[0.8, 0.15, 0.05], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
STATES = special_tokens.NUM_SPECIAL + np.arange(3)
VOCAB = special_tokens.NUM_SPECIAL + 3


def stationary():
  eigenvalues, vectors = np.linalg.eig(TRANSITION.T)
  pi = np.real(vectors[:, np.argmin(np.abs(eigenvalues - 1))])
  return pi / pi.sum()


def entropy_rate():
  pi = stationary()
  return float(-np.sum(pi[:, None] * TRANSITION * np.log(TRANSITION)))


def markov_rows(rows: int, length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  states = np.empty((rows, length), np.int64)
  states[:, 0] = rng.choice(3, size=rows, p=stationary())
  for i in range(1, length):
    cumulative = np.cumsum(TRANSITION[states[:, i - 1]], axis=1)
    states[:, i] = np.argmax(rng.random((rows, 1)) < cumulative, axis=1)
  return jnp.asarray(STATES[states], jnp.int32)


def config_of(name):
  """A tiny config (1 layer, width 16) whose objective is OBJECTIVES[name]."""
  if name == "thought":
    c = tiny_thought_config(**{"model.thought_hidden": 16})
  else:
    c = tiny_config(**{"data.seq_len": 16, "diffusion.objective": name})
  c.model.update(num_layers=1, num_heads=2, width=16, mlp_dim=32, dtype="float32")
  c.diffusion.time_low, c.diffusion.time_high = 0.0, 1.0  # every objective on its own times (base_config's)
  if name == "autoregressive":
    c.model.causal = True
  if name in ("uniform", "duo", "dcd", "sedd", "embedding"):
    c.model.time_conditioning = True
  if name == "duo":
    c.diffusion.curriculum_steps = 4
  return c


@pytest.mark.parametrize("name", list(objectives.OBJECTIVES))
def test_every_objective_trains_finitely_under_jit_and_evaluates_above_the_true_nll(name):
  config = config_of(name)
  objective = objectives.from_config(config, VOCAB)
  assert objective.name == name and type(objective) is objectives.OBJECTIVES[name]
  graphdef, params, other = nnx.split(models.get_model(config, VOCAB, nnx.Rngs(0)), nnx.Param, ...)
  x0_BxL = markov_rows(128, int(config.data.seq_len))

  @jax.jit
  def run(params, rng):
    fn = models.denoise_fn(graphdef, params, other)
    teacher = fn if objective.needs_teacher else None

    def loss(p):
      return objective(models.denoise_fn(graphdef, p, other), x0_BxL[:16], rng, step=jnp.int32(1),
                       teacher_fn=teacher)[0]

    value, grads = jax.value_and_grad(loss)(params)
    evaluations = jax.vmap(lambda key: objective.evaluation_nll(fn, x0_BxL, key))(jax.random.split(rng, 8))
    return value, grads, evaluations

  value, grads, evaluations = run(params, jax.random.key(1))
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert np.all(np.isfinite(np.asarray(evaluations)))
  mean, stderr = float(np.mean(evaluations)), float(np.std(evaluations)) / math.sqrt(len(evaluations))
  assert mean > entropy_rate() - 4 * stderr, (mean, entropy_rate(), stderr)


def test_config_diffusion_is_generated_from_the_classes():
  section = default.base_config().diffusion
  fields = objectives.config_fields()
  assert dict(section.to_dict()) == {k: (dict(v) if isinstance(v, dict) else v) for k, v in fields.items()}
  # the embedded default differs from the base only by issue #31's clipped training times
  clipped = default.get_config().diffusion.to_dict()
  base = section.to_dict()
  assert {k for k in clipped if clipped[k] != base[k]} == {"time_low", "time_high"}
  assert (clipped["time_low"], clipped["time_high"]) == default.CLIPPED_TIME_WINDOW
  assert set(objectives.SECTION_FIELDS) <= set(fields)
  # each class's own fields, with their class defaults
  assert fields["num_timesteps"] == objectives.MaskedMean.num_timesteps
  assert fields["curriculum_steps"] == objectives.Duo.curriculum_steps
  assert fields["log_snr_max"] == objectives.EmbeddingDiffusion.log_snr_max
  assert objectives.from_config(tiny_config(**{"diffusion.num_timesteps": 7, "diffusion.objective": "masked_mean"}),
                                VOCAB).num_timesteps == 7


def test_a_field_the_objective_ignores_draws_one_warning_naming_it(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda message, *args: warnings.append(message % args))
  monkeypatch.setattr(objectives, "_WARNED", set())
  for _ in range(3):  # a run builds its objective more than once: one warning all the same
    objectives.from_config(tiny_config(**{"diffusion.curriculum_steps": 5, "diffusion.nelbo_weight": 0.5}), VOCAB)
  assert len(warnings) == 1
  assert "curriculum_steps=5" in warnings[0] and "nelbo_weight=0.5" in warnings[0] and "'elbo'" in warnings[0]
  warnings.clear()
  objectives.from_config(tiny_config(**{"diffusion.objective": "duo", "diffusion.curriculum_steps": 5,
                                        "model.time_conditioning": True, "diffusion.time_low": 0.0,
                                        "diffusion.time_high": 1.0}), VOCAB)
  assert not warnings  # duo reads it (and the embedded default's clipped times, reset here, it would name)
  objectives.from_config(tiny_config(), VOCAB)
  assert not warnings  # defaults never warn


def test_unknown_objectives_and_unfit_models_are_refused_by_name():
  with pytest.raises(ConfigError, match="Unknown objective 'nelbo'"):
    objectives.from_config(tiny_config(**{"diffusion.objective": "nelbo"}), VOCAB)
  with pytest.raises(ConfigError, match="model.causal=True does not fit"):
    objectives.from_config(tiny_config(**{"model.causal": True}), VOCAB)
  with pytest.raises(ConfigError, match="time_conditioning=True"):
    objectives.from_config(tiny_config(**{"diffusion.objective": "embedding"}), VOCAB)
  with pytest.raises(ConfigError, match="absorbing objective"):
    objectives.from_config(tiny_config(**{"diffusion.objective": "sedd", "diffusion.corruption": "span",
                                          "model.time_conditioning": True}), VOCAB)
  hrm = tiny_config(**{"diffusion.objective": "uniform"})
  hrm.model = default.model_config("hrm")
  with pytest.raises(ConfigError, match="with model hrm"):
    objectives.from_config(hrm, VOCAB)


def test_duo_curriculum_feeds_soft_tokens_at_the_annealed_temperature_then_hard_tokens():
  """Duo's curriculum (objectives/uniform.Duo): while step < curriculum_steps the denoiser sees softmax(w_t / tau) of
  the Gaussian latents whose argmax is z_t, tau = 10^(-1 - step / curriculum_steps) (log-linear from 10^-1 to 10^-2);
  from curriculum_steps on, the one-hots of z_t. (Hard tokens throughout would train and evaluate fine; only this
  notices.)"""
  c = tiny_config(**{"data.seq_len": 16, "diffusion.objective": "duo", "diffusion.curriculum_steps": 10})
  duo = objectives.from_config(c, VOCAB)
  rng = jax.random.key(3)
  x0 = jax.random.randint(jax.random.key(4), (4, 16), special_tokens.NUM_SPECIAL, VOCAB)
  t = jnp.asarray([0.2, 0.4, 0.6, 0.8])
  z_ref, w_ref = duo.gaussian_corrupt(rng, x0, duo.schedule.alpha(t), None)  # the latents the step draws
  for step, tau in ((0, 0.1), (5, 10 ** -1.5), (9, 10 ** -1.9)):
    z, inputs, _, _ = duo.training_inputs(rng, x0, t, None, step)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_allclose(inputs, jax.nn.softmax(np.asarray(w_ref, np.float64) / tau, axis=-1), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_array_equal(np.argmax(inputs, -1), z_ref)
    assert float(np.min(np.max(inputs, -1))) < 0.99  # soft: some position is not (nearly) one-hot
  z, inputs, _, _ = duo.training_inputs(rng, x0, t, None, 10)
  np.testing.assert_array_equal(inputs, jax.nn.one_hot(z_ref, VOCAB))


def test_duo_symmetric_kl_loss_is_seed_002s_weighted_symmetric_kl_and_logs_the_nelbo_beside_it():
  """diffusion.duo_loss="symmetric_kl": per position (1 - a) / (K a + 1 - a) [KL(q || p) + KL(p || q)] with q the
  one-hot smoothed by eps over the K states, averaged over positions (recomputed here in float64 from its definition);
  zero where the prediction is the smoothed target; the NELBO of the same batch still logged as nll_per_token."""
  eps = 1e-3
  base = {"data.seq_len": 8, "diffusion.objective": "duo", "diffusion.curriculum_steps": 0}
  duo = objectives.from_config(tiny_config(**base, **{"diffusion.duo_loss": "symmetric_kl",
                                                      "diffusion.symkl_smoothing": eps}), VOCAB)
  nelbo_duo = objectives.from_config(tiny_config(**base), VOCAB)
  logits = jax.random.normal(jax.random.key(0), (2, 8, VOCAB)) * 2.0
  x0 = jnp.asarray(markov_rows(2, 8))
  t = jnp.asarray([0.3, 0.9])
  got = np.asarray(duo.symmetric_kl(logits, x0, t))
  states = np.flatnonzero(duo.states_V)  # the 3 chain tokens and EOS: K = 4
  k = len(states)
  logits64 = np.asarray(logits, np.float64)[..., states]
  p = np.exp(logits64 - logits64.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  q = np.full(p.shape, eps / k)
  q[np.arange(2)[:, None], np.arange(8)[None], np.searchsorted(states, np.asarray(x0))] += 1 - eps
  alpha = np.asarray(duo.schedule.alpha(t), np.float64)
  want = ((1 - alpha) / (k * alpha + 1 - alpha))[:, None] * np.sum(q * np.log(q / p) + p * np.log(p / q), -1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The weight's limits: 1 at pure noise (alpha(1) = 0: the unweighted symmetric KL), 0 at t = 0 (alpha = 1).
  sym_kl = np.sum(q * np.log(q / p) + p * np.log(p / q), -1)
  np.testing.assert_allclose(duo.symmetric_kl(logits, x0, jnp.asarray([1.0, 1.0])), sym_kl, rtol=1e-5)
  np.testing.assert_allclose(duo.symmetric_kl(logits, x0, jnp.asarray([0.0, 0.0])), 0.0, atol=1e-7)
  target_logits = jnp.full((2, 8, VOCAB), -30.0).at[..., states].set(jnp.log(jnp.asarray(q, jnp.float32)))
  np.testing.assert_allclose(duo.symmetric_kl(target_logits, x0, t), 0.0, atol=1e-6)

  def denoise(x, t_B, *_):
    return models.DenoiserOutput(logits_BxLxV=logits)

  (loss, metrics), (nelbo_loss, nelbo_metrics) = (o(denoise, x0, jax.random.key(5)) for o in (duo, nelbo_duo))
  np.testing.assert_allclose(metrics["nll_per_token"], nelbo_metrics["nll_per_token"], rtol=1e-6)
  np.testing.assert_allclose(loss, metrics["symmetric_kl"], rtol=1e-6)
  assert abs(float(loss) - float(nelbo_loss)) > 1e-3
  with pytest.raises(ConfigError, match="duo_loss"):
    objectives.from_config(tiny_config(**base, **{"diffusion.duo_loss": "kl"}), VOCAB)


def test_time_exponent_warps_the_training_times_and_leaves_the_evaluation_alone():
  """diffusion.time_exponent = k: training draws t = 1 - (1 - u)^k from the antithetic u (mean 1 - 1/(k + 1) = 2/3 at
  k = 2: the heavily masked levels weighted more), and the evaluation is the ELBO whatever k."""
  from dlm_jax.diffusion import forward
  plain, warped = config_of("elbo"), config_of("elbo")
  warped.diffusion.time_exponent = 2.0
  plain_objective, objective = objectives.from_config(plain, VOCAB), objectives.from_config(warped, VOCAB)
  u = forward.antithetic_times(jax.random.key(0), 4096, objective.t_min)
  t = objective.sample_times(jax.random.key(0), 4096)
  np.testing.assert_allclose(t, 1.0 - (1.0 - u) ** 2, rtol=1e-6)
  assert abs(float(jnp.mean(t)) - 2.0 / 3.0) < 1e-3
  np.testing.assert_array_equal(plain_objective.sample_times(jax.random.key(0), 4096), u)
  graphdef, params, other = nnx.split(models.get_model(plain, VOCAB, nnx.Rngs(0)), nnx.Param, ...)
  fn = models.denoise_fn(graphdef, params, other)
  x0_BxL = markov_rows(16, int(plain.data.seq_len))
  np.testing.assert_array_equal(objective.evaluation_nll(fn, x0_BxL, jax.random.key(2)),
                                plain_objective.evaluation_nll(fn, x0_BxL, jax.random.key(2)))
  assert float(objective(fn, x0_BxL, jax.random.key(2))[0]) != float(plain_objective(fn, x0_BxL, jax.random.key(2))[0])
  with pytest.raises(ConfigError, match="time_exponent must be > 0"):
    objectives.from_config(tiny_config(**{"diffusion.time_exponent": 0.0}), VOCAB)
  with pytest.raises(ConfigError, match="discrete timesteps"):
    objectives.from_config(tiny_config(**{"diffusion.time_exponent": 2.0, "diffusion.objective": "masked_mean",
                                          "diffusion.time_low": 0.0, "diffusion.time_high": 1.0}), VOCAB)


def test_a_stateless_objective_written_before_the_objective_state_still_trains():
  """Objective.__call__ and the train step pass `objective_state` only to an objective that has a state, so a class
  whose `loss` predates the keyword (a research wing's) still runs."""
  from dlm_jax.objectives.autoregressive import Autoregressive
  from dlm_jax.training import optimizer, state as state_lib, step as step_lib

  class Legacy(Autoregressive):
    def loss(self, denoise_fn, x0_BxL, rng, *, step=None, teacher_fn=None):
      return super().loss(denoise_fn, x0_BxL, rng, step=step, teacher_fn=teacher_fn)

  config = config_of("autoregressive")
  legacy = Legacy(**{f.name: getattr(objectives.from_config(config, VOCAB), f.name)
                     for f in dataclasses.fields(Autoregressive)})
  tx = optimizer.make_optimizer(config.optimizer, 4)
  graphdef, other, state = state_lib.init_model_and_state(config, VOCAB, tx)
  train_step = step_lib.make_train_step(graphdef, other, legacy, tx, 0.0, optimizer.learning_rate_schedule(
      config.optimizer, 4))
  state, metrics = train_step(state, markov_rows(4, int(config.data.seq_len))[None])
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"])) and state.objective_state is None
