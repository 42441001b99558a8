"""Text -> token ids (cached once as a memory-mapped .npy next to the run) -> Grain batches.

* Training: every start offset of the train token stream is an example; `grain.MapDataset.range(N - L + 1)
  .seed(s).shuffle().repeat().map(crop).batch(B)` gives uniformly random crops of `seq_len` (MD4's text8 recipe)
  in a seeded order whose position is the iterator state (saved in every checkpoint: a resumed run sees exactly the
  batches it would have seen).
* Evaluation: `eval.num_windows` non-overlapping windows of the valid stream: the first ones, in order (default), or
  spread evenly over the whole stream (`eval.windows = "spread"`: a multi-file validation set is then scored on all
  of its files).
* Split: `data.valid_path` if set, else the last `valid_fraction` of the token stream (nanoGPT's 90/10 split); with
  `data.test_fraction` > 0 the last test_fraction is held out as a test split first (text8's 90/5/5: MD4's protocol),
  scored by `launch.evaluate --split=test` and never trained or validated on.
Documents are joined with EOS between them.

A prepared folder (data/prepared.py, `python -m launch.prepare_data`) as data.path is read from its memory-mapped
shards, never whole; its tokenizer is the run's. Its documents also give MDLM's second layout, `data.layout`:
* "wrapped" (default): the documents joined by EOS, random windows of seq_len (MDLM's wrap; MD4's text8 crops);
* "padded": one document per window: BOS, the document from its start, EOS, then the tokenizer's pad id, cut at
  seq_len (MDLM's `[CLS] sentence [SEP] [PAD]...` for LM1B with BERT's tokenizer); the objective neither corrupts nor
  scores the padding. The validation split is then the last valid_fraction of the documents, and evaluation scores
  the first (or spread) eval.num_windows documents.
A prepared folder's validation split may instead be its last `data.valid_documents` documents (MDLM's OpenWebText
protocol: the last 100,000 documents), in either layout.
* "chat": data.path is JSON lines of conversations (data/chat.py): one window per example, its prompt given (never
  corrupted nor scored), its response the target, then EOS or padding (data.chat_fill); the last valid_fraction of the
  examples is the validation split. Windows are built as the padded layout's are (`document_iterator`).
* "puzzle": data.path is a set of `launch.puzzles` (data/puzzles.py): one window per Sudoku or maze, its given cells
  fixed and its blanks the target, augmented `data.augment` ways; data.valid_path another set (else the last
  valid_fraction of the puzzles).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import pathlib

import grain
import jax
import ml_collections
import numpy as np

from dlm_jax import special_tokens
from dlm_jax.data import chat, corpus, prepared, puzzles, tokenizers
from dlm_jax.errors import ConfigError


LAYOUTS = ("wrapped", "padded", "chat", "puzzle")
# One example per window (`document_iterator`, `document_windows`).
PER_EXAMPLE_LAYOUTS = ("padded", "chat", "puzzle")
# The chat and puzzle layouts mark their windows' given positions with special_tokens.FIXED_FLAG (the objective's
# `conditioned`, objectives/__init__.py).


@dataclasses.dataclass
class Documents:
  """Documents of a token stream: `rows_Nx2` holds each one's (start, length) in `stream`."""
  stream: object  # np.ndarray or prepared.TokenStream
  rows_Nx2: np.ndarray

  def __len__(self) -> int:
    return len(self.rows_Nx2)

  def window(self, index: int, seq_len: int, special) -> np.ndarray:
    """int32 [seq_len]: BOS, document `index`, EOS, cut at seq_len, then `special.pad` (the padded layout)."""
    start, length = (int(v) for v in self.rows_Nx2[index])
    tokens = np.asarray(self.stream[start:start + min(length, seq_len)], np.int32)
    framed = np.concatenate([[special.bos], tokens, [special.eos]]).astype(np.int32)[:seq_len]
    row = np.full((seq_len,), special.pad, np.int32)
    row[:len(framed)] = framed
    return row


