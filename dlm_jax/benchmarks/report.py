"""Where a benchmark row comes from and where it goes: the commit it measured, and the markdown table it joins."""
from __future__ import annotations

import pathlib
import subprocess


def commit(repo) -> str:
  """The short HEAD commit of `repo`, with "+dirty" when tracked files other than BENCHMARKS.md differ from it."""
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
                           cwd=repo, capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def append_rows(path, header: str, rows: str):
  """Adds `rows` at the end of the markdown table that starts with `header` in the file at `path` (a new table at the
  end of the file if there is none)."""
  out = pathlib.Path(path)
  text = out.read_text(encoding="utf-8") if out.exists() else ""
  if header not in text:
    text += ("\n" if text and not text.endswith("\n\n") else "") + header
  start = text.index(header) + len(header)
  end = text.find("\n\n", start - 1)
  end = len(text) if end < 0 else end + 1
  out.write_text(text[:end] + rows + text[end:], encoding="utf-8")
  print(f"Appended to {out}:\n{rows}")
