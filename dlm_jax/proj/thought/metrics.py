"""Thought-tensor metrics (seed 003, "Evaluation Metrics"), each a plain function of arrays, and `report`, which runs
them all on a trained thought run (and a baseline) for `python -m dlm_jax.proj.thought.report`.

* Stability across denoising steps (`stability`): over a trajectory of thoughts [S, B, ...], the Pearson correlation
  between consecutive steps' thoughts of the same sample (flattened), averaged over steps and samples (seed target
  > 0.8), and the variance across steps, mean_i Var_s(T_s,i), as a fraction of the thoughts' mean square.
* Diversity (`spectral_entropy`): the entropy of the normalized eigenvalue spectrum of the thoughts' covariance,
  H = -sum_k p_k log p_k with p_k = lambda_k / sum lambda (nats; exp(H) is the effective rank, Roy & Vetterli 2007):
  0 when every thought lies on one line (collapse), log(rank) when they fill their space evenly.
* Compression (`probe_r2`): information retained, as the held-out R^2 of a ridge-regression probe from the (n-1)-D
  evolved thought of a window to that window's bag of tokens (its token histogram), against the same probe given
  another window's thought (the control: what the probe finds in no information), with the raw sizes (W log2 V bits of
  text vs the thought's floats); and what the memory predicts of the next (target) window's bag, against the bags of
  the last context window and of all K context windows as predictors.
* Alignment (`retrieval_accuracy`): top-1 accuracy of each memory's alignment code picking the code of the text it
  precedes among N candidates (chance 1/N).
* NELBO with and without the thought: `report` scores the target windows given memories of depth 0..K (0: the empty
  memory, the same parameters) and a parameter-matched baseline on the same target windows, with paired differences.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import models
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import likelihood
from dlm_jax.proj.thought import sampler as thought_sampling


def load_thought_run(workdir: str, *, weights: str, which: str):
  """The thought run at `workdir` for inference (training.checkpoint.load_for_inference); ConfigError when the run
  there trained another objective."""
  from dlm_jax.training import checkpoint
  run = checkpoint.load_for_inference(workdir, weights=weights, which=which)
  if run.objective.name != "thought":
    raise ConfigError(f"--workdir={workdir} is not a thought run (its diffusion.objective is {run.objective.name!r}); "
                      "train one with --config=dlm_jax/proj/thought/configs/small.py:thought.")
  return run


def _consecutive_correlation(flat_SxBxF):
  centered = flat_SxBxF - flat_SxBxF.mean(-1, keepdims=True)
  norms = np.linalg.norm(centered, axis=-1)
  return np.sum(centered[1:] * centered[:-1], axis=-1) / np.maximum(norms[1:] * norms[:-1], 1e-12)  # [S - 1, B]


def stability(trajectory_SxBx, calls: int | None = None) -> dict:
  """Consecutive-step correlation and variance across steps of the first `calls` + 1 rows of a trajectory [S, B, ...].

  `step_correlation` is the seed's figure: Pearson's r of each sample's thought at steps s and s + 1, averaged. A
  thought that is the same for every sample (a collapsed one) scores 1 on it, so `specific_step_correlation` repeats it
  after subtracting, at each step, the mean thought over the batch: the stability of what is particular to a sample."""
  traj = np.asarray(trajectory_SxBx, np.float64)
  if calls is not None:
    traj = traj[:int(calls) + 1]
  steps, batch = traj.shape[:2]
  flat = traj.reshape(steps, batch, -1)
  corr = _consecutive_correlation(flat)
  specific = _consecutive_correlation(flat - flat.mean(1, keepdims=True)) if batch > 1 else corr
  variance = np.mean(np.var(flat, axis=0))
  return {"step_correlation": float(np.mean(corr)), "step_correlation_min": float(np.min(corr)),
          "step_correlation_last_half": float(np.mean(corr[(steps - 1) // 2:])),
          "specific_step_correlation": float(np.mean(specific)),
          "variance_across_steps": float(variance / max(np.mean(np.square(flat)), 1e-12)), "steps": int(steps - 1)}


def spectral_entropy(thoughts_Nx) -> dict:
  """Entropy (nats) of the covariance spectrum of N thoughts, its effective rank exp(H), and the maximum log(rank)."""
  x = np.asarray(thoughts_Nx, np.float64).reshape(len(thoughts_Nx), -1)
  x = x - x.mean(0, keepdims=True)
  eig = np.clip(np.linalg.svd(x, compute_uv=False)**2, 0.0, None)
  p = eig / max(eig.sum(), 1e-300)
  p = p[p > 0]
  entropy = float(-np.sum(p * np.log(p)))
  return {"entropy": entropy, "effective_rank": math.exp(entropy), "max_entropy": math.log(min(x.shape))}


RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _ridge_fit_r2(x_train, y_train, x_test, y_test, ridge: float) -> float:
  mean, scale = x_train.mean(0), x_train.std(0)
  scale = np.where(scale > 1e-8, scale, 1.0)  # a feature constant on the training rows gets no weight, not 1e8
  design = lambda rows: np.concatenate([(rows - mean) / scale, np.ones((len(rows), 1))], axis=1)
  a = design(x_train)
  w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ y_train)
  residual = y_test - design(x_test) @ w
  return float(1.0 - np.sum(residual**2) / max(np.sum((y_test - y_train.mean(0))**2), 1e-300))


def probe_r2(features_NxF, targets_NxM, train_fraction: float = 0.5, ridge: float | None = None) -> float:
  """Held-out R^2 of a ridge probe targets ~ [features, 1] W fitted on the first train_fraction of the rows:
  1 - sum (y - y_hat)^2 / sum (y - mean_train y)^2 over the held-out rows (all target dimensions pooled). Features are
  standardized on the training rows; the penalty is ridge x n_train x |W|^2 with `ridge` given, or chosen from
  RIDGE_GRID by 3-fold cross-validation on the training rows (so that predictors of different sizes are each probed at
  their best, none overfitted)."""
  x = np.asarray(features_NxF, np.float64).reshape(len(features_NxF), -1)
  y = np.asarray(targets_NxM, np.float64).reshape(len(targets_NxM), -1)
  n_train = int(len(x) * train_fraction)
  if n_train < 6 or len(x) - n_train < 2:
    raise ValueError(f"probe_r2 needs at least 6 training and 2 held-out rows, got {len(x)} rows.")
  if ridge is None:
    folds = np.array_split(np.arange(n_train), 3)

    def cv(r):
      scores = []
      for fold in folds:
        keep = np.setdiff1d(np.arange(n_train), fold)
        scores.append(_ridge_fit_r2(x[keep], y[keep], x[fold], y[fold], r))
      return np.mean(scores)

    ridge = max(RIDGE_GRID, key=cv)
  return _ridge_fit_r2(x[:n_train], y[:n_train], x[n_train:], y[n_train:], ridge)


def bag_of_tokens(tokens_NxW, vocab_size: int):
  """Each row's token histogram, normalized to sum 1: [N, V]."""
  tokens = np.asarray(tokens_NxW)
  counts = np.zeros((len(tokens), vocab_size))
  np.add.at(counts, (np.repeat(np.arange(len(tokens)), tokens.shape[1]), tokens.reshape(-1)), 1.0)
  return counts / tokens.shape[1]


