"""Sampler parity across a refactor (issue #25): every output array of the samplers, bit for bit.

    git worktree add /tmp/old 8084ce9 && cd /tmp/old && python /path/to/tests/parity/sampler_parity.py record old.npz
    cd /path/to/repo && python tests/parity/sampler_parity.py compare /tmp/old/old.npz

Run from a repository root (the code under test is the cwd's). Covers the configs of tests/test_sampler.py and
sampling_suite's strategies on toy denoisers (5 kinds x 2 fixed masks x 2 seeds, and a priority) and on random-init
transformer / HRM / EcoHybrid denoisers (KV caches, strategic weight), plus the uniform-state, SEDD, DDIM/DDPM and AR
samplers: tokens, reveal steps, confidences, trajectories, steps, lengths, network calls. Uses only the API the
pre-redesign sampler had (sampler.sample, make_sampler, SamplerConfig). About 3 minutes on 2 CPU cores. Not a pytest
module: the reference comes from another commit."""
import sys, dataclasses
sys.path.insert(0, ".")
import numpy as np
import jax, jax.numpy as jnp
from flax import nnx
from dlm_jax import special_tokens, models
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.sampling import sampler as S
from configs import default

jax.config.update("jax_default_matmul_precision", "highest")
V, L, B = 12, 24, 4
SC = S.SamplerConfig

def toy_denoiser(scale=1.0, eos_at=None):
  keys = jax.random.split(jax.random.key(42), 3)
  own, left, pos = (jax.random.normal(keys[0], (V, V)), jax.random.normal(keys[1], (V, V)),
                    jax.random.normal(keys[2], (L, V)))
  def denoise(x, t):
    out = scale * 2.0 * (own[x] + left[jnp.roll(x, 1, axis=1)] + pos[None, :x.shape[1]])
    if eos_at is not None:
      out = out.at[:, :, special_tokens.EOS].set(-1e4).at[:, eos_at, special_tokens.EOS].set(1e4)
    return out
  return denoise

TOY = {
  "confidence_sampled": SC(steps=8), "confidence_reveal_noise": SC(steps=7, reveal_noise=4.5, top_k=5),
  "confidence_greedy_margin": SC(steps=5, greedy=True, confidence="margin"),
  "ancestral": SC(steps=6, method="ancestral", top_p=0.9, schedule=MaskingSchedule("linear")),
  "linear4": SC(steps=4, schedule=MaskingSchedule("linear")),
  "one_per_step": SC(steps=16, greedy=True, schedule=MaskingSchedule("linear")),
  "greedy6": SC(steps=6, greedy=True), "topk1": SC(steps=6, top_k=1), "hot": SC(steps=4, temperature=5.0),
  "greedy_prob": SC(steps=6, greedy=True, confidence="prob"),
  "blocks": SC(steps=8, block_length=4), "blocks_ancestral": SC(steps=8, block_length=5, method="ancestral"),
  "threshold": SC(steps=8, threshold=0.5), "threshold_blocks": SC(steps=8, threshold=0.3, block_length=6),
  "confidence_stop": SC(steps=8, confidence_stop=0.6),
  "low_confidence_remasking": SC(steps=8, remasking="low_confidence", remask_eta=0.5),
  "remdm_cap": SC(steps=12, method="ancestral", remasking="remdm_cap", remask_eta=0.5),
  "remdm_loop": SC(steps=12, method="ancestral", remasking="remdm_loop", remask_eta=0.1),
  "guidance": SC(steps=8, guidance_scale=1.5), "guidance_greedy1": SC(steps=1, greedy=True, guidance_scale=1.5),
  "cache": SC(steps=40, method="ancestral", cache="unchanged"), "eos_stop": SC(steps=8, eos_stop=True),
  "blocks4_conf": SC(steps=8, block_length=4), "blocks6_thr": SC(steps=8, block_length=6, threshold=0.3),
  "block8_linear": SC(steps=4, block_length=8, schedule=MaskingSchedule("linear")),
  "thr_greedy": SC(steps=8, threshold=0.4, greedy=True), "cstop09": SC(steps=8, confidence_stop=0.9),
  "lowconf_t0": SC(steps=4, remasking="low_confidence", remask_eta=0.25, remask_t_off=0.0,
                   schedule=MaskingSchedule("linear")),
  "remdm_cap_eta0": SC(steps=12, method="ancestral", remasking="remdm_cap", remask_eta=0.0),
  "noise_blocks_remask": SC(steps=12, reveal_noise=2.0, block_length=8, remasking="low_confidence", remask_eta=0.3,
                            eos_stop=True, guidance_scale=0.5),
  "anc_blocks_remdm_eos": SC(steps=16, method="ancestral", block_length=8, remasking="remdm_cap", remask_eta=0.3,
                             eos_stop=True, top_k=4),
}
DENOISERS = {"toy": toy_denoiser(), "sure": toy_denoiser(100.0), "flat": toy_denoiser(0.01),
             "eos": toy_denoiser(eos_at=12), "mild": toy_denoiser(0.7)}

