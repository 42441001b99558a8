"""Runs from Hugging Face checkpoints and back: fine-tune (`train.init_from="hf:PATH"`), load for sampling or as the
judge (`load_run`), merge LoRA adapters and export a run (`export_run`), on top of the tensor tables of models/hf.py.

    python -m launch.train --init_from=hf:PATH --workdir=RUN      # the run's model and tokenizer are the checkpoint's
    python -m launch.sample --hf=PATH --prompt=...                  # any decoding strategy, no training
    python -m launch.gen_eval --workdir=RUN --judge=hf:GPT2_PATH    # MDLM's generative perplexity, in JAX
    python -m launch.export --workdir=RUN --hf=OUT                  # safetensors + config.json + tokenizer
"""
from __future__ import annotations

import copy
import json
import pathlib
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dlm_jax import models
from dlm_jax.data import corpus, tokenizers
from dlm_jax.errors import ConfigError
from dlm_jax.models import hf
from dlm_jax.training import checkpoint, state as state_lib

# config.model fields that stay the run's when its architecture comes from a checkpoint (train.init_from).
RUN_SWITCHES = ("dropout", "attention_dropout", "embedding_dropout", "remat", "layer_loop", "dtype", "attention",
                "embed_one_hot")


def configure(config, spec: str | None = None):
  """`config` with its model and tokenizer taken from the checkpoint `spec` (default config.train.init_from,
  "hf:PATH"; `config` itself when that is empty): config.model becomes the "pretrained" denoiser of the checkpoint's
  config.json (its RUN_SWITCHES kept from `config`; causal when diffusion.objective is "autoregressive"; LoRA from
  train.lora_rank / train.lora_targets) and data.tokenizer the checkpoint's tokenizer. A copy; `config` is not
  modified."""
  spec = config.train.get("init_from", "") if spec is None else spec
  if not spec:
    if int(config.train.get("lora_rank", 0) or 0):
      raise ConfigError("train.lora_rank adapts an imported checkpoint: set train.init_from='hf:PATH' too.")
    return config
  flag = "train.init_from"
  if not spec.startswith(hf.HF_PREFIX):
    raise ConfigError(f"{flag}={spec!r}: name a Hugging Face checkpoint folder as 'hf:PATH'.")
  checkpoint_config = hf.read_config(hf.strip_prefix(spec), flag)
  for name in ("time_conditioning", "self_conditioning"):
    if config.model.get(name):
      raise ConfigError(f"model.{name}=True adds parameters that the checkpoint {spec} does not have; fine-tune it "
                        f"without (--config.model.{name}=False).")
  tokenizer = config.data.get("tokenizer", "")
  if tokenizers.is_hf(tokenizer) and (pathlib.Path(hf.strip_prefix(tokenizer)).resolve()
                                      != pathlib.Path(hf.strip_prefix(spec)).resolve()):
    raise ConfigError(f"data.tokenizer={tokenizer!r} is not the tokenizer of {flag}={spec!r}: the checkpoint knows "
                      "only its own ids. Leave data.tokenizer unset.")
  out = copy.deepcopy(config)
  out.unlock()
  model = {"name": "pretrained", **models.config_defaults("pretrained")}
  model.update({k: config.model[k] for k in RUN_SWITCHES if k in config.model})
  model.update(hf.model_fields(checkpoint_config))
  model["causal"] = config.diffusion.objective == "autoregressive"
  model["lora_rank"] = int(config.train.get("lora_rank", 0) or 0)
  model["lora_targets"] = str(config.train.get("lora_targets", "qkv,out"))
  out.model = ml_collections.ConfigDict(model)
  out.data.tokenizer = spec
  return out


def lora_initializer(seed: int):
  """Values of the parameters a checkpoint does not have: LoRA's A drawn as nnx.LoRA draws it (one key per parameter
  path, by its CRC-32: the same in every process, unlike Python's salted str hash) and B zeros, so that the adapted model starts as the checkpoint's."""
  from flax.nnx.nn import lora

  def initialize(path, variable):
    if not isinstance(variable, nnx.LoRAParam):
      return None
    if path[-1] == "lora_b":
      return np.zeros(variable.shape, variable.dtype)
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(map(str, path)).encode()) % (2**31))
    return np.asarray(lora.default_a_initializer(key, variable.shape, variable.dtype))
  return initialize


