"""RTO: "DPO Meets PPO: Reinforced Token Optimization for RLHF" (Zhong et al. 2024, arXiv
2404.18922; spec objectives-preference-value §3). The token rewards that PPO/GAE then consume.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def last_token_indicator(mask: jax.Array) -> jax.Array:
  """1[t = last valid index of row n] [N,T] f32 for `mask [N,T]` (all 0 on an empty row)."""
  if mask.ndim != 2:
    raise ValueError(f"mask: expected shape [N,T], got {mask.shape}")
  m = mask.astype(jnp.float32)
  t = jnp.arange(m.shape[1])
  last = jnp.max(jnp.where(m > 0, t, -1), axis=1)               # [N], −1 on an empty row
  return (t[None, :] == last[:, None]).astype(jnp.float32) * m


def rto_token_rewards(
    dpo_logp: jax.Array,
    ref_logp: jax.Array,
    old_logp: jax.Array,
    rewards: jax.Array,
    mask: jax.Array,
    *,
    dpo_reward_scale: float = 0.05,
    dpo_reward_clip: float = 0.05,
    kl_coef: float = 0.01,
    reward_clip: float = 10.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RTO's per-token reward (spec §3(b), as zkshan2002/RTO's OpenRLHF `compute_reward`):

      d[n,t] = clip( β1·(lp_dpo − lp_ref), −c, c ) · m          DPO token reward (scale, then clip)
      k[n,t] = (lp_old − lp_ref) · m                           k1 KL of the rollout policy
      r[n,t] = d − β2·k + 1[t = last valid t of row n] · clip(R_n, −R_max, R_max)

  `lp_dpo` = `dpo_logp [N,T]` (frozen DPO model), `lp_ref` = `ref_logp [N,T]` (the SFT /
  RL-start policy, the code's DPO reference too), `lp_old` = `old_logp [N,T]` (rollout policy),
  `R` = `rewards [N]` (the sentence / verifier reward), `m` = `mask [N,T]`; β1 =
  `dpo_reward_scale`, c = `dpo_reward_clip` (0 = no clip), β2 = `kl_coef`, R_max =
  `reward_clip` (0 = no clip). All inputs are constants (stop-gradient). Paper form:
  r = β1·log π_dpo/π_ref − β2·log π_θ/π_ref + β3·1(h=H)·r_MLE with β3 = 1.

  Returns:
    (r [N,T] f32, metrics {'dpo_reward': mean d over valid tokens, 'kl_reward': mean k}).
  """
  if dpo_logp.ndim != 2:
    raise ValueError(f"dpo_logp: expected shape [N,T], got {dpo_logp.shape}")
  shape = dpo_logp.shape
  for name, x in (("ref_logp", ref_logp), ("old_logp", old_logp), ("mask", mask)):
    if x.shape != shape:
      raise ValueError(f"{name}: expected shape {shape} (as dpo_logp), got {x.shape}")
  if rewards.shape != shape[:1]:
    raise ValueError(f"rewards: expected shape {shape[:1]}, got {rewards.shape}")
  for name, x in (("dpo_reward_clip", dpo_reward_clip), ("kl_coef", kl_coef),
                  ("reward_clip", reward_clip)):
    if x < 0:
      raise ValueError(f"{name}: expected >= 0, got {x!r}")
  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  valid = lambda x: jnp.where(m > 0, sg(x).astype(jnp.float32), 0.0)
  d = dpo_reward_scale * (valid(dpo_logp) - valid(ref_logp))
  if dpo_reward_clip > 0:
    d = jnp.clip(d, -dpo_reward_clip, dpo_reward_clip)
  d = d * m
  k = (valid(old_logp) - valid(ref_logp)) * m
  r_seq = sg(rewards).astype(jnp.float32)
  if reward_clip > 0:
    r_seq = jnp.clip(r_seq, -reward_clip, reward_clip)
  r = d - kl_coef * k + last_token_indicator(m) * r_seq[:, None]
  count = jnp.maximum(m.sum(), 1.0)
  return r, {"dpo_reward": d.sum() / count, "kl_reward": k.sum() / count}
