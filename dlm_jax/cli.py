"""How every `launch/*` entry point runs: `cli.run(main)` instead of `absl.app.run(main)`.

* A user error -- a bad corpus (DataError), text the tokenizer cannot take (TokenizerError), a checkpoint that does
  not fit or is missing (CheckpointError), a config value the code cannot take (ConfigError), a run that diverged
  (TrainingDiverged), a bad flag value (absl's UsageError) -- prints one line, "error: <what
  and what to do>", on stderr and exits with status 2; with DLM_DEBUG=1 the traceback comes first. (absl would print
  a traceback, or the whole --help before a usage error.)
* `--help`, `--helpshort`, `--helpfull` and `--helpxml` exit with status 0 (absl exits 1 after printing help).
* JAX's persistent compilation cache is on (`compilation_cache_dir`): a second launch reuses what the first compiled.
* A launcher with a config file (`--config=FILE[:ARG]`) calls `config_preflight` before defining that flag:
  `--help_config` prints every field of the config with its value, and an override `--config.a.b=v` of a field the
  config does not have is one error line naming the closest fields (ml_collections would raise a 50-line traceback at
  import time).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import os
import pathlib
import re
import sys
import textwrap
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


def define_draw_precision_flag(default: str | None, default_says: str):
  """--draw_precision: the Gumbel noise of every categorical draw (SamplerConfig.draw_precision), listed under the
  launcher's own flags."""
  from absl import flags
  from dlm_jax.sampling import sampler as sampler_lib
  flags.DEFINE_enum("draw_precision", default, list(sampler_lib.DRAW_PRECISIONS), "Gumbel noise of every categorical "
                    "draw: float32 (JAX's default; it stops at 15.9, cutting the far tails) or float64 (64 random "
                    f"bits; no event a float64 draw can make is cut). Default: {default_says}.",
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
  flags.DEFINE_integer("continue_chunk", 0, "With a --length beyond the context: continue window by window, each "
                       "further window keeping its last context - C tokens and drawing C new ones (0: refuse).",
                       **here)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", **here)
  flags.DEFINE_integer("steps", None, "Reverse steps (default: the run's config.sample.steps).", **here)
  flags.DEFINE_enum("method", None, list(sampler_lib.METHODS), "Sampler (default: the run's config): confidence or "
                    "ancestral for masked models; ancestral or greedy for uniform-state (Duo) ones; tweedie for SEDD.",
                    **here)
  flags.DEFINE_enum("confidence", None, list(sampler_lib.CONFIDENCES), "What ranks the masked positions for reveal "
                    "(default: the run's config): the candidate's probability (prob), the top-2 margin (margin), "
                    "the predictive entropy, lowest first (entropy), or a calibration head's forecast (calibrated; "
                    "runs with model.calibration_head).", **here)
  flags.DEFINE_bool("greedy", None, "Argmax candidates instead of sampling them.", **here)
  flags.DEFINE_float("temperature", None, "Sampling temperature.", **here)
  flags.DEFINE_integer("top_k", None, "Top-k filtering (0 = off).", **here)
  flags.DEFINE_float("top_p", None, "Nucleus filtering (1.0 = off).", **here)
  define_draw_precision_flag(None, "the run's config")
  flags.DEFINE_string("reveal_schedule", None, "Reveal schedule (linear, cosine, ...; default: the training "
                      "schedule).", **here)
  flags.DEFINE_float("reveal_noise", None, "MaskGIT choice temperature on the reveal ranking (0 = pure confidence).",
                     **here)
  flags.DEFINE_float("strategic_weight", None, "HRM denoiser: weight of the H-module's priority in the reveal "
                     "ranking.", **here)
  flags.DEFINE_bool("reset_carry", None, "A stateful denoiser (the HRM denoiser's memory cells): start every reverse "
                    "step from the initial carry, as training does, instead of the previous step's (default: the "
                    "run's config).", **here)
  flags.DEFINE_integer("block_length", None, "Semi-autoregressive blocks of this many new tokens (0: one block).",
                       **here)
  flags.DEFINE_float("threshold", None, "Fast-dLLM: reveal every masked token with confidence above this (0: off).",
                     **here)
  flags.DEFINE_float("confidence_stop", None, "Reveal the rest of a block once all its confidences reach this (0: "
                     "off).", **here)
  flags.DEFINE_float("token_stop", None, "Per-token step budget: reveal each token once its confidence reaches this, "
                     "final from then on (0: off).", **here)
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
  from dlm_jax.errors import ConfigError, TrainingDiverged
  from dlm_jax.training import checkpoint
  return (corpus.DataError, tokenizers.TokenizerError, checkpoint.CheckpointError, ConfigError, TrainingDiverged,
          app.UsageError)


def compilation_cache_dir() -> pathlib.Path:
  """JAX's persistent compilation cache of the launchers and the tests: $JAX_COMPILATION_CACHE_DIR, else
  $XDG_CACHE_HOME (or ~/.cache)/dlm_jax/jax_compilation_cache, outside the clone so that every clone shares it."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "dlm_jax" / \
      "jax_compilation_cache"


def use_compilation_cache():
  """Points JAX's persistent compilation cache at compilation_cache_dir() (a second launch of the same run reuses the
  compiled step, sampler and evaluation instead of compiling them again)."""
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))


def run(main, argv=None, first_help=None):
  """Runs an absl `main` (module docstring); `first_help()` (built only then) is printed before absl's list on
  --help/--helpshort."""
  argv = list(sys.argv if argv is None else argv)
  asked_for_help = any(a.split("=")[0] in HELP_FLAGS for a in argv[1:])
  if first_help and any(a.split("=")[0] in ("--help", "-help", "--helpshort", "-?") for a in argv[1:]):
    print(first_help() + "\n", flush=True)
  use_compilation_cache()
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
  """The ConfigDict of a config file spec "path/to/file.py[:arg]" (its get_config(arg), or get_config()). Raises
  UsageError naming the spec when the file is missing, does not load, takes no such arm or fails to build."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise app.UsageError(f"--config={spec}: {path} is not a file. The configs are configs/*.py (and a research "
                         "wing's configs/ folder).")
  module_spec = importlib.util.spec_from_file_location("config_under_check", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a syntax or import error in the file: its own one line
    raise app.UsageError(f"--config={spec}: {path} does not load ({type(e).__name__}: {e}).") from None
  if not hasattr(module, "get_config"):
    raise app.UsageError(f"--config={spec}: {path} has no get_config() function.")
  takes_arm = bool(inspect.signature(module.get_config).parameters)
  if arg and not takes_arm:
    raise app.UsageError(f"--config={spec}: {path} has no arms; use --config={path}.")
  try:
    return module.get_config(arg) if arg else module.get_config()
  except (ValueError, KeyError) as e:  # an unknown arm: the config's message lists the arms it takes
    raise app.UsageError(f"--config={spec}: {e}") from None


def config_summary(default_path: str, argv=None) -> list[str]:
  """The lines a training launcher prints first about its config: the spec and the overrides given, then the
  config docstring's "Hardware..." and "Expected..." paragraphs (its expected wall time and result)."""
  argv = list(sys.argv if argv is None else argv)
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), os.path.relpath(default_path))
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  lines = [f"Config {spec}" + (f" with {' '.join(overrides)}" if overrides else " (no overrides)")]
  try:
    doc = ast.get_docstring(ast.parse(pathlib.Path(spec.partition(":")[0]).read_text(encoding="utf-8"))) or ""
  except (OSError, SyntaxError):
    return lines
  keep = False
  for line in doc.splitlines():
    head = line.split(":", 1)[0]
    if line and not line[0].isspace() and ":" in line and len(head) < 40:  # a new "Key: ..." paragraph
      keep = head.startswith(("Hardware", "Expected"))
    elif not line.strip():
      keep = False
    if keep:
      lines.append(f"  {line.strip()}")
  return lines


_ASSIGNMENT = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(?P<rest>.*)$")
_FIELD = re.compile(r"^\s{2}(\w+)\s*:\s*[^=#]+=(?P<rest>.*)$")
_ENTRY = re.compile(r"^\s*(?:return \{)?\"(\w+)\":\s*(?P<rest>.*)$")


def _trailing_comment(rest: str) -> str:
  """The comment after the code of `rest` (a '#' inside a string literal is not one)."""
  quote = None
  for i, ch in enumerate(rest):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch == "#":
      return rest[i + 1:].strip()
  return ""


def _docs_of_lines(lines, pattern, prefix: str = "") -> dict:
  """name -> doc of each line matching `pattern`: its trailing comment, else the comment lines just above it."""
  docs, block = {}, []
  for line in lines:
    stripped = line.strip()
    if stripped.startswith("#"):
      block.append(stripped.lstrip("#").strip())
      continue
    match = pattern.match(line)
    if match:
      doc = _trailing_comment(match.group("rest")) or " ".join(block)
      if doc:
        docs.setdefault(prefix + match.group(1), doc)
    block = []
  return docs


def field_docs(config, config_path: str = "") -> dict:
  """"section.field" -> what it means, read from where each field is declared: the config file's and configs/default.py's
  comments, and the comments of the dataclass fields that config.model, config.diffusion and config.sample are
  generated from (the model's config class, the objective classes, SamplerConfig)."""
  from dlm_jax import models, objectives
  from dlm_jax.sampling import SamplerConfig
  docs = {}
  default_path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
  for path in (config_path, default_path):
    if path and pathlib.Path(path).is_file():
      docs.update({k: v for k, v in _docs_of_lines(pathlib.Path(path).read_text(encoding="utf-8").splitlines(),
                                                    _ASSIGNMENT).items() if k not in docs})
  for section, module in (("diffusion", objectives), ("sample", inspect.getmodule(SamplerConfig))):
    lines = inspect.getsource(module).splitlines()  # the section fields declared as dict entries with comments
    docs.update({k: v for k, v in _docs_of_lines(lines, _ENTRY, f"{section}.").items() if k not in docs})
  sections = {"sample": [SamplerConfig], "diffusion": list(objectives.OBJECTIVES.builtin().values())}
  model_name = config.get("model", {}).get("name", "transformer")
  if model_name in models.MODELS:
    sections["model"] = [models.MODELS[model_name][1]]
  for section, classes in sections.items():
    for cls in classes:
      for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
          continue
        try:
          lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
          continue
        for name, doc in _docs_of_lines(lines, _FIELD, f"{section}.").items():
          docs.setdefault(name, doc)
  return docs


def config_listing(config, spec: str, config_path: str = "") -> str:
  """--help_config: every field of `config` by section, with its value and, below it, what it means (field_docs)."""
  docs = field_docs(config, config_path)
  out = [f"Fields of {spec}, by section (set any with --config.SECTION.FIELD=VALUE):"]
  sections = {}
  for key, value in _flat_items(config.to_dict()):
    section, _, name = key.rpartition(".")
    sections.setdefault(section, []).append((name, value))
  for section, fields in sections.items():
    out.append(f"\n{section or '(top level)'}")
    for name, value in fields:
      key = f"{section}.{name}" if section else name
      out.append(f"  {name}: {value!r}" if isinstance(value, str) else f"  {name}: {value}")
      if docs.get(key):
        out.extend(textwrap.wrap(docs[key], 116, initial_indent="      ", subsequent_indent="      "))
  return "\n".join(out)


def newcomer_help(fields, config_path: str) -> str:
  """The first lines of a training launcher's --help: the flags a newcomer needs, each with what it means."""
  config = load_config(config_path)
  docs = field_docs(config, config_path)
  lines = ["Start here (every flag below this block; every config field with --help_config):",
           "  --workdir=DIR            checkpoints, metrics and the token cache; re-running with it resumes",
           "  --config=FILE[:ARM]      the experiment (default configs/default.py: the embedded corpus, CPU-sized)"]
  for field in fields:
    section, _, name = field.partition(".")
    flag = f"  --config.{field}={config[section][name]}"
    lines.append(f"{flag:<45} {docs.get(field, '')}"[:200])
  return "\n".join(lines)


def config_preflight(default_path: str, argv=None):
  """See the module docstring; exits (0 after --help_config, 2 on an unknown field) or returns."""
  argv = list(sys.argv if argv is None else argv)
  given = dict(a[len("--config."):].split("=", 1) if "=" in a else (a[len("--config."):], None)
               for a in argv[1:] if a.startswith("--config."))
  overrides = list(given)
  wants_help = "--help_config" in argv
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if not overrides and not wants_help and spec is None:
    return
  spec = spec or os.path.relpath(default_path)
  try:
    config = load_config(spec)
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if wants_help:
    print(config_listing(config, spec, spec.partition(":")[0]))
    sys.exit(0)
  flat = dict(_flat_items(config.to_dict()))
  fields = list(flat)
  groups = {f.rsplit(".", 1)[0] for f in fields if "." in f}
  for key in overrides:
    if key not in fields and key not in groups:
      close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
      hint = f" Did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
      print(f"error: --config.{key}: {spec} has no field {key!r}.{hint} See every field with --help_config.",
            file=sys.stderr)
      sys.exit(2)
  for key, text in given.items():
    problem = _parse_problem(flat.get(key), text) if key in flat and text is not None else None
    if problem:
      print(f"error: --config.{key}={text}: {problem}", file=sys.stderr)
      sys.exit(2)


def _flat_items(tree: dict, prefix: str = ""):
  """("section.field", value) of every leaf of a nested config dict, in order."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat_items(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _parse_problem(current, text: str) -> str | None:
  """Why `text` cannot be the new value of a field whose value is `current` (ml_collections keeps a field's type), or
  None when it can."""
  kind = type(current)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        return "the field is a bool: give true or false."
    elif kind is int:
      int(text)
    elif kind is float:
      float(text)
    elif kind in (tuple, list):
      value = ast.literal_eval(text)
      if not isinstance(value, (tuple, list)):
        return f"the field is a {kind.__name__}: give e.g. '{tuple(current)!r}'."
  except (ValueError, SyntaxError):
    article = "an" if kind is int else "a"
    return f"the field is {article} {kind.__name__} (now {current!r}); give {article} {kind.__name__}."
  return None
