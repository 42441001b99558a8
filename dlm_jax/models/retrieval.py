"""Retrieval-conditioned memory slots for EcoHybrid (seed 001 §9.6: "inject retrieved embeddings directly into memory
slots; the denoiser conditions on both the prompt and the retrieved evidence").

The datastore is W windows of training text (token ids [W, L], `retrieval_windows` of them, spread evenly over the
training stream and cut out of it, so that no training example retrieves the passage it was cropped from). Each window
is encoded once as a fixed, parameter-free key: its bag of tokens through a fixed Gaussian projection P [V, E]
(Johnson-Lindenstrauss; special tokens have zero rows), normalized,

    key(x) = normalize( sum_i P[x_i] ),

and the query of a noisy input x_t is the same encoding of its *visible* tokens (the mask token has a zero row), so
retrieval never looks at what the model must predict. The k = `retrieval_slots` windows of highest cosine similarity
(an exact top-k over all W: one [B, W] matmul, fine at W ~ 10^3-10^4) each become one memory slot:

    slot_j = s_j + W RMSNorm( mean_l E[n_j, l] ),   j = 1..k,

the neighbour's mean token embedding (E: the model's tied embedding, so the pooled state lives in the model's own
space and is trained with it) through a learned projection W, plus a learned per-rank offset s_j. These k slots are
appended to EcoHybrid's M learned slots before block 0; from there the blocks write and read them like any slot. The
discrete choice of neighbours carries no gradient; W, s and E do.

Choices (exposed in config.model): the fixed bag-of-tokens key (a learned encoder's keys would go stale as it trains
and need re-encoding; this one is exact and free), the neighbour count = the slot count, and the datastore size
`retrieval_windows`. The datastore is not a parameter: it is an `nnx.Variable` of its own type (`Datastore`), held in
the model's non-parameter state, written to WORKDIR/retrieval_datastore.npy when training starts and loaded from there
with every checkpoint (training/checkpoint.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm_jax import special_tokens
from dlm_jax.models import layers
from dlm_jax.models.partitioning import EMBED, SLOTS, logical

KEY_SEED = 20261123  # the fixed projection's seed: every run encodes a text to the same key


class Datastore(nnx.Variable):
  """Retrieval data (windows, their keys, the fixed key projection): model state that is neither trained nor
  checkpointed with the parameters."""


def key_projection(vocab_size: int, key_dim: int, special: special_tokens.SpecialIds) -> np.ndarray:
  """The fixed projection P [V, E] of the bag-of-tokens key: Gaussian / sqrt(K), zero rows for the special ids
  (`special`: pad, bos, eos, mask, unk), float32; the same on every machine (numpy's PCG64 with a fixed seed)."""
  rows = np.random.default_rng(KEY_SEED).standard_normal((vocab_size, key_dim)).astype(np.float32) / np.sqrt(key_dim)
  rows[[i for i in (*special.never_sampled, special.eos) if i < vocab_size]] = 0.0
  return rows


def encode(tokens_BxL, projection_VxE):
  """Normalized bag-of-tokens keys [B, E] (module docstring); a sequence of special tokens only gets the zero key."""
  key_BxE = jnp.sum(projection_VxE[tokens_BxL], axis=1)
  return key_BxE / jnp.maximum(jnp.linalg.norm(key_BxE, axis=-1, keepdims=True), 1e-6)


def top_k_neighbours(query_BxE, keys_WxE, k: int):
  """Exact top-k by cosine similarity (keys and queries are unit vectors or zero): (scores [B, k], indices [B, k]),
  best first."""
  scores_BxW = jnp.dot(query_BxE, keys_WxE.T, precision=jax.lax.Precision.HIGHEST)
  return jax.lax.top_k(scores_BxW, k)


class RetrievalSlots(nnx.Module):
  """k memory slots from the k nearest datastore windows of the visible input (module docstring)."""

  def __init__(self, width: int, vocab_size: int, num_slots: int, num_windows: int, window_len: int, key_dim: int,
               special: special_tokens.SpecialIds, *, dtype, rngs: nnx.Rngs):
    self.num_slots, self.dtype, self.special = num_slots, dtype, special
    self.windows = Datastore(jnp.zeros((num_windows, window_len), jnp.int32))
    self.keys = Datastore(jnp.zeros((num_windows, key_dim), jnp.float32))
    self.projection = Datastore(jnp.asarray(key_projection(vocab_size, key_dim, special)))
    self.norm = layers.rms_norm(width, dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(width, width, use_bias=False, dtype=dtype, kernel_init=layers.DEFAULT_INIT, rngs=rngs,
                           kernel_metadata=logical(EMBED, None))
    self.slot_offsets = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (num_slots, width)),
                                   **logical(SLOTS, EMBED))

  def fill(self, windows_WxL):
    """Installs the datastore windows [W, L] (ints) and their keys."""
    windows_WxL = jnp.asarray(windows_WxL, jnp.int32)
    if windows_WxL.shape != self.windows.shape:
      raise ValueError(f"The retrieval datastore holds {self.windows.shape[0]} windows of {self.windows.shape[1]} "
                       f"tokens (model.retrieval_windows, data.seq_len); got {windows_WxL.shape}.")
    # Every value is set concretely, so that an abstract model (nnx.eval_shape: a checkpoint's graph) can be filled.
    projection_VxE = jnp.asarray(key_projection(*self.projection.shape, self.special))
    self.projection.set_value(projection_VxE)
    self.windows.set_value(windows_WxL)
    self.keys.set_value(encode(windows_WxL, projection_VxE))

  def neighbours(self, tokens_BxL):
    """(scores [B, R], indices [B, R]) of the datastore windows nearest to the visible tokens of `tokens_BxL`."""
    return top_k_neighbours(encode(tokens_BxL, self.projection[...]), self.keys[...], self.num_slots)

  def __call__(self, tokens_BxL, embedding_VxD):
    """Memory slots [B, R, D] conditioned on the k nearest windows."""
    _, index_BxR = self.neighbours(tokens_BxL)
    windows_BxRxL = self.windows[...][index_BxR]
    pooled_BxRxD = jnp.mean(embedding_VxD.astype(self.dtype)[windows_BxRxL], axis=2)
    return self.slot_offsets[...].astype(self.dtype)[None] + self.proj(self.norm(pooled_BxRxD))


def datastore_windows(train_tokens: np.ndarray, seq_len: int, num_windows: int, eos_id: int):
  """(datastore windows [W, L], the training stream without them): W = num_windows non-overlapping windows spread
  evenly over the training stream (so every training file has its share), cut out of it; the pieces left are joined
  with EOS (`eos_id`), as documents are. Raises ValueError when the windows would take more than half of the stream."""
  size = num_windows * seq_len
  if size > len(train_tokens) // 2:
    raise ValueError(f"model.retrieval_windows={num_windows} windows of {seq_len} tokens would take more than half of "
                     f"the {len(train_tokens):,} training tokens; lower it.")
  stride = len(train_tokens) // num_windows
  starts = np.arange(num_windows) * stride + (stride - seq_len) // 2
  windows = np.stack([np.asarray(train_tokens[s:s + seq_len], np.int32) for s in starts])
  eos = np.asarray([eos_id], np.asarray(train_tokens[:0]).dtype)
  pieces, previous_end = [], 0
  for s in starts:
    pieces += [train_tokens[previous_end:s], eos]
    previous_end = s + seq_len
  pieces.append(train_tokens[previous_end:])
  return windows, np.concatenate(pieces)
