"""RMT, Reinforcement Mid-Training: length reward, RL reward and the NTP term (spec §10).

"Reinforcement Mid-Training" (arXiv 2509.24375, ICLR 2026). At a key token τ_pos of a corpus
sequence the policy writes a chain of thought c and a predicted token ŷ; every other corpus
token is trained by next-token prediction. Equations from the paper via a detailed summary; the
weights w and r_max were not found (they are config options, flagged as our choice).
The budget schedule and the curriculum sampler are host-side (tokenrl/methods/rmt.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def length_reward(length: jax.Array, budget: jax.Array | float, *,
                  r_max: float = 1.0) -> jax.Array:
  """Triangular length reward r_len(ℓ; B) of thinking lengths ℓ [N] for budget B:

      r_max·ℓ/B          ℓ ≤ B
      r_max·(2B − ℓ)/B   B < ℓ ≤ 2B
      0                  ℓ > 2B

  Peaks at ℓ = B (the prompt asks for exactly B thinking tokens). Returns [N] f32.
  """
  l = jnp.asarray(length, jnp.float32)
  b = jnp.asarray(budget, jnp.float32)
  if l.ndim != 1:
    raise ValueError(f"length: expected shape [N], got {l.shape}")
  if b.ndim > 1 or (b.ndim == 1 and b.shape != l.shape):
    raise ValueError(f"budget: expected a scalar or shape {l.shape}, got {b.shape}")
  up = r_max * l / b
  down = r_max * (2.0 * b - l) / b
  return jnp.where(l <= b, up, jnp.where(l <= 2.0 * b, down, 0.0))


def rmt_reward(correct: jax.Array, length: jax.Array, budget: jax.Array | float, *,
               length_weight: float, r_max: float = 1.0) -> jax.Array:
  """r^i = (1 − w)·1[ŷ^i = τ_pos] + w·r_len(|c^i|; B_t), shapes [N] -> [N] f32.

  correct: 1[ŷ = τ_pos] [N] (exact next-token match); length: |c| [N] thinking tokens;
  w = `length_weight` (not given by the paper).
  """
  c = jnp.asarray(correct, jnp.float32)
  if c.shape != jnp.shape(length):
    raise ValueError(f"correct: expected shape {jnp.shape(length)} (as length), got {c.shape}")
  return (1.0 - length_weight) * c + length_weight * length_reward(length, budget, r_max=r_max)


def ntp_loss(logp: jax.Array, weights: jax.Array) -> jax.Array:
  """L_NTP = −Σ_pos w_pos·log p_θ(τ_pos | τ_<pos), w_pos = m_pos·scale (m_pos = 1[τ_pos ∉ C]).

  logp, weights: [N,S] (weights already carry the normalisation, e.g. 1/Σm over the step,
  so micro-batch sums add up to the step's mean). Returns a scalar.
  """
  if jnp.shape(logp) != jnp.shape(weights):
    raise ValueError(f"weights: expected shape {jnp.shape(logp)} (as logp), got {jnp.shape(weights)}")
  return -(logp * jax.lax.stop_gradient(weights)).sum()


RMT_FNS = {"length_reward": length_reward, "rmt_reward": rmt_reward, "ntp_loss": ntp_loss}
