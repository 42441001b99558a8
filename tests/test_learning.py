"""Learning: on a random Markov chain with a known likelihood, a short CPU run reaches a validation NELBO above the
true negative log-likelihood (a bound never beats the truth) and close to it."""
import math

import numpy as np

from conftest import tiny_config
from dlm_jax.data import pipeline
from dlm_jax import objectives
from dlm_jax.evaluation import likelihood
from dlm_jax.training import checkpoint, loop

ALPHABET = "abcdef"


def markov_chain(num_chars, seed=0):
  rng = np.random.default_rng(seed)
  transition = rng.dirichlet(np.full(len(ALPHABET), 0.3), size=len(ALPHABET))
  evals, evecs = np.linalg.eig(transition.T)
  stationary = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
  stationary /= stationary.sum()
  states = np.empty(num_chars, np.int64)
  states[0] = rng.choice(len(ALPHABET), p=stationary)
  uniforms = rng.random(num_chars)
  cumulative = np.cumsum(transition, axis=1)
  for i in range(1, num_chars):
    states[i] = min(np.searchsorted(cumulative[states[i - 1]], uniforms[i]), len(ALPHABET) - 1)
  return "".join(ALPHABET[s] for s in states), transition, stationary


def test_nelbo_bounds_and_approaches_the_true_likelihood(tmp_path):
  text, transition, stationary = markov_chain(120_000)
  (tmp_path / "markov.txt").write_text(text, encoding="utf-8")
  config = tiny_config(**{
      "data.path": str(tmp_path / "markov.txt"), "data.seq_len": 32, "train.num_steps": 400,
      "train.batch_size": 32, "train.checkpoint_every": 400, "eval.every": 0, "optimizer.learning_rate": 3e-3,
      "optimizer.warmup_steps": 20, "model.width": 64, "model.mlp_dim": 128, "model.num_heads": 4})
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["step"] == 400

  run = checkpoint.load_for_inference(tmp_path / "run")
  tokenizer = run.tokenizer
  streams = pipeline.load_token_streams(config.data, tmp_path / "run" / "data_cache", tokenizer=tokenizer)
  windows = pipeline.eval_windows(streams.valid, 32, 256)
  eval_step = likelihood.make_eval_step(run.graphdef, run.other, objectives.from_config(config))
  per_draw = [likelihood.evaluate(eval_step, run.params, windows, tokenizer, batch_size=256, seed=seed,
                                  time_samples=1)["nats_per_token"] for seed in range(8)]
  nelbo, stderr = float(np.mean(per_draw)), float(np.std(per_draw) / math.sqrt(len(per_draw)))

  # Exact -log p(x_2..32 | x_1) of each window under the chain, per scored token (the evaluation's convention).
  states = np.vectorize(lambda t: ALPHABET.index(tokenizer.decode([t])))(windows)
  log_p = np.sum(np.log(transition[states[:, :-1], states[:, 1:]]), axis=1)
  truth = float(-np.mean(log_p) / 31)
  entropy_rate = float(-np.sum(stationary[:, None] * transition * np.log(transition)))
  print(f"NELBO {nelbo:.4f} +- {stderr:.4f} nats/token, true NLL {truth:.4f}, entropy rate {entropy_rate:.4f}")
  assert nelbo > truth - 4 * stderr, "the NELBO must not beat the true likelihood"
  assert nelbo < truth + 0.07, "a short run should get within 0.07 nats/token of the truth (measured: 0.03)"
