"""How every `launch/*` entry point runs: `cli.run(main)` instead of `absl.app.run(main)`.

* A user error -- a bad corpus (DataError), text the tokenizer cannot take (TokenizerError), a checkpoint that does
  not fit or is missing (CheckpointError), a bad flag value (absl's UsageError) -- prints one line, "error: <what
  and what to do>", on stderr and exits with status 2; with DLM_DEBUG=1 the traceback comes first. (absl would print
  a traceback, or the whole --help before a usage error.)
* `--help`, `--helpshort`, `--helpfull` and `--helpxml` exit with status 0 (absl exits 1 after printing help).
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app

HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml", "-help", "-helpfull")


def user_errors() -> tuple:
  from dlm_jax.data import corpus, tokenizers
  from dlm_jax.training import checkpoint
  return (corpus.DataError, tokenizers.TokenizerError, checkpoint.CheckpointError, app.UsageError)


def run(main, argv=None):
  argv = list(sys.argv if argv is None else argv)
  asked_for_help = any(a.split("=")[0] in HELP_FLAGS for a in argv[1:])
  try:
    app.run(lambda args: _guarded(main, args), argv=argv)
  except SystemExit as e:
    if asked_for_help and e.code == 1:
      sys.exit(0)
    raise


def _guarded(main, args):
  try:
    return main(args)
  except user_errors() as e:
    if os.environ.get("DLM_DEBUG"):
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
