"""What every denoiser shares: its config fields, its output type, and its skeleton (embedding in, tied head out).

    h_0    = E[x] (+ P[:L] with learned positions) (+ R[row] + C[column] + B[box] with grid positions)
             (+ TimeMLP(t) with time conditioning)
    ...      the denoiser's own body (transformer blocks, EcoHybrid blocks, HRM modules)
    logits = RMSNorm(h) E^T                                                          (tied head)

Every denoiser is called as `model(tokens_BxL, t_B, deterministic=..., dropout_key=...)` and returns a
`DenoiserOutput`. The sampler drives every denoiser through `init_sample_carry(batch)` and `sample_step(x, t, carry)`;
the default keeps no state (carry None, no priority), and the HRM denoiser overrides both to carry its memory cells
across reverse steps and to report the H-module's strategic priority.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.diffusion import gaussian, losses
from dlm_jax.models import layers, partitioning
from dlm_jax.models.partitioning import EMBED, LENGTH, VOCAB, logical
from dlm_jax import special_tokens
from dlm_jax.errors import ConfigError

RESIDUAL_AXES = (partitioning.BATCH, partitioning.LENGTH, partitioning.ACT_EMBED)  # the residual stream's names


# Dropout streams derived from a call's dropout_key with fold_in, so that switching one dropout on leaves the masks of
# the others (drawn from split(dropout_key, ...)) as they were.
EMBEDDING_DROPOUT_STREAM = 1_000_001


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """The fields every denoiser takes (config.model, less `name`); each model's config adds its own.

  `vocab_size` and `special` come from the tokenizer (`tokenizer.vocab_size`, `tokenizer.special`) and `max_len` from
  data.seq_len; every other field is a config.model field whose default is declared here and only here
  (configs/default.model_config builds the ConfigDict from these fields)."""
  vocab_size: int
  max_len: int
  # The tokenizer's special ids: the mask id marks self-conditioning's and HRM's masked positions; retrieval keys skip
  # the special ids.
  special: special_tokens.SpecialIds = special_tokens.DEFAULT
  num_heads: int = 6  # attention heads (width must be divisible by it)
  width: int = 384  # the model width D: embeddings and the residual stream
  mlp_dim: int = 1024  # SwiGLU hidden width
  dropout: float = 0.0  # on each residual branch's output (attention/mixing and MLP), as nanoGPT's resid_dropout
  attention_dropout: float = 0.0  # on the self-attention probabilities (nanoGPT's attn_dropout; transformer blocks)
  embedding_dropout: float = 0.0  # on the input states h_0 (nanoGPT's drop after the token + position embedding)
  time_conditioning: bool = False  # add TimeMLP(t) to every position's input (MDLM's DiT conditioning)
  causal: bool = False  # True (with diffusion.objective="autoregressive") is the AR control arm (transformer only)
  remat: str = "none"  # "none", "full" or "dots"
  # How the stacked layers run: "scan" (one lax.scan: compile time flat in depth), "unroll" (the scan fully unrolled:
  # no per-iteration slicing of the stacked parameters and stacking of saved activations, which on an H100 cost
  # base_110m's step 11 ms of memcpy/concatenate kernels and 10.7 GiB; unrolled it ran at 41.5% MFU instead of 30.9%)
  # or "auto": unroll on GPU/TPU, scan on CPU (where compile time dominates: 24 layers compile in 15 s unrolled, 4.5 s
  # scanned).
  layer_loop: str = "auto"
  dtype: str = "auto"  # activations: "auto" = bfloat16 on GPU/TPU, float32 on CPU; parameters are always float32
  attention: str = "auto"  # "auto" (cuDNN on GPU, XLA on CPU), "xla" or "cudnn"
  # E[x] as one_hot(x) @ E: its backward is a matmul, not a scatter-add. (On an H100 the scatter-add of the gather's
  # backward cost ~90 ms of a 185 ms base_110m step; one_hot @ E brought the step to 96 ms.)
  embed_one_hot: bool = True
  rope_base: float = 10000.0
  # Transformer blocks (transformer, HRM): the attention residual add and the MLP's RMSNorm as one Pallas kernel,
  # forward and backward (models/kernels.add_rms_norm; XLA for sizes it does not take). Off until a GPU has measured it.
  fused_add_norm: bool = False
  # Self-conditioning (Chen et al. 2023, analog bits; CDCD): the previous estimate of x_0, as its expected embedding
  # sum_v p(v) E[v], enters through a zero-initialized linear map added to h_0. Trained with the estimate of a first,
  # gradient-free pass given to half of the examples (zeros to the others); the sampler feeds each reverse step the
  # previous step's estimate; evaluation runs the two passes. Transformer and EcoHybrid; not the AR arm.
  self_conditioning: bool = False
  # 2-D grid positions for puzzles (issue #29, data/puzzles.py): the window is a grid of grid_side x grid_side cells in
  # row-major order (a longer window repeats it: the "prompted" layout's puzzle and answer halves share coordinates).
  # Cell p gets learned row, column and, with grid_box > 0, box embeddings added to h_0:
  #   h_0 += R[r] + C[c] (+ B[b]),  r = (p mod side^2) // side,  c = p mod side,  b = (r // box)(side / box) + c // box,
  # factorized as ViT's 2-D position embeddings (Dosovitskiy et al. 2021); each row of R, C, B is shared by the cells
  # of one row, column or box, the units a Sudoku constrains, which attention can then find from the first step
  # (BENCHMARKS.md "Sudoku as infilling" measures it). Added to whatever `position` gives (RoPE or learned). 0 = off.
  grid_side: int = 0
  grid_box: int = 0  # the box side (3 for a 9 x 9 Sudoku); 0 = no box embedding (mazes)
  # A confidence-calibration head (seed 001 §9.7; `CalibrationHead`): at every position, the logit of P(the greedy
  # candidate argmax_v p_theta(v | x_t) is the true token), from the stop-gradient final state and the prediction's
  # statistics; trained by the objective's binary cross-entropy at the corrupted positions, it never changes the
  # denoiser's gradient. The sampler ranks reveals by it with sample.confidence="calibrated". Transformer, EcoHybrid.
  calibration_head: bool = False
  # Dream's shifted prediction (Ye et al. 2025; issue #31's AR-to-diffusion conversion): the logits of position j come
  # from the final state of position j - 1 (position 0 keeps its own), so that a denoiser initialized from a causal
  # run (train.init_from_run) asks each state for what it was trained to give, the next token. The tied head, its
  # chunked scoring and the calibration head all read the shifted states. Not with the KV caches (their rows would
  # need their neighbours' states) nor on the AR arm (whose loss shifts already).
  shift_logits: bool = False

  # Fields added after checkpoints were written, with the value that rebuilds those checkpoints' models as they were
  # trained (a saved config that lacks the field gets this value; new configs get the field's default).
  FIELDS_ADDED_LATER: ClassVar[dict[str, Any]] = {}

  @property
  def mask_id(self) -> int:
    return self.special.mask

  def __post_init__(self):
    if self.remat not in layers.REMAT_POLICIES:
      raise ConfigError(f"model.remat must be one of {tuple(layers.REMAT_POLICIES)}, got {self.remat!r}.")
    for name in ("dropout", "attention_dropout", "embedding_dropout"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}.")
    if self.causal and self.shift_logits:
      raise ConfigError("model.shift_logits aligns a diffusion denoiser with a causal run's next-token states; the AR "
                        "arm (model.causal=True) shifts in its loss already. Set model.shift_logits=False.")
    if self.causal and self.self_conditioning:
      raise ConfigError("model.self_conditioning is for diffusion denoisers; the AR arm (model.causal=True) has no "
                        "previous estimate of x_0.")
    if self.grid_side < 0 or self.grid_box < 0 or (self.grid_box and (not self.grid_side
                                                                       or self.grid_side % self.grid_box)):
      raise ConfigError(f"model.grid_box={self.grid_box} must divide model.grid_side={self.grid_side} (0 = off).")
    if self.layer_loop not in ("auto", "scan", "unroll"):
      raise ConfigError(f"model.layer_loop must be 'auto', 'scan' or 'unroll', got {self.layer_loop!r}.")

  @classmethod
  def check_objective(cls, objective: str):
    """Raises ConfigError when this denoiser cannot be trained with config.diffusion.objective `objective` (every
    denoiser here takes every objective; the objective checks the model's side, `Objective.check_model`)."""
    del objective

  @property
  def unroll_layers(self) -> bool:
    """Whether `layers.run_stack` unrolls the layer scan (`layer_loop`, "auto" by backend)."""
    if self.layer_loop == "auto":
      return jax.default_backend() != "cpu"
    return self.layer_loop == "unroll"

  def flops_per_token(self, seq_len: int) -> float | None:
    """Training FLOPs per token (forward + backward), for MFU; None when the work per token is data-dependent."""
    del seq_len
    return None


@flax.struct.dataclass
class DenoiserOutput:
  """What a denoiser returns.

  logits_BxLxV: logits of p_theta(x_0 | x_t) at every position (any float dtype; the losses cast to float32).
  aux_losses: already-weighted auxiliary losses by name (EcoHybrid's slot load balancing, HRM's memory, ACT and
    priority terms); the training objective adds them to the loss and logs them as `aux/NAME`; evaluation ignores them.
  aux_metrics: scalars that are only logged, as `metric/NAME` (e.g. HRM's mean number of L-iterations).
  hidden_BxLxD, head_VxD: for a tied linear head, its input (the normalized final states) and weights, logits =
    hidden @ head^T. With them the objective can score tokens chunk by chunk (diffusion.loss_chunk) without the
    [B, L, V] logits, which XLA then never computes; None for a denoiser whose logits are not that product.
  A denoiser with more to say returns a subclass (a wing's, e.g. dlm_jax/proj/thought/model.ThoughtOutput).
  """
  logits_BxLxV: jax.Array
  aux_losses: dict = flax.struct.field(default_factory=dict)
  aux_metrics: dict = flax.struct.field(default_factory=dict)
  hidden_BxLxD: Any = None
  head_VxD: Any = None
  calibration_BxL: Any = None  # the calibration head's logit of P(argmax candidate right), float32 (or None)


class CalibrationHead(nnx.Module):
  """A trained confidence-calibration head (seed 001 §9.7): at each position the logit of P(the denoiser's greedy
  candidate argmax_v p_theta(v | x_t) is the true token),

      calibration = w_2 . GELU(W_1 [sg(h); sg(s)] + b_1) + b_2,
      s = (log p_max, p_max - p_second, -H(p) / log V),

  h the final normalized state (the tied head's input), p = p_theta(. | x_t) over the tokens a sampler may draw
  (special ids removed, as `primitives.remove_never_sampled`). The statistics s make Platt-style recalibration of the
  raw confidence one of its solutions; the state lets it use the context the raw confidence ignores. Both inputs are
  stop-gradient, so the head's loss (the objective's binary cross-entropy against 1[candidate = x_0] at the corrupted
  positions, `aux/calibration`) trains the head alone and leaves the denoiser's gradient unchanged. float32."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(width + 3, width, rngs=rngs)
    self.out = nnx.Linear(width, 1, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  # What the head forecasts: 1[the greedy candidate is x_0] (the objective's target).
  target = staticmethod(losses.greedy_correct)

  def __call__(self, hidden_BxLxD, logits_BxLxV, special):
    logits_BxLxV = jax.lax.stop_gradient(losses.drawable_logits(logits_BxLxV, special))
    log_p_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
    top2_BxLx2 = jax.lax.top_k(log_p_BxLxV, 2)[0]
    p_BxLxV = jnp.exp(log_p_BxLxV)
    entropy_BxL = -jnp.sum(jnp.where(p_BxLxV > 0, p_BxLxV * log_p_BxLxV, 0.0), axis=-1)
    stats_BxLx3 = jnp.stack([top2_BxLx2[..., 0], jnp.exp(top2_BxLx2[..., 0]) - jnp.exp(top2_BxLx2[..., 1]),
                             -entropy_BxL / jnp.log(logits_BxLxV.shape[-1])], axis=-1)
    features = jnp.concatenate([jax.lax.stop_gradient(hidden_BxLxD.astype(jnp.float32)), stats_BxLx3], axis=-1)
    return self.out(jax.nn.gelu(self.hidden(features)))[..., 0]


class Denoiser(nnx.Module):
  """The skeleton of every denoiser: token embedding (+ learned positions, + time embedding) and the tied head.

  A subclass calls `init_embedding` first and `init_head` last in its `__init__` (parameter initialization draws keys in
  creation order), and implements `__call__` with `embed` and `head`."""
  cfg: DenoiserConfig

  def init_embedding(self, cfg: DenoiserConfig, rngs: nnx.Rngs, *, learned_positions: bool,
                     position_rows: int | None = None):
    """The embedding table [V, D], with `learned_positions` a position table [position_rows (default max_len), D]
    (an imported checkpoint keeps all of its rows), the time embedding and self-conditioning's map."""
    self.cfg = cfg
    self.dtype = layers.compute_dtype(cfg.dtype)
    self.embedding = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (cfg.vocab_size, cfg.width), jnp.float32),
                               **logical(VOCAB, EMBED))
    if learned_positions:
      self.positions = nnx.Param(
          layers.DEFAULT_INIT(rngs.params(), (position_rows or cfg.max_len, cfg.width), jnp.float32),
          **logical(LENGTH, EMBED))
    else:
      self.positions = None
    self.time_embedding = (layers.TimeEmbedding(cfg.width, dtype=self.dtype, rngs=rngs)
                           if cfg.time_conditioning else None)
    self.embedding_dropout = nnx.Dropout(cfg.embedding_dropout)
    self.self_condition = (nnx.Linear(cfg.width, cfg.width, use_bias=False, dtype=self.dtype,
                                      kernel_init=nnx.initializers.zeros_init(), rngs=rngs,
                                      kernel_metadata=logical(EMBED, None))
                           if cfg.self_conditioning else None)
    # (keys drawn only when on: a model without grid positions initializes as before)
    table = lambda rows: nnx.Param(layers.DEFAULT_INIT(rngs.params(), (rows, cfg.width), jnp.float32),
                                   **logical(None, EMBED))
    self.grid_rows = table(cfg.grid_side) if cfg.grid_side else None
    self.grid_columns = table(cfg.grid_side) if cfg.grid_side else None
    self.grid_boxes = table((cfg.grid_side // cfg.grid_box) ** 2) if cfg.grid_box else None

  def grid_embedding(self, positions):
    """R[r] + C[c] (+ B[b]) of the cells at `positions` (any shape; DenoiserConfig.grid_side), in the activation
    dtype."""
    side, box = self.cfg.grid_side, self.cfg.grid_box
    cell = positions % (side * side)
    row, column = cell // side, cell % side
    out = self.grid_rows[...][row] + self.grid_columns[...][column]
    if self.grid_boxes is not None:
      out = out + self.grid_boxes[...][(row // box) * (side // box) + column // box]
    return out.astype(self.dtype)

  def init_head(self, rngs: nnx.Rngs):
    self.final_norm = layers.rms_norm(self.cfg.width, dtype=self.dtype, rngs=rngs)
    # Created last: with the same seed every other parameter equals the model's without the head.
    self.calibration = CalibrationHead(self.cfg.width, rngs=rngs) if self.cfg.calibration_head else None

  def diffusion_table(self):
    """The token embeddings as continuous embedding diffusion uses them (diffusion/gaussian.py): the tied table with
    each row scaled to norm sqrt(D), in float32."""
    return gaussian.normalized_table(self.embedding[...])

  def embed(self, tokens_BxL, t_B, deterministic: bool = True, dropout_key=None, self_cond_BxLxV=None,
            positions_BxL=None, embeddings_BxLxD=None):
    """h_0 = Dropout(E[x] (as one_hot(x) @ E when embed_one_hot) (+ TimeMLP(t)) (+ P[:L]) (+ W_sc (p @ E))), in the
    activation dtype; p = `self_cond_BxLxV`, the previous estimate of x_0 (self-conditioning; None = zeros). The
    dropout (model.embedding_dropout) draws from fold_in(dropout_key, EMBEDDING_DROPOUT_STREAM). `positions_BxL`: the
    tokens' positions when they are rows gathered from a longer sequence (a KV-cached sampler step; default 0..L-1).
    `tokens_BxL` may also be float token weights [B, L, V] (Duo's soft tokens): then E[x] is their mixture w @ E, of
    which the integer path is the one-hot case. `embeddings_BxLxD`: continuous inputs z_t in embedding space
    (continuous embedding diffusion, diffusion/gaussian.py) used in place of E[x]; `tokens_BxL` then only gives the
    shape."""
    cfg = self.cfg
    length = tokens_BxL.shape[1]
    if length > cfg.max_len:
      raise ValueError(f"Sequence length {length} exceeds model.max_len={cfg.max_len} (data.seq_len of the config).")
    table_VxD = self.embedding[...].astype(self.dtype)
    if embeddings_BxLxD is not None:
      h_BxLxD = embeddings_BxLxD.astype(self.dtype)
    elif tokens_BxL.ndim == 3:
      h_BxLxD = tokens_BxL.astype(self.dtype) @ table_VxD
    elif cfg.embed_one_hot:
      h_BxLxD = jax.nn.one_hot(tokens_BxL, cfg.vocab_size, dtype=self.dtype) @ table_VxD
    else:
      h_BxLxD = table_VxD[tokens_BxL]
    if self.time_embedding is not None:
      if t_B is None:
        raise ValueError("This model was built with model.time_conditioning=True and needs t.")
      h_BxLxD = h_BxLxD + self.time_embedding(t_B)[:, None, :].astype(self.dtype)
    if self.positions is not None and positions_BxL is not None:
      h_BxLxD = h_BxLxD + self.positions[...].astype(self.dtype)[positions_BxL]
    elif self.positions is not None:
      h_BxLxD = h_BxLxD + self.positions[:length].astype(self.dtype)[None]
    if self.grid_rows is not None:
      h_BxLxD = h_BxLxD + (self.grid_embedding(positions_BxL) if positions_BxL is not None
                           else self.grid_embedding(jnp.arange(length))[None])
    if self.self_condition is not None and self_cond_BxLxV is not None:
      h_BxLxD = h_BxLxD + self.self_condition(self_cond_BxLxV.astype(self.dtype) @ table_VxD)
    h_BxLxD = self.finish_embedding(h_BxLxD)
    if cfg.embedding_dropout and not deterministic:
      key = dropout_key if dropout_key is not None else jax.random.key(0)
      h_BxLxD = self.embedding_dropout(h_BxLxD, deterministic=False,
                                       rngs=jax.random.fold_in(key, EMBEDDING_DROPOUT_STREAM))
    return partitioning.constrain(h_BxLxD, RESIDUAL_AXES)

  def finish_embedding(self, h_BxLxD):
    """What a denoiser does to the summed input embeddings before their dropout: nothing here (an imported BERT adds
    its token-type row and normalizes, models/pretrained.py)."""
    return h_BxLxD

  def head(self, h_BxLxD):
    """logits = RMSNorm(h) E^T, tied to the input embedding, in the activation dtype."""
    return self.final_norm(h_BxLxD) @ self.embedding[...].astype(self.dtype).T

  def output(self, h_BxLxD, aux_losses=None, aux_metrics=None) -> DenoiserOutput:
    """The DenoiserOutput of final states h: the tied head's logits, with its input and weights for chunked scoring
    (with model.shift_logits, position j's from the state of position j - 1, position 0's from its own)."""
    if self.cfg.shift_logits:
      h_BxLxD = jnp.concatenate([h_BxLxD[:, :1], h_BxLxD[:, :-1]], axis=1)
    hidden_BxLxD = self.final_norm(partitioning.constrain(h_BxLxD, RESIDUAL_AXES))
    head_VxD = self.embedding[...].astype(self.dtype)
    logits_BxLxV = hidden_BxLxD @ head_VxD.T
    calibration_BxL = (self.calibration(hidden_BxLxD, logits_BxLxV, self.cfg.special)
                       if getattr(self, "calibration", None) is not None else None)
    return DenoiserOutput(logits_BxLxV, aux_losses or {}, aux_metrics or {}, hidden_BxLxD, head_VxD, calibration_BxL)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None,
               self_cond_BxLxV=None) -> DenoiserOutput:
    # Deliberately abstract: the signature every denoiser implements and the objective, evaluation and sampler call.
    raise NotImplementedError(f"{type(self).__name__} must implement __call__.")

  # -- the sampler's interface ----------------------------------------------------------------------------------------
  # A denoiser with Fast-dLLM's KV caches (sampler cache="dual" or "prefix") sets this and implements
  # kv_prefill(tokens_BxL, t_B, positions_BxQ) -> (logits_BxQxV, cache) and
  # kv_step(tokens_BxL, t_B, positions_BxQ, cache) -> (logits_BxQxV, cache) (see Transformer).
  supports_kv_cache: ClassVar[bool] = False

  def init_sample_carry(self, batch: int, length: int | None = None):
    """State carried from one reverse step to the next (a pytree): None for a stateless denoiser; with
    self-conditioning the previous step's estimate p(x_0 | x_t) [B, L, V], zeros before the first step."""
    if self.self_condition is None:
      return None
    return jnp.zeros((batch, length or self.cfg.max_len, self.cfg.vocab_size), jnp.float32)

  def sample_step(self, tokens_BxL, t_B, carry):
    """One reverse step's model call: (logits_BxLxV, priority_BxL or None, carry for the next step). With a
    calibration head the priority is its forecast sigmoid(calibration_BxL) = P(the greedy candidate is right), which
    the sampler's confidence="calibrated" ranks by."""
    output = self(tokens_BxL, t_B, deterministic=True, self_cond_BxLxV=carry)
    logits_BxLxV = output.logits_BxLxV
    if self.self_condition is not None:
      carry = losses.self_condition_input(logits_BxLxV, self.cfg.mask_id)
    priority_BxL = None if output.calibration_BxL is None else jax.nn.sigmoid(output.calibration_BxL)
    return logits_BxLxV, priority_BxL, carry


def denoise_fn(graphdef, params, other, *, deterministic: bool = True, dropout_key=None):
  """The pure `(x_BxL, t_B[, self_cond_BxLxV], **inputs) -> DenoiserOutput` callable of a split NNX denoiser (what the
  objectives and the evaluation steps call); `inputs` that are not None (e.g. `embeddings_BxLxD`, a wing model's own
  inputs) go to the model. `.diffusion_table()` is continuous embedding diffusion's normalized table and `.model()`
  the merged module (for a model's own methods). The module is merged at each call, i.e. at trace time: a module
  merged outside a lax.scan must not be used inside it."""

  def fn(x_BxL, t_B, self_cond_BxLxV=None, **inputs):
    kwargs = {name: value for name, value in inputs.items() if value is not None}
    if self_cond_BxLxV is not None:
      kwargs["self_cond_BxLxV"] = self_cond_BxLxV
    return nnx.merge(graphdef, params, other)(x_BxL, t_B, deterministic=deterministic, dropout_key=dropout_key,
                                              **kwargs)

  fn.model = lambda: nnx.merge(graphdef, params, other)
  fn.diffusion_table = lambda: fn.model().diffusion_table()
  return fn
