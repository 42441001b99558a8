"""Corpora at scale: text tokenized once, with all cores, into sharded memory-mapped token files
(`python -m launch.prepare_data`), read back as one token stream (the wrapped layout) or as documents (the padded one),
never loaded into memory whole.

A prepared folder holds

    meta.json          FORMAT, the tokenizer (its to_dict), the token dtype, the inputs (path, bytes, mtime), the
                       settings, the shards written so far and whether the preparation is complete
    tokens_00000.bin   the ids (uint16 when the vocabulary fits, else uint32) of whole documents, each but the corpus's
                       first preceded by the tokenizer's EOS: the shards concatenated are the documents joined by EOS,
                       the same stream `data.path` gives for the same text (pipeline._encode_documents)
    docs_00000.npy     int64 [D, 2]: each document's (start, length) in its shard, the EOS before it excluded

Documents: a text file is one document (as for `data.path`); a `.jsonl` file gives one per line (the `text_field`
string of each JSON object; blank lines skipped); a `.parquet` file one per row of its `text_field` column (needs
pyarrow). Folders are read as `data.path` reads them (sorted, hidden entries skipped; a file that is not text is skipped
unless its name says .jsonl or .parquet); a comma-separated part with * or ? is a glob.

Resumption: a shard closes once it holds `shard_tokens` tokens or more, after a whole document, so the shard
boundaries depend only on the inputs and settings; each shard is written atomically (temporary file + rename) and
recorded in meta.json after it. A preparation that stops (killed, out of disk) resumes at the document after its last
recorded shard, and the folder it completes is byte for byte the one an uninterrupted run writes.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import json
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Iterator

import numpy as np

from dlm_jax.data import corpus, tokenizers
from dlm_jax.data.corpus import DataError

FORMAT = "dlm_jax.prepared/1"
META = "meta.json"
STRUCTURED = (".jsonl", ".parquet")  # file suffixes read as one document per line / row


def is_prepared(path) -> bool:
  """Whether `path` is a folder written by `prepare` (it holds a meta.json of this FORMAT)."""
  meta = pathlib.Path(str(path)).expanduser() / META
  if not meta.is_file():
    return False
  try:
    return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
  except (json.JSONDecodeError, UnicodeDecodeError):
    return False


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def resolve_inputs(spec: str, flag: str = "--input") -> list[pathlib.Path]:
  """The files of a comma-separated spec: globs (parts with * or ?) expanded and sorted, files and folders as
  `corpus.resolve` reads them. Raises DataError naming a glob that matches nothing."""
  files = []
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    if any(ch in part for ch in "*?["):
      root = corpus.data_dir()
      matches = sorted(glob.glob(os.path.expanduser(part), recursive=True))
      if not matches and root is not None and not os.path.isabs(part):
        matches = sorted(glob.glob(str(root / part), recursive=True))
      if not matches:
        raise DataError(f"{flag}={spec!r}: the pattern {part!r} matches no file.")
      files.extend(pathlib.Path(m) for m in matches if os.path.isfile(m))
    else:
      files.extend(corpus.resolve(part, flag))
  return files


@dataclasses.dataclass(frozen=True)
class Document:
  file_index: int
  doc_index: int  # within its file
  text: object  # the text (str), or with `raw` a .jsonl line's bytes, parsed by `document_text` in the encoder
  consumed: int  # input bytes read up to the end of this document, within its file
  where: str = ""  # "path:line" of a .jsonl line


def document_text(payload, where: str, text_field: str) -> str:
  """The text of a document's payload: itself, or the `text_field` string of a .jsonl line (DataError naming
  `where` when the line is not a JSON object with that string)."""
  if isinstance(payload, str):
    return payload
  try:
    record = json.loads(payload)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{where}: not a JSON object ({e}). Fix the line or remove the file.") from None
  text = record.get(text_field) if isinstance(record, dict) else None
  if not isinstance(text, str):
    raise DataError(f"{where}: no string field {text_field!r} (keys: "
                    f"{sorted(record) if isinstance(record, dict) else type(record).__name__}); set --text_field.")
  return text


def _parquet_texts(path: pathlib.Path, text_field: str):
  try:
    import pyarrow.parquet as pq
  except ImportError as e:
    raise DataError(f"{path}: reading .parquet needs pyarrow: pip install pyarrow.") from e
  reader = pq.ParquetFile(path)
  if text_field not in reader.schema_arrow.names:
    raise DataError(f"{path}: no column {text_field!r} (it has {reader.schema_arrow.names}); set --text_field.")
  rows, size, done = reader.metadata.num_rows, path.stat().st_size, 0
  for batch in reader.iter_batches(columns=[text_field]):
    for text in batch.column(0).to_pylist():
      done += 1
      yield (text or ""), size * done // max(rows, 1), ""


def _jsonl_lines(path: pathlib.Path):
  consumed = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      consumed += len(raw)
      if raw.strip():
        yield raw, consumed, f"{path}:{number}"


def iter_documents(files, text_field: str = "text", start: tuple[int, int] = (0, 0),
                   raw: bool = False) -> Iterator[Document]:
  """The documents of `files` in order (module docstring), from document `start` = (file, index in file) on; with
  `raw`, a .jsonl line's text is left as its bytes (parsed later by the encoder, `document_text`)."""
  for file_index, path in enumerate(files):
    if file_index < start[0]:
      continue
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
      payloads = _jsonl_lines(path)
    elif suffix == ".parquet":
      payloads = _parquet_texts(path, text_field)
    else:
      data = path.read_bytes()
      problem = corpus.not_text(data)
      if problem:
        print(f"Skipping {path}: not text ({problem}).", file=sys.stderr)
        continue
      payloads = iter([(corpus.read_utf8(path, data), len(data), "")])
    for doc_index, (payload, consumed, where) in enumerate(payloads):
      if file_index == start[0] and doc_index < start[1]:
        continue
      if not raw and not isinstance(payload, str):
        payload = document_text(payload, where, text_field)
      yield Document(file_index, doc_index, payload, consumed, where)


