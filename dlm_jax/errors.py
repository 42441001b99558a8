"""The error types of a config value the code cannot take (beside data/corpus.DataError, data/tokenizers.TokenizerError
and training/checkpoint.CheckpointError), whose message names the field (`model.remat`, `train.batch_size`, ...) and
the values it can take, and of a training run that diverged. The launchers print either as one line (dlm_jax/cli.py)."""


class ConfigError(ValueError):
  """A config field with a value the code cannot take; the message names the field and what it accepts."""


class TrainingDiverged(FloatingPointError):
  """A training run that diverged: a non-finite loss, gradient or validation NELBO, or a loss far above its running
  median. The message names the step and the likely cause; `step` is the first step whose parameters are suspect (the
  trainer removes the checkpoints from there on, so the last good one is what remains)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step
