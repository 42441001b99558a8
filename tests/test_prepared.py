"""Prepared corpora (launch.prepare_data, data/prepared.py): shards that concatenate to the tokenizer's encoding of the
corpus, a resumed preparation equal to an uninterrupted one, the wrapped and padded layouts, and padding that is never
corrupted nor scored."""
import filecmp
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, tiny_config
from dlm_jax import objectives, special_tokens
from dlm_jax.data import corpus, pipeline, prepared, tokenizers
from dlm_jax.diffusion.schedules import MaskingSchedule

SHARED = corpus.data_dir()


@pytest.fixture(scope="module")
def docs():
  """The embedded corpus's documents (79 CPython doc topics, about 0.5 MB) and three short ones."""
  return corpus.embedded_documents("pydoc_topics") + ["A short document.", "Another one,\nof two lines.", "x"]


@pytest.fixture(scope="module")
def inputs(docs, tmp_path_factory):
  """A folder of 40 text files, and a .jsonl file holding the other documents, in order."""
  root = tmp_path_factory.mktemp("inputs")
  (root / "text").mkdir()
  for i, doc in enumerate(docs[:40]):
    (root / "text" / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
  with open(root / "rest.jsonl", "w", encoding="utf-8") as f:
    for doc in docs[40:]:
      f.write(json.dumps({"id": 0, "text": doc}) + "\n\n")  # blank lines between records are skipped
  return f"{root / 'text'},{root / 'rest.jsonl'}"


@pytest.fixture(scope="module")
def tokenizer(docs):
  return tokenizers.CharTokenizer.from_texts(docs)


def folder_files(path):
  return sorted(p.name for p in path.iterdir())


def test_shards_concatenate_to_the_encoding_of_the_corpus(inputs, docs, tokenizer, tmp_path):
  report = prepared.prepare(inputs, tokenizer, tmp_path / "p", shard_tokens=20_000, workers=1, progress=False)
  expected = pipeline._encode_documents(docs, tokenizer, "x")
  assert report.documents == len(docs) == 82 and report.tokens == len(expected) and report.shards > 5
  corpus_ = prepared.PreparedCorpus.open(tmp_path / "p")
  np.testing.assert_array_equal(corpus_.stream[:], expected)
  assert corpus_.stream.shards[0].dtype == np.uint16  # the vocabulary fits 16 bits
  # The document table: each document's own ids, the EOS between documents outside every row.
  assert len(corpus_.documents_Nx2) == 82
  for i in (0, 1, 39, 40, 81):
    start, length = corpus_.documents_Nx2[i]
    np.testing.assert_array_equal(corpus_.stream[start:start + length], tokenizer.encode(docs[i]))
    assert i == 0 or corpus_.stream[start - 1] == special_tokens.EOS
  # Shards hold whole documents: each but the last reaches shard_tokens, closing after the document that did.
  meta = json.loads((tmp_path / "p" / prepared.META).read_text())
  assert meta["complete"] and all(s["tokens"] >= 20_000 for s in meta["shards"][:-1])
  # Two worker processes write the same bytes as one.
  prepared.prepare(inputs, tokenizer, tmp_path / "two", shard_tokens=20_000, workers=2, batch_bytes=30_000,
                   progress=False)
  assert all(filecmp.cmp(tmp_path / "p" / name, tmp_path / "two" / name, shallow=False)
             for name in folder_files(tmp_path / "p"))


def test_a_resumed_preparation_equals_an_uninterrupted_one(inputs, tokenizer, tmp_path):
  prepared.prepare(inputs, tokenizer, tmp_path / "whole", shard_tokens=20_000, workers=1, progress=False)
  stopped = prepared.prepare(inputs, tokenizer, tmp_path / "cut", shard_tokens=20_000, workers=1, progress=False,
                             stop_after_shards=3)
  assert stopped.shards == 3
  with pytest.raises(corpus.DataError, match="stopped after 3 shard"):
    prepared.PreparedCorpus.open(tmp_path / "cut")
  # A shard written but not yet recorded (killed between the two), and a temporary file, are redone.
  meta = json.loads((tmp_path / "cut" / prepared.META).read_text())
  meta["shards"] = meta["shards"][:2]
  (tmp_path / "cut" / prepared.META).write_text(json.dumps(meta))
  (tmp_path / "cut" / "tokens_00002.tmp123.bin").write_bytes(b"partial")
  resumed = prepared.prepare(inputs, tokenizer, tmp_path / "cut", shard_tokens=20_000, workers=1, progress=False)
  assert resumed.resumed_from == 2
  for name in folder_files(tmp_path / "whole"):
    assert filecmp.cmp(tmp_path / "whole" / name, tmp_path / "cut" / name, shallow=False), name
  # Other settings over a started folder are refused, naming what differs.
  with pytest.raises(corpus.DataError, match=r"differing: \['shard_tokens'\]"):
    prepared.prepare(inputs, tokenizer, tmp_path / "cut", shard_tokens=10_000, workers=1, progress=False)


def test_token_stream_reads_across_shards_like_one_array(inputs, tokenizer, tmp_path):
  prepared.prepare(inputs, tokenizer, tmp_path / "p", shard_tokens=5_000, workers=1, progress=False)
  stream = prepared.PreparedCorpus.open(tmp_path / "p").stream
  whole = stream[:]
  rng = np.random.default_rng(0)
  for _ in range(200):
    a, b = sorted(rng.integers(0, len(whole) + 1, 2))
    np.testing.assert_array_equal(stream[a:b], whole[a:b])
  view = stream.view(1000, 60_000)
  assert len(view) == 59_000 and view[-1] == whole[59_999]
  np.testing.assert_array_equal(view[4_000:9_000], whole[5_000:10_000])
  np.testing.assert_array_equal(np.asarray(view), whole[1000:60_000])


def data_config(path, **kw):
  c = dict(path=str(path), valid_path="", valid_fraction=0.1, seq_len=64, tokenizer="char", tokenizer_path="", seed=0,
           layout="wrapped")
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_pipeline_reads_both_layouts(inputs, docs, tokenizer, tmp_path):
  prepared.prepare(inputs, tokenizer, tmp_path / "p", shard_tokens=20_000, workers=1, progress=False)
  expected = pipeline._encode_documents(docs, tokenizer, "x")
  wrapped = pipeline.load_token_streams(data_config(tmp_path / "p"), tmp_path / "cache")
  split = int(len(expected) * 0.9)
  np.testing.assert_array_equal(wrapped.train[:], expected[:split])
  np.testing.assert_array_equal(wrapped.valid[:], expected[split:])
  batch = next(pipeline.train_iterator(wrapped.train, 64, 8, seed=0))
  assert batch.shape == (8, 64) and batch.dtype == np.int32
  # Padded: the last 10% of the documents validate; a row is BOS, a document, EOS, then padding, cut at seq_len.
  padded = pipeline.load_token_streams(data_config(tmp_path / "p", layout="padded", seq_len=256), tmp_path / "cache")
  assert (len(padded.train_docs), len(padded.valid_docs)) == (73, 9)  # int(82 x 0.9) and the rest
  special = tokenizer.special
  rows = pipeline.document_windows(padded.valid_docs, 256, 100, special)
  assert rows.shape == (9, 256)
  for row, doc in zip(rows, docs[73:]):
    ids = tokenizer.encode(doc)
    framed = np.concatenate([[special.bos], ids, [special.eos]])
    if len(framed) >= 256:
      np.testing.assert_array_equal(row, framed[:256])
    else:
      np.testing.assert_array_equal(row[:len(framed)], framed)
      assert np.all(row[len(framed):] == special.pad)
  assert any(len(tokenizer.encode(d)) < 254 for d in docs[73:]) and any(len(tokenizer.encode(d)) >= 256 for d in docs)
  it = pipeline.document_iterator(padded.train_docs, 256, 8, seed=1, special=special)
  first = next(it)
  state = it.get_state()
  after = next(it)
  resumed = pipeline.document_iterator(padded.train_docs, 256, 8, seed=1, special=special)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed), after)
  windows = {tuple(row) for row in pipeline.document_windows(padded.train_docs, 256, 73, special)}
  assert all(tuple(row) in windows for row in first)
  # The last N documents as the validation split (MDLM's OpenWebText protocol), and a test split before it.
  by_docs = pipeline.load_token_streams(data_config(tmp_path / "p", valid_documents=5, test_fraction=0.1),
                                        tmp_path / "cache")
  corpus_ = prepared.PreparedCorpus.open(tmp_path / "p")
  rows_ = corpus_.documents_Nx2
  test_doc = pipeline.split_points(len(rows_), 0.0, 0.1)[1]
  assert test_doc == int(len(rows_) * 0.9) == 73
  np.testing.assert_array_equal(by_docs.valid[:], corpus_.stream[int(rows_[test_doc - 5, 0]):int(rows_[test_doc, 0])])
  np.testing.assert_array_equal(by_docs.test[:], corpus_.stream[int(rows_[test_doc, 0]):])
  assert len(by_docs.train) + len(by_docs.valid) + len(by_docs.test) == len(expected)
  # A text corpus cannot be read padded; a prepared folder with another tokenizer kind is refused.
  with pytest.raises(corpus.DataError, match="prepared folder"):
    pipeline.load_token_streams(data_config(inputs.split(",")[0], layout="padded"), tmp_path / "cache")
  with pytest.raises(corpus.DataError, match="prepared with a 'char' tokenizer"):
    pipeline.load_token_streams(data_config(tmp_path / "p", tokenizer="sentencepiece"), tmp_path / "cache")


