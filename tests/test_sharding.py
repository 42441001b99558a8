"""Scale-out: logical axes of every parameter, the rules and meshes, and training on simulated CPU meshes.

The mesh runs happen in subprocesses (tests/sharding_runs.py): the device count is fixed when JAX starts, so they set
XLA_FLAGS=--xla_force_host_platform_device_count=8 (or 4 per process for the two-process run).
"""
import json
import os
import socket
import subprocess
import sys

import chex
import grain
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import configs.default as default_config
from conftest import REPO, tiny_config
from dlm_jax import models
from dlm_jax.data import pipeline
from dlm_jax.errors import ConfigError
from dlm_jax.models import partitioning
from dlm_jax.training import sharding

MODEL_VARIANTS = [
    ("transformer", {}),
    ("transformer", {"self_conditioning": True, "time_conditioning": True, "position": "learned"}),
    ("eco_hybrid", {"route_top_k": 2, "slow_slots": 2}),
    ("eco_hybrid", {"retrieval_slots": 2, "retrieval_windows": 4, "memory_attention": "projected"}),
    ("hrm", {"use_memory": True, "act": True}),
    ("pretrained", {"num_kv_heads": 1, "bias": "qkv", "head": "untied", "lora_rank": 2, "lora_targets": "qkv,out,mlp"}),
    ("pretrained", {"norm": "layer", "norm_position": "post", "mlp": "gelu", "bias": "all", "position": "learned",
                    "embedding_norm": True, "token_types": 2, "head": "mlm", "head_bias": True}),
]


def small_model_config(name, overrides):
  c = tiny_config()
  c.model = default_config.model_config(name)
  for field, value in {"num_layers": 2, "num_heads": 2, "width": 32, "mlp_dim": 64, **overrides}.items():
    if field in c.model:
      c.model[field] = value
  return c


