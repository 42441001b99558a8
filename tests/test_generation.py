"""Generation-quality measures: script classification and rates, unigram entropy, the AR judge's NLL, prompt windows."""
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import special_tokens
from dlm_jax.data import pipeline, tokenizers
from dlm_jax.evaluation import generation, script


@pytest.mark.parametrize("ch, expected", [
    ("क", "deva"), ("\u093e", "deva"), ("\u094d", "deva"), ("\u0901", "deva"),  # letter, vowel sign, virama, candrabindu
    ("a", "latn"), ("Z", "latn"), ("é", "latn"), ("ṭ", "latn"),
    ("ب", "other"), ("ক", "other"),  # Arabic, Bengali
    ("1", None), ("\u0967", None), ("।", None), (",", None), ("\u200d", None), (" ", None),  # digits, danda, ZWJ
    ("\u0301", "inherited"), ("\u02bc", None), ("\u00b5", None), ("\u00aa", "latn"), ("\u02b0", "latn")])
def test_char_script(ch, expected):
  assert script.char_script(ch) == expected


def test_script_errors_counts_mixed_and_off_script_words():
  text = "मैं ghar जा रहा hoon, घरghar 42 !"
  assert script.word_scripts(text)[4] == {"latn"}  # "hoon," - punctuation carries no script
  assert script.script_errors(text, "deva") == {"words": 6, "mixed": 1, "off_script": 2}
  assert script.script_errors(text, "latn") == {"words": 6, "mixed": 1, "off_script": 3}
  assert script.majority_script(text) == "deva"
  assert script.script_errors(text) == script.script_errors(text, "deva")
  assert script.script_errors("123 ...", "deva") == {"words": 0, "mixed": 0, "off_script": 0}


def test_script_report_rates():
  report = script.script_report(["मैं ghar", "kya हाल hai"], ["deva", None])  # None: the text's own majority (latn)
  assert report["words"] == 5
  assert report["off_script_rate"] == pytest.approx(2 / 5)
  assert report["mixed_word_rate"] == 0.0
  assert report["script_error_rate"] == pytest.approx(2 / 5)
  with pytest.raises(ValueError):
    script.script_report(["a", "b"], ["latn"])


def test_unigram_entropy_of_scored_positions():
  tokens = np.array([[5, 5, 6, 6], [7, 7, 7, 9]])
  scored = np.array([[True, True, True, True], [True, True, True, False]])
  np.testing.assert_allclose(generation.unigram_entropy(tokens, scored), [np.log(2), 0.0], atol=1e-12)


def test_judge_nll_scores_positions_one_on_with_the_next_token_rule():
  vocab = 8
  probs_V = np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.2, 0.3, 0.4])  # every position predicts this next-token law

  def judge_forward(tokens_BxL, t_B):
    del t_B
    return jnp.broadcast_to(jnp.log(jnp.asarray(probs_V) + 1e-30), tokens_BxL.shape + (vocab,))

  tokens = np.array([[5, 6, 7, 2], [7, 7, 5, 6]], np.int32)
  scored = np.array([[True, True, True, True], [True, False, True, True]])
  nll_sum, count = generation.judge_nll_fn(judge_forward)(jnp.asarray(tokens), jnp.asarray(scored))
  np.testing.assert_array_equal(count, [3, 2])  # position 0 is never scored
  np.testing.assert_allclose(nll_sum, [-np.log(0.3 * 0.4 * 0.1), -np.log(0.2 * 0.3)], rtol=1e-5)


def test_quality_expects_the_prompts_script():
  tok = tokenizers.CharTokenizer.from_texts(["घर ghar जा hoon "])
  prompt = tok.encode("घर जा ")
  good = np.concatenate([prompt, tok.encode("घर जा")])[None]
  bad = np.concatenate([prompt, tok.encode("ghar ")])[None]
  generated = np.arange(good.shape[1])[None] >= len(prompt)
  judge = generation.judge_nll_fn(lambda x, t: jnp.zeros(x.shape + (tok.vocab_size,)))
  for tokens, error in ((good, 0.0), (bad, 1.0)):
    report = generation.quality(tokens, generated[:, :tokens.shape[1]], tok, judge, len(prompt))
    assert report["script_error_rate"] == error
    np.testing.assert_allclose(report["judge_nll"], np.log(tok.vocab_size), rtol=1e-6)  # uniform judge
  tokens, fixed = generation.prompts_from_windows(good, len(prompt), special_tokens.MASK)
  assert np.all(tokens[:, len(prompt):] == special_tokens.MASK) and fixed.sum() == len(prompt)


