"""Plug-and-play control (issue 30, seed 004): the property labels, the guidance equations of sampling/control.py,
steering that moves the samplers, the classifier's training and checkpoint, and the refusals."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from dlm_jax.diffusion import gaussian
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import control as control_eval
from dlm_jax.models.classifier import ClassifierConfig, PropertyClassifier
from dlm_jax.sampling import continuous, control, sampler
from dlm_jax.sampling.config import SamplerConfig

SCRIPT = control_eval.PROPERTIES["script"]
DEVA, LATN = SCRIPT.classes.index("deva"), SCRIPT.classes.index("latn")


def test_script_property_labels_texts_by_their_majority_script():
  assert SCRIPT.labels(["यह एक वाक्य है।", "kya scene hai", "यह text है", "the cat यह", "1234 ...", ""]).tolist() == [
      DEVA, LATN, DEVA, LATN, -1, -1]
  assert control_eval.success_rate(SCRIPT, ["यह", "yeh", "12"], DEVA) == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match="--target='cyrl'.*'deva', 'latn'"):
    SCRIPT.index("cyrl")


def test_masked_guidance_adds_the_scaled_gradient_at_the_one_hot_input():
  """log p(c | u) = sum_i log(sum_v a_v u_iv): its gradient at one_hot(x) is G_iv = a_v / a_{x_i}, so the guided
  logits are logits + scale a_v / a_{x_i}, exactly (a gradient taken anywhere but at one_hot(x_t), or unscaled,
  breaks the equality)."""
  vocab, scale = 6, 0.7
  a_V = jnp.arange(1.0, vocab + 1.0)
  x_BxL = jnp.asarray([[0, 3, 5], [2, 2, 1]], jnp.int32)
  logits_BxLxV = jax.random.normal(jax.random.key(0), (2, 3, vocab))
  log_prob = lambda u_BxLxV, t_B: jnp.sum(jnp.log(u_BxLxV @ a_V), axis=-1)
  denoise = lambda x, t, carry: (logits_BxLxV, None, carry)
  guided, priority, carry = control.masked_guidance(denoise, log_prob, scale, vocab)(x_BxL, jnp.ones((2,)), "c")
  expected = logits_BxLxV + scale * a_V[None, None, :] / a_V[x_BxL][..., None]
  chex.assert_trees_all_close(guided, expected, rtol=1e-6)
  assert priority is None and carry == "c"
  unguided = control.masked_guidance(denoise, log_prob, 0.0, vocab)(x_BxL, jnp.ones((2,)), None)[0]
  chex.assert_trees_all_equal(unguided, logits_BxLxV)


@pytest.mark.parametrize("skew", [0.0, 0.5])
def test_gaussian_guidance_is_the_score_shift_of_the_x0_estimate(skew):
  """log p(c | z) = <w, z>: the shift is scale sigma_i(t)^2 / alpha_i(t) w at every position, each at its own clock."""
  schedule = gaussian.LogSNRSchedule(position_skew=skew)
  w_BxLxD = jax.random.normal(jax.random.key(1), (2, 4, 3))
  z_BxLxD = jax.random.normal(jax.random.key(2), (2, 4, 3))
  t_B = jnp.asarray([0.3, 0.9])
  shift = control.gaussian_guidance(lambda z, t: jnp.sum(w_BxLxD * z, axis=(1, 2)), 2.5, schedule)(z_BxLxD, t_B)
  for b in range(2):
    for i in range(4):
      tau = schedule.position_times(t_B, 4)[0][b, i]
      alpha, sigma = schedule.alpha_sigma(tau)
      np.testing.assert_allclose(shift[b, i], 2.5 * sigma**2 / alpha * w_BxLxD[b, i], rtol=1e-5)


def test_strong_guidance_steers_the_masked_sampler_and_none_leaves_it_alone():
  """A classifier whose log-probability rewards token k everywhere: at scale 40 every revealed token is k; at scale 0
  the samples are the unguided sampler's, token for token."""
  vocab, k = 12, 7
  cfg = SamplerConfig(steps=8)
  logits_BxLxV = jax.random.normal(jax.random.key(3), (4, 16, vocab)) * 2.0
  denoise = lambda x, t, carry: (logits_BxLxV, None, carry)
  reward = lambda u, t: jnp.sum(u[..., k], axis=-1)
  tokens = jnp.full((4, 16), cfg.special.mask, jnp.int32)
  fixed = jnp.zeros((4, 16), bool)
  rng = jax.random.key(4)
  steered = sampler.sample(control.masked_guidance(denoise, reward, 40.0, vocab), rng, tokens, fixed, cfg)
  assert (np.asarray(steered.tokens_BxL) == k).all()
  plain = sampler.sample(denoise, rng, tokens, fixed, cfg)
  unguided = sampler.sample(control.masked_guidance(denoise, reward, 0.0, vocab), rng, tokens, fixed, cfg)
  chex.assert_trees_all_equal(unguided.tokens_BxL, plain.tokens_BxL)
  assert (np.asarray(plain.tokens_BxL) == k).mean() < 0.5


