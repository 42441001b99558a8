"""Thought tensors, the research wing dlm_jax/proj/thought/ (model.py, process.py, objective.py, sampler.py,
metrics.py, its configs and CLIs), and its registration by path in the library's registries."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, tiny_config, tiny_thought_config
from test_configs import num_params
from dlm_jax import models
from dlm_jax import objectives, special_tokens
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax.models.transformer import Transformer, TransformerConfig
from dlm_jax.proj.thought import metrics
from dlm_jax.proj.thought import model as thought
from dlm_jax.proj.thought import process as thought_process
from dlm_jax.proj.thought import sampler as thought_sampling
from dlm_jax.proj.thought.configs import gpu as thought_gpu
from dlm_jax.proj.thought.configs import small as thought_small
from dlm_jax.proj.thought.model import ThoughtTransformer, ThoughtTransformerConfig
from dlm_jax.sampling import SamplerConfig, make_sampler

VOCAB = 24


def model_pair(dims=(4, 4, 2), seed=0, perturb=True):
  """A thought transformer and the baseline of the same seed; with `perturb`, every parameter of the thought model is
  moved by noise (so the zero-initialized cross-attention is live) and the baseline gets the shared ones."""
  kwargs = dict(vocab_size=VOCAB, max_len=32, num_layers=2, num_heads=2, width=16, mlp_dim=32, dtype="float32")
  model = ThoughtTransformer(ThoughtTransformerConfig(**kwargs, thought_dims=dims, thought_hidden=16),
                             rngs=nnx.Rngs(seed))
  base = Transformer(TransformerConfig(**kwargs), rngs=nnx.Rngs(seed))
  if perturb:
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    moved = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, moved))
    shared = {path: value for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    base_flat = nnx.to_flat_state(nnx.state(base, nnx.Param))
    nnx.update(base, nnx.from_flat_state([(path, shared[path]) for path, _ in base_flat]))
  return model, base


def test_thought_dims_decoder_shapes_and_unit_rms_evolved_thought():
  for dims in ((4, 4, 2), (8, 8, 4), (6, 3)):
    model, _ = model_pair(dims, perturb=False)
    x = jax.random.randint(jax.random.key(0), (3, 10), 0, VOCAB)
    z = jax.random.normal(jax.random.key(1), (3, *dims))
    out = nnx.jit(lambda m, x, z: m(x, thought=thought_process.ThoughtInput(z, jnp.ones((3,)))))(model, x, z)
    assert out.thought["reconstruction"].shape == (3, *dims)
    assert out.thought["evolved"].shape == (3, *dims[:-1]) == (3, *thought_process.evolved_dims(dims))
    # unit mean square up to unit_rms's 1e-6 in the denominator (untrained outputs have a mean square ~3e-3)
    np.testing.assert_allclose(jnp.mean(jnp.square(out.thought["evolved"]), axis=tuple(range(1, len(dims)))), 1.0,
                               rtol=1e-3)
  with pytest.raises(ConfigError, match="n >= 2"):
    ThoughtTransformerConfig(vocab_size=VOCAB, max_len=8, thought_dims=(5,))
  with pytest.raises(ConfigError, match="needs a thought shape"):
    ThoughtTransformerConfig(vocab_size=VOCAB, max_len=8, thought_dims=())


def test_without_a_thought_the_model_computes_the_baseline():
  model, base = model_pair()
  x = jax.random.randint(jax.random.key(2), (2, 12), 0, VOCAB)
  t = jnp.array([0.3, 0.9])
  np.testing.assert_array_equal(model(x, t).logits_BxLxV, base(x, t).logits_BxLxV)
  with_thought = model(x, t, thought=thought_process.ThoughtInput(jnp.ones((2, 4, 4, 2)), jnp.zeros((2,)))).logits_BxLxV
  assert float(jnp.max(jnp.abs(with_thought - base(x, t).logits_BxLxV))) > 1e-3  # the pathway is live
  with pytest.raises(TypeError, match="thought"):  # the baseline transformer has no thought input at all
    base(x, t, thought=thought_process.ThoughtInput(jnp.ones((2, 4, 4, 2)), jnp.zeros((2,))))


def test_an_untrained_pathway_adds_nothing_and_pathway_parameters_are_counted():
  model, base = model_pair(perturb=False)
  x = jax.random.randint(jax.random.key(3), (2, 12), 0, VOCAB)
  z = jax.random.normal(jax.random.key(4), (2, 4, 4, 2))
  out = model(x, thought=thought_process.ThoughtInput(z, jnp.ones((2,))))
  np.testing.assert_array_equal(out.logits_BxLxV, base(x).logits_BxLxV)  # zero-initialized cross-attention output
  count = lambda m: sum(v.size for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(model) - count(base) == thought.pathway_parameters((4, 4, 2), 16, 16, 2)


def test_push_interpolate_and_saliency():
  memory = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  evolved = -jnp.ones((2, 3))
  pushed = thought_process.push(memory, evolved)
  np.testing.assert_array_equal(pushed[..., 0], evolved)
  np.testing.assert_array_equal(pushed[..., 1:], memory[..., :-1])
  a, b = jnp.zeros((2, 3, 4)), memory
  np.testing.assert_array_equal(thought_process.interpolate(a, b, 0.0), a)
  np.testing.assert_array_equal(thought_process.interpolate(a, b, 1.0), b)
  np.testing.assert_allclose(thought_process.interpolate(a, b, 0.25), 0.25 * b)
  start = thought_sampling.interpolation_start(None, a, b, 1.0, 0.0, None, None)
  np.testing.assert_array_equal(start.z, b)
  assert bool(jnp.all(start.given_B)) and float(jnp.max(start.t_B)) == 0.0
  s = thought_process.saliency(jnp.array([[1.0, -2.0, 4.0]]))
  np.testing.assert_allclose(s, [[0.25, 0.5, 1.0]])


def test_thought_forward_process_is_slower_than_the_text_and_variance_preserving():
  process = thought_process.ThoughtProcess(dims=(4, 4, 2), rate=0.5)
  schedule = MaskingSchedule("cosine")
  t = jnp.linspace(0.0, 1.0, 11)
  alpha = schedule.alpha(t)
  signal = jax.nn.sigmoid(process.log_snr(alpha)).reshape(-1)
  np.testing.assert_allclose(signal, np.clip(np.asarray(alpha)**0.5, 1e-5, 1 - 1e-5), rtol=1e-4)
  assert bool(jnp.all(signal[1:-1] > alpha[1:-1]))  # more signal than the text keeps, at every inner t
  memory = jnp.broadcast_to(jnp.linspace(-1.5, 1.5, 32).reshape(4, 4, 2), (8192, 4, 4, 2))
  alpha_B = jnp.full((8192,), float(schedule.alpha(0.7)))
  z = process.noise(jax.random.key(0), memory, alpha_B)
  a2 = float(jax.nn.sigmoid(process.log_snr(alpha_B[:1]))[0, 0, 0, 0])
  np.testing.assert_allclose(z.mean(0), np.sqrt(a2) * memory[0], atol=4 * np.sqrt(1 - a2) / np.sqrt(8192))
  np.testing.assert_allclose(z.var(0), 1 - a2, rtol=0.08)
  salient = thought_process.ThoughtProcess(dims=(4, 4, 2), saliency=2.0)
  lam = salient.log_snr(alpha_B[:1], memory[:1]) - process.log_snr(alpha_B[:1])
  np.testing.assert_allclose(lam[0], 2.0 * thought_process.saliency(memory[:1])[0], rtol=1e-5, atol=1e-5)


def test_memory_of_the_last_windows_equals_reading_them_from_an_empty_memory():
  """Training's per-row start (the memory kept empty before window s) = evaluation's reading of windows s..K-1."""
  model, _ = model_pair()
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  fn = models.denoise_fn(graphdef, params, other)
  process = thought_process.ThoughtProcess(dims=(4, 4, 2), context_windows=3)
  context = jax.random.randint(jax.random.key(5), (2, 3, 8), 0, VOCAB)
  memory, evolved = process.memories(fn, context, jnp.array([1, 3]))
  direct, _ = process.memories(fn, context[:, 1:])
  np.testing.assert_allclose(memory[0], direct[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(memory[1], 0.0)
  assert evolved.shape == (3, 2, 4, 4)


def objective_for(config):
  return objectives.from_config(config, VOCAB)


def test_thought_objective_logs_every_term_and_evaluates_like_the_baseline_at_initialization():
  config = tiny_thought_config(**{"model.dtype": "float32"})
  objective = objective_for(config)
  model = models.get_model(config, VOCAB, nnx.Rngs(0))
  base_config = tiny_config(**{"model.dtype": "float32", "data.seq_len": 16})
  base = models.get_model(base_config, VOCAB, nnx.Rngs(0))
  x0 = jax.random.randint(jax.random.key(6), (4, 48), 5, VOCAB)
  fn = models.denoise_fn(*nnx.split(model, nnx.Param, ...))
  # (each computation jitted: one compile each instead of one per operation)
  loss, metrics_ = jax.jit(lambda x, key: objective(fn, x, key))(x0, jax.random.key(7))
  for name in ("text", "reconstruction", "coherence", "alignment"):
    assert np.isfinite(float(metrics_[f"thought/{name}"])), name
  weights = (1.0, 0.5, 0.1, 0.1)
  expected = sum(w * metrics_[f"thought/{n}"] for w, n in zip(weights, ("text", "reconstruction", "coherence",
                                                                       "alignment")))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert metrics_["nll_per_token"] == metrics_["thought/text"]
  # At initialization the cross-attention adds nothing: the target window's NELBO is the baseline's on it.
  base_fn = models.denoise_fn(*nnx.split(base, nnx.Param, ...))
  base_objective = objective_for(base_config)
  depth_nll = jax.jit(lambda x, key, depth: objective.thought.depth_nll(objective, fn, x, key, depth),
                      static_argnums=2)
  base_nll = jax.jit(lambda x, key: base_objective.evaluation_nll(base_fn, x, key))(x0[:, 32:], jax.random.key(8))
  for depth in (0, 2):
    np.testing.assert_allclose(depth_nll(x0, jax.random.key(8), depth), base_nll, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda x, key: objective.evaluation_nll(fn, x, key))(x0, jax.random.key(8)),
                             depth_nll(x0, jax.random.key(8), 2))


def test_thought_config_errors():
  with pytest.raises(ConfigError, match="thought_dims=\\(\\)"):
    objective_for(tiny_thought_config(**{"model.thought_dims": ()}))
  with pytest.raises(ConfigError, match="multiple of 3"):
    objective_for(tiny_thought_config(**{"data.seq_len": 50})).sample_length(50)
  with pytest.raises(ConfigError, match="diffusion.objective=thought"):  # the thought model with another objective
    models.model_config(tiny_thought_config(**{"diffusion.objective": "elbo"}), VOCAB)
  with pytest.raises(ConfigError, match="model.name='thought'"):  # the thought objective with another model
    objective_for(tiny_config(**{"diffusion.objective": "thought"}))
  config = tiny_thought_config()
  graphdef, _, other = nnx.split(models.get_model(config, VOCAB, nnx.Rngs(0)), nnx.Param, ...)
  with pytest.raises(ConfigError, match="cache='none'"):
    cfg = SamplerConfig.from_config(config, special_tokens.DEFAULT, cache="unchanged")
    make_sampler(graphdef, other, cfg, objective_for(config))
  with pytest.raises(ConfigError, match="steer_scale"):
    thought_sampling.ThoughtSampling.of(objective_for(config), steer_scale=-0.5)
  with pytest.raises(ConfigError, match="thought objective"):
    thought_sampling.ThoughtSampling.of(objective_for(tiny_config()))


def test_alignment_infonce_exact_values():
  codes = jnp.eye(4)
  loss, accuracy = thought_process.alignment_scores(codes, codes, 0.1)
  np.testing.assert_allclose(accuracy, 1.0)
  np.testing.assert_allclose(loss, np.log1p(3 * np.exp(-10.0)), atol=1e-6)  # logsumexp - 10 in float32
  # rows 1 and 2 masked: rows 0 and 3 each see the other's text as their best match
  loss, accuracy = thought_process.alignment_scores(codes, codes[::-1], 0.1, jnp.array([1, 0, 0, 1], bool))
  np.testing.assert_allclose(accuracy, 0.0)
  np.testing.assert_allclose(loss, 10.0 + np.log1p(np.exp(-10.0)), rtol=1e-5)


def toy_sampler(steer_scale=0.0, property_fn=None, record=False, steps=6):
  config = tiny_thought_config(**{"model.dtype": "float32"})
  model, _ = model_pair()
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  cfg = SamplerConfig.from_config(config, special_tokens.DEFAULT, steps=steps, record_trajectory=record)
  settings = thought_sampling.ThoughtSampling.of(objective_for(config), steer_scale)
  return thought_sampling.make_thought_sampler(graphdef, other, cfg, settings, property_fn), params


def test_sampling_keeps_a_given_thought_and_pushes_the_evolved_one():
  sampler, params = toy_sampler(record=True)
  memory = np.asarray(jax.random.normal(jax.random.key(9), (2, 4, 4, 2)))
  tokens, fixed = np.zeros((2, 16), np.int32), np.zeros((2, 16), bool)
  out = sampler(params, jax.random.key(0), tokens, fixed, thought_sampling.given(memory))
  np.testing.assert_array_equal(out.thought_BxT, memory)
  np.testing.assert_array_equal(out.next_memory_BxT[..., 1:], memory[..., :-1])
  np.testing.assert_array_equal(out.next_memory_BxT[..., 0], out.evolved_BxE)
  assert out.estimate_trajectory.shape == (7, 2, 4, 4, 2) and out.evolved_trajectory.shape == (7, 2, 4, 4)
  assert int(out.thought_calls) == 6 and out.text.trajectory_SxBxL.shape == (7, 2, 16)
  np.testing.assert_array_equal(out.noisy_trajectory[1:], np.broadcast_to(memory, (6, 2, 4, 4, 2)))
  noise = sampler(params, jax.random.key(0), tokens, fixed, thought_sampling.from_noise(jax.random.key(1), 2,
                                                                                         (4, 4, 2)))
  assert not np.allclose(noise.thought_BxT, noise.noisy_trajectory[0])  # the thought was denoised
  assert int(np.sum(np.asarray(noise.text.tokens_BxL) == 3)) == 0  # no mask left (MASK id)


def test_steering_lowers_the_property_monotonically():
  target = np.full((2, 4, 4, 2), 2.0, np.float32)
  prop = thought_sampling.distance_property(target)
  tokens, fixed = np.zeros((2, 16), np.int32), np.zeros((2, 16), bool)
  finals = []
  for eta in (0.0, 0.05, 0.2, 0.5):
    sampler, params = toy_sampler(eta, prop if eta else None)
    out = sampler(params, jax.random.key(0), tokens, fixed, thought_sampling.from_noise(jax.random.key(1), 2,
                                                                                         (4, 4, 2)))
    finals.append(float(jnp.mean(prop(out.thought_BxT))))
  assert all(a > b for a, b in zip(finals, finals[1:])), finals


def test_npy_round_trip_and_clear_errors(tmp_path):
  memory = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)
  np.save(tmp_path / "t.npy", memory)
  np.testing.assert_array_equal(thought_sampling.load_thought(str(tmp_path / "t.npy"), (4, 4, 2), 3, "--thought_in"),
                                memory)
  np.save(tmp_path / "one.npy", memory[0])
  np.testing.assert_array_equal(thought_sampling.load_thought(str(tmp_path / "one.npy"), (4, 4, 2), 3, "--x"),
                                np.broadcast_to(memory[0], memory.shape))
  with pytest.raises(ValueError, match="--thought_in=.*shape \\(3, 4, 4, 2\\).*\\(8, 8, 4\\)"):
    thought_sampling.load_thought(str(tmp_path / "t.npy"), (8, 8, 4), 3, "--thought_in")
  with pytest.raises(ValueError, match="cannot read"):
    thought_sampling.load_thought(str(tmp_path / "missing.npy"), (4, 4, 2), 3, "--thought_in")


def test_metrics_on_known_inputs():
  constant = np.ones((5, 3, 8)) * np.arange(8)
  assert metrics.stability(constant)["step_correlation"] == pytest.approx(1.0)
  assert metrics.stability(constant)["variance_across_steps"] == pytest.approx(0.0)
  rng = np.random.default_rng(0)
  collapsed = rng.normal(size=(200, 1)) * rng.normal(size=(1, 16))
  assert metrics.spectral_entropy(collapsed)["entropy"] == pytest.approx(0.0, abs=1e-6)
  isotropic = metrics.spectral_entropy(rng.normal(size=(20000, 16)))
  assert isotropic["entropy"] == pytest.approx(np.log(16), abs=0.01)
  x = rng.normal(size=(400, 6))
  assert metrics.probe_r2(x, x @ rng.normal(size=(6, 3))) > 0.999
  assert metrics.probe_r2(x, rng.normal(size=(400, 3))) < 0.05
  sparse = np.zeros((400, 7))
  sparse[200:, 6] = 1.0  # constant on the training half: ignored, not blown up by its zero spread
  assert metrics.probe_r2(np.concatenate([x, sparse], axis=1), x @ np.ones((6, 1))) > 0.99
  np.testing.assert_allclose(metrics.bag_of_tokens(np.array([[1, 1, 2, 0]]), 3), [[0.25, 0.5, 0.25]])
  assert metrics.retrieval_accuracy(np.eye(5), np.eye(5)) == 1.0


def thought_cli(workdir, *args, cli="dlm_jax.proj.thought.sample"):
  return subprocess.run([sys.executable, "-m", cli, f"--workdir={workdir}", "--steps=4", "--num_samples=2", *args],
                        cwd=REPO, capture_output=True, text=True)


def test_thought_run_trains_and_the_librarys_launcher_samples_it(trained_thought_run, tmp_path):
  workdir, summary = trained_thought_run
  assert np.isfinite(summary["eval_nll_per_token"])
  # the library's launcher samples a thought run with the wing's sampler (thought from noise), as training does
  plain = thought_cli(workdir, cli="launch.sample")
  assert plain.returncode == 0 and plain.stdout.count("--- sample ") == 2, plain.stderr


@pytest.mark.slow
def test_thought_cli_persists_the_thought_and_reports(trained_thought_run, tmp_path):
  workdir, _ = trained_thought_run
  first = thought_cli(workdir, f"--thought_out={tmp_path / 'a.npy'}")
  assert first.returncode == 0, first.stderr
  a = np.load(tmp_path / "a.npy")
  assert a.shape == (2, 4, 4, 2)
  second = thought_cli(workdir, f"--thought_in={tmp_path / 'a.npy'}", f"--thought_out={tmp_path / 'b.npy'}")
  assert second.returncode == 0, second.stderr
  np.testing.assert_allclose(np.load(tmp_path / "b.npy")[..., 1:], a[..., :-1], rtol=1e-6)  # persistence
  bad = thought_cli(workdir, f"--thought_in={tmp_path / 'missing.npy'}")
  assert bad.returncode != 0 and "--thought_in=" in bad.stderr and "Traceback" not in bad.stderr
  report = subprocess.run([sys.executable, "-m", "dlm_jax.proj.thought.report", f"--workdir={workdir}",
                           "--num_windows=16", "--time_samples=2", "--batch_size=8", "--num_samples=4", "--steps=4"],
                          cwd=REPO, capture_output=True, text=True)
  assert report.returncode == 0, report.stderr
  for key in ("nelbo_by_memory_depth", "diversity", "compression", "alignment", "stability"):
    assert f'"{key}"' in report.stdout


@pytest.mark.parametrize("module, vocab", [(thought_small, 108), (thought_gpu, 70)], ids=["small", "gpu"])
def test_thought_baselines_match_the_thought_models_parameters(module, vocab):
  """The baseline arm's wider SwiGLU pays for the whole thought pathway (within 0.1%); the thought arm's rows are
  (K + 1) windows of the baseline's length."""
  thought_config, baseline_config = module.get_config("thought"), module.get_config("baseline")
  thought_objective = objectives.from_config(thought_config, vocab)
  assert objectives.from_config(baseline_config, vocab).name == "elbo" and thought_objective.name == "thought"
  assert thought_objective.sample_length(int(thought_config.data.seq_len)) == int(baseline_config.data.seq_len)
  SamplerConfig.from_config(thought_config, special_tokens.DEFAULT)
  thought_count, baseline_count = num_params(thought_config, vocab), num_params(baseline_config, vocab)
  assert abs(thought_count / baseline_count - 1) < 1e-3, (thought_count, baseline_count)


