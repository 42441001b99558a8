"""Hugging Face checkpoints in and out: a local folder's config.json + safetensors <-> the "pretrained" denoiser.

    fields = model_fields(read_config(PATH))   # config.model of name "pretrained" (models/pretrained.py)
    params = load_params(PATH, model)          # the checkpoint's tensors as the model's nnx.Param state
    export(OUT, params, fields, tokenizer)     # safetensors + config.json + tokenizer, for transformers

Families (config.json `model_type`): "bert" (BertForMaskedLM), "modernbert" (ModernBertForMaskedLM), "gpt2"
(GPT2LMHeadModel), "llama" (LlamaForCausalLM), "qwen2" (Qwen2ForCausalLM; Dream's layout, and "dream" itself),
"llada" (LLaDA's own checkpoints, LLaDAModelLM of its remote code: the LLaMA function, bidirectional, under OLMo-style
names: model.transformer.wte, blocks.i.{attn_norm, q_proj, k_proj, v_proj, attn_out, ff_norm, ff_proj (the SiLU
gate), up_proj, ff_out}, ln_f, ff_out). One table per family (`tensor_table`) names, for every parameter of ours, the checkpoint tensors it is
made of; import concatenates them (q|k|v into `qkv`, gate|up into `gate_up`) and transposes torch's [out, in] Linear
weights to [in, out] (GPT-2's Conv1D is stored [in, out] already); export splits and transposes back, so export after
import is the identity, bit for bit. Nothing is computed on the tensors but copies, so the imported model's logits
equal transformers' to float32 rounding (tests/test_hf_import.py: 1e-4 on the committed tiny checkpoints).

Vocabulary: the model has a row for each id of its tokenizer (`tokenizers.HFTokenizer`). The tokenizer adds a pad
and a mask id past its vocabulary when the checkpoint has none (GPT-2, LLaMA): the embedding (and an untied head) get
a row for each, initialized to the mean of the checkpoint's rows (transformers' `resize_token_embeddings` default),
and the logit bias 0. Rows a checkpoint pads its table with past the tokenizer's ids (Qwen2: 151,936 rows for 151,665
tokens) are dropped: no token reads them. Export writes every row and the added tokens into the tokenizer, so the
exported folder re-imports with the same ids.

Loading is tensor by tensor (safetensors' memory map; a sharded checkpoint's index is followed): each of our
parameters is assembled on the host and placed with its sharding (the logical-axis rules over the mesh), so an FSDP
mesh receives an 8B checkpoint without one device ever holding it whole; the host holds one parameter at a time beyond
the memory map. A torch `pytorch_model.bin` is read only where torch is installed.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import jax
import numpy as np
from flax import nnx

from dlm_jax.errors import ConfigError

HF_PREFIX = "hf:"
FAMILIES = ("bert", "modernbert", "gpt2", "llama", "qwen2", "llada")
ALIASES = {"dream": "qwen2", "mistral": "llama"}
ARCHITECTURES = {"bert": "BertForMaskedLM", "modernbert": "ModernBertForMaskedLM", "gpt2": "GPT2LMHeadModel",
                 "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "llada": "LLaDAModelLM"}


class CheckpointFormatError(ConfigError):
  """A Hugging Face folder this importer cannot read (missing files, an unknown family, a tensor that is absent or
  of the wrong shape): the message names the path and what to do."""


def strip_prefix(spec: str) -> str:
  return spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec


def read_config(path, flag: str = "--init_from") -> dict:
  """config.json of the checkpoint folder `path` (a dict), with its family resolved into "family"."""
  folder = pathlib.Path(strip_prefix(str(path))).expanduser()
  file = folder / "config.json"
  if not file.is_file():
    raise CheckpointFormatError(f"{flag}=hf:{path}: {folder} has no config.json. Name a folder that "
                                "`save_pretrained` wrote (config.json, model.safetensors, tokenizer.json).")
  try:
    config = json.loads(file.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointFormatError(f"{flag}=hf:{path}: {file} is not valid JSON ({e}).") from e
  model_type = str(config.get("model_type", "")).lower()
  family = ALIASES.get(model_type, model_type)
  if family not in FAMILIES:
    raise CheckpointFormatError(f"{flag}=hf:{path}: model_type {model_type!r} is not one this importer reads; it "
                                f"reads {FAMILIES} (and {sorted(ALIASES)} as their layouts).")
  return {**config, "family": family}


def _rope_base(config: dict, layer_type: str = "full_attention", default: float = 10000.0) -> float:
  """The RoPE base of a config.json: `rope_theta`, or transformers 5's `rope_parameters` (per layer type for
  ModernBERT); a scaled RoPE (rope_type other than "default", e.g. LLaMA 3.1's "llama3") is refused."""
  params = config.get("rope_parameters") or {}
  if layer_type in params and isinstance(params[layer_type], dict):
    params = params[layer_type]
  if params.get("rope_type", "default") != "default" or (config.get("rope_scaling") or {}).get("rope_type",
                                                                                             "default") != "default":
    raise CheckpointFormatError(f"This checkpoint uses a scaled RoPE ({params or config.get('rope_scaling')}); the "
                                "importer reads unscaled RoPE only.")
  for key in ("rope_theta",):
    if key in params:
      return float(params[key])
    if key in config:
      return float(config[key])
  if layer_type == "sliding_attention" and "local_rope_theta" in config:
    return float(config["local_rope_theta"])
  if layer_type == "full_attention" and "global_rope_theta" in config:
    return float(config["global_rope_theta"])
  return default


def model_fields(config: dict) -> dict:
  """The config.model fields (name "pretrained") of the checkpoint whose config.json is `config` (`read_config`):
  its architecture only; training switches (dropout, remat, dtype, causal, ...) are the run's."""
  family = config["family"]
  if family == "bert":
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
      raise CheckpointFormatError("This BERT uses hidden_act/position_embedding_type other than 'gelu'/'absolute'.")
    return dict(family="bert", width=config["hidden_size"], num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"], position="learned",
                max_positions=config["max_position_embeddings"], norm="layer",
                norm_epsilon=float(config.get("layer_norm_eps", 1e-12)), norm_position="post", mlp="gelu", bias="all",
                embedding_norm=True, token_types=config.get("type_vocab_size", 2), head="mlm", head_bias=True,
                head_dense_bias=True)
  if family == "modernbert":
    layer_types = config.get("layer_types")
    every = int(config.get("global_attn_every_n_layers", 1))
    if layer_types:  # transformers 5 writes the pattern out; it must be the every-n one
      expected = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(len(layer_types))]
      if list(layer_types) != expected:
        raise CheckpointFormatError(f"ModernBERT layer_types {layer_types} are not global every {every} layers.")
    if config.get("hidden_activation", "gelu") != "gelu" or config.get("classifier_activation", "gelu") != "gelu":
      raise CheckpointFormatError("This ModernBERT uses an activation other than 'gelu'.")
    if config.get("attention_bias") or config.get("mlp_bias") or config.get("norm_bias"):
      raise CheckpointFormatError("This ModernBERT has attention/MLP/norm biases, which the importer does not map.")
    return dict(family="modernbert", width=config["hidden_size"], num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"], mlp_dim=config["intermediate_size"], position="rope",
                max_positions=config.get("max_position_embeddings", 0),
                rope_base=_rope_base(config, "full_attention", 160000.0), norm="layer_no_bias",
                norm_epsilon=float(config.get("norm_eps", 1e-5)), mlp="geglu", embedding_norm=True,
                first_attention_norm=False,
                sliding_window=int(config.get("local_attention", 128)) if every > 1 else 0, global_every=every,
                local_rope_base=_rope_base(config, "sliding_attention", 10000.0), head="mlm",
                head_bias=bool(config.get("decoder_bias", True)),
                head_dense_bias=bool(config.get("classifier_bias", False)))
  if family == "gpt2":
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
      raise CheckpointFormatError(f"This GPT-2 uses activation_function={config['activation_function']!r}; the "
                                  "importer reads gelu_new.")
    if config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights", True):
      raise CheckpointFormatError("This GPT-2 scales attention other than by 1/sqrt(head_dim).")
    width = config["n_embd"]
    return dict(family="gpt2", width=width, num_layers=config["n_layer"], num_heads=config["n_head"],
                mlp_dim=config.get("n_inner") or 4 * width, position="learned", max_positions=config["n_positions"],
                norm="layer", norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)), mlp="gelu_tanh", bias="all",
                head="tied")
  if family == "llada":
    refused = {key: config.get(key) for key, ok in (("block_type", "llama"), ("layer_norm_type", "rms"),
                                                     ("input_emb_norm", False), ("scale_logits", False),
                                                     ("include_bias", False), ("alibi", False))
               if config.get(key, ok) != ok}
    if refused or config.get("activation_type", "silu") not in ("silu", "swiglu"):
      raise CheckpointFormatError(f"This LLaDA config has {refused or config.get('activation_type')}; the importer "
                                  "reads LLaDA's LLaMA blocks (RMSNorm, SiLU gate, no biases but optional q/k/v ones, "
                                  "no input or logit scaling).")
    heads = config["n_heads"]
    return dict(family="llada", width=config["d_model"], num_layers=config["n_layers"], num_heads=heads,
                num_kv_heads=config.get("n_kv_heads") or heads, head_dim=config["d_model"] // heads,
                mlp_dim=config.get("mlp_hidden_size") or config["mlp_ratio"] * config["d_model"], position="rope",
                max_positions=config.get("max_sequence_length", 0), rope_base=float(config.get("rope_theta", 10000)),
                norm="rms", norm_epsilon=float(config.get("rms_norm_eps", 1e-5)), mlp="swiglu",
                bias="qkv" if config.get("include_qkv_bias") else "none",
                head="tied" if config.get("weight_tying") else "untied")
  # llama, qwen2
  if config.get("hidden_act", "silu") != "silu":
    raise CheckpointFormatError(f"This {family} uses hidden_act={config['hidden_act']!r}; the importer reads silu.")
  if config.get("mlp_bias") or (family == "llama" and config.get("attention_bias")):
    raise CheckpointFormatError(f"This {family} has MLP or attention biases, which the importer does not map.")
  if family == "qwen2" and config.get("use_sliding_window"):
    raise CheckpointFormatError("This Qwen2 uses sliding-window attention, which the importer does not map.")
  heads = config["num_attention_heads"]
  return dict(family=family, width=config["hidden_size"], num_layers=config["num_hidden_layers"], num_heads=heads,
              num_kv_heads=config.get("num_key_value_heads") or heads,
              head_dim=config.get("head_dim") or config["hidden_size"] // heads, mlp_dim=config["intermediate_size"],
              position="rope", max_positions=config.get("max_position_embeddings", 0), rope_base=_rope_base(config), norm="rms",
              norm_epsilon=float(config.get("rms_norm_eps", 1e-6)), mlp="swiglu",
              bias="qkv" if family == "qwen2" else "none",
              head="tied" if config.get("tie_word_embeddings", False) else "untied")


