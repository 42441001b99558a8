"""Every shipped config builds its model (shapes only, no compile), and the arms of each comparison have matched
parameter counts."""
import jax
import pytest
from flax import nnx

from configs import base_110m, default, indic_char_small, shakespeare_char, shakespeare_char_small, thought_gpu, thought_small
from dlm_jax import models
from dlm_jax import objectives
from dlm_jax.sampling import SamplerConfig


def num_params(config, vocab_size):
  model = nnx.eval_shape(lambda: models.get_model(config, vocab_size, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


BEYOND_MASKING = ("duo", "sedd", "duo_dcd", "embedding")


@pytest.mark.parametrize("module, arms, vocab", [(shakespeare_char, ("diffusion", "ar", "eco", "hrm") + BEYOND_MASKING,
                                                  70),
                                                 (shakespeare_char_small,
                                                  ("diffusion", "ar", "eco", "hrm") + BEYOND_MASKING, 70),
                                                 (indic_char_small, ("diffusion", "ar", "eco", "hrm"), 427),
                                                 (base_110m, ("diffusion", "eco", "hrm"), 32000)],
                         ids=["shakespeare_char", "shakespeare_char_small", "indic_char_small", "base_110m"])
def test_arms_build_with_matched_parameter_counts(module, arms, vocab):
  counts = {}
  for arm in arms:
    config = module.get_config(arm)
    objectives.from_config(config, vocab)  # causal/objective agree
    SamplerConfig.from_config(config)  # the sampler fits the objective
    counts[arm] = num_params(config, vocab)
  for arm, count in counts.items():
    assert abs(count / counts["diffusion"] - 1) < 0.02, (arm, counts)


@pytest.mark.parametrize("module, vocab", [(thought_small, 108), (thought_gpu, 70)], ids=["small", "gpu"])
def test_thought_baselines_match_the_thought_models_parameters(module, vocab):
  """The baseline arm's wider SwiGLU pays for the whole thought pathway (within 0.1%); the thought arm's rows are
  (K + 1) windows of the baseline's length."""
  thought_config, baseline_config = module.get_config("thought"), module.get_config("baseline")
  thought_objective = objectives.from_config(thought_config, vocab)
  assert objectives.from_config(baseline_config, vocab).thought is None
  assert thought_objective.sample_length(int(thought_config.data.seq_len)) == int(baseline_config.data.seq_len)
  assert SamplerConfig.from_config(thought_config).thought
  thought_count, baseline_count = num_params(thought_config, vocab), num_params(baseline_config, vocab)
  assert abs(thought_count / baseline_count - 1) < 1e-3, (thought_count, baseline_count)


def test_default_config_model_and_unknown_fields():
  config = default.get_config()
  assert num_params(config, 108) < 1_000_000
  config.model.memory_slots = 8  # a field the transformer does not take
  with pytest.raises(ValueError, match="memory_slots"):
    models.model_config(config, 108)
  with pytest.raises(ValueError, match="Unknown model"):
    default.model_config("rnn")
