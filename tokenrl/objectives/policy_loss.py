"""PPO-clip policy loss of the GRPO family, its aggregation modes, and the clipped value loss.

Notation (spec `objectives-grpo-family.md` §0, shape alphabet of DESIGN.md): `N` sequences,
`T` completion positions, `m [N,T]` the loss mask (1 on generated tokens, EOS included),
`L_i = Σ_t m[i,t]`, `ℓ [N,T]` a per-token loss. Every loss here is `numerator / denominator`,
and the denominator can be passed in (`global_denominator`): computing it once over the whole
optimiser minibatch with `loss_denominator` and summing the per-micro-batch losses gives exactly
the whole-minibatch loss (and gradient), whatever the micro-batch lengths.
"""

import jax
import jax.numpy as jnp

from tokenrl.objectives import kl as kl_lib

# verl's `loss_agg_mode` strings.
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                  "seq-mean-token-sum-norm")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# exp(±20): bounds ratios where a log-ratio explodes (verl clamps the log-ratio at ±20 too).
_LOG_RATIO_CLAMP = 20.0


def _check_same(name: str, x, ref_shape) -> None:
  if x is not None and x.shape != ref_shape:
    raise ValueError(f"{name}: expected shape {ref_shape}, got {x.shape}")


def _check_mode(loss_agg_mode: str) -> None:
  if loss_agg_mode not in LOSS_AGG_MODES:
    raise ValueError(f"loss_agg_mode: expected one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")


def loss_denominator(
    mask: jax.Array, loss_agg_mode: str, *, loss_scale_factor: float | None = None
) -> jax.Array:
  """The scalar denominator `D` of `aggregate_loss` for `mask [N,T]`; f32.

      token-mean               D = Σ_{i,t} m[i,t]         (valid tokens)
      seq-mean-token-mean      D = N                      (sequences; rows with L_i = 0 count)
      seq-mean-token-sum       D = N
      seq-mean-token-sum-norm  D = N · L_norm,  L_norm = loss_scale_factor, default T

  For micro-batch accumulation call it on the whole minibatch mask (or sum it over the
  micro-batches: every `D` is additive over rows) and pass it as `global_denominator`.
  """
  _check_mode(loss_agg_mode)
  if mask.ndim != 2:
    raise ValueError(f"mask: expected shape [N,T], got {mask.shape}")
  n, t = mask.shape
  if loss_agg_mode == "token-mean":
    return mask.astype(jnp.float32).sum()
  if loss_agg_mode == "seq-mean-token-sum-norm":
    norm = t if loss_scale_factor is None else loss_scale_factor
    if not norm > 0:
      raise ValueError(f"loss_scale_factor: expected > 0 or None, got {loss_scale_factor!r}")
    return jnp.asarray(n * norm, jnp.float32)
  return jnp.asarray(n, jnp.float32)


def aggregate_loss(
    loss: jax.Array,
    mask: jax.Array,
    loss_agg_mode: str = "token-mean",
    *,
    loss_scale_factor: float | None = None,
    global_denominator: jax.Array | float | None = None,
) -> jax.Array:
  """Reduce a per-token loss `ℓ [N,T]` under mask `m [N,T]` to a scalar (verl's names).

      token-mean               Σ_{i,t} m·ℓ / Σ_{i,t} m                 DAPO (Yu et al. 2025)
      seq-mean-token-mean      (1/N) Σ_i ( Σ_t m·ℓ / L_i )             GRPO (Shao et al. 2024)
      seq-mean-token-sum       (1/N) Σ_i Σ_t m·ℓ                       REINFORCE on sequence log-probs
      seq-mean-token-sum-norm  Σ_{i,t} m·ℓ / (N · L_norm)              Dr.GRPO (Liu et al. 2025)

  `L_i = max(Σ_t m[i,t], 1)`; `L_norm` = `loss_scale_factor` (a constant, default the padded
  length T; set it to the maximum generation length to match TRL's `dr_grpo`). The denominator
  is `global_denominator` when given (see `loss_denominator`), otherwise that of this call.
  Returns a f32 scalar.
  """
  _check_mode(loss_agg_mode)
  if loss.ndim != 2:
    raise ValueError(f"loss: expected shape [N,T], got {loss.shape}")
  _check_same("mask", mask, loss.shape)
  m = mask.astype(jnp.float32)
  masked = jnp.where(m > 0, loss.astype(jnp.float32) * m, 0.0)  # padding NaN/inf never leaks
  if loss_agg_mode == "seq-mean-token-mean":
    numerator = (masked.sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)).sum()
  else:
    numerator = masked.sum()
  if global_denominator is None:
    denom = loss_denominator(mask, loss_agg_mode, loss_scale_factor=loss_scale_factor)
  else:
    denom = jnp.asarray(global_denominator, jnp.float32)
  # An all-masked batch has numerator 0: return 0, not 0/0.
  return numerator / jnp.where(denom > 0, denom, 1.0)


