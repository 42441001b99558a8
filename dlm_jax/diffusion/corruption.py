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

for the reverse process that reveals a whole unit at once, its tokens drawn from the denoiser's (factorized)
marginals; with one unit per token and kappa = 1 it is MDLM's NELBO exactly. It is a bound on the *conditional*
likelihood given s, not on -log p_theta(x_0): the mask layout shows the model where units begin and end and which
script (hence which rate) they have, information that the sampler, which masks and reveals token by token, never
receives. (Without s the rates would be state-dependent schedules, MD4's GenMD4, whose ELBO has an extra term for
predicting the rate of a masked token.) With `diffusion.unit_fraction` = p < 1 each sequence is masked by units with
probability p and token by token otherwise (a coin independent of x_0), so the objective is the mixture p (bound given
s) + (1 - p) (the token-level NELBO, with per-script rates a GenMD4-style state-dependent schedule whose rate term is
dropped): it keeps the partially masked clusters that token-level evaluation and sampling produce in the training
distribution, which pure unit masking never shows the model (BENCHMARKS.md, "Seed 001 §10.5", measures what that
costs). So training under these policies optimizes a consistent denoising objective -- the minimizer of each
position's cross-entropy is the true conditional p(x_0^i | x_t) under the script-aware corruption -- and is not a
likelihood bound of the model we sample. Evaluation therefore always reports the exact token-level masked NELBO
(`Objective.evaluation_nll` corrupts uniformly whatever the training policy), and any gain of a policy must
show up there and in the script consistency of samples.

Segmentation in JAX. Grapheme cluster boundaries depend on the characters on either side, so each token id carries the
boundary class of its first and last character (`data.segmentation.TokenClasses`, built once from the tokenizer's
pieces with the `regex` module's Unicode properties: `tokenizer.token_classes()`) and a boundary between tokens i-1
and i is decided by a [C, C] table plus the conjunct rule's look-back. The rules are UAX #29's, simplified only
towards *fewer* breaks (a run of regional indicators, an emoji ZWJ sequence, Hangul jamo and a byte-fallback run stay
one unit; a virama joins the next consonant even after a vowel letter), so a unit is always a union of true grapheme
clusters: clusters are never split (tests/test_corruption.py checks this against `regex`'s \\X on real Hindi lines).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm_jax.errors import ConfigError

CORRUPTIONS = ("uniform", "script_aware", "span")
SCRIPTS = ("none", "other", "latn", "deva")  # = data.segmentation.SCRIPT_CODES: the index is a token's script code


def _shift_right(x_BxL, fill):
  """x[:, i - 1] at position i, `fill` at position 0."""
  return jnp.concatenate([jnp.full_like(x_BxL[:, :1], fill), x_BxL[:, :-1]], axis=1)


def unit_starts(classes, x_BxL, by_word: bool = False, fixed_BxL=None):
  """bool [B, L]: True where a masking unit begins (the module docstring), from `classes` (a
  data.segmentation.TokenClasses): a grapheme-cluster boundary, and with `by_word` also a word boundary (whitespace on
  either side). Position 0 and every change between fixed and free positions begin a unit."""
  first_BxL = jnp.asarray(classes.first_V)[x_BxL]
  prev_last_BxL = _shift_right(jnp.asarray(classes.last_V)[x_BxL], classes.control_class)
  no_break_BxL = jnp.asarray(classes.no_break)[prev_last_BxL, first_BxL]
  # GB9c: a consonant after "virama [InCB Extend]*" (the Extend run may span up to conjunct_lookback tokens).
  own_BxL = jnp.asarray(classes.pending_V)[x_BxL]
  transparent_BxL = jnp.asarray(classes.transparent_V)[x_BxL]
  pending_BxL, through_BxL = own_BxL & ~transparent_BxL, jnp.ones_like(transparent_BxL)
  source_BxL = pending_BxL
  for _ in range(classes.conjunct_lookback):
    through_BxL = through_BxL & transparent_BxL
    source_BxL = _shift_right(source_BxL, False)
    pending_BxL = pending_BxL | (through_BxL & source_BxL)
    transparent_BxL = _shift_right(transparent_BxL, False)
  no_break_BxL = no_break_BxL | ((first_BxL == classes.consonant_class) & _shift_right(pending_BxL, False))
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


def unit_scripts(classes, x_BxL, start_BxL):
  """int [B, L]: each token's unit script code, the highest code of the unit's tokens (SCRIPTS)."""
  batch, length = x_BxL.shape
  segment_BxL = start_BxL + length * jnp.arange(batch)[:, None]
  script_BxL = jnp.asarray(classes.script_V)[x_BxL]
  per_segment = jax.ops.segment_max(script_BxL.reshape(-1), segment_BxL.reshape(-1), num_segments=batch * length)
  return per_segment[segment_BxL]


@dataclasses.dataclass(frozen=True, eq=False)
class ScriptAwareCorruption:
  """The "script_aware" / "span" forward process (module docstring): whole units masked with per-script schedules."""
  classes: object  # data.segmentation.TokenClasses of the tokenizer
  by_word: bool = False
  rates_per_script: tuple = (1.0, 1.0, 1.0, 1.0)  # kappa per SCRIPTS code
  unit_fraction: float = 1.0  # each sequence is masked by units with this probability, else token by token

  def corrupt(self, rng, x0_BxL, t_B, schedule, mask_id: int, fixed_BxL=None):
    """(x_t, masked_BxL, weight_BxL): each unit masked with probability 1 - alpha(t)^kappa (one uniform draw per
    unit, the one at its first token), fixed positions never; weight_BxL = w_u(t) of each token's unit. With
    unit_fraction < 1 a sequence is masked by units with that probability and token by token otherwise (every token
    its own unit, still on its script's schedule)."""
    starts_BxL = unit_starts(self.classes, x0_BxL, self.by_word, fixed_BxL)
    if self.unit_fraction < 1.0:
      by_units_B = jax.random.bernoulli(jax.random.fold_in(rng, 1), self.unit_fraction, (x0_BxL.shape[0],))
      starts_BxL = starts_BxL | ~by_units_B[:, None]
    start_BxL = unit_start_index(starts_BxL)
    kappa_BxL = jnp.asarray(self.rates_per_script, jnp.float32)[unit_scripts(self.classes, x0_BxL, start_BxL)]
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
  unit_fraction = float(diffusion_config.get("unit_fraction", 1.0))
  if not 0.0 <= unit_fraction <= 1.0:
    raise ConfigError(f"diffusion.unit_fraction must be in [0, 1], got {unit_fraction}.")
  return ScriptAwareCorruption(tokenizer.token_classes(), by_word=kind == "span", rates_per_script=rates,
                               unit_fraction=unit_fraction)