def init_train_state(config, vocab_size: int, tx, mesh, special):
  """(graphdef, other, TrainState) of a run that starts from config.train.init_from: the checkpoint's tensors placed
  one by one on `mesh` by their logical axes (no device holds an FSDP-split model whole), a fresh optimizer."""
  abstract = nnx.eval_shape(lambda: models.get_model(config, vocab_size, nnx.Rngs(0), special))
  graphdef, abstract_params, other = nnx.split(abstract, nnx.Param, ...)
  place = lambda variable, value: jax.device_put(value, mesh.leaf_sharding(variable))
  params = hf.load_params(config.train.init_from, abstract_params, place=place, flag="train.init_from",
                          initialize=lora_initializer(int(config.seed)))
  build = lambda p: state_lib.state_from_params(config, p, tx)
  state = jax.jit(build, out_shardings=mesh.shardings(jax.eval_shape(build, params)))(params)
  return graphdef, other, state


def load_run(spec: str, config, objective: str = "elbo", seq_len: int | None = None, mesh=None,
             flag: str = "--hf", **model_overrides) -> checkpoint.LoadedRun:
  """The checkpoint folder `spec` ("hf:PATH" or PATH) as a `checkpoint.LoadedRun` (step 0, workdir "hf:PATH") for the
  sampler and the evaluations: bidirectional for a diffusion `objective`, causal for "autoregressive" (a judge).
  `config` gives everything but the model and tokenizer (the launchers pass configs/default's); `seq_len` defaults to
  the checkpoint's context, at most 1,024; `model_overrides` are config.model run switches (e.g. dtype="float32").
  With `mesh` (training/sharding.MeshContext) the parameters are placed on it by their logical axes."""
  spec = spec if spec.startswith(hf.HF_PREFIX) else hf.HF_PREFIX + spec
  folder = hf.strip_prefix(spec)
  checkpoint_config = hf.read_config(folder, flag)
  config = copy.deepcopy(config)
  config.unlock()
  config.diffusion.objective = objective
  config.train.init_from = spec
  config.data.tokenizer = spec
  for name, value in model_overrides.items():
    config.model[name] = value
  config = configure(config)
  context = int(hf.model_fields(checkpoint_config).get("max_positions") or 1024)
  config.data.seq_len = int(seq_len or min(context, 1024))
  tokenizer = tokenizers.HFTokenizer.from_path(folder, flag=flag)
  abstract = nnx.eval_shape(lambda: models.get_model(config, tokenizer.vocab_size, nnx.Rngs(0), tokenizer.special))
  graphdef, abstract_params, other = nnx.split(abstract, nnx.Param, ...)
  place = None if mesh is None else (lambda variable, value: jax.device_put(value, mesh.leaf_sharding(variable)))
  params = hf.load_params(folder, abstract_params, place=place, flag=flag, initialize=lora_initializer(0))
  return checkpoint.LoadedRun(config, tokenizer, graphdef, other, params, 0, "raw", "latest", spec)


# -- out -----------------------------------------------------------------------------------------------------------
def merge_lora(params):
  """`params` with every LoRA adapter folded into its kernel, W <- W + A B, and the adapters removed: the parameters
  of the same model built with lora_rank 0 (whose logits equal the adapted model's up to float rounding)."""
  flat = dict(nnx.to_flat_state(params))
  for path in [p for p in flat if p[-1] == "lora_a"]:
    owner = path[:-2]  # .../NAME/lora/lora_a -> .../NAME
    a, b = flat.pop(path), flat.pop(owner + ("lora", "lora_b"))
    kernel = flat[owner + ("kernel",)]
    merged = kernel[...] + (a[...].astype(jnp.float32) @ b[...].astype(jnp.float32)).astype(kernel[...].dtype)
    flat[owner + ("kernel",)] = kernel.replace(merged)
  return nnx.from_flat_state(flat)


