"""Sampling text together with a thought tensor (models/thought.py, diffusion/thought.py): persistence, interpolation,
gradient steering and trajectories.

The text runs the masked sampler (masked.masked_sample: every reveal policy that keeps no cache) and the thought rides
in the denoiser's carry. At each network call with text time t the thought moves to its time
t_th = min(t, previous t_th) (non-increasing, so block decoding, whose t restarts at each block, denoises the thought
once) by one DDIM step (Song et al. 2021, eta = 0) elementwise on its own log-SNR lambda_i(t)
(ThoughtProcess.log_snr, with saliency read off the current estimate):
    eps_hat = (z - a_prev T_hat) / s_prev,    z <- a T_hat + s eps_hat,
then the denoiser reads (x_t, t, z, t_th) and returns the logits and a new clean estimate T_hat = reconstruction. The
first call (t = t_th = 1) leaves z ~ N(0, I) as it is. After the text is done, the generation's thought T is the last
estimate (or the given thought), and its evolved thought is read from the finished text with T clean (t = 0), exactly
as training reads a context window; the next generation's memory is push(T, e).

Starts (`ThoughtStart`): `from_noise` (text and thought sampled jointly), `given(T)` (persistence: the clean memory of
an earlier generation, never noised), `partially_noised(T, t_start)` (SDEdit, Meng et al. 2022: T noised to t_start
and denoised from there while the text runs its whole process; `interpolation_start` blends two thoughts first).

Gradient steering: with `steer_scale` = eta > 0 and a differentiable `property_fn(T_BxT) -> [B]`, every estimate is
moved down the property's gradient, T_hat <- T_hat - eta grad property(T_hat), before the next DDIM step uses it
(guidance on the x_0 estimate; a given thought is steered in place). Trajectories (`cfg.record_trajectory`): the
estimate T_hat, the noisy z and the evolved thought after every call, [max_steps + 1, B, ...] (row 0: the start).
"""
from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.diffusion import gaussian
from dlm_jax.diffusion import thought as thought_lib
from dlm_jax.diffusion.thought import ThoughtProcess
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import masked
from dlm_jax.sampling.config import SamplerConfig
from dlm_jax.sampling.primitives import SampleOutput


@flax.struct.dataclass
class ThoughtStart:
  """Where the thought starts: z [B, *dims] at time t_B; rows with given_B are a clean thought kept throughout."""
  z: jax.Array
  t_B: jax.Array
  given_B: jax.Array


def from_noise(rng, batch: int, dims) -> ThoughtStart:
  return ThoughtStart(jax.random.normal(rng, (batch, *dims), jnp.float32), jnp.ones((batch,), jnp.float32),
                      jnp.zeros((batch,), bool))


def given(memory_BxT) -> ThoughtStart:
  memory_BxT = jnp.asarray(memory_BxT, jnp.float32)
  batch = memory_BxT.shape[0]
  return ThoughtStart(memory_BxT, jnp.zeros((batch,), jnp.float32), jnp.ones((batch,), bool))


def partially_noised(rng, memory_BxT, t_start: float, process: ThoughtProcess, schedule) -> ThoughtStart:
  """T noised to t_start by the thought's forward process (the text schedule's alpha(t_start)^rate)."""
  memory_BxT = jnp.asarray(memory_BxT, jnp.float32)
  t_B = jnp.full((memory_BxT.shape[0],), t_start, jnp.float32)
  z = process.noise(rng, memory_BxT, schedule.alpha(t_B))
  return ThoughtStart(z, t_B, jnp.zeros_like(t_B, bool))


def interpolation_start(rng, thought_a, thought_b, alpha, t_start: float, process: ThoughtProcess, schedule):
  """The blend (1 - alpha) a + alpha b (diffusion/thought.interpolate), noised to t_start: denoising then pulls it back
  to a thought the model would produce (t_start = 0 keeps the blend as a given thought)."""
  blend = thought_lib.interpolate(thought_a, thought_b, alpha)
  if t_start <= 0.0:
    return given(blend)
  return partially_noised(rng, blend, t_start, process, schedule)


