"""`Registry`: a name -> component table whose entries are objects or import paths ("package.module:ATTRIBUTE").

The model, objective and sampler registries (models.MODELS, objectives.OBJECTIVES, sampling.SAMPLERS) hold the
library's own components as objects and a research wing's (dlm_jax/proj/) as its import path, imported the first time
the name is looked up: the library never imports a wing, a wing imports the library (big_vision's `proj/`)."""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from dlm_jax.errors import ConfigError


class Registry(Mapping):
  """name -> component; a str value "module:attribute" is imported on the first lookup of its name."""

  def __init__(self, what: str, entries: dict, field: str = ""):
    self.what = what  # what the names are, for errors: "model"
    self.field = field  # the config field that names one: "config model.name"
    self._entries = dict(entries)
    self._wing_paths = {name: entry for name, entry in entries.items() if isinstance(entry, str)}

  def __getitem__(self, name):
    if name not in self._entries:
      where = f" ({self.field})" if self.field else ""
      raise ConfigError(f"Unknown {self.what} {name!r}{where}; choose one of {sorted(self._entries)}.")
    entry = self._entries[name]
    if isinstance(entry, str):
      module, _, attribute = entry.partition(":")
      entry = getattr(importlib.import_module(module), attribute)
      self._entries[name] = entry
    return entry

  def __iter__(self):
    return iter(self._entries)

  def __len__(self):
    return len(self._entries)

  def builtin(self) -> dict:
    """The entries given as objects (the library's own), without importing any wing; a wing resolved already by a
    lookup is not among them."""
    return {name: entry for name, entry in self._entries.items() if name not in self.wings()}

  def wings(self) -> dict:
    """name -> import path of the entries registered by path."""
    return dict(self._wing_paths)

  def __repr__(self):
    return f"Registry({self.what!r}, {sorted(self._entries)})"
