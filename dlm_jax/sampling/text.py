"""From a trained run to text: the batch of prompts a user asks for, one sampler for diffusion and AR runs alike, and
`generate`, what `python -m launch.sample` does between its flags and its printout."""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from dlm_jax.errors import ConfigError
from dlm_jax.sampling import hybrid
from dlm_jax.sampling import sampler as sampler_lib


@dataclasses.dataclass
class TextSamples:
  texts: list  # one decoded string per row
  output: sampler_lib.SampleOutput


def encode_prompt(tokenizer, prompt: str = "", prompt_ids=None) -> np.ndarray:
  """The prompt's token ids: `prompt_ids` when given (e.g. a chat prompt as data/chat.py frames it), else `prompt`
  encoded (empty: no tokens)."""
  if prompt_ids is not None:
    return np.asarray(prompt_ids, np.int32)
  return tokenizer.encode(prompt, source="--prompt") if prompt else np.zeros((0,), np.int32)


def prompt_batch(tokenizer, num_samples: int, max_len: int, length: int | None = None, prompt: str = "",
                 suffix: str = "", autoregressive: bool = False, prompt_ids=None):
  """(tokens_BxL, fixed_BxL) for `num_samples` rows of: the prompt's tokens (`prompt_ids` when given: e.g. a chat
  prompt as data/chat.py frames it), `length` new positions (default: fill the context of `max_len` tokens), the
  suffix's tokens (infilling). Raises ValueError naming the flag at fault."""
  prompt_ids = encode_prompt(tokenizer, prompt, prompt_ids)
  suffix_ids = tokenizer.encode(suffix, source="--suffix") if suffix else np.zeros((0,), np.int32)
  if autoregressive and len(suffix_ids):
    raise ValueError("--suffix (infilling) needs a diffusion model; this run is the causal control arm.")
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}: ask for at least 1 sample.")
  fixed_len = len(prompt_ids) + len(suffix_ids)
  room = max_len - fixed_len
  if room < 1:
    raise ValueError(f"--prompt ({len(prompt_ids)} tokens) and --suffix ({len(suffix_ids)} tokens) take {fixed_len} of "
                     f"the model's {max_len}-token context (data.seq_len of the run), leaving no room for new tokens: "
                     f"shorten them to at most {max_len - 1} tokens together.")
  length = room if length is None else length
  if not 1 <= length <= room:
    raise ValueError(f"--length={length} must be between 1 and {room}: the model's context is {max_len} tokens "
                     f"(data.seq_len of the run) and --prompt and --suffix take {fixed_len}"
                     + ("" if len(suffix_ids) else "; or set --continue_chunk=C to go on past the context window, C "
                        "new tokens per further window") + ".")
  row = np.concatenate([prompt_ids, np.full((length,), tokenizer.special.mask, np.int32), suffix_ids])
  fixed_row = np.concatenate([np.ones(len(prompt_ids), bool), np.zeros(length, bool), np.ones(len(suffix_ids), bool)])
  return np.tile(row, (num_samples, 1)).astype(np.int32), np.tile(fixed_row, (num_samples, 1))


def make_text_sampler(graphdef, other, tokenizer, cfg: sampler_lib.SamplerConfig, objective=None):
  """`sample_texts(params, rng, tokens_BxL, fixed_BxL) -> TextSamples`, compiled once.

  The run's `objective` picks the jitted reverse process (`sampler.make_sampler`): a diffusion run's family, the causal
  control arm's left-to-right decoder (after an EOS, "a document starts here", at position 0 when nothing is fixed
  there), a wing's own. `fixed_BxL` marks the prompt (and, for diffusion, any infilling context)."""
  run = sampler_lib.make_sampler(graphdef, other, cfg, objective)

  def sample_texts(params, rng, tokens_BxL, fixed_BxL) -> TextSamples:
    output = run(params, rng, tokens_BxL, fixed_BxL)
    tokens = output.tokens_BxL
    if not tokens.is_fully_addressable:  # rows split over several processes' devices: every process gets them all
      tokens = multihost_utils.process_allgather(tokens, tiled=True)
    return TextSamples([tokenizer.decode(row) for row in np.asarray(tokens)], output)

  return sample_texts


@dataclasses.dataclass
class ContinuedOutput:
  """A generation longer than the context window (`continue_past_window`): the prompt and every new token, the
  reverse steps and network calls summed over the windows, and the window layout."""
  tokens_BxL: np.ndarray
  steps_B: np.ndarray | None
  network_calls: int | None
  windows: int
  context: int
  chunk: int