@dataclasses.dataclass
class TokenStreams:
  train: object  # int32 np.ndarray (memory-mapped cache), or a prepared folder's TokenStream
  valid: object
  tokenizer: object
  summary: str = ""  # what was read (corpus.Corpus.summary of the train and the valid corpus)
  train_docs: Documents | None = None  # the documents of each split (prepared folders; the padded layout reads them)
  valid_docs: Documents | None = None
  test: object = None  # data.test_fraction > 0: the held-out end of the corpus
  test_docs: Documents | None = None

  def split(self, name: str):
    """(tokens, documents) of split "valid" or "test"."""
    if name == "valid":
      return self.valid, self.valid_docs
    if name == "test":
      if self.test is None:
        raise corpus.DataError("This run has no test split: set data.test_fraction > 0 (training on the rest), or "
                               "score a held-out file with --path.")
      return self.test, self.test_docs
    raise ConfigError(f"split must be 'valid' or 'test', got {name!r}.")


def split_points(n: int, valid_fraction: float, test_fraction: float = 0.0) -> tuple[int, int]:
  """(valid start, test start) of n items: the last `test_fraction` is the test split and the `valid_fraction` before
  it the validation split; int(round(n f, 6)) so that float error cannot move a cut (1 - 0.05 - 0.05 cuts text8's 100M
  characters at exactly 90M); with test_fraction 0, nanoGPT's int(n (1 - valid_fraction))."""
  if not 0.0 <= test_fraction < 1.0 or not 0.0 <= valid_fraction < 1.0 or valid_fraction + test_fraction >= 1.0:
    raise corpus.DataError(f"data.valid_fraction={valid_fraction} and data.test_fraction={test_fraction} must be in "
                           "[0, 1) and leave a training split (their sum < 1).")
  return (int(round(n * (1.0 - valid_fraction - test_fraction), 6)), int(round(n * (1.0 - test_fraction), 6)))


def _encode_documents(docs, tokenizer, source, oov: str = "error"):
  """The documents' ids joined by the tokenizer's EOS id."""
  pieces, eos = [], np.asarray([tokenizer.special.eos], np.int32)
  for i, ids in enumerate(tokenizer.encode_batch(docs, oov=oov, source=source)):
    if i:
      pieces.append(eos)
    pieces.append(ids)
  return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def _cached(cache_dir: pathlib.Path, key: str, build):
  """np.load(mmap) of cache_dir/<sha(key)>.npy, building it first (atomically: temp file + rename) if absent."""
  cache_dir.mkdir(parents=True, exist_ok=True)
  path = cache_dir / f"tokens_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
  if not path.exists():
    corpus.write_atomic(path, lambda tmp: np.save(tmp, build()))
  return np.load(path, mmap_mode="r")


def tokenizer_kind(spec: str) -> str:
  """The `kind` of the tokenizer a data.tokenizer value names: "char", "sentencepiece" or "hf" (for "hf:PATH")."""
  return tokenizers.HFTokenizer.kind if tokenizers.is_hf(spec) else spec


def build_tokenizer(data_config, train_docs=None):
  """The tokenizer named by data.tokenizer: 'char' (alphabet from the train+valid text), 'sentencepiece' (the model at
  data.tokenizer_path) or 'hf:PATH' (a Hugging Face tokenizer.json or tokenizer folder; data/tokenizers.py)."""
  if data_config.tokenizer == "char":
    return tokenizers.CharTokenizer.from_texts(train_docs)
  if data_config.tokenizer == "sentencepiece":
    return tokenizers.SentencePieceTokenizer.from_file(data_config.tokenizer_path)
  if tokenizers.is_hf(data_config.tokenizer):
    return tokenizers.HFTokenizer.from_path(data_config.tokenizer[len(tokenizers.HF_PREFIX):])
  raise corpus.DataError(f"data.tokenizer must be 'char', 'sentencepiece' or 'hf:PATH' (a Hugging Face tokenizer.json "
                         f"or tokenizer folder), got {data_config.tokenizer!r}.")


