"""Continuous embedding diffusion (dlm_jax/diffusion/gaussian.py): schedule, forward marginal, the VDM bound's terms,
the Gaussian readout and the DDIM step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax.diffusion import gaussian
from dlm_jax.errors import ConfigError

SCHEDULE = gaussian.LogSNRSchedule(log_snr_max=9.0, log_snr_min=-7.0)


def table(vocab=12, width=16, seed=0):
  return gaussian.normalized_table(jax.random.normal(jax.random.key(seed), (vocab, width)))


def test_schedule_is_variance_preserving_with_the_scheduled_log_snr():
  t = jnp.linspace(0.0, 1.0, 11)
  alpha, sigma = SCHEDULE.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), 9.0 - 16.0 * t, atol=1e-4)
  np.testing.assert_allclose(SCHEDULE.dlog_snr(t), -16.0)
  with pytest.raises(ConfigError, match="must exceed"):
    gaussian.LogSNRSchedule(log_snr_max=-1.0, log_snr_min=2.0)


def test_sqrt_schedule_is_diffusion_lms_over_the_same_log_snr_range():
  """shape="sqrt": alpha_t^2 = 1 - sqrt(u), u linear in t between (1 - sigmoid(lambda_max))^2 and
  (1 - sigmoid(lambda_min))^2 (Diffusion-LM's square-root schedule on this range); lambda' is its derivative; the run's
  choice reaches the sampler."""
  sqrt = gaussian.LogSNRSchedule(log_snr_max=5.0, log_snr_min=-10.0, shape="sqrt")
  t = np.linspace(0.0, 1.0, 21)
  sig = lambda x: 1.0 / (1.0 + np.exp(-x))
  u0, u1 = (1.0 - sig(5.0)) ** 2, (1.0 - sig(-10.0)) ** 2
  alpha, sigma = sqrt.alpha_sigma(jnp.asarray(t))
  np.testing.assert_allclose(alpha ** 2, 1.0 - np.sqrt(u0 + (u1 - u0) * t), rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(sqrt.log_snr(jnp.asarray([0.0, 1.0])), [5.0, -10.0], atol=2e-3)
  np.testing.assert_allclose(sqrt.dlog_snr(jnp.asarray(t)), jax.vmap(jax.grad(sqrt.log_snr))(jnp.asarray(t)),
                             rtol=1e-4)
  # It leaves the low-noise end at once and spends most of [0, 1] at moderate log-SNR: below the linear schedule's at
  # t = 0.1 (0.77 against 3.5), above it at t = 0.9 (-2.9 against -8.5), and in [-4, 1] for 0.1 < t < 0.96.
  linear = gaussian.LogSNRSchedule(log_snr_max=5.0, log_snr_min=-10.0)
  assert sqrt.log_snr(0.1) < linear.log_snr(0.1) and sqrt.log_snr(0.9) > linear.log_snr(0.9)
  middle = sqrt.log_snr(jnp.linspace(0.1, 0.96, 30))
  assert (middle > -4.0).all() and (middle < 1.0).all()
  with pytest.raises(ConfigError, match="log_snr_shape must be one of"):
    gaussian.LogSNRSchedule(shape="cosine")
  from conftest import tiny_config
  from configs import default
  from dlm_jax.objectives import embedding
  from dlm_jax.sampling.config import SamplerConfig
  from dlm_jax import special_tokens
  c = tiny_config()
  default.beyond_masking_arm(c, "embedding")
  c.diffusion.log_snr_shape = "sqrt"
  assert SamplerConfig.from_config(c, special_tokens.DEFAULT).log_snr_shape == "sqrt"
  assert embedding.EmbeddingDiffusion.log_snr_shape == "linear"  # the default keeps VDM's linear schedule


def test_position_skew_gives_each_position_its_own_clock_and_keeps_the_bound():
  """position_skew = Delta: tau_i(t) = clip((t - Delta (1 - i/(L-1))) / (1 - Delta), 0, 1), so every position goes from
  clean at t = 0 to fully noised at t = 1, later positions first; the diffusion term's weight is
  -1/2 d/dt SNR(tau_i(t)) (checked against autodiff), the zero estimate still costs (SNR(0) - SNR(1))/2 ||e||^2 over
  t in [0, 1] at every position, and Delta = 0 is the shared schedule."""
  skewed = gaussian.LogSNRSchedule(log_snr_max=9.0, log_snr_min=-7.0, position_skew=0.5)
  length = 5
  tau, dtau = skewed.position_times(jnp.array([0.0, 0.25, 0.5, 1.0]), length)
  np.testing.assert_allclose(tau[0], 0.0)
  np.testing.assert_allclose(tau[3], 1.0)
  # t = 0.25: the window of position i starts at 0.5 (1 - i/4); only positions 3 and 4 have started
  np.testing.assert_allclose(tau[1], [0.0, 0.0, 0.0, 0.25, 0.5], atol=1e-6)
  np.testing.assert_allclose(dtau[1], [0.0, 0.0, 0.0, 2.0, 2.0])
  assert (np.diff(np.asarray(tau), axis=1) >= 0).all()  # later positions are at least as noisy
  e = table()[None, :length]
  t = jnp.array([0.3])
  snr_at = lambda t_scalar: jnp.exp(skewed.position_log_snr(t_scalar[None], length)[0])
  expected = -0.5 * jax.jacfwd(snr_at)(t[0]) * jnp.sum(jnp.square(e[0]), -1)
  np.testing.assert_allclose(gaussian.diffusion_loss(e, jnp.zeros_like(e), t, skewed)[0], expected, rtol=1e-5)
  grid = (jnp.arange(40000) + 0.5) / 40000  # midpoint rule over t
  e_many = jnp.broadcast_to(e[:, :1], (40000, length, 16))
  per_position = jnp.mean(gaussian.diffusion_loss(e_many, jnp.zeros_like(e_many), grid, skewed), axis=0)
  np.testing.assert_allclose(per_position, 0.5 * (np.exp(9.0) - np.exp(-7.0)) * 16.0, rtol=2e-3)
  shared = gaussian.LogSNRSchedule(log_snr_max=9.0, log_snr_min=-7.0, position_skew=0.0)
  np.testing.assert_array_equal(shared.position_times(jnp.array([0.3]), length)[0], np.float32(0.3))
  np.testing.assert_array_equal(gaussian.diffusion_loss(e, jnp.zeros_like(e), t, shared),
                                gaussian.diffusion_loss(e, jnp.zeros_like(e), t, SCHEDULE))
  with pytest.raises(ConfigError, match="position_skew must be in"):
    gaussian.LogSNRSchedule(position_skew=1.0)


def test_position_skew_reaches_the_forward_process_and_the_sampler():
  """The forward sample puts position i at alpha_{tau_i(t)}; a DDIM step leaves a position whose clock does not move
  where it is and steps the others; the run's position_skew reaches the sampler config."""
  skewed = gaussian.LogSNRSchedule(log_snr_max=9.0, log_snr_min=-7.0, position_skew=0.5)
  e = table()[None, :5]
  z, eps = gaussian.forward_sample(jax.random.key(1), e, jnp.array([0.25]), skewed)
  alpha, sigma = skewed.alpha_sigma(skewed.position_times(jnp.array([0.25]), 5)[0])
  np.testing.assert_allclose(z, alpha[..., None] * e + sigma[..., None] * eps, rtol=1e-6)
  np.testing.assert_allclose(z[0, :3], e[0, :3] * alpha[0, 0] + eps[0, :3] * sigma[0, 0], rtol=1e-6)  # clean end
  # from t = 0.2 to 0.1 positions 0-2 (windows from 0.5, 0.375, 0.25) stay clean; 3 and 4 move
  stepped = gaussian.ddim_step(z, jnp.zeros_like(z), jnp.array([0.2]), jnp.array([0.1]), skewed)
  np.testing.assert_allclose(stepped[0, :3], z[0, :3], rtol=1e-6)
  assert float(jnp.abs(stepped[0, 3:] - z[0, 3:]).min()) > 1e-3
  from conftest import tiny_config
  from configs import default
  from dlm_jax import special_tokens
  from dlm_jax.sampling.config import SamplerConfig
  c = tiny_config()
  default.beyond_masking_arm(c, "embedding")
  c.diffusion.position_skew = 0.4
  assert SamplerConfig.from_config(c, special_tokens.DEFAULT).position_skew == 0.4


def test_normalized_rows_have_norm_sqrt_width():
  np.testing.assert_allclose(jnp.linalg.norm(table(), axis=-1), 4.0, rtol=1e-6)


def test_forward_marginal_has_the_scheduled_mean_and_variance():
  e = jnp.broadcast_to(table()[3], (4096, 1, 16))
  t = jnp.full((4096,), 0.6)
  z, eps = gaussian.forward_sample(jax.random.key(1), e, t, SCHEDULE)
  alpha, sigma = SCHEDULE.alpha_sigma(0.6)
  np.testing.assert_allclose(z, alpha * e + sigma * eps, rtol=1e-6, atol=1e-6)
  # 4096 draws per dimension: the sample mean within 4 standard errors, the variance within 10%
  np.testing.assert_allclose(z.mean(0)[0], alpha * table()[3], atol=4 * float(sigma) / 64)
  np.testing.assert_allclose(z.var(0)[0], float(sigma) ** 2, rtol=0.1)


def test_diffusion_loss_is_snr_weighted_and_integrates_to_the_snr_range():
  """-SNR'(t)/2 ||e - e_hat||^2 at one t; over t in [0, 1] the zero estimate costs (SNR(0) - SNR(1))/2 ||e||^2, and a
  perfect estimate nothing."""
  e = table()[None, :5]
  np.testing.assert_allclose(gaussian.diffusion_loss(e, jnp.zeros_like(e), jnp.array([0.25]), SCHEDULE),
                             0.5 * 16.0 * np.exp(9.0 - 4.0) * 16.0, rtol=1e-5)
  t = (jnp.arange(20000) + 0.5) / 20000  # midpoint rule
  e_many = jnp.broadcast_to(e[:, :1], (20000, 1, 16))
  mean = jnp.mean(gaussian.diffusion_loss(e_many, jnp.zeros_like(e_many), t, SCHEDULE))
  np.testing.assert_allclose(mean, 0.5 * (np.exp(9.0) - np.exp(-7.0)) * 16.0, rtol=1e-4)
  np.testing.assert_allclose(gaussian.diffusion_loss(e, e, jnp.array([0.1]), SCHEDULE), 0.0)


def test_prior_kl_is_the_gaussian_kl_and_vanishes_without_signal():
  e = table()[None, :3]
  alpha_1, sigma_1 = SCHEDULE.alpha_sigma(1.0)
  mean, var = alpha_1 * e, sigma_1**2
  expected = jnp.sum(0.5 * (var + mean**2) - 0.5 - 0.5 * jnp.log(var), axis=-1)
  np.testing.assert_allclose(gaussian.prior_kl(e, SCHEDULE), expected, rtol=1e-5)
  assert float(gaussian.prior_kl(e, gaussian.LogSNRSchedule(9.0, -30.0)).max()) < 1e-6


def test_readout_is_the_bayes_posterior_and_maps_clean_embeddings_to_their_tokens():
  E = table()
  tokens = jnp.array([[0, 5, 11, 3]])
  t0 = jnp.zeros((1,))
  alpha_0, sigma_0 = SCHEDULE.alpha_sigma(0.0)
  z0 = alpha_0 * E[tokens]
  logits = gaussian.readout_logits(z0, E, t0, SCHEDULE)
  np.testing.assert_array_equal(jnp.argmax(logits, -1), tokens)
  # the posterior of a uniform prior over tokens: softmax of the Gaussian log densities
  z = z0 + 0.3 * jax.random.normal(jax.random.key(2), z0.shape)
  log_density = -0.5 * jnp.sum((z[:, :, None, :] / alpha_0 - E[None, None]) ** 2, -1) * (alpha_0 / sigma_0) ** 2
  np.testing.assert_allclose(jax.nn.log_softmax(gaussian.readout_logits(z, E, t0, SCHEDULE)),
                             jax.nn.log_softmax(log_density), rtol=1e-4, atol=1e-2)


def test_rounding_loss_is_minimal_at_the_true_tokens():
  E = table()
  tokens = jnp.array([[1, 2, 7, 7, 9]])
  logits = gaussian.readout_logits(SCHEDULE.alpha_sigma(0.5)[0] * E[tokens], E, jnp.array([0.5]), SCHEDULE)
  at_truth = gaussian.rounding_cross_entropy(logits, tokens)
  for other in range(12):
    wrong = jnp.full_like(tokens, other)
    assert bool(jnp.all((gaussian.rounding_cross_entropy(logits, wrong) >= at_truth) | (wrong == tokens)))
  recon = gaussian.reconstruction_nll(jax.random.key(3), E[tokens], tokens, E, SCHEDULE)
  assert float(recon.max()) < 1e-3  # at log-SNR 9 the clean readout is all but certain


def test_ddim_with_the_true_estimate_follows_the_same_noise_to_the_data():
  E = table()
  e = E[jnp.array([[4, 8]])]
  eps = jax.random.normal(jax.random.key(5), e.shape)
  t, s = jnp.array([0.9]), jnp.array([0.4])
  alpha_t, sigma_t = (x[:, None, None] for x in SCHEDULE.alpha_sigma(t))
  alpha_s, sigma_s = (x[:, None, None] for x in SCHEDULE.alpha_sigma(s))
  z_s = gaussian.ddim_step(alpha_t * e + sigma_t * eps, e, t, s, SCHEDULE)
  np.testing.assert_allclose(z_s, alpha_s * e + sigma_s * eps, rtol=1e-5, atol=1e-5)
  # eta = 1: the ancestral step's noise has the posterior variance sigma_s^2 (1 - SNR(t)/SNR(s))
  draws = jax.vmap(lambda k: gaussian.ddim_step(alpha_t * e + sigma_t * eps, e, t, s, SCHEDULE, k, eta=1.0))(
      jax.random.split(jax.random.key(6), 4096))
  expected_var = sigma_s[0, 0, 0]**2 * (1.0 - jnp.exp(SCHEDULE.log_snr(0.9) - SCHEDULE.log_snr(0.4)))
  np.testing.assert_allclose(draws.var(0).mean(), expected_var, rtol=0.1)


def oracle_logits_fn(truth_BxL, vocab):
  """A denoiser that knows the answer: large logits on the true token at every position, whatever z_t."""
  return lambda z, t: 30.0 * jax.nn.one_hot(truth_BxL, vocab)


def test_ddim_and_ddpm_from_noise_reach_the_oracles_tokens_and_keep_the_fixed_ones():
  from dlm_jax import special_tokens
  from dlm_jax.sampling import SamplerConfig, continuous
  E = table(vocab=12)
  truth = jnp.array([[5, 6, 7, 8, 9, 10], [11, 10, 9, 8, 7, 6]])
  fixed = jnp.zeros(truth.shape, bool).at[:, 0].set(True)
  tokens = jnp.where(fixed, truth, special_tokens.MASK)
  for method in ("ddim", "ddpm"):
    cfg = SamplerConfig(steps=8, method=method, process="gaussian", log_snr_max=9.0, log_snr_min=-7.0,
                        record_trajectory=True)
    out = continuous.gaussian_sample(oracle_logits_fn(truth, 12), E, jax.random.key(0), tokens, fixed, cfg)
    np.testing.assert_array_equal(out.tokens_BxL, truth)
    assert out.trajectory_SxBxL.shape == (9, 2, 6)
    np.testing.assert_array_equal(out.trajectory_SxBxL[0], tokens)
    np.testing.assert_array_equal(out.reveal_step_BxL[:, 0], -1)
    assert int(out.network_calls) == 8 and float(out.confidence_BxL[:, 1:].min()) > 0.99


def test_gaussian_sampler_options_are_checked():
  from dlm_jax.sampling import SamplerConfig
  with pytest.raises(ConfigError, match="samples with method 'ddim' or 'ddpm'"):
    SamplerConfig(method="confidence", process="gaussian")
  with pytest.raises(ConfigError, match="samples with method 'ddim' or 'ddpm'"):
    SamplerConfig(method="ddim", process="absorbing")
  with pytest.raises(ConfigError, match=r"\['block_length'\] are not DDIM/DDPM options"):
    SamplerConfig(method="ddim", process="gaussian", block_length=4)


def test_embedding_objective_needs_a_time_conditioned_transformer():
  from conftest import tiny_config
  from dlm_jax import objectives
  c = tiny_config(**{"diffusion.objective": "embedding"})
  with pytest.raises(ConfigError, match="model.time_conditioning=True"):
    objectives.from_config(c, 50)


def test_embedding_run_trains_evaluates_and_samples(tmp_path):
  """The 'embedding' arm end to end on the tiny config: its NELBO terms are logged, the training loss (the rounding
  cross-entropy) falls, the evaluation NELBO lies among the training estimates of the same bound (24 steps are too few
  for the bound itself to fall: its high-SNR draws dominate it), and the DDIM sampler writes samples."""
  import configs.default as default_config
  from conftest import tiny_config
  from dlm_jax.training import loop
  c = tiny_config(**{"train.num_steps": 24, "train.sample_every": 24, "eval.every": 24, "tensorboard": False,
                     "train.log_every": 12, "train.checkpoint_every": 24})
  default_config.beyond_masking_arm(c, "embedding")
  summary = loop.train(c, str(tmp_path))
  history = summary["history"]
  losses = [h["loss"] for h in history]
  np.testing.assert_allclose(losses, [h["embedding/rounding"] for h in history], rtol=1e-6)
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses  # nats per token
  last = history[-1]
  np.testing.assert_allclose(last["nll_per_token"], last["embedding/diffusion"] + last["embedding/prior"]
                             + last["embedding/reconstruction"], rtol=1e-5)
  assert last["embedding/prior"] >= 0 and last["embedding/rounding"] > 0
  # The evaluation runs the same bound on held-out windows: its figure lies among the training steps' estimates of it
  # (measured 1,346 nats/token among 1,134-5,432; a per-sequence or per-bit scaling error would leave that range).
  train_nll = [h["nll_per_token"] for h in history]
  assert min(train_nll) <= summary["eval_nll_per_token"] <= max(train_nll)
  samples = (tmp_path / "samples.txt").read_text()
  assert "=== step 24 samples ===" in samples and len(samples.splitlines()) >= 2
