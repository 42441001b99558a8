"""Quality against speed for every decoding strategy of the sampler, on one trained run (issue #11's table).

For each strategy and reverse-step count the same prompts (the first `prompt_len` tokens of validation windows) are
completed by one jitted sampler call, compiled first and then timed, and scored:

* judge NLL (nats/token; exp = generative perplexity) of the generated tokens under the config's causal arm, as
  `launch.gen_eval` (dlm_jax/evaluation/generation.py);
* mean unigram entropy of a sample's generated tokens (nats), and distinct-2/3: per sample, the fraction of its
  generated n-grams that are distinct, |set(n-grams)| / #n-grams (Li et al. 2016's distinct-n, per sample, averaged);
* the script error rate (mixed-script words + words off the prompt's script), which only means something for
  Hindi/Hinglish runs;
* tokens/s (generated tokens of the batch / wall seconds of the call), wall seconds per batch, and network calls
  (denoiser forward passes, the batch's: every sample rides every call), mean steps per sample and mean steps per
  generated token (its last reveal step + 1: what a per-token budget, `token_stop`, saves);
* for a strategy with a cache, its agreement with the same strategy without it: the fraction of generated tokens that
  greedy decoding (argmax candidates, so that the two runs draw no different random numbers) puts in the same place
  with and without the cache. 1 for MDLM's exact cache; below 1 measures what Fast-dLLM's approximate KV caches cost.

A strategy is a name and its SamplerConfig overrides (`STRATEGIES`); "confidence_stop" and "token_stop" (the same
budget per block and per token) expand over the given thresholds. Every row states the sampler settings it ran
with. The real continuations of the prompts come first.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.data import tokenizers
from dlm_jax.evaluation import generation
from dlm_jax.sampling import hybrid, make_sampler


def strategies(block_length: int, threshold: float, remask_eta: float, guidance_scale: float = 1.0) -> dict[str, dict]:
  """Strategy name -> SamplerConfig overrides (on top of the run's config.sample)."""
  return {
      "confidence": {},
      "margin": {"confidence": "margin"},  # the rankings of Kim et al. (ICML 2025): top-2 margin, lowest entropy
      "entropy": {"confidence": "entropy"},
      "calibrated": {"confidence": "calibrated"},  # a run with model.calibration_head: the head's forecast
      "ancestral": {"method": "ancestral"},
      "ancestral_cache": {"method": "ancestral", "cache": "unchanged"},
      "blocks": {"block_length": block_length},
      "blocks_dual_cache": {"block_length": block_length, "cache": "dual"},
      "blocks_prefix_cache": {"block_length": block_length, "cache": "prefix"},
      "threshold": {"threshold": threshold},
      "threshold_blocks_dual_cache": {"threshold": threshold, "block_length": block_length, "cache": "dual"},
      "confidence_stop": {},  # expanded over the confidence_stop values
      "token_stop": {},  # expanded over the same values
      "low_confidence_remasking": {"remasking": "low_confidence", "remask_eta": remask_eta},
      "remdm_cap": {"method": "ancestral", "remasking": "remdm_cap", "remask_eta": remask_eta},
      "remdm_loop": {"method": "ancestral", "remasking": "remdm_loop", "remask_eta": remask_eta},
      "guidance": {"guidance_scale": guidance_scale},
  }


def check_names(names):
  """Raises ValueError naming the strategies that `strategies` does not define (nor "verifier")."""
  known = sorted(strategies(1, 0.5, 0.0)) + ["verifier"]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"Unknown strategies {unknown}; choose from {known}.")


def distinct_n(tokens_BxL: np.ndarray, scored_BxL: np.ndarray, n: int) -> float:
  """Mean over samples of |distinct n-grams| / |n-grams| of each sample's scored tokens (in order); samples with no
  n-gram are left out."""
  ratios = []
  for row, keep in zip(np.asarray(tokens_BxL), np.asarray(scored_BxL, bool)):
    seq = row[keep]
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    if grams:
      ratios.append(len(set(grams)) / len(grams))
  return float(np.mean(ratios)) if ratios else float("nan")


def score(tokens_BxL, generated_BxL, tokenizer, judge_nll, prompt_len: int) -> dict:
  """generation.quality plus distinct-2/3, over the generated positions that hold a token (not PAD after an EOS)."""
  tokens_BxL = np.asarray(tokens_BxL)
  scored = np.asarray(generated_BxL, bool) & ~np.isin(tokens_BxL, [tokenizer.special.mask, tokenizer.special.pad])
  report = generation.quality(tokens_BxL, generated_BxL, tokenizer, judge_nll, prompt_len)
  report.update(distinct_2=distinct_n(tokens_BxL, scored, 2), distinct_3=distinct_n(tokens_BxL, scored, 3))
  return report


