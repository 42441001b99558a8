"""The samplers' front door: `SAMPLERS`, one sampler per process family behind the only dispatcher, and `sample`, the
reverse process of a denoising function.

| family | sampler | module |
|---|---|---|
| absorbing | masked reverse process: blocks, reveal policies, remasking, caches, guidance | masked.py, strategies.py |
| transition | uniform-state (Duo) and SEDD score samplers: every position moves at every step | transition.py |
| gaussian | DDIM / DDPM in embedding space | continuous.py |
| thought | masked text with a thought tensor in the denoiser's carry | thought.py |
| autoregressive | left to right, for the causal control arm | autoregressive.py |

`SamplerConfig.family` picks the entry (the causal arm is chosen by its caller, whose objective says so). This module
also re-exports the names its callers use (`SamplerConfig`, `SampleOutput`, the primitives).
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from dlm_jax.diffusion.schedules import MaskingSchedule  # noqa: F401  (re-exported)
from dlm_jax.sampling import continuous, masked, strategies, thought, transition  # noqa: F401
from dlm_jax.sampling.autoregressive import autoregressive_sample
from dlm_jax.sampling.config import (CACHES, CONFIDENCES, GAUSSIAN_METHODS, KV_CACHES, METHODS,  # noqa: F401
                                     PARAMETERIZATIONS, PROCESSES, REMASKING, STRATEGY_FIELDS, SamplerConfig,
                                     component_combinations, process_fields)
from dlm_jax.sampling.masked import check_cache, kv_cache_functions  # noqa: F401
from dlm_jax.sampling.primitives import (SampleOutput, confidence_scores, draw, filter_logits,  # noqa: F401
                                         remove_never_sampled, sampling_logits, stateless)


def sample(denoise_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg: SamplerConfig, priority_BxL=None,
           init_carry=None, kv_cache_fns=None, return_carry: bool = False) -> SampleOutput:
  """The reverse process of `denoise_fn(x, t, carry) -> (logits, priority or None, carry)` for an absorbing config
  (`masked.masked_sample`, whose docstring has the arguments) or a uniform-state / SEDD one
  (`transition.transition_sample`; `priority_BxL`, `kv_cache_fns` and `return_carry` are the masked sampler's)."""
  if cfg.family == "transition":
    return transition.transition_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, init_carry)
  return masked.masked_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, priority_BxL=priority_BxL,
                              init_carry=init_carry, kv_cache_fns=kv_cache_fns, return_carry=return_carry)


# Each builder: (graphdef, other, cfg) -> jit(run(params, rng, tokens_BxL, fixed_BxL) -> SampleOutput), the NNX
# denoiser merged at each call site (a module must not cross into a loop's trace level).


def _denoiser_sampler(graphdef, other, cfg: SamplerConfig):
  """The absorbing and transition families, through the denoiser's `sample_step` and `init_sample_carry`."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    model = lambda: nnx.merge(graphdef, params, other)
    if cfg.family == "absorbing":
      check_cache(model(), cfg, *tokens_BxL.shape)
    denoise = lambda x, t, carry: model().sample_step(x, t, carry)
    return sample(denoise, rng, tokens_BxL, fixed_BxL, cfg, init_carry=model().init_sample_carry(*tokens_BxL.shape),
                  kv_cache_fns=kv_cache_functions(model, cfg))

  return run


def _gaussian_sampler(graphdef, other, cfg: SamplerConfig):
  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    model = lambda: nnx.merge(graphdef, params, other)
    logits_fn = lambda z, t: model()(tokens_BxL, t, embeddings_BxLxD=z).logits_BxLxV
    return continuous.gaussian_sample(logits_fn, model().diffusion_table(), rng, tokens_BxL, fixed_BxL, cfg)

  return run


def _thought_sampler(graphdef, other, cfg: SamplerConfig):
  """Text and thought sampled jointly from noise (thought.py for persistence and steering); returns the text."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    model = lambda: nnx.merge(graphdef, params, other)
    process = thought.process_of(model().cfg, cfg)
    start_rng, loop_rng = jax.random.split(rng)
    start = thought.from_noise(start_rng, tokens_BxL.shape[0], process.dims)
    return thought.thought_sample(model, loop_rng, tokens_BxL, fixed_BxL, start, cfg, process).text

  return run


def _autoregressive_sampler(graphdef, other, cfg: SamplerConfig):
  """Left to right after an EOS ("a document starts here") at position 0 when nothing is fixed there."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    from dlm_jax import special_tokens
    tokens_BxL = tokens_BxL.at[:, 0].set(jax.numpy.where(fixed_BxL[:, 0], tokens_BxL[:, 0], special_tokens.EOS))
    logits_fn = lambda x, t: nnx.merge(graphdef, params, other)(x, t).logits_BxLxV
    return autoregressive_sample(logits_fn, rng, tokens_BxL, fixed_BxL.at[:, 0].set(True), cfg)

  return run


SAMPLERS = {"absorbing": _denoiser_sampler, "transition": _denoiser_sampler, "gaussian": _gaussian_sampler,
            "thought": _thought_sampler, "autoregressive": _autoregressive_sampler}


def make_sampler(graphdef, other, cfg: SamplerConfig, family: str | None = None):
  """jit(run(params, rng, tokens_BxL, fixed_BxL) -> SampleOutput) for a split NNX denoiser: the `SAMPLERS` entry of
  `family` (default `cfg.family`; the causal control arm passes "autoregressive")."""
  family = family or cfg.family
  if family not in SAMPLERS:
    raise ValueError(f"Unknown sampler family {family!r}; choose from {tuple(SAMPLERS)}.")
  return SAMPLERS[family](graphdef, other, cfg)
