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


def define_sample_flags(default_samples: int = 4):
  """The flags of sampling a trained run: --workdir, --prompt, --suffix, --length, --num_samples, --seed, the
  checkpoint flags and one flag per field a user sets in config.sample (`SamplerConfig.config_section`, less
  num_samples), default None: the run's value (launch.sample and a wing's sampling CLI share them;
  `sampler_overrides(FLAGS)` reads the latter back)."""
  from absl import flags
  from dlm_jax.sampling import sampler as sampler_lib
  here = {"module_name": sys.argv[0]}
  flags.DEFINE_string("workdir", "runs/default", "Training run to sample from.", **here)
  flags.DEFINE_string("prompt", "", "Text fixed at the start of every sample.", **here)
  flags.DEFINE_string("suffix", "", "Text fixed at the end (infilling between --prompt and --suffix).", **here)
  flags.DEFINE_integer("num_samples", default_samples, "Batch size.", **here)
  flags.DEFINE_integer("length", None, "New tokens to generate (default: fill the model's context).", **here)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", **here)
  flags.DEFINE_integer("steps", None, "Reverse steps (default: the run's config.sample.steps).", **here)
  flags.DEFINE_enum("method", None, list(sampler_lib.METHODS), "Sampler (default: the run's config): confidence or "
                    "ancestral for masked models; ancestral or greedy for uniform-state (Duo) ones; tweedie for SEDD.",
                    **here)
  flags.DEFINE_enum("confidence", None, list(sampler_lib.CONFIDENCES), "What ranks the masked positions for reveal "
                    "(default: the run's config): the candidate's probability (prob), the top-2 margin (margin) or "
                    "the predictive entropy, lowest first (entropy).", **here)
  flags.DEFINE_bool("greedy", None, "Argmax candidates instead of sampling them.", **here)
  flags.DEFINE_float("temperature", None, "Sampling temperature.", **here)
  flags.DEFINE_integer("top_k", None, "Top-k filtering (0 = off).", **here)
  flags.DEFINE_float("top_p", None, "Nucleus filtering (1.0 = off).", **here)
  flags.DEFINE_string("reveal_schedule", None, "Reveal schedule (linear, cosine, ...; default: the training "
                      "schedule).", **here)
  flags.DEFINE_float("reveal_noise", None, "MaskGIT choice temperature on the reveal ranking (0 = pure confidence).",
                     **here)
  flags.DEFINE_float("strategic_weight", None, "HRM denoiser: weight of the H-module's priority in the reveal "
                     "ranking.", **here)
  flags.DEFINE_integer("block_length", None, "Semi-autoregressive blocks of this many new tokens (0: one block).",
                       **here)
  flags.DEFINE_float("threshold", None, "Fast-dLLM: reveal every masked token with confidence above this (0: off).",
                     **here)
  flags.DEFINE_float("confidence_stop", None, "Reveal the rest of a block once all its confidences reach this (0: "
                     "off).", **here)
  flags.DEFINE_bool("eos_stop", None, "Variable length: nothing after the first generated EOS is kept.", **here)
  flags.DEFINE_enum("remasking", None, list(sampler_lib.REMASKING), "Remasking policy (ReMDM needs "
                    "--method=ancestral).", **here)
  flags.DEFINE_float("remask_eta", None, "ReMDM's eta, or low_confidence's fraction remasked per step.", **here)
  flags.DEFINE_float("remask_t_on", None, "remdm_loop: start of the loop.", **here)
  flags.DEFINE_float("remask_t_off", None, "remdm_loop: end of the loop; low_confidence: last remasking time.", **here)
  flags.DEFINE_float("remask_alpha_on", None, "remdm_loop: alpha held during the loop.", **here)
  flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance w: (1 + w) cond - w (prompt masked); 0: off.",
                     **here)
  flags.DEFINE_enum("cache", None, list(sampler_lib.CACHES), "'unchanged': skip the network when no token changed; "
                    "'dual'/'prefix': Fast-dLLM's KV caches (block decoding).", **here)
  define_checkpoint_flags()


def sampler_flag_names() -> list[str]:
  """The config.sample fields that define_sample_flags makes flags of."""
  from dlm_jax.sampling import SamplerConfig
  return [name for name in SamplerConfig.config_section() if name != "num_samples"]


def sampler_overrides(flag_values) -> dict:
  """The sampler flags given on the command line, as SamplerConfig overrides."""
  return {name: getattr(flag_values, name) for name in sampler_flag_names() if getattr(flag_values, name) is not None}


def flag_or(value, default):
  """A flag's value, or `default` (the run's config value) when the flag was left out (None)."""
  return default if value is None else value


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
