"""Controllable generation, measured: the properties a classifier learns and a steered sampler aims at, and the table
of property success against judged quality (sampling/control.py steers; `python -m launch.control` prints the table).

A property labels a text with one of its classes, or with none (-1: the text says nothing about it), by an exact
rule, so that the classifier's training labels and the success of a steered sample are the same measurement:

* "script": the majority script of the text's single-script words (evaluation/script.majority_script), "deva"
  (Devanagari: Hindi) or "latn" (Roman letters: English, Hinglish); no label without letters or in another script.

Success of a steered batch = the fraction of its samples whose label is the target class (a sample without a label
fails). Its quality is what launch.gen_eval reports (generation.quality): the judge NLL of the generated tokens under
the run's causal arm, and the unigram entropy that exposes repetitive text. Every table starts with the real
validation windows (success = the target's share of real text, with its judge NLL) and the unguided sampler (scale
0), so that a steered row's gains and costs read against both.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax.evaluation import generation, script
from dlm_jax.registry import Registry
from dlm_jax.sampling import control


@dataclasses.dataclass(frozen=True)
class Property:
  """`label(text) -> class index, or -1` over `classes` (module docstring)."""
  name: str
  classes: tuple[str, ...]
  label: Callable[[str], int]

  def index(self, name: str, flag: str = "--target") -> int:
    """The index of class `name`; ValueError naming `flag` when there is no such class."""
    if name not in self.classes:
      raise ValueError(f"{flag}={name!r} is not a class of property {self.name!r}; choose one of {self.classes}.")
    return self.classes.index(name)

  def labels(self, texts) -> np.ndarray:
    return np.asarray([self.label(text) for text in texts], np.int32)


def _script_label(text: str) -> int:
  found = script.majority_script(text)
  return SCRIPT_CLASSES.index(found) if found in SCRIPT_CLASSES else -1


SCRIPT_CLASSES = (script.DEVANAGARI, script.LATIN)
PROPERTIES = Registry("property", field="--property", entries={
    "script": Property("script", SCRIPT_CLASSES, _script_label),
})


def success_rate(prop: Property, texts, target: int) -> float:
  """The fraction of `texts` labelled `target` (an unlabelled text fails)."""
  labels = prop.labels(texts)
  return float(np.mean(labels == target)) if len(labels) else 0.0


def steering_rows(run, judge, classifier_graphdef, classifier_params, prop: Property, target: int, scales,
                  windows_WxL: np.ndarray, seed: int = 0, steps: int | None = None,
                  draw_precision: str = "float64") -> list[dict]:
  """Property success and judged quality of unprompted samples of `run`, one batch of len(windows_WxL) samples per
  guidance scale in `scales` (sampling/control.make_controlled_sampler; the same noise for every scale), after the
  row of the real windows `windows_WxL` (scale "real") and that of those among them labelled `target` (scale
  "real target": what on-target text scores, since the judge finds some classes easier than others; absent when none
  is). Each row: scale, success, judge_nll, entropy, sample_s (the seconds one batch took after compilation) and texts
  (the decoded samples)."""
  tokenizer = run.tokenizer
  windows_WxL = np.asarray(windows_WxL, np.int32)
  generated = np.ones(windows_WxL.shape, bool)
  judge_nll = generation.judge_for(run, judge)

  def row(scale, tokens_WxL, seconds):
    quality = generation.quality(tokens_WxL, generated[:len(tokens_WxL)], tokenizer, judge_nll, 0)
    texts = [tokenizer.decode(tokens) for tokens in tokens_WxL]
    return dict(scale=scale, success=success_rate(prop, texts, target), judge_nll=quality["judge_nll"],
                entropy=quality["entropy"], sample_s=seconds, texts=texts)

  rows = [row("real", windows_WxL, None)]
  on_target = prop.labels(rows[0]["texts"]) == target
  if on_target.any():
    rows.append(row("real target", windows_WxL[on_target], None))
  overrides = dict(draw_precision=draw_precision, **({"steps": int(steps)} if steps else {}))
  cfg = run.sampler_config(**overrides)
  tokens = jnp.full(windows_WxL.shape, tokenizer.special.mask, jnp.int32)
  fixed = jnp.zeros(windows_WxL.shape, bool)
  rng = jax.random.key(seed)
  sampler = control.make_controlled_sampler(run.graphdef, run.other, cfg, run.objective, classifier_graphdef, target)
  for scale in scales:
    sample = lambda: sampler(run.params, classifier_params, rng, tokens, fixed, jnp.float32(scale))
    jax.block_until_ready(sample())  # compiles once, for the first scale
    start = time.perf_counter()
    out = jax.block_until_ready(sample().tokens_BxL)
    rows.append(row(float(scale), np.asarray(out), time.perf_counter() - start))
  return rows
