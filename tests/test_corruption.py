"""Script-aware corruption (diffusion/corruption.py, data/segmentation.py): units never split a grapheme cluster,
per-script rates and weights are the configured schedules, and with one unit per token it is the token-level process
exactly."""
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import regex

from conftest import tiny_config
from dlm_jax import objectives, special_tokens
from dlm_jax.data import corpus, segmentation, tokenizers
from dlm_jax.diffusion import corruption, forward
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax.models import DenoiserOutput

HINDI_VALID = corpus.data_dir() / "hi" / "valid_flores_ntrex.txt" if corpus.data_dir() else None
HAND_CHECKED = "क्ष त्र क्\u200dष नमस्ते दुनिया क़िला r\u0301a\u0304m don\u02bct 👩\u200d👩\u200d👧 e\u0301\r\n"


def hindi_lines(n):
  if HINDI_VALID is None or not HINDI_VALID.exists():
    pytest.skip("../shared/data/hi/valid_flores_ntrex.txt is absent (set DLM_DATA_DIR to the shared corpora)")
  return HINDI_VALID.read_text(encoding="utf-8").splitlines()[:n]


def cluster_starts(text: str, offsets=None) -> set:
  """Offsets (characters, or the given per-character offsets) where regex's \\X starts an extended grapheme cluster."""
  starts, pos = set(), 0
  for cluster in regex.findall(r"\X", text):
    starts.add(pos if offsets is None else offsets[pos])
    pos += len(cluster)
  return starts


def char_units(text):
  tok = tokenizers.CharTokenizer.from_texts([text])
  classes = tok.token_classes()
  ids = jnp.asarray(tok.encode(text))[None]
  return tok, classes, ids


def test_hand_checked_clusters_are_single_units():
  _, classes, ids = char_units(HAND_CHECKED)
  starts = np.asarray(corruption.unit_starts(classes, ids))[0]
  units = [HAND_CHECKED[a:b] for a, b in zip(np.flatnonzero(starts), [*np.flatnonzero(starts)[1:], len(HAND_CHECKED)])]
  for cluster in ("क्ष", "त्र", "क्\u200dष", "स्ते", "दु", "क़ि", "r\u0301", "a\u0304", "👩\u200d👩\u200d👧", "e\u0301",
                  "\r\n"):
    assert cluster in units, cluster
  assert units[:4] == ["क्ष", " ", "त्र", " "]
  assert set(np.flatnonzero(starts).tolist()) == cluster_starts(HAND_CHECKED)


def test_char_units_equal_grapheme_clusters_on_real_hindi():
  text = "\n".join(hindi_lines(300))
  _, classes, ids = char_units(text)
  starts = np.asarray(corruption.unit_starts(classes, ids))[0]
  assert set(np.flatnonzero(starts).tolist()) == cluster_starts(text)


def test_sentencepiece_units_never_split_a_cluster():
  lines = hindi_lines(1700)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "train.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(lines[:1500]))
    # character_coverage < 1: rare characters fall back to bytes, so byte pieces are exercised too
    tok = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece([path], 600, character_coverage=0.995))
  classes = tok.token_classes()
  text = "\n".join(lines[1500:]) + " " + HAND_CHECKED
  ids = tok.encode(text)
  is_byte = np.array([tok.processor.is_byte(int(i)) for i in ids])
  assert is_byte.sum() > 50  # byte fallback happens
  piece_bytes = [1 if b else len(tok.processor.id_to_piece(int(i)).replace(tokenizers.SPM_SPACE, " ").encode())
                 for i, b in zip(ids, is_byte)]
  full = " " + text  # SentencePiece's dummy prefix
  assert sum(piece_bytes) == len(full.encode())
  token_offsets = np.concatenate([[0], np.cumsum(piece_bytes)[:-1]])
  char_byte_offsets = np.concatenate([[0], np.cumsum([len(ch.encode()) for ch in full])])
  boundaries = cluster_starts(full, char_byte_offsets)
  starts = np.asarray(corruption.unit_starts(classes, jnp.asarray(ids)[None]))[0]
  assert all(token_offsets[k] in boundaries for k in np.flatnonzero(starts))  # never inside a cluster
  # and only slightly coarser than the clusters allow (byte runs and flags are kept whole)
  possible = sum(token_offsets[k] in boundaries for k in range(len(ids)))
  assert starts.sum() >= 0.99 * possible


def test_span_units_are_words():
  text = "ram ne kaha, नमस्ते  दोस्त!\nok"
  _, classes, ids = char_units(text)
  starts = np.flatnonzero(np.asarray(corruption.unit_starts(classes, ids, by_word=True))[0]).tolist()
  units = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])]
  assert units == ["ram", " ", "ne", " ", "kaha,", " ", "नमस्ते", " ", " ", "दोस्त!", "\n", "ok"]


