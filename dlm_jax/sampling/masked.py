"""The absorbing-state (masked) reverse process as one jitted `lax.while_loop`: no host round trip per step, a whole
batch at a time. The loop keeps the block bookkeeping, EOS closing, priority and the trajectory; what changes at a
step is decided by the components of `strategies.py` (a step network, a reveal policy, a remask), selected by
`SamplerConfig` as static Python objects, so a strategy that is off adds no work. docs/sampling.md has the equations
and the legal combinations.

**Blocks** (`block_length` = b > 0; LLaDA's semi-autoregressive remasking, Nie et al. 2025; BD3-LM, Arriola et al.
2025): the generated positions of a row, in order, form blocks of b, decoded left to right, each by its own reverse
process over its own time t in [1, 0]; block j of n_blk gets floor((j+1) S / n_blk) - floor(j S / n_blk) of the
S = `steps` steps. A block finished early hands the decoder to the next one at once.

**Variable length** (`eos_stop`): every generated position after the first generated EOS is closed (PAD, never
revealed or counted); `lengths_B` counts the generated tokens before it.

Fixed positions (`fixed_BxL`) start unmasked and never change. The HRM denoiser's priority enters the ranking as
`strategic_weight` x priority ("strategic unmasking"), `priority_BxL` as given.
"""
from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import primitives, strategies
from dlm_jax.sampling.primitives import SampleOutput
from dlm_jax.sampling.strategies import KV_CACHES, Blocks, StepView


@flax.struct.dataclass
class _LoopState:
  step: jax.Array  # scalar int32: steps taken by the batch
  x_BxL: jax.Array
  reveal_step_BxL: jax.Array
  conf_BxL: jax.Array
  key: jax.Array
  model_carry: object
  block_B: jax.Array  # the block each row is decoding (num_blocks_B when done)
  block_step_B: jax.Array  # steps spent in it
  steps_B: jax.Array
  calls: jax.Array  # scalar int32 forward passes
  final_BxL: jax.Array  # token_stop: positions revealed with confidence >= token_stop, never remasked
  network_state: object  # the step network's (caches)
  trajectory: object  # [max_steps + 1, B, L] with record_trajectory