def encode_documents(tokenizer, payloads, wheres, text_field: str, dtype):
  """(ids of the documents concatenated [dtype], their lengths int64 [n], their UTF-8 bytes): one batch's work, in a
  worker process or in this one."""
  texts = [document_text(p, w, text_field) for p, w in zip(payloads, wheres)]
  encoded = tokenizer.encode_batch(texts, oov="error", source="--input")
  lengths = np.asarray([len(e) for e in encoded], np.int64)
  ids = np.concatenate(encoded).astype(dtype) if encoded else np.zeros((0,), dtype)
  return ids, lengths, sum(len(t.encode("utf-8")) for t in texts)


# Each worker process builds the tokenizer once (a process pool's initializer) and encodes batches of documents.
_WORKER = None


def _init_worker(spec: dict, text_field: str, dtype: str):
  global _WORKER
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
  _WORKER = (tokenizers.from_dict(spec), text_field, np.dtype(dtype))


def _encode_in_worker(payloads, wheres):
  tokenizer, text_field, dtype = _WORKER
  return encode_documents(tokenizer, payloads, wheres, text_field, dtype)


class Progress:
  """One line on stderr: MB of input read, MB/s of text, ETA, documents, tokens, shards; redrawn in place on a
  terminal, every `every_s` seconds (at least 10 s) as new lines otherwise."""

  def __init__(self, total_bytes: int, stream=sys.stderr, every_s: float = 0.5):
    self.total, self.stream, self.start, self.last = total_bytes, stream, time.perf_counter(), 0.0
    self.tty = getattr(stream, "isatty", lambda: False)()
    self.every = every_s if self.tty else max(every_s, 10.0)

  def line(self, done_bytes: int, text_bytes: int, docs: int, tokens: int, shards: int) -> str:
    seconds = max(time.perf_counter() - self.start, 1e-9)
    rate = text_bytes / seconds / 1e6
    left = (self.total - done_bytes) / max(done_bytes / seconds, 1e-9)
    eta = time.strftime("%H:%M:%S", time.gmtime(min(left, 359999))) if done_bytes else "--:--:--"
    share = 100.0 * done_bytes / max(self.total, 1)
    return (f"{done_bytes / 1e6:,.1f}/{self.total / 1e6:,.1f} MB ({share:.0f}%), {rate:,.2f} MB/s, ETA {eta}, "
            f"{docs:,} documents, {tokens:,} tokens, {shards} shards")

  def update(self, *args, final: bool = False):
    now = time.perf_counter()
    if not final and now - self.last < self.every:
      return
    self.last = now
    text = self.line(*args)
    self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
    self.stream.flush()


