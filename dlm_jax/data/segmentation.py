"""Unicode facts about characters and token pieces: the script of a letter and the grapheme-cluster boundary class
of a character (UAX #29), tabulated per token id for script-aware corruption (diffusion/corruption.py).

Script of a character (`char_script`; evaluation/script.py builds its script-consistency measure on it): letters and
combining marks (Unicode category L* or M*) are classified by code point into "deva" (U+0900-097F, U+A8E0-A8FF,
U+1CD0-1CFF), "latn" (ASCII letters, the Latin ordinals ª º, U+00C0-024F, the Latin modifier letters U+02B0-02B8,
U+1E00-1EFF) or "other"; combining marks of Unicode's Inherited script (U+0300-036F, U+1AB0-1AFF, U+1DC0-1DFF,
U+20D0-20FF, U+FE20-FE2F) are INHERITED (they take their base letter's script); digits, punctuation, the danda,
zero-width joiners and letters of the Common script (the modifier apostrophe U+02BC and the other modifier letters
U+02B9-02FF, the micro sign µ) carry none.

Grapheme clusters (`char_class`, `TokenClasses`): each character's Grapheme_Cluster_Break and Indic_Conjunct_Break
properties (from the `regex` module) give one of the classes below; `NO_BREAK` is UAX #29's pairwise table between the
last character of one token and the first of the next, simplified only towards fewer breaks, and a token's conjunct
state carries rule GB9c (virama + consonant) across tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import unicodedata

import numpy as np


DEVANAGARI, LATIN, OTHER = "deva", "latn", "other"
SCRIPTS = (DEVANAGARI, LATIN, OTHER)
INHERITED = "inherited"  # a combining mark that takes its base letter's script
INHERITED_RANGES = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
COMMON_LETTERS = ((0x00B5, 0x00B5), (0x02B9, 0x02FF))  # micro sign, modifier letters of the Common script


def _in(cp: int, ranges) -> bool:
  return any(lo <= cp <= hi for lo, hi in ranges)


def char_script(ch: str) -> str | None:
  """'deva', 'latn' or 'other' for a letter or combining mark, INHERITED for a combining mark of the Inherited script,
  None for anything that carries no script (module docstring)."""
  if unicodedata.category(ch)[0] not in "LM":
    return None
  cp = ord(ch)
  if _in(cp, INHERITED_RANGES):
    return INHERITED
  if _in(cp, COMMON_LETTERS):
    return None
  if 0x0900 <= cp <= 0x097F or 0xA8E0 <= cp <= 0xA8FF or 0x1CD0 <= cp <= 0x1CFF:
    return DEVANAGARI
  if cp < 0x80 or cp in (0xAA, 0xBA) or 0xC0 <= cp <= 0x24F or 0x2B0 <= cp <= 0x2B8 or 0x1E00 <= cp <= 0x1EFF:
    return LATIN
  return OTHER



# Script codes of a token / masking unit: index into SCRIPT_CODES; a unit takes the highest code among its tokens (a
# mixed unit counts as Devanagari).
SCRIPT_CODES = ("none", OTHER, LATIN, DEVANAGARI)

# Grapheme-boundary classes of a character (UAX #29 Grapheme_Cluster_Break, Indic_Conjunct_Break).
(GB_OTHER, GB_CR, GB_LF, GB_CONTROL, GB_PREPEND, GB_EXTEND, GB_EXTEND_INCB, GB_ZWJ, GB_LINKER, GB_SPACING,
 GB_CONSONANT, GB_PICTO, GB_RI, GB_HANGUL, GB_BYTE) = range(15)
NUM_CLASSES = 15
CONJUNCT_LOOKBACK = 4  # tokens of InCB=Extend (nukta, ZWJ, ...) that may sit between a virama and the next consonant


def _no_break_table() -> np.ndarray:
  """no_break[a, b]: no cluster boundary between a character of class a and one of class b (UAX #29 GB3-GB999,
  conjuncts (GB9c) handled separately; simplified towards fewer breaks)."""
  table = np.zeros((NUM_CLASSES, NUM_CLASSES), bool)
  table[:, [GB_EXTEND, GB_EXTEND_INCB, GB_ZWJ, GB_LINKER, GB_SPACING]] = True  # GB9, GB9a
  table[GB_PREPEND, :] = True  # GB9b
  table[GB_ZWJ, GB_PICTO] = True  # GB11 (without checking the pictograph before the ZWJ)
  table[GB_RI, GB_RI] = True  # GB12/13 (a run of flags stays one unit)
  table[GB_HANGUL, GB_HANGUL] = True  # GB6-8 (any jamo/syllable run)
  table[GB_BYTE, :] = table[:, GB_BYTE] = True  # a byte-fallback run joins both neighbours
  table[[GB_CR, GB_LF, GB_CONTROL], :] = table[:, [GB_CR, GB_LF, GB_CONTROL]] = False  # GB4, GB5
  table[GB_CR, GB_LF] = True  # GB3
  return table


NO_BREAK = _no_break_table()


@functools.lru_cache(maxsize=None)
def _patterns():
  import regex
  return [(cls, regex.compile(pattern)) for cls, pattern in (
      (GB_CR, r"\r"), (GB_LF, r"\n"), (GB_CONTROL, r"\p{Grapheme_Cluster_Break=Control}"),
      (GB_PREPEND, r"\p{Grapheme_Cluster_Break=Prepend}"), (GB_ZWJ, r"\u200d"), (GB_LINKER, r"\p{InCB=Linker}"),
      (GB_EXTEND_INCB, r"[\p{Grapheme_Cluster_Break=Extend}&&\p{InCB=Extend}]"),
      (GB_EXTEND, r"\p{Grapheme_Cluster_Break=Extend}"), (GB_SPACING, r"\p{Grapheme_Cluster_Break=SpacingMark}"),
      (GB_CONSONANT, r"\p{InCB=Consonant}"), (GB_PICTO, r"\p{Extended_Pictographic}"),
      (GB_RI, r"\p{Grapheme_Cluster_Break=Regional_Indicator}"),
      (GB_HANGUL, r"[\p{Grapheme_Cluster_Break=L}\p{Grapheme_Cluster_Break=V}\p{Grapheme_Cluster_Break=T}"
                  r"\p{Grapheme_Cluster_Break=LV}\p{Grapheme_Cluster_Break=LVT}]"))]


def char_class(ch: str) -> int:
  """The boundary class of one character (first matching property, in the order of `_patterns`)."""
  for cls, pattern in _patterns():
    if pattern.match(ch):
      return cls
  return GB_OTHER


def _script_code(text: str) -> int:
  """Index into SCRIPT_CODES of the first character of `text` that has a script (0: none)."""
  for ch in text:
    found = char_script(ch)
    if found in SCRIPTS:
      return SCRIPT_CODES.index(found)
  return 0


def _conjunct_state(text: str):
  """(ends_pending, transparent): whether `text` ends in a virama followed only by InCB=Extend/Linker characters
  (GB9c: a consonant after it joins the cluster), and whether it consists of InCB=Extend characters only (then the
  pending state of the text before it passes through)."""
  classes = [char_class(ch) for ch in text]
  transparent = bool(classes) and all(c in (GB_EXTEND_INCB, GB_ZWJ) for c in classes)
  pending = False
  for c in classes:
    pending = True if c == GB_LINKER else (pending if c in (GB_EXTEND_INCB, GB_ZWJ) else False)
  return pending, transparent


@dataclasses.dataclass(frozen=True, eq=False)
class TokenClasses:
  """Per-token-id tables of the segmentation (numpy, [V] each): the boundary class of the token's first and last
  character, its conjunct state (`_conjunct_state`), whether it begins/ends with whitespace, and its script code; with
  the constants that interpret them (so that diffusion/corruption.py needs nothing else from this module)."""
  no_break = NO_BREAK  # [NUM_CLASSES, NUM_CLASSES]
  consonant_class = GB_CONSONANT
  control_class = GB_CONTROL
  script_codes = SCRIPT_CODES
  conjunct_lookback = CONJUNCT_LOOKBACK
  first_V: np.ndarray
  last_V: np.ndarray
  pending_V: np.ndarray
  transparent_V: np.ndarray
  space_first_V: np.ndarray
  space_last_V: np.ndarray
  script_V: np.ndarray

  @classmethod
  def from_pieces(cls, pieces) -> "TokenClasses":
    """From the text of every token id; None marks a reserved (special) id, b"" a byte-fallback piece."""
    n = len(pieces)
    first, last = np.full(n, GB_CONTROL, np.int32), np.full(n, GB_CONTROL, np.int32)
    pending, transparent = np.zeros(n, bool), np.zeros(n, bool)
    space_first, space_last = np.ones(n, bool), np.ones(n, bool)  # special ids separate words too
    script = np.zeros(n, np.int32)
    for i, piece in enumerate(pieces):
      if piece is None or piece == "":
        continue
      if isinstance(piece, bytes):
        first[i] = last[i] = GB_BYTE
        space_first[i] = space_last[i] = False
        continue
      first[i], last[i] = char_class(piece[0]), char_class(piece[-1])
      pending[i], transparent[i] = _conjunct_state(piece)
      space_first[i], space_last[i] = piece[0].isspace(), piece[-1].isspace()
      script[i] = _script_code(piece)
    return cls(first, last, pending, transparent, space_first, space_last, script)



