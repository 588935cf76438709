"""THR: Token Hidden Reward (Deng et al., arXiv 2510.03669, ICLR 2026; spec §2).

A token's THR measures how much a gradient step on it changes the log-likelihood of its group's
correct responses, through a kernel between tokens = (similarity of the prediction-error vectors)
× (similarity of the final hidden states) (the NTHR kernel of the same authors). GRPO advantages
are then reweighted by the sign of THR with one scalar p. The kernel is [paper via the NTHR
note]; the THR normalisation, the reweighting rule and the τ anchor are [reconstructed] (spec §2f).

Shapes: B groups (prompts), G responses per group, T completion positions, D model dim,
K = padded size of the per-group vocabulary V* (the ids occurring in the group's completions).
The vocabulary restriction is host-side (`restrict_vocab`, numpy); the math is jnp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TAU_MODES = ("zero", "nthr")


def restrict_vocab(probs: np.ndarray, completion: np.ndarray, mask: np.ndarray, group_size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Host side of THR: restrict next-token probabilities to each group's vocabulary V*.

  V*_b = the token ids that occur (mask = 1) in the G completions of group b. Probabilities are
  gathered on V*_b and NOT renormalised (spec §2b). Groups are contiguous rows of G.

  Args:
    probs: f32 [N,T,V] next-token probabilities of the rollout policy (run temperature applied).
    completion: int [N,T] sampled ids. mask: [N,T] 1 on completion tokens.
    group_size: G; N = B·G.
  Returns:
    (q [B,G,T,K] f32, y [B,G,T] int32 index of the sampled id in V*_b (0 where mask = 0),
     valid [B,K] bool: slot k of V*_b is a real id), K = max_b |V*_b| (at least 1).
  """
  probs, completion, mask = np.asarray(probs), np.asarray(completion), np.asarray(mask)
  if probs.ndim != 3:
    raise ValueError(f"probs: expected shape [N,T,V], got {probs.shape}")
  n, t, _ = probs.shape
  if completion.shape != (n, t):
    raise ValueError(f"completion: expected shape {(n, t)}, got {completion.shape}")
  if mask.shape != (n, t):
    raise ValueError(f"mask: expected shape {(n, t)}, got {mask.shape}")
  if group_size < 1 or n % group_size:
    raise ValueError(f"group_size: expected a divisor of N={n}, got {group_size}")
  b = n // group_size
  vocabs = [np.unique(completion[i * group_size:(i + 1) * group_size][
      mask[i * group_size:(i + 1) * group_size] > 0]) for i in range(b)]
  k = max(1, max(v.size for v in vocabs))
  q = np.zeros((b, group_size, t, k), np.float32)
  y = np.zeros((b, group_size, t), np.int32)
  valid = np.zeros((b, k), bool)
  for i, vocab in enumerate(vocabs):
    rows = slice(i * group_size, (i + 1) * group_size)
    q[i, :, :, :vocab.size] = probs[rows][:, :, vocab]
    valid[i, :vocab.size] = True
    if vocab.size:
      pos = np.searchsorted(vocab, completion[rows])              # [G,T]
      y[i] = np.where(mask[rows] > 0, np.minimum(pos, vocab.size - 1), 0)
  return q, y, valid


def thr_kernel_scores(q: jax.Array, y: jax.Array, valid: jax.Array, hidden: jax.Array,
                      mask: jax.Array, correct: jax.Array) -> jax.Array:
  """S[b,j,s] = Σ_{i∈P_b, t} K((i,t),(j,s)), the influence of token (j,s) on the correct ones.

      g[i,t]   = onehot(y[i,t]) − q[i,t]                    [B,G,T,K]  (restricted to V*)
      M_b      = Σ_{i∈P_b} Σ_t m[i,t] · g[i,t] ⊗ h[i,t]      [B,K,D]    (f32)
      S[b,j,s] = g[j,s]ᵀ · M_b · h[j,s]                      [B,G,T]
      K((i,t),(j,s)) = <g[i,t], g[j,s]> · <h[i,t], h[j,s]>

  `q [B,G,T,K]` next-token probabilities on V* (not renormalised), `y [B,G,T]` index of the
  sampled token in V*, `valid [B,K]` real V* slots (padded slots zero g), `h` = `hidden
  [B,G,T,D]` final states (input of the unembedding), `m` = `mask [B,G,T]`, `P_b` = rows with
  `correct [B,G]` > 0.5. Everything is a constant (stop_gradient). Zero where m = 0.
  Paper: NTHR kernel ("On the Effect of Negative Gradient in Group Relative Deep RL").
  """
  if q.ndim != 4:
    raise ValueError(f"q: expected shape [B,G,T,K], got {q.shape}")
  b, g, t, k = q.shape
  if y.shape != (b, g, t):
    raise ValueError(f"y: expected shape {(b, g, t)}, got {y.shape}")
  if valid.shape != (b, k):
    raise ValueError(f"valid: expected shape {(b, k)}, got {valid.shape}")
  if hidden.ndim != 4 or hidden.shape[:3] != (b, g, t):
    raise ValueError(f"hidden: expected shape {(b, g, t)} + (D,), got {hidden.shape}")
  if mask.shape != (b, g, t):
    raise ValueError(f"mask: expected shape {(b, g, t)}, got {mask.shape}")
  if correct.shape != (b, g):
    raise ValueError(f"correct: expected shape {(b, g)}, got {correct.shape}")
  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  err = jax.nn.one_hot(y, k, dtype=jnp.float32) - sg(q).astype(jnp.float32)   # [B,G,T,K]
  err = err * valid[:, None, None, :] * m[..., None]
  h = sg(hidden).astype(jnp.float32) * m[..., None]                            # [B,G,T,D]
  pos = (correct > 0.5).astype(jnp.float32)                                    # [B,G]
  big_m = jnp.einsum("bgtk,bgtd,bg->bkd", err, h, pos)                         # [B,K,D]
  return jnp.einsum("bgtk,bkd,bgtd->bgt", err, big_m, h)                       # [B,G,T]


