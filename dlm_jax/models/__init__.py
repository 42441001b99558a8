"""NNX denoisers and their registry: `get_model(config, vocab_size, rngs, special)`, `model_config`, `config_defaults`.

`MODELS[name]` is (the denoiser class, its config dataclass); a research wing's model is registered by the import path
of that pair (dlm_jax/registry.py)."""
from __future__ import annotations

import dataclasses

from flax import nnx

from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.models.base import Denoiser, DenoiserConfig, DenoiserOutput, denoise_fn
from dlm_jax.models.eco_hybrid import EcoHybrid, EcoHybridConfig
from dlm_jax.models.hrm import HRMConfig, HRMDenoiser
from dlm_jax.models.pretrained import PretrainedConfig, PretrainedTransformer
from dlm_jax.models.transformer import Transformer, TransformerConfig
from dlm_jax.registry import Registry

MODELS = Registry("model", field="config model.name", entries={
    "transformer": (Transformer, TransformerConfig),
    "eco_hybrid": (EcoHybrid, EcoHybridConfig),
    "hrm": (HRMDenoiser, HRMConfig),
    "pretrained": (PretrainedTransformer, PretrainedConfig),  # published checkpoints' layouts (models/hf.py)
    "thought": "dlm_jax.proj.thought.model:REGISTERED",  # thought tensors (dlm_jax/proj/thought/)
})
# Given by the data, not by config.model: the tokenizer's vocabulary and special ids, and data.seq_len.
DATA_FIELDS = ("vocab_size", "max_len", "special")


def _config_class(name: str):
  return MODELS[name][1]


def config_defaults(name: str) -> dict:
  """The config.model fields of denoiser `name` with their defaults, read off its config dataclass (the one place they
  are declared)."""
  return {f.name: f.default for f in dataclasses.fields(_config_class(name)) if f.name not in DATA_FIELDS}


def model_config(config, vocab_size: int, special: special_tokens.SpecialIds = special_tokens.DEFAULT
                 ) -> DenoiserConfig:
  """The frozen dataclass config of the model named by config.model.name, from the ml_collections config, for a
  tokenizer of `vocab_size` ids with the special ids `special` (`tokenizer.special`).

  A field missing from config.model (a config saved in a checkpoint before the field existed) takes the value in the
  dataclass's FIELDS_ADDED_LATER, so the model is rebuilt as it was trained; an unknown field is an error, as is an
  objective the model refuses (`DenoiserConfig.check_objective`)."""
  name, fields = config.model.name, {k: v for k, v in config.model.items() if k != "name"}
  config_cls = _config_class(name)
  config_cls.check_objective(config.diffusion.objective)
  known = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(f"config.model has fields {unknown} that model {name!r} does not take.")
  fields = {**{k: v for k, v in config_cls.FIELDS_ADDED_LATER.items() if k not in fields}, **fields}
  return config_cls(vocab_size=vocab_size, max_len=config.data.seq_len, special=special, **fields)


def get_model(config, vocab_size: int, rngs: nnx.Rngs,
              special: special_tokens.SpecialIds = special_tokens.DEFAULT) -> Denoiser:
  model_cls, _ = MODELS[config.model.name]
  return model_cls(model_config(config, vocab_size, special), rngs=rngs)


def trainable_filter(model_config):
  """The nnx filter of the parameters the optimizer updates: the LoRA adapters (nnx.LoRAParam) when config.model has
  lora_rank > 0, the base weights then frozen; None (every parameter) otherwise."""
  return nnx.LoRAParam if int(model_config.get("lora_rank", 0) or 0) else None


def split_trainable(params, trainable):
  """(the parameters the optimizer updates, the frozen rest or None) of the nnx.State `params` (`trainable_filter`)."""
  if trainable is None:
    return params, None
  return nnx.split_state(params, trainable, ...)


def join_trainable(trainable_params, frozen_params):
  """The inverse of `split_trainable`."""
  return trainable_params if frozen_params is None else nnx.merge_state(trainable_params, frozen_params)
