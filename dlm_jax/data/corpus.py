"""Where text comes from: the embedded default corpus, files and folders under DLM_DATA_DIR, strict UTF-8 reading.

`data.path` (and `data.valid_path`) accept
  * "embedded:pydoc_topics": the CPython documentation topics of the standard-library module `pydoc_data.topics`
    (~465k characters, present in every Python installation): the default corpus, no download, no ../shared needed;
  * a file or a folder (every regular file below it, sorted), or several joined by commas. A relative path is looked up
    in the working directory first, then in the data directory: $DLM_DATA_DIR, else ../shared/data when it exists.
Corpora are read in place and never copied into the project.
"""
from __future__ import annotations

import os
import pathlib

EMBEDDED_PREFIX = "embedded:"


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


def resolve(spec: str, flag: str = "data.path") -> list[pathlib.Path]:
  """Files named by a comma-separated spec; raises DataError naming the missing path and where it looked."""
  files = []
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
      inside = sorted(p for p in found.rglob("*") if p.is_file() and not p.name.startswith("."))
      if not inside:
        raise DataError(f"{flag}={spec!r}: folder {found} holds no files.")
      files.extend(inside)
    else:
      files.append(found)
  if not files:
    raise DataError(f"{flag} is empty: name a file, a folder or 'embedded:pydoc_topics'.")
  return files


def read_utf8(path: pathlib.Path) -> str:
  raw = path.read_bytes()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start} ({raw[e.start:e.start + 4]!r}: {e.reason}). "
                    "Convert the file to UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`) or remove it from the corpus.") from None


def embedded_documents(name: str) -> list[str]:
  if name == "pydoc_topics":
    from pydoc_data import topics
    return [topics.topics[key] for key in sorted(topics.topics)]
  raise DataError(f"Unknown embedded corpus {EMBEDDED_PREFIX}{name!r}; the only one is 'embedded:pydoc_topics'.")


def load_documents(spec: str, flag: str = "data.path") -> tuple[list[str], str]:
  """The documents (one per file, or per topic for the embedded corpus) and a description for error messages and
  the cache key (paths with sizes and modification times)."""
  if spec.startswith(EMBEDDED_PREFIX):
    return embedded_documents(spec[len(EMBEDDED_PREFIX):]), spec
  files = resolve(spec, flag)
  docs = [read_utf8(f) for f in files]
  if not any(d.strip() for d in docs):
    raise DataError(f"{flag}={spec!r}: the corpus ({len(files)} file(s)) holds no text.")
  key = ";".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
  return docs, key
