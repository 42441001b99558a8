"""Plug-and-play control (Diffusion-LM, Li et al. 2022, §5): steer a trained sampler towards a property c with the
gradient of a classifier p_phi(c | x_t, t) trained on the run's noisy states (models/classifier.py,
training/classifier.py), the denoiser untouched. Bayes' rule on the reverse process,

    p(x_s | x_t, c)  proportional to  p_theta(x_s | x_t) p_phi(c | x_s)^gamma,

with gamma = `scale` (1: the conditional distribution itself, given a true classifier; larger: sharper control at a
cost in fluency; 0: the unguided sampler, exactly).

**Embedding diffusion** (continuous.py): the guided score is grad log p(z_t) + gamma grad log p_phi(c | z_t) (Dhariwal
and Nichol 2021's classifier guidance). With the x_0 estimate e_hat, the model's score is (alpha_t e_hat - z_t) /
sigma_t^2, so the guided score is that of the shifted estimate

    e_hat' = e_hat + gamma (sigma_t^2 / alpha_t) grad_z log p_phi(c | z_t, t)            (`gaussian_guidance`),

and the DDIM / DDPM step runs on e_hat' (each position at its own alpha, sigma under a position skew). Diffusion-LM
takes the same gradient inside 3 Adagrad steps on z_{t-1} with a fluency term; the closed form is one classifier
gradient per reverse step and no inner optimizer, with gamma as the one knob.

**Masked diffusion** (masked.py): revealing position i as v moves x_t to x_t^{i<-v}; the guided distribution of the
revealed token is p_theta(x_0^i = v | x_t) p_phi(c | x_t^{i<-v})^gamma / Z (Nisonoff et al. 2024, "Unlocking guidance
for discrete state-space diffusion and flow models"; DiGress's guidance, Vignac et al. 2023). Scoring every
x_t^{i<-v} would take L V classifier calls per step, so the classifier's log-probability is expanded to first order in
its one-hot input u (Taylor-approximated guidance):

    log p_phi(c | x_t^{i<-v}) - log p_phi(c | x_t)  ~  G_{i,v} - G_{i,x_t^i},
    G = grad_u log p_phi(c | u) at u = one_hot(x_t),

and since G_{i,x_t^i} does not depend on v it leaves each position's softmax: the guided logits are
logits + gamma G (`masked_guidance`, one classifier forward and backward per reverse step). The reveal policies,
remasking and blocks then run on the guided logits as on any others. The KV caches ("dual", "prefix") compute logits
outside the denoising function and are refused; the "unchanged" cache too (it would reuse logits across steps whose
guidance differs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.sampling import continuous
from dlm_jax.sampling.config import SamplerConfig
from dlm_jax.sampling.sampler import family_of, sample

FAMILIES = ("absorbing", "gaussian")  # the sampler families that can be steered


def masked_guidance(denoise_fn, log_prob_fn, scale: float, vocab_size: int):
  """`denoise_fn(x, t, carry) -> (logits, priority, carry)` with its logits moved to logits + scale G, G the gradient
  of `log_prob_fn(one_hot_BxLxV, t_B) -> log p(c | x_t) [B]` at one_hot(x_t) over `vocab_size` ids (module
  docstring)."""

  def guided(x_BxL, t_B, carry):
    logits_BxLxV, priority, carry = denoise_fn(x_BxL, t_B, carry)
    one_hot_BxLxV = jax.nn.one_hot(x_BxL, vocab_size, dtype=jnp.float32)
    grad_BxLxV = jax.grad(lambda u: jnp.sum(log_prob_fn(u, t_B)))(one_hot_BxLxV)
    return logits_BxLxV.astype(jnp.float32) + scale * grad_BxLxV[..., :logits_BxLxV.shape[-1]], priority, carry

  return guided


def gaussian_guidance(log_prob_fn, scale: float, schedule):
  """`(z_BxLxD, t_B) -> the shift of the x_0 estimate`, scale (sigma_t^2 / alpha_t) grad_z log p(c | z_t, t) with each
  position's alpha, sigma on `schedule` (gaussian.LogSNRSchedule; module docstring); `log_prob_fn(z, t) -> [B]`."""

  def shift(z_BxLxD, t_B):
    grad_BxLxD = jax.grad(lambda z: jnp.sum(log_prob_fn(z, t_B)))(z_BxLxD)
    alpha_BxL, sigma_BxL = schedule.alpha_sigma(schedule.position_times(t_B, z_BxLxD.shape[1])[0])
    return (scale * jnp.square(sigma_BxL) / alpha_BxL)[..., None] * grad_BxLxD

  return shift


def check_controllable(cfg: SamplerConfig, objective=None):
  """Raises ConfigError unless the run's sampler can be steered (`FAMILIES`; the masked one without a cache)."""
  family = family_of(cfg, objective)
  if family not in FAMILIES:
    raise ConfigError(f"Classifier guidance steers the masked and the embedding-diffusion samplers; this run samples "
                      f"with the {family!r} sampler.")
  if family == "absorbing" and cfg.cache != "none":
    raise ConfigError(f"Classifier guidance needs every step's logits from the denoiser; sample.cache={cfg.cache!r} "
                      "computes or reuses them outside it. Use --cache=none.")


def make_controlled_sampler(graphdef, other, cfg: SamplerConfig, objective, classifier_graphdef, target: int):
  """jit(run(params, classifier_params, rng, tokens_BxL, fixed_BxL, scale) -> SampleOutput): the run's sampler steered
  towards class `target` of the classifier (models/classifier.PropertyClassifier, split as `classifier_graphdef` and
  its parameters) with strength `scale` (module docstring), a traced scalar: one compilation serves every scale."""
  check_controllable(cfg, objective)
  family = family_of(cfg, objective)

  def log_prob_fn(classifier_params):
    classifier = lambda: nnx.merge(classifier_graphdef, classifier_params)
    return lambda inputs, t_B: jax.nn.log_softmax(classifier()(inputs, t_B), axis=-1)[:, target]

  @jax.jit
  def run(params, classifier_params, rng, tokens_BxL, fixed_BxL, scale):
    model = lambda: nnx.merge(graphdef, params, other)
    if family == "gaussian":
      schedule = continuous.schedule_of(cfg)
      logits_fn = lambda z, t: model()(tokens_BxL, t, embeddings_BxLxD=z).logits_BxLxV
      return continuous.gaussian_sample(logits_fn, model().diffusion_table(), rng, tokens_BxL, fixed_BxL, cfg,
                                        x0_shift_fn=gaussian_guidance(log_prob_fn(classifier_params), scale, schedule))
    denoise = lambda x, t, carry: model().sample_step(x, t, carry)
    guided = masked_guidance(denoise, log_prob_fn(classifier_params), scale, model().cfg.vocab_size)
    return sample(guided, rng, tokens_BxL, fixed_BxL, cfg, init_carry=model().init_sample_carry(*tokens_BxL.shape))

  return run