def test_strong_guidance_steers_the_embedding_sampler():
  """The Bayes readout of a table as the denoiser: unguided DDIM draws many tokens; guided by log p(c | z) =
  sum_i <z_i, e_k> / 4 at scale 8 every position reads out as k."""
  vocab, dim, k = 10, 8, 6
  table = gaussian.normalized_table(jax.random.normal(jax.random.key(5), (vocab, dim)))
  cfg = SamplerConfig(process="gaussian", method="ddim", steps=16)
  schedule = continuous.schedule_of(cfg)
  logits_fn = lambda z, t: gaussian.readout_logits(z, table, t, schedule)
  tokens = jnp.full((4, 12), cfg.special.mask, jnp.int32)
  fixed = jnp.zeros((4, 12), bool)
  rng = jax.random.key(6)
  plain = continuous.gaussian_sample(logits_fn, table, rng, tokens, fixed, cfg)
  reward = lambda z, t: jnp.sum(z @ table[k], axis=-1) / 4.0
  steered = continuous.gaussian_sample(logits_fn, table, rng, tokens, fixed, cfg,
                                       x0_shift_fn=control.gaussian_guidance(reward, 8.0, schedule))
  assert (np.asarray(steered.tokens_BxL) == k).all()
  assert (np.asarray(plain.tokens_BxL) == k).mean() < 0.5


def test_controllable_samplers_refuse_caches_and_other_families():
  with pytest.raises(ConfigError, match="--cache=none"):
    control.check_controllable(SamplerConfig(cache="unchanged"))
  with pytest.raises(ConfigError, match="'transition' sampler"):
    control.check_controllable(SamplerConfig(process="uniform", method="ancestral"))
  control.check_controllable(SamplerConfig(process="gaussian", method="ddim"))


BILINGUAL = ("यह एक छोटा वाक्य है और इसमें कुछ शब्द हैं। हम हिंदी में लिखते हैं।\n"
             "this is a small sentence with a few words. we write in english here.\n")


@pytest.fixture(scope="module")
def bilingual_runs(tmp_path_factory):
  """A tiny masked run, a tiny embedding run and their causal judge on a two-script text written here: (masked
  workdir, embedding workdir, judge workdir)."""
  import configs.default as default_config
  from dlm_jax.training import loop
  root = tmp_path_factory.mktemp("bilingual")
  corpus = root / "bilingual.txt"
  corpus.write_text(BILINGUAL * 300, encoding="utf-8")
  # (t ~ U[0, 1], not the embedded default's clipped times: the steering figures below were measured so)
  overrides = {"data.path": str(corpus), "data.valid_fraction": 0.2, "tensorboard": False, "train.num_steps": 6,
               "train.checkpoint_every": 6, "eval.every": 0, "diffusion.time_low": 0.0, "diffusion.time_high": 1.0}
  loop.train(tiny_config(**overrides), str(root / "masked"))
  c = tiny_config(**overrides)
  default_config.beyond_masking_arm(c, "embedding")
  loop.train(c, str(root / "embedding"))
  loop.train(tiny_config(**overrides, **{"model.causal": True, "diffusion.objective": "autoregressive"}),
             str(root / "judge"))
  return root / "masked", root / "embedding", root / "judge"