@flax.struct.dataclass
class _Carry:
  z: jax.Array
  t_B: jax.Array
  estimate: jax.Array
  evolved: jax.Array
  given_B: jax.Array
  calls: jax.Array
  trajectories: object  # (estimate, z, evolved) buffers [S + 1, B, ...] or None


@flax.struct.dataclass
class ThoughtSample:
  text: SampleOutput
  thought_BxT: jax.Array  # the generation's thought (last estimate, or the given/steered one)
  evolved_BxE: jax.Array  # its evolved (n-1)-D thought, read from the finished text
  next_memory_BxT: jax.Array  # push(thought, evolved): the next generation's thought
  estimate_trajectory: jax.Array | None = None  # [S + 1, B, *dims]
  noisy_trajectory: jax.Array | None = None  # [S + 1, B, *dims]
  evolved_trajectory: jax.Array | None = None  # [S + 1, B, *dims[:-1]]
  thought_calls: jax.Array | None = None  # network calls that moved the thought (rows 1..calls of the trajectories)


def thought_sample(model_fn: Callable, rng, tokens_BxL, fixed_BxL, start: ThoughtStart, cfg: SamplerConfig,
                   process: ThoughtProcess, property_fn: Callable | None = None) -> ThoughtSample:
  """The reverse process of text and thought (module docstring). `model_fn()` returns the merged thought denoiser;
  `cfg` a masked-sampler config without caches; `property_fn` the steering property when cfg.steer_scale > 0."""
  if not cfg.thought:
    raise ConfigError("thought_sample needs a thought run's sampler config (SamplerConfig.from_config of a run with "
                      "config.thought.enabled, or thought=True).")
  if cfg.steer_scale and property_fn is None:
    raise ConfigError("sampler steer_scale > 0 steers the thought down a property's gradient: pass property_fn (the "
                      "CLI's --steer_toward=FILE.npy).")
  dims = process.dims
  batch, length = tokens_BxL.shape
  schedule = noise_schedule(cfg)
  expand = lambda v_B: v_B.reshape(-1, *(1,) * len(dims))
  max_steps = cfg.max_steps(length)

  def steer(estimate):
    if not cfg.steer_scale:
      return estimate
    grad = jax.grad(lambda e: jnp.sum(property_fn(e)))(estimate)
    return estimate - cfg.steer_scale * grad

  def step(x_BxL, t_B, carry: _Carry):
    t_next = jnp.where(carry.given_B, 0.0, jnp.minimum(t_B, carry.t_B))
    lam_prev = process.log_snr(schedule.alpha(carry.t_B), carry.estimate)
    lam_next = process.log_snr(schedule.alpha(t_next), carry.estimate)
    moved = gaussian.ddim_update(carry.z, carry.estimate, lam_prev, lam_next)
    z = jnp.where(expand(carry.given_B), carry.estimate, jnp.where(expand(carry.t_B > t_next), moved, carry.z))
    out = model_fn()(x_BxL, t_B, thought=thought_lib.ThoughtInput(z, t_next))
    estimate = steer(jnp.where(expand(carry.given_B), z, out.thought["reconstruction"]))
    calls = carry.calls + 1
    trajectories = carry.trajectories
    if trajectories is not None:
      trajectories = tuple(buffer.at[calls].set(value)
                           for buffer, value in zip(trajectories, (estimate, z, out.thought["evolved"])))
    new = _Carry(z, t_next, estimate, out.thought["evolved"], carry.given_B, calls, trajectories)
    return out.logits_BxLxV, None, new

  z0 = jnp.asarray(start.z, jnp.float32)
  evolved0 = jnp.zeros((batch, *thought_lib.evolved_dims(dims)), jnp.float32)
  trajectories = None
  if cfg.record_trajectory:
    trajectories = tuple(jnp.broadcast_to(v[None], (max_steps + 1, *v.shape)) for v in (z0, z0, evolved0))
  # Before any call the estimate of a noised start is its own z (a given start: the thought itself).
  init = _Carry(z0, start.t_B.astype(jnp.float32), z0, evolved0, start.given_B, jnp.int32(0), trajectories)
  text, carry = masked.masked_sample(step, rng, tokens_BxL, fixed_BxL, cfg, init_carry=init, return_carry=True)
  thought_BxT = carry.estimate
  zeros_B = jnp.zeros((batch,), jnp.float32)
  evolved = model_fn()(text.tokens_BxL, zeros_B, thought=thought_lib.ThoughtInput(thought_BxT, zeros_B)).thought
  evolved_BxE = evolved["evolved"]
  recorded = [None, None, None]
  if carry.trajectories is not None:  # rows after the last call repeat the final values
    after_Sx1 = jnp.arange(max_steps + 1) > carry.calls
    recorded = [jnp.where(after_Sx1.reshape(-1, *(1,) * (buffer.ndim - 1)), buffer[carry.calls][None], buffer)
                for buffer in carry.trajectories]
  return ThoughtSample(text=text, thought_BxT=thought_BxT, evolved_BxE=evolved_BxE,
                       next_memory_BxT=thought_lib.push(thought_BxT, evolved_BxE), estimate_trajectory=recorded[0],
                       noisy_trajectory=recorded[1], evolved_trajectory=recorded[2], thought_calls=carry.calls)