def test_unit_scripts_take_the_highest_code():
  assert corruption.SCRIPTS == segmentation.SCRIPT_CODES  # the config's names index the tokenizer's codes
  text = "ab कि 12 x"
  _, classes, ids = char_units(text)
  starts = corruption.unit_starts(classes, ids, by_word=True)
  scripts = np.asarray(corruption.unit_scripts(classes, ids, corruption.unit_start_index(starts)))[0]
  names = [corruption.SCRIPTS[s] for s in scripts]
  assert names == ["latn", "latn", "none", "deva", "deva", "none", "none", "none", "none", "latn"]


def test_one_unit_per_token_is_the_uniform_process_exactly():
  text = "plain ascii text, no marks: every character is a cluster.\n"
  tok, classes, ids = char_units(text)
  x0 = jnp.tile(ids, (16, 1))
  schedule = MaskingSchedule("cosine")
  t = forward.antithetic_times(jax.random.PRNGKey(1), 16)
  fixed = jnp.zeros(x0.shape, bool).at[:, :3].set(True)
  policy = corruption.ScriptAwareCorruption(classes)
  xt, masked, weight = policy.corrupt(jax.random.PRNGKey(2), x0, t, schedule, special_tokens.MASK, fixed)
  xt_ref, masked_ref = forward.corrupt(jax.random.PRNGKey(2), x0, t, schedule, special_tokens.MASK, fixed)
  np.testing.assert_array_equal(xt, xt_ref)
  np.testing.assert_array_equal(masked, masked_ref)
  np.testing.assert_array_equal(weight, jnp.broadcast_to(schedule.weight(t)[:, None], x0.shape))
  del tok


def test_clusters_are_masked_together_and_fixed_positions_never():
  text = "\n".join(hindi_lines(40))[:256]
  _, classes, ids = char_units(text)
  x0 = jnp.tile(ids, (64, 1))
  fixed = jnp.zeros(x0.shape, bool).at[:, :10].set(True)
  t = jnp.full((64,), 0.5)
  _, masked, _ = corruption.ScriptAwareCorruption(classes).corrupt(
      jax.random.PRNGKey(0), x0, t, MaskingSchedule("linear"), special_tokens.MASK, fixed)
  masked = np.asarray(masked)
  assert not masked[:, :10].any()
  starts = np.asarray(corruption.unit_starts(classes, ids, fixed_BxL=fixed[:1]))[0]
  unit = np.cumsum(starts)
  for u in np.unique(unit):
    column = masked[:, unit == u]
    assert (column == column[:, :1]).all()  # every token of a unit shares the decision
  assert 0.4 < masked[:, 10:].mean() < 0.6


def test_unit_fraction_mixes_unit_and_token_masking():
  text = "क्षत्रिय नमस्ते दुनिया " * 4
  _, classes, ids = char_units(text)
  x0 = jnp.tile(ids, (256, 1))
  t = jnp.full((256,), 0.5)
  schedule = MaskingSchedule("linear")
  # unit_fraction = 0: token by token, exactly forward.corrupt with the same key
  _, masked, _ = corruption.ScriptAwareCorruption(classes, unit_fraction=0.0).corrupt(
      jax.random.PRNGKey(0), x0, t, schedule, special_tokens.MASK)
  _, reference = forward.corrupt(jax.random.PRNGKey(0), x0, t, schedule, special_tokens.MASK)
  np.testing.assert_array_equal(masked, reference)
  # unit_fraction = 1/2: about half the sequences split no cluster, the others split many
  _, masked, _ = corruption.ScriptAwareCorruption(classes, unit_fraction=0.5).corrupt(
      jax.random.PRNGKey(0), x0, t, schedule, special_tokens.MASK)
  unit = np.cumsum(np.asarray(corruption.unit_starts(classes, ids))[0])
  split = np.zeros(256, bool)
  for u in np.unique(unit):
    column = np.asarray(masked)[:, unit == u]
    split |= (column != column[:, :1]).any(axis=1)
  assert 0.35 < 1 - split.mean() < 0.65


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_per_script_rates_are_honoured(schedule_name):
  text = "नमस्ते दुनिया hello world 123 "
  _, classes, ids = char_units(text)
  rates = (1.0, 1.0, 0.5, 2.0)  # none, other, latn, deva
  policy = corruption.ScriptAwareCorruption(classes, by_word=True, rates_per_script=rates)
  schedule = MaskingSchedule(schedule_name)
  n = 4000
  x0 = jnp.tile(ids, (n, 1))
  t_value = 0.4
  _, masked, weight = policy.corrupt(jax.random.PRNGKey(3), x0, jnp.full((n,), t_value), schedule,
                                     special_tokens.MASK)
  alpha = float(schedule.alpha(t_value))
  starts = np.asarray(corruption.unit_starts(classes, ids, by_word=True))[0]
  scripts = np.asarray(corruption.unit_scripts(classes, ids, corruption.unit_start_index(starts[None])))[0]
  masked = np.asarray(masked)
  for code, kappa in enumerate(rates):
    first_tokens = starts & (scripts == code)
    if not first_tokens.any():
      continue
    p = 1.0 - alpha**kappa
    observed = masked[:, first_tokens].mean()
    stderr = math.sqrt(p * (1 - p) / (n * first_tokens.sum()))
    assert abs(observed - p) < 5 * stderr, (corruption.SCRIPTS[code], observed, p)
  # the unit weight is -d/dt alpha^kappa / (1 - alpha^kappa)
  dalpha = float(schedule.dalpha(t_value))
  for code, kappa in enumerate(rates):
    expected = -kappa * alpha**(kappa - 1) * dalpha / (1 - alpha**kappa)
    np.testing.assert_allclose(np.asarray(weight)[0, scripts == code], expected, rtol=1e-5)


