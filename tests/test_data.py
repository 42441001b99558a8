"""Tokenizers and the Grain pipeline: round trips, determinism, exact resume, and one clear error per bad input."""

import ml_collections
import numpy as np
import pytest

from dlm_jax import special_tokens
from dlm_jax.data import corpus, pipeline, tokenizers

SHARED = corpus.data_dir()


def data_config(path, seq_len=32, **kw):
  c = dict(path=str(path), valid_path="", valid_fraction=0.1, seq_len=seq_len, tokenizer="char", tokenizer_path="",
           seed=0)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_char_tokenizer_round_trip_and_reserved_ids():
  text = "नमस्ते duniya! Hello,\n\tworld ⏎"
  tok = tokenizers.CharTokenizer.from_texts([text])
  ids = tok.encode(text)
  assert ids.min() >= special_tokens.NUM_SPECIAL
  assert tok.decode(ids) == text
  assert tokenizers.from_dict(tok.to_dict()).decode(ids) == text
  with pytest.raises(tokenizers.TokenizerError, match=r"prompt: 1 characters of 1 kinds .* 'Z' \(U\+005A\) x1"):
    tok.encode("HeZ", source="prompt")


def test_char_tokenizer_out_of_vocabulary_policies_with_exact_counts():
  tok = tokenizers.CharTokenizer("abc")
  a, b, c = (tok.encode(ch)[0] for ch in "abc")
  text = "ab\ufeffc\u095f\u095f😀c\u095f"  # a BOM, the nukta letter U+095F three times, an emoji
  assert tok.oov_counts(text) == {"\u095f": 3, "\ufeff": 1, "😀": 1}
  unk = special_tokens.UNK
  np.testing.assert_array_equal(tok.encode(text, oov="unk"), [a, b, unk, c, unk, unk, unk, c, unk])
  np.testing.assert_array_equal(tok.encode(text, oov="skip"), [a, b, c, c])
  # The error names every distinct character with its count, most frequent first, in one message.
  with pytest.raises(tokenizers.TokenizerError) as error:
    tok.encode(text, source="hi.txt")
  message = str(error.value)
  assert "hi.txt: 5 characters of 3 kinds" in message
  assert message.index("'\u095f' (U+095F) x3") < message.index("(U+FEFF) x1")
  assert "(U+1F600) x1" in message and "--oov=unk" in message
  with pytest.raises(tokenizers.TokenizerError, match="out-of-vocabulary policy 'drop'"):
    tok.encode(text, oov="drop")


def test_sentencepiece_round_trip_english_hindi_hinglish(tmp_path):
  """Byte fallback + identity normalization: any text round-trips exactly, nukta forms and emoji included."""
  files = []
  if SHARED is not None and (SHARED / "en" / "tinyshakespeare.txt").exists():
    for rel in ("en/tinyshakespeare.txt", "hi/tico19_test.txt", "hinglish/hinglish_top_train_valid.txt"):
      head = (SHARED / rel).read_text(encoding="utf-8")[:60_000]
      files.append(tmp_path / rel.replace("/", "_"))
      files[-1].write_text(head, encoding="utf-8")
  else:  # ../shared/data absent: train on the embedded corpus; byte fallback still covers Devanagari
    files.append(tmp_path / "pydoc.txt")
    files[-1].write_text("\n".join(corpus.embedded_documents("pydoc_topics"))[:200_000], encoding="utf-8")
  tok = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece([str(f) for f in files], vocab_size=600))
  assert [tok.processor.id_to_piece(i) for i in range(5)] == list(special_tokens.NAMES)
  for text in ["To be, or not to be: that is the question.\n",
               "कोविड-19 के लक्षण क्या हैं? क़लम और ज़रूर।",
               "kal movie dekhne chalein? I think 7 baje theek rahega 😀",
               "  leading spaces\tand tabs  \n\nblank lines",
               "SentencePiece's own space symbol \u2581 and \u2581\u2581x,",
               "the escape \ue000 itself, \ue000b and \ue000e"]:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert special_tokens.MASK not in ids.tolist()
  restored = tokenizers.from_dict(tok.to_dict())
  assert restored.vocab_size == tok.vocab_size


def test_missing_path_names_it(tmp_path):
  with pytest.raises(corpus.DataError, match="nothere.txt.*does not exist"):
    pipeline.load_token_streams(data_config(tmp_path / "nothere.txt"), tmp_path / "cache")


