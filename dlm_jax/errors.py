"""The error type of a config value the code cannot take (beside data/corpus.DataError, data/tokenizers.TokenizerError
and training/checkpoint.CheckpointError); its message names the field (`model.remat`, `train.batch_size`, ...) and the
values it can take. The launchers print it as one line (dlm_jax/cli.py)."""


class ConfigError(ValueError):
  """A config field with a value the code cannot take; the message names the field and what it accepts."""
