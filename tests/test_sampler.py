"""Sampler invariants: fixed positions never change, no mask survives, greedy is deterministic, the trajectory agrees
with the final sample, the reveal count follows the schedule."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import special_tokens
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.sampling import prompt_batch, sampler as sampler_lib

V, L, B = 12, 24, 4
MASK = special_tokens.MASK


def toy_denoiser():
  """Context-dependent random logits: each position's logits depend on its own and its neighbours' tokens."""
  keys = jax.random.split(jax.random.key(42), 3)
  own, left, pos = (jax.random.normal(keys[0], (V, V)), jax.random.normal(keys[1], (V, V)),
                    jax.random.normal(keys[2], (L, V)))

  def denoise(x_BxL, t_B):
    del t_B
    return 2.0 * (own[x_BxL] + left[jnp.roll(x_BxL, 1, axis=1)] + pos[None, :x_BxL.shape[1]])

  return denoise


def run(cfg, seed=0, fixed=None, tokens=None):
  tokens = tokens if tokens is not None else jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  fixed = fixed if fixed is not None else jnp.zeros((B, L), bool).at[:, :5].set(True).at[:, -3:].set(True)
  denoise = sampler_lib.stateless(toy_denoiser())
  out = jax.jit(lambda r, x, f: sampler_lib.sample(denoise, r, x, f, cfg))(jax.random.key(seed), tokens, fixed)
  return tokens, fixed, out


CONFIGS = {
    "confidence_sampled": sampler_lib.SamplerConfig(steps=8, record_trajectory=True),
    "confidence_reveal_noise": sampler_lib.SamplerConfig(steps=7, reveal_noise=4.5, top_k=5, record_trajectory=True),
    "confidence_greedy_margin": sampler_lib.SamplerConfig(steps=5, greedy=True, confidence="margin",
                                                          record_trajectory=True),
    "ancestral": sampler_lib.SamplerConfig(steps=6, method="ancestral", top_p=0.9, record_trajectory=True,
                                           schedule=MaskingSchedule("linear")),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fixed_positions_kept_no_mask_left_and_trajectory_consistent(name):
  cfg = CONFIGS[name]
  tokens, fixed, out = run(cfg)
  final = np.asarray(out.tokens_BxL)
  traj = np.asarray(out.trajectory_SxBxL)
  fixed = np.asarray(fixed)
  assert traj.shape == (cfg.steps + 1, B, L)
  assert not np.any(final == MASK)
  np.testing.assert_array_equal(final[fixed], np.asarray(tokens)[fixed])
  np.testing.assert_array_equal(traj[:, fixed], np.broadcast_to(np.asarray(tokens)[fixed], traj[:, fixed].shape))
  assert np.all(traj[0][~fixed] == MASK)
  np.testing.assert_array_equal(traj[-1], final)
  # Once revealed, a position never changes; reveal_step is the step at which it stopped being masked.
  revealed = traj != MASK
  assert np.all(revealed[1:] >= revealed[:-1])
  for s in range(cfg.steps):
    newly = revealed[s + 1] & ~revealed[s]
    np.testing.assert_array_equal(np.asarray(out.reveal_step_BxL)[newly], s)
    np.testing.assert_array_equal(traj[s + 1][revealed[s]], traj[s][revealed[s]])
  np.testing.assert_array_equal(np.asarray(out.reveal_step_BxL)[fixed], -1)


def test_reveal_count_follows_schedule_and_last_step_reveals_all():
  cfg = sampler_lib.SamplerConfig(steps=4, schedule=MaskingSchedule("linear"), record_trajectory=True)
  _, fixed, out = run(cfg)
  n_gen = int(np.sum(~np.asarray(fixed[0])))  # 16
  masked_after = np.sum(np.asarray(out.trajectory_SxBxL) == MASK, axis=-1)  # [S+1, B]
  expected = [n_gen] + [int(np.floor(n_gen * (1 - (s + 1) / 4) + 1e-4)) for s in range(4)]  # 16, 12, 8, 4, 0
  np.testing.assert_array_equal(masked_after, np.tile(np.asarray(expected)[:, None], (1, B)))


def test_one_token_per_step_mode():
  """steps == number of masked positions with the linear reveal schedule: one token per step."""
  cfg = sampler_lib.SamplerConfig(steps=16, greedy=True, schedule=MaskingSchedule("linear"), record_trajectory=True)
  _, _, out = run(cfg)
  masked_after = np.sum(np.asarray(out.trajectory_SxBxL) == MASK, axis=-1)
  np.testing.assert_array_equal(np.diff(masked_after, axis=0), -1)


def test_greedy_is_deterministic_and_equals_top_k_1():
  greedy = sampler_lib.SamplerConfig(steps=6, greedy=True)
  _, _, a = run(greedy, seed=0)
  _, _, b = run(greedy, seed=123)
  chex.assert_trees_all_equal(a.tokens_BxL, b.tokens_BxL)
  _, _, c = run(sampler_lib.SamplerConfig(steps=6, top_k=1), seed=5)
  chex.assert_trees_all_equal(a.tokens_BxL, c.tokens_BxL)
  _, _, d = run(sampler_lib.SamplerConfig(steps=6), seed=0)
  _, _, e = run(sampler_lib.SamplerConfig(steps=6), seed=0)
  chex.assert_trees_all_equal(d.tokens_BxL, e.tokens_BxL)


def test_greedy_reveals_most_confident_first():
  """With one reveal per step, the first revealed position is the argmax of the first step's confidence."""
  cfg = sampler_lib.SamplerConfig(steps=16, greedy=True, schedule=MaskingSchedule("linear"))
  tokens, fixed, out = run(cfg)
  x0 = jnp.where(fixed, tokens, MASK)
  probs = jax.nn.softmax(sampler_lib.sampling_logits(toy_denoiser()(x0, None)), axis=-1)
  conf = np.where(np.asarray(fixed), -np.inf, np.asarray(jnp.max(probs, -1)))
  first = np.asarray(out.reveal_step_BxL) == 0
  np.testing.assert_array_equal(np.argmax(first, axis=-1), np.argmax(conf, axis=-1))