def continue_past_window(sample_window, rng, prompt_BxP, length: int, context: int, chunk: int,
                         mask_id: int) -> ContinuedOutput:
  """`length` new tokens after the prompt, more than one context window holds, by block-wise continuation:

    window 0:       the prompt (fixed) and context - P new positions;
    window w >= 1:  the last context - C tokens generated so far (fixed) and C = `chunk` new positions,

  until `length` new tokens exist (the last window's surplus is dropped). The window slides over the generated text:
  each new chunk is drawn given the context - C tokens before it, as a masked model's prompt (or a causal model's).
  `sample_window(rng, tokens_BxL, fixed_BxL) -> SampleOutput` is one jitted sampler call of shape [B, context], the
  same for every window (one compilation); window w draws with fold_in(rng, w).

  Cost: 1 + ceil((length - (context - P)) / C) windows of the sampler's S steps each, so S / C network passes over
  the context per new token: what one window costs at the same tokens per step (cache="none" passes over the whole
  window at every step, in one window as in many). What sliding adds is with cache="prefix" (Fast-dLLM's prefix cache:
  one prefill of the window per decoded block, then steps over the block alone): the kept context - C tokens are
  encoded afresh in every window, one prefill per C new tokens, because the previous window's cached keys sit at
  positions that have moved by C."""
  prompt_BxP = np.asarray(prompt_BxP, np.int32)
  batch, p = prompt_BxP.shape
  if not 1 <= chunk < context:
    raise ValueError(f"--continue_chunk={chunk} must be between 1 and {context - 1}: each further window of the "
                     f"model's {context}-token context keeps context - C tokens of what came before and draws C new "
                     "ones.")
  if p >= context:
    raise ValueError(f"--prompt takes {p} tokens, the whole {context}-token context: shorten it.")
  keep = context - chunk
  tokens_BxL = np.concatenate([prompt_BxP, np.full((batch, context - p), mask_id, np.int32)], axis=1)
  fixed_BxL = np.zeros((batch, context), bool)
  fixed_BxL[:, :p] = True
  sequence_BxT, steps_B, calls, window = prompt_BxP, None, None, 0
  while sequence_BxT.shape[1] - p < length:
    out = sample_window(jax.random.fold_in(rng, window), tokens_BxL, fixed_BxL)
    new_BxN = np.asarray(out.tokens_BxL)[:, p if window == 0 else keep:]
    sequence_BxT = np.concatenate([sequence_BxT, new_BxN], axis=1)
    if getattr(out, "steps_B", None) is not None:
      steps_B = np.asarray(out.steps_B) + (0 if steps_B is None else steps_B)
    if getattr(out, "network_calls", None) is not None:
      calls = int(out.network_calls) + (calls or 0)
    window += 1
    tokens_BxL = np.concatenate([sequence_BxT[:, -keep:], np.full((batch, chunk), mask_id, np.int32)], axis=1)
    fixed_BxL = np.zeros((batch, context), bool)
    fixed_BxL[:, :keep] = True
  return ContinuedOutput(sequence_BxT[:, :p + length], steps_B, calls, window, context, chunk)


@dataclasses.dataclass
class Generation:
  """What `generate` returns: the decoded texts, the sampler's output (a SampleOutput, or the verifier's
  VerifiedOutput), the rows' fixed positions, the settings it ran with and its seconds (compilation included)."""
  texts: list
  output: object
  fixed_BxL: np.ndarray
  cfg: sampler_lib.SamplerConfig
  seconds: float

  def summary(self) -> str:
    """One line: samples x new tokens, time, per-sample steps, network calls, verifier rejections, kept lengths."""
    out = self.output
    parts = [f"{len(self.texts)} x {int((~self.fixed_BxL[0]).sum())} new tokens in {self.seconds:.2f} s including "
             "compilation"]
    if getattr(out, "steps_B", None) is not None:
      parts.append(f"steps per sample {np.asarray(out.steps_B).tolist()}")
    if getattr(out, "network_calls", None) is not None:
      parts.append(f"network calls {int(out.network_calls)}")
    if isinstance(out, ContinuedOutput):
      parts.append(f"{out.windows} windows of {out.context} positions, {out.chunk} new per window after the first")
    if getattr(out, "rejected_RxB", None) is not None:
      parts.append(f"verifier rejected per round {[int(r.sum()) for r in np.asarray(out.rejected_RxB)]}")
    if self.cfg.eos_stop:
      tokens_BxL = np.asarray(out.tokens_BxL)
      kept_BxL = ~self.fixed_BxL & ~np.isin(tokens_BxL, [self.cfg.special.pad, self.cfg.special.eos])
      parts.append(f"lengths {kept_BxL.sum(-1).tolist()}")
    return "; ".join(parts)