def toy_runs():
  tokens = jax.random.randint(jax.random.key(7), (B, L), special_tokens.NUM_SPECIAL, V)
  fixed = jnp.zeros((B, L), bool).at[:, :5].set(True).at[:, -3:].set(True)
  prefix_only = jnp.zeros((B, L), bool).at[:, :5].set(True)
  pri = jax.random.normal(jax.random.key(9), (B, L))
  keys = jax.random.split(jax.random.key(42), 3)
  own, left, pos = (jax.random.normal(keys[0], (V, V)), jax.random.normal(keys[1], (V, V)),
                    jax.random.normal(keys[2], (L, V)))

  def denoiser(scale, eos_on):
    def denoise(x, t):
      out = scale * 2.0 * (own[x] + left[jnp.roll(x, 1, axis=1)] + pos[None, :x.shape[1]])
      eos = out.at[:, :, special_tokens.EOS].set(-1e4).at[:, 12, special_tokens.EOS].set(1e4)
      return jnp.where(eos_on, eos, out)
    return denoise

  for name, cfg in TOY.items():
    cfg = dataclasses.replace(cfg, record_trajectory=True)
    fn = jax.jit(lambda r, x, f, p, scale, eos_on: S.sample(S.stateless(denoiser(scale, eos_on)), r, x, f, cfg,
                                                           priority_BxL=p))
    for dname, (scale, eos_on) in dict(toy=(1.0, False), sure=(100.0, False), flat=(0.01, False), eos=(1.0, True),
                                       mild=(0.7, False)).items():
      for fname, f in (("fix", fixed), ("prefix", prefix_only)):
        for seed in (0, 3):
          yield f"toy/{name}/{dname}/{fname}/{seed}/0", fn(jax.random.key(seed), tokens, f, None, scale, eos_on)
    yield f"toy/{name}/pri", fn(jax.random.key(0), tokens, fixed, pri, 1.0, False)
  ar = SC(greedy=True, record_trajectory=True)
  t2 = jnp.full((B, L), special_tokens.MASK, jnp.int32).at[:, :3].set(7)
  f2 = jnp.zeros((B, L), bool).at[:, :3].set(True)
  yield "toy/autoregressive", jax.jit(lambda r, x, f: S.autoregressive_sample(toy_denoiser(), r, x, f, ar))(
      jax.random.key(0), t2, f2)

def model_of(name, vocab=20, length=32, **over):
  c = default.get_config()
  c.data.seq_len = length
  c.model = default.model_config(name)
  c.model.width, c.model.num_heads = 32, 2
  if "num_layers" in c.model: c.model.num_layers = 2
  if name == "hrm": c.model.update(l_layers=1, h_layers=1, h_cycles=1, l_steps=2, memory_cells=4, memory_top_k=2)
  if "mlp_dim" in c.model: c.model.mlp_dim = 64
  for k, v in over.items(): c.model[k] = v
  return c, models.get_model(c, vocab, nnx.Rngs(0))