def retrieval_accuracy(a_NxD, b_NxD) -> float:
  """Fraction of rows n whose code a_n has its largest dot product with b_n among all N codes b."""
  scores = np.asarray(a_NxD) @ np.asarray(b_NxD).T
  return float(np.mean(np.argmax(scores, axis=1) == np.arange(len(scores))))


def context_thoughts(run, windows_NxL, batch_size: int):
  """For N eval rows: (evolved thoughts of the K context windows [N, K, *E], full memory [N, *dims], alignment codes
  of memory and target text [N, D] each), in batches."""
  process = run.objective.thought

  @jax.jit
  def read(params, rows):
    fn = models.denoise_fn(run.graphdef, params, run.other)
    context, target = process.split(rows)
    memory, evolved = process.memories(fn, context)
    a, b = fn.model().thought_alignment(memory, target)
    return jnp.swapaxes(evolved, 0, 1), memory, a, b

  parts = [read(run.params, windows_NxL[i:i + batch_size]) for i in range(0, len(windows_NxL), batch_size)]
  return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(4))


def _draws(step, params, rows_NxL, batch_size: int, seed: int, time_samples: int):
  """[time_samples] mean nats/token of `step(params, rows, key)` over whole batches; batch i of draw r uses key
  fold_in(fold_in(key(seed), r), i), the keys of likelihood.evaluate, so every scorer sees the same times and masks."""
  n = (len(rows_NxL) // batch_size) * batch_size
  key = lambda r, i: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), r), i // batch_size)
  return np.array([np.mean([float(step(params, rows_NxL[i:i + batch_size], key(r, i)))
                            for i in range(0, n, batch_size)])
                   for r in range(time_samples)])


def _stderr(x) -> float:
  return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def depth_curve(run, windows_NxL, batch_size: int, seed: int, time_samples: int, baseline=None) -> dict:
  """Target-window NELBO (nats/token, with its Monte Carlo standard error) for every memory depth 0..K, each depth's
  difference from depth 0 (the empty memory) and, with a `baseline` run (no thought, windows of W), from the
  baseline's NELBO of the same target windows. Every scorer sees the same windows, times and masks (the same keys; a
  thought run's target window is corrupted exactly as a W-token window), so a difference's standard error over the
  time draws is far smaller than either figure's."""
  objective = run.objective
  process = objective.thought
  draws = {}
  for depth in range(process.context_windows + 1):
    step = jax.jit(lambda params, rows, key, depth=depth: process.depth_nll(
        objective, models.denoise_fn(run.graphdef, params, run.other), rows, key, depth))
    draws[depth] = _draws(step, run.params, windows_NxL, batch_size, seed, time_samples)
  curve = {depth: {"nats_per_token": float(np.mean(d)), "mc_stderr": _stderr(d),
                   "minus_empty_memory": float(np.mean(d - draws[0])),
                   "minus_empty_memory_stderr": _stderr(d - draws[0])} for depth, d in draws.items()}
  if baseline is not None:
    _, target = process.split(jnp.asarray(windows_NxL))
    base = _draws(likelihood.make_eval_step(baseline.graphdef, baseline.other, baseline.objective), baseline.params,
                  np.asarray(target), batch_size, seed, time_samples)
    curve["baseline"] = {"nats_per_token": float(np.mean(base)), "mc_stderr": _stderr(base)}
    for depth, d in draws.items():
      curve[depth].update(minus_baseline=float(np.mean(d - base)), minus_baseline_stderr=_stderr(d - base))
  return curve


