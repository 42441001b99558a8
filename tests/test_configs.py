"""Every shipped config builds its model (shapes only, no compile), and the arms of each comparison have matched
parameter counts."""
import jax
import pytest
from flax import nnx

from configs import (base_110m, default, indic_char_small, maze, nanogpt_cpu, shakespeare_char, shakespeare_char_small,
                     sudoku)
from dlm_jax import models
from dlm_jax import objectives, special_tokens
from dlm_jax.sampling import SamplerConfig


def num_params(config, vocab_size):
  model = nnx.eval_shape(lambda: models.get_model(config, vocab_size, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


BEYOND_MASKING = ("duo", "sedd", "duo_dcd", "embedding")


@pytest.mark.parametrize("module, arms, vocab", [(default, default.ARMS, 108),
                                                 (shakespeare_char, ("diffusion", "ar", "eco", "hrm") + BEYOND_MASKING,
                                                  70),
                                                 (shakespeare_char_small,
                                                  ("diffusion", "ar", "eco", "hrm") + BEYOND_MASKING, 70),
                                                 (indic_char_small, ("diffusion", "ar", "eco", "hrm", "embedding"), 427),
                                                 (nanogpt_cpu, nanogpt_cpu.ARMS, 70),
                                                 (base_110m, ("diffusion", "eco", "hrm"), 32000),
                                                 (sudoku, ("diffusion", "ar", "eco", "hrm", "hrm_h1", "hrm_bptt"), 14),
                                                 (sudoku, ("diffusion_gpu", "ar_gpu", "eco_gpu", "hrm_gpu"), 14),
                                                 (maze, ("diffusion", "ar", "eco", "hrm"), 10),
                                                 (maze, ("diffusion_gpu", "eco_gpu", "hrm_gpu"), 10)],
                         ids=["default", "shakespeare_char", "shakespeare_char_small", "indic_char_small", "nanogpt_cpu",
                              "base_110m", "sudoku",
                              "sudoku_gpu", "maze", "maze_gpu"])
def test_arms_build_with_matched_parameter_counts(module, arms, vocab):
  counts = {}
  for arm in arms:
    config = module.get_config(arm)
    objectives.from_config(config, vocab)  # causal/objective agree
    SamplerConfig.from_config(config, special_tokens.DEFAULT)  # the sampler fits the objective
    counts[arm] = num_params(config, vocab)
  reference = counts[arms[0]]  # the baseline
  for arm, count in counts.items():
    assert abs(count / reference - 1) < 0.02, (arm, counts)


def test_nanogpt_budget_arm_draws_two_masks_for_its_first_1100_updates_only():
  """configs/nanogpt_cpu.py:diffusion_budget is :diffusion_best (shifted logits, the clipped window, two masks) for
  1,500 updates whose first 1,100 draw two masks per sequence, the rest one."""
  best, budget = nanogpt_cpu.get_config("diffusion_best"), nanogpt_cpu.get_config("diffusion_budget")
  objective = objectives.from_config(budget, 70)
  assert [(objective.variant_at(s) or objective).masks_per_sequence for s in (0, 1099, 1100, 1499)] == [2, 2, 1, 1]
  assert (budget.train.num_steps, best.train.num_steps, best.diffusion.masks_per_sequence_steps) == (1500, 1750, 0)
  assert budget.model.shift_logits and (budget.diffusion.time_low, budget.diffusion.time_high) == (0.3, 0.8)


def test_default_config_model_and_unknown_fields():
  config = default.get_config()
  assert num_params(config, 108) < 1_000_000
  config.model.memory_slots = 8  # a field the transformer does not take
  with pytest.raises(ValueError, match="memory_slots"):
    models.model_config(config, 108)
  with pytest.raises(ValueError, match="Unknown model"):
    default.model_config("rnn")
