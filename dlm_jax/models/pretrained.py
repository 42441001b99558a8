"""The transformer layouts of published checkpoints (BERT, ModernBERT, GPT-2, LLaMA, Qwen2/Dream), as one denoiser.

The baseline transformer (models/transformer.py) is one point of a small space; a published checkpoint is another:

    h_0 = E[x] (+ P[:L] learned positions) (+ T[0], BERT's token type 0) -> Norm_emb (BERT, ModernBERT)
    pre-norm  (GPT-2, LLaMA, Qwen2, ModernBERT):  h <- h + Attn(Norm(h));  h <- h + MLP(Norm(h));  final Norm
    post-norm (BERT):                             h <- Norm(h + Attn(h));  h <- Norm(h + MLP(h))
    logits = head(h):  tied  z E^T                (GPT-2, BERT's decoder, ModernBERT's decoder)
                       untied z W_lm^T             (LLaMA, Qwen2)
                       MLM  Norm(act(z W_t + b_t)) E^T + b   (BERT's and ModernBERT's prediction head)

Norm is RMSNorm (LLaMA, Qwen2), LayerNorm with bias (BERT, GPT-2) or without (ModernBERT); the MLP is SwiGLU (LLaMA,
Qwen2), GeGLU (ModernBERT), or W_2 GELU(W_1 x + b_1) + b_2 with exact GELU (BERT) or its tanh form (GPT-2's gelu_new);
attention may be grouped-query (LLaMA 2/3, Qwen2), biased on q/k/v (Qwen2) or on every projection (BERT, GPT-2), with
RoPE (LLaMA, Qwen2, ModernBERT) or learned positions (BERT, GPT-2). ModernBERT's first layer reads the normalized
embeddings without its own attention norm (`first_attention_norm=False`), and its layers alternate between global
attention (every `global_every`-th layer, from layer 0, RoPE base `rope_base`) and a local window of `sliding_window`
tokens (|i - j| <= sliding_window / 2, RoPE base `local_rope_base`).

`models/hf.py` maps a checkpoint's config.json onto these fields and its tensors onto these parameters (and back). The
parameter names follow the baseline's where the function is the same (`embedding`, `positions`, `blocks[i].attn.qkv`,
`.attn.out`, `.attn_norm`, `.mlp_norm`, `.mlp.gate_up`/`.mlp.down`, `final_norm`), so the sampler's KV caches,
self-conditioning, the layer stack, remat and the logical-axis sharding rules all apply unchanged. Bidirectional
unless `causal` (GPT-2 as the judge, an AR arm); with time conditioning off (as BERT fine-tuned for diffusion and
LLaDA have it) the number of masks tells the denoiser t.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import layers, partitioning
from dlm_jax.models.base import DenoiserOutput
from dlm_jax.models.partitioning import EMBED, MLP, NORM, VOCAB, logical
from dlm_jax.models.transformer import ATTENTION_DROPOUT_STREAM, Transformer, TransformerConfig, make_blocks

NORMS = ("rms", "layer", "layer_no_bias")
MLPS = ("swiglu", "geglu", "gelu", "gelu_tanh")
BIASES = ("none", "qkv", "all")
HEADS = ("tied", "untied", "mlm")
LORA_TARGETS = ("qkv", "out", "mlp")


@dataclasses.dataclass(frozen=True)
class PretrainedConfig(TransformerConfig):
  """config.model of name "pretrained": the TransformerConfig fields plus the layout switches (module docstring).
  `models/hf.py` fills them from a checkpoint's config.json; the defaults are the baseline transformer's layout."""
  family: str = ""  # the checkpoint family it was imported from (models/hf.FAMILIES; export writes that layout)
  num_kv_heads: int = 0  # key/value heads of grouped-query attention (0: num_heads)
  head_dim: int = 0  # per-head width (0: width // num_heads)
  norm: str = "rms"  # "rms", "layer" (LayerNorm with bias) or "layer_no_bias"
  norm_epsilon: float = 1e-6
  norm_position: str = "pre"  # "pre" (with a final norm) or "post" (BERT: each residual add, then the norm)
  mlp: str = "swiglu"  # "swiglu", "geglu", "gelu" (exact) or "gelu_tanh" (GPT-2's gelu_new)
  bias: str = "none"  # projection biases: "none", "qkv" (Qwen2) or "all" (attention and MLP: BERT, GPT-2)
  embedding_norm: bool = False  # a norm over the summed input embeddings (BERT, ModernBERT)
  token_types: int = 0  # rows of BERT's token-type table; row 0 is added at every position (0: none)
  max_positions: int = 0  # the checkpoint's context: rows of a learned position table (0: max_len)
  first_attention_norm: bool = True  # False: layer 0 attends to its input unnormalized (ModernBERT)
  sliding_window: int = 0  # local attention window of the non-global layers (0: every layer global)
  global_every: int = 1  # layer i attends globally when i % global_every == 0 (ModernBERT: 3)
  local_rope_base: float = 10000.0  # RoPE base of the local layers
  head: str = "tied"  # "tied", "untied" (its own [V, D] table) or "mlm" (dense, GELU, norm, then the tied table)
  head_bias: bool = False  # a bias on the logits (BERT's and ModernBERT's decoder)
  head_dense_bias: bool = True  # the MLM head's dense layer's bias (BERT: yes; ModernBERT: classifier_bias)
  # LoRA (Hu et al. 2022; set by train.lora_rank / train.lora_targets, training/hf_checkpoints.configure):
  # W x + B A x on the projections named in lora_targets ("qkv", "out", "mlp": all of the MLP's),
  # A [D_in, r] drawn as nnx.LoRA draws it, B [r, D_out] zeros (so the adapted model starts as the base model); no
  # alpha / r scale (the learning rate sets the adapters' step). With lora_rank > 0 the optimizer updates only the
  # adapters (models.trainable_filter) and `training/hf_checkpoints.merge_lora` folds them into W for export.
  lora_rank: int = 0
  lora_targets: str = "qkv,out"

  def __post_init__(self):
    super().__post_init__()
    for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("bias", BIASES), ("head", HEADS),
                          ("norm_position", ("pre", "post"))):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
    if self.fused_add_norm:
      raise ConfigError("model.fused_add_norm is the baseline transformer's RMSNorm kernel; model 'pretrained' "
                        "does not take it.")
    unknown = set(self.lora_target_names) - set(LORA_TARGETS)
    if unknown or self.lora_rank < 0:
      raise ConfigError(f"model.lora_targets={self.lora_targets!r} / lora_rank={self.lora_rank}: targets are a comma "
                        f"list of {LORA_TARGETS} and the rank >= 0.")
    if self.position == "learned" and self.max_positions and self.max_len > self.max_positions:
      raise ConfigError(f"data.seq_len={self.max_len} exceeds the checkpoint's {self.max_positions} learned "
                        f"positions: set data.seq_len <= {self.max_positions}.")

  @property
  def lora_target_names(self) -> tuple:
    return tuple(name.strip() for name in self.lora_targets.split(",") if name.strip())

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def per_head(self) -> int:
    return self.head_dim or self.width // self.num_heads

  def flops_per_token(self, seq_len: int) -> float:
    """6 N_matmul + 12 n_layers L H K (the baseline's convention, TransformerConfig.flops_per_token), with the
    projections' real sizes: q/k/v/out D (H + 2 H_kv + H) K, the MLP 3 D F (gated) or 2 D F, the head V D (+ D^2)."""
    d, hk = self.width, self.num_heads * self.per_head
    attention = d * (2 * hk + 2 * self.kv_heads * self.per_head)
    mlp = (3 if self.mlp in ("swiglu", "geglu") else 2) * d * self.mlp_dim
    head = self.vocab_size * d + (d * d if self.head == "mlm" else 0)
    return 6.0 * (self.num_layers * (attention + mlp) + head) + 12.0 * self.num_layers * seq_len * hk


def make_norm(cfg: PretrainedConfig, rngs: nnx.Rngs):
  """The config's norm over the last axis (parameters named ("norm",), replicated by the default rules)."""
  dtype = layers.compute_dtype(cfg.dtype)
  if cfg.norm == "rms":
    return layers.rms_norm(cfg.width, dtype=dtype, rngs=rngs, epsilon=cfg.norm_epsilon)
  return nnx.LayerNorm(cfg.width, epsilon=cfg.norm_epsilon, use_bias=cfg.norm == "layer", use_fast_variance=False,
                       dtype=dtype, rngs=rngs, scale_metadata=logical(NORM), bias_metadata=logical(NORM))


def gelu(kind: str):
  """Exact GELU, or its tanh approximation (GPT-2's gelu_new) for "gelu_tanh"."""
  return functools.partial(jax.nn.gelu, approximate=kind == "gelu_tanh")


class GeluMLP(nnx.Module):
  """FFN(x) = W_down GELU(W_up x + b_up) + b_down (BERT: exact GELU; GPT-2: its tanh form)."""

  def __init__(self, width: int, hidden: int, *, kind: str, use_bias: bool, dtype, rngs: nnx.Rngs):
    self.activation = gelu(kind)
    self.up = nnx.Linear(width, hidden, use_bias=use_bias, dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                         kernel_metadata=logical(EMBED, MLP), bias_metadata=logical(MLP))
    self.down = nnx.Linear(hidden, width, use_bias=use_bias, dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                           kernel_metadata=logical(MLP, EMBED), bias_metadata=logical(EMBED))

  def __call__(self, x):
    return self.down(self.activation(self.up(x)))


def make_mlp(cfg: PretrainedConfig, rngs: nnx.Rngs):
  dtype = layers.compute_dtype(cfg.dtype)
  if cfg.mlp in ("swiglu", "geglu"):
    activation = jax.nn.silu if cfg.mlp == "swiglu" else gelu("gelu")
    return layers.SwiGLU(cfg.width, cfg.mlp_dim, dtype=dtype, rngs=rngs, activation=activation)
  return GeluMLP(cfg.width, cfg.mlp_dim, kind=cfg.mlp, use_bias=cfg.bias == "all", dtype=dtype, rngs=rngs)


def with_lora(linear: nnx.Linear, rank: int, rngs: nnx.Rngs) -> nnx.LoRALinear:
  """`linear` as an nnx.LoRALinear of rank `rank` that keeps its kernel and bias Variables (same parameter paths,
  plus `lora/lora_a` [D_in, r] and `lora/lora_b` [r, D_out], named by the kernel's logical axes)."""
  in_axis, out_axis = linear.kernel.get_metadata().get("out_sharding") or (None, None)
  adapted = nnx.LoRALinear(linear.in_features, linear.out_features, lora_rank=rank, use_bias=linear.use_bias,
                           dtype=linear.dtype, lora_dtype=linear.dtype, rngs=rngs,
                           a_metadata=logical(in_axis, None), b_metadata=logical(None, out_axis))
  adapted.kernel = linear.kernel
  adapted.bias = linear.bias
  return adapted


def local_window_mask(length: int, window: int):
  """[L, L] True where |i - j| <= window // 2 (ModernBERT's local attention)."""
  distance_LxL = jnp.abs(jnp.arange(length)[:, None] - jnp.arange(length)[None, :])
  return distance_LxL <= window // 2


class PretrainedBlock(nnx.Module):
  """One layer of the module docstring: attention and MLP residuals, pre- or post-norm. `layer_index` (a traced
  int32 under the layer scan) selects ModernBERT's per-layer choices (first-layer norm, global or local attention)."""

  def __init__(self, cfg: PretrainedConfig, *, rngs: nnx.Rngs):
    dtype = layers.compute_dtype(cfg.dtype)
    self.cfg = cfg
    self.attn_norm = make_norm(cfg, rngs)
    self.attn = layers.SelfAttention(cfg.width, cfg.num_heads, causal=cfg.causal,
                                     implementation=layers.attention_implementation(cfg.attention, dtype),
                                     dtype=dtype, rngs=rngs, dropout=cfg.attention_dropout,
                                     num_kv_heads=cfg.kv_heads, head_dim=cfg.per_head,
                                     qkv_bias=cfg.bias in ("qkv", "all"), out_bias=cfg.bias == "all")
    self.mlp_norm = make_norm(cfg, rngs)
    self.mlp = make_mlp(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.dropout)
    if cfg.lora_rank:
      sites = {"qkv": [(self.attn, "qkv")], "out": [(self.attn, "out")],
               "mlp": [(self.mlp, name) for name in ("gate_up", "up", "down") if hasattr(self.mlp, name)]}
      for target in cfg.lora_target_names:
        for owner, name in sites[target]:
          setattr(owner, name, with_lora(getattr(owner, name), cfg.lora_rank, rngs))

  def layer_attention(self, rope, length: int, layer_index):
    """(the RoPE tables, the [L, L] attention mask or None) of layer `layer_index`: with a sliding window, local
    layers take the local tables and the window mask, global ones the global tables and every position."""
    if not self.cfg.sliding_window:
      return rope, None
    (global_rope, local_rope), is_global = rope, layer_index % self.cfg.global_every == 0
    tables = tuple(jnp.where(is_global, g, l) for g, l in zip(global_rope, local_rope))
    mask_LxL = local_window_mask(length, self.cfg.sliding_window) | is_global
    return tables, mask_LxL

  def attention_input(self, h_BxLxD, layer_index):
    if self.cfg.norm_position == "post":
      return h_BxLxD
    if self.cfg.first_attention_norm:
      return self.attn_norm(h_BxLxD)
    return jnp.where(layer_index == 0, h_BxLxD, self.attn_norm(h_BxLxD))

  def residuals(self, h_BxLxD, attn_BxLxD, keys, deterministic: bool):
    """The attention residual (given its output), then the MLP's, pre- or post-norm."""
    attn_key, mlp_key = keys
    h_BxLxD = h_BxLxD + self.dropout(attn_BxLxD, deterministic=deterministic, rngs=attn_key)
    if self.cfg.norm_position == "post":
      h_BxLxD = self.attn_norm(h_BxLxD)
      return self.mlp_norm(h_BxLxD + self.dropout(self.mlp(h_BxLxD), deterministic=deterministic, rngs=mlp_key))
    return h_BxLxD + self.dropout(self.mlp(self.mlp_norm(h_BxLxD)), deterministic=deterministic, rngs=mlp_key)

  def __call__(self, h_BxLxD, rope, dropout_key, deterministic: bool, layer_index, return_kv: bool = False):
    keys = jax.random.split(dropout_key)
    probs_key = None if deterministic else jax.random.fold_in(dropout_key, ATTENTION_DROPOUT_STREAM)
    rope, mask_LxL = self.layer_attention(rope, h_BxLxD.shape[1], layer_index)
    attn = self.attn(self.attention_input(h_BxLxD, layer_index), rope, probs_key, return_kv=return_kv,
                     mask_LxL=mask_LxL)
    attn_BxLxD, kv = attn if return_kv else (attn, None)
    h_BxLxD = self.residuals(h_BxLxD, attn_BxLxD, keys, deterministic)
    return (h_BxLxD, kv) if return_kv else h_BxLxD

  def cached_step(self, h_BxQxD, rope, positions_BxQ, kv_cache, layer_index):
    """The block on the rows at `positions_BxQ` only, every other position's keys and values from the cache
    (Transformer.kv_step). Deterministic."""
    rope, mask_LxL = self.layer_attention(rope, kv_cache[0].shape[1], layer_index)
    attn_BxQxD, kv_cache = self.attn.attend_with_cache(self.attention_input(h_BxQxD, layer_index), rope,
                                                       positions_BxQ, *kv_cache, mask_LxL=mask_LxL)
    return self.residuals(h_BxQxD, attn_BxQxD, (None, None), True), kv_cache


class PretrainedTransformer(Transformer):
  """The denoiser of the module docstring: `model(tokens_BxL, t_B, ...)` -> DenoiserOutput, with the baseline's
  sampler interface (KV caches for block decoding included)."""

  def __init__(self, cfg: PretrainedConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=cfg.position == "learned",
                        position_rows=cfg.max_positions or None)
    self.token_types = (nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.token_types, cfg.width), jnp.float32),
                                  **logical(None, EMBED)) if cfg.token_types else None)
    self.embedding_norm = make_norm(cfg, rngs) if cfg.embedding_norm else None
    self.blocks = make_blocks(cfg, rngs, PretrainedBlock)
    self.final_norm = make_norm(cfg, rngs) if cfg.norm_position == "pre" else None
    self.lm_head = (nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.vocab_size, cfg.width), jnp.float32),
                              **logical(VOCAB, EMBED)) if cfg.head == "untied" else None)
    if cfg.head == "mlm":
      self.head_dense = nnx.Linear(cfg.width, cfg.width, use_bias=cfg.head_dense_bias, dtype=self.dtype,
                                   kernel_init=layers.DEFAULT_INIT, rngs=rngs, kernel_metadata=logical(EMBED, MLP),
                                   bias_metadata=logical(MLP))
      self.head_norm = make_norm(cfg, rngs)
    else:
      self.head_dense = self.head_norm = None
    self.head_bias = (nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), **logical(VOCAB)) if cfg.head_bias
                      else None)

  def finish_embedding(self, h_BxLxD):
    """+ T[0] (BERT's token type of every position), then the embedding norm (BERT, ModernBERT)."""
    if self.token_types is not None:
      h_BxLxD = h_BxLxD + self.token_types[0].astype(self.dtype)[None, None]
    return self.embedding_norm(h_BxLxD) if self.embedding_norm is not None else h_BxLxD

  def _rope(self, length: int):
    cfg = self.cfg
    if cfg.position == "learned":
      return None
    tables = layers.rope_tables(length, cfg.per_head, cfg.rope_base)
    return (tables, layers.rope_tables(length, cfg.per_head, cfg.local_rope_base)) if cfg.sliding_window else tables

  def _run_blocks(self, h_BxLxD, rope, dropout_key, deterministic: bool):
    apply = lambda block, h, index, key: (block(h, rope, key, deterministic, index), None)
    return layers.run_stack(self.blocks, h_BxLxD, apply, dropout_key, self.cfg.remat, self.cfg.unroll_layers)[0]

  def head_table(self):
    """The [V, D] table the logits are read from: the untied head's, else the embedding (tied)."""
    return (self.lm_head if self.lm_head is not None else self.embedding)[...].astype(self.dtype)

  def head_input(self, h_BxLxD):
    """z of the module docstring: the final norm (pre-norm), then the MLM head's dense/GELU/norm."""
    if self.final_norm is not None:
      h_BxLxD = self.final_norm(h_BxLxD)
    if self.head_dense is not None:
      h_BxLxD = self.head_norm(gelu(self.cfg.mlp)(self.head_dense(h_BxLxD)))
    return h_BxLxD

  def logit_bias(self, logits_BxLxV):
    """logits + the head's bias (BERT's and ModernBERT's decoder), or the logits as they are."""
    if self.head_bias is None:
      return logits_BxLxV
    return logits_BxLxV + self.head_bias[...].astype(self.dtype)[None, None]

  def head(self, h_BxLxD):
    return self.logit_bias(self.head_input(h_BxLxD) @ self.head_table().T)

  def output(self, h_BxLxD, aux_losses=None, aux_metrics=None) -> DenoiserOutput:
    """The logits, with the head's input and table for chunked scoring when the logits are their product (no bias)."""
    hidden_BxLxD = self.head_input(partitioning.constrain(h_BxLxD, (partitioning.BATCH, partitioning.LENGTH,
                                                                     partitioning.ACT_EMBED)))
    table_VxD = self.head_table()
    logits_BxLxV = hidden_BxLxD @ table_VxD.T
    if self.head_bias is not None:
      return DenoiserOutput(self.logit_bias(logits_BxLxV), aux_losses or {}, aux_metrics or {})
    return DenoiserOutput(logits_BxLxV, aux_losses or {}, aux_metrics or {}, hidden_BxLxD, table_VxD)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None,
               self_cond_BxLxV=None, embeddings_BxLxD=None) -> DenoiserOutput:
    h_BxLxD = self.embed(tokens_BxL, t_B, deterministic, dropout_key, self_cond_BxLxV,
                         embeddings_BxLxD=embeddings_BxLxD)
    return self.output(self._run_blocks(h_BxLxD, self._rope(tokens_BxL.shape[1]), dropout_key, deterministic))

  def kv_prefill(self, tokens_BxL, t_B, positions_BxQ):
    """Transformer.kv_prefill, each layer told its index."""
    h_BxLxD = self.embed(tokens_BxL, t_B)
    rope = self._rope(tokens_BxL.shape[1])
    apply = lambda block, h, index, key: block(h, rope, key, True, index, return_kv=True)
    h_BxLxD, kv_cache = layers.run_stack(self.blocks, h_BxLxD, apply, None, "none", self.cfg.unroll_layers)
    return self.head(jnp.take_along_axis(h_BxLxD, positions_BxQ[..., None], axis=1)), kv_cache

  def kv_step(self, tokens_BxL, t_B, positions_BxQ, kv_cache):
    """Transformer.kv_step, each layer told its index."""
    tokens_BxQ = jnp.take_along_axis(tokens_BxL, positions_BxQ, axis=1)
    h_BxQxD = self.embed(tokens_BxQ, t_B, positions_BxL=positions_BxQ)
    rope = self._rope(tokens_BxL.shape[1])
    apply = lambda block, h, index, _: block.cached_step(h, rope, positions_BxQ,
                                                          jax.tree.map(lambda c: c[index], kv_cache), index)
    h_BxQxD, kv_cache = layers.run_stack(self.blocks, h_BxQxD, apply, None, "none", self.cfg.unroll_layers)
    return self.head(h_BxQxD), kv_cache


REGISTERED = (PretrainedTransformer, PretrainedConfig)
