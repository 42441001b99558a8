"""The run config's numbers checked before a trainer creates anything: one ConfigError naming the field, the value and
what it takes (`check`). The model's, the objective's and the sampler's fields are checked by their own dataclasses;
these are the sections the trainer reads itself (train, optimizer, eval, data, sample.num_samples)."""
from __future__ import annotations

import math

from dlm_jax.errors import ConfigError

NAN_POLICIES = ("stop", "skip_step")


def _integer(low: int):
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def _real(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
  return ok, (f"a number > {low:g}" if low_open and high == math.inf else
              f"a number >= {low:g}" if high == math.inf else f"a number in {left}{low:g}, {high:g}{right}")


# field -> (test, what it takes, why), checked when the config has the field.
RULES = {
    "train.num_steps": (*_integer(1), "the optimizer updates to run"),
    "train.batch_size": (*_integer(1), "sequences per optimizer update"),
    "train.grad_accum_steps": (*_integer(1), "micro-batches per update; 1: none"),
    "train.log_every": (*_integer(1), "steps between console lines"),
    "train.checkpoint_every": (*_integer(1), "steps between checkpoints"),
    "train.max_to_keep": (*_integer(1), "checkpoints kept"),
    "train.sample_every": (*_integer(0), "steps between logged samples; 0: none"),
    "train.early_stop_evals": (*_integer(0), "0: off"),
    "train.ema_decay": (*_real(0.0, 1.0, high_open=True), "0: no EMA"),
    "train.time_limit_s": (*_real(0.0), "seconds; 0: no limit"),
    "train.spike_factor": (*_real(0.0), "0: off; else > 1, the loss / running-median ratio that stops the run"),
    "train.spike_window": (*_integer(1), "recorded steps in the running median"),
    "train.max_skipped_steps": (*_integer(1), "consecutive skipped updates that stop a skip_step run"),
    "optimizer.learning_rate": (*_real(0.0), "the peak learning rate; 0 freezes the parameters"),
    "optimizer.warmup_steps": (*_integer(0), "linear warmup steps"),
    "optimizer.min_lr_ratio": (*_real(0.0, 1.0), "the cosine floor as a share of the peak"),
    "optimizer.b1": (*_real(0.0, 1.0, high_open=True), "AdamW's first-moment decay"),
    "optimizer.b2": (*_real(0.0, 1.0, high_open=True), "AdamW's second-moment decay"),
    "optimizer.weight_decay": (*_real(0.0), "decoupled weight decay"),
    "optimizer.grad_clip": (*_real(0.0), "global-norm clip; 0: off"),
    "optimizer.slow_slots_lr_scale": (*_real(0.0), "EcoHybrid slow slots' learning-rate multiple"),
    "eval.every": (*_integer(0), "steps between evaluations; 0: none"),
    "eval.num_windows": (*_integer(1), "validation windows"),
    "eval.batch_size": (*_integer(1), "windows per evaluation batch"),
    "eval.time_samples": (*_integer(1), "antithetic time draws per window"),
    "eval.estimator_batches": (*_integer(0), "batches whose training loss is drawn twice; 0: none"),
    "data.seq_len": (*_integer(2), "tokens per training window"),
    "sample.num_samples": (*_integer(0), "samples logged every train.sample_every steps; 0: none"),
}


def _value(config, field: str):
  node = config
  for part in field.split("."):
    if node is None or part not in node:
      return None, False
    node = node[part]
  return node, True


def check(config):
  """Raises ConfigError for the first field of RULES (and the rules between fields) that the config breaks."""
  for field, (ok, takes, why) in RULES.items():
    value, present = _value(config, field)
    if present and not ok(value):
      raise ConfigError(f"--config.{field}={value!r}: must be {takes} ({why}).")
  spike, _ = _value(config, "train.spike_factor")
  if spike and spike <= 1:
    raise ConfigError(f"--config.train.spike_factor={spike!r}: must be 0 (off) or > 1 (stop when the loss exceeds this "
                      "multiple of its running median).")
  policy, present = _value(config, "train.nan_policy")
  if present and policy not in NAN_POLICIES:
    raise ConfigError(f"--config.train.nan_policy={policy!r}: must be one of {NAN_POLICIES} (what a non-finite loss or "
                      "gradient does: stop the run, or drop that update and go on).")
  batch, _ = _value(config, "train.batch_size")
  accum, _ = _value(config, "train.grad_accum_steps")
  if batch and accum and batch % accum:
    raise ConfigError(f"--config.train.batch_size={batch} must be divisible by --config.train.grad_accum_steps={accum} "
                      "(each update averages that many equal micro-batches).")
