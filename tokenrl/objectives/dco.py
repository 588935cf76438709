"""DCO: Direct Coverage Optimization, the pass@N confidence-limiting loss (spec §8).

"Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence Improves
Mathematical Reasoning" (Chen et al., arXiv 2502.07154, NeurIPS 2025). Direct-answer DCO only
(the chain-of-thought and proof-tree variants of the paper were not recovered, spec §8(f)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Below this sequence log-prob (p̂ < e^-80 ≈ 1.8e-35, under f32's normal range) the f32
# evaluation of log(1 − p̂) rounds to 0; use the p̂ → 0 limits F = 1, ℓ = −log N − LP instead.
_SMALL_LOGP = -80.0


def _check_rows(name: str, x: jax.Array) -> None:
  if x.ndim != 1:
    raise ValueError(f"{name}: expected shape [B], got {x.shape}")


def _check_n(n: int) -> None:
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n: expected an int >= 1 (the pass@N budget), got {n!r}")


def log1mexp(x: jax.Array) -> jax.Array:
  """log(1 − e^x) for x ≤ 0, accurate at both ends (Mächler 2012).

  x in [−ln 2, 0]: log(−expm1(x)); x < −ln 2: log1p(−e^x). Elementwise, f32; −inf at x = 0.
  """
  x = jnp.minimum(jnp.asarray(x, jnp.float32), 0.0)
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def sequence_logp(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """LP[b] = Σ_t m[b,t]·lp[b,t], the answer's log-probability log p̂ (spec §0 masking).

  logp, mask: [B,T]; padding entries are replaced by 0 before the sum (they may be −inf).
  Returns [B] f32.
  """
  if logp.ndim != 2:
    raise ValueError(f"logp: expected shape [B,T], got {logp.shape}")
  if mask.shape != logp.shape:
    raise ValueError(f"mask: expected shape {logp.shape}, got {mask.shape}")
  return jnp.where(mask > 0, logp.astype(jnp.float32), 0.0).sum(axis=1)


def dco_factor(seq_logp: jax.Array, n: int) -> jax.Array:
  """F(N, p̂) = N·(1−p̂)^{N−1}·p̂ / (1 − (1−p̂)^N), the DCO/CE gradient ratio (spec §8).

  seq_logp: LP = log p̂ [B] (≤ 0; clipped to 0 above). Evaluated in log space:
      log F = log N + (N−1)·log(1−p̂) + LP − log(1 − (1−p̂)^N).
  Limits: F = 1 for N = 1 (any p̂) and as p̂ → 0; F = 0 at p̂ = 1 (N > 1). Returns [B] f32,
  no gradient intended (callers stop it).
  """
  _check_rows("seq_logp", seq_logp)
  _check_n(n)
  lp = jnp.minimum(seq_logp.astype(jnp.float32), 0.0)
  if n == 1:
    return jnp.ones_like(lp)
  l1m = log1mexp(lp)                                              # log(1−p̂) [B], −inf at p̂=1
  cover = log1mexp(n * l1m)                                       # log(1 − (1−p̂)^N)
  log_f = math.log(n) + (n - 1) * l1m + lp - cover
  f = jnp.where(lp >= 0.0, 0.0, jnp.exp(log_f))
  return jnp.where(lp < _SMALL_LOGP, 1.0, f)


def dco_sequence_loss(seq_logp: jax.Array, n: int) -> jax.Array:
  """ℓ_DCO^N = −log(1 − (1 − p̂)^N) per example, [B] f32 (value only; see `dco_loss`).

  = −log1mexp(N·log1mexp(LP)); 0 at p̂ = 1; −log N − LP in the p̂ → 0 limit; N = 1 gives the
  cross-entropy −LP exactly.
  """
  _check_rows("seq_logp", seq_logp)
  _check_n(n)
  lp = jnp.minimum(seq_logp.astype(jnp.float32), 0.0)
  if n == 1:
    return -lp
  exact = -log1mexp(n * log1mexp(lp))
  exact = jnp.where(lp >= 0.0, 0.0, exact)
  return jnp.where(lp < _SMALL_LOGP, -math.log(n) - lp, exact)


def dco_loss(seq_logp: jax.Array, n: int, *, row_mask: jax.Array | None = None,
             denominator: jax.Array | float | None = None):
  """Direct Coverage Optimization loss (Chen et al. 2025, spec §8), mean over examples.

      ℓ_b  = −log(1 − (1 − p̂_b)^N)                      (value)
      ∇ℓ_b = F(N, p̂_b)·∇(−log p̂_b)                      (gradient)
      L    = Σ_b r_b·ℓ_b / D

  Symbols: `seq_logp` = LP_b = log p̂_b = Σ_t m·log π_θ(y_t | x, y_<t), [B] (differentiable);
  `n` = N, the test-time pass@N budget (required); `r` = `row_mask [B]` (default 1: rows of
  padding get 0); `D` = `denominator` (default Σ_b r_b; pass the whole minibatch's count when
  accumulating micro-batches). The value is the exact ℓ and the gradient the spec's stable
  surrogate sg(F)·(−LP): the returned per-row term is sg(F)·(−LP) + sg(ℓ − sg(F)·(−LP)), so no
  gradient ever flows through log(1 − (1−p̂)^N). N = 1 is the cross-entropy −log p̂ in value and
  gradient.

  Returns (loss f32 scalar, metrics): `dco_factor` (mean F), `dco_p` (mean p̂), `dco_ce` (mean
  −LP), `dco_exact` (mean ℓ), all means over this call's valid rows.
  """
  _check_rows("seq_logp", seq_logp)
  _check_n(n)
  b = seq_logp.shape[0]
  r = jnp.ones((b,), jnp.float32) if row_mask is None else jnp.asarray(row_mask, jnp.float32)
  if r.shape != (b,):
    raise ValueError(f"row_mask: expected shape ({b},), got {r.shape}")
  sg = jax.lax.stop_gradient
  lp = seq_logp.astype(jnp.float32)
  f = sg(dco_factor(sg(lp), n))
  exact = sg(dco_sequence_loss(sg(lp), n))
  surrogate = f * (-lp)
  per_row = surrogate + sg(exact - surrogate)
  per_row = jnp.where(r > 0, per_row * r, 0.0)
  count = r.sum()
  d = count if denominator is None else jnp.asarray(denominator, jnp.float32)
  loss = per_row.sum() / jnp.where(d > 0, d, 1.0)
  mean = lambda x: jnp.where(r > 0, x, 0.0).sum() / jnp.maximum(count, 1.0)
  metrics = {"dco_factor": mean(f), "dco_p": mean(jnp.exp(sg(lp))), "dco_ce": mean(-sg(lp)),
             "dco_exact": mean(exact)}
  return loss, metrics


LOSSES = {"dco": dco_loss}