def token_hidden_reward(scores: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                        kappa: int = 0) -> jax.Array:
  """THR[j,s] = Â[j] · S[j,s] / L_j^κ  ([reconstructed] normalisation, spec §2b).

  `scores` S `[N,T]`, `advantages` Â `[N]` (sequence level, GRPO), `mask [N,T]`,
  `L_j = max(Σ_s m[j,s], 1)`, `κ` = `kappa` ∈ {0, 1} (1 mirrors GRPO's 1/|o| weighting).
  The sign of THR does not depend on κ. Returns `[N,T]` f32, zero where m = 0.
  """
  if scores.ndim != 2:
    raise ValueError(f"scores: expected shape [N,T], got {scores.shape}")
  if advantages.shape != scores.shape[:1]:
    raise ValueError(f"advantages: expected shape {scores.shape[:1]}, got {advantages.shape}")
  if mask.shape != scores.shape:
    raise ValueError(f"mask: expected shape {scores.shape}, got {mask.shape}")
  if kappa not in (0, 1):
    raise ValueError(f"kappa: expected 0 or 1, got {kappa!r}")
  m = mask.astype(jnp.float32)
  length = jnp.maximum(m.sum(axis=1), 1.0) ** kappa                             # [N]
  return advantages[:, None] * scores * m / length[:, None]


def nthr_threshold(scores: jax.Array, mask: jax.Array, correct: jax.Array, group_size: int, *,
                   beta_tau: float = 1.0) -> jax.Array:
  """NTHR's anchor τ_b = β_τ · min_{i∈P_b} mean_t S[i,t], per group, broadcast to rows `[N]`.

  `scores` S `[N,T]`, `mask [N,T]`, `correct [N]` (> 0.5 = in P), G = `group_size`. Groups
  without a correct response (and hence all-zero THR when all rewards are equal) get τ = 0.
  """
  if scores.ndim != 2 or mask.shape != scores.shape:
    raise ValueError(f"mask: expected shape {scores.shape} (as scores [N,T]), got {mask.shape}")
  n = scores.shape[0]
  if correct.shape != (n,):
    raise ValueError(f"correct: expected shape {(n,)}, got {correct.shape}")
  if group_size < 1 or n % group_size:
    raise ValueError(f"group_size: expected a divisor of N={n}, got {group_size}")
  m = mask.astype(jnp.float32)
  mean_s = (scores * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)          # [N]
  pos = (correct > 0.5) & (m.sum(axis=1) > 0)
  per_group = jnp.where(pos, mean_s, jnp.inf).reshape(-1, group_size).min(axis=1)
  tau = beta_tau * jnp.where(jnp.isfinite(per_group), per_group, 0.0)           # [B]
  return jnp.repeat(tau, group_size)


def thr_reweight(advantages: jax.Array, thr: jax.Array, tau: jax.Array, *, p: float,
                 thr_only: bool = False) -> jax.Array:
  """Per-token advantages from THR ([reconstructed] from the reviews, spec §2b).

      reweighting:  A'[j,s] = Â[j]·(1 + p·sign(THR[j,s]))   if |THR[j,s]| > τ_j,  else Â[j]
      THR-only:     A'[j,s] = Â[j]·1[|THR[j,s]| > τ_j]

  `advantages` Â `[N]`, `thr [N,T]`, `tau` `[N]` (per row, e.g. `nthr_threshold`) or a scalar,
  `p` > 0 favours exploitation (greedy accuracy), p < 0 exploration (pass@k). p = 0 without
  THR-only is plain GRPO. Returns `[N,T]` f32 (constants: no gradient through THR).
  """
  if thr.ndim != 2:
    raise ValueError(f"thr: expected shape [N,T], got {thr.shape}")
  if advantages.shape != thr.shape[:1]:
    raise ValueError(f"advantages: expected shape {thr.shape[:1]}, got {advantages.shape}")
  tau = jnp.asarray(tau, jnp.float32)
  if tau.shape not in ((), thr.shape[:1]):
    raise ValueError(f"tau: expected a scalar or shape {thr.shape[:1]}, got {tau.shape}")
  sg = jax.lax.stop_gradient
  thr = sg(thr)
  a = sg(advantages).astype(jnp.float32)[:, None]
  gate = jnp.abs(thr) > (tau[:, None] if tau.ndim else tau)
  if thr_only:
    return a * gate
  return jnp.where(gate, a * (1.0 + p * jnp.sign(thr)), a)


# Registry: name -> pure function (configs select by name).
THR_FNS = {
    "thr_kernel_scores": thr_kernel_scores,
    "token_hidden_reward": token_hidden_reward,
    "nthr_threshold": nthr_threshold,
    "thr_reweight": thr_reweight,
}