def truncated_importance_weights(
    old_logp: jax.Array, sampler_logp: jax.Array, cap: float
) -> jax.Array:
  """Truncated importance sampling (TIS) between the sampler and the trainer, `[N,T]` f32.

      w[i,t] = sg[ min( exp(old_logp − sampler_logp), C ) ]

  `old_logp [N,T]` is the trainer's log-prob of the rollout token before the update,
  `sampler_logp [N,T]` the one reported by the sampler (different kernels or precision give
  different numbers), `C` = `cap` (verl `tis_imp_ratio_cap`, e.g. 2). It corrects for the
  rollout having been drawn from the sampler's distribution (Yao et al. 2025, "Your efficient RL
  framework secretly brings you off-policy RL training").
  """
  if not cap > 0:
    raise ValueError(f"cap: expected > 0, got {cap!r}")
  _check_same("sampler_logp", sampler_logp, old_logp.shape)
  log_w = old_logp.astype(jnp.float32) - sampler_logp.astype(jnp.float32)
  w = jnp.minimum(jnp.exp(jnp.minimum(log_w, _LOG_RATIO_CLAMP)), cap)
  return jax.lax.stop_gradient(w)


def _where_valid(x: jax.Array, m: jax.Array) -> jax.Array:
  return jnp.where(m > 0, x.astype(jnp.float32), 0.0)


