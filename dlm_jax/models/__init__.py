"""NNX denoisers and the registry `get_model(config, vocab_size, rngs)`."""
from __future__ import annotations

import dataclasses

from flax import nnx

from dlm_jax.models.eco_hybrid import EcoHybrid, EcoHybridConfig
from dlm_jax.models.hrm import HRMConfig, HRMDenoiser
from dlm_jax.models.transformer import Transformer, TransformerConfig

MODELS = {
    "transformer": (Transformer, TransformerConfig),
    "eco_hybrid": (EcoHybrid, EcoHybridConfig),
    "hrm": (HRMDenoiser, HRMConfig),
}


def model_config(config, vocab_size: int):
  """The frozen dataclass config of the model named by config.model.name, from the ml_collections config."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r} (config model.name); choose one of {sorted(MODELS)}.")
  _, config_cls = MODELS[name]
  fields = {k: v for k, v in config.model.items() if k != "name"}
  known = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"config.model has fields {unknown} that model {name!r} does not take.")
  return config_cls(vocab_size=vocab_size, max_len=config.data.seq_len, **fields)


def get_model(config, vocab_size: int, rngs: nnx.Rngs):
  model_cls, _ = MODELS[config.model.name]
  return model_cls(model_config(config, vocab_size), rngs=rngs)
