"""Sampler invariants: fixed positions never change, no mask survives, greedy is deterministic, the trajectory agrees
with the final sample, the reveal count follows the schedule."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm_jax import special_tokens
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
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
  probs = jax.nn.softmax(sampler_lib.sampling_logits(toy_denoiser()(x0, None), special_tokens.DEFAULT), axis=-1)
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
  logits = np.asarray(sampler_lib.sampling_logits(denoise(jnp.asarray(final), None), special_tokens.DEFAULT))
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


def test_continue_past_window_slides_the_window_over_the_generated_text():
  """A stand-in sampler that writes, left to right, "the token before + 1" into every masked position: the whole
  output counts up from the prompt only if every window's fixed prefix is exactly the text before it."""
  from dlm_jax.sampling import continue_past_window
  calls = []

  def count_up(rng, tokens_BxL, fixed_BxL):
    calls.append((np.asarray(jax.random.key_data(rng)).tolist(), tokens_BxL.shape, fixed_BxL.copy()))
    assert np.all((tokens_BxL == MASK) == ~fixed_BxL)  # the new positions are masked, the rest given
    x = tokens_BxL.copy()
    for i in np.flatnonzero(~fixed_BxL[0]):
      x[:, i] = x[:, i - 1] + 1
    return sampler_lib.SampleOutput(tokens_BxL=x, reveal_step_BxL=None, confidence_BxL=None, trajectory_SxBxL=None,
                                    steps_B=np.full((2,), 3), lengths_B=None, network_calls=3)

  prompt_BxP = np.array([[5, 6, 7], [20, 21, 22]], np.int32)
  out = continue_past_window(count_up, jax.random.key(0), prompt_BxP, length=40, context=16, chunk=5, mask_id=MASK)
  np.testing.assert_array_equal(out.tokens_BxL, np.array([np.arange(5, 48), np.arange(20, 63)]))
  # window 0: 3 prompt + 13 new; then ceil((40 - 13) / 5) = 6 windows of 11 kept + 5 new, the last one's surplus cut
  assert out.windows == len(calls) == 7 and out.network_calls == 21
  np.testing.assert_array_equal(out.steps_B, [21, 21])
  assert all(shape == (2, 16) for _, shape, _ in calls)
  assert [int(f[0].sum()) for _, _, f in calls] == [3] + [11] * 6
  assert len({str(key) for key, _, _ in calls}) == 7  # each window its own draw
  with pytest.raises(ValueError, match="--continue_chunk=16 must be between 1 and 15"):
    continue_past_window(count_up, jax.random.key(0), prompt_BxP, 40, context=16, chunk=16, mask_id=MASK)


