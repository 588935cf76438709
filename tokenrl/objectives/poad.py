"""POAD / BAD: Bellman backup with Action Decomposition (Wen et al., "Reinforcing Language Agents
via Policy Optimization with Action Decomposition", NeurIPS 2024; spec objectives-grpo-family §14).

An agent action is several tokens; the environment rewards whole actions. BAD backs values up
token by token with no discount inside an action and the environment's γ between actions, so a
token-level critic is consistent with the action-level MDP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bad_advantages(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    action_end: jax.Array,
    gamma: float,
    lam: float,
    *,
    ntpo: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """BAD advantages and returns over the action tokens of each row (POAD, spec §14(b)).

  Backwards over the valid positions t of a row (`mask = 1`: action tokens; observation tokens
  and padding have `mask = 0` and are skipped without breaking the chain), with t' the next
  valid position (the next token of the same action, or the first token of the next action):

      last token of action k (action_end = 1):
          δ_t = R_k + γ·V_{t'} − V_t,         Â_t = δ_t + γ·λ·Â_{t'}
      inner token (action_end = 0):
          δ_t = V_{t'} − V_t,                 Â_t = δ_t + λ·Â_{t'}     (no γ inside an action)
      Return_t = Â_t + V_t

  `V_{t'} = Â_{t'} = 0` after the row's last valid token (the episode ends: `mask_{k+1} = 0`).
  This is GAE with a per-token discount γ_t = γ at action ends and 1 inside actions;
  `ntpo=True` (the NTPO ablation, naive token-level PPO) discounts inside actions too
  (γ_t = γ everywhere, i.e. plain token-level GAE). With λ = 1 and one terminal action,
  Â_t = R − V_t.

  Args:
    rewards: R [N,T] f32, the action's environment reward at its last token, 0 elsewhere
      (a reward on an inner token is added to δ there, as plain GAE would).
    values: V [N,T] token values from the critic (constant: stop-gradient).
    mask: m [N,T] 1 on action tokens.
    action_end: e [N,T] 1 on the last token of each action (only read where m = 1).
    gamma: γ in [0,1], the discount between actions. lam: λ in [0,1].
    ntpo: discount inside actions too (NTPO ablation).

  Returns:
    (advantages [N,T], returns [N,T]) f32, zero where m = 0. No reduction.
  """
  if rewards.ndim != 2:
    raise ValueError(f"rewards: expected shape [N,T], got {rewards.shape}")
  for name, x in (("values", values), ("mask", mask), ("action_end", action_end)):
    if x.shape != rewards.shape:
      raise ValueError(f"{name}: expected shape {rewards.shape} (as rewards), got {x.shape}")
  if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
    raise ValueError(f"gamma, lam: expected values in [0, 1], got {gamma!r}, {lam!r}")
  r = rewards.astype(jnp.float32)
  v = jax.lax.stop_gradient(values).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  end = action_end.astype(jnp.float32)
  g = jnp.full_like(r, gamma) if ntpo else jnp.where(end > 0, gamma, 1.0)   # γ_t [N,T]

  def step(carry, xs):                                          # carry: next V, next Â  [N] each
    next_v, next_adv = carry
    r_t, v_t, m_t, g_t = xs
    adv = r_t + g_t * next_v - v_t + g_t * lam * next_adv
    # Skipped positions (observations, padding) pass the carry through and emit 0.
    carry = (m_t * v_t + (1 - m_t) * next_v, m_t * adv + (1 - m_t) * next_adv)
    return carry, m_t * adv

  zeros = jnp.zeros(r.shape[:1], jnp.float32)
  _, adv_tn = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T, g.T), reverse=True)
  advantages = adv_tn.T                                         # [N,T]
  return advantages, (advantages + v) * m


def normalize_advantages(
    advantages: jax.Array,
    mask: jax.Array,
    *,
    zeros_as_padding: bool = False,
    epsilon: float = 1e-5,
) -> jax.Array:
  """(A − mean) / (std + ε) over the valid tokens (POAD/MAPPO's nan-mean / nan-std), [N,T] f32.

  Valid = `mask [N,T]` = 1; mean and std (population, ddof 0) are over those tokens only and
  invalid positions come back as 0. `zeros_as_padding=True` is the reference code's rule: it
  marks padding by exact zeros, so a valid token whose advantage is exactly 0 is also left out
  of the statistics (it is still normalised). ε = `epsilon` (MAPPO 1e-5). Call it on one
  optimiser minibatch (the reference normalises per minibatch).
  """
  if advantages.ndim != 2:
    raise ValueError(f"advantages: expected shape [N,T], got {advantages.shape}")
  if mask.shape != advantages.shape:
    raise ValueError(f"mask: expected shape {advantages.shape} (as advantages), got {mask.shape}")
  a = jnp.where(mask > 0, advantages.astype(jnp.float32), 0.0)
  stat = (mask > 0) & (a != 0) if zeros_as_padding else mask > 0
  w = stat.astype(jnp.float32)
  count = jnp.maximum(w.sum(), 1.0)
  mean = (a * w).sum() / count
  std = jnp.sqrt((jnp.square(a - mean) * w).sum() / count)
  return jnp.where(mask > 0, (a - mean) / (std + epsilon), 0.0)
