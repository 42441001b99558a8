"""Continuous (Gaussian) diffusion of token embeddings: the math of Diffusion-LM / CDCD-style text diffusion, as the
variational diffusion model of Kingma et al. 2021 (VDM) in continuous time.

Each token x_i is encoded as an embedding e_i = e(x_i) in R^D (a row of a normalized table, `normalized_table`) and
diffused with the variance-preserving process

    z_t = alpha_t e + sigma_t eps,   eps ~ N(0, I),   alpha_t^2 = sigmoid(lambda(t)),   sigma_t^2 = sigmoid(-lambda(t)),

where lambda(t) = log(alpha_t^2 / sigma_t^2) is the log signal-to-noise ratio, decreasing from lambda_max at t = 0 to
lambda_min at t = 1 (`LogSNRSchedule`). The negative ELBO of x (VDM eq. 11 with T -> infinity, eq. 17) is

    -log p(x) <= L_prior + L_diffusion + L_reconstruction,
    L_prior          = KL(q(z_1 | e) || N(0, I)) = 1/2 sum_d (sigma_1^2 + alpha_1^2 e_d^2 - 1 - log sigma_1^2),
    L_diffusion      = -1/2 E_{t ~ U(0, 1), eps} [ SNR'(t) ||e - e_hat(z_t, t)||^2 ],   SNR(t) = exp(lambda(t)),
    L_reconstruction = -E_{z_0 ~ q(z_0 | e)} [ log p(x | z_0) ],

summed over positions (equivalently -1/2 lambda'(t) ||eps - eps_hat||^2, as ||eps - eps_hat||^2 =
SNR(t) ||e - e_hat||^2). e_hat is the denoiser's estimate of the clean embedding; with CDCD's parameterization
(Dieleman et al. 2022) it is the expectation of the embedding under the denoiser's token distribution,
e_hat = softmax(logits) @ E, so the network outputs token logits as every other denoiser here does. The decoder
p(x | z_0) reads the nearest embedding out of z_0 / alpha_0 with a Gaussian likelihood of variance sigma_0^2 / alpha_0^2
(`reconstruction_nll`), a softmax over the vocabulary.

Why this bound and not the seed's loss. The seed (004 §3) sums an unweighted MSE, a "terminal" loss and a decoder
cross-entropy; an unweighted MSE is not a likelihood bound (it weights all noise levels alike), so its numbers could not
sit in the same table as the masked and uniform NELBOs. The VDM weighting -SNR'(t)/2 makes the MSE term exact in
nats, the prior KL is the seed's terminal loss done right, and the reconstruction term is its decoder loss evaluated at
z_0. The bound holds for any embedding table (the table is the encoder), so learning it is allowed; what prevents the
collapse the seed warns of (all embeddings shrinking to make the MSE small) is the normalization: every row of E has
norm sqrt(D) (`normalized_table`), so the signal-to-noise ratio means what the schedule says. The anchor loss of the
seed (Difformer's ||e(x) - e(round(e(x)))||^2) is replaced by the rounding cross-entropy of the denoiser's logits
(`rounding_cross_entropy`), CDCD's training loss, which is minimal exactly when the readout returns the true tokens.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LogSNRSchedule:
  """lambda(t) from lambda_max at t = 0 to lambda_min at t = 1, of one of two shapes (`shape`):

  * "linear": lambda(t) = lambda_max + (lambda_min - lambda_max) t, VDM's fixed linear log-SNR schedule;
  * "sqrt": Diffusion-LM's square-root schedule (Li et al. 2022), alpha_t^2 = 1 - sqrt(u(t)) with u linear in t,
    u(t) = u_0 + (u_1 - u_0) t. Diffusion-LM fixes u_0 = s = 1e-4 and u_1 ~ 1; here the endpoints are those of the
    same lambda range, u_0 = (1 - sigmoid(lambda_max))^2 and u_1 = (1 - sigmoid(lambda_min))^2 (4.5e-5 and 0.99991 at
    the defaults), so the two shapes differ only in how they spend t: lambda = log(1 - sqrt(u)) - log(sqrt(u)), and
    lambda'(t) = -(u_1 - u_0) / (2 u (1 - sqrt(u))). The sqrt shape raises the noise at once near t = 0 and then
    spends most of [0, 1] at moderate noise (lambda in [-4, 1] for 0.1 < t < 0.96, against a third of it for the
    linear shape), which Diffusion-LM found to suit embeddings (nearby tokens stay distinguishable at small noise, so
    low-noise steps teach little). The continuous-time bound depends on the schedule only through its
    endpoints (VDM, Kingma et al. 2021, eq. 17): the shape changes the variance of its Monte Carlo estimate and,
    with the rounding cross-entropy as the training loss (objectives/embedding.py), which noise levels training sees.

  The defaults suit embeddings of norm sqrt(D) (VDM's 13.3 .. -5 were chosen for 8-bit pixels): at lambda_max = 5 two
  tokens whose embeddings lie at squared distance >= 2 are read out with a logit gap >= e^5 = 148, so the
  reconstruction term is all but exact, while the weight -SNR'(t)/2 of the MSE stays below 1.2e3 for the linear shape
  (it is e^lambda_max times |lambda'| / 2); at lambda_min = -10 the prior term costs about D sigmoid(-10) / 2 = 2.3e-5 D
  nats per token (0.02 at D = 768).

  Position-dependent noise levels (`position_skew` = Delta in [0, 1); seed 004's SeqDiffuSeq item, in the linear form
  of AR-Diffusion, Wu et al. 2023): position i of L runs the schedule on its own clock,

      lambda_i(t) = lambda(tau_i(t)),   tau_i(t) = clip((t - a_i) / (1 - Delta), 0, 1),   a_i = Delta (1 - i / (L - 1)),

  so that at every t the later positions are at least as noisy as the earlier ones: position 0 stays clean until
  t = Delta, the last position is fully noised from t = 1 - Delta on, and in the reverse process the sequence resolves
  from left to right (a soft autoregressive order), each position still crossing the whole log-SNR range over a window
  of length 1 - Delta. Every tau_i is monotone with tau_i(0) = 0 and tau_i(1) = 1, so the prior and reconstruction
  terms are unchanged and the diffusion term becomes, per position,

      L_diffusion,i = -1/2 E_t [ lambda'(tau_i) tau_i'(t) e^{lambda(tau_i)} ||e_i - e_hat_i||^2 ],

  tau_i' = 1 / (1 - Delta) inside the window, 0 outside (the noise level does not move there).

  It is still the continuous-time bound of this (per-position) process. The denoiser sees t (and its positions), from
  which tau_i follows. Delta = 0 is the shared schedule exactly. The position is the importance measure here: a learned
  per-position schedule (SeqDiffuSeq's adaptive one) would fit the a_i to training losses instead."""
  log_snr_max: float = 5.0
  log_snr_min: float = -10.0
  shape: str = "linear"
  position_skew: float = 0.0

  SHAPES = ("linear", "sqrt")

  def __post_init__(self):
    if not self.log_snr_max > self.log_snr_min:
      raise ConfigError(f"The log-SNR must decrease: diffusion.log_snr_max={self.log_snr_max} must exceed "
                        f"diffusion.log_snr_min={self.log_snr_min}.")
    if self.shape not in self.SHAPES:
      raise ConfigError(f"diffusion.log_snr_shape must be one of {self.SHAPES}, got {self.shape!r}.")
    if not 0.0 <= self.position_skew < 1.0:
      raise ConfigError(f"diffusion.position_skew must be in [0, 1), got {self.position_skew}.")

  def position_times(self, t_B, length: int):
    """(tau_BxL, dtau_dt_BxL): each position's own time tau_i(t) and its derivative (class docstring); tau = t and
    tau' = 1 everywhere when position_skew = 0."""
    t_Bx1 = jnp.asarray(t_B, jnp.float32)[:, None]
    if not self.position_skew:
      return jnp.broadcast_to(t_Bx1, (t_Bx1.shape[0], length)), jnp.ones((t_Bx1.shape[0], length), jnp.float32)
    skew = jnp.float32(self.position_skew)
    rank_1xL = (jnp.arange(length, dtype=jnp.float32) / max(length - 1, 1))[None]
    u_BxL = (t_Bx1 - skew * (1.0 - rank_1xL)) / (1.0 - skew)
    inside_BxL = (u_BxL > 0.0) & (u_BxL < 1.0)
    return jnp.clip(u_BxL, 0.0, 1.0), jnp.where(inside_BxL, 1.0 / (1.0 - skew), 0.0)

  def position_log_snr(self, t_B, length: int):
    """lambda_i(t) = lambda(tau_i(t)), [B, L]."""
    return self.log_snr(self.position_times(t_B, length)[0])

  def _u(self, t):
    """The sqrt shape's u(t) and (u_0, u_1)."""
    u0 = (1.0 - jax.nn.sigmoid(jnp.float32(self.log_snr_max))) ** 2
    u1 = (1.0 - jax.nn.sigmoid(jnp.float32(self.log_snr_min))) ** 2
    return u0 + (u1 - u0) * jnp.asarray(t, jnp.float32), u0, u1

  def log_snr(self, t):
    t = jnp.asarray(t, jnp.float32)
    if self.shape == "sqrt":
      u, _, _ = self._u(t)
      root = jnp.sqrt(u)
      return jnp.log1p(-root) - jnp.log(root)
    return self.log_snr_max + (self.log_snr_min - self.log_snr_max) * t

  def dlog_snr(self, t):
    """lambda'(t) (< 0)."""
    if self.shape == "sqrt":
      u, u0, u1 = self._u(t)
      return -(u1 - u0) / (2.0 * u * (1.0 - jnp.sqrt(u)))
    return jnp.full(jnp.shape(t), self.log_snr_min - self.log_snr_max, jnp.float32)

  def alpha_sigma(self, t):
    """(alpha_t, sigma_t) of the variance-preserving process: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
    lam = self.log_snr(t)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def normalized_table(table_VxD):
  """Each row scaled to norm sqrt(D): every embedding has unit variance per dimension on average, so that the schedule's
  signal-to-noise ratio is the actual one and the table cannot shrink to game the MSE."""
  table_VxD = table_VxD.astype(jnp.float32)
  norm_V = jnp.linalg.norm(table_VxD, axis=-1, keepdims=True)
  return table_VxD * (jnp.sqrt(jnp.float32(table_VxD.shape[-1])) / jnp.maximum(norm_V, 1e-6))


def forward_sample(rng, e_BxLxD, t_B, schedule: LogSNRSchedule):
  """z_t = alpha_t e + sigma_t eps (each position at its own alpha_{tau_i(t)} with a position skew): (z_t, eps)."""
  eps_BxLxD = jax.random.normal(rng, e_BxLxD.shape, jnp.float32)
  alpha_BxL, sigma_BxL = schedule.alpha_sigma(schedule.position_times(t_B, e_BxLxD.shape[1])[0])
  return alpha_BxL[..., None] * e_BxLxD + sigma_BxL[..., None] * eps_BxLxD, eps_BxLxD


def expected_embedding(logits_BxLxV, table_VxD):
  """CDCD's x_0 estimate: E_{x ~ softmax(logits)}[e(x)] = softmax(logits) @ E, [B, L, D], in float32."""
  return jax.nn.softmax(logits_BxLxV.astype(jnp.float32), axis=-1) @ table_VxD.astype(jnp.float32)


def diffusion_loss(e_BxLxD, e_hat_BxLxD, t_B, schedule: LogSNRSchedule):
  """-1/2 SNR'(t) ||e - e_hat||^2 = -1/2 lambda'(t) e^lambda(t) ||e - e_hat||^2 per position [B, L] (nats): the
  one-sample estimate of L_diffusion at time t; with a position skew, -1/2 lambda'(tau_i) tau_i'(t) e^lambda(tau_i)
  at position i (`LogSNRSchedule`)."""
  squared_BxL = jnp.sum(jnp.square(e_BxLxD - e_hat_BxLxD), axis=-1)
  tau_BxL, dtau_BxL = schedule.position_times(t_B, e_BxLxD.shape[1])
  weight_BxL = -0.5 * schedule.dlog_snr(tau_BxL) * dtau_BxL * jnp.exp(schedule.log_snr(tau_BxL))
  return weight_BxL * squared_BxL


def prior_kl(e_BxLxD, schedule: LogSNRSchedule):
  """KL(q(z_1 | e) || N(0, I)) per position [B, L] (nats), in closed form."""
  alpha_1, sigma_1 = schedule.alpha_sigma(jnp.ones(()))
  var_1 = jnp.square(sigma_1)
  return 0.5 * jnp.sum(var_1 + jnp.square(alpha_1 * e_BxLxD) - 1.0 - jnp.log(var_1), axis=-1)


def readout_logits(z_BxLxD, table_VxD, t_B, schedule: LogSNRSchedule):
  """Logits of the Gaussian decoder p(x | z_t) = N(z_t / alpha_t; e(x), sigma_t^2 / alpha_t^2 I) over the vocabulary,
  normalized over x (a uniform prior over tokens): -||z/alpha - e_v||^2 alpha^2 / (2 sigma^2), up to a constant."""
  alpha_B, sigma_B = schedule.alpha_sigma(t_B)
  scaled_BxLxD = z_BxLxD.astype(jnp.float32) / alpha_B[:, None, None]
  table_VxD = table_VxD.astype(jnp.float32)
  distance_BxLxV = (jnp.sum(jnp.square(scaled_BxLxD), -1, keepdims=True) - 2.0 * scaled_BxLxD @ table_VxD.T
                    + jnp.sum(jnp.square(table_VxD), -1)[None, None, :])
  return -0.5 * distance_BxLxV * jnp.square(alpha_B / sigma_B)[:, None, None]


def reconstruction_nll(rng, e_BxLxD, x0_BxL, table_VxD, schedule: LogSNRSchedule):
  """-log p(x | z_0) per position [B, L] (nats) for one z_0 ~ q(z_0 | e): the rounding step's likelihood."""
  t0_B = jnp.zeros((e_BxLxD.shape[0],), jnp.float32)
  z0_BxLxD, _ = forward_sample(rng, e_BxLxD, t0_B, schedule)
  logits_BxLxV = readout_logits(z0_BxLxD, table_VxD, t0_B, schedule)
  return rounding_cross_entropy(logits_BxLxV, x0_BxL)


def rounding_cross_entropy(logits_BxLxV, x0_BxL):
  """-log softmax(logits)[x_0] per position [B, L]: the anchor/rounding loss on the denoiser's token logits (CDCD's
  training loss), minimal when the readout puts its mass on the true tokens."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  target_BxL = jnp.take_along_axis(logits_BxLxV, x0_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_BxL


def ddim_step(z_BxLxD, e_hat_BxLxD, t_B, s_B, schedule: LogSNRSchedule, rng=None, eta: float = 0.0):
  """One reverse step from time t to s < t on `schedule` (`ddim_update` with each position's lambda_i(t),
  lambda_i(s); a position whose noise level does not move between them keeps its z)."""
  length = z_BxLxD.shape[1]
  lam_t, lam_s = schedule.position_log_snr(t_B, length)[..., None], schedule.position_log_snr(s_B, length)[..., None]
  return ddim_update(z_BxLxD, e_hat_BxLxD, lam_t, lam_s, rng, eta)


def ddim_update(z, x_hat, lam_t, lam_s, rng=None, eta: float = 0.0):
  """One reverse step of the variance-preserving process from log-SNR lambda_t to lambda_s >= lambda_t given the clean
  estimate x_hat (Song et al. 2021, DDIM, with eta = 0; with eta = 1 and `rng` the ancestral DDPM step, sampling
  q(z_s | z_t, x_hat)), elementwise (the lambdas broadcast against z, so each element may have its own schedule):
      eps_hat = (z_t - alpha_t x_hat) / sigma_t,
      z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c noise,   c = eta sigma_{t->s},
  where sigma_{t->s}^2 = sigma_s^2 (1 - SNR(t)/SNR(s)) is the variance of q(z_s | z_t, x)."""
  alpha_t, sigma_t = jnp.sqrt(jax.nn.sigmoid(lam_t)), jnp.sqrt(jax.nn.sigmoid(-lam_t))
  alpha_s, sigma_s = jnp.sqrt(jax.nn.sigmoid(lam_s)), jnp.sqrt(jax.nn.sigmoid(-lam_s))
  eps_hat = (z - alpha_t * x_hat) / sigma_t
  c = eta * sigma_s * jnp.sqrt(jnp.clip(1.0 - jnp.exp(lam_t - lam_s), 0.0, 1.0))
  z_s = alpha_s * x_hat + jnp.sqrt(jnp.maximum(jnp.square(sigma_s) - jnp.square(c), 0.0)) * eps_hat
  if eta > 0.0 and rng is not None:
    z_s = z_s + c * jax.random.normal(rng, jnp.shape(z), jnp.float32)
  return z_s
