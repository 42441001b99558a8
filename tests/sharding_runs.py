"""Training runs on simulated CPU meshes for tests/test_sharding.py, in a subprocess (the device count is fixed when
JAX starts: the caller sets XLA_FLAGS=--xla_force_host_platform_device_count=N).

  python tests/sharding_runs.py meshes OUT_DIR            losses and parameters on 1x8x1 and 2x2x2 (+ memory, restores)
  python tests/sharding_runs.py more_meshes OUT_DIR       losses and parameters on 8x1x1 and 1x4x2
  python tests/sharding_runs.py single OUT_DIR            the same on one device (after `meshes`: it resumes its run)
  python tests/sharding_runs.py models OUT_DIR            EcoHybrid and HRM on 2x2x2 (8 devices) or on one device
  python tests/sharding_runs.py process OUT_DIR ADDR P I   process I of P through jax.distributed (coordinator ADDR)

Writes OUT_DIR/<name>.json (losses, bytes, data rows) and OUT_DIR/<name>.npz (parameters by path).
"""
import json
import pathlib
import sys

import numpy as np

MESHES = {"8x1x1": (8, 1, 1), "1x8x1": (1, 8, 1), "2x2x2": (2, 2, 2), "1x4x2": (1, 4, 2)}
# Trained in the default test run: FSDP alone and every axis at once (the others in the slow run's `more_meshes`).
TRAINED = ("1x8x1", "2x2x2")


def config_for(mesh, model="transformer", num_steps=6, sharded_init=False, evaluate=False):
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  from conftest import tiny_config  # noqa: E402
  overrides = {"train.num_steps": num_steps, "train.checkpoint_every": 3, "eval.every": 0, "sample.num_samples": 0,
               "tensorboard": False, "model.dtype": "float32", "mesh.data": mesh[0], "mesh.fsdp": mesh[1],
               "mesh.tensor": mesh[2], "mesh.sharded_init": sharded_init}
  if evaluate:  # evaluate and sample 8 rows (split over the devices) at the last step
    overrides.update({"eval.every": num_steps, "sample.num_samples": 8, "train.sample_every": num_steps})
  c = tiny_config(**overrides)
  if model != "transformer":
    import configs.default as default
    c.model = default.model_config(model)
    for field, value in {"num_layers": 2, "l_layers": 1, "h_layers": 1, "num_heads": 2, "width": 32, "mlp_dim": 64,
                         "memory_slots": 4, "dtype": "float32"}.items():
      if field in c.model:
        c.model[field] = value
  return c


def flat_params(params) -> dict:
  import jax
  from flax import nnx
  leaves = jax.tree.leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(v[...] if isinstance(v, nnx.Variable) else v))
          for path, v in leaves}


def train(mesh, workdir, model="transformer", num_steps=6, stop_at=None, evaluate=False):
  """The per-step training losses (with `evaluate`, plus the final evaluation NELBO)."""
  import time
  from dlm_jax.training import loop
  start = time.perf_counter()
  summary = loop.train(config_for(mesh, model, num_steps, evaluate=evaluate), workdir, stop_at_step=stop_at)
  print(f"TIMING {mesh} {model} {time.perf_counter() - start:.1f} s", flush=True)
  losses = [h["loss"] for h in summary["history"]]
  return losses + [summary["eval_nll_per_token"]] if evaluate else losses


def saved_params(workdir, mesh=None, step=3):
  """The raw parameters of checkpoint `step`, restored on one device or laid out on `mesh`."""
  from dlm_jax.training import checkpoint, sharding
  ctx = None if mesh is None else sharding.MeshContext(sharding.make_mesh(*mesh))
  return flat_params(checkpoint.load_for_inference(workdir, step=step, weights="raw", mesh=ctx).params)


def sample_tokens(workdir, mesh=None):
  """Greedy confidence-ordered samples [8, L] of checkpoint 3, as launch.sample --mesh draws them (one device when
  `mesh` is None)."""
  import jax
  from dlm_jax.sampling import make_text_sampler, prompt_batch
  from dlm_jax.training import checkpoint, sharding
  ctx = None if mesh is None else sharding.MeshContext(sharding.make_mesh(*mesh))
  run = checkpoint.load_for_inference(workdir, step=3, weights="raw", mesh=ctx)
  cfg = run.sampler_config(greedy=True, reveal_noise=0.0, steps=8)
  tokens, fixed = prompt_batch(run.tokenizer, 8, int(run.config.data.seq_len), prompt="The ")
  sample_texts = make_text_sampler(run.graphdef, run.other, run.tokenizer, cfg, run.objective)
  if ctx is not None:
    sample_texts, tokens, fixed = ctx.bind(sample_texts), ctx.place_rows(tokens), ctx.place_rows(fixed)
  output = sample_texts(run.params, jax.random.key(0), tokens, fixed).output
  return {"tokens": np.asarray(output.tokens_BxL).tolist(), "confidence": np.asarray(output.confidence_BxL).tolist(),
          "sharding": str(output.tokens_BxL.sharding.spec) if ctx is not None else ""}