def export_fields(config) -> dict:
  """The models/hf.py fields of a run's model: a "pretrained" run's own, or the baseline transformer (RMSNorm,
  SwiGLU, RoPE, tied head, no biases) as the LLaMA layout with tied embeddings. Others are refused."""
  model = config.model.to_dict()
  if model["name"] == "pretrained":
    if not model.get("family"):
      raise ConfigError("This 'pretrained' run names no checkpoint family (model.family); export writes one of "
                        f"{hf.FAMILIES}.")
    return {**model, "max_positions": int(model.get("max_positions") or config.data.seq_len)}
  unsupported = [name for name in ("time_conditioning", "self_conditioning", "fused_add_norm") if model.get(name)]
  if model["name"] != "transformer" or model.get("position") != "rope" or unsupported:
    raise ConfigError(f"Export writes the imported families and the baseline transformer with RoPE, no time "
                      f"conditioning and no self-conditioning; this run's model is {model['name']!r} "
                      f"(position={model.get('position')!r}{', ' + ', '.join(unsupported) if unsupported else ''}).")
  return {**model, "family": "llama", "num_kv_heads": model["num_heads"], "head_dim": model["width"] // model["num_heads"],
          "norm_epsilon": 1e-6, "head": "tied", "bias": "none", "max_positions": int(config.data.seq_len)}


def write_tokenizer(tokenizer, out: pathlib.Path):
  """tokenizer.json (with the pad/mask tokens the run added past the vocabulary, as added special tokens, so that the
  ids come back the same) and tokenizer_config.json naming every role. A Hugging Face tokenizer only."""
  if not isinstance(tokenizer, tokenizers.HFTokenizer):
    raise ConfigError(f"Export writes a Hugging Face tokenizer; this run's is {tokenizer.kind!r}. Train with "
                      "data.tokenizer='hf:PATH' (or launch.tokenizer --model_type=byte_bpe) to export.")
  library = tokenizers._hf_library()
  rust = library.Tokenizer.from_str(tokenizer.tokenizer_json)
  names = {}
  for role in ("pad", "mask"):  # pad first: the order HFTokenizer numbers them in
    if role in tokenizer.added:
      name = next(n for n in (f"[{role.upper()}]", f"<|{role}|>", f"<|dlm_{role}|>") if rust.token_to_id(n) is None)
      rust.add_special_tokens([library.AddedToken(name, special=True)])
      if rust.token_to_id(name) != tokenizer.added[role]:
        raise ConfigError(f"The {role} token would get id {rust.token_to_id(name)} in the exported tokenizer, not "
                          f"{tokenizer.added[role]}.")
      names[role] = name
  special = tokenizer.special
  roles = {"pad": special.pad, "bos": special.bos, "eos": special.eos, "mask": special.mask, "unk": special.unk}
  token_config = {f"{role}_token": names.get(role) or rust.id_to_token(i) for role, i in roles.items() if i is not None}
  corpus.write_atomic(out / "tokenizer.json", lambda tmp: tmp.write_text(rust.to_str(), encoding="utf-8"))
  corpus.write_atomic(out / "tokenizer_config.json",
                      lambda tmp: tmp.write_text(json.dumps(token_config, indent=2), encoding="utf-8"))


def export_run(run: checkpoint.LoadedRun, out) -> dict:
  """Writes `run` (LoRA merged) to the folder `out` as transformers reads it: model.safetensors, config.json (the
  family's class), tokenizer.json and tokenizer_config.json. Returns {"tensors", "parameters", "bytes"}."""
  from safetensors.numpy import save_file
  fields = export_fields(run.config)
  params = merge_lora(run.params)
  tensors = hf.export_tensors(params, fields)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  config = hf.hf_config(fields, run.tokenizer.vocab_size, run.tokenizer.special)
  write_tokenizer(run.tokenizer, out)
  corpus.write_atomic(out / "model.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
  corpus.write_atomic(out / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2), encoding="utf-8"))
  return {"tensors": len(tensors), "parameters": int(sum(t.size for t in tensors.values())),
          "bytes": (out / "model.safetensors").stat().st_size}
