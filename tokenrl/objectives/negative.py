"""GRPO-N / GSPO-N: train on relative negative gradients only (arXiv 2510.04028, spec §12)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def negative_only_advantages(advantages: jax.Array) -> jax.Array:
  """A_N = min(A, 0): keep the below-average samples' group-relative advantages, zero the rest.

  advantages: [N] or [N,T] group-relative advantages (GRPO or GSPO). Returns the same shape.
  Positive-advantage samples then contribute no gradient; they stay in the loss denominators
  (the literal reading of the paper: the GRPO loss with the positive terms zeroed).
  """
  a = jnp.asarray(advantages)
  if a.ndim not in (1, 2):
    raise ValueError(f"advantages: expected [N] or [N,T], got shape {a.shape}")
  return jnp.minimum(a, 0.0)