def test_generate_continues_a_trained_run_past_its_context(trained_run):
  """launch.sample's library call with --length beyond the context: the prompt kept, every new token a real one, one
  window per chunk; without --continue_chunk, or with what cannot slide, one error naming the flag."""
  from dlm_jax.sampling import ContinuedOutput, generate
  from dlm_jax.training import checkpoint
  run = checkpoint.load_for_inference(str(trained_run[0]), weights="raw")
  context = int(run.config.data.seq_len)
  prompt_ids = run.tokenizer.encode("The ")
  result = generate(run, num_samples=2, prompt="The ", length=3 * context, continue_chunk=context // 4,
                    overrides={"steps": 8})
  tokens_BxL = np.asarray(result.output.tokens_BxL)
  assert isinstance(result.output, ContinuedOutput) and tokens_BxL.shape == (2, len(prompt_ids) + 3 * context)
  np.testing.assert_array_equal(tokens_BxL[:, :len(prompt_ids)], np.tile(prompt_ids, (2, 1)))
  assert not np.isin(tokens_BxL, [MASK]).any()
  assert result.output.windows == 1 + -(-(3 * context - (context - len(prompt_ids))) // (context // 4))
  assert f"{result.output.windows} windows of {context} positions" in result.summary()
  with pytest.raises(ValueError, match="--continue_chunk"):
    generate(run, num_samples=1, prompt="The ", length=3 * context)
  with pytest.raises(ConfigError, match="does not combine with --suffix"):
    generate(run, num_samples=1, prompt="The ", suffix="end", length=3 * context, continue_chunk=8)


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
  logits = sampler_lib.remove_never_sampled(3 * jax.random.normal(jax.random.key(3), (B, L, V)), special_tokens.DEFAULT)
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


@pytest.mark.parametrize("dtype, temperature, top_k, top_p, precision", [
    (jnp.float32, 0.7, 4, 1.0, "float32"), (jnp.bfloat16, 1.3, 0, 0.8, "float64"),  # top-k; top-p with float64 noise
    *(pytest.param(*case, marks=pytest.mark.slow)
      for case in [(jnp.float32, 1.0, 0, 1.0, "float32"), (jnp.bfloat16, 1.0, 0, 1.0, "float64"),
                   (jnp.bfloat16, 0.7, 4, 1.0, "float32"), (jnp.float32, 1.3, 0, 0.8, "float64")])])
def test_sampled_draws_follow_the_filtered_softmax(dtype, temperature, top_k, top_p, precision):
  """One reverse step over 8192 single-position rows: the counts of each token match softmax(filter(logits / T)) of
  the model's logits (never-sampled ids removed) within 5 standard deviations, and filtered ids never appear."""
  n = 8192
  logits_V = (2 * jax.random.normal(jax.random.key(11), (V,))).astype(dtype)
  denoise = sampler_lib.stateless(lambda x, t: jnp.broadcast_to(logits_V, x.shape + (V,)))
  cfg = sampler_lib.SamplerConfig(steps=1, temperature=temperature, top_k=top_k, top_p=top_p, draw_precision=precision)
  out = jax.jit(lambda r: sampler_lib.sample(denoise, r, jnp.zeros((n, 1), jnp.int32), jnp.zeros((n, 1), bool), cfg))(
      jax.random.key(5))
  counts = np.bincount(np.asarray(out.tokens_BxL[:, 0]), minlength=V)
  clean_1xV = sampler_lib.sampling_logits(logits_V, special_tokens.DEFAULT)[None]
  reference = sampler_lib.filter_logits(clean_1xV, temperature, top_k, top_p)[0]
  p = np.asarray(jax.nn.softmax(reference))
  assert np.all(counts[p < 1e-12] == 0)
  sigma = np.sqrt(n * p * (1 - p)) + 1e-9
  assert np.all(np.abs(counts - n * p) < 5 * sigma + 1), (counts, n * p)


def test_draw_precision_picks_the_gumbel_noise_and_float32_noise_cuts_the_tail():
  """"float32" is JAX's default Gumbel noise and "float64" its 64-bit mode="highest", draw for draw. With float32 noise
  g lies in [-log(-log(tiny)), -log(-log(1 - 2^-23))] = [-4.47, 15.9], so a token 22 nats below another (true
  probability e^-22 ~ 2.8e-10) can never win: g_1 - g_0 <= 20.4. The float64 noise reaches ~44 (no float64 event
  cut)."""
  from dlm_jax.sampling import primitives
  logits = jax.random.normal(jax.random.key(0), (64, 9))
  key = jax.random.key(1)
  np.testing.assert_array_equal(primitives.categorical(key, logits, "float32"), jax.random.categorical(key, logits))
  np.testing.assert_array_equal(primitives.categorical(key, logits, "float64"),
                                jax.random.categorical(key, logits, mode="highest"))
  assert not np.array_equal(primitives.categorical(key, logits, "float64"), primitives.categorical(key, logits))
  info = np.finfo(np.float32)
  low, high = -np.log(-np.log(np.float64(info.tiny))), -np.log(-np.log1p(-2.0 ** -23))
  assert high - low < 22 and -np.log(-np.log1p(-2.0 ** -64)) > 44  # the bounds the docstrings state
  noise = jax.random.gumbel(jax.random.key(2), (1 << 20,))  # float32 noise: within its bounds
  assert low - 1e-3 <= float(noise.min()) and float(noise.max()) <= high + 1e-3
  gap_BxV = jnp.broadcast_to(jnp.asarray([0.0, -22.0]), (1 << 16, 2))
  assert not np.any(np.asarray(primitives.categorical(jax.random.key(3), gap_BxV, "float32")))
  with pytest.raises(ValueError, match="draw precision must be one of"):
    primitives.categorical(key, logits, "float16")
  with pytest.raises(ConfigError, match="draw_precision must be one of"):
    sampler_lib.SamplerConfig(draw_precision="float16")


# -- decoding strategies (#11) ----------------------------------------------------------------------------------------
def confident_denoiser(scale=1.0, eos_at=None):
  """toy_denoiser's logits times `scale` (large: near one-hot, confidence ~1); with `eos_at`, EOS dominates there."""
  base = toy_denoiser()

  def denoise(x_BxL, t_B):
    logits = scale * base(x_BxL, t_B)
    if eos_at is not None:
      logits = logits.at[:, :, special_tokens.EOS].set(-1e4).at[:, eos_at, special_tokens.EOS].set(1e4)
    return logits

  return denoise


def run_with(cfg, denoise, seed=0, fixed=None):
  tokens = jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  fixed = fixed if fixed is not None else jnp.zeros((B, L), bool).at[:, :5].set(True).at[:, -3:].set(True)
  out = jax.jit(lambda r, x, f: sampler_lib.sample(sampler_lib.stateless(denoise), r, x, f, cfg))(
      jax.random.key(seed), tokens, fixed)
  return np.asarray(tokens), np.asarray(fixed), out


STRATEGIES = {
    "blocks": sampler_lib.SamplerConfig(steps=8, block_length=4),
    "blocks_ancestral": sampler_lib.SamplerConfig(steps=8, block_length=5, method="ancestral"),
    "threshold": sampler_lib.SamplerConfig(steps=8, threshold=0.5),
    "threshold_blocks": sampler_lib.SamplerConfig(steps=8, threshold=0.3, block_length=6),
    "confidence_stop": sampler_lib.SamplerConfig(steps=8, confidence_stop=0.6),
    "token_stop": sampler_lib.SamplerConfig(steps=8, token_stop=0.6),
    "low_confidence_remasking": sampler_lib.SamplerConfig(steps=8, remasking="low_confidence", remask_eta=0.5),
    "remdm_cap": sampler_lib.SamplerConfig(steps=12, method="ancestral", remasking="remdm_cap", remask_eta=0.5),
    "remdm_loop": sampler_lib.SamplerConfig(steps=12, method="ancestral", remasking="remdm_loop", remask_eta=0.1),
    "guidance": sampler_lib.SamplerConfig(steps=8, guidance_scale=1.5),
    "cache": sampler_lib.SamplerConfig(steps=40, method="ancestral", cache="unchanged"),
    "eos_stop": sampler_lib.SamplerConfig(steps=8, eos_stop=True),
}


@pytest.mark.parametrize("name", ["confidence_stop", "token_stop", "eos_stop", "guidance"])  # the rest: the registry
# test below
def test_every_strategy_keeps_fixed_tokens_and_leaves_no_mask(name):
  cfg = dataclasses.replace(STRATEGIES[name], record_trajectory=True)
  tokens, fixed, out = run_with(cfg, toy_denoiser())
  final, traj = np.asarray(out.tokens_BxL), np.asarray(out.trajectory_SxBxL)
  assert not np.any(final == MASK)
  np.testing.assert_array_equal(traj[:, fixed], np.broadcast_to(tokens[fixed], traj[:, fixed].shape))
  np.testing.assert_array_equal(traj[-1], final)
  assert traj.shape == (cfg.max_steps(L) + 1, B, L)
  steps = np.asarray(out.steps_B)
  assert np.all((1 <= steps) & (steps <= cfg.max_steps(L)))
  kept = ~fixed & (final != special_tokens.PAD) & ((final != special_tokens.EOS) | (not cfg.eos_stop))
  np.testing.assert_array_equal(np.asarray(out.lengths_B), np.sum(kept, -1))


@pytest.mark.parametrize("block_length,method", [(4, "confidence"), (5, "ancestral"), (6, "threshold")])
def test_blocks_reveal_nothing_beyond_the_current_block(block_length, method):
  kwargs = dict(threshold=0.3) if method == "threshold" else dict(method=method)
  cfg = sampler_lib.SamplerConfig(steps=8, block_length=block_length, record_trajectory=True, **kwargs)
  _, fixed, out = run_with(cfg, toy_denoiser())
  block_of = np.where(~fixed, np.cumsum(~fixed, axis=1) - 1, -1) // block_length
  for x in np.asarray(out.trajectory_SxBxL):
    for row in range(B):
      masked = (x[row] == MASK) & ~fixed[row]
      revealed = (x[row] != MASK) & ~fixed[row]
      if masked.any() and revealed.any():
        # Every revealed position lies in a block no later than the first block that still holds a mask.
        assert block_of[row][revealed].max() <= block_of[row][masked].min()


def test_block_reveal_counts_follow_each_blocks_own_schedule():
  """16 generated positions in blocks of 8, 4 linear steps: each block gets 2 steps and halves its masks per step."""
  cfg = sampler_lib.SamplerConfig(steps=4, block_length=8, schedule=MaskingSchedule("linear"), record_trajectory=True)
  _, _, out = run_with(cfg, toy_denoiser())
  masked_after = np.sum(np.asarray(out.trajectory_SxBxL) == MASK, axis=-1)
  np.testing.assert_array_equal(masked_after, np.tile(np.asarray([16, 12, 8, 4, 0])[:, None], (1, B)))
  np.testing.assert_array_equal(out.steps_B, 4)
  with pytest.raises(ConfigError, match="steps must be >= 3"):  # the bound counts all L = 24 positions
    run_with(dataclasses.replace(cfg, steps=2), toy_denoiser())


def test_threshold_reveals_at_least_one_per_step_and_everything_above_it():
  cfg = sampler_lib.SamplerConfig(steps=8, threshold=0.4, greedy=True, record_trajectory=True)
  _, fixed, out = run_with(cfg, confident_denoiser(scale=0.7))
  traj = np.asarray(out.trajectory_SxBxL)
  masked_after = np.sum(traj == MASK, axis=-1)  # [L + 1, B]
  steps = np.asarray(out.steps_B)
  n_gen = int(np.sum(~fixed[0]))
  for row in range(B):
    used = masked_after[: steps[row] + 1, row]
    assert used[0] == n_gen and used[-1] == 0
    assert np.all(np.diff(used) <= -1)  # at least one per step, so at most n_gen steps
  assert np.all(steps <= n_gen)
  # Each reveal past the first of its step had confidence > threshold (greedy candidates, probability scores).
  reveal_step, conf = np.asarray(out.reveal_step_BxL), np.asarray(out.confidence_BxL)
  for row in range(B):
    for s in range(steps[row]):
      scores = np.sort(conf[row][reveal_step[row] == s])[::-1]
      assert len(scores) >= 1 and np.all(scores[1:] > 0.4)
  # A near-one-hot denoiser is sure everywhere: the whole sequence in one step.
  _, _, sure = run_with(cfg, confident_denoiser(scale=100.0))
  np.testing.assert_array_equal(sure.steps_B, 1)


def test_confidence_stop_spends_only_the_steps_it_needs():
  cfg = sampler_lib.SamplerConfig(steps=8, confidence_stop=0.9)
  _, _, sure = run_with(cfg, confident_denoiser(scale=100.0))
  np.testing.assert_array_equal(sure.steps_B, 1)
  np.testing.assert_array_equal(sure.network_calls, 1)
  _, _, unsure = run_with(cfg, confident_denoiser(scale=0.01))  # nearly uniform: never sure, the full budget
  np.testing.assert_array_equal(unsure.steps_B, 8)
  np.testing.assert_array_equal(unsure.network_calls, 8)


def half_sure_denoiser():
  """toy_denoiser's logits x 100 (sure, confidence ~1) at even positions and x 0.01 (unsure, ~1/V) at odd ones."""
  base = toy_denoiser()
  scale_1xLx1 = jnp.where(jnp.arange(L) % 2 == 0, 100.0, 0.01)[None, :, None]
  return lambda x_BxL, t_B: scale_1xLx1 * base(x_BxL, t_B)


def test_token_stop_reveals_each_sure_token_at_once_and_never_remasks_it():
  """Per-token budget (seed 001 §9.1): every sure position is revealed at step 0 and never revised, the unsure ones
  take the schedule's steps; without it the schedule spreads the sure ones over steps, and confidence_stop (the
  per-block budget) never fires because half the block stays unsure."""
  sure_BxL = np.broadcast_to(np.arange(L) % 2 == 0, (B, L))
  runs = {name: run_with(dataclasses.replace(cfg, record_trajectory=True), half_sure_denoiser())
          for name, cfg in (("token_stop", sampler_lib.SamplerConfig(steps=8, token_stop=0.9)),
                            ("block_stop", sampler_lib.SamplerConfig(steps=8, confidence_stop=0.9)),
                            ("plain", sampler_lib.SamplerConfig(steps=8)))}
  _, fixed, out = runs["token_stop"]
  reveal_step = np.asarray(out.reveal_step_BxL)
  generated = ~fixed
  np.testing.assert_array_equal(reveal_step[generated & sure_BxL], 0)
  assert reveal_step[generated & ~sure_BxL].max() == 7  # the unsure ones: the schedule, to its last step
  for name in ("block_stop", "plain"):
    other = np.asarray(runs[name][2].reveal_step_BxL)
    assert other[generated & sure_BxL].max() > 0, name
    assert np.mean(reveal_step[generated] + 1) < np.mean(other[generated] + 1), name
  # With low-confidence remasking a sure token, revealed with confidence >= token_stop, is final; the unsure ones
  # are still revised.
  cfg = sampler_lib.SamplerConfig(steps=8, token_stop=0.9, remasking="low_confidence", remask_eta=0.5,
                                  remask_t_off=0.0, record_trajectory=True)
  _, fixed, out = run_with(cfg, half_sure_denoiser())
  traj = np.asarray(out.trajectory_SxBxL)
  remasked_SxBxL = (traj[1:] == MASK) & (traj[:-1] != MASK)
  assert not remasked_SxBxL[:, sure_BxL & ~fixed].any()
  assert remasked_SxBxL[:, ~sure_BxL & ~fixed].any()
  with pytest.raises(ConfigError, match="token_stop rank by confidence"):
    sampler_lib.SamplerConfig(steps=8, token_stop=0.9, method="ancestral")


@pytest.mark.parametrize("name", ["low_confidence_remasking", "remdm_cap", "remdm_loop"])
def test_remasking_revises_generated_tokens_but_never_fixed_ones(name):
  cfg = dataclasses.replace(STRATEGIES[name], record_trajectory=True)
  remasked_any = False
  for seed in range(3):
    tokens, fixed, out = run_with(cfg, toy_denoiser(), seed=seed)
    traj = np.asarray(out.trajectory_SxBxL)
    remasked = (traj[1:] == MASK) & (traj[:-1] != MASK)
    assert not np.any(remasked[:, fixed])
    remasked_any |= bool(remasked.any())
    np.testing.assert_array_equal(traj[:, fixed], np.broadcast_to(tokens[fixed], traj[:, fixed].shape))
  assert remasked_any, "the policy never remasked anything: the test would not see a remasked prompt token"


def test_low_confidence_remasking_keeps_the_masked_count_on_schedule():
  """Remasking m tokens and revealing k + m keeps the masked count at the schedule's target (the caps do not bind)."""
  cfg = sampler_lib.SamplerConfig(steps=4, remasking="low_confidence", remask_eta=0.25, remask_t_off=0.0,
                                  schedule=MaskingSchedule("linear"), record_trajectory=True)
  _, _, out = run_with(cfg, toy_denoiser())
  masked_after = np.sum(np.asarray(out.trajectory_SxBxL) == MASK, axis=-1)
  np.testing.assert_array_equal(masked_after, np.tile(np.asarray([16, 12, 8, 4, 0])[:, None], (1, B)))


def test_remdm_spends_every_step_and_eta_zero_is_mdlm():
  cfg = STRATEGIES["remdm_cap"]
  _, _, out = run_with(cfg, toy_denoiser())
  np.testing.assert_array_equal(out.steps_B, cfg.steps)
  _, _, zero = run_with(dataclasses.replace(cfg, remask_eta=0.0), toy_denoiser(), seed=3)
  _, _, mdlm = run_with(dataclasses.replace(cfg, remasking="none"), toy_denoiser(), seed=3)
  chex.assert_trees_all_equal(zero.tokens_BxL, mdlm.tokens_BxL)


def test_eos_closes_the_rest_of_the_sample_and_reports_lengths():
  fixed = jnp.zeros((B, L), bool).at[:, :5].set(True)  # no suffix
  cfg = sampler_lib.SamplerConfig(steps=8, eos_stop=True)
  _, _, out = run_with(cfg, confident_denoiser(eos_at=12), fixed=fixed)
  final = np.asarray(out.tokens_BxL)
  np.testing.assert_array_equal(final[:, 12], special_tokens.EOS)
  np.testing.assert_array_equal(final[:, 13:], special_tokens.PAD)
  assert not np.any(np.isin(final[:, 5:12], [MASK, special_tokens.PAD, special_tokens.EOS]))
  np.testing.assert_array_equal(out.lengths_B, 7)  # positions 5..11
  _, _, off = run_with(dataclasses.replace(cfg, eos_stop=False), confident_denoiser(eos_at=12), fixed=fixed)
  np.testing.assert_array_equal(off.lengths_B, L - 5)
  assert not np.any(np.asarray(off.tokens_BxL)[:, 13:] == special_tokens.PAD)


def test_unchanged_cache_is_bit_identical_and_skips_calls():
  """Ancestral with 40 steps for 16 positions: many steps reveal nothing, and the cache skips their network calls."""
  cfg = STRATEGIES["cache"]
  _, _, cached = run_with(cfg, toy_denoiser(), seed=11)
  _, _, plain = run_with(dataclasses.replace(cfg, cache="none"), toy_denoiser(), seed=11)
  chex.assert_trees_all_equal(cached.tokens_BxL, plain.tokens_BxL)
  chex.assert_trees_all_equal(cached.reveal_step_BxL, plain.reveal_step_BxL)
  assert int(plain.network_calls) == 40
  assert int(cached.network_calls) < 40


def test_guidance_combines_conditional_and_prompt_masked_logits():
  first_token = jax.random.normal(jax.random.key(3), (V, V))

  def base(x_BxL, t_B):  # toy_denoiser plus every position's dependence on the first (prompt) token
    return toy_denoiser()(x_BxL, t_B) + 3.0 * first_token[x_BxL[:, :1]]
  tokens, fixed, _ = run_with(sampler_lib.SamplerConfig(steps=1), base)
  cfg = sampler_lib.SamplerConfig(steps=1, greedy=True, guidance_scale=1.5)
  _, _, guided = run_with(cfg, base)
  x0 = jnp.where(fixed, tokens, MASK)
  expected = (2.5 * base(x0, None) - 1.5 * base(jnp.full_like(x0, MASK), None))
  expected = np.where(fixed, tokens,
                      np.asarray(jnp.argmax(sampler_lib.sampling_logits(expected, special_tokens.DEFAULT), -1)))
  np.testing.assert_array_equal(guided.tokens_BxL, expected)
  assert int(guided.network_calls) == 2
  _, _, zero = run_with(dataclasses.replace(cfg, guidance_scale=0.0), base)
  _, _, conditional = run_with(sampler_lib.SamplerConfig(steps=1, greedy=True), base)
  chex.assert_trees_all_equal(zero.tokens_BxL, conditional.tokens_BxL)
  assert not np.array_equal(np.asarray(guided.tokens_BxL), np.asarray(conditional.tokens_BxL))


def test_verifier_keeps_an_accepted_draft_and_redraws_what_it_rejects():
  from dlm_jax.sampling import hybrid
  denoise = sampler_lib.stateless(toy_denoiser())
  tokens = jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  fixed = jnp.zeros((B, L), bool).at[:, :5].set(True)
  cfg = sampler_lib.SamplerConfig(steps=8)
  draft = sampler_lib.sample(denoise, jax.random.split(jax.random.key(0), 2)[0], tokens, fixed, cfg).tokens_BxL

  def verifier_of(reference_BxL, doubted=()):
    """Causal logits that put all mass on reference[i] at i - 1, except at the `doubted` positions (uniform)."""
    def logits(x_BxL):
      del x_BxL
      out = 50.0 * jax.nn.one_hot(jnp.roll(reference_BxL, -1, axis=1), V)
      for p in doubted:
        out = out.at[:, p - 1].set(0.0)
      return out
    return logits

  vcfg = hybrid.VerifierConfig(rounds=2, threshold=0.5, steps=4)
  perfect = hybrid.verified_sample(denoise, verifier_of(draft), jax.random.key(0), tokens, fixed, cfg, vcfg)
  chex.assert_trees_all_equal(perfect.tokens_BxL, draft)
  np.testing.assert_array_equal(perfect.rejected_RxB, 0)
  doubting = hybrid.verified_sample(denoise, verifier_of(draft, doubted=(9, 15)), jax.random.key(0), tokens, fixed,
                                    cfg, vcfg)
  np.testing.assert_array_equal(doubting.rejected_RxB, 2)  # 9 and 15, in both rounds
  keep = np.ones(L, bool)
  keep[[9, 15]] = False
  np.testing.assert_array_equal(np.asarray(doubting.tokens_BxL)[:, keep], np.asarray(draft)[:, keep])
  assert 8 < int(doubting.network_calls) <= 8 + 2 * 4  # a redraw of 2 positions may finish before its 4 steps
  # The window spreads each rejection to the next generated positions, never onto fixed ones.
  prob = jnp.ones((1, 8)).at[0, 2].set(0.1).at[0, 6].set(0.1)
  scored = jnp.ones((1, 8), bool).at[0, 7].set(False)
  np.testing.assert_array_equal(hybrid.rejected_positions(prob, scored, 0.5, window=2)[0],
                                [False, False, True, True, True, False, True, False])


@pytest.mark.parametrize("kwargs,match", [
    (dict(remasking="remdm_cap"), "method='ancestral'"),
    (dict(method="ancestral", remasking="low_confidence"), "confidence method"),
    (dict(method="ancestral", threshold=0.9), "method='confidence'"),
    (dict(method="ancestral", remasking="remdm_loop", remask_eta=0.5), "lower remask_eta"),
    (dict(cache="always"), "cache must be one of"),
    (dict(block_length=-1), "block_length"),
])
def test_inconsistent_strategies_are_refused_by_name(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    sampler_lib.SamplerConfig(**kwargs)


def test_schedule_time_of_mask_rate_inverts_mask_rate():
  t = jnp.linspace(0.0, 1.0, 11)
  for schedule in (MaskingSchedule("linear"), MaskingSchedule("cosine"), MaskingSchedule("polynomial", exponent=3.0),
                   MaskingSchedule("loglinear")):
    np.testing.assert_allclose(schedule.time_of_mask_rate(schedule.mask_rate(t)), t, atol=1e-5)


# -- the component registries (#25): every legal combination honours the sampler's contract --------------------------
def tiny_transformer():
  """A 1-layer transformer with a KV cache (so the dual/prefix networks run), random weights, vocabulary V."""
  from flax import nnx

  from configs import default
  from dlm_jax import models
  c = default.get_config()
  c.data.seq_len = L
  c.model.update(num_layers=1, width=16, num_heads=2, mlp_dim=32, dtype="float32")
  return nnx.split(models.get_model(c, V, nnx.Rngs(0)), nnx.Param, ...)


LEGAL = [row for row in sampler_lib.component_combinations() if not row[4]]
# The fast suite runs every reveal x network pair and each remask with the plain network; the remasks with the caching
# networks are @slow (each combination compiles a sampler with a real model).
LEGAL_PARAMS = [pytest.param(*row[:4], id="-".join(row[:3]),
                             marks=[pytest.mark.slow] if row[1] != "none" and row[2] != "none" else [])
                for row in LEGAL]


def test_the_rules_accept_every_component_at_least_once_and_refuse_with_a_reason():
  """Each registered reveal policy, remask and network appears in some legal combination; refusals say why."""
  for position, registry in ((0, sampler_lib.strategies.REVEALS), (1, sampler_lib.strategies.REMASKS),
                             (2, sampler_lib.strategies.NETWORKS)):
    assert {row[position] for row in LEGAL} == set(registry)
  refused = [row for row in sampler_lib.component_combinations() if row[4]]
  assert refused and all("remasking=" in row[4] for row in refused)


@pytest.fixture(scope="module")
def tiny_model():
  return tiny_transformer()


@pytest.mark.parametrize("reveal,remask,network,fields", LEGAL_PARAMS)
def test_every_legal_component_combination_keeps_fixed_positions_and_leaves_no_mask(reveal, remask, network, fields,
                                                                                     tiny_model):
  """On a real (random) transformer, so that the KV-cache networks run: fixed tokens never change, no mask is left,
  and without remasking the masked count never rises from one step to the next."""
  graphdef, params, other = tiny_model
  cfg = sampler_lib.SamplerConfig(steps=8, record_trajectory=True, **fields)
  tokens = jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  fixed = np.zeros((B, L), bool)
  fixed[:, :5] = True
  fixed[:, -3:] = True
  out = sampler_lib.make_sampler(graphdef, other, cfg)(params, jax.random.key(1), tokens, jnp.asarray(fixed))
  final, traj = np.asarray(out.tokens_BxL), np.asarray(out.trajectory_SxBxL)
  assert not np.any(final == MASK)
  np.testing.assert_array_equal(traj[:, fixed], np.broadcast_to(np.asarray(tokens)[fixed], traj[:, fixed].shape))
  np.testing.assert_array_equal(traj[-1], final)
  masked_after = np.sum(traj == MASK, axis=-1)
  assert masked_after[0, 0] == L - 8
  if remask == "none":
    assert np.all(np.diff(masked_after, axis=0) <= 0), masked_after
  assert np.all((1 <= np.asarray(out.steps_B)) & (np.asarray(out.steps_B) <= cfg.max_steps(L)))


def test_entropy_confidence_is_exp_of_minus_the_predictive_entropy():
  logits = sampler_lib.remove_never_sampled(3 * jax.random.normal(jax.random.key(3), (B, L, V)), special_tokens.DEFAULT)
  p = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  entropy = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), axis=-1)
  scores = np.asarray(sampler_lib.confidence_scores(logits, jnp.argmax(logits, -1), "entropy"))
  np.testing.assert_allclose(scores, np.exp(-entropy), rtol=1e-5)
  # One-hot: 1; uniform over the n sampled ids: 1 / n.
  sure = jnp.full((1, 1, V), -1e4).at[0, 0, 7].set(1e4)
  flat = sampler_lib.remove_never_sampled(jnp.zeros((1, 1, V)), special_tokens.DEFAULT)
  n = V - len(special_tokens.NEVER_SAMPLED)
  np.testing.assert_allclose(sampler_lib.confidence_scores(sure, jnp.zeros((1, 1), jnp.int32), "entropy"), 1.0)
  np.testing.assert_allclose(sampler_lib.confidence_scores(flat, jnp.zeros((1, 1), jnp.int32), "entropy"), 1.0 / n,
                             rtol=1e-6)


