"""Per-token estimators of KL(π_θ ‖ π_ref) from sampled-token log-probs (Schulman 2020, "Approximating KL").

Each estimator sees only the sampled token's log-probs, `logp [N,T]` under the policy π_θ
(differentiable) and `ref_logp [N,T]` under the reference (a constant), and returns a per-token
`[N,T]` f32 estimate with no reduction; the caller masks and aggregates it like the policy loss.
With `δ = ref_logp − logp` (the log-ratio π_ref/π_θ at the sampled token, whose expectation under
π_θ is −KL):

    k1 = −δ                   unbiased, high variance, can be negative     (verl 'kl' / 'k1')
    k2 = ½·δ²                 biased, low variance, ≥ 0                    (verl 'mse' / 'k2')
    k3 = exp(δ) − δ − 1       unbiased, low variance, ≥ 0; GRPO's choice   (verl 'low_var_kl' / 'k3')

All three are 0 where `logp = ref_logp`.
"""

import jax
import jax.numpy as jnp

# exp(20) ≈ 4.9e8: bounds k3 where a token's log-ratio explodes (verl clamps at ±20 as well).
_K3_LOG_RATIO_CLAMP = 20.0


def _log_ratio(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  if logp.shape != ref_logp.shape:
    raise ValueError(f"ref_logp: expected shape {logp.shape} (as logp), got {ref_logp.shape}")
  return jax.lax.stop_gradient(ref_logp).astype(jnp.float32) - logp.astype(jnp.float32)


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`k1 = logp − ref_logp` per token, `[N,T]` → `[N,T]`. See the module docstring."""
  return -_log_ratio(logp, ref_logp)


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`k2 = ½ (ref_logp − logp)²` per token, `[N,T]` → `[N,T]`. See the module docstring."""
  return 0.5 * jnp.square(_log_ratio(logp, ref_logp))


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`k3 = exp(δ) − δ − 1`, `δ = ref_logp − logp` (clamped to ±20), `[N,T]` → `[N,T]`.

  The DeepSeekMath GRPO penalty `D[i,t]` (spec §0). See the module docstring.
  """
  delta = jnp.clip(_log_ratio(logp, ref_logp), -_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
  return jnp.exp(delta) - delta - 1.0


# verl's spellings are aliases of the k-names, so configs port unchanged.
KL_ESTIMATORS = {
    "k1": kl_k1, "kl": kl_k1,
    "k2": kl_k2, "mse": kl_k2,
    "k3": kl_k3, "low_var_kl": kl_k3,
}


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token KL estimate `[N,T]` by name: one of `KL_ESTIMATORS` (k1/kl, k2/mse, k3/low_var_kl)."""
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"estimator: expected one of {tuple(KL_ESTIMATORS)}, got {estimator!r}")
  return KL_ESTIMATORS[estimator](logp, ref_logp)