@pytest.mark.parametrize("name,overrides", MODEL_VARIANTS)
def test_every_parameter_of_every_denoiser_names_each_of_its_axes(name, overrides):
  c = small_model_config(name, overrides)
  model = nnx.eval_shape(lambda: models.get_model(c, 50, nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  known = {name for name, _ in partitioning.DEFAULT_RULES}
  named = 0
  for path, variable in jax.tree.leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    axes = variable.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == len(variable.shape), (jax.tree_util.keystr(path), variable.shape, axes)
    assert set(axes) - {None} <= known, axes
    named += 1
  assert named == len(jax.tree.leaves(params)) > 10


def test_rules_give_fsdp_and_tensor_splits_and_replicate_what_does_not_divide():
  rules = partitioning.DEFAULT_RULES
  mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
  fit = lambda shape, axes: partitioning.fit_spec(shape, partitioning.mesh_axes(axes, rules), mesh_shape)
  assert fit((32, 64), ("embed", "mlp")) == P("fsdp", "tensor")
  assert fit((8, 32, 64), ("batch", None, None)) == P(("data", "fsdp"), None, None)
  assert fit((67, 32), ("vocab", "embed")) == P(None, "fsdp")  # 67 characters do not split in two
  assert fit((32, 1), ("embed", None)) == P("fsdp", None)
  assert fit((32,), ("norm",)) == P(None)
  assert fit((6, 4), ("batch", None)) == P(None, None)  # 6 rows over 4 batch shards: replicated
  # A mesh axis is used once per array: the second dimension naming it stays whole.
  assert partitioning.fit_spec((8, 8), ("fsdp", "fsdp"), mesh_shape) == P("fsdp", None)
  # Axes of size 1 are dropped (a 1-device mesh replicates everything).
  assert partitioning.fit_spec((8, 8), ("fsdp", "tensor"), {"data": 1, "fsdp": 1, "tensor": 1}) == P(None, None)


def test_config_rules_and_mesh_shapes_are_checked_with_one_clear_error():
  c = tiny_config()
  assert dict(sharding.rules_from_config(c.mesh.rules)) == dict(partitioning.DEFAULT_RULES)
  c.mesh.rules.embed = "fsdp,pipeline"
  with pytest.raises(ConfigError, match=r"mesh.rules.embed='fsdp,pipeline' names mesh axes \['pipeline'\]"):
    sharding.rules_from_config(c.mesh.rules)
  assert sharding.mesh_shape(-1, 2, 2, num_devices=8) == (2, 2, 2)
  assert sharding.mesh_shape(1, -1, 1, num_devices=8) == (1, 8, 1)
  with pytest.raises(ConfigError, match="= 6, but there are 8 device"):
    sharding.mesh_shape(3, 2, 1, num_devices=8)
  with pytest.raises(ConfigError, match="not divisible by 3"):
    sharding.mesh_shape(-1, 3, 1, num_devices=8)
  with pytest.raises(ConfigError, match="one of them may be -1"):
    sharding.mesh_shape(-1, -1, 1, num_devices=8)
  mesh = sharding.MeshContext(sharding.make_mesh())
  with pytest.raises(ConfigError, match="train.batch_size=9 must be divisible by train.grad_accum_steps=2"):
    mesh.check_batch(9, 2)
  # launch.sample --mesh: "" is one device; three sizes or one clear error
  assert sharding.MeshContext.from_flag("") is None
  assert dict(sharding.MeshContext.from_flag("1,-1,1").mesh.shape) == {"data": 1, "fsdp": jax.device_count(),
                                                                       "tensor": 1}
  for bad in ("1,1", "a,b,c"):
    with pytest.raises(ConfigError, match=f"--mesh='{bad}': give three sizes DATA,FSDP,TENSOR"):
      sharding.MeshContext.from_flag(bad)


def test_one_process_reads_every_row_and_shards_partition_each_micro_batch(tmp_path):
  streams = pipeline.load_token_streams(tiny_config().data, tmp_path)
  whole = next(pipeline.train_iterator(streams.train, 32, 8, 0, grain.sharding.ShardOptions(0, 1), accum=2))
  parts = [next(pipeline.train_iterator(streams.train, 32, 8, 0, grain.sharding.ShardOptions(i, 2), accum=2))
           for i in range(2)]
  # Shard i holds rows [2i, 2i + 2) of each micro-batch of 4: the rows its devices hold of the [2, 4, L] batch.
  np.testing.assert_array_equal(np.concatenate([p.reshape(2, 2, 32) for p in parts], axis=1),
                                whole.reshape(2, 4, 32))
  mesh = sharding.MeshContext(sharding.make_mesh())
  assert mesh.data_shard(8) == grain.sharding.ShardOptions(0, 1)


def run_worker(what, out, devices, timeout=600):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "tests/sharding_runs.py", what, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("mesh_runs")
  run_worker("meshes", out, 8)
  run_worker("single", out, 1)
  result = json.loads((out / "meshes.json").read_text())
  single = json.loads((out / "single.json").read_text())
  result["losses"].update(single.pop("losses"))
  result.update(single)
  result["params"] = {path.stem[len("params_"):]: dict(np.load(path)) for path in out.glob("params_*.npz")}
  return result


def assert_meshes_train_like_one_device(runs, meshes):
  """The same first losses as one device (1e-5 relative, float32) and the same parameters after 3 steps."""
  reference = runs["losses"]["1"]
  assert len(reference) == 3
  for mesh in meshes:
    np.testing.assert_allclose(runs["losses"][mesh][0], reference[0], rtol=1e-5, err_msg=mesh)
    np.testing.assert_allclose(runs["losses"][mesh], reference, rtol=1e-4, err_msg=mesh)
    params, ref_params = runs["params"][mesh], runs["params"]["1"]
    assert params.keys() == ref_params.keys()
    for key in ref_params:
      np.testing.assert_allclose(params[key], ref_params[key], rtol=1e-4, atol=1e-6, err_msg=f"{mesh} {key}")


def test_fsdp_and_the_three_axes_train_like_one_device(mesh_runs):
  """(1,8,1) and (2,2,2) (data x fsdp x tensor); (8,1,1) and (1,4,2) in the slow run."""
  assert mesh_runs["devices"] == 8
  assert_meshes_train_like_one_device(mesh_runs, ("1x8x1", "2x2x2"))


@pytest.mark.slow
def test_data_parallel_and_fsdp_by_tensor_train_like_one_device(mesh_runs, tmp_path):
  run_worker("more_meshes", tmp_path, 8)
  more = json.loads((tmp_path / "more_meshes.json").read_text())
  runs = {"losses": {**mesh_runs["losses"], **more["losses"]},
          "params": {**mesh_runs["params"], **{p.stem[len("params_"):]: dict(np.load(p))
                                               for p in tmp_path.glob("params_*.npz")}}}
  assert_meshes_train_like_one_device(runs, ("8x1x1", "1x4x2"))


def test_fsdp_splits_parameter_and_optimizer_bytes_eight_ways(mesh_runs):
  memory = mesh_runs["memory"]
  for name in ("params", "opt_state"):
    replicated, fsdp = memory["8x1x1"][name], memory["1x8x1"][name]
    assert replicated["computed"] == replicated["measured"] == replicated["total"]
    assert fsdp["computed"] == fsdp["measured"]
    # Only the norm scales (replicated by rule) and the step counters stay whole: within 5% of 1/8.
    assert fsdp["total"] / 8 <= fsdp["computed"] < 1.05 * fsdp["total"] / 8, (name, fsdp)
    both = memory["2x2x2"][name]  # fsdp 2 x tensor 2: a quarter, give or take the unsplittable
    assert both["total"] / 4 <= both["computed"] < 1.1 * both["total"] / 4, (name, both)


def test_a_checkpoint_restores_on_another_mesh_and_resumes_alike(mesh_runs):
  """Saved on (1,8,1) at step 3; restored on (2,2,2) and on one device: the same parameters, and steps 4-6 give the
  losses of the run that went on on (1,8,1)."""
  saved = mesh_runs["params"]["1x8x1"]
  for restored in (mesh_runs["params"]["1x8x1_on_2x2x2"], mesh_runs["params"]["1x8x1_on_1"]):
    assert restored.keys() == saved.keys()
    for key in saved:
      np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)
  on_fsdp = mesh_runs["resumed_1x8x1"]
  assert len(on_fsdp) == 3
  np.testing.assert_allclose(mesh_runs["resumed_2x2x2"], on_fsdp, rtol=1e-5)
  np.testing.assert_allclose(mesh_runs["resumed_1"], on_fsdp, rtol=1e-5)


def test_sampling_on_a_mesh_draws_what_one_device_draws(mesh_runs):
  """The 1x8x1 checkpoint sampled on 2x2x2 (rows over data x fsdp, parameters split) and on one device: the same
  greedy samples and confidences."""
  sharded, single = mesh_runs["samples_2x2x2"], mesh_runs["samples_1"]
  assert sharded["sharding"] == "P(('data', 'fsdp'),)"  # the output rows stay split
  np.testing.assert_array_equal(sharded["tokens"], single["tokens"])
  np.testing.assert_allclose(sharded["confidence"], single["confidence"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_eco_hybrid_and_hrm_on_a_2x2x2_mesh_train_like_one_device(tmp_path):
  run_worker("models", tmp_path, 8)
  run_worker("models", tmp_path, 1)
  sharded = json.loads((tmp_path / "models_2x2x2.json").read_text())
  single = json.loads((tmp_path / "models_1x1x1.json").read_text())
  for model in ("eco_hybrid", "hrm"):
    np.testing.assert_allclose(sharded[model], single[model], rtol=1e-5, err_msg=model)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost_train_like_one_and_read_disjoint_shards(tmp_path):
  """jax.distributed over loopback: 2 processes x 4 CPU devices, data parallel over all 8. Each process reads only
  its half of every batch; the training losses and the evaluation NELBO (windows split over the processes) are those
  of one process holding all 8 devices, and sampling 8 rows split over both processes works."""
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "tests/sharding_runs.py", "process", str(tmp_path), address, "2", str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-4000:]
  results = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
  assert [r["process_index"] for r in results] == [0, 1]
  assert all(r["devices"] == 8 and r["local_devices"] == 4 for r in results)
  assert [r["shard"] for r in results] == [[0, 2], [1, 2]]
  c = tiny_config()
  streams = pipeline.load_token_streams(c.data, tmp_path / "cache")
  whole = next(pipeline.train_iterator(streams.train, int(c.data.seq_len), int(c.train.batch_size), int(c.data.seed),
                                       grain.sharding.ShardOptions(0, 1)))
  halves = [np.asarray(r["rows"]) for r in results]
  np.testing.assert_array_equal(np.concatenate(halves), whole)  # disjoint halves that make the whole batch
  # One process with the same 8 devices (the worker's single-process path on a data-parallel mesh).
  out = tmp_path / "one"
  env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  single = subprocess.run([sys.executable, "-c", (
      "import sys, json, pathlib; sys.path.insert(0, 'tests'); import jax; "
      "jax.config.update('jax_default_matmul_precision', 'highest'); import sharding_runs as r; "
      f"losses = r.train((-1, 1, 1), pathlib.Path({str(out)!r}), num_steps=2, evaluate=True); "
      "print('LOSSES', json.dumps(losses))")],
      cwd=REPO, env=env1, capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-4000:]
  expected = json.loads(single.stdout.split("LOSSES", 1)[1])
  assert len(expected) == 3  # two training losses and the evaluation NELBO
  for r in results:
    chex.assert_trees_all_close(r["losses"], expected, rtol=1e-5)
  samples = (tmp_path / "work_mp" / "samples.txt").read_text()  # written by the primary process only
  assert samples.count("=== step 2 samples ===") == 1 and samples.count("\n---\n") == 7


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_process_at_one_checkpoint_and_they_resume(tmp_path):
  """`python -m launch.train` as 2 processes (coordinator flags, 4 CPU devices each): SIGTERM to process 1 alone, and
  both checkpoint at the same step through JAX's preemption service and exit 0; started again, they resume there;
  their checkpoint then resumes in one process holding all 8 devices."""
  import signal
  import time
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
  env.pop("XLA_FLAGS", None)
  workdir = tmp_path / "run"
  small = ["--config.data.seq_len=32", "--config.model.num_layers=1", "--config.model.width=32",
           "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.train.batch_size=8",
           "--config.train.log_every=10", "--config.eval.every=0", "--config.train.sample_every=0",
           "--config.tensorboard=false", "--config.train.checkpoint_every=100000"]

  def start(num_steps):
    address = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, "-m", "launch.train", "--distributed=on",
                              f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
                              f"--workdir={workdir}", f"--config.train.num_steps={num_steps}", *small],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]

  procs = start(100_000)
  deadline, line = time.time() + 300, ""
  while "step 20/" not in line and time.time() < deadline:
    line = procs[0].stdout.readline()
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in procs]
  steps = set()
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
    stopped = [l for l in out.splitlines() if l.startswith("Preempted: every process checkpoints at step")]
    assert len(stopped) == 1, out[-2000:]
    steps.add(int(stopped[0].split("step ")[1].split()[0]))
  assert len(steps) == 1 and steps.pop() >= 20
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert len(saved) == 1
  procs = start(saved[0] + 2)
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'} at step {saved[0]}." in out.replace(str(workdir.resolve()),
                                                                                          str(workdir))
    assert f"Training finished at step {saved[0] + 2}" in out
  one = subprocess.run([sys.executable, "-m", "launch.train", f"--workdir={workdir}",
                        f"--config.train.num_steps={saved[0] + 4}", *small], cwd=REPO,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_NUM_CPU_DEVICES="8"),
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  assert f"at step {saved[0] + 2}." in one.stdout and f"Training finished at step {saved[0] + 4}" in one.stdout
  # a run says what it is first: the config with its overrides, then (after the model line) the corpus it read
  assert one.stdout.startswith("Config ") and f"--config.train.num_steps={saved[0] + 4}" in one.stdout.splitlines()[0]
  assert "\nCorpus embedded:pydoc_topics: 79 documents" in one.stdout