def suite_strategies():
  from dlm_jax.evaluation import sampling_suite
  return sampling_suite.strategies(block_length=8, threshold=0.5, remask_eta=0.1, guidance_scale=1.0)

def model_runs():
  c, model = model_of("transformer")
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  tokens = jax.random.randint(jax.random.key(1), (3, 32), special_tokens.NUM_SPECIAL, 20)
  fixed = jnp.zeros((3, 32), bool).at[:, :6].set(True)
  base = dict(steps=16, reveal_noise=1.0)
  strategies = dict(suite_strategies())
  strategies.pop("confidence_stop")
  strategies.update(cstop=dict(confidence_stop=0.05))
  for name, over in strategies.items():
    for greedy in (False, True):
      if name == "ancestral_cache" or over.get("method") == "ancestral": kw = dict(over)
      else: kw = {**base, **over}
      kw.setdefault("steps", 16)
      if over.get("method") == "ancestral": kw["steps"] = 40 if name == "ancestral_cache" else 16
      cfg = SC(greedy=greedy, record_trajectory=True, **kw)
      run = S.make_sampler(graphdef, other, cfg)
      yield f"transformer/{name}/{int(greedy)}", run(params, jax.random.key(2), tokens, fixed)
  for mname, over in (("hrm", {}), ("eco_hybrid", {})):
    c, model = model_of(mname)
    graphdef, params, other = nnx.split(model, nnx.Param, ...)
    for sw in (0.0, 1.5):
      cfg = SC(steps=12, strategic_weight=sw, record_trajectory=True)
      yield f"{mname}/sw{sw}", S.make_sampler(graphdef, other, cfg)(params, jax.random.key(4), tokens, fixed)
  for cache in ("dual", "prefix"):
    c, model = model_of("eco_hybrid")
    graphdef, params, other = nnx.split(model, nnx.Param, ...)
    cfg = SC(steps=16, block_length=8, cache=cache, record_trajectory=True)
    try:
      yield f"eco_hybrid/{cache}", S.make_sampler(graphdef, other, cfg)(params, jax.random.key(4), tokens, fixed)
    except Exception as e:
      print("skip eco", cache, type(e).__name__, e)
  # transition / gaussian families
  c, model = model_of("transformer", time_conditioning=True)
  graphdef, params, other = nnx.split(model, nnx.Param, ...)
  for tag, kw in (("uniform_anc", dict(process="uniform", method="ancestral")),
                  ("uniform_greedy", dict(process="uniform", method="greedy")),
                  ("uniform_post", dict(process="uniform", method="ancestral", parameterization="posterior")),
                  ("sedd_abs", dict(process="absorbing", parameterization="score", method="tweedie")),
                  ("sedd_uni", dict(process="uniform", parameterization="score", method="tweedie")),
                  ("ddim", dict(process="gaussian", method="ddim")), ("ddpm", dict(process="gaussian", method="ddpm"))):
    cfg = SC(steps=10, record_trajectory=True, top_k=0, **kw)
    yield f"family/{tag}", S.make_sampler(graphdef, other, cfg)(params, jax.random.key(5), tokens, fixed)

def collect():
  out = {}
  for gen in (toy_runs(), model_runs()):
    for name, o in gen:
      for field in ("tokens_BxL", "reveal_step_BxL", "confidence_BxL", "trajectory_SxBxL", "steps_B", "lengths_B",
                    "network_calls"):
        v = getattr(o, field, None)
        if v is not None:
          out[f"{name}::{field}"] = np.asarray(v)
  return out

if __name__ == "__main__":
  mode, path = sys.argv[1], sys.argv[2]
  got = collect()
  if mode == "record":
    np.savez_compressed(path, **got); print(len(got), "arrays recorded")
  else:
    ref = np.load(path)
    bad = [k for k in ref.files if k not in got or not np.array_equal(ref[k], got[k], equal_nan=True)]
    extra = sorted(set(got) - set(ref.files))
    print(f"{len(ref.files)} reference arrays, {len(bad)} differ, {len(extra)} new")
    for k in bad[:40]: print("DIFF", k)
