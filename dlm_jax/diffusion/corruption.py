"""Script-aware corruption of masked diffusion: which tokens are masked together, and at which rate.

`diffusion.corruption` chooses the training-time forward process of the absorbing objectives ("elbo", "masked_mean"):

* "uniform": every token is masked independently with probability 1 - alpha(t) (MD4 eq. 3; `forward.corrupt`).
* "script_aware": the *unit* of masking is the extended grapheme cluster (Unicode UAX #29, with the Unicode 15.1 rule
  GB9c that keeps Indic virama conjuncts such as क्ष and त्र together). All tokens of a unit are masked together: a
  Devanagari consonant is never revealed without its vowel sign, nukta or virama, and a SentencePiece piece boundary
  inside a cluster (byte fallback, a split matra) never separates what the sampler must restore as one glyph.
* "span": the units are whitespace-delimited words (never cutting a grapheme cluster): the model learns to restore
  whole words, as in span corruption.

In both non-uniform modes each unit is masked with its own schedule alpha_u(t) = alpha(t)^kappa_s, where s is the
unit's script (`SCRIPTS`: Devanagari, Latin, another script, or none for spaces, digits and punctuation) and kappa_s is
`diffusion.script_rates.<s>` (default 1). kappa > 1 corrupts that script faster (alpha^kappa < alpha at every t), kappa
< 1 slower; alpha_u still falls from 1 at t = 0 to 0 at t = 1, so every unit is masked at the end. Roman Hindi and
English are both in Latin letters: telling them apart word by word would need a language identifier, which the
corpora do not provide, so they share kappa_latn.

What the objective is under these policies. Write s(x_0) for the segmentation of x_0 into units and their scripts (a
deterministic function of the text). Given s, the forward process is absorbing diffusion over units with per-unit
schedules, and the continuous-time bound of MD4/MDLM carries over unit by unit:

    -log p_theta(x_0 | s) <= int_0^1 E_q [ sum_{masked units u} w_u(t) sum_{i in u} -log p_theta(x_0^i | x_t) ] dt,
    w_u(t) = -alpha_u'(t) / (1 - alpha_u(t)) = kappa alpha^(kappa-1) (-alpha') / (1 - alpha^kappa),

for the reverse process that reveals a whole unit at once, its tokens drawn from the denoiser's (factorized) marginals;
with one unit per token and kappa = 1 it is MDLM's NELBO exactly. It is a bound on the *conditional* likelihood given
s, not on -log p_theta(x_0): the mask layout shows the model where units begin and end and which script (hence which
rate) they have, information that the sampler, which masks and reveals token by token, never receives. (Without s the
rates would be state-dependent schedules, MD4's GenMD4, whose ELBO has an extra term for predicting the rate of a
masked token.) So training under these policies optimizes a consistent denoising objective -- the minimizer of each
position's cross-entropy is the true conditional p(x_0^i | x_t) under the script-aware corruption -- and is not a
likelihood bound of the model we sample. Evaluation therefore always reports the exact token-level masked NELBO
(`DiffusionObjective.evaluation_nll` corrupts uniformly whatever the training policy), and any gain of a policy must
show up there and in the script consistency of samples.

Segmentation in JAX. Grapheme cluster boundaries depend on the characters on either side, so each token id carries
the boundary class of its first and last character (`TokenClasses`, built once from the tokenizer's pieces with the
`regex` module's Unicode properties) and a boundary between tokens i-1 and i is decided by a [C, C] table plus the
conjunct rule's look-back. The rules are UAX #29's, simplified only towards *fewer* breaks (a run of regional
indicators, an emoji ZWJ sequence, Hangul jamo and a byte-fallback run stay one unit; a virama joins the next
consonant even after a vowel letter), so a unit is always a union of true grapheme clusters: clusters are never split
(tests/test_corruption.py checks this against `regex`'s \\X on real Hindi lines).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError

CORRUPTIONS = ("uniform", "script_aware", "span")
# Script codes of a token / unit; a unit takes the highest code among its tokens (a mixed unit counts as Devanagari).
SCRIPTS = ("none", "other", "latn", "deva")

# Grapheme-boundary classes of a character (UAX #29 Grapheme_Cluster_Break, Indic_Conjunct_Break).
(OTHER, CR, LF, CONTROL, PREPEND, EXTEND, EXTEND_INCB, ZWJ, LINKER, SPACING, CONSONANT, PICTO, RI, HANGUL,
 BYTE) = range(15)
NUM_CLASSES = 15
CONJUNCT_LOOKBACK = 4  # tokens of InCB=Extend (nukta, ZWJ, ...) that may sit between a virama and the next consonant


def _no_break_table() -> np.ndarray:
  """no_break[a, b]: no cluster boundary between a character of class a and one of class b (UAX #29 GB3-GB999,
  conjuncts (GB9c) handled separately; simplified towards fewer breaks)."""
  table = np.zeros((NUM_CLASSES, NUM_CLASSES), bool)
  table[:, [EXTEND, EXTEND_INCB, ZWJ, LINKER, SPACING]] = True  # GB9, GB9a
  table[PREPEND, :] = True  # GB9b
  table[ZWJ, PICTO] = True  # GB11 (without checking the pictograph before the ZWJ)
  table[RI, RI] = True  # GB12/13 (a run of flags stays one unit)
  table[HANGUL, HANGUL] = True  # GB6-8 (any jamo/syllable run)
  table[BYTE, :] = table[:, BYTE] = True  # a byte-fallback run joins both neighbours
  table[[CR, LF, CONTROL], :] = table[:, [CR, LF, CONTROL]] = False  # GB4, GB5
  table[CR, LF] = True  # GB3
  return table


NO_BREAK = _no_break_table()


@functools.lru_cache(maxsize=None)
def _patterns():
  import regex
  return [(cls, regex.compile(pattern)) for cls, pattern in (
      (CR, r"\r"), (LF, r"\n"), (CONTROL, r"\p{Grapheme_Cluster_Break=Control}"),
      (PREPEND, r"\p{Grapheme_Cluster_Break=Prepend}"), (ZWJ, r"\u200d"), (LINKER, r"\p{InCB=Linker}"),
      (EXTEND_INCB, r"[\p{Grapheme_Cluster_Break=Extend}&&\p{InCB=Extend}]"),
      (EXTEND, r"\p{Grapheme_Cluster_Break=Extend}"), (SPACING, r"\p{Grapheme_Cluster_Break=SpacingMark}"),
      (CONSONANT, r"\p{InCB=Consonant}"), (PICTO, r"\p{Extended_Pictographic}"),
      (RI, r"\p{Grapheme_Cluster_Break=Regional_Indicator}"),
      (HANGUL, r"[\p{Grapheme_Cluster_Break=L}\p{Grapheme_Cluster_Break=V}\p{Grapheme_Cluster_Break=T}"
               r"\p{Grapheme_Cluster_Break=LV}\p{Grapheme_Cluster_Break=LVT}]"))]


def char_class(ch: str) -> int:
  """The boundary class of one character (first matching property, in the order of `_patterns`)."""
  for cls, pattern in _patterns():
    if pattern.match(ch):
      return cls
  return OTHER


def _script_code(text: str) -> int:
  """Code (index into SCRIPTS) of the first character of `text` that has a script (evaluation/script.py's rules)."""
  from dlm_jax.evaluation import script
  for ch in text:
    found = script.char_script(ch)
    if found in (script.DEVANAGARI, script.LATIN, script.OTHER):
      return SCRIPTS.index(found)
  return 0


def _conjunct_state(text: str):
  """(ends_pending, transparent): whether `text` ends in a virama followed only by InCB=Extend/Linker characters
  (GB9c: a consonant after it joins the cluster), and whether it consists of InCB=Extend characters only (then the
  pending state of the text before it passes through)."""
  classes = [char_class(ch) for ch in text]
  transparent = bool(classes) and all(c in (EXTEND_INCB, ZWJ) for c in classes)
  pending = False
  for c in classes:
    pending = True if c == LINKER else (pending if c in (EXTEND_INCB, ZWJ) else False)
  return pending, transparent


@dataclasses.dataclass(frozen=True, eq=False)
class TokenClasses:
  """Per-token-id tables of the segmentation (numpy, [V] each): the boundary class of the token's first and last
  character, its conjunct state (`_conjunct_state`), whether it begins/ends with whitespace, and its script code."""
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
    first, last = np.full(n, CONTROL, np.int32), np.full(n, CONTROL, np.int32)
    pending, transparent = np.zeros(n, bool), np.zeros(n, bool)
    space_first, space_last = np.ones(n, bool), np.ones(n, bool)  # special ids separate words too
    script = np.zeros(n, np.int32)
    for i, piece in enumerate(pieces):
      if piece is None or piece == "":
        continue
      if isinstance(piece, bytes):
        first[i] = last[i] = BYTE
        space_first[i] = space_last[i] = False
        continue
      first[i], last[i] = char_class(piece[0]), char_class(piece[-1])
      pending[i], transparent[i] = _conjunct_state(piece)
      space_first[i], space_last[i] = piece[0].isspace(), piece[-1].isspace()
      script[i] = _script_code(piece)
    return cls(first, last, pending, transparent, space_first, space_last, script)

  @classmethod
  def from_tokenizer(cls, tokenizer) -> "TokenClasses":
    """From a CharTokenizer (one character per id) or a SentencePieceTokenizer (pieces with U+2581 as a space;
    byte-fallback pieces are their ASCII character, or BYTE for the bytes of a multi-byte character)."""
    if tokenizer.kind == "char":
      return cls.from_pieces([None] * special_tokens.NUM_SPECIAL + list(tokenizer.alphabet))
    from dlm_jax.data import tokenizers
    processor, pieces = tokenizer.processor, []
    for i in range(tokenizer.vocab_size):
      if processor.is_control(i) or processor.is_unknown(i) or i < special_tokens.NUM_SPECIAL:
        pieces.append(None)
      elif processor.is_byte(i):  # "<0xNN>": an ASCII character, or one byte of a longer UTF-8 sequence
        value = int(processor.id_to_piece(i)[1:-1], 16)
        pieces.append(chr(value) if value < 0x80 else b"")
      else:
        pieces.append(tokenizers.unescape_spm_space(processor.id_to_piece(i).replace(tokenizers.SPM_SPACE, " ")))
    return cls.from_pieces(pieces)


def _shift_right(x_BxL, fill):
  """x[:, i - 1] at position i, `fill` at position 0."""
  return jnp.concatenate([jnp.full_like(x_BxL[:, :1], fill), x_BxL[:, :-1]], axis=1)


def unit_starts(classes: TokenClasses, x_BxL, by_word: bool = False, fixed_BxL=None):
  """bool [B, L]: True where a masking unit begins (the module docstring): a grapheme-cluster boundary, and with
  `by_word` also a word boundary (whitespace on either side). Position 0 and every change between fixed and free
  positions begin a unit."""
  first_BxL = jnp.asarray(classes.first_V)[x_BxL]
  prev_last_BxL = _shift_right(jnp.asarray(classes.last_V)[x_BxL], CONTROL)
  no_break_BxL = jnp.asarray(NO_BREAK)[prev_last_BxL, first_BxL]
  # GB9c: a consonant after "virama [InCB Extend]*" (the Extend run may span up to CONJUNCT_LOOKBACK tokens).
  own_BxL = jnp.asarray(classes.pending_V)[x_BxL]
  transparent_BxL = jnp.asarray(classes.transparent_V)[x_BxL]
  pending_BxL, through_BxL = own_BxL & ~transparent_BxL, jnp.ones_like(transparent_BxL)
  source_BxL = pending_BxL
  for _ in range(CONJUNCT_LOOKBACK):
    through_BxL = through_BxL & transparent_BxL
    source_BxL = _shift_right(source_BxL, False)
    pending_BxL = pending_BxL | (through_BxL & source_BxL)
    transparent_BxL = _shift_right(transparent_BxL, False)
  no_break_BxL = no_break_BxL | ((first_BxL == CONSONANT) & _shift_right(pending_BxL, False))
  starts_BxL = ~no_break_BxL
  if by_word:
    space_BxL = jnp.asarray(classes.space_first_V)[x_BxL] | _shift_right(
        jnp.asarray(classes.space_last_V)[x_BxL], True)
    starts_BxL = starts_BxL & space_BxL
  if fixed_BxL is not None:
    starts_BxL = starts_BxL | (fixed_BxL != _shift_right(fixed_BxL, False))
  return starts_BxL.at[:, 0].set(True)


def unit_start_index(starts_BxL):
  """int [B, L]: the position at which each token's unit begins."""
  positions_BxL = jnp.broadcast_to(jnp.arange(starts_BxL.shape[1]), starts_BxL.shape)
  return jax.lax.cummax(jnp.where(starts_BxL, positions_BxL, 0), axis=1)


def unit_scripts(classes: TokenClasses, x_BxL, start_BxL):
  """int [B, L]: each token's unit script code, the highest code of the unit's tokens (SCRIPTS)."""
  batch, length = x_BxL.shape
  segment_BxL = start_BxL + length * jnp.arange(batch)[:, None]
  script_BxL = jnp.asarray(classes.script_V)[x_BxL]
  per_segment = jax.ops.segment_max(script_BxL.reshape(-1), segment_BxL.reshape(-1), num_segments=batch * length)
  return per_segment[segment_BxL]


@dataclasses.dataclass(frozen=True, eq=False)
class ScriptAwareCorruption:
  """The "script_aware" / "span" forward process (module docstring): whole units masked with per-script schedules."""
  classes: TokenClasses
  by_word: bool = False
  rates_S: tuple = (1.0, 1.0, 1.0, 1.0)  # kappa per SCRIPTS code

  def corrupt(self, rng, x0_BxL, t_B, schedule, mask_id: int, fixed_BxL=None):
    """(x_t, masked_BxL, weight_BxL): each unit masked with probability 1 - alpha(t)^kappa (one uniform draw per
    unit, the one at its first token), fixed positions never; weight_BxL = w_u(t) of each token's unit."""
    starts_BxL = unit_starts(self.classes, x0_BxL, self.by_word, fixed_BxL)
    start_BxL = unit_start_index(starts_BxL)
    kappa_BxL = jnp.asarray(self.rates_S, jnp.float32)[unit_scripts(self.classes, x0_BxL, start_BxL)]
    alpha_Bx1 = schedule.alpha(t_B)[:, None]
    one_minus_alpha_Bx1 = schedule.one_minus_alpha(t_B)[:, None]
    log_alpha_Bx1 = schedule.log_alpha(t_B)[:, None]
    keep_BxL = jnp.where(kappa_BxL == 1.0, alpha_Bx1, jnp.exp(kappa_BxL * log_alpha_Bx1))
    uniform_BxL = jnp.take_along_axis(jax.random.uniform(rng, x0_BxL.shape, jnp.float32), start_BxL, axis=1)
    masked_BxL = uniform_BxL >= keep_BxL
    if fixed_BxL is not None:
      masked_BxL = masked_BxL & ~fixed_BxL
    xt_BxL = jnp.where(masked_BxL, jnp.asarray(mask_id, x0_BxL.dtype), x0_BxL)
    # w_u = w(t) kappa alpha^(kappa - 1) (1 - alpha) / (1 - alpha^kappa); = w(t) at kappa = 1.
    ratio_BxL = (kappa_BxL * jnp.exp((kappa_BxL - 1.0) * log_alpha_Bx1) * one_minus_alpha_Bx1
                 / -jnp.expm1(kappa_BxL * log_alpha_Bx1))
    weight_Bx1 = schedule.weight(t_B)[:, None]
    weight_BxL = jnp.where(kappa_BxL == 1.0, weight_Bx1, weight_Bx1 * ratio_BxL)
    return xt_BxL, masked_BxL, weight_BxL


def rates_from_config(diffusion_config) -> tuple:
  """kappa per SCRIPTS code from `diffusion.script_rates` (a dict with keys among SCRIPTS; missing keys are 1)."""
  given = diffusion_config.get("script_rates", None) or {}
  given = dict(given.to_dict() if hasattr(given, "to_dict") else given)
  unknown = set(given) - set(SCRIPTS)
  if unknown:
    raise ConfigError(f"diffusion.script_rates has unknown scripts {sorted(unknown)}; the keys are {SCRIPTS}.")
  rates = tuple(float(given.get(name, 1.0)) for name in SCRIPTS)
  if not all(0.1 <= r <= 10.0 for r in rates):
    raise ConfigError(f"diffusion.script_rates must lie in [0.1, 10] (the schedule alpha^kappa), got {given}.")
  return rates


def from_config(diffusion_config, tokenizer) -> ScriptAwareCorruption | None:
  """The corruption of `diffusion.corruption`: None for "uniform" (forward.corrupt), else a ScriptAwareCorruption of
  `tokenizer`'s pieces."""
  kind = diffusion_config.get("corruption", "uniform")
  if kind not in CORRUPTIONS:
    raise ConfigError(f"Unknown diffusion.corruption {kind!r}; choose one of {CORRUPTIONS}.")
  rates = rates_from_config(diffusion_config)
  if kind == "uniform":
    if rates != (1.0,) * len(SCRIPTS):
      raise ConfigError(f"diffusion.script_rates={dict(zip(SCRIPTS, rates))} needs "
                        "diffusion.corruption='script_aware' or 'span' (uniform masking has one rate).")
    return None
  if tokenizer is None:
    raise ValueError(f"diffusion.corruption={kind!r} segments the tokenizer's pieces: build the objective with "
                     "objectives.from_config(config, vocab_size, tokenizer).")
  return ScriptAwareCorruption(TokenClasses.from_tokenizer(tokenizer), by_word=kind == "span", rates_S=rates)