def test_classifier_learns_the_property_saves_and_steers(bilingual_runs, tmp_path):
  """Trained on the masked run's noisy windows, the classifier separates the scripts (clean and half masked); it
  reloads to the same function; steered towards the script the unguided sampler draws less often, strong guidance
  moves the success rate there."""
  from dlm_jax.training import checkpoint, classifier as classifier_lib
  masked_dir, _, _ = bilingual_runs
  run = checkpoint.load_for_inference(masked_dir)
  trained = classifier_lib.train(run, "script", steps=60, batch_size=16, width=32, num_layers=1, max_windows=512,
                                 log=lambda _: None)
  assert trained.config.input_kind == "tokens" and trained.config.input_dim == run.tokenizer.vocab_size
  assert trained.meta["valid_accuracy"]["0"] >= 0.95 and trained.meta["valid_accuracy"]["0.5"] >= 0.9
  classifier_lib.save(tmp_path / "cls", trained)
  loaded = classifier_lib.load(tmp_path / "cls")
  assert loaded.meta == trained.meta and loaded.prop is SCRIPT
  inputs = jax.nn.one_hot(jnp.zeros((2, 32), jnp.int32) + 9, run.tokenizer.vocab_size)
  chex.assert_trees_all_close(nnx.merge(loaded.graphdef, loaded.params)(inputs, jnp.ones((2,))),
                              nnx.merge(trained.graphdef, trained.params)(inputs, jnp.ones((2,))))
  classifier_lib.check_matches(loaded, run)
  windows = np.tile([run.tokenizer.encode(line[:32]) for line in BILINGUAL.splitlines()], (8, 1))  # 16 windows
  base = control_eval.steering_rows(run, run, loaded.graphdef, loaded.params, SCRIPT, DEVA, [0.0], windows)
  assert [(r["scale"], r["success"]) for r in base[:2]] == [("real", 0.5), ("real target", 1.0)]
  target = DEVA if base[2]["success"] < 0.5 else LATN
  rows = control_eval.steering_rows(run, run, loaded.graphdef, loaded.params, SCRIPT, target, [0.0, 1000.0], windows)
  assert [r["scale"] for r in rows] == ["real", "real target", 0.0, 1000.0]
  # (measured 0.06 -> 0.44: the 6-update denoiser's soup saturates the classifier after a few revealed characters,
  # where the gradient of log p(c | x_t) vanishes; the linear guides above do not saturate and steer every token)
  assert rows[2]["success"] <= 0.5 and rows[3]["success"] >= rows[2]["success"] + 0.25, rows
  plain = sampler.make_sampler(run.graphdef, run.other, run.sampler_config(draw_precision="float64"), run.objective)
  tokens, fixed = jnp.full(windows.shape, run.tokenizer.special.mask, jnp.int32), jnp.zeros(windows.shape, bool)
  unguided = control.make_controlled_sampler(run.graphdef, run.other, run.sampler_config(draw_precision="float64"),
                                             run.objective, loaded.graphdef, target)
  chex.assert_trees_all_equal(unguided(run.params, loaded.params, jax.random.key(0), tokens, fixed, 0.0).tokens_BxL,
                              plain(run.params, jax.random.key(0), tokens, fixed).tokens_BxL)