def test_filter_logits_top_p_keeps_smallest_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = sampler_lib.filter_logits(logits, 1.0, 0, 0.7) > -1e8
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = sampler_lib.filter_logits(logits, 1.0, 3, 1.0) > -1e8
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_autoregressive_sampler_keeps_prompt_and_fills_rest_left_to_right():
  denoise = toy_denoiser()
  tokens = jnp.full((B, L), MASK, jnp.int32).at[:, :3].set(7)
  fixed = jnp.zeros((B, L), bool).at[:, :3].set(True)
  cfg = sampler_lib.SamplerConfig(greedy=True, record_trajectory=True)
  out = jax.jit(lambda r, x, f: sampler_lib.autoregressive_sample(denoise, r, x, f, cfg))(jax.random.key(0), tokens,
                                                                                          fixed)
  final = np.asarray(out.tokens_BxL)
  np.testing.assert_array_equal(final[:, :3], 7)
  assert not np.any(final == MASK)
  np.testing.assert_array_equal(np.asarray(out.reveal_step_BxL)[0], [-1, -1, -1] + list(range(2, L - 1)))
  # Greedy: position i is the argmax of the prediction at i - 1 given everything before it.
  logits = np.asarray(sampler_lib.sampling_logits(denoise(jnp.asarray(final), None)))
  np.testing.assert_array_equal(final[:, 3:], np.argmax(logits[:, 2:-1], axis=-1))
  trajectory = np.asarray(out.trajectory_SxBxL)  # one position more after every step
  assert trajectory.shape == (L, B, L)
  np.testing.assert_array_equal((trajectory != MASK).sum(-1)[:, 0], [3] * 3 + list(range(4, L + 1)))