def load_token_streams(data_config, cache_dir, tokenizer=None, oov: str = "error") -> TokenStreams:
  """Reads, tokenizes (once; cached) and splits the corpus. `tokenizer=None` builds one (a resumed run passes the
  tokenizer saved in its checkpoint, so the ids never change under it). `oov`: the character tokenizer's policy for
  characters outside its alphabet (tokenizers.OOV_POLICIES; training keeps "error"). A prepared folder is read by
  `load_prepared_streams`."""
  if data_config.get("layout", "wrapped") not in LAYOUTS:
    raise ConfigError(f"data.layout must be one of {LAYOUTS}, got {data_config.layout!r}.")
  if data_config.get("layout") == "chat":
    return load_chat_streams(data_config, tokenizer)
  if data_config.get("layout") == "puzzle":
    return load_puzzle_streams(data_config, tokenizer)
  if prepared.is_prepared(data_config.path):
    return load_prepared_streams(data_config, cache_dir, tokenizer, oov)
  if data_config.get("layout", "wrapped") != "wrapped":
    raise corpus.DataError(f"data.layout={data_config.layout!r} reads documents from a prepared folder; "
                           f"data.path={data_config.path!r} is text. Prepare it first (python -m launch.prepare_data "
                           "--input=... --output=DIR) and set data.path=DIR, or use data.layout='wrapped'.")
  text = corpus.load_documents(data_config.path, "data.path")
  valid_text = corpus.load_documents(data_config.valid_path, "data.valid_path") if data_config.get("valid_path") else None
  docs, key = text.docs, text.key
  valid_docs, valid_key = (valid_text.docs, valid_text.key) if valid_text is not None else (None, None)
  if tokenizer is None:
    tokenizer = build_tokenizer(data_config, docs + (valid_docs or []))
  tok_key = tokenizers.fingerprint(tokenizer) + ("" if oov == "error" else f"|oov={oov}")
  cache_dir = pathlib.Path(cache_dir)
  stream = _cached(cache_dir, f"{key}|{tok_key}", lambda: _encode_documents(docs, tokenizer, data_config.path, oov))
  test_fraction = float(data_config.get("test_fraction", 0.0))
  if valid_docs is not None:
    valid = _cached(cache_dir, f"{valid_key}|{tok_key}",
                    lambda: _encode_documents(valid_docs, tokenizer, data_config.valid_path, oov))
    valid_cut = test_cut = split_points(len(stream), 0.0, test_fraction)[1]
  else:
    fraction = float(data_config.valid_fraction)
    if not 0.0 < fraction < 1.0:
      raise corpus.DataError(f"data.valid_fraction must be in (0, 1) when data.valid_path is unset, got {fraction}.")
    valid_cut, test_cut = split_points(len(stream), fraction, test_fraction)  # nanoGPT: data[:int(n * 0.9)]
    valid = stream[valid_cut:test_cut]
  train, test = stream[:valid_cut], (stream[test_cut:] if test_fraction else None)
  summary = text.summary + (f"; {valid_text.summary}" if valid_text is not None else "")
  return _checked(TokenStreams(train=train, valid=valid, tokenizer=tokenizer, summary=summary, test=test), data_config)


def load_chat_streams(data_config, tokenizer=None) -> TokenStreams:
  """The TokenStreams of data.layout="chat" (data/chat.py): train_docs/valid_docs are ChatExamples; train/valid the
  examples' ids joined (for counts); the last valid_fraction of the conversations validates."""
  template, fill = data_config.get("chat_template", "plain"), data_config.get("chat_fill", "eos")
  chat.check(template, fill)
  conversations = chat.read_conversations(data_config.path)
  if tokenizer is None and template == "tokenizer":
    tokenizer = build_tokenizer(data_config)
  pairs = [chat.render(messages, template, tokenizer) for messages in conversations]
  if tokenizer is None:  # a character alphabet covers the rendered text, template included
    tokenizer = build_tokenizer(data_config, [text for pair in pairs for text in pair])
  examples = chat.encode(pairs, tokenizer, template, fill)
  train, valid = chat.split(examples, float(data_config.valid_fraction))
  joined = lambda ex: np.concatenate([np.concatenate([p, r]) for p, r in zip(ex.prompts, ex.responses)]).astype(np.int32)
  seq_len = int(data_config.seq_len)
  cut_prompts, cut_responses = examples.overflow(seq_len)
  summary = (f"{len(examples):,} conversations from {data_config.path} ({len(train):,} train, {len(valid):,} valid; "
             f"{cut_prompts} prompts and {cut_responses} responses cut at data.seq_len={seq_len})")
  return TokenStreams(train=joined(train), valid=joined(valid), tokenizer=tokenizer, summary=summary,
                      train_docs=train, valid_docs=valid)


