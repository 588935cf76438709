"""AnytimeReasoner / BRPO: budget-relative advantages for anytime reasoning (spec §9).

"Optimizing Anytime Reasoning via Budget Relative Policy Optimization" (arXiv 2505.13438);
formulas from the reference code `verl/trainer/ppo/brpo.py` (AnytimeReasoner repository).

Shapes: B prompts, G thinking traces per prompt, S budgets b_0 < … < b_{S−1}, A summaries per
(trace, budget). A thinking trace z is cut at every budget, A summaries are sampled from each cut,
and the trace gets the dense per-budget score R[b,g,s] = mean_a r[b,g,s,a].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BUDGET_PRIORS = ("uniform", "linear", "base")
VARIANCE_REDUCTIONS = ("brpo", "v2only")
SUMMARY_METHODS = ("brpo", "grpo")


def budget_prior(budgets: jax.Array, kind: str) -> jax.Array:
  """The prior p [S] over budgets b [S] (increasing), in E[Σ_s p_s·R_s].

      uniform: p_s = 1/S;   linear: p_s = b_s / Σ_j b_j;   base: p = (0, …, 0, 1)

  `base` trains for the final budget only (plain outcome reward).
  """
  b = jnp.asarray(budgets, jnp.float32)
  if b.ndim != 1 or b.shape[0] < 1:
    raise ValueError(f"budgets: expected shape [S] with S >= 1, got {b.shape}")
  if kind == "uniform":
    return jnp.full(b.shape, 1.0 / b.shape[0], jnp.float32)
  if kind == "linear":
    return b / b.sum()
  if kind == "base":
    return jnp.zeros(b.shape, jnp.float32).at[-1].set(1.0)
  raise ValueError(f"kind: expected one of {BUDGET_PRIORS}, got {kind!r}")


def budget_scores(summary_rewards: jax.Array) -> jax.Array:
  """R[b,g,s] = mean_a r[b,g,s,a]: the score of trace g of prompt b at budget s.

  summary_rewards: r [B,G,S,A] (1 = correct summary). Returns [B,G,S] f32.
  """
  r = jnp.asarray(summary_rewards, jnp.float32)
  if r.ndim != 4:
    raise ValueError(f"summary_rewards: expected shape [B,G,S,A], got {r.shape}")
  return r.mean(axis=-1)


def thinking_advantages(scores: jax.Array, prior: jax.Array, *,
                        variance_reduction: str = "brpo") -> jax.Array:
  """Advantage A_think[b,g,s] of the thinking tokens of segment s ([b_{s−1}, b_s), b_{−1} = 0).

      RT[g,s] = Σ_{j≥s} p_j·R[g,j]                                   reward-to-go
      V2[s]   = mean_g RT[g,s]                                       group baseline
      V1[g,s] = 0 (s = 0);  (Σ_{j<s} 2^j·R[g,j] / Σ_{j<s} 2^j) · Σ_{j≥s} p_j  (s > 0)
      b[g,s]  = (s·V1[g,s] + (S−s)·V2[s]) / S                        'brpo'
              = V2[s]                                                'v2only' (GRPO-like)
      A_think = RT − b

  V1 is the trace's own discounted mean of its earlier-budget scores (weights 2^j), scaled by
  the prior mass still ahead. No std normalisation. Every group of one prompt b is independent.

  scores: R [B,G,S]; prior: p [S]. Returns [B,G,S] f32 (constants: no gradient flows).
  """
  R = jnp.asarray(scores, jnp.float32)
  p = jnp.asarray(prior, jnp.float32)
  if R.ndim != 3:
    raise ValueError(f"scores: expected shape [B,G,S], got {R.shape}")
  S = R.shape[-1]
  if p.shape != (S,):
    raise ValueError(f"prior: expected shape ({S},) (S of scores), got {p.shape}")
  if variance_reduction not in VARIANCE_REDUCTIONS:
    raise ValueError(f"variance_reduction: expected one of {VARIANCE_REDUCTIONS}, "
                     f"got {variance_reduction!r}")
  pr = p * R                                                    # [B,G,S]
  rt = jnp.flip(jnp.cumsum(jnp.flip(pr, -1), axis=-1), -1)      # Σ_{j≥s}
  v2 = rt.mean(axis=1, keepdims=True)                           # [B,1,S]
  if variance_reduction == "v2only":
    return rt - v2
  w = 2.0 ** jnp.arange(S, dtype=jnp.float32)                   # [S]
  num = jnp.cumsum(w * R, axis=-1) - w * R                      # Σ_{j<s} 2^j R_j (exclusive)
  den = jnp.cumsum(w) - w                                       # Σ_{j<s} 2^j; 0 at s = 0
  tail_p = jnp.flip(jnp.cumsum(jnp.flip(p)))                    # Σ_{j≥s} p_j
  v1 = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0) * tail_p
  s = jnp.arange(S, dtype=jnp.float32)
  baseline = (s * v1 + (S - s) * v2) / S
  return jax.lax.stop_gradient(rt - baseline)


def summary_advantages(summary_rewards: jax.Array, *, summary_method: str = "brpo") -> jax.Array:
  """Advantage of each summary r[b,g,s,a] (its tokens; the inserted delimiter is not trained).

      A > 1:  A_sum[g,s,a] = r[g,s,a] − mean_{a'} r[g,s,a']      (same truncated trace)
      A = 1:  A_sum[g,s,1] = r[g,s,1] − mean_{g'} r[g',s,1]      (group mean per budget)
      'grpo': the above at the final budget s = S−1 only, 0 at every other budget.

  summary_rewards: [B,G,S,A]. Returns [B,G,S,A] f32.
  """
  r = jnp.asarray(summary_rewards, jnp.float32)
  if r.ndim != 4:
    raise ValueError(f"summary_rewards: expected shape [B,G,S,A], got {r.shape}")
  if summary_method not in SUMMARY_METHODS:
    raise ValueError(f"summary_method: expected one of {SUMMARY_METHODS}, got {summary_method!r}")
  axis = 3 if r.shape[3] > 1 else 1
  adv = r - r.mean(axis=axis, keepdims=True)
  if summary_method == "grpo":
    last = (jnp.arange(r.shape[2]) == r.shape[2] - 1)[None, None, :, None]
    adv = jnp.where(last, adv, 0.0)
  return adv


def segment_token_advantages(segment_advantages: jax.Array, budgets: tuple[int, ...],
                             length: int) -> jax.Array:
  """Per-token advantages [N,T] of thinking traces from per-segment ones [N,S].

  Token t (0-based in the trace) belongs to segment s iff b_{s−1} ≤ t < b_s (b_{−1} = 0);
  tokens at t ≥ b_{S−1} (none when the trace is capped at the last budget) get 0.
  Multiply by the trace mask outside. `budgets`: static increasing ints; `length`: T.
  """
  a = jnp.asarray(segment_advantages, jnp.float32)
  if a.ndim != 2 or a.shape[1] != len(budgets):
    raise ValueError(f"segment_advantages: expected shape [N,{len(budgets)}], got {a.shape}")
  if list(budgets) != sorted(set(budgets)) or budgets[0] < 1:
    raise ValueError(f"budgets: expected strictly increasing positive ints, got {budgets}")
  t = jnp.arange(length)
  seg = jnp.searchsorted(jnp.asarray(budgets), t, side="right")   # [T] in 0..S
  padded = jnp.concatenate([a, jnp.zeros((a.shape[0], 1), jnp.float32)], axis=1)
  return padded[:, seg]


BRPO_FNS = {
    "budget_prior": budget_prior,
    "budget_scores": budget_scores,
    "thinking_advantages": thinking_advantages,
    "summary_advantages": summary_advantages,
    "segment_token_advantages": segment_token_advantages,
}
