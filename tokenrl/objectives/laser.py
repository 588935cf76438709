"""LaSeR: last-token self-rewarding (spec §5) — pure functions of [N] arrays.

"LaSeR: Reinforcement Learning with Last-Token Self-Rewarding" (RUCBM/LaSeR, verl fork;
[code-verified]). The self-reward of solution y to prompt x is read from the policy's own
next-token distribution right after y's final (EOS) token:

    r_s = β_v·(log π_θ(z_c | x, y) − c_ref)

z_c is a designated (rarely used) token, c_ref ≈ mean log π_ref(z_c | x, y). The MSE of r_s to
the verifier reward is added to the RLVR loss, r_s later also mixes into the advantages, and at
test time clip(r_s, 0, 1) is a verifier (tokenrl/eval/self_reward.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check_rows(**arrays) -> int:
  n = None
  for name, x in arrays.items():
    if x.ndim != 1:
      raise ValueError(f"{name}: expected shape [N], got {x.shape}")
    if n is None:
      n = x.shape[0]
    elif x.shape[0] != n:
      raise ValueError(f"{name}: expected shape ({n},), got {x.shape}")
  return n


def self_reward_scores(logp_z: jax.Array, *, beta_v: float, c_ref: float | jax.Array) -> jax.Array:
  """r_s[n] = β_v·(lpz[n] − c_ref), [N] f32 (spec §5(b)).

  logp_z: lpz = log π_θ(z_c | x, y) [N] at temperature 1 (spec §5(d): not the rollout τ);
  beta_v: β_v (`self_reward_kl_coef`, 0.1); c_ref: the constant log π_ref(z_c|·) (−23 for
  Qwen2.5-7B; re-estimate per model), a scalar or [N] per-row reference log-probs.
  """
  _check_rows(logp_z=logp_z)
  return beta_v * (logp_z.astype(jnp.float32) - c_ref)


def class_balance_weights(correct: jax.Array, finished: jax.Array) -> jax.Array:
  """w[n] = N/(2·N_c) if r_v = 1 else N/(2·N_i), over finished rows of the batch (spec §5(b)).

  correct: r_v ∈ {0,1} [N]; finished: fin ∈ {0,1} [N] (1 = stopped before the budget).
  N_c = #{fin=1, r_v=1}, N_i = #{fin=1, r_v=0}, N = N_c + N_i; w_c = 0 if N_c = 0, w_i = 0 if
  N_i = 0, all zeros if N = 0. Truncated rows get their class weight too (the loss zeroes them
  through fin). Returns [N] f32.
  """
  _check_rows(correct=correct, finished=finished)
  c = (correct > 0.5).astype(jnp.float32)
  f = (finished > 0).astype(jnp.float32)
  n_c, n_i = (f * c).sum(), (f * (1.0 - c)).sum()
  total = n_c + n_i
  w_c = jnp.where(n_c > 0, total / (2.0 * jnp.maximum(n_c, 1.0)), 0.0)
  w_i = jnp.where(n_i > 0, total / (2.0 * jnp.maximum(n_i, 1.0)), 0.0)
  return jnp.where(c > 0, w_c, w_i)


def self_reward_loss(scores: jax.Array, correct: jax.Array, finished: jax.Array,
                     weights: jax.Array, *, denominator: jax.Array | float | None = None) -> jax.Array:
  """L_sr = Σ_n fin[n]·w[n]·(r_s[n] − r_v[n])² / D (spec §5(b)).

  scores r_s [N] (differentiable), correct r_v [N], finished fin [N], weights w [N]
  (`class_balance_weights`, or ones). D = `denominator`, default N: the mean is over **all**
  rows, truncated ones included (as the reference code). Returns f32 scalar.
  """
  n = _check_rows(scores=scores, correct=correct, finished=finished, weights=weights)
  sq = jnp.square(scores.astype(jnp.float32) - correct.astype(jnp.float32))
  term = jnp.where(finished > 0, weights.astype(jnp.float32) * sq, 0.0)
  d = float(n) if denominator is None else jnp.asarray(denominator, jnp.float32)
  return term.sum() / jnp.where(d > 0, d, 1.0)


def self_reward_advantages(scores: jax.Array, finished: jax.Array, verifier_advantages: jax.Array,
                           group_size: int, *, threshold: float = 0.1) -> jax.Array:
  """A_s [N]: group-normalized clipped self-rewards, falling back to A_v (spec §5(b) step 1–3).

      ŝ = clip(r_s, 0, 1)·fin;   μ_g, σ_g = mean, unbiased std of ŝ over group g (G = 1: 0, 1)
      A_s = (ŝ − μ_g)/σ_g  if σ_g > T  else A_v

  scores r_s [N] (rollout-time, detached), finished fin [N], verifier_advantages A_v [N],
  group_size G (groups contiguous), threshold T. Returns [N] f32.
  """
  n = _check_rows(scores=scores, finished=finished, verifier_advantages=verifier_advantages)
  if not isinstance(group_size, int) or group_size < 1 or n % group_size:
    raise ValueError(f"group_size: expected an int >= 1 dividing N={n}, got {group_size!r}")
  s = jnp.where(finished > 0, jnp.clip(scores.astype(jnp.float32), 0.0, 1.0), 0.0)
  s = jax.lax.stop_gradient(s).reshape(-1, group_size)                           # [B,G]
  if group_size == 1:
    mu, sigma = jnp.zeros_like(s), jnp.ones_like(s)
  else:
    mu = s.mean(axis=1, keepdims=True)
    sigma = s.std(axis=1, ddof=1, keepdims=True)
  a_s = ((s - mu) / jnp.where(sigma > 0, sigma, 1.0)).reshape(-1)
  keep = jnp.broadcast_to(sigma > threshold, s.shape).reshape(-1)
  return jnp.where(keep, a_s, verifier_advantages.astype(jnp.float32))


def mix_advantages(verifier_advantages: jax.Array, self_advantages: jax.Array, *,
                   tau: float) -> jax.Array:
  """Â = (1 − τ)·A_v + τ·A_s, [N] f32 (spec §5(b) step 4; broadcast over tokens by the loss)."""
  _check_rows(verifier_advantages=verifier_advantages, self_advantages=self_advantages)
  if not 0.0 <= tau <= 1.0:
    raise ValueError(f"tau: expected in [0, 1], got {tau!r}")
  return (1.0 - tau) * verifier_advantages.astype(jnp.float32) + tau * self_advantages


def verification_metrics(scores: np.ndarray, correct: np.ndarray, finished: np.ndarray, *,
                         threshold: float = 0.5) -> dict[str, float]:
  """Host metrics of r_s as a verifier of correctness, over finished rows (numpy).

  accuracy: mean 1[clip(r_s,0,1) > threshold] == r_v; auc: P(r_s of a correct row > r_s of an
  incorrect row) + ½ P(tie) (Mann–Whitney; 0.5 when one class is absent, so always finite).
  """
  s, c, f = (np.asarray(x, np.float64).reshape(-1) for x in (scores, correct, finished))
  if not s.shape == c.shape == f.shape:
    raise ValueError(f"scores, correct, finished: expected equal shapes [N], got {s.shape}, "
                     f"{c.shape}, {f.shape}")
  keep = f > 0
  s, c = s[keep], c[keep] > 0.5
  if s.size == 0:
    return {"accuracy": 0.5, "auc": 0.5}
  acc = float(((np.clip(s, 0, 1) > threshold) == c).mean())
  return {"accuracy": acc, "auc": binary_auc(s, c)}


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """ROC AUC of `scores` [M] for binary `labels` [M] (ties count ½); 0.5 if a class is empty."""
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1) > 0.5
  if s.shape != y.shape:
    raise ValueError(f"labels: expected shape {s.shape}, got {y.shape}")
  pos, neg = s[y], s[~y]
  if pos.size == 0 or neg.size == 0:
    return 0.5
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (pos.size * neg.size))


LOSSES = {"laser_self_reward": self_reward_loss}
ADVANTAGES = {"laser_self_reward": self_reward_advantages, "laser_mix": mix_advantages}