def step_view(st: _LoopState, blocks: Blocks, reveal, steps: int, eos_stop: bool,
              special: special_tokens.SpecialIds) -> StepView:
  """The step's `StepView` of the loop state: the current block, its counts, budget and times."""
  mask_id = special.mask
  x_BxL = st.x_BxL
  masked_BxL = x_BxL == mask_id
  live_B = st.block_B < blocks.num_blocks_B
  in_block_BxL = blocks.block_of_BxL == st.block_B[:, None]
  masked_blk_BxL = masked_BxL & in_block_BxL
  open_blk_BxL = in_block_BxL & (x_BxL != special.pad)  # closed (after EOS) positions hold PAD
  blocks_B = jnp.maximum(blocks.num_blocks_B, 1)
  budget_B = jnp.maximum(((st.block_B + 1) * steps) // blocks_B - (st.block_B * steps) // blocks_B, 1)
  last_B = st.block_step_B + 1 >= budget_B
  revised_BxL = open_blk_BxL & ~masked_BxL & ~st.final_BxL
  if eos_stop:
    revised_BxL = revised_BxL & (x_BxL != special.eos)
  view = StepView(step=st.step, x_BxL=x_BxL, masked_BxL=masked_BxL, live_B=live_B, block_B=st.block_B,
                  block_step_B=st.block_step_B, in_block_BxL=in_block_BxL, masked_blk_BxL=masked_blk_BxL,
                  n_masked_blk_B=jnp.sum(masked_blk_BxL, axis=-1, dtype=jnp.int32),
                  n_blk_B=jnp.sum(open_blk_BxL, axis=-1, dtype=jnp.int32), budget_B=budget_B, last_B=last_B,
                  t_next_B=jnp.where(last_B, 0.0, 1.0 - (st.block_step_B + 1) / budget_B), revised_BxL=revised_BxL,
                  conf_BxL=st.conf_BxL)
  return view.replace(t_B=reveal.time(view))


def masked_sample(denoise_fn: Callable, rng, tokens_BxL, fixed_BxL, cfg, priority_BxL=None, init_carry=None,
                  kv_cache_fns=None, return_carry: bool = False) -> SampleOutput:
  """Runs the masked reverse process (module docstring) for a `SamplerConfig` of process "absorbing"; pure and
  jittable. `tokens_BxL` holds the fixed tokens (other entries are ignored).
  `denoise_fn(x, t, carry) -> (logits, step_priority_BxL or None, carry)`, the carry starting at `init_carry`.
  With cache="dual" or "prefix", `kv_cache_fns` = (prefill(x, t, positions_BxQ) -> (logits_BxQxV, kv),
  step(x, t, positions_BxQ, kv) -> (logits_BxQxV, kv)), e.g. `Transformer.kv_prefill` and `kv_step`.
  `return_carry`: (output, the denoiser's carry after the last step).

  Outputs: `reveal_step_BxL` (the step at which each position was last revealed, -1 for fixed positions, the loop bound
  for a position closed by EOS), `confidence_BxL` (the ranking score at that reveal), `steps_B`, `lengths_B`,
  `network_calls` (a guided step counts two) and with `record_trajectory` the tokens after every step
  [max_steps + 1, B, L] (entries after the batch's last step repeat its final tokens). A mask left when the loop's
  bound is reached is filled with the argmax at t = 0."""
  special = cfg.special
  mask_id = special.mask
  batch, length = tokens_BxL.shape
  fixed_BxL = jnp.asarray(fixed_BxL, bool)
  x_BxL = jnp.where(fixed_BxL, tokens_BxL, mask_id).astype(jnp.int32)
  gen_BxL = ~fixed_BxL
  reveal = strategies.REVEALS[strategies.reveal_name(cfg)].from_config(cfg)
  remask = strategies.REMASKS[cfg.remasking].from_config(cfg)
  max_steps = reveal.max_steps(cfg.steps, length)
  if cfg.block_length and cfg.steps < -(-length // cfg.block_length) and not cfg.threshold:
    raise ConfigError(f"block decoding gives every block at least one step: with block_length={cfg.block_length} "
                      f"and {length} positions, steps must be >= {-(-length // cfg.block_length)}, got {cfg.steps}.")
  blocks = Blocks.of(fixed_BxL, cfg.block_length)
  position_1xL = blocks.position_1xL
  network = strategies.step_network(cfg, denoise_fn, blocks, kv_cache_fns)

  def body(st: _LoopState) -> _LoopState:
    key, sample_key, reveal_key = jax.random.split(st.key, 3)
    view = step_view(st, blocks, reveal, cfg.steps, cfg.eos_stop, special)
    net = network(st.network_state, view, st.model_carry, sample_key)
    if cfg.confidence == "calibrated":  # the denoiser's calibration head, where the network predicted
      if net.priority_BxL is None:
        raise ConfigError("sample.confidence='calibrated' ranks by a calibration head's forecast; this denoiser has "
                          "none (train with model.calibration_head=True).")
      calibrated_BxL = jnp.where(net.confidence_BxL > 0, net.priority_BxL.astype(jnp.float32), 0.0)
      net = net.replace(confidence_BxL=calibrated_BxL)
    step_priority_BxL = priority_BxL
    if cfg.strategic_weight and net.priority_BxL is not None:
      weighted = cfg.strategic_weight * net.priority_BxL.astype(jnp.float32)
      step_priority_BxL = weighted if step_priority_BxL is None else step_priority_BxL + weighted
    score_BxL = net.confidence_BxL if step_priority_BxL is None else net.confidence_BxL + step_priority_BxL
    reveal_BxL, remask_BxL, score_BxL = reveal(view, score_BxL, net.confidence_BxL, remask, reveal_key)
    new_x_BxL = jnp.where(reveal_BxL, net.cand_BxL, view.x_BxL)
    final_BxL = st.final_BxL
    if cfg.token_stop:
      final_BxL = final_BxL | (reveal_BxL & (net.confidence_BxL >= cfg.token_stop))
    reveal_step_BxL = jnp.where(reveal_BxL, st.step, st.reveal_step_BxL)
    conf_BxL = jnp.where(reveal_BxL, score_BxL, st.conf_BxL)
    if remask.remasks:
      new_x_BxL = jnp.where(remask_BxL, mask_id, new_x_BxL)
      reveal_step_BxL = jnp.where(remask_BxL, max_steps, reveal_step_BxL)
      conf_BxL = jnp.where(remask_BxL, 0.0, conf_BxL)
    if cfg.eos_stop:
      first_eos_B = jnp.min(jnp.where(gen_BxL & (new_x_BxL == special.eos), position_1xL, length), axis=-1)
      closed_BxL = gen_BxL & (position_1xL > first_eos_B[:, None])
      new_x_BxL = jnp.where(closed_BxL, special.pad, new_x_BxL)
      reveal_step_BxL = jnp.where(closed_BxL, max_steps, reveal_step_BxL)
      conf_BxL = jnp.where(closed_BxL, 0.0, conf_BxL)
    # A block is done when nothing in it is masked (with ReMDM: and its time has reached 0); the row then moves to the
    # first block that still holds a mask (num_blocks_B when none does).
    done_blk_B = ~jnp.any((new_x_BxL == mask_id) & view.in_block_BxL, axis=-1)
    if remask.keeps_revising:
      done_blk_B = done_blk_B & view.last_B
    live_B = view.live_B
    block_B = jnp.where(live_B & done_blk_B, blocks.first_masked(new_x_BxL, mask_id), st.block_B)
    block_step_B = jnp.where(block_B != st.block_B, 0, st.block_step_B + 1)
    # Rows that were already done take no step (their tokens cannot change: nothing of theirs is masked or revisable).
    new_x_BxL = jnp.where(live_B[:, None], new_x_BxL, view.x_BxL)
    trajectory = st.trajectory
    if cfg.record_trajectory:
      trajectory = jax.lax.dynamic_update_index_in_dim(trajectory, new_x_BxL, st.step + 1, axis=0)
    return _LoopState(step=st.step + 1, x_BxL=new_x_BxL, reveal_step_BxL=reveal_step_BxL, conf_BxL=conf_BxL, key=key,
                      model_carry=net.model_carry, block_B=jnp.where(live_B, block_B, st.block_B),
                      block_step_B=jnp.where(live_B, block_step_B, st.block_step_B),
                      steps_B=st.steps_B + live_B.astype(jnp.int32), calls=st.calls + net.passes,
                      final_BxL=final_BxL, network_state=net.state, trajectory=trajectory)

  trajectory = None
  if cfg.record_trajectory:
    trajectory = jnp.broadcast_to(x_BxL, (max_steps + 1, batch, length))
  init = _LoopState(step=jnp.int32(0), x_BxL=x_BxL,
                    reveal_step_BxL=jnp.where(fixed_BxL, -1, max_steps).astype(jnp.int32),
                    conf_BxL=jnp.zeros(x_BxL.shape, jnp.float32), key=rng, model_carry=init_carry,
                    block_B=blocks.first_masked(x_BxL, mask_id), block_step_B=jnp.zeros((batch,), jnp.int32),
                    steps_B=jnp.zeros((batch,), jnp.int32), calls=jnp.int32(0),
                    final_BxL=jnp.zeros(x_BxL.shape, bool),
                    network_state=network.init_state(x_BxL, init_carry, blocks), trajectory=trajectory)
  st = jax.lax.while_loop(lambda st: (st.step < max_steps) & jnp.any(st.block_B < blocks.num_blocks_B), body, init)
  x_BxL, model_carry = st.x_BxL, st.model_carry

  def fallback_fill(x_BxL):
    t0_B = jnp.zeros((batch,), jnp.float32)
    logits = primitives.sampling_logits(denoise_fn(x_BxL, t0_B, model_carry)[0], special)
    return jnp.where(x_BxL == mask_id, jnp.argmax(logits, axis=-1).astype(jnp.int32), x_BxL)

  x_BxL = jax.lax.cond(jnp.any(x_BxL == mask_id), fallback_fill, lambda x: x, x_BxL)
  trajectory = st.trajectory
  if cfg.record_trajectory:
    after_last_Sx1x1 = (jnp.arange(max_steps + 1) > st.step)[:, None, None]
    trajectory = jnp.where(after_last_Sx1x1, x_BxL[None], trajectory).at[-1].set(x_BxL)
  kept_BxL = gen_BxL & (x_BxL != special.pad)
  if cfg.eos_stop:
    kept_BxL = kept_BxL & (x_BxL != special.eos)
  output = SampleOutput(tokens_BxL=x_BxL, reveal_step_BxL=st.reveal_step_BxL, confidence_BxL=st.conf_BxL,
                        trajectory_SxBxL=trajectory, steps_B=st.steps_B,
                        lengths_B=jnp.sum(kept_BxL, axis=-1, dtype=jnp.int32), network_calls=st.calls)
  return (output, model_carry) if return_carry else output


def check_cache(model, cfg, batch: int, length: int):
  """Raises ConfigError when cfg's cache does not fit this denoiser: MDLM's cache reuses logits when no token changed,
  which is only the same computation for a denoiser of x_t alone (no time conditioning, no carry); the dual KV cache
  needs a denoiser with `kv_prefill`/`kv_step` and no carried state."""
  carries = model.init_sample_carry(batch, length) is not None
  if cfg.cache == "unchanged" and (model.cfg.time_conditioning or carries):
    raise ConfigError(f"sampler cache='unchanged' reuses the last logits when no token changed, which is exact only "
                      f"for a denoiser of the tokens alone; this {type(model).__name__} also depends on t or carries "
                      "state (time conditioning, self-conditioning, HRM memory). Use cache='none'.")
  if cfg.cache in KV_CACHES and (not model.supports_kv_cache or carries or model.cfg.causal
                                 or getattr(model.cfg, "shift_logits", False)):
    raise ConfigError(f"sampler cache={cfg.cache!r} needs a bidirectional denoiser with a KV cache (transformer, "
                      f"EcoHybrid), no carried state and unshifted logits; this {type(model).__name__} has no KV "
                      "cache, carries state (self-conditioning, HRM memory) or shifts its logits (model.shift_logits). "
                      "Use cache='none'.")


def kv_cache_functions(model_fn, cfg):
  """(prefill, step) of the dual KV cache for `masked_sample`, from `model_fn()` (the merged denoiser), or None."""
  if cfg.cache not in KV_CACHES:
    return None
  return (lambda x, t, positions: model_fn().kv_prefill(x, t, positions),
          lambda x, t, positions, kv: model_fn().kv_step(x, t, positions, kv))
