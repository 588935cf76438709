"""Guide-GRPO: train hinted re-rolls of all-fail groups as if they were sampled without the hint.

Paper: "Adaptive Guidance Accelerates Reinforcement Learning of Reasoning Models"
(arXiv 2506.13923); reference code vaskar-open-source-research/guide_rl (`dp_actor.py`,
`core_algos.py::compute_policy_loss`), spec `objectives-grpo-family.md` §7. A group whose G
rollouts all fail is re-rolled from the hinted prompt x ⊕ h; those rows ("off-policy") train on
the unhinted context x, with the behaviour log-prob taken on x ⊕ h:

    ρ[i,t] = π_θ(o_t | x, o_<t) / π_old(o_t | x ⊕ h, o_<t)

which can be far from 1, so the reference code shapes it instead of clipping it:
ρ̃ = ρ / (ρ + γ), ℓ = −ρ̃·A (no clip), γ = the 0.9-quantile of ρ (detached, ≥ 1e-4).
On-policy rows keep the PPO clip. NuRL's `unhinted_is` context reuses this loss.

Shapes: N rows (groups of G contiguous), T completion positions, per-token arrays [N,T].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tokenrl.objectives.policy_loss import aggregate_loss, loss_denominator, policy_loss

GAMMA_STRATEGIES = ("percentile", "constant", "power")
MIN_GAMMA = 1e-4          # the reference clamps the percentile γ at 1e-4
_LOG_RATIO_CLAMP = 20.0   # as policy_loss: exp(±20) bounds a ratio whose log explodes


def failing_groups(correct: jax.Array, group_size: int, threshold: float = 0.001) -> jax.Array:
  """bool [B]: groups whose accuracy mean_g(correct) ≤ `threshold` (Guide: 0.001 = all G fail).

  `correct` [N] in [0,1], groups of `group_size` contiguous rows.
  """
  if correct.ndim != 1:
    raise ValueError(f"correct: expected shape [N], got {correct.shape}")
  if not isinstance(group_size, int) or group_size < 1 or correct.shape[0] % group_size:
    raise ValueError(f"group_size: expected an int >= 1 dividing N={correct.shape[0]}, "
                     f"got {group_size!r}")
  acc = correct.astype(jnp.float32).reshape(-1, group_size).mean(axis=1)
  return acc <= threshold


def masked_quantile(x: jax.Array, mask: jax.Array, q: float, *, fill: float = 1.0) -> jax.Array:
  """The q-quantile of x[mask = 1] with linear interpolation (numpy's default), a f32 scalar.

      s = sorted valid values (n of them), p = q·(n − 1),
      Q = s[⌊p⌋] + (p − ⌊p⌋)·(s[⌊p⌋+1] − s[⌊p⌋])            `fill` when n = 0

  `x`, `mask` of the same shape (any rank); `q` in [0,1]. Static shapes: jit-safe.
  """
  if x.shape != mask.shape:
    raise ValueError(f"mask: expected shape {x.shape} (as x), got {mask.shape}")
  if not 0.0 <= q <= 1.0:
    raise ValueError(f"q: expected in [0, 1], got {q!r}")
  valid = mask.reshape(-1) > 0
  s = jnp.sort(jnp.where(valid, x.reshape(-1).astype(jnp.float32), jnp.inf))
  n = valid.sum()
  pos = q * jnp.maximum(n - 1, 0).astype(jnp.float32)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  frac = pos - lo.astype(jnp.float32)
  s_lo, s_hi = s[lo], s[hi]
  value = s_lo + jnp.where(frac > 0, frac * (s_hi - s_lo), 0.0)
  return jnp.where(n > 0, value, fill)


def off_policy_gamma(ratio: jax.Array, mask: jax.Array, *, strategy: str = "percentile",
                     gamma_value: float = 0.9) -> jax.Array:
  """γ of the ratio shaping, a detached f32 scalar (reference `gamma_strategy`).

      percentile  γ = max( quantile_{gamma_value}(ρ over mask = 1), 1e-4 )   (1 if none)
      constant    γ = gamma_value            (ρ̃ = ρ/(ρ+γ))
      power       γ = gamma_value            (the exponent: ρ̃ = ρ^γ)

  `ratio`, `mask` [N,T] (mask selects the off-policy tokens the quantile is taken over).
  """
  if strategy not in GAMMA_STRATEGIES:
    raise ValueError(f"strategy: expected one of {GAMMA_STRATEGIES}, got {strategy!r}")
  if strategy == "percentile":
    g = jnp.maximum(masked_quantile(jax.lax.stop_gradient(ratio), mask, gamma_value), MIN_GAMMA)
  else:
    g = jnp.asarray(gamma_value, jnp.float32)
  return jax.lax.stop_gradient(g)


def shape_ratio(ratio: jax.Array, gamma: jax.Array | float, strategy: str = "percentile"
                ) -> jax.Array:
  """Guide's shaped ratio ρ̃, same shape as `ratio`.

      percentile / constant   ρ̃ = ρ / (ρ + γ)      ∇ρ̃ = γ/(ρ+γ)² · ρ·∇log π  (≤ ¼ at ρ = γ)
      power                   ρ̃ = ρ^γ

  `gamma` a scalar (detached by the caller).
  """
  if strategy not in GAMMA_STRATEGIES:
    raise ValueError(f"strategy: expected one of {GAMMA_STRATEGIES}, got {strategy!r}")
  if strategy == "power":
    return ratio ** gamma
  return ratio / (ratio + gamma)


def guide_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    behav_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    off_policy: jax.Array,
    *,
    off_policy_shaping: bool = True,
    gamma_strategy: str = "percentile",
    gamma_value: float = 0.9,
    gamma: jax.Array | float | None = None,
    plain_adv_weight: float = 1.0,
    token_weights: jax.Array | None = None,
    sampler_logp: jax.Array | None = None,
    global_denominator: jax.Array | float | None = None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    **policy_loss_options: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Guide-GRPO loss over a batch mixing on-policy rows and hinted (off-policy) rows (spec §7).

  Per token, with A the advantage [N] or [N,T], o_i = `off_policy[i]` ∈ {0,1}, w = token_weights:

      on-policy  (o_i = 0)  ℓ = w · PPO-clip(ρ = exp(logp − old_logp), w_adv·A)   (`policy_loss`)
      off-policy (o_i = 1)  ρ = exp(logp − behav_logp)   π_θ(o|x) / π_old(o|x ⊕ h)
                            ℓ = −w · ρ̃(ρ; γ) · A       (`shape_ratio`, no clip)  off_policy_shaping
                            ℓ = w · PPO-clip(ρ, A)                                 otherwise
      loss = aggregate_loss(ℓ + β·KL − c_H·H, m, loss_agg_mode)   one denominator for all rows

  `logp` [N,T] current policy on the unhinted context (differentiable); `old_logp` [N,T] the
  behaviour log-probs of on-policy rows (constant); `behav_logp` [N,T] log π_old on the hinted
  context x ⊕ h (constant; ignored on on-policy rows); `mask` [N,T]; `off_policy` [N].
  γ = `gamma` when given (one value for the whole rollout batch: the default of the method),
  else `off_policy_gamma(ρ, m·o, strategy, gamma_value)` over the off-policy tokens of *this
  call* — the reference's per-micro-batch quantile, which depends on the micro-batch's
  composition (spec §16.7). w_adv = `plain_adv_weight` scales on-policy advantages (reference
  option, default 1). KL / entropy terms (`policy_loss_options` beta, ref_logp, entropy, ...)
  apply to every row. The denominator is `global_denominator`, else that of `mask`.

  Returns (loss, metrics): `policy_loss`'s metrics plus `offpolicy_ratio_mean` (mean ρ over
  off-policy tokens; 0 when none), `offpolicy_shaped_mean` (mean ρ̃), `guide_gamma`,
  `offpolicy_token_fraction`.
  """
  if logp.ndim != 2:
    raise ValueError(f"logp: expected shape [N,T], got {logp.shape}")
  shape = logp.shape
  for name, x in (("old_logp", old_logp), ("behav_logp", behav_logp), ("mask", mask)):
    if x.shape != shape:
      raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
  if off_policy.shape != shape[:1]:
    raise ValueError(f"off_policy: expected shape {shape[:1]}, got {off_policy.shape}")
  if advantages.shape not in (shape[:1], shape):
    raise ValueError(f"advantages: expected shape {shape[:1]} or {shape}, got {advantages.shape}")
  if gamma_strategy not in GAMMA_STRATEGIES:
    raise ValueError(f"gamma_strategy: expected one of {GAMMA_STRATEGIES}, got {gamma_strategy!r}")
  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  off = off_policy.astype(jnp.float32)[:, None]                    # [N,1]
  on = 1.0 - off
  adv = jnp.broadcast_to(advantages[:, None] if advantages.ndim == 1 else advantages, shape)
  adv = sg(adv.astype(jnp.float32)) * (on * plain_adv_weight + off)
  tw = jnp.ones(shape, jnp.float32) if token_weights is None else token_weights
  denom = (loss_denominator(mask, loss_agg_mode, loss_scale_factor=loss_scale_factor)
           if global_denominator is None else global_denominator)
  agg = dict(loss_agg_mode=loss_agg_mode, loss_scale_factor=loss_scale_factor,
             global_denominator=denom)
  behav = sg(jnp.where(m > 0, behav_logp, 0.0))
  lp = jnp.where(m > 0, logp, 0.0)
  ratio = jnp.exp(jnp.clip(lp - behav, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))  # [N,T]
  m_off = m * off
  if gamma is None:
    g = off_policy_gamma(ratio, m_off, strategy=gamma_strategy, gamma_value=gamma_value)
  else:
    g = sg(jnp.asarray(gamma, jnp.float32))

  if off_policy_shaping:
    # On-policy rows: the PPO clip; off rows carry weight 0 there (their KL/entropy terms stay).
    sampler = None if sampler_logp is None else jnp.where(off > 0, old_logp, sampler_logp)
    loss, metrics = policy_loss(logp, old_logp, adv, mask, token_weights=tw * on,
                                sampler_logp=sampler, **agg, **policy_loss_options)
    shaped = shape_ratio(ratio, g, gamma_strategy)
    loss = loss + aggregate_loss(-tw * shaped * adv, m_off, **agg)
  else:
    # The plain importance ratio π_θ(o|x) / π_old(o|x ⊕ h) inside the PPO clip.
    old_eff = jnp.where(off > 0, behav, old_logp)
    loss, metrics = policy_loss(logp, old_eff, adv, mask, token_weights=tw,
                                sampler_logp=sampler_logp, **agg, **policy_loss_options)
    shaped = ratio
  n_off = m_off.sum()
  metrics.update(
      offpolicy_ratio_mean=sg((ratio * m_off).sum() / jnp.maximum(n_off, 1.0)),
      offpolicy_shaped_mean=sg((shaped * m_off).sum() / jnp.maximum(n_off, 1.0)),
      guide_gamma=g,
      offpolicy_token_fraction=n_off / jnp.maximum(m.sum(), 1.0))
  return loss, metrics


# name -> function (the module's registry).
GUIDE_FUNCTIONS = {
    "guide_policy_loss": guide_policy_loss,
    "failing_groups": failing_groups,
    "off_policy_gamma": off_policy_gamma,
    "shape_ratio": shape_ratio,
    "masked_quantile": masked_quantile,
}
