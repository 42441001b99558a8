"""Validation likelihood: the NELBO (AR arm: the exact next-token NLL) of fixed windows, in every unit.

Every arm is scored on the same targets: tokens 2..L of each window given token 1 (`Objective.
evaluation_nll`), so "per token" is per scored token and bits per character count the characters of tokens 2..L.
A diffusion model is scored by its NELBO whatever objective it trained with (masked_mean included).

One estimate per (window batch, time draw): batch i, draw r uses key fold_in(fold_in(key(seed), r), i), so a figure is
reproducible for a seed; each batch draws its own antithetic times. The report gives nats and bits per token, bits per
character and perplexity. For a character tokenizer a token is a character, so BPC = bits per token; for SentencePiece
bits per character divides the total bits of the windows by the number of characters they decode to. Perplexity is
exp(nats per token): an upper bound for diffusion (the NELBO bounds the NLL), exact for the AR arm.

The trainer's periodic evaluation and `python -m launch.evaluate` both call `evaluate`; `window_search` is
`launch.evaluate --window_search`'s choice of a clipped training window by the loss estimator's noise.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from dlm_jax import special_tokens
from dlm_jax import models
from dlm_jax.objectives import Objective


SCORES = ("nelbo", "training_loss")


def make_eval_step(graphdef, other, objective: Objective, score: str = "nelbo"):
  """Jitted `eval_step(params, x0_BxL, key) -> nats per scored token`: `score="nelbo"`, the likelihood bound every
  table reports (`Objective.evaluation_nll`: one antithetic-t estimate), or "training_loss", the run's own
  training objective without auxiliary losses (for script-aware corruption the bound given the segmentation, not a
  likelihood: a diagnostic of what the model learned under the corruption it was trained with). No dropout."""
  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")

  @jax.jit
  def eval_step(params, x0_BxL, key, objective_state=None):
    fn = models.denoise_fn(graphdef, params, other)
    if score == "training_loss":
      stateful = {} if objective_state is None else {"objective_state": objective_state}
      return objective(fn, x0_BxL, key, with_aux=False, **stateful)[0]
    return objective.evaluation_nll(fn, x0_BxL, key)

  return eval_step


def loss_estimator_std(loss_step, params, windows_WxL, *, batch_size: int, seed: int, batches: int, place=None,
                       objective_state=None):
  """The standard deviation of a one-draw estimate of the training loss on a batch of `batch_size` windows, the windows
  fixed (the Monte Carlo noise of the times and masks, the diffusion gradient's own noise; issue #31): `loss_step`
  (make_eval_step(..., score="training_loss")) drawn twice with independent keys on each of the first `batches`
  batches, sqrt(mean_i (a_i - b_i)^2 / 2), an unbiased estimate of the variance under the square root. Nats per
  token; 0 for an exact loss (the AR arm). None when no batch is drawn. `objective_state`: the run's
  TrainState.objective_state (the importance-sampled times' proposal), so that the figure is the run's own
  estimator's."""
  batch_size = min(batch_size, windows_WxL.shape[0])
  count = min(batches, windows_WxL.shape[0] // batch_size) if batch_size else 0
  if count < 1:
    return None
  base = jax.random.fold_in(jax.random.key(seed), 7_000_001)
  stateful = () if objective_state is None else (objective_state,)
  squares = []
  for i in range(count):
    batch = windows_WxL[i * batch_size:(i + 1) * batch_size]
    batch = place(batch) if place is not None else batch
    a, b = (float(loss_step(params, batch, jax.random.fold_in(jax.random.fold_in(base, r), i), *stateful))
            for r in (0, 1))
    squares.append((a - b) ** 2 / 2.0)
  return float(np.sqrt(np.mean(squares)))


def window_grid(step: float, min_width: float) -> list[tuple[float, float]]:
  """Every clipped window [low, high] with low and high on a grid of `step` in [0, 1] and high - low >= min_width."""
  count = round(1.0 / step)
  if count < 1 or abs(count * step - 1.0) > 1e-9:
    raise ValueError(f"The window grid's step must divide 1 (0.1, 0.05, ...), got {step}.")
  points = [round(i * step, 10) for i in range(count + 1)]
  return [(low, high) for low in points for high in points if high - low >= min_width - 1e-9]


def window_search(graphdef, other, objective: Objective, params, windows_WxL, candidates, *, batch_size: int,
                  seed: int, batches: int, place=None) -> dict:
  """BD3-LM's data-driven noise window (Arriola et al. 2025, section 4: the clipped schedule t ~ U[beta, omega] whose
  NELBO estimator varies least): for each candidate (low, high), the standard deviation of the run's training loss
  under that window (`loss_estimator_std`: two independent draws on each of `batches` batches of the same windows),
  and the candidate where it is lowest. The losses of different windows are different objectives (a window's loss
  is the ELBO's integrand averaged over it); the criterion compares their Monte Carlo noise only, as BD3-LM does.
  `objective` must have the window (MaskedELBO's time_low / time_high)."""
  rows = []
  for low, high in candidates:
    windowed = dataclasses.replace(objective, time_low=float(low), time_high=float(high))
    std = loss_estimator_std(make_eval_step(graphdef, other, windowed, "training_loss"), params, windows_WxL,
                             batch_size=batch_size, seed=seed, batches=batches, place=place)
    rows.append({"time_low": float(low), "time_high": float(high), "loss_estimator_std": std})
  measured = [row for row in rows if row["loss_estimator_std"] is not None]
  return {"rows": rows, "lowest": min(measured, key=lambda row: row["loss_estimator_std"]) if measured else None}


def report(nats_per_token: float, num_tokens: int, num_chars: int) -> dict:
  bits_per_token = nats_per_token / math.log(2.0)
  return {
      "nats_per_token": nats_per_token,
      "bits_per_token": bits_per_token,
      "bits_per_char": bits_per_token * num_tokens / max(num_chars, 1),
      "perplexity": math.exp(nats_per_token) if nats_per_token < 700 else math.inf,  # (exp overflows past 709)
  }


def evaluate(eval_step, params, windows_WxL, tokenizer, *, batch_size: int, seed: int, time_samples: int,
             place=None) -> dict:
  """Mean nats per token over the windows that fill whole batches (min(batch_size, N) windows each), as a `report` plus
  `windows` (how many were scored), `time_samples` and `mc_stderr`: the Monte Carlo standard error of the figure over
  its time draws (the windows fixed), std(per-draw means) / sqrt(time_samples); None with one draw. `place` puts a
  host batch on the devices (default: as is)."""
  n = windows_WxL.shape[0]
  batch_size = min(batch_size, n)
  num_batches = n // batch_size
  base = jax.random.key(seed)
  draw_totals = []
  for r in range(time_samples):
    draw_total = 0.0
    for i in range(num_batches):
      batch = windows_WxL[i * batch_size:(i + 1) * batch_size]
      batch = place(batch) if place is not None else batch
      draw_total += float(eval_step(params, batch, jax.random.fold_in(jax.random.fold_in(base, r), i)))
    draw_totals.append(draw_total)
  # The targets: tokens 2..L of each window, less padding and conditioning positions (data.layout "padded"/"chat").
  ids_WxL, given_WxL = special_tokens.split_fixed(np.asarray(windows_WxL[:num_batches * batch_size]))
  targets_WxLm1 = ~given_WxL[:, 1:] & (ids_WxL[:, 1:] != tokenizer.special.pad)
  num_chars = sum(len(tokenizer.decode(row[keep])) for row, keep in zip(ids_WxL[:, 1:], targets_WxLm1))
  result = report(sum(draw_totals) / (time_samples * num_batches), int(targets_WxLm1.sum()), num_chars)
  draw_means = np.asarray(draw_totals) / num_batches
  stderr = float(np.std(draw_means, ddof=1) / np.sqrt(time_samples)) if time_samples > 1 else None
  result.update(windows=int(len(ids_WxL)), time_samples=int(time_samples), mc_stderr=stderr)
  return result
