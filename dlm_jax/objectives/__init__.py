"""Training objectives as registered classes: `OBJECTIVES[name]`, `from_config(config, vocab_size, tokenizer)` and
`config_section()`, the `config.diffusion` fields generated from the classes (docs/objectives.md).

| name | class | process | module |
|---|---|---|---|
| elbo | MaskedELBO (MD4/MDLM NELBO) | absorbing | masked.py |
| masked_mean | MaskedMean (not a bound) | absorbing | masked.py |
| autoregressive | Autoregressive (the causal control arm) | autoregressive | autoregressive.py |
| uniform | UniformELBO (UDLM/Duo NELBO) | uniform | uniform.py |
| duo | Duo (uniform + soft-token curriculum) | uniform | uniform.py |
| dcd | ConsistencyDistillation (Duo's DCD) | uniform | uniform.py |
| sedd | ScoreEntropy (SEDD) | absorbing or uniform | sedd.py |
| embedding | EmbeddingDiffusion (VDM bound on embeddings) | gaussian | embedding.py |
| thought | ThoughtELBO (masked text with a thought; settings in config.thought) | absorbing | dlm_jax/proj/thought/ |

A new objective is one class (a subclass of `base.Objective` or `base.CorruptionObjective`, its config fields as
dataclass fields with their defaults and comments) and one entry here; a research wing's objective is registered by
its import path (dlm_jax/registry.py) and keeps its settings in a config section of its own (`run_context`).
"""
from __future__ import annotations

import dataclasses

import ml_collections
from absl import logging

from dlm_jax.diffusion import corruption as corruption_lib
from dlm_jax.diffusion import schedules
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.autoregressive import Autoregressive
from dlm_jax.objectives.base import CONTEXT_FIELDS, CorruptionObjective, Objective
from dlm_jax.objectives.embedding import EmbeddingDiffusion
from dlm_jax.objectives.masked import MaskedELBO, MaskedMean, SelfDistillationThroughTime
from dlm_jax.objectives.sedd import ScoreEntropy
from dlm_jax.objectives.uniform import ConsistencyDistillation, Duo, UniformELBO
from dlm_jax.registry import Registry
from dlm_jax import special_tokens

OBJECTIVES = Registry("objective", field="config diffusion.objective", entries={
    **{cls.name: cls for cls in (MaskedELBO, MaskedMean, Autoregressive, UniformELBO, Duo, ConsistencyDistillation,
                                 ScoreEntropy, EmbeddingDiffusion, SelfDistillationThroughTime)},
    "thought": "dlm_jax.proj.thought.objective:ThoughtELBO",  # thought tensors (dlm_jax/proj/thought/)
})

# The config.diffusion fields that are no objective's dataclass field (the objective holds what they build).
SECTION_FIELDS = {
    "objective": "elbo",  # a name of OBJECTIVES: elbo (MD4/MDLM), masked_mean, autoregressive, uniform, duo, dcd, ...
    "schedule": "cosine",  # the masking schedule alpha(t): "linear", "cosine", "polynomial", "loglinear"
    "schedule_exponent": 2.0,  # polynomial schedule alpha = 1 - t^p
    "schedule_eps": 1e-3,  # loglinear schedule alpha(1)
    # Training-time masking of the absorbing objectives (diffusion/corruption.py): "uniform" (token by token),
    # "script_aware" (whole grapheme clusters, virama conjuncts included) or "span" (whole words); with the last two
    # each unit of script s is masked on the schedule alpha(t)^kappa_s, kappa_s = script_rates.s. Not an ELBO of the
    # sampled model (a bound given the segmentation): evaluation always reports the token-level NELBO.
    "corruption": "uniform",
    "script_rates": {"none": 1.0, "other": 1.0, "latn": 1.0, "deva": 1.0},
    "unit_fraction": 1.0,  # script_aware/span: the fraction of sequences masked by units (else token by token)
}
NAMES = tuple(OBJECTIVES)  # the values of diffusion.objective
_WARNED = set()  # (objective, ignored fields) already warned about


def config_fields() -> dict:
  """Every config.diffusion field with its default: SECTION_FIELDS, then each library class's own fields in registry
  order (a field shared by several classes is declared once, in their common base; a wing's objective adds none)."""
  fields = dict(SECTION_FIELDS)
  for cls in OBJECTIVES.builtin().values():
    for field in dataclasses.fields(cls):
      if field.name in CONTEXT_FIELDS:
        continue
      if field.name in fields and fields[field.name] != field.default:
        raise AssertionError(f"config.diffusion.{field.name} has two defaults: {fields[field.name]!r} and "
                             f"{field.default!r} ({cls.__name__}).")
      fields.setdefault(field.name, field.default)
  return fields


