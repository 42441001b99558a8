"""The samplers' front door: `SAMPLERS`, one sampler per process family behind the only dispatcher, and `sample`, the
reverse process of a denoising function.

| family | sampler | module |
|---|---|---|
| absorbing | masked reverse process: blocks, reveal policies, remasking, caches, guidance | masked.py, strategies.py |
| transition | uniform-state (Duo) and SEDD score samplers: every position moves at every step | transition.py |
| gaussian | DDIM / DDPM in embedding space | continuous.py |
| autoregressive | left to right, for the causal control arm | autoregressive.py |
| thought | masked text with a thought tensor in the denoiser's carry | dlm_jax/proj/thought/sampler.py |

The run's objective picks the entry (`Objective.sampler`: the causal arm's "autoregressive", a wing's own), else
`SamplerConfig.family` (its forward process). A wing's sampler is registered by its import path. This module also
re-exports the names its callers use (`SamplerConfig`, `SampleOutput`, the primitives).
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

from dlm_jax.diffusion.schedules import MaskingSchedule  # noqa: F401  (re-exported)
from dlm_jax.registry import Registry
from dlm_jax.sampling import continuous, masked, strategies, transition  # noqa: F401
from dlm_jax.sampling.autoregressive import autoregressive_sample
from dlm_jax.sampling.config import (CACHES, CONFIDENCES, DRAW_PRECISIONS, GAUSSIAN_METHODS, KV_CACHES,  # noqa: F401
                                     METHODS, PARAMETERIZATIONS, PROCESSES, REMASKING, STRATEGY_FIELDS, SamplerConfig,
                                     component_combinations, process_fields)
from dlm_jax.sampling.masked import check_cache, kv_cache_functions  # noqa: F401
from dlm_jax.sampling.primitives import (SampleOutput, confidence_scores, draw, filter_logits,  # noqa: F401
                                         remove_never_sampled, sampling_logits, stateless)


def sample(denoise_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg: SamplerConfig, priority_BxL=None,
           init_carry=None, kv_cache_fns=None, return_carry: bool = False) -> SampleOutput:
  """The reverse process of `denoise_fn(x, t, carry) -> (logits, priority or None, carry)` for an absorbing config
  (`masked.masked_sample`, whose docstring has the arguments) or a uniform-state / SEDD one
  (`transition.transition_sample`; `priority_BxL`, `kv_cache_fns` and `return_carry` are the masked sampler's).
  With `cfg.reset_carry` every call of `denoise_fn` gets `init_carry`, and the carry returned stays `init_carry`."""
  if cfg.reset_carry and init_carry is not None:
    carried_fn = denoise_fn
    denoise_fn = lambda x, t, carry: (*carried_fn(x, t, init_carry)[:2], carry)
  if cfg.family == "transition":
    return transition.transition_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, init_carry)
  return masked.masked_sample(denoise_fn, rng, tokens_BxL, fixed_BxL, cfg, priority_BxL=priority_BxL,
                              init_carry=init_carry, kv_cache_fns=kv_cache_fns, return_carry=return_carry)


# Each builder: (graphdef, other, cfg, objective) -> jit(run(params, rng, tokens_BxL, fixed_BxL) -> SampleOutput), the
# NNX denoiser merged at each call site (a module must not cross into a loop's trace level); `objective` is the run's
# (None when the caller has none: a bare denoiser).


def _denoiser_sampler(graphdef, other, cfg: SamplerConfig, objective=None):
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


def _gaussian_sampler(graphdef, other, cfg: SamplerConfig, objective=None):
  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    model = lambda: nnx.merge(graphdef, params, other)
    logits_fn = lambda z, t: model()(tokens_BxL, t, embeddings_BxLxD=z).logits_BxLxV
    return continuous.gaussian_sample(logits_fn, model().diffusion_table(), rng, tokens_BxL, fixed_BxL, cfg)

  return run


def _autoregressive_sampler(graphdef, other, cfg: SamplerConfig, objective=None):
  """Left to right after an EOS ("a document starts here") at position 0 when nothing is fixed there."""

  @jax.jit
  def run(params, rng, tokens_BxL, fixed_BxL):
    tokens_BxL = tokens_BxL.at[:, 0].set(jax.numpy.where(fixed_BxL[:, 0], tokens_BxL[:, 0], cfg.special.eos))
    logits_fn = lambda x, t: nnx.merge(graphdef, params, other)(x, t).logits_BxLxV
    return autoregressive_sample(logits_fn, rng, tokens_BxL, fixed_BxL.at[:, 0].set(True), cfg)

  return run


SAMPLERS = Registry("sampler family", {
    "absorbing": _denoiser_sampler, "transition": _denoiser_sampler, "gaussian": _gaussian_sampler,
    "autoregressive": _autoregressive_sampler,
    "thought": "dlm_jax.proj.thought.sampler:make_sampler",  # thought tensors (dlm_jax/proj/thought/)
})


def family_of(cfg: SamplerConfig, objective=None) -> str:
  """The SAMPLERS entry that samples a run: its objective's `sampler`, else the config's process family."""
  return (objective.sampler if objective is not None else "") or cfg.family


def make_sampler(graphdef, other, cfg: SamplerConfig, objective=None):
  """jit(run(params, rng, tokens_BxL, fixed_BxL) -> SampleOutput) for a split NNX denoiser: the `SAMPLERS` entry of
  the run's `objective` (`family_of`; without one, the config's process family)."""
  return SAMPLERS[family_of(cfg, objective)](graphdef, other, cfg, objective)
