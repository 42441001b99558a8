"""Script consistency of generated Hindi / Hinglish text: the script-consistency error rate.

Hindi is written in Devanagari, Hinglish in Roman (Latin) letters; a model trained on both must keep to the script it
is prompted in and must never spell one word in two scripts. This module measures exactly that, on words:

* a *word* is a maximal run of non-whitespace characters of the NFC-normalized text; its *letters* are the characters
  of Unicode category L* or M* (so Devanagari vowel signs and virama count), classified by code point into "deva"
  (U+0900-097F, U+A8E0-A8FF, U+1CD0-1CFF), "latn" (ASCII letters, the Latin ordinals ª º, U+00C0-024F, the Latin
  modifier letters U+02B0-02B8, U+1E00-1EFF) or "other". Combining marks of Unicode's Inherited script (U+0300-036F,
  U+1AB0-1AFF, U+1DC0-1DFF, U+20D0-20FF, U+FE20-FE2F) take the script of the letter they follow, so an NFD-decomposed
  Latin word ("cafe" + U+0301) stays Latin. Digits, punctuation, the danda, zero-width joiners and letters of the Common
  script (the modifier apostrophe U+02BC and the other modifier letters U+02B9-02FF, the micro sign µ) carry no
  script. A word without letters is not counted.
* a word is *mixed* when its letters come from more than one script, and *off-script* when it is in a single script
  other than the expected one.
* script error rate = (mixed words + off-script words) / words with letters.

The expected script of a text is given (the prompt's script for a prompted sample) or, when None, the text's own
majority script, so an unprompted sample is only charged for mixing within words and for minority-script words. Real
text is not free of errors by this measure (Hindi news cites English names in Latin letters), so every report of a
model's rate should sit next to the same rate of real validation text: `script_report(real_texts)`.
"""
from __future__ import annotations

import collections
import unicodedata

from dlm_jax.data.segmentation import (  # noqa: F401  (re-exported: the script names and char_script)
    DEVANAGARI, INHERITED, LATIN, OTHER, SCRIPTS, char_script)


def word_scripts(text: str) -> list[frozenset]:
  """The set of scripts of every word that has letters, in order (NFC first; inherited marks take the script of the
  character before them, and count for nothing at the start of a word)."""
  out = []
  for word in unicodedata.normalize("NFC", text).split():
    scripts, previous = set(), None
    for ch in word:
      found = char_script(ch)
      if found == INHERITED:
        found = previous
      if found is not None:
        scripts.add(found)
        previous = found
    if scripts:
      out.append(frozenset(scripts))
  return out


def majority_script(text: str) -> str | None:
  """The script of most single-script words of `text` (None if it has none)."""
  counts = collections.Counter(next(iter(s)) for s in word_scripts(text) if len(s) == 1)
  return counts.most_common(1)[0][0] if counts else None


def script_errors(text: str, expected: str | None = None) -> dict:
  """Counts of one text: words, mixed (several scripts in one word), off_script (a single script other than
  `expected`, default the text's majority script)."""
  if expected is not None and expected not in SCRIPTS:
    raise ValueError(f"Unknown expected script {expected!r}; use one of {SCRIPTS} or None (the text's own majority).")
  words = word_scripts(text)
  expected = expected or majority_script(text)
  mixed = sum(len(s) > 1 for s in words)
  off = sum(len(s) == 1 and expected is not None and s != {expected} for s in words)
  return {"words": len(words), "mixed": mixed, "off_script": off}


def script_report(texts, expected=None) -> dict:
  """Rates over many texts; `expected` is one script for all, a list with one per text, or None (each text's own
  majority). Returns words, mixed_word_rate, off_script_rate and script_error_rate (their sum)."""
  texts = list(texts)
  expected = expected if isinstance(expected, (list, tuple)) else [expected] * len(texts)
  total = collections.Counter()
  for text, exp in zip(texts, expected, strict=True):
    total.update(script_errors(text, exp))
  n = max(total["words"], 1)
  return {"words": total["words"], "mixed_word_rate": total["mixed"] / n, "off_script_rate": total["off_script"] / n,
          "script_error_rate": (total["mixed"] + total["off_script"]) / n}
