"""How a tokenizer cuts each script: fertility and characters per token, against a byte-level baseline.

For every word of a text (a maximal run of non-whitespace, NFC, grouped by its script as evaluation/script.py
classifies it: "deva", "latn", "other", or "mixed" for a word whose letters come from several scripts, "none" for a
word without letters) the report counts characters, the tokenizer's tokens for the word alone (SentencePiece encodes it
with its word-initial U+2581, as inside a sentence) and its UTF-8 bytes (the byte-level baseline: one token per byte,
as ByT5 or a byte-fallback-only model). Per script:

    fertility = tokens / words,     characters per token = characters / tokens,

for the tokenizer and for bytes. Over the whole text, tokenized at once: the byte-fallback rate (SentencePiece pieces
<0xNN> / tokens) and the unknown rate (<unk> / tokens; a character tokenizer maps out-of-alphabet characters to <unk>
here, as `launch.evaluate --oov=unk` does). A SentencePiece model trained line by line (launch.tokenizer) has no piece
for the newline, so every line break is a byte piece <0x0A>; those are counted apart (`newline_byte_rate`), and the
byte-fallback rate is that of the characters the vocabulary lacks.
"""
from __future__ import annotations

import collections
import unicodedata

import numpy as np

from dlm_jax.evaluation import script

WORD_GROUPS = ("deva", "latn", "other", "mixed", "none")


def word_group(word: str) -> str:
  scripts = script.word_scripts(word)
  if not scripts:
    return "none"
  (found,) = scripts
  return next(iter(found)) if len(found) == 1 else "mixed"


def _encode(tokenizer, text: str) -> np.ndarray:
  if tokenizer.kind == "char":
    return tokenizer.encode(text, oov="unk")
  return tokenizer.encode(text)


def byte_fallback_count(tokenizer, ids, newline: bool = False) -> int:
  """How many of `ids` are SentencePiece byte pieces: those of characters the vocabulary lacks, or (`newline`) the
  newline's <0x0A>."""
  if tokenizer.kind != "sentencepiece":
    return 0
  processor = tokenizer.processor
  return sum(processor.is_byte(i) and (processor.id_to_piece(i) == "<0x0A>") == newline
             for i in np.asarray(ids).tolist())


def report(tokenizer, text: str) -> dict:
  """{"scripts": {group: {words, chars, tokens, bytes, fertility, bytes_fertility, chars_per_token,
  chars_per_byte_token}}, "tokens", "byte_fallback_rate", "newline_byte_rate", "unk_rate"} of `text` (module
  docstring)."""
  counts = collections.defaultdict(collections.Counter)
  for word in unicodedata.normalize("NFC", text).split():
    group = counts[word_group(word)]
    group["words"] += 1
    group["chars"] += len(word)
    group["tokens"] += len(_encode(tokenizer, word))
    group["bytes"] += len(word.encode("utf-8"))
  scripts = {}
  for name in WORD_GROUPS:
    c = counts.get(name)
    if not c:
      continue
    scripts[name] = {**c, "fertility": c["tokens"] / c["words"], "bytes_fertility": c["bytes"] / c["words"],
                     "chars_per_token": c["chars"] / c["tokens"], "chars_per_byte_token": c["chars"] / c["bytes"]}
  ids = _encode(tokenizer, text)
  total = max(len(ids), 1)
  return {"scripts": scripts, "tokens": int(len(ids)),
          "byte_fallback_rate": byte_fallback_count(tokenizer, ids) / total,
          "newline_byte_rate": byte_fallback_count(tokenizer, ids, newline=True) / total,
          "unk_rate": int(np.sum(ids == tokenizer.special.unk)) / total}


def markdown(reports: dict) -> str:
  """One table of `{file label: report}`."""
  lines = ["| text | script | words | tokens/word | bytes/word | chars/token | chars/byte | byte fallback "
           "(+ newlines) | unk |", "|---|---|---|---|---|---|---|---|---|"]
  for label, rep in reports.items():
    for i, (name, s) in enumerate(rep["scripts"].items()):
      rates = (f"{rep['byte_fallback_rate']:.2%} (+ {rep['newline_byte_rate']:.2%}) | {rep['unk_rate']:.2%}"
               if i == 0 else " | ")
      lines.append(f"| {label if i == 0 else ''} | {name} | {s['words']:,} | {s['fertility']:.2f} | "
                   f"{s['bytes_fertility']:.2f} | {s['chars_per_token']:.2f} | {s['chars_per_byte_token']:.2f} | "
                   f"{rates} |")
  return "\n".join(lines)
