"""Sampling text together with a thought tensor (model.py, process.py): persistence, interpolation,
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

Settings: the text's are the run's SamplerConfig (every masked-sampler field; no cache, as the thought changes at every
call); the thought's forward process (dims, rate, saliency) and the schedule on whose clock it is noised (the training
schedule, which the reveal schedule may not be) are the run's objective's (`ThoughtSampling.of`).

Gradient steering: with `steer_scale` = eta > 0 and a differentiable `property_fn(T_BxT) -> [B]`, every estimate is
moved down the property's gradient, T_hat <- T_hat - eta grad property(T_hat), before the next DDIM step uses it
(guidance on the x_0 estimate; a given thought is steered in place). Trajectories (`cfg.record_trajectory`): the
estimate T_hat, the noisy z and the evolved thought after every call, [max_steps + 1, B, ...] (row 0: the start).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax.diffusion import gaussian
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax.proj.thought import process as thought_lib
from dlm_jax.proj.thought.process import ThoughtProcess
from dlm_jax.sampling import masked
from dlm_jax.sampling.config import SamplerConfig
from dlm_jax.sampling.primitives import SampleOutput
from dlm_jax.sampling.text import prompt_batch


@dataclasses.dataclass(frozen=True)
class ThoughtSampling:
  """The thought's side of a generation: its forward process, the schedule that noises it and the steering step."""
  process: ThoughtProcess
  schedule: MaskingSchedule  # the training schedule: the thought's signal fraction is schedule.alpha(t)^rate
  steer_scale: float = 0.0  # eta of gradient steering (module docstring); 0: off

  def __post_init__(self):
    if self.steer_scale < 0:
      raise ConfigError(f"--steer_scale must be >= 0 (0: no steering), got {self.steer_scale}.")

  @classmethod
  def of(cls, objective, steer_scale: float = 0.0) -> "ThoughtSampling":
    """The settings of a thought run whose objective is `objective` (objective.ThoughtELBO)."""
    if getattr(objective, "thought", None) is None:
      raise ConfigError(f"The thought sampler samples runs of the thought objective, not {objective.name!r}.")
    return cls(objective.thought, objective.schedule, steer_scale)


def check_text_config(cfg: SamplerConfig):
  """Raises ConfigError unless `cfg` is a masked sampler without caches (the thought changes at every call, so no
  logits or keys can be reused)."""
  if cfg.family != "absorbing" or cfg.cache != "none":
    raise ConfigError(f"A thought model samples masked text with cache='none' (the thought changes at every call, so "
                      f"no logits or keys can be reused); got a {cfg.family} sampler with cache={cfg.cache!r}.")


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
  """The blend (1 - alpha) a + alpha b (process.interpolate), noised to t_start: denoising then pulls it back
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
                   settings: ThoughtSampling, property_fn: Callable | None = None) -> ThoughtSample:
  """The reverse process of text and thought (module docstring). `model_fn()` returns the merged thought denoiser;
  `cfg` a masked-sampler config without caches; `property_fn` the steering property when settings.steer_scale > 0."""
  check_text_config(cfg)
  if settings.steer_scale and property_fn is None:
    raise ConfigError("steer_scale > 0 steers the thought down a property's gradient: pass property_fn (the CLI's "
                      "--steer_toward=FILE.npy).")
  process, schedule, steer_scale = settings.process, settings.schedule, settings.steer_scale
  dims = process.dims
  batch, length = tokens_BxL.shape
  expand = lambda v_B: v_B.reshape(-1, *(1,) * len(dims))
  max_steps = cfg.max_steps(length)

  def steer(estimate):
    if not steer_scale:
      return estimate
    grad = jax.grad(lambda e: jnp.sum(property_fn(e)))(estimate)
    return estimate - steer_scale * grad

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


def make_thought_sampler(graphdef, other, cfg: SamplerConfig, settings: ThoughtSampling,
                         property_fn: Callable | None = None):
  """jit of `run(params, rng, tokens_BxL, fixed_BxL, start) -> ThoughtSample`."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL, start: ThoughtStart):
    model_fn = lambda: nnx.merge(graphdef, params, other)
    return thought_sample(model_fn, rng, tokens_BxL, fixed_BxL, start, cfg, settings, property_fn)

  return run


def make_sampler(graphdef, other, cfg: SamplerConfig, objective):
  """sampling.SAMPLERS["thought"]: jit of `run(params, rng, tokens_BxL, fixed_BxL) -> SampleOutput`, the text of a
  generation whose thought starts from noise (text and thought sampled jointly)."""
  settings = ThoughtSampling.of(objective)
  check_text_config(cfg)

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    model_fn = lambda: nnx.merge(graphdef, params, other)
    start_rng, loop_rng = jax.random.split(rng)
    start = from_noise(start_rng, tokens_BxL.shape[0], settings.process.dims)
    return thought_sample(model_fn, loop_rng, tokens_BxL, fixed_BxL, start, cfg, settings).text

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


def generate(run, *, num_samples: int, prompt: str = "", suffix: str = "", length: int | None = None, seed: int = 0,
             overrides: dict | None = None, thought_in=None, interpolate_with=None, interpolate_alpha: float = 0.5,
             thought_t_start: float = 0.0, steer_toward=None, steer_scale: float = 0.1,
             record_trajectory: bool = False) -> tuple[list[str], ThoughtSample]:
  """(texts, ThoughtSample) of `num_samples` generations of a thought run (a training.checkpoint.LoadedRun) with the
  run's config.sample and `overrides`: the thought from noise, or `thought_in` [B, *dims] (persistence: kept clean;
  with `thought_t_start` > 0 noised to that time and denoised), first blended with `interpolate_with` at
  `interpolate_alpha`; steered towards `steer_toward` by `steer_scale` when given. The start thought draws from key
  seed + 1, the text from key seed. Raises ValueError (ConfigError) naming the flag at fault."""
  settings = ThoughtSampling.of(run.objective)
  tokens, fixed = prompt_batch(run.tokenizer, num_samples,
                               run.objective.sample_length(int(run.config.data.seq_len)), length, prompt, suffix)
  if interpolate_with is not None and thought_in is None:
    raise ValueError("--interpolate_with blends with --thought_in: give both.")
  if not 0.0 <= thought_t_start <= 1.0:
    raise ValueError(f"--thought_t_start={thought_t_start} must be in [0, 1].")
  start_rng = jax.random.key(seed + 1)
  if thought_in is not None:  # (without interpolate_with: the blend of thought_in with itself at 0, i.e. itself)
    other, alpha = (thought_in, 0.0) if interpolate_with is None else (interpolate_with, interpolate_alpha)
    start = interpolation_start(start_rng, thought_in, other, alpha, thought_t_start, settings.process,
                                settings.schedule)
  else:
    start = from_noise(start_rng, num_samples, settings.process.dims)
  steer = None
  if steer_toward is not None:
    steer = distance_property(steer_toward)
    settings = dataclasses.replace(settings, steer_scale=steer_scale)
  cfg = run.sampler_config(**(overrides or {}))
  cfg = dataclasses.replace(cfg, record_trajectory=record_trajectory or cfg.record_trajectory)
  result = make_thought_sampler(run.graphdef, run.other, cfg, settings, steer)(
      run.params, jax.random.key(seed), tokens, fixed, start)
  return [run.tokenizer.decode(row) for row in np.asarray(result.text.tokens_BxL)], result