def _masked_mean(x: jax.Array, m: jax.Array) -> jax.Array:
  return (_where_valid(x, m) * m).sum() / jnp.maximum(m.sum(), 1.0)


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ref_logp: jax.Array | None = None,
    sampler_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip_ratio_c: float | None = None,
    importance_sampling_level: str = "token",
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    kl_clamp: float | None = kl_lib.K3_CLAMP,
    use_bias_correction_kl: bool = False,
    entropy_coeff: float = 0.0,
    token_weights: jax.Array | None = None,
    tis_imp_ratio_cap: float | None = None,
    global_denominator: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped-surrogate policy loss of PPO / GRPO / DAPO / Dr.GRPO / GSPO, with KL and entropy terms.

  Per token (spec §0–1), with `A` the advantage broadcast to `[N,T]`:

      ρ[i,t] = exp(logp − old_logp)                                   importance_sampling_level='token'
      ρ[i,t] = sg[s_i] · exp(logp − sg[logp]),                         ='sequence' (GSPO-token)
               s_i = exp( Σ_t m·(logp − old_logp) / L_i )              (value s_i, grad s_i·∇logp)
      pg     = −min( ρ·A, clip(ρ, 1−ε_l, 1+ε_h)·A )                    PPO clip, clip-higher (DAPO)
      pg     = min(pg, −c·A)   where A < 0                             dual clip (Ye et al. 2020)
      ℓ      = w_tis · w_tok · pg  +  β · [ρ ·] KL_k(logp, ref_logp)  −  c_H · H
      loss   = aggregate_loss(ℓ, m, loss_agg_mode)

  Symbols: `logp [N,T]` current policy (differentiable); `old_logp [N,T]` behaviour policy
  (constant); `advantages` `[N]` (broadcast) or `[N,T]` (constant); `m` = `mask [N,T]`;
  `ε_l` = `epsilon`; `ε_h` = `epsilon_high` (default `ε_l`; DAPO 0.28; GSPO 3e-4/4e-4);
  `c` = `clip_ratio_c` (verl; None = off, otherwise > 1, verl uses 3); `w_tis` =
  `truncated_importance_weights(old_logp, sampler_logp, tis_imp_ratio_cap)` when the cap is set
  (None = off); `w_tok` = `token_weights [N,T]` (default 1), the hook for token-level methods,
  used as given (detach weights computed from model outputs yourself); `β` = `beta` with
  `KL_k` the per-token estimator `kl_estimator` (k1/k2/k3/..., see `kl.py`; `ref_logp` required
  when β ≠ 0), the k3 family clamped at ±`kl_clamp` (10 = verl's 'low_var_kl'; 0/None = off,
  TRL's GRPO KL); `[ρ ·]`: with `use_bias_correction_kl` (TRL name; DeepSeek-V3.2) the KL is
  multiplied by the same importance ratio ρ as the surrogate, not detached (TRL multiplies by
  its `coef_1`), so it estimates KL(π_θ‖π_ref) from samples of π_old; with one update per
  rollout ρ = 1 in value but the gradient gains `KL_k·∇logp`; `c_H` = `entropy_coeff` with `H` = `entropy [N,T]` (required when c_H ≠ 0). The
  entropy bonus and the KL term are aggregated like the policy term (verl). With one update per
  rollout `logp = old_logp` in value, so ρ = 1, nothing is clipped and the gradient is
  `−A·∇logp` per token. Papers: PPO (Schulman et al. 2017), GRPO (Shao et al. 2024), DAPO
  (Yu et al. 2025), Dr.GRPO (Liu et al. 2025), GSPO (Zheng et al. 2025).

  Returns:
    `(loss, metrics)`: a f32 scalar and a dict of f32 scalars (masked means over this call's
    valid tokens): `pg_loss`, `ratio_mean`/`ratio_min`/`ratio_max`, `clipfrac_low` (ρ < 1−ε_l and
    A < 0), `clipfrac_high` (ρ > 1+ε_h and A > 0), `clipfrac`, `approx_kl` (k3 of π_θ vs
    π_old), `num_tokens`; plus `clipfrac_dual` when dual clip is on, `kl` when `ref_logp` is
    given (ρ-corrected with `use_bias_correction_kl`, as TRL logs it), `entropy` when `entropy`
    is given, `tis_weight_mean`/`sampler_kl` when `sampler_logp` is given.
  """
  if logp.ndim != 2:
    raise ValueError(f"logp: expected shape [N,T], got {logp.shape}")
  shape = logp.shape
  _check_same("old_logp", old_logp, shape)
  _check_same("mask", mask, shape)
  _check_same("ref_logp", ref_logp, shape)
  _check_same("sampler_logp", sampler_logp, shape)
  _check_same("entropy", entropy, shape)
  _check_same("token_weights", token_weights, shape)
  if advantages.shape not in (shape[:1], shape):
    raise ValueError(f"advantages: expected shape {shape[:1]} or {shape}, got {advantages.shape}")
  _check_mode(loss_agg_mode)
  if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
    raise ValueError(f"importance_sampling_level: expected one of {IMPORTANCE_SAMPLING_LEVELS}, "
                     f"got {importance_sampling_level!r}")
  epsilon_high = epsilon if epsilon_high is None else epsilon_high
  if not (0 <= epsilon < 1 and epsilon_high >= 0):
    raise ValueError(f"epsilon, epsilon_high: expected 0 <= epsilon < 1 and epsilon_high >= 0, "
                     f"got {epsilon!r}, {epsilon_high!r}")
  if clip_ratio_c is not None and not clip_ratio_c > 1:
    raise ValueError(f"clip_ratio_c: expected > 1 or None, got {clip_ratio_c!r}")
  if beta != 0.0 and ref_logp is None:
    raise ValueError(f"ref_logp: expected an array [N,T] when beta != 0 (beta={beta}), got None")
  if entropy_coeff != 0.0 and entropy is None:
    raise ValueError(f"entropy: expected an array [N,T] when entropy_coeff != 0 "
                     f"(entropy_coeff={entropy_coeff}), got None")
  if tis_imp_ratio_cap is not None and sampler_logp is None:
    raise ValueError("sampler_logp: expected an array [N,T] when tis_imp_ratio_cap is set, got None")
  if kl_estimator not in kl_lib.KL_ESTIMATORS:
    raise ValueError(f"kl_estimator: expected one of {tuple(kl_lib.KL_ESTIMATORS)}, "
                     f"got {kl_estimator!r}")

  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  # Padding positions may hold anything (±inf, NaN from a pad id of −1): every per-token input
  # is zeroed there first, so no value or gradient (0·inf = NaN) can leak from them.
  def valid(x):
    return None if x is None else _where_valid(x, m)

  lp = valid(logp)
  old = sg(valid(old_logp))
  adv = sg(advantages).astype(jnp.float32)
  adv = valid(jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, shape))
  ref_logp, sampler_logp = valid(ref_logp), valid(sampler_logp)
  entropy, token_weights = valid(entropy), valid(token_weights)

  log_ratio = lp - old                                          # [N,T]
  if importance_sampling_level == "token":
    log_is = log_ratio
  else:
    seq_log_ratio = (log_ratio * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)   # [N]
    log_is = sg(seq_log_ratio)[:, None] + lp - sg(lp)          # value log s_i, grad ∇logp
  ratio = jnp.exp(jnp.clip(log_is, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))            # [N,T]

  pg_unclipped = -adv * ratio
  pg_clipped = -adv * jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
  pg = jnp.maximum(pg_unclipped, pg_clipped)                   # = −min(ρA, clip(ρ)A)
  metrics = {}
  if clip_ratio_c is not None:
    pg_dual = -adv * clip_ratio_c
    dual = (adv < 0) & (pg_dual < pg)
    metrics["clipfrac_dual"] = _masked_mean(dual.astype(jnp.float32), m)
    pg = jnp.where(adv < 0, jnp.minimum(pg, pg_dual), pg)
  if tis_imp_ratio_cap is not None:
    pg = pg * truncated_importance_weights(old, sampler_logp, tis_imp_ratio_cap)
  if token_weights is not None:
    pg = pg * token_weights

  per_token = pg
  if ref_logp is not None:
    kl_tok = kl_lib.kl_penalty(lp, ref_logp, kl_estimator, kl_clamp=kl_clamp)   # [N,T]
    if use_bias_correction_kl:
      kl_tok = kl_tok * ratio                                  # TRL: per_token_kl * coef_1
    metrics["kl"] = sg(_masked_mean(kl_tok, m))
    if beta != 0.0:
      per_token = per_token + beta * kl_tok
  if entropy is not None:
    metrics["entropy"] = sg(_masked_mean(entropy, m))
    if entropy_coeff != 0.0:
      per_token = per_token - entropy_coeff * entropy

  agg = dict(loss_agg_mode=loss_agg_mode, loss_scale_factor=loss_scale_factor,
             global_denominator=global_denominator)
  loss = aggregate_loss(per_token, m, **agg)

  is_valid = m > 0
  any_valid = is_valid.any()
  ratio_v = sg(ratio)
  low = (ratio_v < 1.0 - epsilon) & (adv < 0)
  high = (ratio_v > 1.0 + epsilon_high) & (adv > 0)
  neg_log_ratio = sg(-log_ratio)                               # log π_old/π_θ per token
  metrics.update(
      pg_loss=sg(aggregate_loss(pg, m, **agg)),
      ratio_mean=_masked_mean(ratio_v, m),
      # 1 (the on-policy value) rather than ±inf when nothing is valid.
      ratio_min=jnp.where(any_valid, jnp.min(jnp.where(is_valid, ratio_v, jnp.inf)), 1.0),
      ratio_max=jnp.where(any_valid, jnp.max(jnp.where(is_valid, ratio_v, -jnp.inf)), 1.0),
      clipfrac_low=_masked_mean(low.astype(jnp.float32), m),
      clipfrac_high=_masked_mean(high.astype(jnp.float32), m),
      clipfrac=_masked_mean((low | high).astype(jnp.float32), m),
      approx_kl=_masked_mean(jnp.expm1(neg_log_ratio) - neg_log_ratio, m),
      num_tokens=m.sum(),
  )
  if sampler_logp is not None:
    d = sg(sampler_logp - old)                                  # log π_sampler/π_old
    metrics["sampler_kl"] = _masked_mean(jnp.expm1(d) - d, m)
    if tis_imp_ratio_cap is not None:
      metrics["tis_weight_mean"] = _masked_mean(
          truncated_importance_weights(old, sampler_logp, tis_imp_ratio_cap), m)
  return loss, metrics


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    cliprange_value: float | None = 0.2,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    global_denominator: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value-head loss of PPO (Schulman et al. 2017; verl/TRL `cliprange_value`).

      V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
      ℓ      = ½ · max( (V − R)², (V_clip − R)² )
      loss   = aggregate_loss(ℓ, m, loss_agg_mode)

  `V` = `values [N,T]` (differentiable), `V_old` = `old_values [N,T]` (rollout-time values,
  constant), `R` = `returns [N,T]` (from `gae_advantages`, constant), `m` = `mask [N,T]`,
  `ε_v` = `cliprange_value` (None = unclipped: `ℓ = ½ (V − R)²`). Returns `(loss, metrics)`
  with `vf_clipfrac` (fraction of valid tokens where the clipped branch is larger) and
  `value_mean`.
  """
  if values.ndim != 2:
    raise ValueError(f"values: expected shape [N,T], got {values.shape}")
  for name, x in (("old_values", old_values), ("returns", returns), ("mask", mask)):
    _check_same(name, x, values.shape)
  if cliprange_value is not None and not cliprange_value > 0:
    raise ValueError(f"cliprange_value: expected > 0 or None, got {cliprange_value!r}")
  sg = jax.lax.stop_gradient
  m = mask.astype(jnp.float32)
  v = _where_valid(values, m)                                   # padding zeroed, as policy_loss
  r = sg(_where_valid(returns, m))
  unclipped = jnp.square(v - r)
  if cliprange_value is None:
    per_token = 0.5 * unclipped
    clipfrac = jnp.zeros((), jnp.float32)
  else:
    v_old = sg(_where_valid(old_values, m))
    v_clip = v_old + jnp.clip(v - v_old, -cliprange_value, cliprange_value)
    clipped = jnp.square(v_clip - r)
    per_token = 0.5 * jnp.maximum(unclipped, clipped)
    clipfrac = _masked_mean(sg((clipped > unclipped).astype(jnp.float32)), m)
  loss = aggregate_loss(per_token, m, loss_agg_mode, loss_scale_factor=loss_scale_factor,
                        global_denominator=global_denominator)
  return loss, {"vf_clipfrac": clipfrac, "value_mean": sg(_masked_mean(v, m))}


LOSSES = {"policy": policy_loss, "value": value_loss}