@pytest.mark.parametrize("kappa", [0.5, 1.0, 3.0])
def test_unit_weight_integrates_to_one_nat_per_unit(kappa):
  """int_0^1 w_u(t) P(u masked at t) dt = alpha_u(0) - alpha_u(1) = 1: a unit whose tokens cost c nats each
  contributes exactly c nats per token to the NELBO, whatever its rate (the bound's calibration)."""
  text = "कि"
  _, classes, ids = char_units(text)
  policy = corruption.ScriptAwareCorruption(classes, rates_per_script=(1.0, 1.0, 1.0, kappa))
  schedule = MaskingSchedule("cosine")
  n = 20000
  t = (jnp.arange(n) + 0.5) / n
  _, _, weight = policy.corrupt(jax.random.PRNGKey(0), jnp.tile(ids, (n, 1)), t, schedule, special_tokens.MASK)
  masked_prob = 1.0 - np.asarray(schedule.alpha(t), np.float64)**kappa
  integral = np.mean(np.asarray(weight, np.float64)[:, 0] * masked_prob)
  assert abs(integral - 1.0) < 2e-3


def table_denoiser(vocab):
  """A fixed denoiser: logits depend on the token at each position (a deterministic stand-in network)."""
  table = jax.random.normal(jax.random.PRNGKey(5), (vocab, vocab))

  def denoise(x, t):
    del t
    return DenoiserOutput(logits_BxLxV=table[x])
  return denoise


def objective_with(corruption_name, tok, **diffusion):
  config = tiny_config(**{"diffusion.corruption": corruption_name, **{f"diffusion.{k}": v for k, v in
                                                                      diffusion.items()}})
  return objectives.from_config(config, tok.vocab_size, tok)


def test_objective_trains_on_units_and_evaluates_token_by_token():
  text = "नमस्ते दुनिया, hello world. क्षत्रिय "
  tok, _, ids = char_units(text)
  x0 = jnp.tile(ids, (8, 1))
  denoise = table_denoiser(tok.vocab_size)
  plain, aware = objective_with("uniform", tok), objective_with("script_aware", tok)
  rng = jax.random.PRNGKey(4)
  # evaluation: the exact token-level NELBO, whatever the training corruption
  np.testing.assert_array_equal(plain.evaluation_nll(denoise, x0, rng), aware.evaluation_nll(denoise, x0, rng))
  # training: different mask layouts, both finite
  loss_plain, _ = plain(denoise, x0, rng)
  loss_aware, metrics = aware(denoise, x0, rng)
  assert np.isfinite(loss_aware) and loss_aware != loss_plain and 0 < metrics["masked_fraction"] < 1
  # on text where every character is its own cluster, with all rates 1, training is the uniform objective exactly
  ascii_tok, _, ascii_ids = char_units("every character here is a cluster.")
  ascii_x0 = jnp.tile(ascii_ids, (8, 1))
  ascii_denoise = table_denoiser(ascii_tok.vocab_size)
  # (equal up to float32 summation order: w(t) sum nll vs sum w nll)
  np.testing.assert_allclose(objective_with("uniform", ascii_tok)(ascii_denoise, ascii_x0, rng)[0],
                             objective_with("script_aware", ascii_tok)(ascii_denoise, ascii_x0, rng)[0], rtol=1e-6)


def test_config_errors_name_the_field():
  tok, _, _ = char_units("abc")
  with pytest.raises(ConfigError, match="diffusion.corruption"):
    objective_with("words", tok)
  with pytest.raises(ConfigError, match="script_rates"):
    objective_with("uniform", tok, **{"script_rates.deva": 2.0})
  with pytest.raises(ConfigError, match="script_rates"):
    objective_with("span", tok, **{"script_rates.deva": 0.0})
  with pytest.raises(ConfigError, match="unit_fraction"):
    objective_with("script_aware", tok, unit_fraction=1.5)
  with pytest.raises(ConfigError, match="absorbing objective"):
    objective_with("span", tok, objective="uniform")
  with pytest.raises(ValueError, match="tokenizer"):
    objectives.from_config(tiny_config(**{"diffusion.corruption": "span"}), tok.vocab_size)
