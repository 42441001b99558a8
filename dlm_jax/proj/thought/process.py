"""Training and scoring a masked-diffusion LM with a Gaussian thought tensor (model.py; seed 003).

**Where a clean thought comes from.** A thought is a memory of earlier generations (model.py), so training
unrolls the persistence it is meant for. Each training row of (K + 1) W tokens (data.seq_len, K = thought.
context_windows) is K context windows and one target window of W tokens. The memory starts empty (T_0 = 0) and each
context window is read clean, with the memory clean (t = 0), and pushes its evolved thought:
    e_k = Evolved(x^k, T_k),   T_{k+1} = push(T_k, e_k)       k = 0 .. K-1   (one lax.scan; gradients flow through it)
The target window is then denoised given T_j, j drawn uniformly from 0..K per row, so that the model sees every
memory depth, the empty memory included (which makes "the same network without its thought", T = 0, an in-training
ablation, and the NELBO per depth a curve).

**Joint forward process.** At one t ~ U[0, 1] (antithetic) the target's tokens are masked with keep probability
alpha(t) (the run's masking schedule) and the thought is Gaussian-noised, z = a_i T + s_i eps per element, with
    a_i^2 = sigmoid(lambda_i(t)),  s_i^2 = sigmoid(-lambda_i(t)),  lambda_i(t) = logit(clip(alpha(t)^kappa)) + gamma S_i
kappa = thought.rate in (0, 1] makes the thought's signal fraction alpha(t)^kappa >= alpha(t): it is corrupted more
slowly than the text at every t (the seed's "thoughts corrupt more slowly") and reaches the N(0, I) prior exactly where
the text is fully masked (alpha(1) = 0; the clip keeps lambda in [-11.51, 11.51]). The seed's saliency noise
(eps (1 - importance)) changes the marginal's variance, so that z_1 would not be N(0, I); instead saliency S_i =
|T_i| / max_j |T_j| (per example, no gradient) raises each element's log-SNR by gamma S_i (thought.saliency = gamma;
0 = off): salient elements are noised less and every element stays variance-preserving. With probability
thought.clean_prob the target instead gets the clean memory (t_thought = 0): the conditional model p(x | T) that
persistence (a given thought) and the evaluation use.

**Losses** (each weighted in config.thought and logged as `thought/NAME`). The seed's sketch scores text by MSE of
embeddings; text here is masked, so the text term is the masked-diffusion NELBO of the target window (MD4/MDLM),
    text           = NELBO(x^target | T_j noised) per token   (the bound, in nats; thought.text_weight)
    reconstruction = mean_i (T_hat_0,i - T_i)^2   (x_0-parameterized denoising of the thought, no gradient into the
                     target T: the denoiser learns to read the memory, the memory is not pulled towards what is easy
                     to reconstruct)
    coherence      = mean_k mean_i (e_k,i - e_k+1,i)^2 / 2 over consecutive context windows: slowness (slow feature
                     analysis, Wiskott & Sejnowski 2002) as the seed's unspecified "coherence regularizer": a thought
                     of a stream of text should change little from one window to the next, which is also what the
                     stability metric measures; compression is structural (the (n-1)-D bottleneck) and is measured by
                     a probe, not regularized
    alignment      = InfoNCE (van den Oord et al. 2018, CPC) between the code of the memory T_K and the code of the
                     target window's text over the batch, both directions, temperature tau: the thought must single
                     out the text it precedes (the seed's "alignment loss"; accuracy logged as thought/alignment_acc)
    loss = text_weight text + reconstruction_weight reconstruction + coherence_weight coherence
           + alignment_weight alignment                             (seed weights 1, 0.5, 0.1, 0.1)
The reported NELBO (`nll_per_token`) is the text term alone: a bound on -log p(x^target | T) given the memory, not on
the thought (the thought is the model's own latent, not data).

**Evaluation** scores target tokens 2..W given token 1 and the clean memory of all K context windows (`evaluation_nll`,
the trainer's validation figure); `depth_nll` gives it for any memory depth j (j = 0: the empty memory).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

import flax.struct

from dlm_jax.diffusion import forward
from dlm_jax.errors import ConfigError

SIGNAL_CLIP = 1e-5  # the thought's signal fraction a^2 stays in [1e-5, 1 - 1e-5] ...
LOG_SNR_LIMIT = math.log((1.0 - SIGNAL_CLIP) / SIGNAL_CLIP)  # ... i.e. |lambda| <= 11.51, saliency offsets included


@flax.struct.dataclass
class ThoughtInput:
  """The thought the denoiser reads: z [B, *thought_dims] (noisy, or clean with t = 0) and its noise level t_B."""
  z: jax.Array
  t_B: jax.Array


def check_dims(dims) -> tuple:
  """The validated thought shape as a tuple of ints (n >= 2 positive sizes), or () when the pathway is off."""
  dims = tuple(int(d) for d in (dims or ()))
  if dims and (len(dims) < 2 or min(dims) < 1):
    raise ConfigError(f"model.thought_dims must be () (no thought) or n >= 2 positive sizes (the last one is the "
                      f"memory depth), e.g. (8, 8, 4); got {dims}.")
  return dims


def evolved_dims(dims) -> tuple:
  """The (n-1)-D evolved thought's shape: thought_dims without its last (memory-depth) axis."""
  return tuple(dims[:-1])


