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

import concurrent.futures
import dataclasses
import glob
import json
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Callable, Iterator

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
      matches = sorted(glob.glob(os.path.expanduser(part)))
      if not matches and root is not None and not os.path.isabs(part):
        matches = sorted(glob.glob(str(root / part)))
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
  text: str
  consumed: int  # input bytes read up to the end of this document, within its file


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
      yield (text or ""), size * done // max(rows, 1)


def _jsonl_texts(path: pathlib.Path, text_field: str):
  consumed = 0
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      consumed += len(raw)
      if not raw.strip():
        continue
      try:
        record = json.loads(raw)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{number}: not a JSON object ({e}). Fix the line or remove the file.") from None
      text = record.get(text_field) if isinstance(record, dict) else None
      if not isinstance(text, str):
        raise DataError(f"{path}:{number}: no string field {text_field!r} (keys: "
                        f"{sorted(record) if isinstance(record, dict) else type(record).__name__}); set --text_field.")
      yield text, consumed


def iter_documents(files, text_field: str = "text", start: tuple[int, int] = (0, 0)) -> Iterator[Document]:
  """The documents of `files` in order (module docstring), from document `start` = (file, index in file) on."""
  for file_index, path in enumerate(files):
    if file_index < start[0]:
      continue
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
      texts = _jsonl_texts(path, text_field)
    elif suffix == ".parquet":
      texts = _parquet_texts(path, text_field)
    else:
      raw = path.read_bytes()
      problem = corpus.not_text(raw)
      if problem:
        print(f"Skipping {path}: not text ({problem}).", file=sys.stderr)
        continue
      texts = iter([(corpus.read_utf8(path, raw), len(raw))])
    for doc_index, (text, consumed) in enumerate(texts):
      if file_index == start[0] and doc_index < start[1]:
        continue
      yield Document(file_index, doc_index, text, consumed)


# Each worker process builds the tokenizer once (a process pool's initializer) and encodes batches of documents.
_WORKER_TOKENIZER = None


def _init_worker(spec: dict):
  global _WORKER_TOKENIZER
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one process per core already
  _WORKER_TOKENIZER = tokenizers.from_dict(spec)


def _encode_in_worker(texts):
  return _WORKER_TOKENIZER.encode_batch(texts, oov="error", source="--input")


class Progress:
  """One line on stderr: MB of input read, MB/s, ETA, documents, tokens, shards; redrawn in place on a terminal,
  every `every_s` seconds as new lines otherwise."""

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


