"""OTR: One-Token Rollout, SFT with a one-step policy gradient per position (spec §7).

"One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient" (Ming et al.,
arXiv 2509.26313). [reconstructed] from the abstract and the public OpenReview reviews: the
loss structure (rewards 1 / β, K samples from a temperature-scaled copy π′, REINFORCE with no
baseline and no importance ratio, per-sequence token mean) is paper-level; the values of β and
τ_s are unverified, so both are required knobs of the method section.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("mc", "exact")
NORMALIZE = ("per_sequence", "global_token_mean")


def _check_logits(logits: jax.Array, targets: jax.Array) -> None:
  if logits.ndim != 3:
    raise ValueError(f"logits: expected shape [N,T,V], got {logits.shape}")
  if targets.shape != logits.shape[:2]:
    raise ValueError(f"targets: expected shape {logits.shape[:2]}, got {targets.shape}")


def sample_candidates(logits: jax.Array, uniforms: jax.Array, *, temperature: float) -> jax.Array:
  """K i.i.d. draws a_k ~ π′ = softmax(sg(z)/τ_s) per position, by inverse CDF (spec §7(b)).

      a_k = min{ v : Σ_{u≤v} π′(u) > U_k · Σ_u π′(u) }

  logits z: [N,T,V]; uniforms U: [N,T,K] in [0,1) (the caller owns the randomness, so the
  draw is reproducible per row under micro-batching); temperature τ_s > 0. Costs one [N,T,V]
  cumsum and N·T·K binary searches, never the K·N·T·V Gumbel draws of `categorical`.
  Zero-probability tokens are never drawn (side='right'). Returns int32 [N,T,K], no gradient.
  """
  if logits.ndim != 3:
    raise ValueError(f"logits: expected shape [N,T,V], got {logits.shape}")
  if uniforms.ndim != 3 or uniforms.shape[:2] != logits.shape[:2]:
    raise ValueError(f"uniforms: expected shape {logits.shape[:2] + ('K',)}, got {uniforms.shape}")
  if not temperature > 0:
    raise ValueError(f"temperature: expected > 0, got {temperature!r}")
  n, t, v = logits.shape
  k = uniforms.shape[2]
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature, -1)
  cdf = jnp.cumsum(probs, axis=-1).reshape(n * t, v)                              # [M,V]
  u = uniforms.astype(jnp.float32).reshape(n * t, k) * cdf[:, -1:]                # [M,K]
  idx = jax.vmap(lambda c, q: jnp.searchsorted(c, q, side="right"))(cdf, u)
  return jnp.minimum(idx, v - 1).astype(jnp.int32).reshape(n, t, k)


def otr_token_loss(logits: jax.Array, targets: jax.Array, candidates: jax.Array | None = None, *,
                   beta: float, estimator: str = "mc", temperature: float = 1.0,
                   always_include_gt: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per-position OTR loss ℓ [N,T] (spec §7(b)) and the matched fraction n/K [N,T].

      r_k  = 1 if a_k = y else β                                   (reward of one-token rollout k)
      'mc':    ℓ = −(1/K)·Σ_k sg(r_k)·log π(a_k)
               = −(n/K)·log π(y) − (β/K)·Σ_{k: a_k≠y} log π(a_k),  n = #{k: a_k = y}
      'exact': ℓ = −π′(y)·log π(y) − β·Σ_{a≠y} π′(a)·log π(a)      (the K → ∞ limit)

  Symbols: `logits` z [N,T,V] of the teacher-forced positions (differentiable); `targets` y
  [N,T] the ground-truth tokens; `candidates` a [N,T,K] draws from π′ (`sample_candidates`,
  required for 'mc'); π = softmax(z) at temperature 1 (the training policy, no importance
  correction for sampling from π′); π′ = softmax(sg(z)/τ_s), τ_s = `temperature` (used by
  'exact'; for 'mc' it only shaped the draws); β = `beta` (slightly negative in the paper).
  `always_include_gt` (not in the paper) overwrites candidate 0 with y. No reduction; padding
  positions are computed like the others and masked by `otr_loss`. With β = 0, τ_s = 1 the
  expected gradient is π(y)·∇log π(y) (DFT).
  """
  _check_logits(logits, targets)
  if estimator not in ESTIMATORS:
    raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {estimator!r}")
  z = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(z, axis=-1)                                              # [N,T]
  y = targets.astype(jnp.int32)
  if estimator == "exact":
    if not temperature > 0:
      raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    p_prime = jax.nn.softmax(jax.lax.stop_gradient(z) / temperature, axis=-1)     # [N,T,V]
    logp = z - lse[..., None]                                                     # [N,T,V]
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=jnp.float32)
    w = jnp.where(onehot > 0, 1.0, beta) * p_prime                               # π′(a)·r(a)
    loss = -(w * logp).sum(-1)
    return loss, jax.lax.stop_gradient(jnp.take_along_axis(p_prime, y[..., None], -1)[..., 0])
  if candidates is None:
    raise ValueError("candidates: expected an int array [N,T,K] for estimator='mc', got None")
  if candidates.ndim != 3 or candidates.shape[:2] != targets.shape:
    raise ValueError(f"candidates: expected shape {targets.shape + ('K',)}, got {candidates.shape}")
  a = candidates.astype(jnp.int32)
  if always_include_gt:
    a = a.at[..., 0].set(y)
  k = a.shape[-1]
  match = (a == y[..., None]).astype(jnp.float32)                                # [N,T,K]
  reward = jax.lax.stop_gradient(match + (1.0 - match) * beta)
  lp_a = jnp.take_along_axis(z, a, axis=-1) - lse[..., None]                     # log π(a_k)
  loss = -(reward * lp_a).sum(-1) / k
  return loss, match.mean(-1)


