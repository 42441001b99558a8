"""Generation quality of a diffusion run: judge NLL, sample entropy and script consistency of its samples.

The standard measures of MDLM (Sahoo et al. 2024, §4) and Duo (Sahoo et al. 2025), at the scale of this codebase:

* **judge NLL** ("generative perplexity"): an autoregressive model p_AR trained on the same data scores the generated
  tokens, NLL = -(1/|G|) sum_{i in G} log p_AR(x_i | x_<i), with G the generated positions (for an unprompted sample,
  positions 1..L-1: position 0 has no context to be scored in). exp(NLL) is the generative perplexity. The judge is
  the causal control arm of the same config (`:ar`), trained on the same corpus with the same tokenizer, or, as in
  MDLM/Duo/ReMDM, GPT-2 (Large, in the papers) loaded from a Hugging Face folder (`--judge=hf:PATH`) and run in JAX:
  then each sample is decoded to text and retokenized with the judge's tokenizer (`retokenizing_judge`; MDLM's
  `eval_retokenize`), the judge scores the tokens past the retokenized prompt (truncated at the judge's context).
  Low judge NLL alone is gamed by repetitive text, hence
* **unigram entropy**: H = -sum_v p_v log p_v of each sample's own token histogram over its generated positions, in
  nats, averaged over samples (MDLM/Duo report it to expose low-entropy, repetitive samples);
* **script error rate** (`dlm_jax.evaluation.script`): words spelled in two scripts or in a script other than the
  prompt's.

Every figure is reported next to the same figure for the real continuation of the same prompts, so "what does real
text score" is always on the table (`compare`, behind `python -m launch.gen_eval`; `continuation` for generation past
the context window).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import models
from dlm_jax.data import pipeline, tokenizers
from dlm_jax.diffusion import losses
from dlm_jax.evaluation import script
from dlm_jax.sampling import continue_past_window, make_sampler


def judge_nll_fn(judge_forward, excluded_ids=()):
  """Jitted `(tokens_BxL, scored_BxL) -> (nll_sum_B, count_B)` for a causal `judge_forward(tokens_BxL, t_B) -> logits`:
  the next-token NLL of every position i >= 1 with scored[:, i] True, under the judge's SUBS-free logits (the mask id
  is never a target of a finished sample). `excluded_ids` leave the judge's softmax: the pad/mask ids our tokenizer
  added past an imported checkpoint's vocabulary, which are not part of the distribution it was trained as (with
  them, the tiny GPT-2's NLL of tests/fixtures is 5.740, not transformers' 5.734)."""

  @jax.jit
  def run(tokens_BxL, scored_BxL):
    logits_BxLxV = judge_forward(tokens_BxL, jnp.zeros((tokens_BxL.shape[0],), jnp.float32))
    if excluded_ids:
      logits_BxLxV = logits_BxLxV.at[..., jnp.asarray(excluded_ids)].set(losses.NEG_INF)
    nll_BxLm1 = losses.next_token_nll(logits_BxLxV.astype(jnp.float32), tokens_BxL)
    scored_BxLm1 = scored_BxL[:, 1:]
    return jnp.sum(jnp.where(scored_BxLm1, nll_BxLm1, 0.0), axis=-1), jnp.sum(scored_BxLm1, axis=-1)

  return run


def retokenizing_judge(judge_nll, run_tokenizer, judge_tokenizer, context: int, pad_to: int = 64):
  """`judge_nll` (judge_nll_fn of a judge with its own tokenizer) as a function of the run's tokens: `(tokens_BxL,
  scored_BxL) -> (nll_sum_B, count_B)`. Each row's prompt (the tokens before its first scored position) and its whole
  text (prompt + scored tokens) are decoded with `run_tokenizer` and encoded with `judge_tokenizer`; the judge scores
  the positions past the prompt's tokens (and past position 0), truncated at `context` tokens. Rows are padded to a
  multiple of `pad_to` (fewer compilations) with the judge's pad id, which a causal judge never reads before the
  scored positions."""

  def score(tokens_BxL, scored_BxL):
    rows, prompt_lengths = [], []
    for row, keep in zip(np.asarray(tokens_BxL), np.asarray(scored_BxL, bool)):
      positions = np.flatnonzero(keep)
      first = int(positions[0]) if len(positions) else len(row)
      text = run_tokenizer.decode(np.concatenate([row[:first], row[positions]]))
      rows.append(np.asarray(judge_tokenizer.encode(text, oov="unk"), np.int32)[:context])
      prompt_lengths.append(len(judge_tokenizer.encode(run_tokenizer.decode(row[:first]), oov="unk")) if first else 0)
    width = min(context, max(pad_to, -(-max(len(r) for r in rows) // pad_to) * pad_to))
    ids_BxJ = np.full((len(rows), width), judge_tokenizer.special.pad, np.int32)
    scored_BxJ = np.zeros((len(rows), width), bool)
    for b, (ids, start) in enumerate(zip(rows, prompt_lengths)):
      ids_BxJ[b, :len(ids)] = ids
      scored_BxJ[b, max(start, 1):len(ids)] = True
    return judge_nll(jnp.asarray(ids_BxJ), jnp.asarray(scored_BxJ))

  return score


def judge_for(run, judge):
  """The `(tokens_BxL, scored_BxL) -> (nll_sum_B, count_B)` judge of `run`'s samples: `judge`'s next-token NLL on the
  run's tokens when both share a tokenizer, on the retokenized text otherwise (`retokenizing_judge`)."""
  judge_nll = judge_nll_fn(lambda x, t: models.denoise_fn(judge.graphdef, judge.params, judge.other)(x, t).logits_BxLxV,
                           tuple(sorted(getattr(judge.tokenizer, "added", {}).values())))
  if tokenizers.fingerprint(judge.tokenizer) == tokenizers.fingerprint(run.tokenizer):
    return judge_nll
  return retokenizing_judge(judge_nll, run.tokenizer, judge.tokenizer, int(judge.config.data.seq_len))


def unigram_entropy(tokens_BxL: np.ndarray, scored_BxL: np.ndarray) -> np.ndarray:
  """Per-sample entropy (nats) of the histogram of its scored tokens, [B]."""
  out = np.zeros(len(tokens_BxL))
  for b, (row, keep) in enumerate(zip(np.asarray(tokens_BxL), np.asarray(scored_BxL))):
    _, counts = np.unique(row[keep], return_counts=True)
    p = counts / max(counts.sum(), 1)
    out[b] = float(-(p * np.log(p)).sum())
  return out


PROMPT_SCRIPTS = ("any", "deva", "latn", "mixed")


def prompt_scripts(text: str) -> str:
  """'deva' or 'latn' when every word of `text` with letters is in that one script, 'mixed' when its words use both
  (within a word or across words), 'none' otherwise (no letters, or another script)."""
  used = frozenset().union(*script.word_scripts(text))
  if used == {script.DEVANAGARI, script.LATIN}:
    return "mixed"
  return next(iter(used)) if len(used) == 1 and next(iter(used)) != script.OTHER else "none"


def select_windows(tokens: np.ndarray, seq_len: int, num: int, prompt_len: int, tokenizer, scripts: str = "any"):
  """`num` windows spread over the stream whose first `prompt_len` tokens are in `scripts` (PROMPT_SCRIPTS: a
  script-aware evaluation prompts Hindi in its native script, Hinglish in Roman letters, and both mixed). Candidates
  start every seq_len // 4 tokens; the matching ones are thinned evenly to `num`. Raises ValueError when fewer than
  `num` match."""
  if scripts == "any":
    return pipeline.eval_windows(tokens, seq_len, num, placement="spread")
  if scripts not in PROMPT_SCRIPTS:
    raise ValueError(f"Prompt scripts must be one of {PROMPT_SCRIPTS}, got {scripts!r}.")
  starts = range(0, len(tokens) - seq_len + 1, max(seq_len // 4, 1))
  matching = [o for o in starts if prompt_scripts(tokenizer.decode(np.asarray(tokens[o:o + prompt_len]))) == scripts]
  if len(matching) < num:
    raise ValueError(f"Only {len(matching)} windows of this text have a {scripts!r} prompt of {prompt_len} tokens; "
                     f"{num} were asked for. Ask for fewer samples, or use text with more such passages.")
  chosen = [matching[i] for i in np.linspace(0, len(matching) - 1, num).astype(np.int64)]
  return np.stack([np.asarray(tokens[o:o + seq_len], np.int32) for o in chosen])


def prompts_from_windows(windows_WxL: np.ndarray, prompt_len: int, mask_id: int):
  """Tokens with the first `prompt_len` positions of each window kept and the rest `mask_id`, and the fixed mask."""
  tokens = np.array(windows_WxL, np.int32)
  tokens[:, prompt_len:] = mask_id
  fixed = np.zeros(tokens.shape, bool)
  fixed[:, :prompt_len] = True
  return tokens, fixed


def quality(tokens_BxL: np.ndarray, generated_BxL: np.ndarray, tokenizer, judge_nll, prompt_len: int) -> dict:
  """judge NLL (nats/token), mean unigram entropy and script rates of the generated part of finished sequences.

  The expected script of each row is the majority script of its prompt (None, i.e. the row's own majority, when there
  is no prompt or the prompt has no letters)."""
  tokens_BxL = np.asarray(tokens_BxL)
  # PAD is what a sampler with eos_stop leaves after the EOS: not a generated token.
  scored = np.asarray(generated_BxL, bool) & ~np.isin(tokens_BxL, [tokenizer.special.mask, tokenizer.special.pad])
  nll_sum, count = judge_nll(jnp.asarray(tokens_BxL), jnp.asarray(scored))
  texts = [tokenizer.decode(row[keep]) for row, keep in zip(tokens_BxL, np.asarray(generated_BxL, bool))]
  expected = [script.majority_script(tokenizer.decode(row[:prompt_len])) if prompt_len else None
              for row in tokens_BxL]
  report = {"judge_nll": float(np.sum(nll_sum) / max(float(np.sum(count)), 1.0)),
            "entropy": float(np.mean(unigram_entropy(tokens_BxL, scored)))}
  report.update(script.script_report(texts, expected))
  return report


def compare(run, judge, windows_WxL: np.ndarray, prompt_len: int, steps_list, seed: int = 0,
            temperature: float | None = None, method: str | None = None,
            draw_precision: str | None = "float64") -> list[dict]:
  """Generation quality of `run` prompted with the first `prompt_len` tokens of each window, one row per reverse-step
  count in `steps_list` (each with `sample_s`, the seconds one batch took after compilation), after the row of the real
  continuations (`steps` "n/a"). `temperature`, `method` and `draw_precision` override the run's sampler config; the
  draws' noise is float64-exact by default (primitives.categorical: float32 noise cuts the tails and flatters the
  judge NLL and the entropy)."""
  tokens, fixed = prompts_from_windows(windows_WxL, prompt_len, run.tokenizer.special.mask)
  generated = ~fixed
  judge_nll = judge_for(run, judge)
  rows = [dict(steps="n/a", sample_s=None, **quality(windows_WxL, generated, run.tokenizer, judge_nll, prompt_len))]
  for steps in steps_list:
    overrides = {"steps": int(steps), "temperature": temperature, "method": method, "draw_precision": draw_precision}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    sample = make_sampler(run.graphdef, run.other, run.sampler_config(**overrides),
                          run.objective)
    rng = jax.random.key(seed)
    jax.block_until_ready(sample(run.params, rng, jnp.asarray(tokens), jnp.asarray(fixed)))  # compile
    start = time.perf_counter()
    out = np.asarray(jax.block_until_ready(sample(run.params, rng, jnp.asarray(tokens), jnp.asarray(fixed)).tokens_BxL))
    seconds = time.perf_counter() - start
    rows.append(dict(steps=int(steps), sample_s=seconds,
                     **quality(out, generated, run.tokenizer, judge_nll, prompt_len)))
  return rows


def continuation(run, judge, windows_WxT: np.ndarray, chunk: int, steps: int, seed: int = 0,
                 draw_precision: str | None = "float64") -> tuple[list[dict], dict]:
  """Does generation hold up past the context window? Each row of `windows_WxT` is real text of context - C + K C
  tokens (C = `chunk`): its first context - C tokens prompt a continuation of K C tokens drawn window by window
  (`sampling.continue_past_window`, `steps` reverse steps per window), so every window, the first included, draws C
  tokens given the context - C before it -- real text in window 0, more and more of the model's own after it.

  Returns (rows, cost): one row per window w with the judge NLL (nats/token) of the C tokens it drew and of the real
  C tokens at the same place, each judged in the context-length window that ends with them (the context the model drew
  them in), and the drawn chunk's unigram entropy; cost = the seconds of the whole continuation after compilation,
  its network calls and windows."""
  context = run.objective.sample_length(int(run.config.data.seq_len))
  keep = context - chunk
  windows_WxT = np.asarray(windows_WxT, np.int32)
  num_windows = (windows_WxT.shape[1] - keep) // chunk
  if num_windows < 1 or not 1 <= chunk < context:
    raise ValueError(f"--continue_chunk={chunk} must be in [1, {context}) with text of at least context - C + C "
                     f"tokens per row; got rows of {windows_WxT.shape[1]} tokens.")
  overrides = {"steps": int(steps), "draw_precision": draw_precision}
  sample = make_sampler(run.graphdef, run.other, run.sampler_config(**{k: v for k, v in overrides.items() if v}),
                        run.objective)
  window_fn = lambda rng, x, fixed: jax.block_until_ready(sample(run.params, rng, jnp.asarray(x), jnp.asarray(fixed)))
  mask_id, rng, prompts_WxP = run.tokenizer.special.mask, jax.random.key(seed), windows_WxT[:, :keep]
  continue_past_window(window_fn, rng, prompts_WxP, chunk, context, chunk, mask_id)  # compile
  start = time.perf_counter()
  out = continue_past_window(window_fn, rng, prompts_WxP, num_windows * chunk, context, chunk, mask_id)
  cost = {"seconds": time.perf_counter() - start, "network_calls": out.network_calls, "windows": out.windows}
  judge_nll = judge_for(run, judge)
  scored_WxC = np.zeros((len(windows_WxT), context), bool)
  scored_WxC[:, keep:] = True
  rows = []
  for w in range(num_windows):
    lo, hi = w * chunk, keep + (w + 1) * chunk
    row = {"window": w}
    for name, tokens_WxT in (("judge_nll", out.tokens_BxL), ("real_judge_nll", windows_WxT)):
      nll_sum, count = judge_nll(jnp.asarray(tokens_WxT[:, lo:hi]), jnp.asarray(scored_WxC))
      row[name] = float(np.sum(nll_sum) / max(float(np.sum(count)), 1.0))
    row["entropy"] = float(np.mean(unigram_entropy(out.tokens_BxL[:, lo:hi], scored_WxC)))
    rows.append(row)
  return rows, cost
