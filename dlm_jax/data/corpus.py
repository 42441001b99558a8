"""Where text comes from: the embedded default corpus, files and folders under DLM_DATA_DIR, strict UTF-8 reading.

`data.path` (and `data.valid_path`) accept
  * "embedded:pydoc_topics": the CPython documentation topics of the standard-library module `pydoc_data.topics`
    (~465k characters, present in every Python installation): the default corpus, no download, no ../shared needed;
  * a file or a folder (every regular file below it, sorted, but hidden files and everything inside hidden folders such
    as .git or .venv), or several joined by commas. A relative path is looked up in the working directory first, then
    in the data directory: $DLM_DATA_DIR, else ../shared/data when it exists.
A file must be text: UTF-8 without NUL bytes and with at most `CONTROL_SHARE` of control characters (tab, newline,
carriage return, form feed and vertical tab are text). Inside a folder a file that is not text is skipped and counted;
a file named by itself is refused, and so is a corpus whose characters are mostly control characters.
Corpora are read in place and never copied into the project.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

EMBEDDED_PREFIX = "embedded:"
CONTROL_SHARE = 0.3  # a file whose first 64 KiB hold more control bytes than this share is not text
TEXT_CONTROLS = frozenset(b"\t\n\r\x0b\x0c")


class DataError(ValueError):
  """Bad data input; the message names the file/flag/value and what to do."""


def data_dir() -> pathlib.Path | None:
  """$DLM_DATA_DIR, else ../shared/data relative to the working directory or to this repository, if present."""
  if os.environ.get("DLM_DATA_DIR"):
    return pathlib.Path(os.environ["DLM_DATA_DIR"])
  for base in (pathlib.Path.cwd(), pathlib.Path(__file__).resolve().parents[2]):
    candidate = base.parent / "shared" / "data"
    if candidate.is_dir():
      return candidate
  return None


def _is_hidden(path: pathlib.Path, folder: pathlib.Path) -> bool:
  return any(part.startswith(".") for part in path.relative_to(folder).parts)


def _resolve(spec: str, flag: str):
  """(files, the ones found inside a named folder, hidden entries skipped) of a comma-separated spec; raises DataError
  naming the missing path and where it looked."""
  files, in_folders, hidden = [], set(), 0
  for part in [p.strip() for p in spec.split(",") if p.strip()]:
    candidates = [pathlib.Path(part).expanduser()]
    root = data_dir()
    if root is not None and not candidates[0].is_absolute():
      candidates.append(root / part)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
      looked = ", ".join(str(c) for c in candidates)
      raise DataError(f"{flag}={spec!r}: {part!r} does not exist (looked at {looked}). Set {flag} to an existing "
                      "file or folder, or DLM_DATA_DIR to the folder that holds it.")
    if found.is_dir():
      every = sorted(p for p in found.rglob("*") if p.is_file())
      inside = [p for p in every if not _is_hidden(p, found)]
      hidden += len(every) - len(inside)
      if not inside:
        raise DataError(f"{flag}={spec!r}: folder {found} holds no files"
                        f"{f' (but {len(every)} hidden ones)' if every else ''}.")
      files.extend(inside)
      in_folders.update(inside)
    else:
      files.append(found)
  if not files:
    raise DataError(f"{flag} is empty: name a file, a folder or 'embedded:pydoc_topics'.")
  return files, in_folders, hidden


def resolve(spec: str, flag: str = "data.path") -> list[pathlib.Path]:
  """Files named by a comma-separated spec (module docstring); raises DataError naming the missing path and where it
  looked."""
  return _resolve(spec, flag)[0]


def not_text(raw: bytes) -> str:
  """Why the bytes of a file are not text ("" when they are): NUL bytes, or more than CONTROL_SHARE control bytes in
  the first 64 KiB."""
  head = raw[:65536]
  if b"\x00" in head:
    return "it holds NUL bytes"
  control = sum(1 for byte in head if (byte < 32 and byte not in TEXT_CONTROLS) or byte == 127)
  if head and control / len(head) > CONTROL_SHARE:
    return f"{control / len(head):.0%} of its first {len(head):,} bytes are control characters"
  return ""


def read_utf8(path: pathlib.Path, raw: bytes | None = None) -> str:
  raw = path.read_bytes() if raw is None else raw
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start} ({raw[e.start:e.start + 4]!r}: {e.reason}). "
                    "Convert the file to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`) or remove it from the corpus.") from None


def write_atomic(path: pathlib.Path, write):
  """`write(tmp)` to a temporary file beside `path` (same suffix: np.save keeps the name), then renames it onto `path`:
  a reader never sees half a file, and an interrupted write leaves only the temporary file behind."""
  tmp = path.with_suffix(f".tmp{os.getpid()}{path.suffix}")
  write(tmp)
  os.replace(tmp, path)


def embedded_documents(name: str) -> list[str]:
  if name == "pydoc_topics":
    from pydoc_data import topics
    return [topics.topics[key] for key in sorted(topics.topics)]
  raise DataError(f"Unknown embedded corpus {EMBEDDED_PREFIX}{name!r}; the only one is 'embedded:pydoc_topics'.")


@dataclasses.dataclass
class Corpus:
  docs: list  # one string per file (per topic for the embedded corpus)
  key: str  # the cache key: paths with sizes and modification times
  summary: str  # what was read, for the run's first lines: files, bytes, the first names, what was skipped


def load_documents(spec: str, flag: str = "data.path") -> Corpus:
  """The documents of a corpus spec (module docstring), its cache key and a one-line summary of what was read."""
  if spec.startswith(EMBEDDED_PREFIX):
    docs = embedded_documents(spec[len(EMBEDDED_PREFIX):])
    return Corpus(docs, spec, f"{spec}: {len(docs)} documents, {sum(map(len, docs)):,} characters")
  files, in_folders, hidden = _resolve(spec, flag)
  docs, read, skipped = [], [], []
  for path in files:
    raw = path.read_bytes()
    problem = not_text(raw)
    if problem and path in in_folders:
      skipped.append(path)
      continue
    if problem:
      raise DataError(f"{flag}={spec!r}: {path} is not text ({problem}). Name UTF-8 text files, or a folder of them.")
    docs.append(read_utf8(path, raw))
    read.append(path)
  if not read:
    raise DataError(f"{flag}={spec!r}: none of its {len(files)} file(s) is text (e.g. {skipped[0]}: "
                    f"{not_text(skipped[0].read_bytes())}). Name UTF-8 text files.")
  if not any(d.strip() for d in docs):
    raise DataError(f"{flag}={spec!r}: the corpus ({len(read)} file(s)) holds no text.")
  characters = sum(map(len, docs))
  controls = sum(1 for d in docs for ch in d if (ord(ch) < 32 and ord(ch) not in TEXT_CONTROLS) or ord(ch) == 127)
  if controls > characters / 2:
    raise DataError(f"{flag}={spec!r}: {controls:,} of its {characters:,} characters are control characters: not a "
                    "text corpus. Name UTF-8 text files.")
  key = ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in read)
  names = ", ".join(f.name for f in read[:3]) + (", ..." if len(read) > 3 else "")
  notes = [f"{n} {what} skipped" for n, what in ((hidden, "hidden"), (len(skipped), "not text")) if n]
  summary = (f"{flag}={spec}: {len(read)} file(s), {sum(f.stat().st_size for f in read):,} bytes ({names})"
             f"{'; ' + ', '.join(notes) if notes else ''}")
  return Corpus(docs, key, summary)
