"""Reward and mask shaping of the GRPO family: DAPO dynamic sampling and overlong shaping,
truncated-completion masking, and the top-entropy token selection of the "80/20" paper.

`dynamic_sampling_groups` runs on the host (numpy) because its output length depends on the
data; the others are pure jnp.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def dynamic_sampling_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
  """DAPO dynamic sampling (Yu et al. 2025; verl `algorithm.filter_groups`): the groups to keep.

      keep g  ⇔  max_{i∈g} r[i] > min_{i∈g} r[i]     (the group's rewards are not all equal)

  `rewards [N]` (host array, N = B·G, groups contiguous; pass the task reward or accuracy, before
  overlong shaping, as verl's `filter_groups.metric='acc'`), `G` = `group_size`. A group whose
  rewards are all equal has zero advantage under every group-relative estimator, so it only
  dilutes the batch. Returns the kept group indices `[B_kept]` int64 in increasing order; the
  caller gathers rows `g·G … g·G+G−1` of each kept group and samples more prompts until `B`
  groups are collected (verl caps the rounds with `max_num_gen_batches`).
  """
  r = np.asarray(rewards)
  if r.ndim != 1:
    raise ValueError(f"rewards: expected shape [N] (N = B·G), got {r.shape}")
  if not isinstance(group_size, int) or group_size < 1 or r.shape[0] % group_size:
    raise ValueError(f"group_size: expected an int >= 1 dividing N={r.shape[0]}, "
                     f"got {group_size!r}")
  grouped = r.reshape(-1, group_size)                            # [B,G]
  return np.flatnonzero(grouped.max(axis=1) > grouped.min(axis=1)).astype(np.int64)


def overlong_reward_penalty(
    lengths: jax.Array,
    max_length: int,
    overlong_buffer_len: int,
    overlong_penalty_factor: float = 1.0,
) -> jax.Array:
  """DAPO soft overlong punishment (Yu et al. 2025), added to the task reward; `[N]` f32.

      R_len(L) = 0                                 L ≤ L_max − L_buf
               = κ · ((L_max − L_buf) − L) / L_buf   L_max − L_buf < L ≤ L_max
               = −κ                                L > L_max

  `L` = `lengths [N]` (completion tokens, EOS included), `L_max` = `max_length` (the rollout's
  maximum number of new tokens), `L_buf` = `overlong_buffer_len` (DAPO 4096; 0 = off, returns 0),
  `κ` = `overlong_penalty_factor` (verl name, default 1). Token-based, unlike tunix's
  character count.
  """
  if lengths.ndim != 1:
    raise ValueError(f"lengths: expected shape [N], got {lengths.shape}")
  if not 0 <= overlong_buffer_len <= max_length:
    raise ValueError(f"overlong_buffer_len: expected 0 <= value <= max_length={max_length}, "
                     f"got {overlong_buffer_len!r}")
  if overlong_buffer_len == 0:
    return jnp.zeros(lengths.shape, jnp.float32)
  expected = max_length - overlong_buffer_len
  excess = lengths.astype(jnp.float32) - expected
  penalty = jnp.clip(-excess / overlong_buffer_len, -1.0, 0.0)
  return overlong_penalty_factor * penalty


def mask_truncated_completions(
    mask: jax.Array, tokens: jax.Array, eos_token_id: int | Sequence[int]
) -> jax.Array:
  """Zero the loss mask of rows that never emitted an EOS token (TRL `mask_truncated_completions`).

      m'[i,t] = m[i,t] · 1[ ∃ t': m[i,t'] = 1 and tokens[i,t'] ∈ E ]

  `m` = `mask [N,T]`, `tokens [N,T]` the completion tokens, `E` = `eos_token_id` (one id or a
  list of stop ids). A truncated completion has no outcome to reward, so it is kept out of the
  loss (DAPO's "overlong filtering"). Returns `[N,T]` in the dtype of `mask`.
  """
  if mask.ndim != 2:
    raise ValueError(f"mask: expected shape [N,T], got {mask.shape}")
  if tokens.shape != mask.shape:
    raise ValueError(f"tokens: expected shape {mask.shape} (as mask), got {tokens.shape}")
  eos = jnp.atleast_1d(jnp.asarray(eos_token_id, tokens.dtype))  # [E]
  is_eos = (tokens[..., None] == eos).any(-1) & (mask > 0)      # [N,T]
  return mask * is_eos.any(axis=1, keepdims=True).astype(mask.dtype)


def top_entropy_mask(entropy: jax.Array, mask: jax.Array, quantile: float) -> jax.Array:
  """Keep the top-ρ highest-entropy tokens among valid ones (Wang et al. 2025, "Beyond the 80/20 rule").

      τ_ρ     = the (1−ρ)-quantile (linear interpolation) of { H[i,t] : m[i,t] = 1 }
      s[i,t]  = m[i,t] · 1[ H[i,t] ≥ τ_ρ ]

  `H` = `entropy [N,T]` (stop-gradient), `m` = `mask [N,T]`, `ρ` = `quantile` ∈ (0, 1]
  (TRL/EasyDeL `top_entropy_quantile`; the paper keeps ρ = 0.2; 1.0 keeps every valid token).
  The threshold is computed over all valid tokens of this call: call it on the whole minibatch
  (entropy from the old-policy forward) to select per batch as the paper. Multiply the result
  into the loss mask (the spec's default: the token-mean denominator counts selected tokens, as
  the paper's verl code) or pass it as `token_weights` (TRL: denominator counts all valid
  tokens). Returns `[N,T]` f32 in {0, 1}.
  """
  if entropy.ndim != 2:
    raise ValueError(f"entropy: expected shape [N,T], got {entropy.shape}")
  if mask.shape != entropy.shape:
    raise ValueError(f"mask: expected shape {entropy.shape} (as entropy), got {mask.shape}")
  if not 0 < quantile <= 1:
    raise ValueError(f"quantile: expected 0 < quantile <= 1, got {quantile!r}")
  m = mask.astype(jnp.float32)
  if quantile == 1.0:
    return m
  h = jax.lax.stop_gradient(entropy).astype(jnp.float32)
  valid = m > 0
  threshold = jnp.nanquantile(jnp.where(valid, h, jnp.nan), 1.0 - quantile)
  return (valid & (h >= threshold)).astype(jnp.float32)


SHAPING_FNS = {
    "dynamic_sampling": dynamic_sampling_groups,
    "overlong_penalty": overlong_reward_penalty,
    "mask_truncated_completions": mask_truncated_completions,
    "top_entropy": top_entropy_mask,
}