def test_empty_corpus(tmp_path):
  (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
  with pytest.raises(corpus.DataError, match="holds no text"):
    pipeline.load_token_streams(data_config(tmp_path / "empty.txt"), tmp_path / "cache")


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("caf".encode() + b"\xe9 au lait")
  with pytest.raises(corpus.DataError, match=r"latin1.txt: invalid UTF-8 at byte offset 3"):
    pipeline.load_token_streams(data_config(bad), tmp_path / "cache")
  assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "nothing written half"


def test_corpus_shorter_than_seq_len(tmp_path):
  (tmp_path / "short.txt").write_text("abcdefghij" * 5, encoding="utf-8")
  with pytest.raises(corpus.DataError, match="fewer than data.seq_len=64"):
    pipeline.load_token_streams(data_config(tmp_path / "short.txt", seq_len=64), tmp_path / "cache")


def test_relative_paths_resolve_under_dlm_data_dir(tmp_path, monkeypatch):
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "a.txt").write_text("hello " * 20, encoding="utf-8")
  (tmp_path / "sub" / "b.txt").write_text("world " * 20, encoding="utf-8")
  monkeypatch.setenv("DLM_DATA_DIR", str(tmp_path))
  monkeypatch.chdir(tmp_path / "sub")
  files = corpus.resolve("sub")
  assert [f.name for f in files] == ["a.txt", "b.txt"]
  streams = pipeline.load_token_streams(data_config("sub", seq_len=8), tmp_path / "cache")
  # Documents are joined with EOS, and the split is the last 10% of the stream.
  total = len(streams.train) + len(streams.valid)
  assert total == 120 + 120 + 1 and len(streams.train) == int(total * 0.9)
  assert special_tokens.EOS in np.asarray(streams.train).tolist()


@pytest.fixture(scope="module")
def pydoc_streams(tmp_path_factory):
  return pipeline.load_token_streams(data_config("embedded:pydoc_topics", seq_len=64),
                                     tmp_path_factory.mktemp("cache"))


def test_token_cache_is_reused_and_memory_mapped(pydoc_streams, tmp_path_factory):
  assert isinstance(pydoc_streams.train.base, np.memmap) or isinstance(pydoc_streams.train, np.memmap)
  tok = pydoc_streams.tokenizer
  assert tok.decode(np.asarray(pydoc_streams.train[:200])).startswith(corpus.embedded_documents("pydoc_topics")[0][:100])


def test_train_batches_are_seeded_crops_and_resume_exactly(pydoc_streams):
  stream = np.asarray(pydoc_streams.train)
  it = pipeline.train_iterator(pydoc_streams.train, 64, 8, seed=3)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  again = pipeline.train_iterator(pydoc_streams.train, 64, 8, seed=3)
  np.testing.assert_array_equal(next(again), first[0])
  resumed = pipeline.train_iterator(pydoc_streams.train, 64, 8, seed=3)
  resumed.set_state(state)
  for expected in after:
    np.testing.assert_array_equal(next(resumed), expected)
  other_seed = next(pipeline.train_iterator(pydoc_streams.train, 64, 8, seed=4))
  assert not np.array_equal(other_seed, first[0])
  for row in first[0]:  # each example is a contiguous crop of the stream
    starts = np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(stream, 64) == row, axis=1))
    assert len(starts) >= 1


def test_eval_windows_are_consecutive_and_non_overlapping(pydoc_streams):
  windows = pipeline.eval_windows(pydoc_streams.valid, 64, 10)
  assert windows.shape == (10, 64)
  np.testing.assert_array_equal(windows.reshape(-1), np.asarray(pydoc_streams.valid[:640]))


def test_spread_eval_windows_cover_the_stream_without_overlap():
  stream = np.arange(1000, dtype=np.int32)
  windows = pipeline.eval_windows(stream, 10, 5, placement="spread")
  np.testing.assert_array_equal(windows[:, 0], [0, 247, 495, 742, 990])
  np.testing.assert_array_equal(windows[-1], np.arange(990, 1000))
  dense = pipeline.eval_windows(stream, 10, 10_000, placement="spread")  # as many as fit: back to back
  np.testing.assert_array_equal(dense, pipeline.eval_windows(stream, 10, 10_000))
  with pytest.raises(ValueError, match="no window"):
    pipeline.eval_windows(stream[:5], 10, 2, placement="spread")
  with pytest.raises(ValueError, match="'first' or 'spread'"):
    pipeline.eval_windows(stream, 10, 2, placement="random")
