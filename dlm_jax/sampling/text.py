"""From a trained run to text: the batch of prompts a user asks for, and one sampler for diffusion and AR runs alike."""
from __future__ import annotations

import dataclasses

import numpy as np
from jax.experimental import multihost_utils

from dlm_jax import special_tokens
from dlm_jax.sampling import sampler as sampler_lib


@dataclasses.dataclass
class TextSamples:
  texts: list  # one decoded string per row
  output: sampler_lib.SampleOutput


def prompt_batch(tokenizer, num_samples: int, max_len: int, length: int | None = None, prompt: str = "",
                 suffix: str = "", autoregressive: bool = False):
  """(tokens_BxL, fixed_BxL) for `num_samples` rows of: the prompt's tokens, `length` new positions (default: fill the
  context of `max_len` tokens), the suffix's tokens (infilling). Raises ValueError naming the flag at fault."""
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
  row = np.concatenate([prompt_ids, np.full((length,), special_tokens.MASK, np.int32), suffix_ids])
  fixed_row = np.concatenate([np.ones(len(prompt_ids), bool), np.zeros(length, bool), np.ones(len(suffix_ids), bool)])
  return np.tile(row, (num_samples, 1)).astype(np.int32), np.tile(fixed_row, (num_samples, 1))


def make_text_sampler(graphdef, other, tokenizer, cfg: sampler_lib.SamplerConfig, autoregressive: bool):
  """`sample_texts(params, rng, tokens_BxL, fixed_BxL) -> TextSamples`, compiled once.

  A diffusion run samples with its family's jitted reverse process (`sampler.make_sampler`); the causal control arm
  decodes left to right (`sampler.SAMPLERS["autoregressive"]`), after an EOS ("a document starts here") at position 0
  when nothing is fixed there. `fixed_BxL` marks the prompt (and, for diffusion, any infilling context)."""
  run = sampler_lib.make_sampler(graphdef, other, cfg, family="autoregressive" if autoregressive else None)

  def sample_texts(params, rng, tokens_BxL, fixed_BxL) -> TextSamples:
    output = run(params, rng, tokens_BxL, fixed_BxL)
    tokens = output.tokens_BxL
    if not tokens.is_fully_addressable:  # rows split over several processes' devices: every process gets them all
      tokens = multihost_utils.process_allgather(tokens, tiled=True)
    return TextSamples([tokenizer.decode(row) for row in np.asarray(tokens)], output)

  return sample_texts
