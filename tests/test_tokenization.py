"""The tokenizer report (evaluation/tokenization.py, `python -m launch.tokenizer --report`): exact counts per script."""
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO
from dlm_jax.data import tokenizers
from dlm_jax.evaluation import tokenization


def test_char_tokenizer_report_counts_exactly():
  tok = tokenizers.CharTokenizer.from_texts(["ab कि cafe 12"])
  rep = tokenization.report(tok, "ab कि café 12 ab")  # é is out of the alphabet: <unk>
  scripts = rep["scripts"]
  assert scripts["latn"] == {"words": 3, "chars": 8, "tokens": 8, "bytes": 9, "fertility": 8 / 3,
                             "bytes_fertility": 3.0, "chars_per_token": 1.0, "chars_per_byte_token": 8 / 9}
  assert scripts["deva"]["words"] == 1 and scripts["deva"]["tokens"] == 2 and scripts["deva"]["bytes"] == 6
  assert scripts["none"]["words"] == 1 and scripts["none"]["chars"] == 2
  assert rep["tokens"] == 16 and rep["unk_rate"] == 1 / 16 and rep["byte_fallback_rate"] == 0.0


def test_sentencepiece_report_counts_byte_fallback():
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "train.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(["the cat sat on the mat", "नमस्ते दुनिया", "kya haal hai"] * 200))
    tok = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece([path], vocab_size=300))
  text = "the cat ঋ\nkya"  # a Bengali letter the model never saw: 3 UTF-8 bytes -> 3 pieces; the newline: 1
  rep = tokenization.report(tok, text)
  ids = tok.encode(text)
  assert tokenization.byte_fallback_count(tok, ids) == 3
  assert tokenization.byte_fallback_count(tok, ids, newline=True) == 1
  assert rep["byte_fallback_rate"] == 3 / len(ids) and rep["newline_byte_rate"] == 1 / len(ids)
  assert rep["unk_rate"] == 0.0
  assert rep["scripts"]["other"]["bytes"] == 3 and rep["scripts"]["latn"]["words"] == 3


def test_launch_tokenizer_report_on_a_run(trained_run, tmp_path):
  workdir, _ = trained_run
  text = tmp_path / "valid.txt"
  text.write_text("def f(x):\n    return x  # ok\n", encoding="utf-8")
  out = subprocess.run([sys.executable, "-m", "launch.tokenizer", "--report", f"--workdir={workdir}",
                        f"--report_paths={text}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "| valid.txt | latn | 5 | 3.40 | 3.40 | 1.00 | 1.00 | 0.00% (+ 0.00%) | 0.00% |" in out.stdout
  assert "(char)" in out.stdout
  bad = subprocess.run([sys.executable, "-m", "launch.tokenizer", "--report"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode != 0 and "exactly one of --input" in bad.stderr
  assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("word,group", [("नमस्ते", "deva"), ("don\u02bct", "latn"), ("hiनमस्ते", "mixed"),
                                        ("12,", "none"), ("ঋ", "other")])
def test_word_groups(word, group):
  assert tokenization.word_group(word) == group
