"""Hybrid AR-verifier decoding (seed 001 §9.4: "diffusion drafts a large chunk quickly, a small AR verifier validates or
repairs low-confidence spans").

One round, given a draft x from the diffusion sampler:

  1. The causal control arm scores every generated token in one forward pass:
     p_AR(x_i | x_<i) = softmax(l_AR(x)[i - 1])[x_i]   (position 0 has no context and is never rejected).
  2. A generated token with p_AR(x_i | x_<i) < `threshold` is rejected, and so are the `window` generated positions
     after it (they were drawn next to a token the verifier doubts; window = 0 rejects the token alone).
  3. The rejected positions are masked and redrawn by the diffusion sampler in `steps` steps, every other position
     fixed (prompt, suffix and accepted tokens alike).

`rounds` rounds run in one jitted function (a Python loop over a handful of rounds: each round's sampler is the same
compiled loop). A perfect verifier, p_AR = 1 on the draft, rejects nothing and leaves the draft as it is. Positions
closed by EOS (PAD, see `sampler.sample`) are neither scored nor redrawn.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.data import tokenizers
from dlm_jax.diffusion import losses
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import sampler as sampler_lib


@dataclasses.dataclass(frozen=True)
class VerifierConfig:
  rounds: int = 1  # verify-and-redraw rounds after the draft
  threshold: float = 0.01  # reject a generated token the verifier gives a probability below this
  window: int = 0  # also reject this many generated positions after each rejected token
  steps: int = 16  # reverse steps of each redraw

  def __post_init__(self):
    if self.rounds < 1:
      raise ConfigError(f"verifier rounds must be >= 1, got {self.rounds}.")
    if not 0.0 < self.threshold <= 1.0:
      raise ConfigError(f"verifier threshold must be in (0, 1], got {self.threshold}.")
    if self.window < 0:
      raise ConfigError(f"verifier window must be >= 0, got {self.window}.")
    if self.steps < 1:
      raise ConfigError(f"verifier steps must be >= 1, got {self.steps}.")


@flax.struct.dataclass
class VerifiedOutput:
  tokens_BxL: jax.Array
  draft_BxL: jax.Array  # the diffusion sampler's draft, before any round
  rejected_RxB: jax.Array  # int32 positions rejected per round and row
  verifier_prob_BxL: jax.Array  # p_AR(x_i | x_<i) of the final tokens (1 at position 0, fixed and closed positions)
  network_calls: jax.Array  # int32 forward passes of the diffusion denoiser
  verifier_calls: int  # forward passes of the verifier (rounds + 1: the last scores the final tokens)


def token_probabilities(verifier_logits_fn: Callable, x_BxL, special: special_tokens.SpecialIds):
  """p_AR(x_i | x_<i) for i >= 1 from one causal forward pass (logits at i - 1 predict i); 1 at position 0."""
  nll_BxLm1 = losses.next_token_nll(sampler_lib.sampling_logits(verifier_logits_fn(x_BxL), special), x_BxL)
  return jnp.concatenate([jnp.ones_like(x_BxL[:, :1], jnp.float32), jnp.exp(-nll_BxLm1)], axis=1)


def rejected_positions(prob_BxL, scored_BxL, threshold: float, window: int):
  """Scored positions with probability < threshold, each with the `window` scored positions after it."""
  reject_BxL = scored_BxL & (prob_BxL < threshold)
  spread_BxL = reject_BxL
  for shift in range(1, window + 1):
    spread_BxL = spread_BxL | jnp.pad(reject_BxL, ((0, 0), (shift, 0)))[:, :-shift]
  return spread_BxL & scored_BxL


def verified_sample(denoise_fn: Callable, verifier_logits_fn: Callable, rng, tokens_BxL, fixed_BxL,
                    cfg: sampler_lib.SamplerConfig, vcfg: VerifierConfig, init_carry=None,
                    kv_cache_fns=None) -> VerifiedOutput:
  """Draft with `sampler.sample(denoise_fn, ...)`, then `vcfg.rounds` rounds of verify-and-redraw (module docstring).
  `verifier_logits_fn(x_BxL) -> logits_BxLxV` is the causal arm's forward pass; pure and jittable."""
  if cfg.moves_every_position:
    raise ConfigError("The AR verifier redraws doubted tokens by masking them, which needs a masked-diffusion model; "
                      f"this one is a {cfg.process} {cfg.parameterization} model. Sample it without --verifier.")
  fixed_BxL = jnp.asarray(fixed_BxL, bool)
  keys = jax.random.split(rng, vcfg.rounds + 1)
  draft = sampler_lib.sample(denoise_fn, keys[0], tokens_BxL, fixed_BxL, cfg, init_carry=init_carry,
                             kv_cache_fns=kv_cache_fns)
  redraw_cfg = dataclasses.replace(cfg, steps=vcfg.steps, block_length=0, record_trajectory=False,
                                   cache="none" if cfg.cache in sampler_lib.KV_CACHES else cfg.cache)
  x_BxL, calls, rejected = draft.tokens_BxL, draft.network_calls, []
  for r in range(vcfg.rounds):
    scored_BxL = ~fixed_BxL & (x_BxL != cfg.special.pad)
    prob_BxL = token_probabilities(verifier_logits_fn, x_BxL, cfg.special)
    reject_BxL = rejected_positions(prob_BxL, scored_BxL, vcfg.threshold, vcfg.window)
    rejected.append(jnp.sum(reject_BxL, axis=-1, dtype=jnp.int32))
    redraw = sampler_lib.sample(denoise_fn, keys[r + 1], x_BxL, ~reject_BxL, redraw_cfg, init_carry=init_carry)
    x_BxL, calls = redraw.tokens_BxL, calls + redraw.network_calls
  scored_BxL = ~fixed_BxL & (x_BxL != cfg.special.pad)
  final_prob_BxL = jnp.where(scored_BxL, token_probabilities(verifier_logits_fn, x_BxL, cfg.special), 1.0)
  return VerifiedOutput(tokens_BxL=x_BxL, draft_BxL=draft.tokens_BxL, rejected_RxB=jnp.stack(rejected),
                        verifier_prob_BxL=final_prob_BxL, network_calls=calls, verifier_calls=vcfg.rounds + 1)