def _timed(fn, *args):
  """(output, seconds) of fn(*args) after one untimed call (compilation)."""
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def run_suite(run, judge, windows_WxL: np.ndarray, prompt_len: int, names, steps_list, *, block_length: int = 32,
              threshold: float = 0.9, confidence_stops=(0.95, 0.98, 0.99), remask_eta: float = 0.02,
              guidance_scale: float = 1.0, verifier_rounds: int = 0, seed: int = 0, on_row=None,
              draw_precision: str = "float64") -> list[dict]:
  """One row per (strategy, steps[, confidence_stop]) after the real-text row (module docstring); every strategy draws
  with `draw_precision` noise (float64-exact by default, as generation.compare). With
  `verifier_rounds` > 0 a "verifier" strategy (confidence decoding + the judge as AR verifier) is added per step
  count; its judge NLL is then scored by the model that repaired the draft, so it is not an independent figure.
  `on_row(row)` is called with each row as soon as it is scored (a caller that may be cut short keeps them)."""
  tokens, fixed = generation.prompts_from_windows(windows_WxL, prompt_len, run.tokenizer.special.mask)
  generated = ~fixed
  tokens_j, fixed_j = jnp.asarray(tokens), jnp.asarray(fixed)
  judge_nll = generation.judge_for(run, judge)
  if "verifier" in names and tokenizers.fingerprint(judge.tokenizer) != tokenizers.fingerprint(run.tokenizer):
    raise ValueError("The 'verifier' strategy redraws with the judge as AR verifier, which needs the run's tokenizer; "
                     "this judge has its own (a Hugging Face judge scores retokenized text only).")
  presets = strategies(block_length, threshold, remask_eta, guidance_scale)
  check_names(names)
  rows = []

  def add(row):
    rows.append(row)
    if on_row is not None:
      on_row(row)

  add(dict(strategy="real text", steps="n/a", settings="", **score(windows_WxL, generated, run.tokenizer, judge_nll,
                                                                   prompt_len)))
  new_tokens = int(generated.sum())
  for name in names:
    for steps in steps_list:
      variants = ([{name: c} for c in confidence_stops] if name in ("confidence_stop", "token_stop")
                  else [presets.get(name, {})])
      for overrides in variants:
        cfg = run.sampler_config(steps=int(steps), draw_precision=draw_precision, **overrides)
        if name == "verifier":
          vcfg = hybrid.VerifierConfig(rounds=verifier_rounds, steps=max(int(steps) // 4, 1))
          fn = hybrid.make_verified_sampler(run.graphdef, run.other, judge.graphdef, judge.other, cfg, vcfg)
          out, seconds = _timed(fn, run.params, judge.params, jax.random.key(seed), tokens_j, fixed_j)
          steps_mean = steps_per_token = float("nan")
        else:
          fn = make_sampler(run.graphdef, run.other, cfg)
          out, seconds = _timed(fn, run.params, jax.random.key(seed), tokens_j, fixed_j)
          steps_mean = float(np.mean(np.asarray(out.steps_B)))
          steps_per_token = float(np.mean(np.asarray(out.reveal_step_BxL)[generated] + 1))
        agreement = None
        if overrides.get("cache", "none") != "none":
          greedy = lambda cache: np.asarray(make_sampler(run.graphdef, run.other, run.sampler_config(
              steps=int(steps), **{**overrides, "cache": cache, "greedy": True}))(
                  run.params, jax.random.key(seed), tokens_j, fixed_j).tokens_BxL)
          agreement = float(np.mean((greedy(overrides["cache"]) == greedy("none"))[generated]))
        settings = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
        if name == "verifier":
          settings = f"rounds={verifier_rounds}, redraw steps={vcfg.steps}"
        add(dict(strategy=name, steps=int(steps), settings=settings, tokens_per_s=new_tokens / seconds,
                 batch_s=seconds, network_calls=int(out.network_calls), steps_mean=steps_mean,
                 steps_per_token=steps_per_token,
                 cache_agreement=agreement,
                 **score(np.asarray(out.tokens_BxL), generated, run.tokenizer, judge_nll, prompt_len)))
  return rows


HEADER = ("| strategy | settings | steps | steps used (mean) | steps per token | network calls | judge NLL | entropy | "
          "distinct-2 | distinct-3 | script errors | tokens/s | batch s | greedy agreement with no cache |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def markdown_rows(rows) -> str:
  fmt = lambda value, spec: "n/a" if value is None or value != value else format(value, spec)
  return "".join(
      f"| {r['strategy']} | {r['settings']} | {r['steps']} | {fmt(r.get('steps_mean'), '.1f')} | "
      f"{fmt(r.get('steps_per_token'), '.1f')} | "
      f"{r.get('network_calls', 'n/a')} | {r['judge_nll']:.3f} | {r['entropy']:.3f} | {fmt(r['distinct_2'], '.3f')} | "
      f"{fmt(r['distinct_3'], '.3f')} | {r['script_error_rate']:.2%} | {fmt(r.get('tokens_per_s'), ',.0f')} | "
      f"{fmt(r.get('batch_s'), '.3f')} | {fmt(r.get('cache_agreement'), '.1%')} |\n" for r in rows)
