"""D³S: Dynamic Dual-Level Down-Sampling (arXiv 2509.22115, ICLR 2026; spec §3).

1. Sample level: keep the N_s rollouts whose advantages have the largest variance (per group, or
   pooled over the batch: "D1S-Cross", the paper's final method). A fixed-size max-variance subset
   always consists of the k largest plus the N_s − k smallest values: try every k.
2. Token level: among the kept rollouts, keep the top-K fraction of tokens by |A|·H.
3. Schedule: N_s and K interpolate linearly from (N_init, K_init) to (N_final, K_final).

Equations are [paper via a summary]; the schedule values are not published (spec §3c).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SAMPLE_MODES = ("cross", "group")


def max_variance_subset(values: jax.Array, num_select: int) -> jax.Array:
  """Mask of the `num_select` entries of each row of `values [R,M]` with maximal variance.

      Ŝ = argmax_{S ⊂ row, |S| = n} Var({v_i : i ∈ S})      (population variance)
        = the k largest ∪ the n − k smallest values, for the best k ∈ [0, n]

  Ties: values are ordered by a stable ascending sort (equal values by index), the smallest
  n − k are the first of that order and the largest k the last; among equally good k the
  smallest k wins. Returns bool `[R,M]` with exactly `n` True per row (O(M log M) per row).
  """
  if values.ndim != 2:
    raise ValueError(f"values: expected shape [R,M], got {values.shape}")
  r, m = values.shape
  if not 0 <= num_select <= m:
    raise ValueError(f"num_select: expected in [0, {m}], got {num_select}")
  v = jax.lax.stop_gradient(values).astype(jnp.float32)
  order = jnp.argsort(v, axis=1, stable=True)                   # [R,M] ascending
  s = jnp.take_along_axis(v, order, axis=1)                     # [R,M] sorted
  zero = jnp.zeros((r, 1), jnp.float32)
  c1 = jnp.concatenate([zero, jnp.cumsum(s, axis=1)], axis=1)             # [R,M+1] prefix sums
  c2 = jnp.concatenate([zero, jnp.cumsum(s * s, axis=1)], axis=1)
  n = num_select
  k = jnp.arange(n + 1)                                         # k largest + (n − k) smallest
  tot1 = c1[:, n - k] + c1[:, m:m + 1] - c1[:, m - k]           # [R,n+1]
  tot2 = c2[:, n - k] + c2[:, m:m + 1] - c2[:, m - k]
  denom = max(n, 1)
  var = tot2 / denom - jnp.square(tot1 / denom)
  best = jnp.argmax(var, axis=1)                                # [R] first (smallest) best k
  rank = jnp.arange(m)[None, :]
  keep_sorted = (rank < (n - best)[:, None]) | (rank >= (m - best)[:, None])   # [R,M]
  inverse = jnp.argsort(order, axis=1)
  return jnp.take_along_axis(keep_sorted, inverse, axis=1)


def select_samples(advantages: jax.Array, group_size: int, num_per_group: int, *,
                   mode: str = "cross") -> jax.Array:
  """Sample-level down-sampling of D³S: bool `[N]` of the rollouts kept.

  `advantages [N]` group-normalised (computed on all G rollouts before selection, never
  re-normalised). mode='group': `n = num_per_group` per group of G = `group_size` (contiguous);
  mode='cross' (D1S-Cross): pool all N rollouts and keep `n·B` (B = N/G) by the same rule.
  """
  if advantages.ndim != 1:
    raise ValueError(f"advantages: expected shape [N], got {advantages.shape}")
  n_rows = advantages.shape[0]
  if group_size < 1 or n_rows % group_size:
    raise ValueError(f"group_size: expected a divisor of N={n_rows}, got {group_size}")
  if not 0 <= num_per_group <= group_size:
    raise ValueError(f"num_per_group: expected in [0, {group_size}], got {num_per_group}")
  if mode not in SAMPLE_MODES:
    raise ValueError(f"mode: expected one of {SAMPLE_MODES}, got {mode!r}")
  b = n_rows // group_size
  if mode == "group":
    return max_variance_subset(advantages.reshape(b, group_size), num_per_group).reshape(-1)
  return max_variance_subset(advantages.reshape(1, n_rows), num_per_group * b).reshape(-1)


def select_tokens(advantages: jax.Array, entropy: jax.Array, mask: jax.Array,
                  fraction: float) -> jax.Array:
  """Token-level down-sampling of D³S: keep the top `fraction` of valid tokens by |A|·H.

      score[i,t] = |A[i,t]| · H[i,t],   s[i,t] = m[i,t] · 1[rank(score[i,t]) < ⌈K·Σ m⌉]

  `advantages` `[N]` or `[N,T]`, `entropy` H `[N,T]` (policy entropy at rollout), `mask [N,T]`
  (already restricted to the kept rollouts), `K` = `fraction` ∈ (0, 1]. The ranking is global
  over all valid tokens of the batch (spec §3b); ties keep the lower flat index. Returns f32
  `[N,T]` (a constant).
  """
  if entropy.ndim != 2:
    raise ValueError(f"entropy: expected shape [N,T], got {entropy.shape}")
  if mask.shape != entropy.shape:
    raise ValueError(f"mask: expected shape {entropy.shape}, got {mask.shape}")
  if advantages.shape not in (entropy.shape[:1], entropy.shape):
    raise ValueError(f"advantages: expected shape {entropy.shape[:1]} or {entropy.shape}, "
                     f"got {advantages.shape}")
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction: expected in (0, 1], got {fraction!r}")
  sg = jax.lax.stop_gradient
  a = sg(advantages).astype(jnp.float32)
  a = a[:, None] if a.ndim == 1 else a
  m = mask > 0
  score = jnp.where(m, jnp.abs(a) * sg(entropy).astype(jnp.float32), -jnp.inf).reshape(-1)
  order = jnp.argsort(-score, stable=True)
  rank = jnp.argsort(order).reshape(entropy.shape)             # 0 = highest score
  count = jnp.ceil(fraction * m.sum() - 1e-6)                  # ⌈K·Σm⌉ (1e-6: float guard)
  return ((rank < count) & m).astype(jnp.float32)


def d3s_schedule(progress: float, n_init: float, n_final: float, k_init: float,
                 k_final: float) -> tuple[float, float]:
  """Linear schedule `[N_s, K](p) = (1 − p)·[N_init, K_init] + p·[N_final, K_final]`, p ∈ [0,1].

  Plain Python (host side); `progress` is clipped to [0, 1]. Round N_s with `round_half_up`.
  """
  p = min(max(float(progress), 0.0), 1.0)
  return (1 - p) * n_init + p * n_final, (1 - p) * k_init + p * k_final


def round_half_up(x: float) -> int:
  """⌊x + ½⌋ (N_s rounding; Python's round() is half-to-even)."""
  return int(math.floor(x + 0.5))


D3S_FNS = {
    "max_variance_subset": max_variance_subset,
    "select_samples": select_samples,
    "select_tokens": select_tokens,
    "d3s_schedule": d3s_schedule,
}
