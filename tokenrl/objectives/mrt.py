"""MRT: a dense progress bonus per episode of the reasoning trace (meta-RL view of test-time compute).

Paper: "Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning" (arXiv 2503.07572),
spec `objectives-grpo-family.md` §11. A completion is cut into episodes z_0 .. z_{E−1} at
boundaries 0 = b_0 ≤ b_1 ≤ ... ≤ b_E = L_i; J(c) is the success rate of an answer forced after
context c (estimated on the host by sampling, tokenrl/methods/mrt.py); the progress of episode j
is prog_j = J(c_j ⊕ z_j) − J(c_j), and each token of episode j gets α·prog_j on top of the outcome
advantage. (Adding Σ_j prog_j to the sequence reward would telescope to J(final) − J(x).)

Shapes: N rows, T completion positions, E episodes; J [N,E+1] is J at each boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def budget_boundaries(lengths: jax.Array, num_episodes: int, max_len: int) -> jax.Array:
  """int32 [N,E+1]: episode boundaries of equal token budgets ("budget prefixes").

      k = ⌈T / E⌉,   b[i,j] = min(j·k, L_i)      j = 0..E   (so b[i,0] = 0, b[i,E] = L_i)

  `lengths` [N] = L_i ≤ T = `max_len`; E = `num_episodes`. Episodes past L_i are empty.
  """
  if lengths.ndim != 1:
    raise ValueError(f"lengths: expected shape [N], got {lengths.shape}")
  if not isinstance(num_episodes, int) or num_episodes < 1:
    raise ValueError(f"num_episodes: expected an int >= 1, got {num_episodes!r}")
  if not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
  k = -(-max_len // num_episodes)
  j = jnp.arange(num_episodes + 1, dtype=jnp.int32)
  return jnp.minimum(j[None, :] * k, lengths.astype(jnp.int32)[:, None])


def _check_boundaries(boundaries: jax.Array, mask: jax.Array) -> tuple[int, int, int]:
  if mask.ndim != 2:
    raise ValueError(f"mask: expected shape [N,T], got {mask.shape}")
  n, t = mask.shape
  if boundaries.ndim != 2 or boundaries.shape[0] != n or boundaries.shape[1] < 2:
    raise ValueError(f"boundaries: expected shape [{n},E+1] with E >= 1, got {boundaries.shape}")
  return n, t, boundaries.shape[1] - 1


def episode_index(boundaries: jax.Array, max_len: int) -> jax.Array:
  """int32 [N,T]: j(t), the episode of position t: b[i,j] ≤ t < b[i,j+1] (E − 1 past the end).

      j(t) = Σ_{j=1}^{E−1} 1[t ≥ b[i,j]]
  """
  if boundaries.ndim != 2 or boundaries.shape[1] < 2:
    raise ValueError(f"boundaries: expected shape [N,E+1] with E >= 1, got {boundaries.shape}")
  t = jnp.arange(max_len, dtype=jnp.int32)
  inner = boundaries[:, 1:-1]                                       # [N,E−1]
  return (t[None, :, None] >= inner[:, None, :]).sum(axis=-1).astype(jnp.int32)


def episode_progress(success: jax.Array) -> jax.Array:
  """prog [N,E] = J[:, 1:] − J[:, :-1]: the change of the forced-answer success rate over each
  episode (the paper's r_prg^μ(z_{0:j}; x), Definition 6.1). `success` = J [N,E+1]."""
  if success.ndim != 2 or success.shape[1] < 2:
    raise ValueError(f"success: expected shape [N,E+1] with E >= 1, got {success.shape}")
  return success[:, 1:] - success[:, :-1]


def progress_advantages(outcome_advantages: jax.Array, success: jax.Array, boundaries: jax.Array,
                        mask: jax.Array, *, alpha: float = 1.0) -> jax.Array:
  """MRT token advantages [N,T] (spec §11 (b), [reconstructed] token form).

      A[i,t] = A_out[i] + α · prog[i, j(t)]      on mask = 1, 0 elsewhere

  `outcome_advantages` [N] = A_out (GRPO or Dr.GRPO over the group), `success` [N,E+1] = J at the
  boundaries, `boundaries` [N,E+1] (`budget_boundaries`), `mask` [N,T], α = `alpha`. With
  α = 0 this is the GRPO advantage broadcast over the completion. Returns f32.
  """
  n, t, e = _check_boundaries(boundaries, mask)
  if outcome_advantages.shape != (n,):
    raise ValueError(f"outcome_advantages: expected shape ({n},), got {outcome_advantages.shape}")
  if success.shape != boundaries.shape:
    raise ValueError(f"success: expected shape {boundaries.shape} (as boundaries), got {success.shape}")
  prog = episode_progress(success.astype(jnp.float32))                 # [N,E]
  bonus = jnp.take_along_axis(prog, episode_index(boundaries, t), axis=1)  # [N,T]
  adv = outcome_advantages.astype(jnp.float32)[:, None] + alpha * bonus
  return jnp.where(mask > 0, adv, 0.0)


def termination_baseline_advantages(rewards: jax.Array, success: jax.Array, boundaries: jax.Array,
                                    mask: jax.Array) -> jax.Array:
  """The repository variant (CMU-AIRe/MRT RL README), per episode [reconstructed]:

      A[i,t] = r_i − J[i, j(t)]                  on mask = 1, 0 elsewhere

  the outcome minus the "termination reward" J(c) of the prefix the episode continues from (the
  group baseline replaced by J). `rewards` [N], `success`/`boundaries` [N,E+1], `mask` [N,T].
  """
  n, t, _ = _check_boundaries(boundaries, mask)
  if rewards.shape != (n,):
    raise ValueError(f"rewards: expected shape ({n},), got {rewards.shape}")
  if success.shape != boundaries.shape:
    raise ValueError(f"success: expected shape {boundaries.shape} (as boundaries), got {success.shape}")
  base = jnp.take_along_axis(success.astype(jnp.float32), episode_index(boundaries, t), axis=1)
  return jnp.where(mask > 0, rewards.astype(jnp.float32)[:, None] - base, 0.0)


# name -> function (the module's registry); the advantages are selected by rl.mrt.variant.
MRT_ADVANTAGES = {
    "progress": progress_advantages,
    "termination_baseline": termination_baseline_advantages,
}
MRT_FUNCTIONS = {
    **MRT_ADVANTAGES,
    "budget_boundaries": budget_boundaries,
    "episode_index": episode_index,
    "episode_progress": episode_progress,
}