def memory(mesh, measure: bool):
  """Parameter and optimizer-state bytes per device on `mesh`: computed from the shardings of the abstract state and,
  with `measure`, measured on the devices after the sharded initialization (mesh.sharded_init)."""
  import jax
  from dlm_jax.training import optimizer, sharding, state as state_lib
  c = config_for(mesh, sharded_init=True)
  ctx = sharding.MeshContext.from_config(c)
  tx = optimizer.make_optimizer(c.optimizer, 6, c.model)
  abstract = state_lib.abstract_state(c, 100, tx)
  row = {}
  for name in ("params", "opt_state"):
    tree = getattr(abstract, name)
    row[name] = {"computed": sharding.bytes_per_device(tree, ctx.shardings(tree)),
                 "total": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))}
  if measure:
    _, _, state = state_lib.init_on_mesh(c, 100, tx, ctx)
    for name in ("params", "opt_state"):
      row[name]["measured"] = sharding.measured_bytes_per_device(getattr(state, name))
  return row


def meshes(out: pathlib.Path):
  import jax
  result = {"devices": jax.device_count(), "losses": {}, "memory": {}}
  work = out / "work"
  for name, mesh in MESHES.items():
    if name in TRAINED:
      result["losses"][name] = train(mesh, work / name, stop_at=3)
      np.savez(out / f"params_{name}.npz", **saved_params(work / name))
    result["memory"][name] = memory(mesh, measure=name in ("8x1x1", "1x8x1"))
  # Restore across topologies: the 1x8x1 checkpoint (step 3) on 2x2x2, resumed to step 6; and read on 2x2x2.
  import shutil
  shutil.copytree(work / "1x8x1", work / "resume_2x2x2")
  shutil.copytree(work / "1x8x1", work / "resume_1")  # for `single`
  result["resumed_2x2x2"] = train((2, 2, 2), work / "resume_2x2x2")
  np.savez(out / "params_1x8x1_on_2x2x2.npz", **saved_params(work / "1x8x1", (2, 2, 2)))
  result["samples_2x2x2"] = sample_tokens(work / "1x8x1", (2, 2, 2))
  result["resumed_1x8x1"] = train((1, 8, 1), work / "1x8x1")
  (out / "meshes.json").write_text(json.dumps(result))


def more_meshes(out: pathlib.Path):
  """The meshes `meshes` does not train: losses and parameters after 3 steps."""
  result = {"losses": {}}
  for name in set(MESHES) - set(TRAINED):
    result["losses"][name] = train(MESHES[name], out / "work" / name, stop_at=3)
    np.savez(out / f"params_{name}.npz", **saved_params(out / "work" / name))
  (out / "more_meshes.json").write_text(json.dumps(result))


def single(out: pathlib.Path):
  """The 1-device references: losses and parameters after 3 steps, the 1x8x1 checkpoint resumed on one device."""
  result = {"losses": {}}
  work = out / "work"
  result["losses"]["1"] = train((1, 1, 1), work / "single", stop_at=3)
  np.savez(out / "params_1.npz", **saved_params(work / "single"))
  np.savez(out / "params_1x8x1_on_1.npz", **saved_params(work / "1x8x1"))
  result["resumed_1"] = train((1, 1, 1), work / "resume_1")
  result["samples_1"] = sample_tokens(work / "resume_1")
  (out / "single.json").write_text(json.dumps(result))


def models(out: pathlib.Path):
  """The first two losses of EcoHybrid and HRM on a 2x2x2 mesh (8 devices) or on one device."""
  import jax
  mesh = (2, 2, 2) if jax.device_count() == 8 else (1, 1, 1)
  name = "x".join(map(str, mesh))
  result = {model: train(mesh, out / "work" / f"{model}_{name}", model, num_steps=2) for model in ("eco_hybrid", "hrm")}
  (out / f"models_{name}.json").write_text(json.dumps(result))


def process(out: pathlib.Path, address: str, num_processes: int, process_id: int):
  """Process `process_id` of a localhost multi-process run (4 CPU devices each): trains 2 steps on the data-parallel
  mesh over all processes' devices, then evaluates and samples 8 rows; records its losses, the evaluation NELBO and
  the rows it fed of the first batch."""
  import jax
  jax.config.update("jax_num_cpu_devices", 4)
  from dlm_jax.training import sharding
  sharding.initialize_distributed("on", address, num_processes, process_id)
  from dlm_jax.data import pipeline
  c = config_for((-1, 1, 1), num_steps=2)
  ctx = sharding.MeshContext.from_config(c)
  losses = train((-1, 1, 1), out / "work_mp", num_steps=2, evaluate=True)
  streams = pipeline.load_token_streams(c.data, out / f"cache_{process_id}")
  shard = ctx.data_shard(int(c.train.batch_size), ctx.train_batch, axis=1)
  rows = next(pipeline.train_iterator(streams.train, int(c.data.seq_len), int(c.train.batch_size), int(c.data.seed),
                                      shard))
  result = {"losses": losses, "process_index": jax.process_index(), "shard": [shard.shard_index, shard.shard_count],
            "rows": rows.tolist(), "devices": jax.device_count(), "local_devices": jax.local_device_count()}
  (out / f"process_{process_id}.json").write_text(json.dumps(result))
  jax.distributed.shutdown()


if __name__ == "__main__":
  import jax
  jax.config.update("jax_default_matmul_precision", "highest")
  what, out = sys.argv[1], pathlib.Path(sys.argv[2])
  out.mkdir(parents=True, exist_ok=True)
  if what == "meshes":
    meshes(out)
  elif what == "single":
    single(out)
  elif what == "more_meshes":
    more_meshes(out)
  elif what == "models":
    models(out)
  else:
    process(out, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
