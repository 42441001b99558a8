"""Likelihood reports: NELBO per token -> bits per token, bits per character, perplexity.

For a character tokenizer a token is a character, so BPC = bits per token. For SentencePiece, bits per character
divides the total bits of the windows by the number of characters they decode to, and perplexity is
exp(nats per token) (an upper bound, since the NELBO bounds the NLL; for the AR arm it is exact).
"""
from __future__ import annotations

import math


def report(nats_per_token: float, num_tokens: int, num_chars: int) -> dict:
  bits_per_token = nats_per_token / math.log(2.0)
  return {
      "nats_per_token": nats_per_token,
      "bits_per_token": bits_per_token,
      "bits_per_char": bits_per_token * num_tokens / max(num_chars, 1),
      "perplexity": math.exp(nats_per_token),
  }