def push(memory_BxT, evolved_BxE):
  """T_next = concat(e[..., None], T[..., :H-1]): the newest thought in slot 0, the oldest dropped."""
  return jnp.concatenate([evolved_BxE[..., None].astype(memory_BxT.dtype), memory_BxT[..., :-1]], axis=-1)


def interpolate(thought_a, thought_b, alpha):
  """(1 - alpha) a + alpha b, elementwise (alpha a scalar or broadcastable): alpha = 0 gives a, alpha = 1 gives b. The
  sampler then denoises from the blend (sampler.py, `interpolation_start`)."""
  alpha = jnp.asarray(alpha, jnp.float32)
  return (1.0 - alpha) * jnp.asarray(thought_a, jnp.float32) + alpha * jnp.asarray(thought_b, jnp.float32)


@dataclasses.dataclass(frozen=True)
class ThoughtProcess:
  """The thought's forward process and loss weights (module docstring): `dims` is model.thought_dims, every other
  field a config.thought field, declared (with its default) here only (objective.config_section)."""
  dims: tuple
  # Each row of data.seq_len = (context_windows + 1) W tokens is context_windows windows whose evolved thoughts fill
  # the memory, and a target window denoised together with the Gaussian-noised memory.
  context_windows: int = 3
  rate: float = 0.5  # the thought's signal fraction is alpha(t)^rate: corrupted more slowly than the text
  saliency: float = 0.0  # gamma: each element's log-SNR + gamma |T_i| / max |T| (0: off)
  clean_prob: float = 0.5  # share of target windows given the clean memory (the conditional model p(x | T))
  text_weight: float = 1.0  # the loss weights (seed 003's 1, 0.5, 0.1, 0.1), each term logged as thought/NAME
  reconstruction_weight: float = 0.5
  coherence_weight: float = 0.1
  alignment_weight: float = 0.1
  alignment_temperature: float = 0.1

  def __post_init__(self):
    object.__setattr__(self, "dims", check_dims(self.dims))
    if not self.dims:
      raise ConfigError("The thought objective needs a thought shape: model.thought_dims=(), give one, e.g. "
                        "--config.model.thought_dims='(8, 8, 4)'.")
    if self.context_windows < 1:
      raise ConfigError(f"thought.context_windows must be >= 1, got {self.context_windows}.")
    if not 0.0 < self.rate <= 1.0 or self.saliency < 0 or not 0.0 <= self.clean_prob <= 1.0:
      raise ConfigError(f"thought.rate must be in (0, 1], thought.saliency >= 0 and thought.clean_prob in [0, 1]; got "
                        f"{self.rate}, {self.saliency}, {self.clean_prob}.")
    weights = (self.text_weight, self.reconstruction_weight, self.coherence_weight, self.alignment_weight)
    if min(weights) < 0 or self.text_weight <= 0 or self.alignment_temperature <= 0:
      raise ConfigError(f"thought weights must be >= 0 with text_weight > 0, and alignment_temperature > 0; got "
                        f"{weights} and {self.alignment_temperature}.")

  def window_length(self, seq_len: int) -> int:
    """W = data.seq_len / (K + 1)."""
    windows = self.context_windows + 1
    if seq_len % windows:
      raise ConfigError(f"data.seq_len={seq_len} must be (thought.context_windows + 1) x the window length: a "
                        f"multiple of {windows}.")
    return seq_len // windows

  # -- the forward process -------------------------------------------------------------------------------------------
  def log_snr(self, alpha_B, memory_BxT=None):
    """lambda_i(t) [B, *dims] (or [B, 1, ..] without saliency) from the text's keep probability alpha(t)."""
    signal_B = jnp.clip(jnp.asarray(alpha_B, jnp.float32)**self.rate, SIGNAL_CLIP, 1.0 - SIGNAL_CLIP)
    lam_B = jnp.log(signal_B) - jnp.log1p(-signal_B)
    lam = lam_B.reshape((-1,) + (1,) * len(self.dims))
    if self.saliency and memory_BxT is not None:
      lam = lam + self.saliency * saliency(memory_BxT)
    return jnp.clip(lam, -LOG_SNR_LIMIT, LOG_SNR_LIMIT)

  def noise(self, rng, memory_BxT, alpha_B):
    """z = a T + s eps with a^2 = sigmoid(lambda), s^2 = sigmoid(-lambda)."""
    lam = self.log_snr(alpha_B, memory_BxT)
    eps = jax.random.normal(rng, memory_BxT.shape, jnp.float32)
    return jnp.sqrt(jax.nn.sigmoid(lam)) * memory_BxT + jnp.sqrt(jax.nn.sigmoid(-lam)) * eps

  # -- persistence over the context windows --------------------------------------------------------------------------
  def memories(self, denoise_fn, context_BxKxW, start_B=None):
    """(T, evolved thoughts e_0 .. e_K-1 [K, B, *dims[:-1]]): the clean context windows read in turn, each pushing its
    evolved thought (module docstring). Row b keeps its memory empty before window start_B[b] (default 0), so T holds
    the thoughts of its last K - start_B[b] windows, the ones adjacent to the target."""
    batch, windows = context_BxKxW.shape[:2]
    zeros_B = jnp.zeros((batch,), jnp.float32)
    empty = jnp.zeros((batch, *self.dims), jnp.float32)
    if start_B is None:
      start_B = jnp.zeros((batch,), jnp.int32)
    keep = lambda k: (k >= start_B).reshape(-1, *(1,) * len(self.dims))

    def read(memory, inputs):
      k, tokens_BxW = inputs
      out = denoise_fn(tokens_BxW, zeros_B, thought=ThoughtInput(memory, zeros_B))
      evolved = out.thought["evolved"]
      return jnp.where(keep(k), push(memory, evolved), memory), evolved

    return jax.lax.scan(read, empty, (jnp.arange(windows), jnp.swapaxes(context_BxKxW, 0, 1)))

  def split(self, x0_BxL):
    batch, seq_len = x0_BxL.shape
    windows = x0_BxL.reshape(batch, self.context_windows + 1, self.window_length(seq_len))
    return windows[:, :-1], windows[:, -1]

  # -- objective -----------------------------------------------------------------------------------------------------
  def loss(self, text, denoise_fn, x0_BxL, rng):
    """(loss, output, metrics) of one training batch; `text` is the masked objective (objectives.MaskedELBO) whose
    NELBO scores the text."""
    context, target_BxW = self.split(x0_BxL)
    batch, width = target_BxW.shape
    depth_rng, t_rng, mask_rng, noise_rng, clean_rng = jax.random.split(rng, 5)
    depth_B = jax.random.randint(depth_rng, (batch,), 0, self.context_windows + 1)
    memory_BxT, evolved = self.memories(denoise_fn, context, self.context_windows - depth_B)
    t_B = text.sample_times(t_rng, batch)
    xt_BxW, corrupted_BxW = text.corrupt(mask_rng, target_BxW, t_B, None)
    clean_B = jax.random.bernoulli(clean_rng, self.clean_prob, (batch,))
    alpha_B = text.schedule.alpha(t_B)
    z_BxT = self.noise(noise_rng, memory_BxT, alpha_B)
    z_BxT = jnp.where(clean_B.reshape(-1, *(1,) * len(self.dims)), memory_BxT, z_BxT)
    thought_t_B = jnp.where(clean_B, 0.0, t_B)
    out = denoise_fn(xt_BxW, t_B, thought=ThoughtInput(z_BxT, thought_t_B))
    nelbo_B = text.sequence_nelbo(out, target_BxW, xt_BxW, t_B, corrupted_BxW)
    terms = {"text": jnp.sum(nelbo_B) / (batch * width),
             "reconstruction": jnp.mean(jnp.square(out.thought["reconstruction"] - jax.lax.stop_gradient(memory_BxT)))}
    if self.context_windows > 1:
      terms["coherence"] = 0.5 * jnp.mean(jnp.square(evolved[1:] - evolved[:-1]))
    else:
      terms["coherence"] = jnp.zeros((), jnp.float32)
    terms["alignment"], accuracy = self.alignment(denoise_fn, memory_BxT, target_BxW, depth_B > 0)
    weights = {"text": self.text_weight, "reconstruction": self.reconstruction_weight,
               "coherence": self.coherence_weight, "alignment": self.alignment_weight}
    loss = sum(weights[name] * value for name, value in terms.items())
    metrics = {"nll_per_token": terms["text"], "masked_fraction": jnp.mean(corrupted_BxW.astype(jnp.float32)),
               "thought/alignment_acc": accuracy, **{f"thought/{name}": value for name, value in terms.items()}}
    return loss, out, metrics

  def alignment(self, denoise_fn, memory_BxT, tokens_BxW, valid_B=None):
    """(symmetric InfoNCE loss, top-1 accuracy of picking each thought's own text in the batch) over the rows in
    `valid_B` (rows with an empty memory carry no thought to align: neither anchors nor candidates)."""
    codes = denoise_fn.model().thought_alignment(memory_BxT, tokens_BxW)
    return alignment_scores(*codes, self.alignment_temperature, valid_B)

  def depth_nll(self, text, denoise_fn, x0_BxL, rng, depth: int):
    """Nats per scored token of target tokens 2..W given token 1 and the clean memory of the last `depth` context
    windows (0: the empty memory): one antithetic-t NELBO sample, as Objective.evaluation_nll."""
    context, target_BxW = self.split(x0_BxL)
    batch, width = target_BxW.shape
    if not 0 <= depth <= self.context_windows:
      raise ValueError(f"memory depth {depth} must be in 0..{self.context_windows} (thought.context_windows).")
    memory_BxT = jnp.zeros((batch, *self.dims), jnp.float32)
    if depth:  # reading the last `depth` windows from an empty memory = training's start K - depth
      memory_BxT, _ = self.memories(denoise_fn, context[:, self.context_windows - depth:])
    first_BxW = jnp.zeros(target_BxW.shape, bool).at[:, 0].set(True)
    t_rng, mask_rng = jax.random.split(rng)
    t_B = forward.antithetic_times(t_rng, batch, text.t_min)
    xt_BxW, corrupted_BxW = text.corrupt(mask_rng, target_BxW, t_B, first_BxW)
    out = denoise_fn(xt_BxW, t_B, thought=ThoughtInput(memory_BxT, jnp.zeros((batch,), jnp.float32)))
    nelbo_B = text.sequence_nelbo(out, target_BxW, xt_BxW, t_B, corrupted_BxW, ~first_BxW)
    return jnp.sum(nelbo_B) / (batch * (width - 1))