def test_prompt_batch_places_prompt_masks_and_suffix_and_names_the_flag_at_fault():
  from dlm_jax.data import tokenizers
  tok = tokenizers.CharTokenizer("abc")
  tokens, fixed = prompt_batch(tok, 2, 8, prompt="ab", suffix="c")
  np.testing.assert_array_equal(tokens[0], list(tok.encode("ab")) + [MASK] * 5 + list(tok.encode("c")))
  np.testing.assert_array_equal(fixed[1], [True, True] + [False] * 5 + [True])
  assert prompt_batch(tok, 1, 8, length=3, prompt="a")[0].shape == (1, 4)
  with pytest.raises(ValueError, match=r"--length=7 must be between 1 and 6: the model's context is 8 tokens"):
    prompt_batch(tok, 1, 8, length=7, prompt="ab")
  with pytest.raises(ValueError, match=r"--prompt \(9 tokens\) .* take 9 of the model's 8-token context"):
    prompt_batch(tok, 1, 8, prompt="abcabcabc")
  with pytest.raises(ValueError, match="--num_samples=0"):
    prompt_batch(tok, 0, 8, prompt="a")
  with pytest.raises(ValueError, match="--suffix .* needs a diffusion model"):
    prompt_batch(tok, 1, 8, prompt="a", suffix="b", autoregressive=True)


def test_special_ids_are_never_sampled():
  _, fixed, out = run(sampler_lib.SamplerConfig(steps=4, temperature=5.0))
  generated = np.asarray(out.tokens_BxL)[~np.asarray(fixed)]
  assert not np.isin(generated, special_tokens.NEVER_SAMPLED).any()


def softmax_scores(logits_BxLxV, cand_BxL, kind):
  """The scoring before the sampler kept only a logsumexp: the full float32 softmax, then a gather or the top two."""
  probs_BxLxV = jax.nn.softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  if kind == "margin":
    top2 = jax.lax.top_k(probs_BxLxV, 2)[0]
    return top2[..., 0] - top2[..., 1]
  return jnp.take_along_axis(probs_BxLxV, cand_BxL[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("kind", ["prob", "margin"])
def test_logsumexp_confidence_equals_the_softmax_and_greedy_outputs_are_unchanged(kind, monkeypatch):
  logits = sampler_lib.remove_never_sampled(3 * jax.random.normal(jax.random.key(3), (B, L, V)))
  cand = jnp.argmax(logits, axis=-1)
  np.testing.assert_allclose(sampler_lib.confidence_scores(logits, cand, kind), softmax_scores(logits, cand, kind),
                             rtol=1e-5, atol=1e-7)
  bf16 = logits.astype(jnp.bfloat16)  # the GPU path: the scores of bfloat16 logits, computed in float32
  np.testing.assert_allclose(sampler_lib.confidence_scores(bf16, cand, kind), softmax_scores(bf16, cand, kind),
                             rtol=1e-5, atol=1e-7)
  cfg = sampler_lib.SamplerConfig(steps=6, greedy=True, confidence=kind, record_trajectory=True)
  _, _, new = run(cfg)
  monkeypatch.setattr(sampler_lib, "confidence_scores", softmax_scores)
  _, _, old = run(cfg)
  chex.assert_trees_all_equal(new.tokens_BxL, old.tokens_BxL)
  chex.assert_trees_all_equal(new.trajectory_SxBxL, old.trajectory_SxBxL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8)])
def test_sampled_draws_follow_the_filtered_softmax(dtype, temperature, top_k, top_p):
  """One reverse step over 8192 single-position rows: the counts of each token match softmax(filter(logits / T)) of
  the model's logits (never-sampled ids removed) within 5 standard deviations, and filtered ids never appear."""
  n = 8192
  logits_V = (2 * jax.random.normal(jax.random.key(11), (V,))).astype(dtype)
  denoise = sampler_lib.stateless(lambda x, t: jnp.broadcast_to(logits_V, x.shape + (V,)))
  cfg = sampler_lib.SamplerConfig(steps=1, temperature=temperature, top_k=top_k, top_p=top_p)
  out = jax.jit(lambda r: sampler_lib.sample(denoise, r, jnp.zeros((n, 1), jnp.int32), jnp.zeros((n, 1), bool), cfg))(
      jax.random.key(5))
  counts = np.bincount(np.asarray(out.tokens_BxL[:, 0]), minlength=V)
  reference = sampler_lib.filter_logits(sampler_lib.sampling_logits(logits_V)[None], temperature, top_k, top_p)[0]
  p = np.asarray(jax.nn.softmax(reference))
  assert np.all(counts[p < 1e-12] == 0)
  sigma = np.sqrt(n * p * (1 - p)) + 1e-9
  assert np.all(np.abs(counts - n * p) < 5 * sigma + 1), (counts, n * p)