def test_padding_is_never_corrupted_nor_scored():
  """Logits that put a large weight a on the pad id: a target that is not padding costs C = log(V - 2 + e^a) nats
  (the mask removed), so a loss that averaged over the padding too would come out far below C."""
  V, a = 12, 6.0
  special = special_tokens.DEFAULT
  logits_V = jnp.zeros((V,)).at[special.pad].set(a)
  cost = float(np.log(V - 2 + np.exp(a)))

  class Output:
    def __init__(self, x):
      self.logits_BxLxV = jnp.broadcast_to(logits_V, x.shape + (V,))
      self.hidden_BxLxD, self.aux_losses, self.aux_metrics = None, {}, {}

  denoise = lambda x, t, *rest: Output(x)
  rng = np.random.default_rng(0)
  lengths = rng.integers(4, 32, 2048)
  x0 = np.full((2048, 32), special.pad, np.int32)
  for row, n in zip(x0, lengths):
    row[:n] = rng.integers(5, V, n)
  x0 = jnp.asarray(x0)
  masked = objectives.OBJECTIVES["elbo"](MaskingSchedule("linear"), padded=True)
  loss, metrics = masked(denoise, x0, jax.random.key(0), with_aux=False)
  assert abs(float(loss) - cost) < 0.03 * cost  # E[NELBO] = C per scored token; ~half the positions are padding
  xt, _ = masked.corrupt(jax.random.key(1), x0, jnp.full((2048,), 0.99), masked.fixed_mask(x0, None))
  assert jnp.all(jnp.where(x0 == special.pad, xt == special.pad, True))
  assert abs(float(masked.evaluation_nll(denoise, x0, jax.random.key(2))) - cost) < 0.03 * cost
  ar = objectives.OBJECTIVES["autoregressive"](padded=True)
  np.testing.assert_allclose(float(ar(denoise, x0, jax.random.key(0), with_aux=False)[0]), cost, rtol=1e-6)
  unpadded = objectives.OBJECTIVES["autoregressive"]()
  assert float(unpadded(denoise, x0, jax.random.key(0), with_aux=False)[0]) < 0.8 * cost
  with pytest.raises(Exception, match="data.layout='padded' trains objectives"):
    objectives.OBJECTIVES["uniform"](vocab_size=V, padded=True)