def test_entropy_ranked_reveal_reveals_the_lowest_entropy_position_first():
  """One reveal per step from a denoiser whose rankings disagree: position 9 predicts one token with p = 0.55 and the
  rest spread evenly (top probability and margin highest), position 14 two tokens at 1/2 each (lowest entropy), every
  other position is uniform. Entropy-ranked reveal takes 14 first, top-probability and margin take 9."""
  ids = np.arange(special_tokens.NUM_SPECIAL, V)
  assert not np.isin(ids, special_tokens.NEVER_SAMPLED).any()
  probs = np.zeros((L, V))
  probs[:, ids] = 1.0 / len(ids)
  probs[9, ids] = 0.45 / (len(ids) - 1)
  probs[9, ids[0]] = 0.55
  probs[14] = 0.0
  probs[14, ids[:2]] = 0.5
  logits_LxV = jnp.asarray(np.log(np.maximum(probs, 1e-30)), jnp.float32)
  denoise = lambda x_BxL, t_B: jnp.broadcast_to(logits_LxV, x_BxL.shape + (V,))
  first = {}
  for kind in ("entropy", "prob", "margin"):
    cfg = sampler_lib.SamplerConfig(steps=16, greedy=True, confidence=kind, schedule=MaskingSchedule("linear"))
    _, _, out = run_with(cfg, denoise)
    first[kind] = np.argmax(np.asarray(out.reveal_step_BxL) == 0, axis=-1)
  np.testing.assert_array_equal(first["entropy"], 14)
  np.testing.assert_array_equal(first["prob"], 9)
  np.testing.assert_array_equal(first["margin"], 9)