def load_puzzle_streams(data_config, tokenizer=None) -> TokenStreams:
  """The TokenStreams of data.layout="puzzle" (data/puzzles.py): train_docs/valid_docs are PuzzleExamples (the
  training ones augmented data.augment ways, seeded by data.seed); the validation set is data.valid_path, else the
  last valid_fraction of data.path's puzzles. The tokenizer is the task's characters."""
  train_set = puzzles.read_set(data_config.path)
  if data_config.get("valid_path"):
    valid_set = puzzles.read_set(data_config.valid_path, "data.valid_path")
  else:
    cut = min(max(int(round(len(train_set) * (1.0 - float(data_config.valid_fraction)))), 1), len(train_set) - 1)
    train_set, valid_set = train_set[:cut], train_set[cut:]
  if not train_set or not valid_set or train_set[0]["task"] != valid_set[0]["task"]:
    raise corpus.DataError(f"data.path={data_config.path!r} and its validation set must hold puzzles of one task, "
                           "at least one each.")
  task = train_set[0]["task"]
  if tokenizer is None:
    tokenizer = build_tokenizer(data_config, [puzzles.alphabet(task)])
  layout = data_config.get("puzzle_layout", "grid")
  train = puzzles.PuzzleExamples(train_set, tokenizer, layout, int(data_config.get("augment", 1) or 1),
                                 int(data_config.seed))
  valid = puzzles.PuzzleExamples(valid_set, tokenizer, layout)
  if int(data_config.seq_len) != train.length:
    raise ConfigError(f"data.seq_len={data_config.seq_len}, but a {task} window in data.puzzle_layout={layout!r} is "
                      f"{train.length} tokens: set data.seq_len={train.length}.")
  joined = lambda ex: special_tokens.split_fixed(np.concatenate(
      [ex.window(i, ex.length, tokenizer.special) for i in range(len(ex.puzzles))]))[0]
  summary = (f"{len(train_set):,} {task} puzzles from {data_config.path} (x {train.augment} augmentations), "
             f"{len(valid_set):,} to validate")
  return TokenStreams(train=joined(train), valid=joined(valid), tokenizer=tokenizer, summary=summary,
                      train_docs=train, valid_docs=valid)


def _checked(streams: TokenStreams, data_config) -> TokenStreams:
  """`streams`, after checking that each split fills a window (the wrapped layout) or holds a document (padded)."""
  seq_len, padded = int(data_config.seq_len), data_config.get("layout", "wrapped") in PER_EXAMPLE_LAYOUTS
  for name, tokens, docs, flag in (("train", streams.train, streams.train_docs, "data.path"),
                                   ("valid", streams.valid, streams.valid_docs, "data.valid_path/valid_fraction")):
    if padded and not len(docs):
      raise corpus.DataError(f"The {name} split of {data_config.path!r} holds no document. Use a larger corpus "
                             f"({flag}).")
    if not padded and len(tokens) < seq_len:
      raise corpus.DataError(
          f"The {name} split of {data_config.path!r} has {len(tokens)} tokens, fewer than data.seq_len={seq_len}. "
          f"Use a larger corpus ({flag}) or a smaller data.seq_len.")
  return streams


def _same_tokenizer(expected, found, what: str):
  if tokenizers.fingerprint(expected) != tokenizers.fingerprint(found):
    raise corpus.DataError(f"{what} was prepared with another tokenizer ({found.kind}, vocab {found.vocab_size}) than "
                           f"this run's ({expected.kind}, vocab {expected.vocab_size}). Prepare it with the run's "
                           "tokenizer.")