def test_embedding_classifier_guides_only_its_own_run(bilingual_runs, tmp_path):
  from dlm_jax.training import checkpoint, classifier as classifier_lib
  masked_dir, embedding_dir, _ = bilingual_runs
  run = checkpoint.load_for_inference(embedding_dir)
  trained = classifier_lib.train(run, "script", steps=2, batch_size=4, width=32, num_layers=1, max_windows=64,
                                 log=lambda _: None)
  assert trained.config.input_kind == "embeddings" and trained.config.input_dim == run.model_config.width
  classifier_lib.check_matches(trained, run)
  with pytest.raises(ValueError, match="has its own embedding space"):
    classifier_lib.check_matches(trained, dataclasses.replace(run, weights="raw" if run.weights == "ema" else "ema"))
  with pytest.raises(ValueError, match="the classifier reads embeddings"):
    classifier_lib.check_matches(trained, checkpoint.load_for_inference(masked_dir))
  with pytest.raises(ValueError, match="holds no classifier checkpoint"):
    (tmp_path / "empty").mkdir()
    classifier_lib.load(tmp_path / "empty")


def test_classifier_shape_is_checked():
  with pytest.raises(ConfigError, match="input_kind"):
    ClassifierConfig(num_classes=2, input_kind="pixels", input_dim=4, max_len=8)
  cfg = ClassifierConfig(num_classes=3, input_kind="embeddings", input_dim=5, max_len=8, width=16, num_heads=2)
  logits = PropertyClassifier(cfg, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 5)), jnp.asarray([0.1, 0.9]))
  assert logits.shape == (2, 3)


def test_launchers_train_a_classifier_and_print_the_steering_table(bilingual_runs, tmp_path):
  import json
  import subprocess
  import sys
  from conftest import REPO
  masked_dir, _, judge_dir = bilingual_runs
  launch = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                                        timeout=300)
  trained = launch("launch.classifier", f"--workdir={masked_dir}", f"--classifier_dir={tmp_path}/cls", "--steps=10",
                   "--batch_size=8", "--width=32", "--num_layers=1", "--max_windows=256")
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert f"Saved the script classifier of {masked_dir}" in trained.stdout
  common = (f"--workdir={masked_dir}", f"--classifier_dir={tmp_path}/cls", f"--judge={judge_dir}", "--num_samples=4")
  steered = launch("launch.control", *common, "--target=latn", "--scales=0,8", "--show=1", "--json")
  assert steered.returncode == 0, steered.stderr[-3000:]
  rows = [json.loads(line) for line in steered.stdout.splitlines() if line.startswith("{")]
  assert [r["scale"] for r in rows][-2:] == [0.0, 8.0] and rows[0]["scale"] == "real"
  assert "| 8 | " in steered.stdout and "--- 8.0: " in steered.stdout
  wrong = launch("launch.control", *common, "--target=cyrl")
  assert wrong.returncode != 0 and "--target='cyrl' is not a class of property 'script'" in wrong.stderr


def test_classifier_training_inputs_are_the_runs_noisy_states():
  """Tokens: each position masked with probability t (none at t = 0, all at t = 1); embeddings: z_t of the run's
  forward process, draw for draw."""
  from dlm_jax.training import classifier as classifier_lib
  tokens_BxL = jnp.full((4, 1024), 7, jnp.int32)
  t_B = jnp.asarray([0.0, 0.3, 0.8, 1.0])
  one_hot = classifier_lib.noisy_inputs("tokens", jax.random.key(0), tokens_BxL, t_B, vocab_size=9, mask_id=3)
  masked_fraction = np.asarray(one_hot[..., 3].mean(axis=1))
  assert masked_fraction[0] == 0.0 and masked_fraction[3] == 1.0
  np.testing.assert_allclose(masked_fraction[1:3], [0.3, 0.8], atol=0.05)
  assert (np.asarray(one_hot[..., 3] + one_hot[..., 7]) == 1.0).all()
  table = jax.random.normal(jax.random.key(1), (9, 6))
  schedule = gaussian.LogSNRSchedule(position_skew=0.3)
  z = classifier_lib.noisy_inputs("embeddings", jax.random.key(2), tokens_BxL[:, :8], t_B, vocab_size=9, mask_id=3,
                                  table_VxD=table, schedule=schedule)
  chex.assert_trees_all_equal(z, gaussian.forward_sample(jax.random.key(2), table[tokens_BxL[:, :8]], t_B, schedule)[0])
