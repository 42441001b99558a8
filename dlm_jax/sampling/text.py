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


def prompt_batch(tokenizer, num_samples: int, max_len: int, length: int | None = None, prompt: str = "",
                 suffix: str = "", autoregressive: bool = False, prompt_ids=None):
  """(tokens_BxL, fixed_BxL) for `num_samples` rows of: the prompt's tokens (`prompt_ids` when given: e.g. a chat
  prompt as data/chat.py frames it), `length` new positions (default: fill the context of `max_len` tokens), the
  suffix's tokens (infilling). Raises ValueError naming the flag at fault."""
  if prompt_ids is not None:
    prompt_ids = np.asarray(prompt_ids, np.int32)
  else:
    prompt_ids = tokenizer.encode(prompt, source="--prompt") if prompt else np.zeros((0,), np.int32)
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
                     f"(data.seq_len of the run) and --prompt and --suffix take {fixed_len}.")
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
    if getattr(out, "rejected_RxB", None) is not None:
      parts.append(f"verifier rejected per round {[int(r.sum()) for r in np.asarray(out.rejected_RxB)]}")
    if self.cfg.eos_stop:
      tokens_BxL = np.asarray(out.tokens_BxL)
      kept_BxL = ~self.fixed_BxL & ~np.isin(tokens_BxL, [self.cfg.special.pad, self.cfg.special.eos])
      parts.append(f"lengths {kept_BxL.sum(-1).tolist()}")
    return "; ".join(parts)


def generate(run, *, num_samples: int, prompt: str = "", suffix: str = "", length: int | None = None, seed: int = 0,
             overrides: dict | None = None, record_trajectory: bool = False, mesh=None, verifier=None,
             verifier_config: hybrid.VerifierConfig | None = None, prompt_ids=None) -> Generation:
  """`num_samples` generations of a trained `run` (a training.checkpoint.LoadedRun): `prompt` fixed at the start,
  `suffix` at the end, `length` new tokens between them (default: fill one generation's context), with the run's
  config.sample settings and `overrides` (SamplerConfig fields). With `mesh` (training/sharding.MeshContext) the rows
  are laid over its devices; with `verifier` (a causal LoadedRun) the draft is checked and repaired by the hybrid
  AR-verifier decoder (hybrid.py). Raises ValueError (ConfigError) naming the flag or field at fault."""
  objective = run.objective
  autoregressive = objective.is_autoregressive
  tokens, fixed = prompt_batch(run.tokenizer, num_samples, objective.sample_length(int(run.config.data.seq_len)),
                               length, prompt, suffix, autoregressive, prompt_ids)
  cfg = run.sampler_config(**(overrides or {}), record_trajectory=record_trajectory)
  family = sampler_lib.family_of(cfg, objective)
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
