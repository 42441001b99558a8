"""How every `launch/*` entry point runs: `cli.run(main)` instead of `absl.app.run(main)`.

* A user error -- a bad corpus (DataError), text the tokenizer cannot take (TokenizerError), a checkpoint that does
  not fit or is missing (CheckpointError), a config value the code cannot take (ConfigError), a bad flag value
  (absl's UsageError) -- prints one line, "error: <what
  and what to do>", on stderr and exits with status 2; with DLM_DEBUG=1 the traceback comes first. (absl would print
  a traceback, or the whole --help before a usage error.)
* `--help`, `--helpshort`, `--helpfull` and `--helpxml` exit with status 0 (absl exits 1 after printing help).
* A launcher with a config file (`--config=FILE[:ARG]`) calls `config_preflight` before defining that flag:
  `--help_config` prints every field of the config with its value, and an override `--config.a.b=v` of a field the
  config does not have is one error line naming the closest fields (ml_collections would raise a 50-line traceback at
  import time).
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import traceback

from absl import app

HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull", "--helpxml", "-help", "-helpfull")


def define_checkpoint_flags():
  """--weights=ema|raw and --checkpoint=latest|best, for the launchers that load a trained run
  (`training.checkpoint.load_for_inference(workdir, weights=..., which=...)`). Registered under the running script, so
  that its --help lists them with its own flags."""
  from absl import flags
  flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                    "Parameters to use: the EMA (when the run kept one) or the raw ones.", module_name=sys.argv[0])
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"],
                    "The latest checkpoint, or the one with the best validation NELBO (WORKDIR/best).",
                    module_name=sys.argv[0])


def user_errors() -> tuple:
  from dlm_jax.data import corpus, tokenizers
  from dlm_jax.errors import ConfigError
  from dlm_jax.training import checkpoint
  return (corpus.DataError, tokenizers.TokenizerError, checkpoint.CheckpointError, ConfigError, app.UsageError)


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


def load_config(spec: str):
  """The ConfigDict of a config file spec "path/to/file.py[:arg]" (its get_config(arg), or get_config())."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise app.UsageError(f"--config={spec}: {path} is not a file.")
  module_spec = importlib.util.spec_from_file_location("config_under_check", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_fields(tree: dict, prefix: str = "") -> list[str]:
  out = []
  for key, value in tree.items():
    out += config_fields(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
  return out


def config_preflight(default_path: str, argv=None):
  """See the module docstring; exits (0 after --help_config, 2 on an unknown field) or returns."""
  argv = list(sys.argv if argv is None else argv)
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  wants_help = "--help_config" in argv
  if not overrides and not wants_help:
    return
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), default_path)
  try:
    config = load_config(spec)
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if wants_help:
    print(f"Fields of {spec} (set any with --config.FIELD=VALUE):\n{config}")
    sys.exit(0)
  fields = config_fields(config.to_dict())
  groups = {f.rsplit(".", 1)[0] for f in fields if "." in f}
  for key in overrides:
    if key not in fields and key not in groups:
      close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
      hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
      print(f"error: --config.{key}: {spec} has no field {key!r}.{hint} See every field with --help_config.",
            file=sys.stderr)
      sys.exit(2)