def otr_loss(token_loss: jax.Array, mask: jax.Array, *, normalize: str = "per_sequence",
             denominator: jax.Array | float | None = None) -> jax.Array:
  """Reduce ℓ [N,T] under mask m [N,T] (spec §7(b)).

      'per_sequence':      L = Σ_b [ Σ_t m·ℓ / Σ_t m ] / D,   D = #rows with Σ_t m > 0
      'global_token_mean': L = Σ_{b,t} m·ℓ / D,             D = Σ_{b,t} m

  `denominator` overrides D (the whole minibatch's, when accumulating micro-batches; see
  `otr_denominator`). Padding entries are zeroed before the sum. Returns f32 scalar.
  """
  if token_loss.ndim != 2:
    raise ValueError(f"token_loss: expected shape [N,T], got {token_loss.shape}")
  if mask.shape != token_loss.shape:
    raise ValueError(f"mask: expected shape {token_loss.shape}, got {mask.shape}")
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
  m = mask.astype(jnp.float32)
  masked = jnp.where(m > 0, token_loss.astype(jnp.float32) * m, 0.0)
  if normalize == "per_sequence":
    num = (masked.sum(1) / jnp.maximum(m.sum(1), 1.0)).sum()
  else:
    num = masked.sum()
  d = otr_denominator(mask, normalize) if denominator is None else jnp.asarray(denominator, jnp.float32)
  return num / jnp.where(d > 0, d, 1.0)


def otr_denominator(mask: jax.Array, normalize: str) -> jax.Array:
  """D of `otr_loss` for mask [N,T]: valid rows ('per_sequence') or valid tokens. f32 []."""
  if normalize not in NORMALIZE:
    raise ValueError(f"normalize: expected one of {NORMALIZE}, got {normalize!r}")
  m = mask.astype(jnp.float32)
  return (m.sum(1) > 0).sum().astype(jnp.float32) if normalize == "per_sequence" else m.sum()


LOSSES = {"otr": otr_token_loss}
