"""Importance-sampled diffusion times with a proposal learned online (issue #31).

A diffusion objective is an average over a uniform variable u in [0, 1) (the time, or what an objective maps to its
time: `CorruptionObjective.times_from_uniform`) of a per-u loss: loss = E_u[l(u)], estimated from one u per sequence.
The estimate's noise depends on u: for the masked NELBO the levels near t = 0, where w(t) = -alpha'/(1 - alpha) is
large and few tokens are masked, are the noisiest. Drawing u from a proposal q instead and weighting by the density
ratio r(u) = 1 / q(u) keeps each term unbiased,

    E_{u ~ q}[ r(u) l(u) ] = int_0^1 l(u) du.

Which q is best depends on how the batch's u are drawn. Independent draws: the batch mean's variance is
(1/B) (int E[l(u)^2 | u] / q(u) du - loss^2), smallest (Lagrange, int q = 1) for q ~ sqrt(E[l^2 | u]), the root mean
square (Improved DDPM's importance sampling of L_vlb, Nichol & Dhariwal 2021, section 3.3). But the times here are
stratified, u_b = F_q^{-1}((v + b) / B) with one v ~ U[0, 1) (each u_b marginally q-distributed, MD4's antithetic
times under q): each of the B strata holds q-mass 1/B, the variation of E[l | u] between strata cancels, and what is
left is the conditional variance, about (1/B) int sigma^2(u) / q(u) du, smallest for

    q*(u) proportional to sigma(u) = std(l(u) | u)

(Neyman's allocation of stratified sampling): the per-t loss's standard deviation, as issue #31 asks. On the
enumerable toy of tests/test_diffusion.py, with these stratified times, the root-mean-square rule cut the batch
estimate's spread by 13% and this one by 20%. The loss is a proxy: what training wants small is the gradient's
variance, which this code does not measure per u.

Here q is piecewise constant on K equal bins of u. Each bin keeps exponential moving averages of l and l^2 over the
training sequences whose u fell in it (l: the sequence's loss per token before the ratio), sigma_k^2 = E[l^2] - E[l]^2,
and the proposal is

    q_k = (1 - floor) sigma_k / sum_j sigma_j + floor / K,        density K q_k on bin k,

so r = 1 / (K q_k) <= 1 / floor. Until every bin has `warmup` losses, q is uniform (r = 1). The state is a pytree of
three [K] arrays, carried in TrainState.objective_state, updated once per update from the whole batch's statistics
(summed over gradient-accumulation micro-batches), and checkpointed with the run.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def initial_state(num_bins: int) -> dict:
  """The proposal's state before any loss: no history (q uniform)."""
  return {"mean_K": jnp.zeros((num_bins,), jnp.float32), "mean_square_K": jnp.zeros((num_bins,), jnp.float32),
          "count_K": jnp.zeros((num_bins,), jnp.int32)}  # (three buffers: the train step donates each)


def proposal(state, floor: float, warmup: int):
  """q_K, the probability of each bin (module docstring): uniform until every bin has `warmup` losses (or while no
  bin's loss has varied)."""
  num_bins = state["mean_K"].shape[0]
  std_K = jnp.sqrt(jnp.maximum(state["mean_square_K"] - state["mean_K"]**2, 0.0))
  learned_K = (1.0 - floor) * std_K / jnp.maximum(jnp.sum(std_K), 1e-30) + floor / num_bins
  ready = jnp.all(state["count_K"] >= warmup) & (jnp.sum(std_K) > 0)
  return jnp.where(ready, learned_K, jnp.full((num_bins,), 1.0 / num_bins, jnp.float32))


def sample(rng, batch_size: int, q_K):
  """(u_B, ratio_B, bin_B): stratified draws of u under the piecewise-constant q_K, the density ratio 1 / (K q_k) of
  each (uniform over q), and its bin."""
  num_bins = q_K.shape[0]
  v_B = jnp.mod(jax.random.uniform(rng, (), jnp.float32) + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  cdf_K = jnp.cumsum(q_K)
  bin_B = jnp.minimum(jnp.searchsorted(cdf_K, v_B, side="right"), num_bins - 1)
  below_B = jnp.where(bin_B > 0, cdf_K[jnp.maximum(bin_B - 1, 0)], 0.0)
  within_B = jnp.clip((v_B - below_B) / q_K[bin_B], 0.0, 1.0 - 1e-6)
  u_B = (bin_B.astype(jnp.float32) + within_B) / num_bins
  return u_B, 1.0 / (num_bins * q_K[bin_B]), bin_B


def batch_statistics(bin_B, loss_B, num_bins: int) -> dict:
  """Per bin: the sums of the per-token losses of the sequences drawn in it and of their squares, and their count (no
  gradient)."""
  loss_B = jax.lax.stop_gradient(loss_B.astype(jnp.float32))
  one_hot_BxK = jax.nn.one_hot(bin_B, num_bins, dtype=jnp.float32)
  return {"sum_K": loss_B @ one_hot_BxK, "square_sum_K": loss_B**2 @ one_hot_BxK,
          "count_K": jnp.sum(one_hot_BxK, axis=0).astype(jnp.int32)}


def update(state, stats, decay: float) -> dict:
  """The state after one update's `stats` (batch_statistics, summed over micro-batches): each bin that got losses
  moves its averages of l and l^2 towards the batch's, m <- decay m + (1 - decay) batch (a bin's first losses set
  them)."""
  seen_K = stats["count_K"] > 0
  count_K = jnp.maximum(stats["count_K"], 1).astype(jnp.float32)
  fresh_K = state["count_K"] == 0

  def move(old_K, batch_K):
    return jnp.where(seen_K, jnp.where(fresh_K, batch_K, decay * old_K + (1.0 - decay) * batch_K), old_K)

  return {"mean_K": move(state["mean_K"], stats["sum_K"] / count_K),
          "mean_square_K": move(state["mean_square_K"], stats["square_sum_K"] / count_K),
          "count_K": state["count_K"] + stats["count_K"]}