def load_prepared_streams(data_config, cache_dir, tokenizer=None, oov: str = "error") -> TokenStreams:
  """The splits of a prepared folder at data.path (module docstring), with its tokenizer: data.tokenizer must name the
  same kind (and, for sentencepiece and hf, the same tokenizer); a resumed run's `tokenizer` must equal it. The
  validation split: data.valid_path (another prepared folder, or text encoded with this tokenizer), else the last
  valid_fraction of the tokens (wrapped) or of the documents (padded), before the test split (data.test_fraction)."""
  corpus_ = prepared.PreparedCorpus.open(data_config.path)
  own = corpus_.tokenizer
  if tokenizer_kind(data_config.tokenizer) != own.kind:
    raise corpus.DataError(f"data.path={data_config.path} was prepared with a {own.kind!r} tokenizer, but "
                           f"data.tokenizer={data_config.tokenizer!r}. Set data.tokenizer to the one it was prepared "
                           "with, or prepare the corpus again.")
  if own.kind != "char":
    _same_tokenizer(build_tokenizer(data_config), own, f"data.path={data_config.path}")
  if tokenizer is not None:
    _same_tokenizer(tokenizer, own, f"data.path={data_config.path}")
  stream, rows = corpus_.stream, corpus_.documents_Nx2
  padded = data_config.get("layout", "wrapped") == "padded"
  test_fraction = float(data_config.get("test_fraction", 0.0))
  valid_path = data_config.get("valid_path", "")
  summary = corpus_.summary()
  valid_fraction = 0.0 if valid_path else float(data_config.valid_fraction)
  valid_documents = 0 if valid_path else int(data_config.get("valid_documents", 0))
  if not valid_path and not valid_documents and not 0.0 < valid_fraction < 1.0:
    raise corpus.DataError(f"data.valid_fraction must be in (0, 1) when data.valid_path is unset, got "
                           f"{valid_fraction}.")
  if not 0 <= valid_documents < len(rows):
    raise corpus.DataError(f"data.valid_documents={valid_documents} must be >= 0 and below the folder's {len(rows):,} "
                           "documents.")
  # The cuts: of the documents (padded, or data.valid_documents) or of the tokens (wrapped), valid and test at the end
  # (`split_points`).
  if padded or valid_documents:
    valid_doc, test_doc = split_points(len(rows), 0.0 if valid_documents else valid_fraction, test_fraction)
    if valid_documents:
      valid_doc = test_doc - valid_documents
    start_of = lambda d: int(rows[d, 0]) if d < len(rows) else len(stream)
    valid_cut, test_cut = start_of(valid_doc), start_of(test_doc)
    docs = [Documents(stream, rows[:valid_doc]), Documents(stream, rows[valid_doc:test_doc]),
            Documents(stream, rows[test_doc:])]
    if not padded:  # wrapped windows over whole-document splits
      docs = [Documents(stream, rows), None, None]
  else:
    valid_cut, test_cut = split_points(len(stream), valid_fraction, test_fraction)
    docs = [Documents(stream, rows), None, None]
  train, valid, test = stream.view(0, valid_cut), stream.view(valid_cut, test_cut), stream.view(test_cut, len(stream))
  train_docs, valid_docs, test_docs = docs
  if valid_path and prepared.is_prepared(valid_path):
    valid_corpus = prepared.PreparedCorpus.open(valid_path, "data.valid_path")
    _same_tokenizer(own, valid_corpus.tokenizer, f"data.valid_path={valid_path}")
    valid, valid_docs = valid_corpus.stream, Documents(valid_corpus.stream, valid_corpus.documents_Nx2)
    summary += "; " + valid_corpus.summary("data.valid_path")
  elif valid_path:
    if padded:
      raise corpus.DataError("data.layout='padded' reads the validation documents from a prepared folder: prepare "
                             f"data.valid_path={valid_path!r} too, or leave it empty (valid_fraction).")
    text = corpus.load_documents(valid_path, "data.valid_path")
    valid = _cached(pathlib.Path(cache_dir), f"{text.key}|{tokenizers.fingerprint(own)}",
                    lambda: _encode_documents(text.docs, own, valid_path, oov))
    valid_docs = None
    summary += "; " + text.summary
  if not test_fraction:
    test, test_docs = None, None
  return _checked(TokenStreams(train=train, valid=valid, tokenizer=own, summary=summary, train_docs=train_docs,
                               valid_docs=valid_docs, test=test, test_docs=test_docs), data_config)