def test_the_legal_combinations_table_of_docs_sampling_md_is_the_rules():
  from conftest import REPO
  text = (REPO / "docs" / "sampling.md").read_text(encoding="utf-8")
  header = next(line for line in text.splitlines() if line.startswith("| reveal \\ remask |"))
  remasks = [cell.strip(" `") for cell in header.split("|")[2:-1]]
  assert remasks == list(sampler_lib.strategies.REMASKS)
  documented = {}
  for line in text.splitlines():
    cells = [cell.strip(" `") for cell in line.split("|")[1:-1]]
    if cells and cells[0] in sampler_lib.strategies.REVEALS:
      documented.update({(cells[0], m): yes == "yes" for m, yes in zip(remasks, cells[1:])})
  legal = {(row[0], row[1]): not row[4] for row in sampler_lib.component_combinations() if row[2] == "none"}
  assert documented == legal
  # ... and a legal pair takes every network
  assert all(not row[4] for row in sampler_lib.component_combinations() if legal[(row[0], row[1])])


@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_kv_cached_steps_recompute_only_their_rows_and_refill_once_per_block(cache):
  """Fast-dLLM's caches, counted by a wrapped denoiser: one full pass (prefill) when a block starts, and in between the
  step network recomputes only the current block (dual) or the suffix from it (prefix) -- a cache that recomputed every
  position, or refilled at every step, would still sample correctly and only this count would notice."""
  denoise = toy_denoiser()
  calls = []

  def record(kind, queries):
    jax.debug.callback(lambda: calls.append((kind, queries)))

  def prefill(x_BxL, t_B, positions_BxQ):
    record("prefill", positions_BxQ.shape[1])
    return jnp.take_along_axis(denoise(x_BxL, t_B), positions_BxQ[..., None], axis=1), jnp.zeros((B, L))

  def step(x_BxL, t_B, positions_BxQ, kv):
    record("step", positions_BxQ.shape[1])
    return jnp.take_along_axis(denoise(x_BxL, t_B), positions_BxQ[..., None], axis=1), kv

  fixed = jnp.zeros((B, L), bool).at[:, :4].set(True)  # 20 generated positions: 5 blocks of 4, 2 steps each
  tokens = jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  cfg = sampler_lib.SamplerConfig(steps=10, block_length=4, greedy=True, cache=cache)
  out = sampler_lib.sample(sampler_lib.stateless(denoise), jax.random.key(0), tokens, fixed, cfg,
                           kv_cache_fns=(prefill, step))
  jax.block_until_ready(out.tokens_BxL)
  assert [kind for kind, _ in calls] == ["prefill", "step"] * 5  # refilled when each block starts, not in between
  # The full pass returns the logits of the block (dual) or of every position (prefix).
  assert all(queries == (4 if cache == "dual" else L) for kind, queries in calls if kind == "prefill")
  recomputed = [queries for kind, queries in calls if kind == "step"]
  # dual: the block's 4 rows; prefix: from the block's start (position 4 + 4 j, rounded down to a multiple of 4) on.
  assert recomputed == ([4] * 5 if cache == "dual" else [L - 4 * (1 + j) for j in range(5)])
  assert int(out.network_calls) == 10 and not (out.tokens_BxL == MASK).any()