def _settings(files, tokenizer, text_field: str, shard_tokens: int) -> dict:
  return {"inputs": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
          "tokenizer_fingerprint": tokenizers.fingerprint(tokenizer), "text_field": text_field,
          "shard_tokens": int(shard_tokens), "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name}


def _write_meta(output: pathlib.Path, meta: dict):
  corpus.write_atomic(output / META, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))


class _ShardWriter:
  """Joins encoded documents with EOS into shards of whole documents, each closed after the document that brings it
  to `shard_tokens`, written atomically and then recorded in meta.json with the position of the next document."""

  def __init__(self, output: pathlib.Path, meta: dict, dtype, eos: int, shard_tokens: int):
    self.output, self.meta, self.dtype, self.eos, self.shard_tokens = output, meta, dtype, eos, shard_tokens
    self.first = not meta["shards"]  # the corpus's first document has no EOS before it
    self.pieces, self.rows, self.tokens = [], [], 0  # the open shard

  @property
  def shards(self) -> list:
    return self.meta["shards"]

  def add(self, ids, lengths, positions_Nx2, stop_after: int | None = None) -> bool:
    """Appends a batch of documents (ids concatenated, their lengths, each one's (file, index)); returns True once
    `stop_after` shards are recorded (the rest of the batch is then dropped: a resumed run redoes it)."""
    n = len(lengths)
    separated = np.ones(n, bool)
    if self.first and n:
      separated[0], self.first = False, False
    starts = np.cumsum(lengths + separated) - lengths  # each document's first token, in the joined batch
    ends = starts + lengths
    joined = np.full(int(ends[-1]) if n else 0, self.eos, self.dtype)
    keep = np.ones(len(joined), bool)
    keep[(starts - 1)[separated]] = False
    joined[keep] = ids
    while n:
      j = int(np.searchsorted(self.tokens + ends, self.shard_tokens, side="left"))
      if j >= n:
        self._append(joined, starts, lengths)
        return False
      cut = int(ends[j])
      self._append(joined[:cut], starts[:j + 1], lengths[:j + 1])
      self._flush(positions_Nx2[j] + (0, 1))
      if stop_after is not None and len(self.shards) >= stop_after:
        return True
      joined, starts, lengths, ends = joined[cut:], starts[j + 1:] - cut, lengths[j + 1:], ends[j + 1:] - cut
      positions_Nx2, n = positions_Nx2[j + 1:], n - j - 1
    return False

  def _append(self, joined, starts, lengths):
    self.pieces.append(joined)
    self.rows.append(np.stack([self.tokens + starts, lengths], axis=1))
    self.tokens += len(joined)

  def _flush(self, next_position):
    index = len(self.shards)
    tokens = np.concatenate(self.pieces) if self.pieces else np.zeros((0,), self.dtype)
    rows = np.concatenate(self.rows).astype(np.int64) if self.rows else np.zeros((0, 2), np.int64)
    name = f"tokens_{index:05d}.bin"
    corpus.write_atomic(self.output / name, tokens.tofile)
    corpus.write_atomic(self.output / f"docs_{index:05d}.npy", lambda tmp: np.save(tmp, rows))
    self.shards.append({"file": name, "tokens": int(len(tokens)), "documents": int(len(rows)),
                        "next": [int(v) for v in next_position]})
    _write_meta(self.output, self.meta)
    self.pieces, self.rows, self.tokens = [], [], 0

  def finish(self, next_position):
    if self.pieces:
      self._flush(next_position)
    self.meta["complete"] = True
    self.meta["documents"] = sum(s["documents"] for s in self.shards)
    self.meta["tokens"] = sum(s["tokens"] for s in self.shards)
    _write_meta(self.output, self.meta)


@dataclasses.dataclass
class PrepareReport:
  output: pathlib.Path
  documents: int
  tokens: int
  text_bytes: int  # UTF-8 bytes of the documents tokenized in this call
  seconds: float  # of this call
  shards: int
  resumed_from: int  # shards already there when the call started

  @property
  def mb_per_s(self) -> float:
    return self.text_bytes / max(self.seconds, 1e-9) / 1e6


