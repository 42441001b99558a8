"""A property classifier on a diffusion run's noisy states, p_phi(c | x_t, t): the guide of plug-and-play control
(Diffusion-LM, Li et al. 2022, §5; dlm_jax/sampling/control.py steers the samplers with its gradient).

    h_0 = W_in u (+ TimeMLP(t)),   h_L = the baseline transformer's blocks (bidirectional, RoPE) applied to h_0,
    logits_C = W_out RMSNorm(mean_i h_L,i)

The input u is what the sampler holds at time t, so that the gradient d log p_phi(c | u, t) / du is taken where the
sampler is:

* `input_kind="tokens"` (masked and other discrete runs): u = one_hot(x_t) [B, L, V] over the run's vocabulary, the
  mask id included, and W_in is a V x W embedding table (one_hot(x) @ W_in = W_in[x]); the gradient with respect to
  the one-hot input scores every token at every position at once (sampling/control.py's first-order guidance). No time
  input: the number of masks shows the noise level, as for MDLM's denoiser.
* `input_kind="embeddings"` (continuous embedding runs): u = z_t [B, L, D], the run's noisy latent in its own
  embedding space, W_in a D x W map, and the time t enters through the denoisers' TimeMLP (the noise level of a
  Gaussian latent is not visible in one position).

Mean pooling over positions makes the prediction a property of the whole window (its script, its length, ...).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from dlm_jax.errors import ConfigError
from dlm_jax.models import layers, transformer

INPUT_KINDS = ("tokens", "embeddings")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The classifier's shape; `input_dim` is the vocabulary size (tokens) or the run's embedding width (embeddings)."""
  num_classes: int
  input_kind: str
  input_dim: int
  max_len: int
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 172

  def __post_init__(self):
    if self.input_kind not in INPUT_KINDS:
      raise ConfigError(f"classifier input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}.")
    if self.num_classes < 2 or self.input_dim < 1 or self.num_layers < 1:
      raise ConfigError(f"A classifier needs >= 2 classes, an input and >= 1 layer; got {self}.")
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ConfigError(f"classifier width {self.width} must split into {self.num_heads} heads of even size (RoPE).")

  @property
  def time_conditioning(self) -> bool:
    return self.input_kind == "embeddings"

  def blocks_config(self) -> transformer.TransformerConfig:
    return transformer.TransformerConfig(vocab_size=self.input_dim, max_len=self.max_len, width=self.width,
                                         num_layers=self.num_layers, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                         dtype="float32", attention="xla")


class PropertyClassifier(nnx.Module):
  """`classifier(inputs_BxLxI, t_B) -> logits [B, C]` (module docstring); inputs are one-hot tokens or latents."""

  def __init__(self, cfg: ClassifierConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    blocks_cfg = cfg.blocks_config()
    self.input_proj = nnx.Linear(cfg.input_dim, cfg.width, use_bias=False, kernel_init=layers.DEFAULT_INIT,
                                 rngs=rngs)
    self.time = layers.TimeEmbedding(cfg.width, dtype=jnp.float32, rngs=rngs) if cfg.time_conditioning else None
    self.blocks = transformer.make_blocks(blocks_cfg, rngs)
    self.final_norm = layers.rms_norm(cfg.width, dtype=jnp.float32, rngs=rngs)
    self.out = nnx.Linear(cfg.width, cfg.num_classes, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, inputs_BxLxI, t_B):
    cfg = self.cfg
    h_BxLxW = self.input_proj(inputs_BxLxI.astype(jnp.float32))
    if self.time is not None:
      h_BxLxW = h_BxLxW + self.time(t_B)[:, None, :]
    rope = layers.rope_tables(inputs_BxLxI.shape[1], cfg.width // cfg.num_heads)
    h_BxLxW = transformer.run_blocks(self.blocks, h_BxLxW, rope, None, True, cfg.blocks_config())
    return self.out(self.final_norm(jnp.mean(h_BxLxW, axis=1)))