def sampling_stability(run, num_samples: int, steps: int, seed: int) -> dict:
  """Stability of the thought estimate and of the evolved thought along the reverse process of `num_samples`
  generations from noise, and of generations given a clean memory (persistence)."""
  cfg = dataclasses.replace(run.sampler_config(), steps=steps, record_trajectory=True)
  width = run.objective.sample_length(int(run.config.data.seq_len))
  tokens = np.zeros((num_samples, width), np.int32)
  fixed = np.zeros((num_samples, width), bool)
  sampler = thought_sampling.make_thought_sampler(run.graphdef, run.other, cfg,
                                                 thought_sampling.ThoughtSampling.of(run.objective))
  dims = run.model_config.thought_dims
  first = sampler(run.params, jax.random.key(seed), tokens, fixed,
                  thought_sampling.from_noise(jax.random.key(seed + 1), num_samples, dims))
  second = sampler(run.params, jax.random.key(seed + 2), tokens, fixed, thought_sampling.given(first.next_memory_BxT))
  calls = int(first.thought_calls)
  return {"from_noise": {"estimate": stability(first.estimate_trajectory, calls),
                         "evolved": stability(first.evolved_trajectory[1:], calls - 1)},
          "given_memory": {"evolved": stability(second.evolved_trajectory[1:], int(second.thought_calls) - 1)},
          "samples": [run.tokenizer.decode(row) for row in np.asarray(first.text.tokens_BxL)],
          "persisted_samples": [run.tokenizer.decode(row) for row in np.asarray(second.text.tokens_BxL)]}


def report(run, windows_NxL, *, baseline=None, batch_size: int = 16, seed: int = 0, time_samples: int = 4,
           num_samples: int = 8, steps: int = 64) -> dict:
  """Every metric of the module docstring for a thought run on eval rows [N, (K + 1) W]."""
  process = getattr(run.objective, "thought", None)
  if process is None:
    raise ValueError(f"{run.workdir} is not a thought run (its diffusion.objective is {run.objective.name!r}).")
  context, target = (np.asarray(a) for a in process.split(jnp.asarray(windows_NxL)))
  evolved, memory, a, b = context_thoughts(run, windows_NxL, batch_size)
  vocab = run.tokenizer.vocab_size
  thoughts = evolved.reshape(-1, *evolved.shape[2:])  # [N K, *E], window order within each row
  bags = bag_of_tokens(context.reshape(-1, context.shape[-1]), vocab)
  order = np.random.default_rng(seed).permutation(len(thoughts))  # the probe's train/held-out split
  width, floats = context.shape[-1], int(np.prod(evolved.shape[2:]))
  shuffled = np.random.default_rng(seed + 1).permutation(len(thoughts))
  target_bags = bag_of_tokens(target, vocab)
  rows = np.random.default_rng(seed + 2).permutation(len(memory))
  consecutive = stability(np.swapaxes(evolved, 0, 1))
  result = {
      "nelbo_by_memory_depth": depth_curve(run, windows_NxL, batch_size, seed, time_samples, baseline),
      "diversity": {"evolved": spectral_entropy(thoughts), "memory": spectral_entropy(memory)},
      "compression": {"probe_r2_own_window_bag_from_thought": probe_r2(thoughts[order], bags[order]),
                      "probe_r2_own_window_bag_from_another_windows_thought": probe_r2(thoughts[shuffled][order],
                                                                                        bags[order]),
                      "probe_r2_target_bag_from_memory": probe_r2(memory[rows], target_bags[rows]),
                      "probe_r2_target_bag_from_last_context_bag": probe_r2(
                          bag_of_tokens(context[:, -1], vocab)[rows], target_bags[rows]),
                      "probe_r2_target_bag_from_context_bag": probe_r2(
                          bag_of_tokens(context.reshape(len(context), -1), vocab)[rows], target_bags[rows]),
                      "text_bits_per_window": width * math.log2(vocab), "thought_floats": floats},
      "alignment": {"retrieval_top1": retrieval_accuracy(a, b), "chance": 1.0 / len(a), "candidates": len(a)},
      "coherence": {"consecutive_window_correlation": consecutive["step_correlation"],
                    "specific_consecutive_window_correlation": consecutive["specific_step_correlation"]},
      "stability": sampling_stability(run, num_samples, steps, seed),
      "windows": int(len(windows_NxL)), "window_length": int(width), "context_windows": process.context_windows,
  }
  return result