def generate(run, *, num_samples: int, prompt: str = "", suffix: str = "", length: int | None = None, seed: int = 0,
             overrides: dict | None = None, record_trajectory: bool = False, mesh=None, verifier=None,
             verifier_config: hybrid.VerifierConfig | None = None, prompt_ids=None,
             continue_chunk: int = 0) -> Generation:
  """`num_samples` generations of a trained `run` (a training.checkpoint.LoadedRun): `prompt` fixed at the start,
  `suffix` at the end, `length` new tokens between them (default: fill one generation's context), with the run's
  config.sample settings and `overrides` (SamplerConfig fields). With `mesh` (training/sharding.MeshContext) the rows
  are laid over its devices; with `verifier` (a causal LoadedRun) the draft is checked and repaired by the hybrid
  AR-verifier decoder (hybrid.py). `continue_chunk` = C > 0 with a `length` longer than the context holds: block-wise
  continuation past the window, C new tokens per further window (`continue_past_window`). Raises ValueError
  (ConfigError) naming the flag or field at fault."""
  objective = run.objective
  autoregressive = objective.is_autoregressive
  context = objective.sample_length(int(run.config.data.seq_len))
  cfg = run.sampler_config(**(overrides or {}), record_trajectory=record_trajectory)
  family = sampler_lib.family_of(cfg, objective)
  prompt_ids = encode_prompt(run.tokenizer, prompt, prompt_ids)  # once, for both paths
  if continue_chunk and length is not None and len(prompt_ids) + length > context:
    return _generate_past_window(run, cfg, num_samples=num_samples, prompt=prompt, prompt_ids=prompt_ids,
                                 length=length, chunk=continue_chunk, seed=seed, context=context,
                                 incompatible={"--suffix": bool(suffix), "--stream": record_trajectory,
                                               "--mesh": mesh is not None, "--verifier": verifier is not None,
                                               "--eos_stop (a sample ends at its first EOS)": cfg.eos_stop})
  tokens, fixed = prompt_batch(run.tokenizer, num_samples, context, length, prompt, suffix, autoregressive,
                               prompt_ids)
  if mesh is not None and family not in sampler_lib.SAMPLERS.builtin():
    raise ConfigError(f"A {objective.name!r} run samples with the {family!r} sampler, on one device: drop --mesh.")
  rng = jax.random.key(seed)
  start = time.perf_counter()
  if verifier is not None:
    if family != "absorbing" or record_trajectory or mesh is not None:
      raise ConfigError("--verifier checks a masked diffusion run's draft (not a causal, uniform-state, SEDD, "
                        "embedding or wing run's), on one device, without --stream.")
    hybrid.check_causal_run(run, verifier, flag="--verifier")
    sample_fn = hybrid.make_verified_sampler(run.graphdef, run.other, verifier.graphdef, verifier.other, cfg,
                                             verifier_config or hybrid.VerifierConfig())
    output = sample_fn(run.params, verifier.params, rng, tokens, fixed)
    texts = [run.tokenizer.decode(row) for row in np.asarray(output.tokens_BxL)]
  else:
    sample_texts = make_text_sampler(run.graphdef, run.other, run.tokenizer, cfg, objective)
    if mesh is not None:
      sample_texts, tokens, fixed = mesh.bind(sample_texts), mesh.place_rows(tokens), mesh.place_rows(fixed)
    samples = sample_texts(run.params, rng, tokens, fixed)
    texts, output = samples.texts, samples.output
  return Generation(texts, output, np.asarray(fixed), cfg, time.perf_counter() - start)


def _generate_past_window(run, cfg, *, num_samples, prompt, prompt_ids, length, chunk, seed, context,
                          incompatible) -> Generation:
  """`generate` past the context window (`continue_past_window`), after refusing what cannot slide."""
  refused = [flag for flag, on in incompatible.items() if on]
  if refused:
    raise ConfigError(f"--continue_chunk continues a generation window by window; it does not combine with "
                      f"{', '.join(refused)}: drop one of them.")
  if num_samples < 1:
    raise ValueError(f"--num_samples={num_samples}: ask for at least 1 sample.")
  prompt_BxP = np.tile(encode_prompt(run.tokenizer, prompt, prompt_ids), (num_samples, 1)).astype(np.int32)
  sample_window = sampler_lib.make_sampler(run.graphdef, run.other, cfg, run.objective)
  start = time.perf_counter()
  output = continue_past_window(lambda rng, x, fixed: sample_window(run.params, rng, x, fixed), jax.random.key(seed),
                                prompt_BxP, length, context, chunk, cfg.special.mask)
  fixed_BxL = np.zeros(output.tokens_BxL.shape, bool)
  fixed_BxL[:, :prompt_BxP.shape[1]] = True
  texts = [run.tokenizer.decode(row) for row in output.tokens_BxL]
  return Generation(texts, output, fixed_BxL, cfg, time.perf_counter() - start)