def alignment_scores(a_BxD, b_BxD, temperature: float, valid_B=None):
  """Symmetric InfoNCE of unit-norm codes (a_b, b_b) over the valid rows: -log softmax_c(a_b . b_c / tau)[b] and the
  same with the roles swapped, averaged; and the top-1 accuracy of a_b finding b_b among the valid rows."""
  batch = a_BxD.shape[0]
  valid_B = jnp.ones((batch,), bool) if valid_B is None else valid_B
  pair_BxB = valid_B[:, None] & valid_B[None, :]
  logits_BxB = jnp.where(pair_BxB, (a_BxD @ b_BxD.T) / temperature, -1e9)
  diagonal_B = jnp.diagonal(logits_BxB)
  forward_B = jax.nn.logsumexp(logits_BxB, axis=1) - diagonal_B
  backward_B = jax.nn.logsumexp(logits_BxB, axis=0) - diagonal_B
  count = jnp.maximum(jnp.sum(valid_B), 1)
  loss = 0.5 * jnp.sum(jnp.where(valid_B, forward_B + backward_B, 0.0)) / count
  hits_B = (jnp.argmax(logits_BxB, axis=1) == jnp.arange(batch)) & valid_B
  return loss, jnp.sum(hits_B) / count


def saliency(memory_BxT):
  """S_i = |T_i| / max_j |T_j| per example (0 for an empty memory), without gradient."""
  magnitude = jnp.abs(jax.lax.stop_gradient(memory_BxT.astype(jnp.float32)))
  axes = tuple(range(1, magnitude.ndim))
  return magnitude / jnp.maximum(jnp.max(magnitude, axis=axes, keepdims=True), 1e-6)