# -- the tensor tables ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter of ours (`path` into the model's nnx.State) and the checkpoint tensors it is made of.

  `layout`: "linear" (torch Linear weights [out, in]: concatenated on `out`, then transposed to our [in, out]);
  "conv1d" (GPT-2's [in, out], ours as they are); "vector" (biases, norms, tables: concatenated on axis 0).
  `vocab`: the first axis is the vocabulary (rows added for the tokenizer's new ids)."""
  path: tuple
  sources: tuple
  layout: str = "vector"
  vocab: bool = False


# The decoders' tensor names (module prefixes): LLaMA/Qwen2 (transformers) and LLaDA (its remote code's OLMo names;
# ff_proj is the SiLU gate, up_proj the value, as modeling_llada.py's LLaDALlamaBlock computes them).
DECODER_NAMES = {
    "llama": dict(embed="model.embed_tokens", layer="model.layers.{i}", attn_norm="input_layernorm",
                  q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", out="self_attn.o_proj",
                  mlp_norm="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj",
                  final="model.norm", head="lm_head"),
    "llada": dict(embed="model.transformer.wte", layer="model.transformer.blocks.{i}", attn_norm="attn_norm",
                  q="q_proj", k="k_proj", v="v_proj", out="attn_out", mlp_norm="ff_norm", gate="ff_proj",
                  up="up_proj", down="ff_out", final="model.transformer.ln_f", head="model.transformer.ff_out"),
}


def tensor_table(fields: dict) -> list[Entry]:
  """Every parameter of the "pretrained" denoiser built from `fields` (`model_fields`) and its checkpoint tensors."""
  family, layers_ = fields["family"], range(fields["num_layers"])
  table: list[Entry] = []
  add = lambda path, *sources, layout="vector", vocab=False: table.append(Entry(tuple(path), sources, layout, vocab))

  def norm(path, prefix, bias=True):
    add(path + ("scale",), f"{prefix}.weight")
    if bias:
      add(path + ("bias",), f"{prefix}.bias")

  def linear(path, *prefixes, bias=False, layout="linear"):
    add(path + ("kernel",), *(f"{p}.weight" for p in prefixes), layout=layout)
    if bias:
      add(path + ("bias",), *(f"{p}.bias" for p in prefixes))

  if family == "bert":
    e = "bert.embeddings"
    add(["embedding"], f"{e}.word_embeddings.weight", vocab=True)
    add(["positions"], f"{e}.position_embeddings.weight")
    add(["token_types"], f"{e}.token_type_embeddings.weight")
    norm(("embedding_norm",), f"{e}.LayerNorm")
    for i in layers_:
      p, b = f"bert.encoder.layer.{i}", ("blocks", i)
      linear(b + ("attn", "qkv"), *(f"{p}.attention.self.{n}" for n in ("query", "key", "value")), bias=True)
      linear(b + ("attn", "out"), f"{p}.attention.output.dense", bias=True)
      norm(b + ("attn_norm",), f"{p}.attention.output.LayerNorm")
      linear(b + ("mlp", "up"), f"{p}.intermediate.dense", bias=True)
      linear(b + ("mlp", "down"), f"{p}.output.dense", bias=True)
      norm(b + ("mlp_norm",), f"{p}.output.LayerNorm")
    linear(("head_dense",), "cls.predictions.transform.dense", bias=True)
    norm(("head_norm",), "cls.predictions.transform.LayerNorm")
    add(["head_bias"], "cls.predictions.bias", vocab=True)
  elif family == "modernbert":
    add(["embedding"], "model.embeddings.tok_embeddings.weight", vocab=True)
    norm(("embedding_norm",), "model.embeddings.norm", bias=False)
    for i in layers_:
      p, b = f"model.layers.{i}", ("blocks", i)
      if i:  # layer 0 has no attention norm (its parameter stays ones, unused: PretrainedBlock.attention_input)
        norm(b + ("attn_norm",), f"{p}.attn_norm", bias=False)
      linear(b + ("attn", "qkv"), f"{p}.attn.Wqkv")
      linear(b + ("attn", "out"), f"{p}.attn.Wo")
      norm(b + ("mlp_norm",), f"{p}.mlp_norm", bias=False)
      linear(b + ("mlp", "gate_up"), f"{p}.mlp.Wi")
      linear(b + ("mlp", "down"), f"{p}.mlp.Wo")
    norm(("final_norm",), "model.final_norm", bias=False)
    linear(("head_dense",), "head.dense", bias=fields.get("head_dense_bias", False))
    norm(("head_norm",), "head.norm", bias=False)
    if fields.get("head_bias", True):
      add(["head_bias"], "decoder.bias", vocab=True)
  elif family == "gpt2":
    add(["embedding"], "transformer.wte.weight", vocab=True)
    add(["positions"], "transformer.wpe.weight")
    for i in layers_:
      p, b = f"transformer.h.{i}", ("blocks", i)
      norm(b + ("attn_norm",), f"{p}.ln_1")
      linear(b + ("attn", "qkv"), f"{p}.attn.c_attn", bias=True, layout="conv1d")
      linear(b + ("attn", "out"), f"{p}.attn.c_proj", bias=True, layout="conv1d")
      norm(b + ("mlp_norm",), f"{p}.ln_2")
      linear(b + ("mlp", "up"), f"{p}.mlp.c_fc", bias=True, layout="conv1d")
      linear(b + ("mlp", "down"), f"{p}.mlp.c_proj", bias=True, layout="conv1d")
    norm(("final_norm",), "transformer.ln_f")
  else:  # the LLaMA function under LLaMA's (and Qwen2's) names or LLaDA's OLMo-style ones
    names = DECODER_NAMES["llada" if family == "llada" else "llama"]
    add(["embedding"], f"{names['embed']}.weight", vocab=True)
    for i in layers_:
      p, b = names["layer"].format(i=i), ("blocks", i)
      name = lambda key: f"{p}.{names[key]}"
      norm(b + ("attn_norm",), name("attn_norm"), bias=False)
      linear(b + ("attn", "qkv"), name("q"), name("k"), name("v"), bias=fields.get("bias") == "qkv")
      linear(b + ("attn", "out"), name("out"))
      norm(b + ("mlp_norm",), name("mlp_norm"), bias=False)
      linear(b + ("mlp", "gate_up"), name("gate"), name("up"))
      linear(b + ("mlp", "down"), name("down"))
    norm(("final_norm",), names["final"], bias=False)
    if fields.get("head") == "untied":
      add(["lm_head"], f"{names['head']}.weight", vocab=True)
  return table


# -- reading -------------------------------------------------------------------------------------------------------
class TensorReader:
  """Reads named tensors of a checkpoint folder one at a time: model.safetensors, a sharded checkpoint's
  model.safetensors.index.json, or (torch installed) pytorch_model.bin."""

  def __init__(self, folder, flag: str = "--init_from"):
    self.folder, self.flag = pathlib.Path(folder), flag
    index = self.folder / "model.safetensors.index.json"
    single = self.folder / "model.safetensors"
    self._torch_state = None
    if index.is_file():
      weight_map = json.loads(index.read_text())["weight_map"]
      self.files = {name: self.folder / file for name, file in weight_map.items()}
    elif single.is_file():
      self.files = {name: single for name in self._safetensors_names(single)}
    elif (self.folder / "pytorch_model.bin").is_file():
      try:
        import torch
      except ImportError as e:
        raise CheckpointFormatError(
            f"{flag}=hf:{folder}: the weights are a torch pytorch_model.bin, which needs torch to read. Convert them "
            "to safetensors once (transformers: model.save_pretrained(DIR, safe_serialization=True)) or install "
            "torch.") from e
      state = torch.load(self.folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
      self._torch_state = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}
      self.files = {name: None for name in self._torch_state}
    else:
      raise CheckpointFormatError(f"{flag}=hf:{folder}: no model.safetensors, model.safetensors.index.json or "
                                  "pytorch_model.bin in the folder.")
    self._open = {}

  @staticmethod
  def _safetensors_names(file):
    from safetensors import safe_open
    with safe_open(str(file), framework="numpy") as f:
      return list(f.keys())

  def names(self) -> set:
    return set(self.files)

  def get(self, name: str) -> np.ndarray:
    if name not in self.files:
      raise CheckpointFormatError(f"{self.flag}=hf:{self.folder}: the checkpoint has no tensor {name!r}, which its "
                                  "config.json's family needs (a different architecture saved under this model_type?).")
    if self._torch_state is not None:
      return self._torch_state[name]
    file = self.files[name]
    if file not in self._open:
      from safetensors import safe_open
      self._open[file] = safe_open(str(file), framework="numpy")
    return self._open[file].get_tensor(name)


def _assemble(entry: Entry, reader: TensorReader, shape, dtype) -> np.ndarray:
  """Our parameter of `shape` from its checkpoint tensors (Entry's layout), vocabulary rows added by their mean or
  dropped. Concatenation and transposition happen in the checkpoint's dtype (a bfloat16/float16 file: half the bytes)
  and the one conversion writes the contiguous result: the host holds the tensors, their concatenation and the result."""
  parts = [reader.get(name) for name in entry.sources]
  axis = 1 if entry.layout == "conv1d" else 0
  value = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
  if entry.layout == "linear":
    value = value.T
  if entry.vocab and value.shape[0] > shape[0]:  # rows past the tokenizer's ids: no token ever reads them
    value = value[:shape[0]]
  if entry.vocab and value.shape[0] < shape[0] and value.shape[1:] == tuple(shape[1:]):
    grown = np.empty(shape, dtype)
    grown[:value.shape[0]] = value
    grown[value.shape[0]:] = value.mean(axis=0, dtype=np.float32) if value.ndim == 2 else 0.0
    value = grown
  if value.shape != tuple(shape):
    raise CheckpointFormatError(f"{reader.flag}=hf:{reader.folder}: tensors {list(entry.sources)} give shape "
                                f"{value.shape} for parameter {'/'.join(map(str, entry.path))}, which is {tuple(shape)}"
                                " in the model its config.json describes.")
  return np.ascontiguousarray(value, dtype=dtype)


def _state_get(state, path):
  node = state
  for key in path:
    node = node[key]
  return node


def load_params(folder, abstract_params, place: Callable | None = None, flag: str = "--init_from",
                initialize: Callable | None = None):
  """The checkpoint's tensors as the model's parameter state: `abstract_params` is the nnx.State of nnx.Param
  (arrays or ShapeDtypeStructs) of the "pretrained" denoiser built from `model_fields`; each parameter is assembled
  on the host and given to `place(variable, array)` (default jax.device_put: the default device; the trainer passes
  its mesh placement). A parameter the checkpoint does not have takes `initialize(path, variable)` (LoRA's adapters:
  training/hf_checkpoints.lora_initializer) or, for ModernBERT's unused first attention norm, ones; any other is an
  error naming it."""
  folder = pathlib.Path(strip_prefix(str(folder))).expanduser()
  config = read_config(folder, flag)
  fields = model_fields(config)
  reader = TensorReader(folder, flag)
  flat = dict(nnx.to_flat_state(abstract_params))
  put = lambda variable, value: variable.replace(place(variable, value) if place else jax.device_put(value))
  mapped = set()
  for entry in tensor_table(fields):
    if entry.path not in flat:
      raise CheckpointFormatError(f"{flag}=hf:{folder}: the model has no parameter {'/'.join(map(str, entry.path))} "
                                  "(its config.model does not describe this checkpoint).")
    variable = flat[entry.path]
    flat[entry.path] = put(variable, _assemble(entry, reader, variable.shape, variable.dtype))
    mapped.add(entry.path)
  for path, variable in flat.items():
    if path in mapped:
      continue
    value = initialize(path, variable) if initialize else None
    if value is None and fields["family"] == "modernbert" and path[:2] == ("blocks", 0) and path[2] == "attn_norm":
      value = np.ones(variable.shape, variable.dtype)
    if value is None:
      raise CheckpointFormatError(f"{flag}=hf:{folder}: parameter {'/'.join(map(str, path))} of the model has no "
                                  "tensor in the checkpoint (a config.model field the checkpoint does not have, e.g. "
                                  "model.time_conditioning or model.self_conditioning?).")
    flat[path] = put(variable, value)
  return nnx.from_flat_state(flat)


# -- writing -------------------------------------------------------------------------------------------------------
def hf_config(fields: dict, vocab_size: int, special, causal: bool = False) -> dict:
  """A config.json of the family's transformers class for the denoiser of `fields` with `vocab_size` ids."""
  family, f = fields["family"], fields
  common = {"architectures": [ARCHITECTURES[family]], "vocab_size": vocab_size, "torch_dtype": "float32",
            "pad_token_id": special.pad, "bos_token_id": special.bos, "eos_token_id": special.eos}
  if family == "bert":
    return {**common, "model_type": "bert", "hidden_size": f["width"], "num_hidden_layers": f["num_layers"],
            "num_attention_heads": f["num_heads"], "intermediate_size": f["mlp_dim"], "hidden_act": "gelu",
            "max_position_embeddings": f["max_positions"], "type_vocab_size": f["token_types"],
            "layer_norm_eps": f["norm_epsilon"], "position_embedding_type": "absolute", "tie_word_embeddings": True}
  if family == "modernbert":
    every = f["global_every"]
    return {**common, "model_type": "modernbert", "hidden_size": f["width"], "num_hidden_layers": f["num_layers"],
            "num_attention_heads": f["num_heads"], "intermediate_size": f["mlp_dim"], "hidden_activation": "gelu",
            "classifier_activation": "gelu", "max_position_embeddings": f["max_positions"], "norm_eps": f["norm_epsilon"],
            "norm_bias": False, "attention_bias": False, "mlp_bias": False, "global_attn_every_n_layers": every,
            "local_attention": f["sliding_window"] or 128, "global_rope_theta": f["rope_base"],
            "local_rope_theta": f["local_rope_base"], "decoder_bias": f["head_bias"],
            "classifier_bias": f["head_dense_bias"], "mask_token_id": special.mask, "tie_word_embeddings": True,
            "layer_types": ["full_attention" if i % every == 0 else "sliding_attention"
                            for i in range(f["num_layers"])]}
  if family == "gpt2":
    return {**common, "model_type": "gpt2", "n_embd": f["width"], "n_layer": f["num_layers"], "n_head": f["num_heads"],
            "n_inner": f["mlp_dim"], "n_positions": f["max_positions"], "n_ctx": f["max_positions"],
            "activation_function": "gelu_new", "layer_norm_epsilon": f["norm_epsilon"], "tie_word_embeddings": True}
  if family == "llada":
    return {**common, "model_type": "llada", "d_model": f["width"], "n_heads": f["num_heads"],
            "n_kv_heads": f["num_kv_heads"] or f["num_heads"], "n_layers": f["num_layers"],
            "mlp_hidden_size": f["mlp_dim"], "embedding_size": vocab_size, "max_sequence_length": f["max_positions"],
            "rope": True, "rope_theta": f["rope_base"], "rms_norm_eps": f["norm_epsilon"], "layer_norm_type": "rms",
            "block_type": "llama", "activation_type": "silu", "weight_tying": f["head"] == "tied",
            "include_bias": False, "include_qkv_bias": f["bias"] == "qkv", "input_emb_norm": False,
            "scale_logits": False, "alibi": False, "mask_token_id": special.mask}
  return {**common, "model_type": family, "hidden_size": f["width"], "num_hidden_layers": f["num_layers"],
          "num_attention_heads": f["num_heads"], "num_key_value_heads": f["num_kv_heads"] or f["num_heads"],
          "head_dim": f["head_dim"] or f["width"] // f["num_heads"], "intermediate_size": f["mlp_dim"],
          "hidden_act": "silu", "max_position_embeddings": f["max_positions"], "rms_norm_eps": f["norm_epsilon"],
          "rope_theta": f["rope_base"], "tie_word_embeddings": f["head"] == "tied", "attention_bias": False,
          "mlp_bias": False, "use_sliding_window": False}


def _split(entry: Entry, value: np.ndarray, sizes: list[int]) -> dict:
  """The checkpoint tensors of one of our parameters (the inverse of `_assemble`, vocabulary rows kept)."""
  if entry.layout == "linear":
    value = value.T
  axis = 1 if entry.layout == "conv1d" else 0
  bounds = np.cumsum(sizes)[:-1]
  return dict(zip(entry.sources, np.split(value, bounds, axis=axis)))


def source_sizes(entry: Entry, fields: dict, value_shape) -> list[int]:
  """The sizes of `entry`'s checkpoint tensors along their concatenation axis."""
  if len(entry.sources) == 1:
    return [value_shape[1] if entry.layout in ("linear", "conv1d") else value_shape[0]]
  head_dim = fields.get("head_dim") or fields["width"] // fields["num_heads"]
  if len(entry.sources) == 3:  # q, k, v
    kv = (fields.get("num_kv_heads") or fields["num_heads"]) * head_dim
    return [fields["num_heads"] * head_dim, kv, kv]
  return [fields["mlp_dim"], fields["mlp_dim"]]  # gate, up


def export_tensors(params, fields: dict) -> dict:
  """{checkpoint tensor name: float32 array} of the parameter state `params` (the inverse of `load_params`)."""
  flat = {path: np.asarray(jax.device_get(variable[...]), np.float32)
          for path, variable in nnx.to_flat_state(params)}
  tensors = {}
  for entry in tensor_table(fields):
    value = flat[entry.path]
    tensors.update({name: np.ascontiguousarray(part)
                    for name, part in _split(entry, value, source_sizes(entry, fields, value.shape)).items()})
  return tensors