def test_collective_bytes_are_read_off_the_hlo_per_ring_step():
  from dlm_jax.benchmarks import scale_out
  hlo = "\n".join([
      "  %all-gather.1 = f32[64,32]{1,0} all-gather(f32[8,32]{1,0} %p), channel_id=1, "
      "replica_groups=mesh['axis_0'=1,'axis_1'=8,'axis_2'=1] {'axis_1'}, dimensions={0}",
      "  %all-reduce.2 = (f32[32,32]{1,0}, bf16[16]{0}) all-reduce(%a, %b), channel_id=2, "
      "replica_groups=mesh['axis_0'=2,'axis_1'=2,'axis_2'=2] {'axis_0','axis_1'}, to_apply=%add",
      "  %reduce-scatter.3 = f32[4,32]{1,0} reduce-scatter(f32[16,32]{1,0} %g), replica_groups=[2,4]<=[8], "
      "dimensions={0}",
      "  %ags = (f32[8,32]{1,0}, f32[64,32]{1,0}) all-gather-start(f32[8,32]{1,0} %q), "
      "replica_groups={{0,1,2,3,4,5,6,7}}",
      "  %agd = f32[64,32]{1,0} all-gather-done(%ags)",
      "  %x = f32[64,32]{1,0} add(%all-gather.1, %agd)",
  ])
  ops = scale_out.collectives(hlo, 8)
  # all-gathers of 64x32 f32 over 8: each device sends 7/8 of 8 KiB, twice (the async pair counted once)
  assert ops["all-gather"] == {"count": 2, "result_bytes": 2 * 8192, "sent_bytes": 2 * 8192 * 7 / 8}
  # all-reduce over data x fsdp = 4 devices: 2 (n - 1)/n of (4096 + 32) bytes
  assert ops["all-reduce"] == {"count": 1, "result_bytes": 4128, "sent_bytes": 4128 * 2 * 3 / 4}
  # reduce-scatter in groups of 4: a 512-byte result of a 2 KiB input, of which 3/4 leave each device
  assert ops["reduce-scatter"] == {"count": 1, "result_bytes": 512, "sent_bytes": 512 * 3}
  assert scale_out.projection(0.8, 4.5e9, 450e9, 8) == pytest.approx((0.1, 0.11))  # t_1 / 8 and 4.5 GB at 450 GB/s
  assert scale_out.projection(0.08, 4.5e9, 450e9, 8) == pytest.approx((0.01, 0.02))  # communication-bound
