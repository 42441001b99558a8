"""Throughput measurement for `python -m launch.bench`: training tokens/s and MFU, compile time, peak memory, and the
sampler's tokens/s and step time relative to one forward pass. Synthetic uniform tokens (speed does not depend on the
text). Timing follows the device method: warm up, block on results, time each repetition, report the median.
"""
from __future__ import annotations

import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import models, special_tokens
from dlm_jax.benchmarks import profile as profile_lib
from dlm_jax import objectives
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.training import metrics as metrics_lib, optimizer, sharding, state as state_lib, step as step_lib


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_memory_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _train_step_and_inputs(config, vocab, seq_len, batch):
  """A compiled train step of `config`'s model at (batch, seq_len) with its state and synthetic tokens."""
  config = config.copy_and_resolve_references()
  config.data.seq_len = seq_len  # the model's max_len
  objective = objectives.from_config(config, vocab)
  tx = optimizer.make_optimizer(config.optimizer, int(config.train.num_steps), config.model)
  mesh = sharding.MeshContext.from_config(config)  # config.mesh (default: data parallel over every device)
  graphdef, other, state = state_lib.init_on_mesh(config, vocab, tx, mesh)
  with mesh.activate():
    train_step = step_lib.make_train_step(graphdef, other, objective, tx, float(config.train.ema_decay),
                                          optimizer.learning_rate_schedule(config.optimizer, 10),
                                          mesh.shardings(state), mesh.train_batch,
                                          trainable=models.trainable_filter(config.model))
    accum = int(config.train.grad_accum_steps)
    tokens = jax.device_put(np.random.default_rng(0).integers(
        special_tokens.NUM_SPECIAL, vocab, (accum, batch // accum, seq_len)).astype(np.int32), mesh.train_batch)
    start = time.perf_counter()
    compiled = train_step.lower(state, tokens).compile()
  return compiled, state, tokens, time.perf_counter() - start, graphdef, other


def _time_train_steps(compiled, state, tokens, warmup: int, repeats: int):
  for _ in range(warmup):
    state, metrics = compiled(state, tokens)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = compiled(state, tokens)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), state, metrics


def scaling(config, seq_lens, batch: int, on_row=None) -> list[dict]:
  """Training step time and peak memory of `config`'s model at each sequence length, batch fixed (the baseline's
  attention is O(L^2), EcoHybrid's memory mixing O(L M)). Lengths run in increasing order, so the device's peak-memory
  counter (a running maximum) is each row's own peak. `on_row(rows so far)` runs after each length (so that a caller
  cut short keeps the finished ones)."""
  vocab = int(config.bench.vocab_size) or 128
  rows = []
  for seq_len in sorted(seq_lens):
    compiled, state, tokens, compile_s, _, _ = _train_step_and_inputs(config, vocab, seq_len, batch)
    step_s, _, metrics = _time_train_steps(compiled, state, tokens, int(config.bench.warmup_steps),
                                           int(config.bench.train_steps))
    rows.append({"model": config.model.name, "seq_len": seq_len, "batch": batch, "train_step_ms": 1e3 * step_s,
                 "compile_s": compile_s, "peak_memory_GiB": (peak_memory_bytes() or 0) / 2**30 or None,
                 "loss_finite": bool(np.isfinite(float(metrics["loss"])))})
    del compiled, state, tokens
    if on_row is not None:
      on_row(rows)
  return rows


def run(config) -> dict:
  b = config.bench
  vocab = int(b.vocab_size) or 128
  seq_len, batch = int(config.data.seq_len), int(config.train.batch_size)
  compiled, state, tokens, compile_s, graphdef, other = _train_step_and_inputs(config, vocab, seq_len, batch)
  step_s, state, metrics = _time_train_steps(compiled, state, tokens, int(b.warmup_steps), int(b.train_steps))
  tokens_per_s = batch * seq_len / step_s
  flops = models.model_config(config, vocab).flops_per_token(seq_len)
  peak = metrics_lib.device_peak_flops(float(config.get("peak_flops", 0.0)))
  result = {
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
      "params_M": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, "batch": batch, "seq_len": seq_len,
      "vocab": vocab, "train_step_ms": 1e3 * step_s, "train_tokens_per_s": tokens_per_s,
      "mfu": metrics_lib.mfu(flops, tokens_per_s, peak), "flops_per_token": flops, "peak_flops": peak,
      "compile_s": compile_s, "train_peak_memory_GiB": (peak_memory_bytes() or 0) / 2**30 or None,
      "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
  }

  # Sampler: B sequences, all positions new, S steps; compared with one forward pass of the same batch.
  sample, forward = _sampler_and_forward(config, graphdef, other, state.params)
  forward_s = _median_time(forward, 10)
  sample_s = _median_time(sample, 5)
  sb, sl, ss = int(b.sample_batch), int(b.sample_new_tokens), int(b.sample_steps)
  result.update(sample_batch=sb, sample_new_tokens=sl, sample_steps=ss, forward_ms=1e3 * forward_s,
                sample_ms=1e3 * sample_s, sample_tokens_per_s=sb * sl / sample_s,
                sample_step_over_forward=(sample_s / ss) / forward_s)
  return result


def _sampler_and_forward(config, graphdef, other, params):
  """Compiled and warmed-up thunks: one sampler call (B = bench.sample_batch sequences of bench.sample_new_tokens new
  tokens in bench.sample_steps steps, a fresh key each call) and one forward pass of the same batch."""
  b = config.bench
  sb, sl, ss = int(b.sample_batch), int(b.sample_new_tokens), int(b.sample_steps)
  sampler_cfg = sampler_lib.SamplerConfig.from_config(config, special_tokens.DEFAULT, steps=ss)
  sample_fn = sampler_lib.make_sampler(graphdef, other, sampler_cfg)
  x = jnp.full((sb, sl), special_tokens.DEFAULT.mask, jnp.int32)
  fixed = jnp.zeros((sb, sl), bool)
  t_B = jnp.ones((sb,), jnp.float32)
  forward_fn = jax.jit(lambda p, x_: models.denoise_fn(graphdef, p, other)(x_, t_B).logits_BxLxV)
  keys = iter(jax.random.split(jax.random.key(1), 1000))
  sample = lambda: sample_fn(params, next(keys), x, fixed)
  forward = lambda: forward_fn(params, x)
  jax.block_until_ready(forward())
  jax.block_until_ready(sample())
  return sample, forward


def profile(config, directory, steps: int = 3) -> dict:
  """Kernel-time breakdowns (`profile.summarize`) of the compiled train step and of one sampler call of `config`
  (the same shapes as `run`), from jax.profiler traces written under `directory`."""
  b = config.bench
  vocab = int(b.vocab_size) or 128
  seq_len, batch = int(config.data.seq_len), int(config.train.batch_size)
  compiled, state, tokens, _, graphdef, other = _train_step_and_inputs(config, vocab, seq_len, batch)
  _, state, _ = _time_train_steps(compiled, state, tokens, int(b.warmup_steps), 1)
  holder = {"state": state}  # the step donates its input state: always pass the newest

  def train_step():
    holder["state"], metrics = compiled(holder["state"], tokens)
    return metrics

  directory = pathlib.Path(directory)
  train_trace = profile_lib.record(train_step, steps, directory / "train_step")
  sample, forward = _sampler_and_forward(config, graphdef, other, holder["state"].params)
  sample_trace = profile_lib.record(sample, 1, directory / "sampler")
  forward_trace = profile_lib.record(forward, steps, directory / "forward")
  return {name: profile_lib.summarize(profile_lib.kernel_events(trace), n)
          for name, trace, n in (("train step", train_trace, steps), ("sampler call", sample_trace, 1),
                                 ("forward pass", forward_trace, steps))}


def head_loss_memory(config, chunk: int) -> dict:
  """XLA's temporary memory (compiled memory analysis, no run) of the tied head + loss + its gradient at the shapes of
  `config` (B = train.batch_size, L = data.seq_len, D = model.width, V = bench.vocab_size, the model's activation
  dtype): scored from the full [B, L, V] logits, and chunk by chunk (`losses.tied_head_nll`, `chunk` rows)."""
  from dlm_jax.diffusion import losses
  from dlm_jax.models import layers
  batch, seq_len = int(config.train.batch_size), int(config.data.seq_len)
  width, vocab = int(config.model.width), int(config.bench.vocab_size) or 128
  dtype = layers.compute_dtype(config.model.dtype)
  hidden = jax.ShapeDtypeStruct((batch, seq_len, width), dtype)
  head = jax.ShapeDtypeStruct((vocab, width), dtype)
  targets = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)

  mask_id = special_tokens.DEFAULT.mask  # synthetic tokens in our character/SentencePiece ids

  def loss(hidden_BxLxD, head_VxD, targets_BxL, chunk):
    if chunk:
      nll_BxL = losses.tied_head_nll(hidden_BxLxD, head_VxD, targets_BxL, mask_id, chunk)
    else:
      nll_BxL = losses.token_nll(losses.subs_logits(hidden_BxLxD @ head_VxD.T, mask_id), targets_BxL)
    return jnp.mean(nll_BxL)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=3)
  temp = {c: step.lower(hidden, head, targets, c).compile().memory_analysis().temp_size_in_bytes for c in (0, chunk)}
  return {"batch": batch, "seq_len": seq_len, "width": width, "vocab": vocab, "dtype": str(jnp.dtype(dtype)),
          "chunk": chunk, "full_logits_temp_GiB": temp[0] / 2**30, "chunked_temp_GiB": temp[chunk] / 2**30}
