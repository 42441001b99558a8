"""Thought tensors' objective, `diffusion.objective = "thought"` (objectives.OBJECTIVES registers it by path), and its
config section `config.thought` (`config_section`, the fields of process.ThoughtProcess)."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import ml_collections

from dlm_jax.errors import ConfigError
from dlm_jax.objectives.masked import MaskedELBO
from dlm_jax.proj.thought import process as thought_lib


@dataclasses.dataclass(frozen=True)
class ThoughtELBO(MaskedELBO):
  """The masked NELBO of the last window of each row given a Gaussian-noised memory of the thoughts that the row's
  earlier windows wrote, plus the thought's reconstruction, coherence and alignment losses
  (`ThoughtProcess.loss`); evaluation scores that window given the full memory (`ThoughtProcess.depth_nll`). The
  model is model.name "thought" (model.py); samples come from SAMPLERS["thought"] (sampler.py)."""
  name: ClassVar[str] = "thought"
  sampler: ClassVar[str] = "thought"
  reads: ClassVar[tuple[str, ...]] = ()
  supports_padded: ClassVar[bool] = False  # its loss and evaluation do not exclude padding
  supports_score_all_tokens: ClassVar[bool] = False  # its evaluation conditions on the first token
  thought: thought_lib.ThoughtProcess | None = None  # config.thought and model.thought_dims (run_context)

  def __post_init__(self):
    super().__post_init__()
    if self.thought is None:
      raise ConfigError("The thought objective needs config.thought (a ThoughtProcess).")
    if self.prompt_length or self.corruption is not None or self.self_conditioning or self.loss_chunk:
      raise ConfigError("The thought objective trains masked text without a prompt, script-aware corruption, "
                        "self-conditioning or loss_chunk (diffusion.prompt_length, diffusion.corruption, "
                        "model.self_conditioning, diffusion.loss_chunk).")

  @classmethod
  def run_context(cls, config) -> dict:
    return {"thought": thought_process(config)}

  @classmethod
  def check_model(cls, model_config):
    super().check_model(model_config)
    if model_config.name != "thought":
      raise ConfigError(f"diffusion.objective='thought' trains the thought transformer: set model.name='thought' "
                        f"(dlm_jax/proj/thought/model.py); got model {model_config.name!r}.")

  def sample_length(self, seq_len: int) -> int:
    """One window W = seq_len / (K + 1)."""
    return self.thought.window_length(seq_len)

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None,
           objective_state=None):
    return self.thought.loss(self, denoise_fn, x0_BxL, rng)

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """The target window given the memory of every context window."""
    return self.thought.depth_nll(self, denoise_fn, x0_BxL, rng, self.thought.context_windows)


def config_section() -> ml_collections.ConfigDict:
  """config.thought with every field's default (ThoughtProcess's fields but `dims`, which is model.thought_dims)."""
  return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(thought_lib.ThoughtProcess)
                                    if f.name != "dims"})


def thought_process(config) -> thought_lib.ThoughtProcess:
  """config.thought (missing fields at their defaults) with model.thought_dims as a ThoughtProcess."""
  section = config.get("thought")
  if section is None:
    raise ConfigError("diffusion.objective='thought' reads config.thought: start from "
                      "dlm_jax/proj/thought/configs/small.py, or add the section (objective.config_section()).")
  fields = {name: type(default)(section.get(name, default)) for name, default in config_section().items()}
  return thought_lib.ThoughtProcess(dims=tuple(config.model.get("thought_dims", ()) or ()), **fields)