def test_a_run_trains_on_a_prepared_folder_in_the_padded_layout(inputs, tokenizer, tmp_path):
  from dlm_jax.training import loop
  prepared.prepare(inputs, tokenizer, tmp_path / "p", shard_tokens=20_000, workers=1, progress=False)
  config = tiny_config(**{"data.path": str(tmp_path / "p"), "data.layout": "padded", "train.num_steps": 4,
                          "train.checkpoint_every": 4, "eval.every": 4, "eval.num_windows": 8})
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["step"] == 4 and not summary["stopped"] and np.isfinite(summary["eval_nll_per_token"])
  assert summary["tokenizer"].to_dict() == tokenizer.to_dict()  # the prepared folder's own tokenizer


def test_prepare_data_cli_prepares_resumes_and_refuses_bad_input(inputs, tmp_path):
  command = [sys.executable, "-m", "launch.prepare_data", f"--input={inputs}", f"--output={tmp_path / 'p'}",
             "--workers=1", "--shard_tokens=50000"]
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert first.returncode == 0, first.stderr
  assert "Prepared" in first.stdout and "documents" in first.stdout and "MB/s" in first.stdout
  assert "MB/s" in first.stderr and "ETA" in first.stderr  # the progress line
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and "complete already" in again.stdout
  bad = subprocess.run(command[:3] + ["--input=/nonexistent/*.jsonl", f"--output={tmp_path / 'q'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --input=")


def test_preparing_the_shared_english_corpora_end_to_end(tmp_path):
  if SHARED is None or not (SHARED / "en").is_dir():
    pytest.skip("../shared/data/en is absent (set DLM_DATA_DIR to the shared corpora)")
  docs = corpus.load_documents("en", "data.path").docs
  tok = tokenizers.CharTokenizer.from_texts(docs)
  report = prepared.prepare("en", tok, tmp_path / "en", shard_tokens=1 << 20, workers=1, progress=False)
  stream = prepared.PreparedCorpus.open(tmp_path / "en").stream
  assert report.documents == len(docs)
  np.testing.assert_array_equal(stream[:], pipeline._encode_documents(docs, tok, "en"))


def test_parquet_rows_are_documents(docs, tokenizer, tmp_path):
  pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install pyarrow)")
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"id": list(range(10)), "content": docs[:10]}), tmp_path / "part.parquet", row_group_size=3)
  prepared.prepare(str(tmp_path / "part.parquet"), tokenizer, tmp_path / "p", text_field="content", workers=1,
                   progress=False)
  np.testing.assert_array_equal(prepared.PreparedCorpus.open(tmp_path / "p").stream[:],
                                pipeline._encode_documents(docs[:10], tokenizer, "x"))
  with pytest.raises(corpus.DataError, match="no column 'text'"):
    prepared.prepare(str(tmp_path / "part.parquet"), tokenizer, tmp_path / "q", workers=1, progress=False)