def test_prompt_scripts_and_window_selection():
  assert generation.prompt_scripts("मैं घर") == "deva"
  assert generation.prompt_scripts("main ghar, 42") == "latn"
  assert generation.prompt_scripts("मैं ghar") == "mixed" and generation.prompt_scripts("घरghar") == "mixed"
  assert generation.prompt_scripts("42 !") == "none" and generation.prompt_scripts("بيت") == "none"
  text = "घर घर घर घर " * 8 + "ab ab ab ab " * 8 + "घर ab घर ab " * 8
  tok = tokenizers.CharTokenizer.from_texts([text])
  stream = tok.encode(text)
  for scripts in ("deva", "latn", "mixed"):
    windows = generation.select_windows(stream, 16, 3, 8, tok, scripts)
    assert windows.shape == (3, 16)
    assert all(generation.prompt_scripts(tok.decode(w[:8])) == scripts for w in windows)
  np.testing.assert_array_equal(generation.select_windows(stream, 16, 3, 8, tok, "any"),
                                pipeline.eval_windows(stream, 16, 3, placement="spread"))
  with pytest.raises(ValueError, match="Only .* windows"):
    generation.select_windows(stream, 16, 500, 8, tok, "mixed")


def test_distinct_n_and_calibration_against_hand_computed_values():
  from dlm_jax.evaluation import calibration, sampling_suite
  tokens = np.asarray([[5, 6, 5, 6, 5, 9], [7, 7, 7, 7, 0, 0]])
  scored = np.asarray([[True] * 6, [True] * 4 + [False] * 2])
  # row 0 bigrams: 56 65 56 65 59 -> 3 distinct of 5; row 1: 77 77 77 -> 1 of 3. Trigrams: 565 656 565 659 -> 3/4;
  # 777 777 -> 1/2.
  assert sampling_suite.distinct_n(tokens, scored, 2) == pytest.approx((3 / 5 + 1 / 3) / 2)
  assert sampling_suite.distinct_n(tokens, scored, 3) == pytest.approx((3 / 4 + 1 / 2) / 2)
  report = calibration.reliability([0.05, 0.15, 0.95, 0.9, 1.0], [0, 1, 1, 0, 1], num_bins=2)
  # bin [0, .5): conf .1, acc .5 (2 of 5); bin [.5, 1]: conf .95, acc 2/3 (3 of 5).
  assert [b["count"] for b in report["bins"]] == [2, 3]
  assert report["ece"] == pytest.approx(2 / 5 * abs(0.5 - 0.1) + 3 / 5 * abs(2 / 3 - 0.95))
  rng = np.random.default_rng(0)
  confidence = rng.uniform(size=200_000)
  calibrated = calibration.reliability(confidence, rng.uniform(size=confidence.size) < confidence, num_bins=10)
  assert calibrated["ece"] < 0.01
  overconfident = calibration.reliability(confidence, rng.uniform(size=confidence.size) < confidence**2, num_bins=10)
  assert overconfident["ece"] > 0.1


@pytest.mark.parametrize("text, scripts", [
    ("cafe\u0301", [{"latn"}]),  # NFD: combining acute after a Latin letter
    ("ra\u0304m", [{"latn"}]),  # macron, composed by NFC into U+0101
    ("q\u0307\u0323", [{"latn"}]),  # two inherited marks with no precomposed form stay with their base
    ("don\u02bct", [{"latn"}]),  # the modifier-letter apostrophe is Common script
    ("1\u00aa 2\u00ba 5\u00b5m", [{"latn"}, {"latn"}, {"latn"}]),  # Latin ordinals; the micro sign carries no script
    ("क\u094d\u200dष", [{"deva"}]),  # virama + ZWJ inside a Devanagari conjunct
    ("\u0301abc", [{"latn"}]),  # a mark with no base counts for nothing
])
def test_script_of_words_with_combining_and_modifier_letters(text, scripts):
  assert script.word_scripts(text) == scripts
  assert script.script_errors(text, "latn" if "latn" in scripts[0] else "deva")["mixed"] == 0


def test_unknown_expected_script_is_refused():
  with pytest.raises(ValueError, match="'hindi'"):
    script.script_report(["नमस्ते"], "hindi")
  with pytest.raises(ValueError, match="'hindi'"):
    script.script_errors("नमस्ते", "hindi")