def _write_atomic(path: pathlib.Path, write: Callable[[pathlib.Path], None]):
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  write(tmp)
  os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def _write_meta(output: pathlib.Path, meta: dict):
  _write_atomic(output / META, lambda p: p.write_text(json.dumps(meta, indent=1), encoding="utf-8"))


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
  inputs and settings found there. `workers` processes encode batches of about `batch_bytes` of text (default: every
  core; 1: in this process). `stop_after_shards` stops once that many shards are recorded (a test's interruption)."""
  files = resolve_inputs(input_spec, flag)
  output = pathlib.Path(output).expanduser()
  output.mkdir(parents=True, exist_ok=True)
  settings = _settings(files, tokenizer, text_field, shard_tokens)
  dtype = token_dtype(tokenizer.vocab_size)
  meta_path = output / META
  if meta_path.is_file():
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("settings") != settings:
      changed = sorted(k for k in settings if meta.get("settings", {}).get(k) != settings[k])
      raise DataError(f"--output={output} holds a preparation of other inputs or settings (differing: {changed}). "
                      "Rerun with its own flags to finish it, or choose a new --output.")
  else:
    meta = {"format": FORMAT, "settings": settings, "tokenizer": tokenizer.to_dict(), "shards": [], "complete": False}
  shards = meta["shards"]
  resumed_from = len(shards)
  sizes = [f.stat().st_size for f in files]
  before_file = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # input bytes before each file
  total_bytes = before_file[-1]
  started = time.perf_counter()
  if meta["complete"]:
    return PrepareReport(output, sum(s["documents"] for s in shards), sum(s["tokens"] for s in shards), 0, 0.0,
                         len(shards), resumed_from)
  start = tuple(shards[-1]["next"]) if shards else (0, 0)
  first_document = not shards
  done_bytes = before_file[start[0]]
  counts = {"docs": sum(s["documents"] for s in shards), "tokens": sum(s["tokens"] for s in shards), "text": 0}
  bar = Progress(total_bytes) if progress else None
  eos = np.asarray([tokenizer.special.eos], dtype)
  pending_ids, pending_rows, pending_tokens = [], [], 0  # the open shard: id arrays, (start, length) per document
  last_position = start

  def flush(next_position):
    nonlocal pending_ids, pending_rows, pending_tokens
    index = len(shards)
    tokens = np.concatenate(pending_ids) if pending_ids else np.zeros((0,), dtype)
    rows = np.asarray(pending_rows, np.int64).reshape(-1, 2)
    name = f"tokens_{index:05d}.bin"
    _write_atomic(output / name, tokens.tofile)
    _write_atomic(output / f"docs_{index:05d}.npy", lambda p: p.write_bytes(_npy_bytes(rows)))
    shards.append({"file": name, "tokens": int(len(tokens)), "documents": int(len(rows)), "next": list(next_position)})
    _write_meta(output, meta)
    pending_ids, pending_rows, pending_tokens = [], [], 0

  def batches():
    batch, size = [], 0
    for doc in iter_documents(files, text_field, start):
      batch.append(doc)
      size += len(doc.text)
      if size >= batch_bytes:
        yield batch
        batch, size = [], 0
    if batch:
      yield batch

  workers = os.cpu_count() or 1 if workers is None else int(workers)
  pool = None
  if workers > 1:
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_init_worker, initargs=(tokenizer.to_dict(),))
  try:
    encode = (lambda texts: pool.submit(_encode_in_worker, texts)) if pool else None
    in_flight = []
    source = batches()

    def results():
      exhausted = False
      while True:
        while pool is not None and not exhausted and len(in_flight) < 2 * workers:
          batch = next(source, None)
          if batch is None:
            exhausted = True
            break
          in_flight.append((batch, encode([d.text for d in batch])))
        if pool is None:
          batch = next(source, None)
          if batch is None:
            return
          yield batch, tokenizer.encode_batch([d.text for d in batch], oov="error", source=flag)
          continue
        if not in_flight:
          return
        batch, future = in_flight.pop(0)
        yield batch, future.result()

    for batch, encoded in results():
      for doc, ids in zip(batch, encoded):
        ids = np.asarray(ids, dtype)
        if not first_document:  # EOS between documents
          pending_ids.append(eos)
          pending_tokens += 1
          counts["tokens"] += 1
        pending_ids.append(ids)
        pending_rows.append((pending_tokens, len(ids)))
        pending_tokens += len(ids)
        first_document = False
        counts["docs"] += 1
        counts["tokens"] += len(ids)
        counts["text"] += len(doc.text.encode("utf-8"))
        last_position = (doc.file_index, doc.doc_index + 1)
        if pending_tokens >= shard_tokens:
          flush(last_position)
          if stop_after_shards is not None and len(shards) >= stop_after_shards:
            return PrepareReport(output, counts["docs"], counts["tokens"], counts["text"],
                                 time.perf_counter() - started, len(shards), resumed_from)
        if bar is not None:
          bar.update(max(done_bytes, before_file[doc.file_index] + doc.consumed), counts["text"], counts["docs"], counts["tokens"], len(shards))
    if not counts["docs"]:
      raise DataError(f"{flag}={input_spec!r}: no documents (empty files, or a .jsonl/.parquet without rows).")
    if pending_ids:
      flush(last_position)
    meta["complete"] = True
    meta["documents"], meta["tokens"] = counts["docs"], counts["tokens"]
    _write_meta(output, meta)
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  seconds = time.perf_counter() - started
  if bar is not None:
    bar.update(total_bytes, counts["text"], counts["docs"], counts["tokens"], len(shards), final=True)
  return PrepareReport(output, counts["docs"], counts["tokens"], counts["text"], seconds, len(shards), resumed_from)


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
