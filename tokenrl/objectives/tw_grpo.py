"""TW-GRPO token weights and soft multiple-choice reward (arXiv 2505.24718; spec §4).

"Reinforcing Video Reasoning with Focused Thinking": each position's loss is weighted by how much
the G responses' predictive distributions disagree there (intra-group information density), in
[1, α]. Reference: longmalongma/TW-GRPO `compute_token_importance_kl_logs_uniform` and
`compute_loss` (src/open_r1/trainer/grpo_trainer.py), `accuracy_reward` (src/open_r1/grpo.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The reference clamps the log-ratio u to ±11 before e^u (float overflow guard).
_U_CLAMP = 11.0


def _group_ids(n: int, group_size: int | None, group_ids: jax.Array | None) -> jax.Array:
  if group_ids is None:
    if group_size is None or group_size < 1 or n % group_size:
      raise ValueError(f"group_size: expected a divisor of N={n}, got {group_size}")
    return jnp.arange(n) // group_size
  if group_ids.shape != (n,):
    raise ValueError(f"group_ids: expected shape {(n,)}, got {group_ids.shape}")
  return group_ids


def _group_average(n: int, group_size: int | None, group_ids: jax.Array | None) -> jax.Array:
  """[N,N] matrix whose row i averages over the rows of i's group."""
  gid = _group_ids(n, group_size, group_ids)
  same = (gid[:, None] == gid[None, :]).astype(jnp.float32)
  return same / same.sum(axis=1, keepdims=True)


def tw_response_divergence(logp_full: jax.Array, mask: jax.Array, group_size: int | None = None,
                           *, group_ids: jax.Array | None = None) -> jax.Array:
  """Per-response divergence `D [N,T]` of TW-GRPO (reference code, spec §4b steps 1-3).

      Lp[i,t,v] := −log V                where m[i,t] = 0  (padding = uniform)
      L̄[t,v]    = (1/G) Σ_{i∈g} Lp[i,t,v]                  (mean of log-probs, not a mixture)
      u         = clip(L̄[t,v] − Lp[i,t,v], −11, 11)
      D[i,t]    = Σ_v (e^u − u − 1)                         (k3 form summed over V)

  `logp_full [N,T,V]` full log-prob vectors (log-softmax at the run temperature), `mask [N,T]`;
  groups = contiguous rows of `group_size` G, or rows with equal `group_ids [N]` (any order,
  e.g. a strided micro-batch); positions aligned by absolute index t (as the reference).
  Gradients flow (the caller detaches, or not for the legacy reference behaviour).
  """
  if logp_full.ndim != 3:
    raise ValueError(f"logp_full: expected shape [N,T,V], got {logp_full.shape}")
  n, t, v = logp_full.shape
  if mask.shape != (n, t):
    raise ValueError(f"mask: expected shape {(n, t)}, got {mask.shape}")
  avg = _group_average(n, group_size, group_ids)                   # [N,N]
  lp = jnp.where(mask[..., None] > 0, logp_full.astype(jnp.float32), -jnp.log(float(v)))
  mean = jnp.einsum("ij,jtv->itv", avg, lp)                        # [N,T,V] L̄ of row i's group
  u = jnp.clip(mean - lp, -_U_CLAMP, _U_CLAMP)
  return (jnp.exp(u) - u - 1.0).sum(axis=-1)                       # [N,T]


def tw_divergence(logp_full: jax.Array, mask: jax.Array, group_size: int | None = None, *,
                  group_ids: jax.Array | None = None) -> jax.Array:
  """Group divergence `D̄[t] = (1/G) Σ_{i∈g} D[i,t]`, one row per response `[N,T]` (equal
  within a group); `D = tw_response_divergence(...)` (spec §4b step 4)."""
  d = tw_response_divergence(logp_full, mask, group_size, group_ids=group_ids)
  return _group_average(logp_full.shape[0], group_size, group_ids) @ d


def tw_token_weights(logp_full: jax.Array, mask: jax.Array, group_size: int | None = None, *,
                     group_ids: jax.Array | None = None, alpha: float = 1.7,
                     detach: bool = True) -> jax.Array:
  """TW-GRPO token weights `w [N,T]` in [1, α] (spec §4b steps 5-6).

      n[t]   = (D̄[t] − min_t D̄) / (max_t D̄ − min_t D̄ + 1e-8)   min/max over ALL T positions
      w[i,t] = (1 + (α − 1)·n[t]) · m[i,t]                        the group's w on each response

  `D̄ = tw_divergence(logp_full, mask, group_size, group_ids=group_ids)`; α = `alpha` (1 =
  plain GRPO weights; the published script uses 1.7, the code default 1.4). `detach=True`
  (default) stops gradients through w; `detach=False` reproduces the reference code, whose
  weights are not detached. Loss use: `Σ m·w·ℓ / Σ m` (the denominator is not weighted).
  """
  if alpha < 1:
    raise ValueError(f"alpha: expected >= 1, got {alpha!r}")
  if detach:
    logp_full = jax.lax.stop_gradient(logp_full)
  d = tw_divergence(logp_full, mask, group_size, group_ids=group_ids)   # [N,T]
  lo = d.min(axis=1, keepdims=True)
  hi = d.max(axis=1, keepdims=True)
  w = 1.0 + (alpha - 1.0) * (d - lo) / (hi - lo + 1e-8)
  return w * mask.astype(jnp.float32)


def partial_credit_reward(pred: str, solution: str) -> float:
  """Soft multiple-choice accuracy of TW-GRPO (`accuracy_reward`, spec §4b), host side.

  `pred` / `solution`: the `<answer>` contents (already extracted). Spaces are stripped, both are
  split on commas into option sets S_pred, S_gt: r = |S_pred|/|S_gt| if S_pred ⊆ S_gt, else 0
  (an empty prediction scores 0). The symbolic-equality shortcut of the reference and the +1
  format reward belong to the verifier, not here.
  """
  if not isinstance(pred, str) or not isinstance(solution, str):
    raise ValueError(f"pred, solution: expected str, got {type(pred).__name__}, "
                     f"{type(solution).__name__}")
  split = lambda s: {o for o in s.replace(" ", "").split(",") if o}
  gt, got = split(solution), split(pred)
  if not gt or not got or not got <= gt:
    return 0.0
  return len(got) / len(gt)


TW_GRPO_FNS = {
    "tw_response_divergence": tw_response_divergence,
    "tw_divergence": tw_divergence,
    "tw_token_weights": tw_token_weights,
    "partial_credit_reward": partial_credit_reward,
}
