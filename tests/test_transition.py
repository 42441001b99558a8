"""The samplers that move every position: uniform-state ancestral/greedy and SEDD's Tweedie steps."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import special_tokens
from dlm_jax.diffusion import uniform
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import SamplerConfig, sample, stateless

VOCAB, B, L = 12, 64, 10
STATES = uniform.states(VOCAB, special_tokens.DEFAULT)
STATE_IDS = np.flatnonzero(STATES)
K = len(STATE_IDS)


def confirming(x_BxL, t_B):
  """A model certain that every current token is clean: p(x_0 = z_i | z) = 1."""
  del t_B
  return 30.0 * jax.nn.one_hot(x_BxL, VOCAB)


def constant_target(token):
  def fn(x_BxL, t_B):
    del t_B
    return jnp.broadcast_to(30.0 * jax.nn.one_hot(token, VOCAB), (*x_BxL.shape, VOCAB))
  return fn


def _prompt():
  tokens = jnp.full((B, L), STATE_IDS[0], jnp.int32).at[:, :3].set(jnp.asarray(STATE_IDS[1:4]))
  fixed = jnp.zeros((B, L), bool).at[:, :3].set(True)
  return tokens, fixed


CONFIGS = {
    "uniform_ancestral": dict(process="uniform", method="ancestral"),
    "uniform_greedy": dict(process="uniform", method="greedy"),
    "uniform_mean_ancestral": dict(process="uniform", method="ancestral", parameterization="mean"),
    "sedd_absorbing": dict(process="absorbing", parameterization="score", method="tweedie"),
    "sedd_uniform": dict(process="uniform", parameterization="score", method="tweedie"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fixed_tokens_are_kept_and_outputs_are_states(name):
  cfg = SamplerConfig(steps=8, schedule=MaskingSchedule("linear"), record_trajectory=True, reveal_noise=0.0,
                      **CONFIGS[name])
  tokens, fixed = _prompt()
  logits_fn = lambda x, t: jax.random.normal(jax.random.key(0), (*x.shape, VOCAB))  # an arbitrary model
  out = jax.jit(lambda key: sample(stateless(logits_fn), key, tokens, fixed, cfg))(jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out.tokens_BxL[:, :3]), np.asarray(tokens[:, :3]))
  np.testing.assert_array_equal(np.asarray(out.trajectory_SxBxL[:, :, :3]),
                                np.broadcast_to(np.asarray(tokens[:, :3]), (9, B, 3)))
  assert out.trajectory_SxBxL.shape == (9, B, L)
  np.testing.assert_array_equal(np.asarray(out.trajectory_SxBxL[-1]), np.asarray(out.tokens_BxL))
  assert set(np.unique(np.asarray(out.tokens_BxL))) <= set(STATE_IDS)
  assert np.all(np.asarray(out.reveal_step_BxL[:, :3]) == -1)
  assert int(out.network_calls) >= 8


def test_greedy_refinement_changes_a_token_only_when_the_model_moves_it():
  tokens, fixed = _prompt()
  cfg = SamplerConfig(steps=6, process="uniform", method="greedy", schedule=MaskingSchedule("cosine"),
                      record_trajectory=True, reveal_noise=0.0)
  out = sample(stateless(confirming), jax.random.key(0), tokens, fixed, cfg)
  # The model confirms every token: the random start is never changed.
  frames = np.asarray(out.trajectory_SxBxL)
  assert np.all(frames == frames[0:1])
  assert np.all(np.asarray(out.reveal_step_BxL) == -1)
  # A model certain of one token moves every free position to it (by the last step, s = 0, at the latest).
  target = int(STATE_IDS[-1])
  out = sample(stateless(constant_target(target)), jax.random.key(0), tokens, fixed, cfg)
  assert np.all(np.asarray(out.tokens_BxL[:, 3:]) == target)


def test_ancestral_step_changes_a_confirmed_token_at_the_posterior_rate_and_never_at_the_last_step():
  """With p_theta = one-hot(z_t) the step t -> s keeps z with probability q(z_s = z | z_t, x = z); at s = 0 always."""
  schedule = MaskingSchedule("linear")
  steps = 4
  cfg = SamplerConfig(steps=steps, process="uniform", method="ancestral", schedule=schedule, record_trajectory=True,
                      reveal_noise=0.0)
  tokens = jnp.zeros((4096, L), jnp.int32)
  fixed = jnp.zeros((4096, L), bool)
  out = sample(stateless(confirming), jax.random.key(3), tokens, fixed, cfg)
  frames = np.asarray(out.trajectory_SxBxL)
  for k in range(steps):
    t, s = 1 - k / steps, 1 - (k + 1) / steps
    alpha_t, alpha_s = max(float(schedule.alpha(t)), 1e-6), float(schedule.alpha(s))
    a, c_t = alpha_t / alpha_s, (1 - alpha_t) / K
    # q(z_s = z | z_t = z, x = z) = (a + (1 - a)/K)(alpha_s + (1 - alpha_s)/K) / (alpha_t + c_t)
    keep = (a + (1 - a) / K) * (alpha_s + (1 - alpha_s) / K) / (alpha_t + c_t)
    observed = np.mean(frames[k + 1] == frames[k])
    assert abs(observed - keep) < 5 * np.sqrt(keep * (1 - keep) / frames[k].size) + 1e-6, (k, observed, keep)
  assert np.all(frames[-1] == frames[-2])  # s = 0: the model's certainty is final


def test_sedd_absorbing_never_changes_a_revealed_token():
  tokens, fixed = _prompt()
  cfg = SamplerConfig(steps=8, process="absorbing", parameterization="score", method="tweedie",
                      schedule=MaskingSchedule("loglinear"), record_trajectory=True, reveal_noise=0.0)
  logits_fn = lambda x, t: jax.random.normal(jax.random.key(2), (*x.shape, VOCAB))
  frames = np.asarray(sample(stateless(logits_fn), jax.random.key(0), tokens, fixed, cfg).trajectory_SxBxL)
  revealed = frames[:-1] != special_tokens.MASK
  assert np.all(np.where(revealed, frames[1:] == frames[:-1], True))
  assert not np.any(frames[-1] == special_tokens.MASK)


def test_sampler_config_refuses_mismatched_methods_and_masked_only_strategies():
  with pytest.raises(ConfigError, match="uniform-state model samples with method"):
    SamplerConfig(process="uniform", method="confidence", reveal_noise=0.0)
  with pytest.raises(ConfigError, match="'tweedie'"):
    SamplerConfig(parameterization="score", method="ancestral", reveal_noise=0.0)
  with pytest.raises(ConfigError, match="block_length"):
    SamplerConfig(process="uniform", method="ancestral", block_length=4)
  with pytest.raises(ConfigError, match="masked x_0 model"):
    SamplerConfig(method="greedy")
  cfg = SamplerConfig(process="uniform", method="greedy", reveal_noise=0.0)
  assert dataclasses.replace(cfg, steps=3).moves_every_position