def make_verified_sampler(graphdef, other, verifier_graphdef, verifier_other, cfg: sampler_lib.SamplerConfig,
                          vcfg: VerifierConfig):
  """jit(verified_sample) over (params, verifier_params, rng, tokens_BxL, fixed_BxL) for a split NNX diffusion
  denoiser and a split causal (AR control arm) model on the same tokenizer."""
  from flax import nnx

  @jax.jit
  def run(params, verifier_params, rng, tokens_BxL, fixed_BxL):
    model = lambda: nnx.merge(graphdef, params, other)
    sampler_lib.check_cache(model(), cfg, *tokens_BxL.shape)
    denoise = lambda x, t, carry: model().sample_step(x, t, carry)
    verifier = lambda x: nnx.merge(verifier_graphdef, verifier_params, verifier_other)(
        x, jnp.zeros((x.shape[0],), jnp.float32)).logits_BxLxV
    return verified_sample(denoise, verifier, rng, tokens_BxL, fixed_BxL, cfg, vcfg,
                           init_carry=model().init_sample_carry(*tokens_BxL.shape),
                           kv_cache_fns=sampler_lib.kv_cache_functions(model, cfg))

  return run


def check_causal_run(run, judge, flag: str = "--judge"):
  """Raises ValueError unless `run` is a diffusion run and `judge` (a verifier here, a judge of generation quality in
  evaluation/generation.py) a causal run with its tokenizer and a context at least as long (run, judge:
  `training.checkpoint.LoadedRun`s); `flag` names the judge in the message."""
  if run.objective.is_autoregressive:
    raise ValueError(f"--workdir is a causal (AR) run; {flag} checks diffusion runs.")
  if not judge.objective.is_autoregressive:
    raise ValueError(f"{flag} is not a causal (AR) run: train one with the config's ':ar' arm.")
  if tokenizers.fingerprint(judge.tokenizer) != tokenizers.fingerprint(run.tokenizer):
    raise ValueError(f"{flag} was trained with a different tokenizer than --workdir; train it on the same "
                     "corpus (same config, ':ar' arm).")
  if int(judge.config.data.seq_len) < int(run.config.data.seq_len):
    raise ValueError(f"{flag}'s context ({judge.config.data.seq_len}) is shorter than the run's "
                     f"({run.config.data.seq_len}).")