def validation_stream(data_config, cache_dir, tokenizer, path: str = "", oov: str = "error") -> np.ndarray:
  """The validation token stream of a run's data config, or the whole of `path` (files/folders) when given, with the
  out-of-vocabulary policy `oov`."""
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  if path:
    data_config.path, data_config.valid_path, data_config.test_fraction = path, path, 0.0
  return load_token_streams(data_config, cache_dir, tokenizer=tokenizer, oov=oov).valid


def oov_report(path: str, tokenizer, oov: str) -> dict:
  """What `oov` did to the text at `path`: {"policy", "characters" (mapped to <unk> or skipped), "distinct" (each
  character with its count, most frequent first)}."""
  docs = corpus.load_documents(path, "--path").docs
  counts = collections.Counter()
  for doc in docs:
    counts.update(tokenizer.oov_counts(doc))
  return {"policy": oov, "characters": sum(counts.values()),
          "distinct": {f"{ch} (U+{ord(ch):04X})": n for ch, n in counts.most_common()}}


class _ShardCrops(grain.transforms.Map):
  """A global batch of start offsets [B] = [A micro-batches x B/A] -> this shard's block of rows of every micro-batch,
  cropped: [A * B/(A S), seq_len] int32 for shard s of S."""

  def __init__(self, tokens, seq_len: int, shard: grain.sharding.ShardOptions, accum: int):
    self.tokens, self.seq_len, self.shard, self.accum = tokens, seq_len, shard, accum

  def map(self, offsets_B):
    micro_AxM = np.asarray(offsets_B).reshape(self.accum, -1)
    rows = micro_AxM.shape[1] // self.shard.shard_count
    mine = micro_AxM[:, self.shard.shard_index * rows:(self.shard.shard_index + 1) * rows].reshape(-1)
    return np.stack([np.asarray(self.tokens[o:o + self.seq_len], np.int32) for o in mine])


def train_iterator(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                   shard: grain.sharding.ShardOptions | None = None, accum: int = 1):
  """A checkpointable grain DatasetIterator over this process's rows of [batch_size, seq_len] int32 random crops,
  forever.

  The global order is one seeded shuffle of all start offsets, batched: global batch k is offsets k*B .. (k+1)*B - 1
  (`accum` micro-batches of B/accum consecutive ones), whatever the number of processes. With `shard` (shard s of S;
  default grain.sharding.ShardByJaxProcess(), process p of P) a process crops only its contiguous block of B/(accum S)
  rows of every micro-batch, the rows its devices hold of the batch-sharded global array (`shard_batch`;
  training/sharding.MeshContext.data_shard says which), so that the processes read disjoint data and together feed
  exactly the single-process batches. The iterator state (the global batch index) is the same in every process."""
  shard = shard or grain.sharding.ShardByJaxProcess()
  if batch_size % (accum * shard.shard_count):
    raise ConfigError(f"train.batch_size={batch_size} must be divisible by train.grad_accum_steps={accum} x "
                      f"{shard.shard_count} data shards (processes).")
  dataset = (grain.MapDataset.range(len(tokens) - seq_len + 1).seed(seed).shuffle().repeat()
             .batch(batch_size, drop_remainder=True).map(_ShardCrops(tokens, seq_len, shard, accum)))
  return iter(dataset.to_iter_dataset())


class _ShardDocuments(grain.transforms.Map):
  """`_ShardCrops` for the padded layout: a global batch of document indices -> this shard's rows of every
  micro-batch, each the document's padded window (`Documents.window`)."""

  def __init__(self, docs: Documents, seq_len: int, shard: grain.sharding.ShardOptions, accum: int, special):
    self.docs, self.seq_len, self.shard, self.accum, self.special = docs, seq_len, shard, accum, special

  def map(self, indices_B):
    micro_AxM = np.asarray(indices_B).reshape(self.accum, -1)
    rows = micro_AxM.shape[1] // self.shard.shard_count
    mine = micro_AxM[:, self.shard.shard_index * rows:(self.shard.shard_index + 1) * rows].reshape(-1)
    return np.stack([self.docs.window(int(i), self.seq_len, self.special) for i in mine])


