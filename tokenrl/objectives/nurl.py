"""NuRL: nudge prompts with pass rate 0 by re-rolling G − 1 of their rollouts with a hint.

Paper: "Nudging the Boundaries of LLM Reasoning" (arXiv 2509.25666, ICLR 2026), spec
`objectives-grpo-family.md` §8 (procedure from a paper summary; code not seen). A group whose G
rollouts all fail keeps `keep_unhinted` of its original (failed) rollouts and replaces the other
G − keep with rollouts sampled from q ⊕ h, h a self-generated abstract hint; rewards and
advantages are plain GRPO over the mixed group, so the kept failure guarantees variance whenever
a hinted rollout succeeds. The trigger is `objectives.guide.failing_groups` with threshold 0.

Shapes: B groups of G contiguous rows, N = B·G.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenrl.objectives.advantages import group_relative_advantages
from tokenrl.objectives.guide import failing_groups


def nudged_rows(triggered: jax.Array, group_size: int, keep_unhinted: int = 1) -> jax.Array:
  """bool [N]: the rows a hinted rollout replaces.

      nudged[b·G + j] = triggered[b] ∧ j ≥ keep_unhinted          (j = 0..G−1)

  `triggered` [B] bool; the first `keep_unhinted` rows of a triggered group keep their original
  (failed) rollout (spec §8 (b) 2: "keep 1 rollout without the hint").
  """
  if triggered.ndim != 1:
    raise ValueError(f"triggered: expected shape [B], got {triggered.shape}")
  if not isinstance(group_size, int) or group_size < 2:
    raise ValueError(f"group_size: expected an int >= 2, got {group_size!r}")
  if not 0 <= keep_unhinted < group_size:
    raise ValueError(f"keep_unhinted: expected in [0, {group_size}), got {keep_unhinted!r}")
  j = jnp.arange(group_size)
  return (triggered[:, None] & (j[None, :] >= keep_unhinted)).reshape(-1)


def nurl_advantages(
    rewards: jax.Array,
    hinted_rewards: jax.Array,
    triggered: jax.Array,
    group_size: int,
    *,
    keep_unhinted: int = 1,
    scale_rewards: str = "group",
    epsilon: float = 1e-6,
    ddof: int = 1,
) -> jax.Array:
  """GRPO advantages [N] of the nudged batch (spec §8 (b) 2).

      r'[i] = hinted_rewards[i]  if nudged[i]  (`nudged_rows`)   else  rewards[i]
      A[i]  = group_relative_advantages(r', G)[i]     = (r'_i − μ'_g) / (σ'_g + ε)

  `rewards` [N] first-pass rewards, `hinted_rewards` [N] the hinted re-roll's reward of each row
  (read only where nudged), `triggered` [B] bool; scale_rewards / epsilon / ddof as
  `group_relative_advantages` ('none' = Dr.GRPO). Returns f32 [N].
  """
  if rewards.ndim != 1 or hinted_rewards.shape != rewards.shape:
    raise ValueError(f"hinted_rewards: expected shape {rewards.shape} (as rewards [N]), got "
                     f"{hinted_rewards.shape}")
  if triggered.shape != (rewards.shape[0] // group_size,) or rewards.shape[0] % group_size:
    raise ValueError(f"triggered: expected shape ({rewards.shape[0] // group_size},) for "
                     f"N={rewards.shape[0]}, G={group_size}, got {triggered.shape}")
  nudged = nudged_rows(triggered, group_size, keep_unhinted)
  mixed = jnp.where(nudged, hinted_rewards, rewards).astype(jnp.float32)
  return group_relative_advantages(mixed, group_size, scale_rewards=scale_rewards,
                                   epsilon=epsilon, ddof=ddof)


# name -> function (the module's registry).
NURL_FUNCTIONS = {
    "triggered_groups": failing_groups,
    "nudged_rows": nudged_rows,
    "nurl_advantages": nurl_advantages,
}