def noise_schedule(cfg: SamplerConfig):
  """The masking schedule whose alpha(t)^rate noises the thought: the run's training schedule (the reveal schedule
  `cfg.schedule` may differ; without a recorded one, the reveal schedule)."""
  return cfg.thought_schedule or cfg.schedule


def process_of(model_cfg, cfg: SamplerConfig) -> ThoughtProcess:
  """The thought's forward process for sampling: the model's thought_dims with the run's rate and saliency."""
  if not getattr(model_cfg, "thought_dims", ()):
    raise ConfigError("This run's model has no thought pathway (model.thought_dims=()).")
  return ThoughtProcess(dims=model_cfg.thought_dims, rate=cfg.thought_rate, saliency=cfg.thought_saliency)


def make_thought_sampler(graphdef, other, cfg: SamplerConfig, property_fn: Callable | None = None):
  """jit of `run(params, rng, tokens_BxL, fixed_BxL, start) -> ThoughtSample`."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL, start: ThoughtStart):
    model_fn = lambda: nnx.merge(graphdef, params, other)
    return thought_sample(model_fn, rng, tokens_BxL, fixed_BxL, start, cfg, process_of(model_fn().cfg, cfg),
                          property_fn)

  return run


def distance_property(target_BxT):
  """property(T) = sum_i (T_i - target_i)^2 / 2 per row: steering towards a target thought (a step of steer_scale
  eta moves the estimate the fraction eta of the way to the target)."""
  target_BxT = jnp.asarray(target_BxT, jnp.float32)
  return lambda thought_BxT: 0.5 * jnp.sum(jnp.square(thought_BxT - target_BxT),
                                           axis=tuple(range(1, thought_BxT.ndim)))


def load_thought(path: str, dims, batch: int, flag: str):
  """A thought from a .npy file as [batch, *dims] float32 (a single [*dims] thought is repeated for every row).
  Raises ValueError naming `flag` when the file is missing, unreadable or of another shape."""
  import numpy as np
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"{flag}={path}: cannot read a .npy thought ({e}). Write one with --thought_out.") from e
  if not isinstance(array, np.ndarray):  # an .npz archive
    raise ValueError(f"{flag}={path}: an .npz archive, not a .npy thought. Write one with --thought_out.")
  dims = tuple(dims)
  if array.shape == dims:
    array = np.broadcast_to(array, (batch, *dims))
  if array.shape != (batch, *dims):
    raise ValueError(f"{flag}={path}: a thought of shape {array.shape}, but this model's thoughts are {dims} "
                     f"(model.thought_dims), one per sample: {dims} or {(batch, *dims)} (--num_samples={batch}).")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{flag}={path}: the thought has non-finite values.")
  return np.ascontiguousarray(array, np.float32)
