"""Dead-end rectification: cap each token's probability by the dead-end value (spec §11).

"Systematic Rectification of Language Models via Dead-end Analysis" (Cao et al., ICLR 2023;
reference mcao516/rectification-lm `src/inference.py`, `src/sarsa.py`, [code-verified]).
Reaching an undesirable terminal state (a "dead end") has reward −1, everything else 0, γ = 1.
Q_D(s,a) ∈ [−1, 0] ≈ −P(dead end | s, a). A policy is secure if π(a|s) ≤ 1 + Q_D(s,a).

Decoding (per step, logits z [N,V], Q_D [N,V]):
  s = clip(1 + Q_D − ε, p_min, p_max)
  repeat `iterations` times:  thr = log s + logsumexp(z) (per row);  z = min(z, thr)
(wherever softmax(z)_a > s_a the logit is lowered to give probability s_a under the current
normalizer; a second pass corrects for the normalizer shrinking after the first).

Q training (offline SARSA / TD(0)) on sequences with actions a_t, mask m [N,T], episode
reward R [N] ∈ {−1, 0}:
  q_t = Q(s_t, a_t);  y_t = γ·Q_tgt(s_{t+1}, a_{t+1}) (t < last),  y_last = R;  y = clip(y, q_min, q_max)
  loss = Σ m·(q − sg(y))² / Σ m;  after each step θ_tgt ← α·θ + (1 − α)·θ_tgt (Polyak).
Q head (reference): Linear D→2D, ReLU, Linear 2D→V on a backbone's hidden states.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


def rectify_logits(logits: jax.Array, q_values: jax.Array, *, epsilon: float = 0.0,
                   p_min: float = 1e-7, p_max: float = 1.0, iterations: int = 2) -> jax.Array:
  """Capped logits [N,V]: softmax(z')_a ≤ s_a = clip(1 + Q_D(s,a) − ε, p_min, p_max) (approx.).

  logits z [N,V] (after the other processors), q_values Q_D [N,V] (not clipped, as the
  reference); `iterations` passes of z = min(z, log s + logsumexp(z)).
  """
  if logits.ndim != 2 or q_values.shape != logits.shape:
    raise ValueError(f"logits and q_values must both be [N,V], got {logits.shape} and "
                     f"{q_values.shape}")
  if not 0.0 < p_min <= p_max <= 1.0:
    raise ValueError(f"p_min, p_max: expected 0 < p_min <= p_max <= 1, got {p_min}, {p_max}")
  if iterations < 1:
    raise ValueError(f"iterations: expected >= 1, got {iterations}")
  z = logits.astype(jnp.float32)
  log_s = jnp.log(jnp.clip(1.0 + q_values.astype(jnp.float32) - epsilon, p_min, p_max))
  for _ in range(iterations):
    z = jnp.minimum(z, log_s + jax.nn.logsumexp(z, axis=-1, keepdims=True))
  return z


def sarsa_targets(q_target_taken: jax.Array, mask: jax.Array, reward: jax.Array, *,
                  gamma: float = 1.0, q_min: float = -1.0, q_max: float = 0.0) -> jax.Array:
  """TD(0) targets y [N,T]: γ·Q_tgt(s_{t+1}, a_{t+1}) inside, R at each row's last action.

  q_target_taken [N,T] = Q_tgt(s_t, a_t) of the taken actions; mask [N,T] (a contiguous prefix
  of 1s per row); reward [N]. Entries after the last action are 0. Clipped to [q_min, q_max].
  """
  if q_target_taken.ndim != 2 or mask.shape != q_target_taken.shape:
    raise ValueError(f"q_target_taken and mask must both be [N,T], got {q_target_taken.shape} "
                     f"and {mask.shape}")
  if reward.shape != mask.shape[:1]:
    raise ValueError(f"reward: expected [N] = {mask.shape[:1]}, got {reward.shape}")
  m = mask.astype(jnp.float32)
  nxt = jnp.pad(q_target_taken[:, 1:], ((0, 0), (0, 1)))
  nxt_m = jnp.pad(m[:, 1:], ((0, 0), (0, 1)))
  is_last = (m > 0) & (nxt_m == 0)
  y = jnp.where(is_last, reward[:, None].astype(jnp.float32), gamma * nxt)
  return jnp.where(m > 0, jnp.clip(y, q_min, q_max), 0.0)


def td_loss(q_taken: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """Σ m·(q − sg(y))² / max(Σ m, 1): q_taken, targets, mask [N,T]."""
  if q_taken.shape != targets.shape or q_taken.shape != mask.shape or q_taken.ndim != 2:
    raise ValueError(f"q_taken, targets, mask must all be [N,T], got {q_taken.shape}, "
                     f"{targets.shape}, {mask.shape}")
  m = mask.astype(jnp.float32)
  err = q_taken - jax.lax.stop_gradient(targets)
  return (m * err * err).sum() / jnp.maximum(m.sum(), 1.0)


def polyak(online: Any, target: Any, alpha: float) -> Any:
  """θ_tgt ← α·θ + (1 − α)·θ_tgt on every leaf (α = 1 copies, α = 0 keeps the target)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha: expected in [0, 1], got {alpha}")
  return jax.tree.map(lambda a, b: alpha * a + (1.0 - alpha) * b, online, target)


def init_q_head(rng: jax.Array, dim: int, vocab_size: int) -> dict[str, jax.Array]:
  """Q head params: w1 [D,2D], b1 [2D], w2 [2D,V], b2 [V] (w ~ N(0, 1/fan_in); w2 small)."""
  k1, k2 = jax.random.split(rng)
  return {"w1": jax.random.normal(k1, (dim, 2 * dim)) * dim ** -0.5,
          "b1": jnp.zeros((2 * dim,)),
          "w2": jax.random.normal(k2, (2 * dim, vocab_size)) * 0.01 * (2 * dim) ** -0.5,
          "b2": jnp.zeros((vocab_size,))}


def q_head(params: dict[str, jax.Array], hidden: jax.Array) -> jax.Array:
  """Q [..., V] = relu(h·w1 + b1)·w2 + b2 from hidden states h [..., D] (dropout 0)."""
  if hidden.shape[-1] != params["w1"].shape[0]:
    raise ValueError(f"hidden: expected [..., {params['w1'].shape[0]}], got {hidden.shape}")
  h = jax.nn.relu(hidden.astype(jnp.float32) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


@dataclasses.dataclass(frozen=True)
class DeadEndCap:
  """Sampler logit processor for a Q_D that depends on the token only: Q_D(s,a) = q_table[a].

  For toys and tests (a known Q_D); a learned Q_D(s, ·) needs the prefix's hidden states and
  runs in tokenrl.train.rectification.rectified_generate. Hashable (tuple fields).
  """

  q_table: tuple[float, ...]
  epsilon: float = 0.0
  p_min: float = 1e-7
  p_max: float = 1.0
  iterations: int = 2

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    del ctx
    q = jnp.broadcast_to(jnp.asarray(self.q_table, jnp.float32), logits.shape)
    return rectify_logits(logits, q, epsilon=self.epsilon, p_min=self.p_min, p_max=self.p_max,
                          iterations=self.iterations)


RECTIFICATION_FUNCTIONS: dict[str, Callable] = {
    "rectify_logits": rectify_logits,
    "sarsa_targets": sarsa_targets,
    "td_loss": td_loss,
    "polyak": polyak,
    "q_head": q_head,
}