def prepare(input_spec: str, tokenizer, output, *, text_field: str = "text", shard_tokens: int = 1 << 27,
            workers: int | None = None, batch_bytes: int = 1 << 20, progress: bool = True,
            stop_after_shards: int | None = None, flag: str = "--input") -> PrepareReport:
  """Tokenizes the documents of `input_spec` into `output` (module docstring), resuming a preparation of the same
  inputs and settings found there. `workers` processes encode batches of about `batch_bytes` of input, in order
  (default: one per core; 1: this process; the main process reads the inputs and writes the shards). Stops once
  `stop_after_shards` shards are recorded (a test's interruption)."""
  files = resolve_inputs(input_spec, flag)
  output = pathlib.Path(output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  settings = _settings(files, tokenizer, text_field, shard_tokens)
  dtype = token_dtype(tokenizer.vocab_size)
  if (output / META).is_file():
    meta = json.loads((output / META).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("settings") != settings:
      changed = sorted(k for k in settings if meta.get("settings", {}).get(k) != settings[k])
      raise DataError(f"--output={output} holds a preparation of other inputs or settings (differing: {changed}). "
                      "Rerun with its own flags to finish it, or choose a new --output.")
  else:
    meta = {"format": FORMAT, "settings": settings, "tokenizer": tokenizer.to_dict(), "shards": [], "complete": False}
  writer = _ShardWriter(output, meta, dtype, tokenizer.special.eos, int(shard_tokens))
  shards = writer.shards
  resumed_from, started = len(shards), time.perf_counter()
  counts = {"docs": sum(s["documents"] for s in shards), "tokens": sum(s["tokens"] for s in shards), "text": 0}
  if meta["complete"]:
    return PrepareReport(output, counts["docs"], counts["tokens"], 0, 0.0, len(shards), resumed_from)
  start = tuple(shards[-1]["next"]) if shards else (0, 0)
  before_file = np.concatenate([[0], np.cumsum([f.stat().st_size for f in files])]).tolist()  # bytes before each file
  bar = Progress(before_file[-1]) if progress else None

  def batches():
    """Lists of documents of about batch_bytes of input each."""
    batch, size = [], 0
    for doc in iter_documents(files, text_field, start, raw=True):
      batch.append(doc)
      size += len(doc.text)
      if size >= batch_bytes:
        yield batch
        batch, size = [], 0
    if batch:
      yield batch

  workers = (os.cpu_count() or 1) if workers is None else int(workers)
  pool = None
  if workers > 1:
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_init_worker,
                                                  initargs=(tokenizer.to_dict(), text_field, np.dtype(dtype).name))

  def encoded_batches():
    """(batch, (ids, lengths, text bytes)) in input order; with a pool, up to 2 batches per worker in flight."""
    if pool is None:
      for batch in batches():
        yield batch, encode_documents(tokenizer, [d.text for d in batch], [d.where for d in batch], text_field, dtype)
      return
    in_flight, source = collections.deque(), batches()
    for batch in source:
      in_flight.append((batch, pool.submit(_encode_in_worker, [d.text for d in batch], [d.where for d in batch])))
      if len(in_flight) >= 2 * workers:
        done_batch, future = in_flight.popleft()
        yield done_batch, future.result()
    while in_flight:
      done_batch, future = in_flight.popleft()
      yield done_batch, future.result()

  last = start
  try:
    for batch, (ids, lengths, text_bytes) in encoded_batches():
      positions = np.asarray([(d.file_index, d.doc_index) for d in batch], np.int64)
      if writer.add(ids, lengths, positions, stop_after_shards):
        return PrepareReport(output, sum(s["documents"] for s in shards), sum(s["tokens"] for s in shards),
                             counts["text"], time.perf_counter() - started, len(shards), resumed_from)
      counts["docs"] += len(batch)
      counts["tokens"] = sum(s["tokens"] for s in shards) + writer.tokens
      counts["text"] += text_bytes
      last = (batch[-1].file_index, batch[-1].doc_index + 1)
      if bar is not None:
        bar.update(before_file[batch[-1].file_index] + batch[-1].consumed, counts["text"], counts["docs"],
                   counts["tokens"], len(shards))
    if not counts["docs"]:
      raise DataError(f"{flag}={input_spec!r}: no documents (empty files, or a .jsonl/.parquet without rows).")
    writer.finish(last)
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  if bar is not None:
    bar.update(before_file[-1], counts["text"], counts["docs"], counts["tokens"], len(shards), final=True)
  return PrepareReport(output, meta["documents"], meta["tokens"], counts["text"], time.perf_counter() - started,
                       len(shards), resumed_from)


class TokenStream:
  """Shards read as one token sequence without loading them: `len`, and `[a:b]` (step 1) gives those tokens as a new
  int32 array, read from the memory-mapped shards it spans; `[i]` one token. `view(a, b)` is the sub-stream [a, b)
  (the train/valid split), itself a TokenStream."""

  def __init__(self, shards, start: int = 0, stop: int | None = None):
    self.shards = list(shards)
    self.ends = np.cumsum([len(s) for s in self.shards]).astype(np.int64)
    total = int(self.ends[-1]) if len(self.ends) else 0
    self.start, self.stop = int(start), total if stop is None else int(stop)

  def __len__(self) -> int:
    return self.stop - self.start

  def view(self, start: int, stop: int) -> "TokenStream":
    start, stop, _ = slice(start, stop).indices(len(self))
    return TokenStream(self.shards, self.start + start, self.start + max(stop, start))

  def _read(self, a: int, b: int) -> np.ndarray:
    """Tokens [a, b) of the whole concatenation."""
    out, first = [], int(np.searchsorted(self.ends, a, side="right"))
    for k in range(first, len(self.shards)):
      begin = int(self.ends[k - 1]) if k else 0
      if begin >= b:
        break
      out.append(np.asarray(self.shards[k][max(a - begin, 0):min(b - begin, len(self.shards[k]))]))
    return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)

  def __getitem__(self, key):
    if isinstance(key, slice):
      start, stop, step = key.indices(len(self))
      if step != 1:
        raise IndexError("A TokenStream is sliced with step 1.")
      return self._read(self.start + start, self.start + max(stop, start))
    index = int(key) + (len(self) if int(key) < 0 else 0)
    if not 0 <= index < len(self):
      raise IndexError(f"token {key} of a stream of {len(self)}")
    return self._read(self.start + index, self.start + index + 1)[0]

  def __array__(self, dtype=None, copy=None):
    tokens = self[:]
    return tokens if dtype is None else tokens.astype(dtype)


