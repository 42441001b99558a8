"""Thought tensors' objective (config.thought; diffusion/thought.py)."""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

from dlm_jax.diffusion import thought as thought_lib
from dlm_jax.errors import ConfigError
from dlm_jax.objectives.masked import MaskedELBO


@dataclasses.dataclass(frozen=True)
class ThoughtELBO(MaskedELBO):
  """The masked NELBO of the last window of each row given a Gaussian-noised memory of the thoughts that the row's
  earlier windows wrote, plus the thought's reconstruction, coherence and alignment losses
  (`ThoughtProcess.loss`); evaluation scores that window given the full memory (`ThoughtProcess.depth_nll`). Chosen by
  config.thought.enabled with diffusion.objective "elbo"."""
  name: ClassVar[str] = "thought"
  reads: ClassVar[tuple[str, ...]] = ()
  thought: thought_lib.ThoughtProcess | None = None

  def __post_init__(self):
    super().__post_init__()
    if self.thought is None:
      raise ConfigError("The thought objective needs config.thought (a ThoughtProcess).")
    if self.prompt_length or self.corruption is not None or self.self_conditioning or self.loss_chunk:
      raise ConfigError("config.thought trains masked text with the 'elbo' objective, without a prompt, script-aware "
                        "corruption, self-conditioning or loss_chunk.")

  def sample_length(self, seq_len: int) -> int:
    """One window W = seq_len / (K + 1)."""
    return self.thought.window_length(seq_len)

  def loss(self, denoise_fn: Callable, x0_BxL, rng, *, step=None, teacher_fn=None):
    return self.thought.loss(self, denoise_fn, x0_BxL, rng)

  def evaluation_nll(self, denoise_fn: Callable, x0_BxL, rng):
    """The target window given the memory of every context window."""
    return self.thought.depth_nll(self, denoise_fn, x0_BxL, rng, self.thought.context_windows)


def thought_process(config) -> thought_lib.ThoughtProcess | None:
  """config.thought as a ThoughtProcess, or None when the run has no thought (config.thought missing or disabled)."""
  section = config.get("thought")
  # (a config saved before the thought denoiser had its name calls it a "transformer" with thought_dims)
  thought_model = config.model.name == "thought" or tuple(config.model.get("thought_dims", ()) or ())
  if section is None or not section.get("enabled", False):
    if thought_model:
      raise ConfigError("model.name='thought' (a thought shape) needs the thought objective: set "
                        "--config.thought.enabled=true, or use model.name='transformer'.")
    return None
  if config.model.name not in ("thought", "transformer"):
    raise ConfigError(f"config.thought gives the transformer denoiser a thought: set model.name='thought' "
                      f"(models/thought.py); got model {config.model.name!r}.")
  return thought_lib.ThoughtProcess(
      dims=tuple(config.model.get("thought_dims", ()) or ()), context_windows=int(section.context_windows),
      rate=float(section.rate),
      saliency=float(section.saliency), clean_prob=float(section.clean_prob), text_weight=float(section.text_weight),
      reconstruction_weight=float(section.reconstruction_weight), coherence_weight=float(section.coherence_weight),
      alignment_weight=float(section.alignment_weight), alignment_temperature=float(section.alignment_temperature))