def test_split_points_cut_text8_exactly_and_keep_nanogpts_split():
  assert pipeline.split_points(100_000_000, 0.05, 0.05) == (90_000_000, 95_000_000)  # MD4's text8 split
  for n in (1, 7, 1000, 465_123, 3_010_294):
    assert pipeline.split_points(n, 0.1) == (int(n * 0.9), n)  # nanoGPT's data[:int(n * 0.9)]
  with pytest.raises(corpus.DataError, match="leave a training split"):
    pipeline.split_points(100, 0.5, 0.5)


def test_a_text_corpus_holds_out_a_test_split(tmp_path):
  (tmp_path / "t.txt").write_text("abcdefghij" * 100, encoding="utf-8")
  streams = pipeline.load_token_streams(data_config(tmp_path / "t.txt", seq_len=8, valid_fraction=0.05,
                                                    test_fraction=0.05), tmp_path / "cache")
  assert (len(streams.train), len(streams.valid), len(streams.test)) == (900, 50, 50)
  whole = np.concatenate([streams.train, streams.valid, streams.test])
  np.testing.assert_array_equal(whole, streams.tokenizer.encode("abcdefghij" * 100))
  assert streams.split("test")[0] is streams.test
  plain = pipeline.load_token_streams(data_config(tmp_path / "t.txt", seq_len=8), tmp_path / "cache")
  with pytest.raises(corpus.DataError, match="no test split"):
    plain.split("test")


def test_score_all_tokens_scores_the_first_token_without_context():
  """Logits that cost C0 nats at position 0 and C1 elsewhere: tokens 2..L average C1 exactly in expectation; all L
  tokens average (C0 + (L - 1) C1) / L."""
  V, L, a = 12, 8, 6.0
  special = special_tokens.DEFAULT
  first_V = jnp.zeros((V,)).at[special.pad].set(a)  # a data token costs C0 = log(V - 2 + e^a) at position 0
  c0, c1 = float(np.log(V - 2 + np.exp(a))), float(np.log(V - 1))

  class Output:
    def __init__(self, x):
      logits = jnp.zeros(x.shape + (V,))
      self.logits_BxLxV = logits.at[:, 0].set(first_V)
      self.hidden_BxLxD, self.aux_losses, self.aux_metrics = None, {}, {}

  denoise = lambda x, t, *rest: Output(x)
  x0 = jnp.asarray(np.random.default_rng(0).integers(5, V, (8192, L)), jnp.int32)
  for score_all, expected in ((False, c1), (True, (c0 + (L - 1) * c1) / L)):
    objective = objectives.OBJECTIVES["elbo"](MaskingSchedule("linear"), score_all_tokens=score_all)
    got = float(objective.evaluation_nll(denoise, x0, jax.random.key(0)))
    assert abs(got - expected) < 0.02 * expected, (score_all, got, expected)
  with pytest.raises(Exception, match="eval.score_all_tokens scores a window's first token"):
    objectives.OBJECTIVES["autoregressive"](score_all_tokens=True)
