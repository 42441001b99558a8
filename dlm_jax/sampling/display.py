"""Turning sampler outputs into text: per-step frames of a trajectory and the streaming terminal view."""
from __future__ import annotations

import sys
import time

import numpy as np


def trajectory_frames(tokenizer, trajectory_SxL) -> list[str]:
  """The decoded text after every reverse step (masked positions drawn as the mask glyph)."""
  return [tokenizer.decode(row) for row in np.asarray(trajectory_SxL)]


def stream(frames, delay: float = 0.05, out=sys.stdout):
  """Redraws one line per frame in place, so the text fills in step by step (newlines shown as '⏎')."""
  width = 0
  for frame in frames:
    line = frame.replace("\n", "\u23ce")
    out.write("\r" + " " * width + "\r" + line)
    out.flush()
    width = len(line)
    if delay:
      time.sleep(delay)
  out.write("\n")
  out.flush()
