"""HAPO: Heterogeneous Adaptive Policy Optimization (spec §5).

"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature" (arXiv id
unconfirmed; the repo badge reads 2507.21848). Token entropy drives four parts: adaptive sampling
temperature, token-level group-average advantages, asymmetric adaptive clipping and differential
advantage redistribution. Reference: starriver030515/HAPO `verl/trainer/ppo/core_algos.py`
(`compute_entropy_h`, `ada_clip`, `ada_advantage`, `compute_hapo_outcome_advantage`,
`compute_policy_loss`) and its vLLM sampler.

Sign: the reference multiplies negative z by 1/min(z) (min(z) < 0), so low-entropy tokens get a
positive ĥ and ĥ ≥ 0 everywhere. The intended sign (ĥ ∈ [−1, 0] for low entropy) is the default;
`legacy_sign=True` reproduces the code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokenrl.objectives import advantages as adv_lib  # the module (not shadowed)
from tokenrl.objectives.policy_loss import aggregate_loss

_LOG_RATIO_CLAMP = 20.0


def _masked_nearest_quantile(x: jax.Array, m: jax.Array, q: float) -> jax.Array:
  """torch.quantile(x[m], q, interpolation='nearest'): sorted[round_half_even(q·(n−1))]."""
  flat = jnp.where(m > 0, x, jnp.inf).reshape(-1)
  count = (m > 0).sum()
  idx = jnp.round(q * jnp.maximum(count - 1, 0)).astype(jnp.int32)
  return jnp.where(count > 0, jnp.sort(flat)[idx], 0.0)


def entropy_norm_stats(entropy: jax.Array, mask: jax.Array, *, pivot: float = 0.8) -> jax.Array:
  """Normalisation constants of ĥ over the valid tokens: f32 `[4]` = (c, σ_e, s⁺, s⁻).

      e   = log(max(H, 1e-6))
      c   = quantile_q(e[m = 1]), 'nearest' interpolation, q = `pivot` (recipes 0.8)
      σ_e = sqrt( max( Σ m·(e − c)² / Σ m, 1e-6 ) )          (RMS around c, not the mean)
      z   = (e − c)/σ_e;  s⁺ = max(z over m = 1, z > 0);  s⁻ = |min(z over m = 1, z < 0)|

  `entropy` H `[N,T]` (any shape), `mask` like it. s⁺/s⁻ default to 1 when no z is > 0 / < 0.
  A constant (stop_gradient). Reference: `compute_entropy_h`.
  """
  if mask.shape != entropy.shape:
    raise ValueError(f"mask: expected shape {entropy.shape}, got {mask.shape}")
  if not 0 <= pivot <= 1:
    raise ValueError(f"pivot: expected in [0, 1], got {pivot!r}")
  m = mask.astype(jnp.float32)
  e = jnp.log(jnp.maximum(jax.lax.stop_gradient(entropy).astype(jnp.float32), 1e-6))
  c = _masked_nearest_quantile(e, m, pivot)
  var = (m * jnp.square(e - c)).sum() / jnp.maximum(m.sum(), 1.0)
  sigma = jnp.sqrt(jnp.maximum(var, 1e-6))
  z = (e - c) / sigma
  pos = (m > 0) & (z > 0)
  neg = (m > 0) & (z < 0)
  s_pos = jnp.where(pos.any(), jnp.max(jnp.where(pos, z, -jnp.inf)), 1.0)
  s_neg = jnp.where(neg.any(), -jnp.min(jnp.where(neg, z, jnp.inf)), 1.0)
  return jnp.stack([c, sigma, s_pos, s_neg])


def apply_entropy_norm(entropy: jax.Array, stats: jax.Array, *,
                       legacy_sign: bool = False) -> jax.Array:
  """ĥ of `entropy` (any shape) under `stats` = (c, σ_e, s⁺, s⁻) from `entropy_norm_stats`.

      z = (log(max(H, 1e-6)) − c)/σ_e
      ĥ = z/s⁺  (z > 0);   z/s⁻ ∈ [−1, 0] (z ≤ 0, intended);   |z|/s⁻ ≥ 0 (z ≤ 0, legacy_sign)

  Within the batch the stats came from, ĥ ∈ [−1, 1]; under another step's stats it can leave it.
  """
  stats = jnp.asarray(stats, jnp.float32)
  if stats.shape != (4,):
    raise ValueError(f"stats: expected shape (4,) = (c, sigma, s_pos, s_neg), got {stats.shape}")
  e = jnp.log(jnp.maximum(jax.lax.stop_gradient(entropy).astype(jnp.float32), 1e-6))
  z = (e - stats[0]) / stats[1]
  neg = jnp.abs(z) / stats[3] if legacy_sign else z / stats[3]
  return jnp.where(z > 0, z / stats[2], neg)


def normalized_entropy(entropy: jax.Array, mask: jax.Array, *, pivot: float = 0.8,
                       legacy_sign: bool = False) -> jax.Array:
  """ĥ `[N,T]` with the statistics of the same tokens (`entropy_norm_stats` then
  `apply_entropy_norm`); zero where m = 0. Constant (stop_gradient)."""
  stats = entropy_norm_stats(entropy, mask, pivot=pivot)
  return apply_entropy_norm(entropy, stats, legacy_sign=legacy_sign) * (mask > 0)


def adaptive_temperature(h_hat: jax.Array, base_temperature: float, tau: float) -> jax.Array:
  """Adaptive sampling temperature `T_t = T₀·(1 + τ_T·clip(ĥ_t, −1, 1))` (same shape as ĥ)."""
  return base_temperature * (1.0 + tau * jnp.clip(h_hat, -1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class AdaptiveTemperature:
  """Sampler logit processor of HAPO's adaptive temperature (hashable: a static jit argument).

  Receives logits / T₀ `[N,V]` and returns logits / T_t: with H the entropy of softmax(logits/T₀)
  (the current step's logits), ĥ = `apply_entropy_norm(H, stats)` with the *previous* step's
  statistics `stats` = (c, σ_e, s⁺, s⁻), T_t/T₀ = 1 + τ·clip(ĥ, −1, 1). The sampler's log-probs and
  entropies are then those of the tempered distribution actually sampled from. When the sampler
  gets `processor_state=stats` (DecodeContext.aux) those traced values are used instead of the
  fields, so a per-step change of the statistics does not recompile the decode loop.
  """

  center: float
  sigma: float
  scale_pos: float
  scale_neg: float
  tau: float
  legacy_sign: bool = False

  def __call__(self, logits: jax.Array, context) -> jax.Array:
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -(jnp.exp(logp) * logp).sum(axis=-1)                     # [N]
    aux = getattr(context, "aux", None)
    if aux is not None:
      # The statistics as traced sampler state (sample(..., processor_state=stats [4])): a
      # new step's statistics reuse the compiled decode loop. The fields are then unused.
      stats = jnp.asarray(aux, jnp.float32)
    else:
      stats = jnp.asarray([self.center, self.sigma, self.scale_pos, self.scale_neg], jnp.float32)
    h_hat = apply_entropy_norm(entropy, stats, legacy_sign=self.legacy_sign)
    factor = adaptive_temperature(h_hat, 1.0, self.tau)               # T_t / T₀, [N]
    return logits / factor[:, None]


def token_group_average_advantages(rewards: jax.Array, lengths: jax.Array, group_size: int, *,
                                   epsilon: float = 1e-6, fallback_threshold: float = 5.0,
                                   fallback_ddof: int = 1,
                                   fallback_epsilon: float = 1e-6,
                                   with_fallback: bool = False):
  """HAPO's token-level group average advantage `[N]` (`compute_hapo_outcome_advantage`).

      μ_g = Σ_i L_i r_i / Σ_i L_i,   σ_g² = Σ_i L_i (r_i − μ_g)² / Σ_i L_i     (token values, ddof 0)
      A[i] = (r_i − μ_g)/(σ_g + ε)
      fallback: if any |A| ≥ 5 in group g, A = GRPO advantage of g (ddof 1, ε 1e-6, verl)

  `rewards [N]`, `lengths` L `[N]` (completion tokens), G = `group_size`, groups contiguous.
  Returns `[N]` f32, or `(advantages [N], fallback [B] bool)` with `with_fallback=True`.
  """
  b = adv_lib._check_rewards(rewards, group_size)  # pylint: disable=protected-access
  if lengths.shape != rewards.shape:
    raise ValueError(f"lengths: expected shape {rewards.shape}, got {lengths.shape}")
  r = rewards.astype(jnp.float32).reshape(b, group_size)
  w = lengths.astype(jnp.float32).reshape(b, group_size)
  tot = jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
  mu = (w * r).sum(axis=1, keepdims=True) / tot
  sigma = jnp.sqrt((w * jnp.square(r - mu)).sum(axis=1, keepdims=True) / tot)
  a = (r - mu) / (sigma + epsilon)                                     # [B,G]
  fallback = adv_lib.group_relative_advantages(rewards, group_size, epsilon=fallback_epsilon,
                                               ddof=fallback_ddof).reshape(b, group_size)
  use_fb = (jnp.abs(a) >= fallback_threshold).any(axis=1, keepdims=True)
  out = jnp.where(use_fb, fallback, a).reshape(-1)
  return (out, use_fb[:, 0]) if with_fallback else out


def adaptive_clip(h_hat: jax.Array, epsilon: float, epsilon_high: float,
                  alpha: float) -> tuple[jax.Array, jax.Array]:
  """Asymmetric adaptive clip `(ε_l', ε_h')`, same shape as ĥ (`ada_clip`).

      ĥ ≤ 0:  ε_l' = ε_l·(1 − α_c·ĥ),  ε_h' = ε_h          (low entropy: wider lower clip)
      ĥ > 0:  ε_l' = ε_l,  ε_h' = ε_h·(1 + α_c·ĥ)          (high entropy: wider upper clip)
  """
  low = h_hat <= 0
  eps_l = jnp.where(low, epsilon * (1.0 - alpha * h_hat), epsilon)
  eps_h = jnp.where(low, epsilon_high, epsilon_high * (1.0 + alpha * h_hat))
  return eps_l, eps_h


def redistribute_advantages(advantages: jax.Array, ratio: jax.Array, h_hat: jax.Array,
                            eps_l: jax.Array, eps_h: jax.Array, beta: float) -> jax.Array:
  """Differential advantage redistribution `A'` (`ada_advantage`), all `[N,T]`, constant.

      neutral = 1 − ε_l'/2 < ρ < 1 + ε_h'/2,    Ã = A·(1 + β_a·ĥ)
      ĥ > 0 (high entropy):  A' = A inside the neutral zone, Ã outside (amplified)
      ĥ ≤ 0 (low entropy):   A' = Ã inside (attenuated), A outside
  """
  sg = jax.lax.stop_gradient
  ratio, h_hat = sg(ratio), sg(h_hat)
  neutral = (ratio > 1.0 - eps_l / 2) & (ratio < 1.0 + eps_h / 2)
  scaled = advantages * (1.0 + beta * h_hat)
  return sg(jnp.where(h_hat > 0, jnp.where(neutral, advantages, scaled),
                      jnp.where(neutral, scaled, advantages)))


def hapo_policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    entropy: jax.Array,
    *,
    entropy_pivot: float = 0.8,
    clip_alpha: float = 1.0,
    adv_beta: float = 1.0,
    epsilon: float = 0.2,
    epsilon_high: float = 0.2,
    clip_ratio_c: float | None = 3.0,
    legacy_sign: bool = False,
    loss_agg_mode: str = "token-mean",
    global_denominator: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """HAPO policy loss: adaptive clip + advantage redistribution + dual clip, token-mean.

      ĥ      = normalized_entropy(sg[H], m)     statistics over THIS call's tokens (the micro-batch,
                                                as the reference computes them per micro-batch)
      ρ      = exp(logp − old_logp)
      ε_l', ε_h' = adaptive_clip(ĥ, ε_l, ε_h, α_c)
      A'     = redistribute_advantages(A, sg[ρ], ĥ, ε_l', ε_h', β_a)
      ℓ      = −min(ρ·A', clip(ρ, 1 − ε_l', 1 + ε_h')·A');   ℓ = min(ℓ, −c·A') where A' < 0
      loss   = aggregate_loss(ℓ, m, loss_agg_mode)             (HAPO: token-mean)

  `logp [N,T]` current (differentiable), `old_logp [N,T]` behaviour, `advantages` `[N]` or
  `[N,T]`, `mask [N,T]`, `entropy` H `[N,T]` of the current forward; ĥ, ε', A' are constants.
  `c` = `clip_ratio_c` (None = off; HAPO 3). Returns (loss, metrics of masked means).
  """
  if logp.ndim != 2:
    raise ValueError(f"logp: expected shape [N,T], got {logp.shape}")
  shape = logp.shape
  for name, x in (("old_logp", old_logp), ("mask", mask), ("entropy", entropy)):
    if x.shape != shape:
      raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
  if advantages.shape not in (shape[:1], shape):
    raise ValueError(f"advantages: expected shape {shape[:1]} or {shape}, got {advantages.shape}")
  if clip_ratio_c is not None and not clip_ratio_c > 1:
    raise ValueError(f"clip_ratio_c: expected > 1 or None, got {clip_ratio_c!r}")
  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  valid = lambda x: jnp.where(m > 0, x.astype(jnp.float32), 0.0)
  lp, old = valid(logp), sg(valid(old_logp))
  adv = sg(advantages).astype(jnp.float32)
  adv = valid(jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, shape))
  h_hat = normalized_entropy(valid(entropy), m, pivot=entropy_pivot, legacy_sign=legacy_sign)
  ratio = jnp.exp(jnp.clip(lp - old, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
  eps_l, eps_h = adaptive_clip(h_hat, epsilon, epsilon_high, clip_alpha)
  a2 = redistribute_advantages(adv, ratio, h_hat, eps_l, eps_h, adv_beta) * m
  pg = jnp.maximum(-a2 * ratio, -a2 * jnp.clip(ratio, 1.0 - eps_l, 1.0 + eps_h))
  dual = jnp.zeros(shape, bool)
  if clip_ratio_c is not None:
    dual = (a2 < 0) & (-a2 * clip_ratio_c < pg)
    pg = jnp.where(a2 < 0, jnp.minimum(pg, -a2 * clip_ratio_c), pg)
  loss = aggregate_loss(pg, m, loss_agg_mode, global_denominator=global_denominator)
  mean = lambda x: (valid(sg(x)) * m).sum() / jnp.maximum(m.sum(), 1.0)
  r = sg(ratio)
  clipped = (r < 1.0 - eps_l) | (r > 1.0 + eps_h)
  metrics = dict(
      pg_loss=sg(loss), hapo_h_hat_mean=mean(h_hat), hapo_eps_low_mean=mean(eps_l),
      hapo_eps_high_mean=mean(eps_h),
      hapo_redistributed_fraction=mean((jnp.abs(a2 - adv) > 1e-12).astype(jnp.float32)),
      clipfrac=mean(clipped.astype(jnp.float32)), clipfrac_dual=mean(dual.astype(jnp.float32)),
      ratio_mean=mean(r), entropy=mean(entropy), num_tokens=m.sum())
  return loss, metrics


HAPO_FNS = {
    "entropy_norm_stats": entropy_norm_stats,
    "apply_entropy_norm": apply_entropy_norm,
    "normalized_entropy": normalized_entropy,
    "adaptive_temperature": adaptive_temperature,
    "token_group_average_advantages": token_group_average_advantages,
    "adaptive_clip": adaptive_clip,
    "redistribute_advantages": redistribute_advantages,
    "hapo_policy_loss": hapo_policy_loss,
}
