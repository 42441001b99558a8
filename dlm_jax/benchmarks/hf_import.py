"""What importing a Hugging Face checkpoint costs: wall time and peak host memory (`python -m launch.bench
--hf_import=PATH`, or `--hf_import=llama:SIZE` for a random LLaDA-shaped checkpoint written first).

A checkpoint is read tensor by tensor from its memory map, each of our parameters assembled in float32 on the host and
then placed on its device(s) (models/hf.load_params). On a CPU the devices' memory is the host's, so the peak resident
memory over the process's baseline is the float32 model plus the transient copies of one parameter (the concatenation
of q|k|v or gate|up and its transpose) plus the mapped file's pages that the kernel counts as resident (clean pages it
may drop under pressure, so the high-water mark overstates what the load needs); on a GPU the model goes to device
memory and the host keeps the rest. `projection` scales a measurement to another size: time and the host memory beyond
the model by file bytes, device memory at 4 bytes per parameter.
"""
from __future__ import annotations

import json
import pathlib
import resource
import time

import numpy as np

# LLaDA-shaped sizes (LLaMA layout, multi-head attention, untied head, LLaDA's 126,464-token vocabulary): "8b" is
# LLaDA-8B's shape (Nie et al. 2025, Table 5); "1b" the same family at 1.0B non-embedding parameters; "small" a
# 0.3B model that a 2-core CPU machine loads in seconds.
SHAPES = {
    "small": dict(width=1024, num_layers=12, num_heads=16, num_kv_heads=16, mlp_dim=2816, vocab=126464),
    "1b": dict(width=2048, num_layers=20, num_heads=16, num_kv_heads=16, mlp_dim=5632, vocab=126464),
    "8b": dict(width=4096, num_layers=32, num_heads=32, num_kv_heads=32, mlp_dim=12288, vocab=126464),
}


def parameter_count(shape: dict) -> int:
  d, f, v, layers = shape["width"], shape["mlp_dim"], shape["vocab"], shape["num_layers"]
  head_dim = d // shape["num_heads"]
  attention = d * (shape["num_heads"] + 2 * shape["num_kv_heads"]) * head_dim + shape["num_heads"] * head_dim * d
  return layers * (attention + 3 * d * f + 2 * d) + 2 * v * d + d


def largest_parameter(shape: dict) -> int:
  """Elements of the largest of our parameters (the [V, D] tables or a layer's gate|up [D, 2F])."""
  return max(shape["vocab"] * shape["width"], 2 * shape["width"] * shape["mlp_dim"])


def word_level_tokenizer(vocab: int) -> str:
  """tokenizer.json of a word-level tokenizer with `vocab` ids (id 0 <|endoftext|>, also the pad, as LLaDA's; id 1
  <|mdm_mask|>), so that the synthetic checkpoint's every embedding row is read and none is added."""
  words = {"<|endoftext|>": 0, "<|mdm_mask|>": 1, **{f"w{i}": i for i in range(2, vocab)}}
  added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
            "special": True} for c, i in (("<|endoftext|>", 0), ("<|mdm_mask|>", 1))]
  return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                     "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
                     "decoder": None, "model": {"type": "WordLevel", "vocab": words, "unk_token": "<|endoftext|>"}})


def synthesize(folder, size: str, seed: int = 0) -> pathlib.Path:
  """A random LLaMA-layout checkpoint of `SHAPES[size]` in float16 safetensors (the dtype checkpoints ship in), with
  config.json and a tokenizer covering its vocabulary, written once into `folder`."""
  from safetensors.numpy import save_file
  shape, folder = SHAPES[size], pathlib.Path(folder)
  if (folder / "model.safetensors").is_file():
    return folder
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  d, f, v, h, g = shape["width"], shape["mlp_dim"], shape["vocab"], shape["num_heads"], shape["num_kv_heads"]
  k = d // h
  draw = lambda *dims: (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)
  tensors = {"model.embed_tokens.weight": draw(v, d), "lm_head.weight": draw(v, d),
             "model.norm.weight": np.ones((d,), np.float16)}
  for i in range(shape["num_layers"]):
    p = f"model.layers.{i}"
    tensors.update({f"{p}.self_attn.q_proj.weight": draw(h * k, d), f"{p}.self_attn.k_proj.weight": draw(g * k, d),
                    f"{p}.self_attn.v_proj.weight": draw(g * k, d), f"{p}.self_attn.o_proj.weight": draw(d, h * k),
                    f"{p}.mlp.gate_proj.weight": draw(f, d), f"{p}.mlp.up_proj.weight": draw(f, d),
                    f"{p}.mlp.down_proj.weight": draw(d, f), f"{p}.input_layernorm.weight": np.ones((d,), np.float16),
                    f"{p}.post_attention_layernorm.weight": np.ones((d,), np.float16)})
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d,
            "num_hidden_layers": shape["num_layers"], "num_attention_heads": h, "num_key_value_heads": g,
            "intermediate_size": f, "vocab_size": v, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float16"}
  (folder / "config.json").write_text(json.dumps(config, indent=1))
  (folder / "tokenizer.json").write_text(word_level_tokenizer(v))
  (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                                             "mask_token": "<|mdm_mask|>"}))
  return folder


def rss_mb() -> float:
  """This process's peak resident memory so far (MB; Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder, config, seq_len: int | None = None) -> dict:
  """Loads the checkpoint at `folder` as a bidirectional run (training/hf_checkpoints.load_run, `config` giving all but
  the model and tokenizer; `seq_len` defaults to the checkpoint's context, at most 1,024) and reports the seconds, the
  parameters, the file's MB and the peak host memory over the baseline after imports. Run it in a fresh process
  (ru_maxrss is a high-water mark)."""
  import jax

  from dlm_jax.training import hf_checkpoints
  folder = pathlib.Path(folder)
  files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
  file_mb = sum(f.stat().st_size for f in files) / 1e6
  baseline = rss_mb()
  start = time.perf_counter()
  run = hf_checkpoints.load_run(str(folder), config, "elbo", seq_len=seq_len)
  jax.block_until_ready(jax.tree.leaves(run.params))
  seconds = time.perf_counter() - start
  params = int(sum(x.size for x in jax.tree.leaves(run.params)))
  peak = rss_mb() - baseline
  return {"checkpoint": str(folder), "params_M": params / 1e6, "file_MB": file_mb, "load_s": seconds,
          "read_MB_per_s": file_mb / seconds, "peak_host_MB_over_baseline": peak,
          "float32_params_MB": 4 * params / 1e6, "backend": jax.default_backend()}


def projection(measured: dict, size: str) -> dict:
  """`measured` (a `measure` result of a float16 LLaMA-layout checkpoint) scaled to SHAPES[size]: load time by file
  bytes (2 per parameter), device memory at 4 bytes per parameter (float32), and the host memory beyond the float32
  model (the mapped file's resident pages, which the kernel may drop, and one parameter's float32 copies) by the
  file's size: (measured peak - measured float32 model) / measured file bytes x the projected file bytes."""
  params = parameter_count(SHAPES[size])
  file_mb = 2 * params / 1e6
  beyond = max(measured["peak_host_MB_over_baseline"] - measured["float32_params_MB"], 0.0) / measured["file_MB"]
  return {"size": size, "params_B": params / 1e9, "file_GB": file_mb / 1e3,
          "load_s": file_mb / measured["read_MB_per_s"], "device_GB_float32": 4 * params / 1e9,
          "host_beyond_model_GB": beyond * file_mb / 1e3,
          "largest_parameter_GB_float32": 4 * largest_parameter(SHAPES[size]) / 1e9}