def document_iterator(docs: Documents, seq_len: int, batch_size: int, seed: int, special,
                      shard: grain.sharding.ShardOptions | None = None, accum: int = 1):
  """`train_iterator` for the padded layout: one seeded shuffle of the document indices, batched; row = the document's
  padded window. Sharded over processes and micro-batches as `train_iterator`; checkpointable."""
  shard = shard or grain.sharding.ShardByJaxProcess()
  if batch_size % (accum * shard.shard_count):
    raise ConfigError(f"train.batch_size={batch_size} must be divisible by train.grad_accum_steps={accum} x "
                      f"{shard.shard_count} data shards (processes).")
  dataset = (grain.MapDataset.range(len(docs)).seed(seed).shuffle().repeat()
             .batch(batch_size, drop_remainder=True).map(_ShardDocuments(docs, seq_len, shard, accum, special)))
  return iter(dataset.to_iter_dataset())


def document_windows(docs: Documents, seq_len: int, max_windows: int, special, placement: str = "first") -> np.ndarray:
  """`eval_windows` for the padded layout: [N, seq_len] padded windows of N = min(max_windows, documents) documents,
  the first N or N spread evenly over the split."""
  n = min(int(max_windows), len(docs))
  if placement not in ("first", "spread"):
    raise ConfigError(f"eval.windows must be 'first' or 'spread', got {placement!r}.")
  indices = range(n) if placement == "first" else np.linspace(0, len(docs) - 1, n).astype(np.int64)
  return np.stack([docs.window(int(i), seq_len, special) for i in indices]) if n else np.zeros((0, seq_len), np.int32)


def validation_windows(data_config, cache_dir, tokenizer, max_windows: int, placement: str = "first", path: str = "",
                       oov: str = "error", split: str = "valid") -> np.ndarray:
  """The evaluation windows of a run: `eval_windows` of the text at `path` when given, else of its `split` ("valid" or
  "test"), or for the padded layout `document_windows` of the split's documents."""
  seq_len = int(data_config.seq_len)
  if path:
    return eval_windows(validation_stream(data_config, cache_dir, tokenizer, path, oov), seq_len, max_windows,
                        placement)
  streams = load_token_streams(data_config, cache_dir, tokenizer=tokenizer, oov=oov)
  return split_windows(streams, data_config, max_windows, placement, split)


def split_windows(streams: TokenStreams, data_config, max_windows: int, placement: str = "first",
                  split: str = "valid") -> np.ndarray:
  """The evaluation windows of a split ("valid" or "test") in the run's layout: `eval_windows` of its tokens, or for
  the padded layout `document_windows` of its documents."""
  tokens, docs = streams.split(split)
  seq_len = int(data_config.seq_len)
  if data_config.get("layout", "wrapped") in PER_EXAMPLE_LAYOUTS:
    return document_windows(docs, seq_len, max_windows, streams.tokenizer.special, placement)
  return eval_windows(tokens, seq_len, max_windows, placement)


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int, placement: str = "first") -> np.ndarray:
  """N = min(max_windows, len // seq_len) non-overlapping windows, [N, seq_len] int32: the first N ("first"), or N at
  evenly spaced offsets over the whole stream ("spread"; offsets linspace(0, len - seq_len, N), at least seq_len
  apart because N * seq_len <= len)."""
  n = min(int(max_windows), len(tokens) // seq_len)
  if placement == "first":
    return np.asarray(tokens[:n * seq_len], np.int32).reshape(n, seq_len)
  if placement == "spread":
    if n < 1:
      raise ValueError(f"A stream of {len(tokens)} tokens has no window of {seq_len}.")
    offsets = np.linspace(0, len(tokens) - seq_len, n).astype(np.int64)
    return np.stack([np.asarray(tokens[o:o + seq_len], np.int32) for o in offsets])
  raise ConfigError(f"eval.windows must be 'first' or 'spread', got {placement!r}.")


def shard_batch(rows: np.ndarray, sharding: jax.sharding.NamedSharding, global_shape=None):
  """The global array on the mesh from this process's rows of it: all of them on a single process; with several, the
  block its devices hold (`train_iterator`'s shard). `global_shape`: the global array's shape (None:
  inferred from the sharding, which assumes that every process holds an equal block)."""
  return jax.make_array_from_process_local_data(sharding, rows, global_shape)

