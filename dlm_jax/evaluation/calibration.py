"""Calibration of the sampler's reveal confidence (seed 001 §9.7), on masked validation text.

The confidence sampler reveals the positions whose candidates the model is surest of, so the policy is only as good
as those confidences. Here each validation window is corrupted by the forward process at t ~ U(t_min, 1) (antithetic
draws, as the NELBO evaluation; the given positions of a "chat" or "puzzle" window, special_tokens.FIXED_FLAG, never
masked), and at every masked position the greedy candidate argmax_v p_theta(v | x_t) (never
a special id, as in the sampler) is recorded with its confidence c = p_theta(candidate | x_t) and whether it is the
true token. Then, over B equal-width confidence bins [k/B, (k+1)/B) (the last closed),

    reliability diagram: per bin, its count n_k, mean confidence conf_k and accuracy acc_k;
    ECE = sum_k (n_k / N) |acc_k - conf_k|    (expected calibration error, Guo et al. 2017).

A perfectly calibrated predictor (P(correct | c) = c) has ECE -> 0 as N grows. A denoiser with a trained calibration
head (model.calibration_head; models.base.CalibrationHead) forecasts P(correct) itself: `calibrate` then reports the
same figures for its forecast, under "head", beside the raw confidence's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import models, special_tokens
from dlm_jax.diffusion import forward
from dlm_jax.sampling import sampler as sampler_lib


def reliability(confidence_N, correct_N, num_bins: int = 10) -> dict:
  """Reliability-diagram data and ECE (module docstring) of confidences in [0, 1] and 0/1 correctness."""
  confidence_N = np.asarray(confidence_N, np.float64)
  correct_N = np.asarray(correct_N, np.float64)
  if confidence_N.size == 0:
    raise ValueError("No predictions to calibrate (no masked positions).")
  index_N = np.minimum((confidence_N * num_bins).astype(np.int64), num_bins - 1)
  bins, ece = [], 0.0
  for k in range(num_bins):
    members = index_N == k
    count = int(members.sum())
    conf = float(confidence_N[members].mean()) if count else None
    acc = float(correct_N[members].mean()) if count else None
    if count:
      ece += count / confidence_N.size * abs(acc - conf)
    bins.append(dict(low=k / num_bins, high=(k + 1) / num_bins, count=count, confidence=conf, accuracy=acc))
  return dict(ece=ece, predictions=int(confidence_N.size), accuracy=float(correct_N.mean()),
              mean_confidence=float(confidence_N.mean()), bins=bins)


def make_prediction_step(graphdef, other, schedule, special: special_tokens.SpecialIds, t_min: float = 1e-5):
  """Jitted `(params, x0_BxL, rng) -> (confidence_BxL, correct_BxL, masked_BxL, head_BxL)` at one forward-process
  draw; `head_BxL` is the calibration head's forecast sigmoid(calibration_BxL), or None without a head."""

  @jax.jit
  def step(params, x0_BxL, rng):
    x0_BxL, given_BxL = special_tokens.split_fixed(x0_BxL)  # a puzzle's clues, an SFT prompt: never masked
    t_rng, mask_rng = jax.random.split(rng)
    t_B = forward.antithetic_times(t_rng, x0_BxL.shape[0], t_min)
    xt_BxL, masked_BxL = forward.corrupt(mask_rng, x0_BxL, t_B, schedule, special.mask, fixed_BxL=given_BxL)
    output = models.denoise_fn(graphdef, params, other)(xt_BxL, t_B)
    logits_BxLxV = sampler_lib.remove_never_sampled(output.logits_BxLxV, special)
    candidate_BxL = jnp.argmax(logits_BxLxV, axis=-1).astype(jnp.int32)
    confidence_BxL = sampler_lib.confidence_scores(logits_BxLxV, candidate_BxL, "prob")
    head_BxL = None if output.calibration_BxL is None else jax.nn.sigmoid(output.calibration_BxL)
    return confidence_BxL, candidate_BxL == x0_BxL, masked_BxL, head_BxL

  return step


def calibrate(run, windows_WxL: np.ndarray, batch_size: int, seed: int = 0, num_bins: int = 10,
              time_samples: int = 1) -> dict:
  """`reliability` of a diffusion run's reveal confidences on `windows_WxL` (module docstring), `time_samples`
  forward-process draws per window; with a calibration head, its forecast's under "head"."""
  if run.objective.is_autoregressive:
    raise ValueError("Calibration measures a diffusion run's reveal confidences; this run is the causal (AR) arm.")
  step = make_prediction_step(run.graphdef, run.other, run.objective.schedule, run.tokenizer.special,
                              run.objective.t_min)
  confidences, corrects, heads = [], [], []
  key = jax.random.key(seed)
  for draw in range(time_samples):
    for start in range(0, len(windows_WxL), batch_size):
      batch = jnp.asarray(windows_WxL[start:start + batch_size], jnp.int32)
      conf, correct, masked, head = step(run.params, batch, jax.random.fold_in(key, draw * 100003 + start))
      masked = np.asarray(masked)
      confidences.append(np.asarray(conf)[masked])
      corrects.append(np.asarray(correct)[masked])
      if head is not None:
        heads.append(np.asarray(head)[masked])
  correct_N = np.concatenate(corrects)
  result = reliability(np.concatenate(confidences), correct_N, num_bins)
  if heads:
    result["head"] = reliability(np.concatenate(heads), correct_N, num_bins)
  return result
