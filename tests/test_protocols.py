"""The field's protocols (configs/text8.py, lm1b.py, owt.py): each builds at its paper's size, and a tiny version of
each trains and evaluates here with the protocol's own data path: text8's character split with every character scored,
LM1B's padded BERT-layout sentences, OpenWebText's wrapped GPT-2-layout documents with the last N as validation."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import with_overrides
from configs import lm1b, owt, text8
from dlm_jax import models, objectives
from dlm_jax.data import corpus, pipeline, prepared, tokenizers

tokenizers_lib = pytest.importorskip("tokenizers", reason="the `tokenizers` library is not installed (pip install "
                                     "tokenizers; the GPU machine's wheels lack it)")

from test_hf_tokenizer import train_byte_level_bpe, train_wordpiece  # noqa: E402


def num_params(config, vocab_size):
  model = nnx.eval_shape(lambda: models.get_model(config, vocab_size, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("module, arms, vocab, millions", [
    (text8, ("diffusion", "ar"), 32, (84, 87)),  # MD4's ~85M
    (lm1b, ("diffusion", "ar", "wrapped"), 30522, (107, 111)),  # MDLM's ~110M with BERT's embedding
    (owt, ("diffusion", "ar"), 50259, (122, 126)),  # MDLM's small with GPT-2's embedding
], ids=["text8", "lm1b", "owt"])
def test_protocol_configs_build_at_the_papers_sizes(module, arms, vocab, millions):
  for arm in arms:
    config = module.get_config(arm)
    objective = objectives.from_config(config, vocab)
    assert objective.score_all_tokens == (arm != "ar")  # every token scored, but by the causal arm
    assert millions[0] <= num_params(config, vocab) / 1e6 <= millions[1], (arm, num_params(config, vocab))
  with pytest.raises(ValueError, match="takes one of"):
    module.get_config("nosucharm")


def sentences(n=None):
  """The embedded corpus cut into its non-empty lines: LM1B-like one-sentence documents."""
  lines = [line.strip() for doc in corpus.embedded_documents("pydoc_topics") for line in doc.split("\n")]
  return [line for line in lines if len(line) > 20][:n]


def run_tiny(config, workdir):
  from dlm_jax.training import loop
  summary = loop.train(config, str(workdir))
  assert summary["step"] == int(config.train.num_steps) and np.isfinite(summary["eval_nll_per_token"])
  return summary


def test_text8_cpu_protocol_holds_out_a_test_split_and_scores_every_character(tmp_path):
  letters = "".join(ch if ch.isalpha() and ch.isascii() else " " for ch in " ".join(sentences()).lower())
  text = " ".join(letters.split())  # text8's alphabet: a-z and single spaces, one line
  (tmp_path / "text8_like.txt").write_text(text, encoding="utf-8")
  config = with_overrides(text8.get_config("cpu"), {
      "data.path": str(tmp_path / "text8_like.txt"), "data.seq_len": 64, "model.num_layers": 1, "model.width": 32,
      "model.mlp_dim": 64, "model.num_heads": 2, "train.num_steps": 4, "train.batch_size": 8, "eval.every": 4,
      "eval.num_windows": 8, "eval.batch_size": 8, "optimizer.warmup_steps": 2, "train.checkpoint_every": 4})
  summary = run_tiny(config, tmp_path / "run")
  assert summary["vocab_size"] == 5 + 27
  streams = pipeline.load_token_streams(config.data, tmp_path / "cache")
  n = len(text)
  assert (len(streams.train), len(streams.valid), len(streams.test)) == (
      int(round(n * 0.9, 6)), int(round(n * 0.95, 6)) - int(round(n * 0.9, 6)), n - int(round(n * 0.95, 6)))
  from dlm_jax.training import checkpoint
  run = checkpoint.load_for_inference(str(tmp_path / "run"))
  test_windows = pipeline.validation_windows(run.config.data, tmp_path / "cache", run.tokenizer, 4, split="test")
  np.testing.assert_array_equal(test_windows.reshape(-1), np.asarray(streams.test[:4 * 64]))
  assert run.objective.score_all_tokens


def test_lm1b_tiny_protocol_trains_on_padded_bert_sentences(tmp_path):
  lines = sentences(600)
  bert = train_wordpiece(lines, tmp_path / "bert", 400)
  for name, part in (("train", lines[:500]), ("test", lines[500:])):
    with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps({"text": line}) + "\n" for line in part)
  tok = tokenizers.HFTokenizer.from_path(str(bert))
  for name in ("train", "test"):
    prepared.prepare(str(tmp_path / f"{name}.jsonl"), tok, tmp_path / f"lm1b_{name}", workers=1, progress=False)
  config = with_overrides(lm1b.get_config("tiny"), {
      "data.path": str(tmp_path / "lm1b_train"), "data.valid_path": str(tmp_path / "lm1b_test"),
      "data.tokenizer": f"hf:{bert}", "data.seq_len": 32})
  run_tiny(config, tmp_path / "run")
  windows = pipeline.validation_windows(config.data, tmp_path / "cache", tok, 8)
  special = tok.special
  assert np.all(windows[:, 0] == special.bos) and np.all(np.sum(windows == special.eos, axis=1) <= 1)
  assert np.any(windows == special.pad)  # short sentences are padded ...
  ends = np.argmax(windows == special.pad, axis=1)
  assert all(row[end - 1] == special.eos for row, end in zip(windows, ends) if end)  # ... after their [SEP]


def test_owt_tiny_protocol_trains_on_wrapped_gpt2_documents(tmp_path):
  docs = corpus.embedded_documents("pydoc_topics")
  gpt2 = train_byte_level_bpe(docs, tmp_path / "gpt2", 500)
  with open(tmp_path / "owt.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
  tok = tokenizers.HFTokenizer.from_path(str(gpt2))
  prepared.prepare(str(tmp_path / "owt.jsonl"), tok, tmp_path / "owt", workers=1, progress=False)
  config = with_overrides(owt.get_config("tiny"), {"data.path": str(tmp_path / "owt"), "data.tokenizer": f"hf:{gpt2}"})
  run_tiny(config, tmp_path / "run")
  streams = pipeline.load_token_streams(config.data, tmp_path / "cache")
  rows = prepared.PreparedCorpus.open(tmp_path / "owt").documents_Nx2
  assert len(streams.valid) == len(streams.train_docs.stream) - int(rows[-4, 0])  # the last 4 documents validate