@dataclasses.dataclass
class PreparedCorpus:
  """A complete prepared folder, opened: its tokenizer, the token stream of all shards and the document table."""
  path: pathlib.Path
  tokenizer: object
  stream: TokenStream
  documents_Nx2: np.ndarray  # int64 (start, length) of each document in `stream`, in order
  text_bytes: int

  @classmethod
  def open(cls, path, flag: str = "data.path") -> "PreparedCorpus":
    path = pathlib.Path(str(path)).expanduser()
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    if not meta.get("complete"):
      raise DataError(f"{flag}={path}: the preparation stopped after {len(meta.get('shards', []))} shard(s). Rerun "
                      "python -m launch.prepare_data with the same flags to finish it.")
    dtype = np.dtype(meta["settings"]["dtype"])
    shards, tables, offset = [], [], 0
    for shard in meta["shards"]:
      file = path / shard["file"]
      if not file.is_file() or file.stat().st_size != shard["tokens"] * dtype.itemsize:
        raise DataError(f"{flag}={path}: {file.name} is missing or has the wrong size; prepare the corpus again.")
      shards.append(np.memmap(file, dtype, mode="r") if shard["tokens"] else np.zeros((0,), dtype))
      rows = np.load(path / shard["file"].replace("tokens_", "docs_").replace(".bin", ".npy"))
      tables.append(rows + np.asarray([offset, 0], np.int64))
      offset += shard["tokens"]
    documents = np.concatenate(tables) if tables else np.zeros((0, 2), np.int64)
    text = sum(size for _, size, _ in meta["settings"]["inputs"])
    return cls(path, tokenizers.from_dict(meta["tokenizer"]), TokenStream(shards), documents, text)

  def summary(self, flag: str = "data.path") -> str:
    return (f"{flag}={self.path}: prepared, {len(self.documents_Nx2):,} documents, {len(self.stream):,} tokens "
            f"({self.tokenizer.kind} tokenizer) from {self.text_bytes:,} input bytes")
