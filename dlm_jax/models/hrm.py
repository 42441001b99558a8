"""HRM denoiser: H/L modules, memory cells with top-k selection, ACT over L-iterations.

A masked-diffusion denoiser built on the Hierarchical Reasoning Model (Wang et al. 2025, "HRM"): a fast L-module
refines token predictions while a slow H-module holds a strategic state, read from and written to a bank of memory
cells. Every module is a stack of bidirectional pre-norm transformer blocks (`transformer.Block`).

Forward pass for x_t (all states [B, L, D]; e = RMSNorm(embedding of x_t (+ time)), the mask token marking mask_t):

    z_H, z_L <- learned initial states
    for c in 1..h_cycles:                                   (H-module: updated once every l_steps L-iterations)
        mem      <- mem + Write(q = mem content, kv = z_H)           memory written from the strategic state
        A        <- TopK_k( CLS_i^T W mean_L(z_H) )                  select k of the N cells, each with a learned
                                                                 key CLS_i (per position: memory_selection)
        z_H      <- f_H(z_H + z_L + g_A * Read(q = z_H, kv = content of the cells in A))
                    g_A = softmax(CLS^T W z_H) mass on A (the Switch gate; memory_gate=False: g_A = 1)
        repeat up to l_steps times, with ACT:                 (L-module: z_H fixed)
            z_L  <- f_L(z_L + z_H + e)
    logits = head(z_L)

where f(.) = RMSNorm(blocks(.)): the normalized output (HRM's post-norm) keeps the recurrence bounded, so iterating
f_L can converge to a fixed point, which is what ACT detects.

Gradient (`gradient`; the forward function is the same for both, only where `stop_gradient` sits differs):
  * "one_step" (HRM's one-step approximation, the default): every iteration runs under `stop_gradient` except the
    last memory write, the last H update and one final L update f_L(sg(z_L*) + z_H + e) applied to the halted L-state
    z_L* -- so activation memory does not grow with the number of iterations. (The final L update is one step beyond
    halting, in training and in inference alike, so both compute the same function.)
  * "last_cycle" (TRM, Jolicoeur-Martineau 2025, "Less is More: Recursive Reasoning with Tiny Networks"): the last
    H-cycle is backpropagated through in full -- its H update, every one of its L-iterations (halted positions keep
    their state, so the halting masks are where-selects the gradient passes through) and the final L update -- with
    only the earlier cycles under `stop_gradient`. TRM's ablation on Sudoku-Extreme puts most of its gain over HRM
    here (one-step gradient 56.5% vs full recursion 87.4% exact). Activation memory grows with l_steps + 1 L updates.
    The ACT losses still see sg(z_L*): the subjective score is trained, the states are not trained through it.

ACT over L-iterations, per L-iteration i (z^i -> z^{i+1}, logits_i = head(z^i)): halting compares an "objective
contribution" tau accumulated over iterations (large when the predictions stop changing) with a learned "subjective
score" o of the current state,

    tau_i = g(logits_{i+1} - logits_i) / (|CLS(z^i) . CLS(z^{i+1})| + eps)
    o(z)  = sigmoid(SwiGLU(RMSNorm(z)))                                  subjective score in [0, 1]
    halt after iteration i when  sum_{j <= i} tau_j > o(z^{i+1}).

Choices made here (config fields):
  * g (`act_g`): "exp": g(D) = exp(-rms(D) / act_g_scale); "inverse": g(D) = 1 / (1 + rms(D) / act_g_scale), with
    rms over the vocabulary (computed without the logits: `logit_change_rms`). Both are large when the logits stop moving, so a state that has converged accumulates
    contribution quickly and halts, and one whose predictions keep changing runs to `l_steps`. (A g that grows with the
    change would halt the unconverged inputs first, the opposite of adaptive computation.)
  * CLS(z) = unit-normalized linear projection of z (per token), so the denominator lies in [eps, 1 + eps].
  * granularity (`act_granularity`): "token" (each position halts on its own; halted positions keep their state while
    the others continue, and stay visible to them as context) or "sequence" (tau and o averaged over positions).
  * L_ACT (`act_weight`, lambda_2): mean of (o(sg(z*)) - sg(min(sum tau, 1)))^2 over positions and cycles: the
    subjective score is trained toward the contribution actually observed when the loop stopped.
  * L_memory (`memory_weight`, lambda_1): Switch-style load balancing over cells, N sum_j f_j P_j (1 when uniform).
  * What z_H selects with (`memory_selection`): "pooled" (default; the original HRM-diffusion sketch): one query W
    mean_L(z_H) per sequence, the same k cells for every position; "position": a query W z_H per position, each
    position reads its own k cells (the balance then runs over B L assignments, as in EcoHybrid's routing);
    "centered": per position, with the query built from z_H minus its mean over positions (removes the component all
    positions share). In the small runs of BENCHMARKS.md the pooled selection collapsed to one constant cell set per
    H-cycle (notebooks/inside_hrm.ipynb); only "centered" undid that.
  * The gate (`memory_gate`, on by default): a hard top-k has no derivative, so without a gate the
    selection scores learn only from lambda_1's balance term -- in the small runs they never left their
    initialization (balance at its maximum N / k, one cell set for every input). Scaling the read by the probability
    mass the selection softmax puts on the chosen cells (as the Switch Transformer scales expert outputs, and
    EcoHybrid's routing does) lets the denoising loss train the selection. memory_gate=False reproduces the ungated
    model (commits up to a8a36ac, whose checkpoints load ungated: HRMConfig.FIELDS_ADDED_LATER).
  * Strategic unmasking: a linear head on z_H gives each position a priority; it is trained (`priority_weight`)
    to forecast sg(max_v p_theta(v | x_t)) at masked positions -- where the L-module's predictions are reliable, as seen
    from the strategic state -- and the sampler adds `strategic_weight` x priority to its confidence.
  * Memory persistence: the cell contents are a per-sequence state [B, N, P, D] (P content vectors per cell); within a
    forward pass each cycle writes them; during sampling the written contents are carried from one reverse step to the
    next (`sample_step`), so the memory persists across the whole generation. Training starts every example from the
    learned contents.

Training uses a static number of iterations with halting masks (lax.scan, differentiable); inference (`use_while_loop`)
exits early with lax.while_loop. Both give the same outputs. Ablations: `use_h_module=False` (a weight-tied recurrent
L-module of the same depth, no H state), `use_memory=False`, `act=False` (always l_steps iterations).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from dlm_jax.diffusion import losses
from dlm_jax.errors import ConfigError
from dlm_jax.models import layers
from dlm_jax.models.partitioning import EMBED, SLOTS, logical
from dlm_jax.models.base import Denoiser, DenoiserConfig, DenoiserOutput
from dlm_jax.models.transformer import TransformerConfig, make_blocks, run_blocks


@dataclasses.dataclass(frozen=True)
class HRMConfig(DenoiserConfig):
  l_layers: int = 2  # depth of f_L
  h_layers: int = 2  # depth of f_H
  h_cycles: int = 2  # H updates per forward pass (C)
  l_steps: int = 4  # maximum L-iterations per H update (HRM's T)
  use_h_module: bool = True  # False: weight-tied recurrent L-module only, no H state (ablation)
  use_memory: bool = True  # False: no memory cells (ablation)
  memory_cells: int = 16  # N
  memory_content: int = 4  # P: content vectors per cell
  memory_top_k: int = 4  # k
  memory_weight: float = 0.01  # lambda_1: load balancing over cells
  memory_selection: str = "pooled"  # "pooled" (one top-k per sequence), "position" or "centered" (per position)
  memory_gate: bool = True  # scale the read by the selection probability of the chosen cells (trains the selection)
  act: bool = True  # False: always l_steps iterations (ablation)
  gradient: str = "one_step"  # "one_step" (HRM) or "last_cycle" (TRM: the last H-cycle backpropagated in full)
  act_granularity: str = "token"  # "token" or "sequence"
  act_g: str = "exp"  # g in tau = g(d logits) / (|CLS . CLS'| + eps): "exp" or "inverse"
  act_g_scale: float = 1.0
  act_eps: float = 1e-3
  act_weight: float = 0.1  # lambda_2: alignment of the subjective score o with the observed contribution
  priority_weight: float = 0.1  # strategic-priority head (the sampler's strategic_weight uses it)
  use_while_loop: bool = False  # inference-only early exit of the L-loop (the sampler always uses it)
  position: str = "rope"

  # Checkpoints written before the memory gate existed (commits up to a8a36ac) hold an ungated model.
  FIELDS_ADDED_LATER: ClassVar[dict[str, Any]] = {"memory_gate": False}

  def __post_init__(self):
    super().__post_init__()
    if self.self_conditioning:
      raise ConfigError("model.self_conditioning is not supported by hrm (its sampler carry is the memory cells).")
    if self.causal:
      raise ConfigError("model.causal=True is not supported by the HRM denoiser (it is bidirectional).")
    if self.calibration_head:
      raise ConfigError("model.calibration_head is not supported by hrm (its sampler priority is the strategic "
                        "priority head); use the transformer or eco_hybrid.")
    if self.position != "rope":
      raise ConfigError(f"model.position must be 'rope' for hrm, got {self.position!r}.")
    if self.act_granularity not in ("token", "sequence"):
      raise ConfigError(f"model.act_granularity must be 'token' or 'sequence', got {self.act_granularity!r}.")
    if self.memory_selection not in ("pooled", "position", "centered"):
      raise ConfigError(f"model.memory_selection must be 'pooled', 'position' or 'centered', got "
                       f"{self.memory_selection!r}.")
    if self.act_g not in ("exp", "inverse"):
      raise ConfigError(f"model.act_g must be 'exp' or 'inverse', got {self.act_g!r}.")
    if not 1 <= self.memory_top_k <= self.memory_cells:
      raise ConfigError(f"model.memory_top_k={self.memory_top_k} must be in [1, memory_cells={self.memory_cells}].")
    if self.gradient not in ("one_step", "last_cycle"):
      raise ConfigError(f"model.gradient must be 'one_step' or 'last_cycle', got {self.gradient!r}.")
    if self.gradient == "last_cycle" and self.use_while_loop:
      raise ConfigError("model.gradient='last_cycle' backpropagates through the L-loop, which model.use_while_loop=True "
                        "(a lax.while_loop) cannot: set use_while_loop=False (the sampler exits early regardless).")
    if self.l_steps < 1 or self.h_cycles < 1:
      raise ConfigError("model.l_steps and model.h_cycles must be >= 1.")

  def block_config(self, num_layers: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=self.vocab_size, max_len=self.max_len, num_layers=num_layers,
                             num_heads=self.num_heads, width=self.width, mlp_dim=self.mlp_dim, dropout=self.dropout,
                             dtype=self.dtype, attention=self.attention, layer_loop=self.layer_loop,
                             fused_add_norm=self.fused_add_norm, attention_dropout=self.attention_dropout)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ActStats:
  """Per cycle: L-iterations used per position [B, L], final cumulative contribution."""
  iterations_BxL: jax.Array
  contribution_BxL: jax.Array


@dataclasses.dataclass
class HRMPass:
  """One forward pass: the denoiser's output, the strategic priority, the memory contents after it (None without
  memory) and the trace that `inspect` reports."""
  output: DenoiserOutput
  priority_BxL: jax.Array
  content_BxNxPxD: Any
  trace: dict


def act_g(rms_BxL, kind: str, scale: float):
  """g of the rms change of the logits: exp(-rms / scale) or 1 / (1 + rms / scale)."""
  return jnp.exp(-rms_BxL / scale) if kind == "exp" else 1.0 / (1.0 + rms_BxL / scale)


class HRMDenoiser(Denoiser):
  """`model(x, t)` -> DenoiserOutput (losses and metrics included); `sample_step` and `inspect` for the sampler and
  notebooks, with the memory contents carried across reverse steps."""

  def __init__(self, cfg: HRMConfig, *, rngs: nnx.Rngs):
    self.init_embedding(cfg, rngs, learned_positions=False)
    d = cfg.width
    self.input_norm = layers.rms_norm(d, dtype=self.dtype, rngs=rngs)
    self.z_l_init = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (d,), jnp.float32), **logical(EMBED))
    self.l_blocks = make_blocks(cfg.block_config(cfg.l_layers), rngs)
    self.l_out_norm = layers.rms_norm(d, dtype=self.dtype, rngs=rngs)
    self.init_head(rngs)
    if cfg.use_h_module:
      self.z_h_init = nnx.Param(layers.DEFAULT_INIT(rngs.params(), (d,), jnp.float32), **logical(EMBED))
      self.h_blocks = make_blocks(cfg.block_config(cfg.h_layers), rngs)
      self.h_out_norm = layers.rms_norm(d, dtype=self.dtype, rngs=rngs)
      self.priority = nnx.Linear(d, 1, dtype=jnp.float32, kernel_init=nnx.initializers.zeros_init(), rngs=rngs,
                                 kernel_metadata=logical(EMBED, None), bias_metadata=logical(None))
      if cfg.use_memory:
        self.cell_cls = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (cfg.memory_cells, d)),
                                  **logical(SLOTS, EMBED))
        self.cell_content = nnx.Param(
            nnx.initializers.normal(1.0)(rngs.params(), (cfg.memory_cells, cfg.memory_content, d)),
            **logical(SLOTS, None, EMBED))
        self.select = nnx.Linear(d, d, use_bias=False, dtype=jnp.float32, kernel_init=layers.DEFAULT_INIT,
                                 rngs=rngs, kernel_metadata=logical(EMBED, None))
        self.read_norm = layers.rms_norm(d, dtype=self.dtype, rngs=rngs)
        self.read = layers.CrossAttention(d, cfg.num_heads, dtype=self.dtype, rngs=rngs)
        self.write_norm = layers.rms_norm(d, dtype=self.dtype, rngs=rngs)
        self.write = layers.CrossAttention(d, cfg.num_heads, dtype=self.dtype, rngs=rngs)
    if cfg.act:
      self.cls_proj = nnx.Linear(d, d, use_bias=False, dtype=jnp.float32, kernel_init=layers.DEFAULT_INIT,
                                 rngs=rngs, kernel_metadata=logical(EMBED, None))
      self.score_norm = layers.rms_norm(d, dtype=jnp.float32, rngs=rngs)
      self.score = layers.SwiGLU(d, d, dtype=jnp.float32, rngs=rngs, out_features=1)

  @property
  def uses_memory(self) -> bool:
    return self.cfg.use_h_module and self.cfg.use_memory

  # -- pieces ----------------------------------------------------------------------------------------------------------
  def head(self, z_BxLxD):
    return super().head(z_BxLxD).astype(jnp.float32)

  def cls(self, z_BxLxD):
    c_BxLxD = self.cls_proj(z_BxLxD.astype(jnp.float32))
    if self.cfg.act_granularity == "sequence":
      c_BxLxD = jnp.broadcast_to(jnp.mean(c_BxLxD, axis=1, keepdims=True), c_BxLxD.shape)
    return c_BxLxD / (jnp.linalg.norm(c_BxLxD, axis=-1, keepdims=True) + 1e-6)

  def subjective_score(self, z_BxLxD):
    """o(z) = sigmoid(SwiGLU(RMSNorm(z))) per position ([B, L]); averaged over positions for 'sequence'."""
    o_BxL = jax.nn.sigmoid(self.score(self.score_norm(z_BxLxD.astype(jnp.float32)))[..., 0])
    if self.cfg.act_granularity == "sequence":
      o_BxL = jnp.broadcast_to(jnp.mean(o_BxL, axis=1, keepdims=True), o_BxL.shape)
    return o_BxL

  def f_l(self, z_l_BxLxD, injection_BxLxD, rope, key, deterministic):
    """z_L <- RMSNorm(blocks_L(z_L + z_H + e)): normalized output (HRM's post-norm) keeps the iteration bounded."""
    return self.l_out_norm(run_blocks(self.l_blocks, z_l_BxLxD + injection_BxLxD, rope, key, deterministic,
                                      self.cfg))

  def f_h(self, z_h_BxLxD, z_l_BxLxD, read_BxLxD, rope, key, deterministic):
    return self.h_out_norm(run_blocks(self.h_blocks, z_h_BxLxD + z_l_BxLxD + read_BxLxD, rope, key, deterministic,
                                      self.cfg))

  def select_cells(self, z_h_BxLxD):
    """Top-k cells by CLS_i^T W z_H, with z_H mean-pooled over positions ("pooled"), per position ("position") or per
    position less its positional mean ("centered").
    Returns (chosen: exactly k True per row, [B, N] pooled or [B, L, N] per position; gate: selection probability
    on the chosen cells, [B, 1, 1] or [B, L, 1]; load-balancing loss)."""
    z_BxQxD = z_h_BxLxD.astype(jnp.float32)  # Q = 1 (pooled) or L
    if self.cfg.memory_selection == "pooled":
      z_BxQxD = jnp.mean(z_BxQxD, axis=1, keepdims=True)
    elif self.cfg.memory_selection == "centered":
      z_BxQxD = z_BxQxD - jnp.mean(z_BxQxD, axis=1, keepdims=True)
    scores_BxQxN = self.select(z_BxQxD) @ self.cell_cls[...].T
    chosen_BxQxN, gate_BxQx1, balance = layers.route_top_k(scores_BxQxN, self.cfg.memory_top_k)
    return (chosen_BxQxN[:, 0] if self.cfg.memory_selection == "pooled" else chosen_BxQxN), gate_BxQx1, balance

  def read_memory(self, z_h_BxLxD, content_BxNxPxD, chosen, gate=None):
    """Cross-attention of z_H over the content vectors of the chosen cells ([B, N] or [B, L, N]), times `gate`."""
    b, n, p, d = content_BxNxPxD.shape
    keys_BxJxD = self.read_norm(content_BxNxPxD.reshape(b, n * p, d).astype(self.dtype))  # J = N P
    chosen_BxQxN = chosen[:, None] if chosen.ndim == 2 else chosen
    bias = layers.attention_bias(jnp.repeat(chosen_BxQxN, p, axis=-1), self.dtype)
    out_BxLxD = self.read(z_h_BxLxD, keys_BxJxD, bias)
    return out_BxLxD if gate is None else out_BxLxD * gate.astype(out_BxLxD.dtype)

  def write_memory(self, z_h_BxLxD, content_BxNxPxD):
    b, n, p, d = content_BxNxPxD.shape
    flat_BxJxD = content_BxNxPxD.reshape(b, n * p, d)
    update_BxJxD = self.write(self.write_norm(flat_BxJxD.astype(self.dtype)), z_h_BxLxD).astype(flat_BxJxD.dtype)
    return (flat_BxJxD + update_BxJxD).reshape(b, n, p, d)

  def init_sample_carry(self, batch: int, length: int | None = None):
    """The sampler's persistent state: the memory cell contents, [B, N, P, D] (a dummy when memory is off)."""
    if self.uses_memory:
      return jnp.broadcast_to(self.cell_content[...][None], (batch,) + self.cell_content.shape)
    return jnp.zeros((batch, 1, 1, 1), jnp.float32)

  # -- the L-loop with ACT --------------------------------------------------------------------------------------------
  def head_features(self, z_BxLxD):
    """The tied head's input, RMSNorm(z), in float32: logits = head_features(z) E^T."""
    return self.final_norm(z_BxLxD).astype(jnp.float32)

  def logit_change_rms(self, features_a_BxLxD, features_b_BxLxD, gram_DxD):
    """rms over the vocabulary of the logits' change from head features a to b, without computing logits: the head is
    linear, so the change is d E^T with d = b - a, and its mean square over the V rows of E is d^T (E^T E / V) d.
    O(D^2) per position instead of O(V D): at V = 32000, D = 768 a 42x cheaper ACT step, and no [B, L, V] arrays."""
    d_BxLxD = features_b_BxLxD - features_a_BxLxD
    return jnp.sqrt(jnp.maximum(jnp.sum((d_BxLxD @ gram_DxD) * d_BxLxD, axis=-1), 0.0))

  def l_loop(self, z_l_BxLxD, injection_BxLxD, rope, deterministic, use_while_loop: bool,
             differentiable: bool = False):
    """Up to l_steps L-iterations with ACT halting, under stop_gradient unless `differentiable` (the last cycle of
    gradient="last_cycle"; the halting decisions are never differentiated). Returns (halted z_L, ActStats)."""
    cfg = self.cfg
    sg = jax.lax.stop_gradient
    batch, length, _ = z_l_BxLxD.shape
    if differentiable:
      step = lambda z: self.f_l(z, injection_BxLxD, rope, None, True)
    else:
      step = lambda z: sg(self.f_l(z, injection_BxLxD, rope, None, True))
    if not cfg.act:
      z_l_BxLxD = jax.lax.fori_loop(0, cfg.l_steps, lambda _, z: step(z), z_l_BxLxD)
      full_BxL = jnp.full((batch, length), float(cfg.l_steps))
      return z_l_BxLxD, ActStats(full_BxL, jnp.zeros((batch, length)))

    table_VxD = sg(self.embedding[...].astype(jnp.float32))
    gram_DxD = table_VxD.T @ table_VxD / table_VxD.shape[0]

    def body(state):
      i, z_BxLxD, features_BxLxD, cls_BxLxD, total_BxL, halted_BxL, used_BxL = state
      z_new = step(z_BxLxD)
      features_new, cls_new = sg(self.head_features(z_new)), sg(self.cls(z_new))
      tau_BxL = act_g(self.logit_change_rms(features_BxLxD, features_new, gram_DxD), cfg.act_g, cfg.act_g_scale)
      if cfg.act_granularity == "sequence":
        tau_BxL = jnp.broadcast_to(jnp.mean(tau_BxL, axis=1, keepdims=True), tau_BxL.shape)
      tau_BxL = tau_BxL / (jnp.abs(jnp.sum(cls_BxLxD * cls_new, axis=-1)) + cfg.act_eps)
      active_BxL = ~halted_BxL
      z_BxLxD = jnp.where(active_BxL[..., None], z_new, z_BxLxD)
      features_BxLxD = jnp.where(active_BxL[..., None], features_new, features_BxLxD)
      cls_BxLxD = jnp.where(active_BxL[..., None], cls_new, cls_BxLxD)
      total_BxL = jnp.where(active_BxL, total_BxL + tau_BxL, total_BxL)
      used_BxL = used_BxL + active_BxL.astype(jnp.float32)
      halted_BxL = halted_BxL | (active_BxL & (total_BxL > sg(self.subjective_score(z_BxLxD))))
      return i + 1, z_BxLxD, features_BxLxD, cls_BxLxD, total_BxL, halted_BxL, used_BxL

    init = (jnp.asarray(0), z_l_BxLxD, sg(self.head_features(z_l_BxLxD)), sg(self.cls(z_l_BxLxD)),
            jnp.zeros((batch, length)),
            jnp.zeros((batch, length), bool), jnp.zeros((batch, length)))
    if use_while_loop:
      state = jax.lax.while_loop(lambda s: (s[0] < cfg.l_steps) & ~jnp.all(s[5]), body, init)
    else:
      state = jax.lax.fori_loop(0, cfg.l_steps, lambda _, s: body(s), init)
    _, z_l_BxLxD, _, _, total_BxL, _, used_BxL = state
    return z_l_BxLxD, ActStats(used_BxL, total_BxL)

  # -- the forward pass ----------------------------------------------------------------------------------------------
  def forward(self, tokens_BxL, t_B, content_BxNxPxD, deterministic, dropout_key, use_while_loop,
              learned_content=None) -> HRMPass:
    """The forward pass of the module docstring, starting from the memory contents `content_BxNxPxD` (None without
    memory). `learned_content`: the learned initial contents, through which the one-step gradient flows (training)."""
    cfg = self.cfg
    sg = jax.lax.stop_gradient
    batch, length = tokens_BxL.shape
    # Normalized so the token input is as large as the unit-RMS states it is added to (HRM scales its embeddings by
    # sqrt(D) for the same reason); at the 0.02 init scale of the tied embedding it would be drowned by z_L + z_H.
    e_BxLxD = self.input_norm(self.embed(tokens_BxL, t_B, deterministic, dropout_key))
    rope = layers.rope_tables(length, cfg.width // cfg.num_heads, cfg.rope_base)
    keys = jax.random.split(dropout_key if dropout_key is not None else jax.random.key(0), 2)
    z_l_BxLxD = jnp.broadcast_to(self.z_l_init[...].astype(self.dtype), e_BxLxD.shape)
    aux_losses, stats, chosen_per_cycle = {}, [], []
    zero_BxLxD = jnp.zeros(e_BxLxD.shape, self.dtype)
    z_h_BxLxD = (jnp.broadcast_to(self.z_h_init[...].astype(self.dtype), e_BxLxD.shape) if cfg.use_h_module
                 else zero_BxLxD)
    for cycle in range(cfg.h_cycles):
      last = cycle == cfg.h_cycles - 1
      if cfg.use_h_module:
        # The last cycle's write, selection, read and H update are differentiated (inputs under stop_gradient).
        z_h_in, z_l_in = sg(z_h_BxLxD), sg(z_l_BxLxD)
        read_BxLxD = zero_BxLxD
        if self.uses_memory:
          if last and learned_content is not None:
            # Straight-through: the contents' value after earlier (stop-gradient) cycles, with the gradient of the
            # learned initial contents passed through as if those cycles were the identity (one-step gradient).
            content_BxNxPxD = sg(content_BxNxPxD) + (learned_content - sg(learned_content))
          content_BxNxPxD = self.write_memory(z_h_in, content_BxNxPxD if last else sg(content_BxNxPxD))
          content_BxNxPxD = content_BxNxPxD if last else sg(content_BxNxPxD)
          chosen, gate, balance = self.select_cells(z_h_in)
          chosen_per_cycle.append(chosen)
          read_BxLxD = self.read_memory(z_h_in, content_BxNxPxD, chosen, gate if cfg.memory_gate else None)
          if last:
            aux_losses["hrm_memory"] = cfg.memory_weight * balance
        z_h_BxLxD = self.f_h(z_h_in, z_l_in, read_BxLxD, rope, keys[0], deterministic)
        z_h_BxLxD = z_h_BxLxD if last else sg(z_h_BxLxD)
      injection_BxLxD = (z_h_BxLxD + e_BxLxD) if last else sg(z_h_BxLxD + e_BxLxD)
      through = last and cfg.gradient == "last_cycle"
      z_l_BxLxD, act_stats = self.l_loop(sg(z_l_BxLxD), injection_BxLxD if through else sg(injection_BxLxD), rope,
                                         deterministic, use_while_loop, differentiable=through and not use_while_loop)
      stats.append(act_stats)
    # One differentiable L update on the halted state: HRM's one-step gradient stops at z_L*, TRM's passes through it.
    z_star_BxLxD = sg(z_l_BxLxD)
    z_l_BxLxD = self.f_l(z_l_BxLxD if cfg.gradient == "last_cycle" else z_star_BxLxD, injection_BxLxD, rope, keys[1],
                         deterministic)
    logits_BxLxV = self.head(z_l_BxLxD)
    priority_BxL = (self.priority(z_h_BxLxD.astype(jnp.float32))[..., 0] if cfg.use_h_module
                    else jnp.zeros((batch, length)))
    iterations_CxBxL = jnp.stack([s.iterations_BxL for s in stats])
    aux_metrics = {"hrm_l_iterations": jnp.mean(iterations_CxBxL)}
    trace = {"l_iterations_CxBxL": iterations_CxBxL, "act_contribution_BxL": stats[-1].contribution_BxL,
             "priority_BxL": priority_BxL}
    if cfg.act:
      o_BxL = self.subjective_score(z_star_BxLxD)
      target_BxL = sg(jnp.minimum(stats[-1].contribution_BxL, 1.0))
      aux_losses["hrm_act"] = cfg.act_weight * jnp.mean(jnp.square(o_BxL - target_BxL))
      trace["act_score_BxL"] = o_BxL
    if self.uses_memory:
      trace["chosen_cells_CxBxN"] = jnp.stack(chosen_per_cycle)
    return HRMPass(DenoiserOutput(logits_BxLxV, aux_losses, aux_metrics), priority_BxL,
                   content_BxNxPxD if self.uses_memory else None, trace)

  def __call__(self, tokens_BxL, t_B=None, *, deterministic: bool = True, dropout_key=None) -> DenoiserOutput:
    """The training/evaluation call: starts from the learned memory contents. Its auxiliary losses include the
    strategic-priority head's regression, at masked positions, on sg(max_v p_theta(v | x_t)): the L-module's confidence
    forecast from the H-state alone, which the sampler adds (weighted) to the per-token confidence."""
    content = self.init_sample_carry(tokens_BxL.shape[0]) if self.uses_memory else None
    hrm_pass = self.forward(tokens_BxL, t_B, content, deterministic, dropout_key, self.cfg.use_while_loop,
                            learned_content=content)
    output = hrm_pass.output
    if self.cfg.use_h_module and self.cfg.priority_weight:
      masked_BxL = tokens_BxL == self.cfg.mask_id
      probs_BxLxV = jax.nn.softmax(losses.subs_logits(output.logits_BxLxV, self.cfg.mask_id))
      confidence_BxL = jax.lax.stop_gradient(jnp.max(probs_BxLxV, -1))
      err_BxL = jnp.where(masked_BxL, jnp.square(hrm_pass.priority_BxL - confidence_BxL), 0.0)
      priority_loss = self.cfg.priority_weight * jnp.sum(err_BxL) / jnp.maximum(jnp.sum(masked_BxL), 1)
      output = output.replace(aux_losses={**output.aux_losses, "hrm_priority": priority_loss})
    return output

  def sample_step(self, tokens_BxL, t_B, carry):
    """One reverse step for the sampler: (logits, strategic priority, memory contents carried to the next step).
    Uses the early-exit while loop for the L-iterations (the rest of `inspect`'s trace is dead code under jit)."""
    logits_BxLxV, trace, carry = self.inspect(tokens_BxL, t_B, carry)
    return logits_BxLxV, trace["priority_BxL"], carry

  def inspect(self, tokens_BxL, t_B, content):
    """`sample_step` with its insides: (logits, trace, memory contents for the next step). The trace holds, per
    H-cycle C, the L-iterations ACT used at every position (`l_iterations_CxBxL`) and the memory cells selected
    (`chosen_cells_CxBxN`, or [C, B, L, N] with a per-position memory_selection; when memory is on), and for the last
    cycle the cumulative objective contribution sum_i tau_i and the subjective score o at the halted state
    (`act_contribution_BxL`, `act_score_BxL`, when ACT is on), and the strategic priority. Feeding a recorded
    trajectory's states through it step by step, carrying the contents, replays exactly the model calls of the sampler
    (notebooks/inside_hrm.ipynb)."""
    hrm_pass = self.forward(tokens_BxL, t_B, content if self.uses_memory else None, True, None,
                            use_while_loop=True)
    return hrm_pass.output.logits_BxLxV, hrm_pass.trace, (hrm_pass.content_BxNxPxD if self.uses_memory else content)