def test_configs_saved_before_the_thought_wing_load_and_resume():
  """Before the wing, a thought run was a "transformer" with thought_dims and config.thought.enabled=True with the
  "elbo" objective, and every other run carried thought_dims=(), thought_hidden and a disabled config.thought:
  checkpoint.migrate_config reads both as today's configs, which build the model they meant and resume."""
  import ml_collections
  from dlm_jax.training import checkpoint
  today = tiny_thought_config().to_dict()
  legacy_thought = tiny_thought_config().to_dict()
  legacy_thought["model"]["name"] = "transformer"
  legacy_thought["diffusion"]["objective"] = "elbo"
  legacy_thought["thought"]["enabled"] = True
  assert checkpoint.migrate_config(legacy_thought) == today
  legacy_plain = tiny_config().to_dict()
  legacy_plain["model"].update(thought_dims=(), thought_hidden=256)
  legacy_plain["thought"] = {"enabled": False, **today["thought"]}
  assert checkpoint.migrate_config(legacy_plain) == tiny_config().to_dict()
  for legacy, cls in ((legacy_thought, ThoughtTransformerConfig), (legacy_plain, TransformerConfig)):
    config = ml_collections.ConfigDict(checkpoint.migrate_config(legacy))
    assert type(models.model_config(config, VOCAB)) is cls
  refused, _ = checkpoint.config_changes(legacy_thought, today)
  assert not refused, refused  # an old thought run resumes under today's thought config


def test_the_library_names_the_wing_only_by_import_path():
  """The registries resolve "thought" to the wing's components on lookup; no module outside dlm_jax/proj imports it
  (tests/test_layout.py checks the imports), and a config of the library's own kinds never loads it."""
  from dlm_jax import objectives
  from dlm_jax.sampling import SAMPLERS
  assert models.MODELS["thought"] == (ThoughtTransformer, ThoughtTransformerConfig)
  assert objectives.OBJECTIVES["thought"].sampler == "thought"
  assert SAMPLERS["thought"] is thought_sampling.make_sampler
  assert "thought" not in objectives.OBJECTIVES.builtin() and "thought" in objectives.NAMES
  code = ("import sys; from configs import default; from dlm_jax import objectives, models, sampling; "
          "from dlm_jax.training import loop; c = default.get_config(); objectives.from_config(c, 70); "
          "models.model_config(c, 70); print(sorted(m for m in sys.modules if m.startswith('dlm_jax.proj')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
