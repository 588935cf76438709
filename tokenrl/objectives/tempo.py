"""TEMPO / Prefix-to-Tree: GRPO plus a branch-gated TD correction on the group's prefix tree.

Paper: "Exploiting Tree Structure for Credit Assignment in RL Training of LLMs" (arXiv 2509.18314,
ICLR 2026); reference code fatebreaker/tempo `core_algos.py::compute_tempo_outcome_advantage`
(spec `objectives-grpo-family.md` §6). The G completions of a prompt form a prefix tree; the value
of a node is the mean reward of the completions through it (no critic), and each token gets the
GRPO advantage plus V(child) − V(parent), which is non-zero only where the group splits.

Shapes: N = B·G rows (groups contiguous), T completion positions, tokens/mask [N,T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check(tokens: jax.Array, mask: jax.Array, group_size: int) -> tuple[int, int, int]:
  if tokens.ndim != 2:
    raise ValueError(f"tokens: expected shape [N,T], got {tokens.shape}")
  if mask.shape != tokens.shape:
    raise ValueError(f"mask: expected shape {tokens.shape} (as tokens), got {mask.shape}")
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size: expected an int >= 1, got {group_size!r}")
  n, t = tokens.shape
  if n % group_size:
    raise ValueError(f"tokens: expected N divisible by group_size G={group_size}, "
                     f"got shape {tokens.shape}")
  return n // group_size, group_size, t


def prefix_match(tokens: jax.Array, mask: jax.Array, group_size: int, *,
                 match_padding: bool = False) -> jax.Array:
  """eq [B,G,G,T] bool: whether completions i and k of a group share i's prefix through t.

      eq[b,i,k,t] = Π_{t' ≤ t} 1[ y[i,t'] = y[k,t'] ∧ m[k,t'] = 1 ]      (a cumprod over t)

  so {k : eq[b,i,k,t]} = C_i(t), the completions sharing y_{i,≤t} (spec §6 (b)). Positions are
  aligned by index (a shared prefix implies equal indices). `tokens`/`mask` [N,T], groups of
  `group_size` contiguous rows. A finished completion (m = 0) never matches a live token;
  `match_padding=True` drops the `m[k,t'] = 1` condition, as the reference code compares raw
  ids (a pad id equal to a live token then matches). Memory O(B·G²·T).
  """
  b, g, t = _check(tokens, mask, group_size)
  y = tokens.reshape(b, g, t)
  same = y[:, :, None, :] == y[:, None, :, :]                      # [B,G(i),G(k),T]
  if not match_padding:
    same = same & (mask.reshape(b, g, t)[:, None, :, :] > 0)
  return jnp.cumprod(same.astype(jnp.int32), axis=-1) > 0


def _node_values(eq: jax.Array, rewards: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(V_after [B,G,T], count [B,G,T]): mean reward and size of C_i(t); V = 0 where C_i(t) = ∅."""
  w = eq.astype(jnp.float32)
  count = w.sum(axis=2)                                           # [B,G,T]
  total = jnp.einsum("bikt,bk->bit", w, rewards)                  # [B,G,T]
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0), count


def tempo_advantages(
    tokens: jax.Array,
    mask: jax.Array,
    rewards: jax.Array,
    group_size: int,
    *,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
    ddof: int = 1,
    td_lambda: float = 1.0,
    legacy_unused_lambda: bool = False,
    match_padding: bool = False,
) -> jax.Array:
  """Per-token TEMPO advantages `A [N,T]` (spec §6 (b)).

      C_i(t)  = { k ∈ g(i) : y_{k,≤t} = y_{i,≤t} },  C_i(−1) = g(i)      (see `prefix_match`)
      V(C)    = mean_{k ∈ C} r_k                                         node value, no critic
      δ_i(t)  = V(C_i(t)) − V(C_i(t−1))                                  0 unless C shrinks at t
      A[i,t]  = ( r_i − μ_g + λ·δ_i(t) ) / (σ_g + ε)   norm_adv_by_std (default)
              =   r_i − μ_g + λ·δ_i(t)                 otherwise

  `tokens` [N,T] completion ids, `mask` [N,T] (1 on generated tokens incl. EOS), `rewards` [N],
  groups of `group_size` = G contiguous rows; μ_g, σ_g the group mean and std (`ddof`, verl 1);
  ε = `epsilon`. λ = `td_lambda`; `legacy_unused_lambda=True` ignores it (λ = 1) as the reference
  code, whose `lam` argument is unused (spec §6 (d)). The std also divides the TD term (as the
  code). Tokens on a shared prefix, or after i is alone in its node, get the GRPO advantage
  exactly. Returns f32 [N,T], zero where mask = 0; no reduction.
  """
  b, g, t = _check(tokens, mask, group_size)
  if rewards.shape != (b * g,):
    raise ValueError(f"rewards: expected shape ({b * g},), got {rewards.shape}")
  if ddof not in (0, 1) or ddof >= g and norm_adv_by_std:
    raise ValueError(f"ddof: expected 0 or 1 (< group_size={g} when normalising), got {ddof!r}")
  r = rewards.astype(jnp.float32).reshape(b, g)                   # [B,G]
  mu = r.mean(axis=1, keepdims=True)                              # [B,1]
  eq = prefix_match(tokens, mask, group_size, match_padding=match_padding)
  v_after, _ = _node_values(eq, r)                                # [B,G,T]
  v_before = jnp.concatenate([jnp.broadcast_to(mu[:, :, None], (b, g, 1)), v_after[..., :-1]],
                             axis=-1)
  delta = v_after - v_before                                      # [B,G,T]
  weight = 1.0 if legacy_unused_lambda else td_lambda
  adv = (r - mu)[:, :, None] + weight * delta
  if norm_adv_by_std:
    adv = adv / (r.std(axis=1, ddof=ddof)[:, None, None] + epsilon)
  m = mask.reshape(b, g, t) > 0
  return jnp.where(m, adv, 0.0).reshape(b * g, t)


def branch_stats(tokens: jax.Array, mask: jax.Array, group_size: int, *,
                 match_padding: bool = False) -> tuple[jax.Array, jax.Array]:
  """(branching [N,T] f32, nodes [B] f32): where the prefix tree splits.

      branching[i,t] = m[i,t] · 1[ |C_i(t)| < |C_i(t−1)| ]      (the tokens where δ may be ≠ 0)
      nodes[b]       = number of split nodes of group b: pairs (t, C_i(t−1)) with a branching
                       token, each counted once (by its lowest-index member i)

  A node also "splits" when a member finished at t−1 (its later positions match nothing).
  """
  b, g, t = _check(tokens, mask, group_size)
  eq = prefix_match(tokens, mask, group_size, match_padding=match_padding)
  count = eq.sum(axis=2)                                          # [B,G,T]
  count_before = jnp.concatenate([jnp.full((b, g, 1), g, count.dtype), count[..., :-1]], axis=-1)
  m = mask.reshape(b, g, t) > 0
  branching = m & (count < count_before)                          # [B,G,T]
  eq_before = jnp.concatenate([jnp.ones((b, g, g, 1), bool), eq[..., :-1]], axis=-1)
  rep = jnp.argmax(eq_before, axis=2)                             # [B,G,T] first member of the node
  first = rep == jnp.arange(g)[None, :, None]
  nodes = (branching & first).sum(axis=(1, 2)).astype(jnp.float32)
  return branching.reshape(b * g, t).astype(jnp.float32), nodes


# name -> function (the module's registry).
TEMPO_FUNCTIONS = {
    "tempo_advantages": tempo_advantages,
    "prefix_match": prefix_match,
    "branch_stats": branch_stats,
}