def config_section() -> ml_collections.ConfigDict:
  """config.diffusion with every field's default (configs/default.py uses it)."""
  return ml_collections.ConfigDict(config_fields())


def objective_class(config):
  """The OBJECTIVES class named by a run's config.diffusion.objective."""
  return OBJECTIVES[config.diffusion.objective]


def process_of(config) -> str:
  """The forward process of a run's objective: "absorbing", "uniform", "gaussian" or "autoregressive"."""
  return objective_class(config).process_of(config.diffusion)


def _cast(default, value):
  if isinstance(default, bool):
    return bool(value)
  if isinstance(default, (int, float, str)):
    return type(default)(value)
  return value


def ignored_fields(cls, diffusion_config) -> list[str]:
  """The config.diffusion fields that `cls` does not read and that differ from their defaults."""
  read = {"objective", "schedule", "schedule_exponent", "schedule_eps", *cls.reads}
  read |= {field.name for field in dataclasses.fields(cls)}
  defaults = config_fields()
  ignored = []
  for name in sorted(diffusion_config.keys()):
    if name in read or name not in defaults:
      continue
    value = diffusion_config[name]
    value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    if value != defaults[name]:
      ignored.append(name)
  return ignored


def from_config(config, vocab_size: int = 0, tokenizer=None) -> Objective:
  """The objective of a run's config: its class's fields from `config.diffusion` (missing ones, e.g. in a config saved
  before they existed, take the class default), the masking schedule, the model's self-conditioning, the script-aware
  corruption of `tokenizer` (needed only for diffusion.corruption "script_aware"/"span"), the tokenizer's special ids
  (`tokenizer.special`: the mask id; without a tokenizer our 0..4) and the vocabulary size (the uniform-state and SEDD
  objectives') and what the class reads from the rest of the config (`run_context`: a wing's
  own section). A field the objective ignores, set to a non-default value, gets one warning naming it."""
  cls = objective_class(config)
  section = config.diffusion
  cls.check_model(config.model)
  extra = cls.run_context(config)
  prompt_length = int(section.get("prompt_length", 0))
  if prompt_length >= int(config.data.seq_len):
    raise ConfigError(f"diffusion.prompt_length={prompt_length} leaves nothing to score in windows of "
                      f"{config.data.seq_len} tokens (data.seq_len): make it smaller.")
  own = {f.name: f for f in dataclasses.fields(cls) if f.name not in CONTEXT_FIELDS and f.name not in extra}
  values = {name: _cast(field.default, section.get(name, field.default)) for name, field in own.items()}
  special = tokenizer.special if tokenizer is not None else special_tokens.DEFAULT
  context = {"schedule": schedules.from_config(section), "special": special, "vocab_size": int(vocab_size),
             "self_conditioning": bool(config.model.get("self_conditioning", False)),
             "padded": config.data.get("layout", "wrapped") in ("padded", "chat", "puzzle"),
             "conditioned": config.data.get("layout", "wrapped") in ("chat", "puzzle"),
             "score_all_tokens": bool(config.eval.get("score_all_tokens", False))}
  if "corruption" in {f.name for f in dataclasses.fields(cls)}:
    context["corruption"] = corruption_lib.from_config(section, tokenizer)
  elif section.get("corruption", "uniform") != "uniform":
    raise ConfigError(f"diffusion.corruption masks grapheme clusters or words: it needs an absorbing objective "
                      f"('elbo' or 'masked_mean'), not {cls.name!r}. Set diffusion.corruption='uniform'.")
  else:
    corruption_lib.from_config(section, tokenizer)  # (refuses script_rates without a script-aware corruption)
  context.update(extra)
  ignored = ", ".join(f"{name}={section[name]!r}" for name in ignored_fields(cls, section))
  if ignored and (cls.name, ignored) not in _WARNED:  # once per process (a run's objective is built more than once)
    _WARNED.add((cls.name, ignored))
    logging.warning("config.diffusion fields %s are set but objective %r does not read them; they have no effect.",
                    ignored, cls.name)
  return cls(**context, **values)


__all__ = ["OBJECTIVES", "NAMES", "SECTION_FIELDS", "Objective", "CorruptionObjective", "MaskedELBO", "MaskedMean",
           "Autoregressive", "UniformELBO", "Duo", "ConsistencyDistillation", "ScoreEntropy", "EmbeddingDiffusion",
           "config_fields", "config_section", "from_config", "objective_class", "process_of",
           "ignored_fields"]
