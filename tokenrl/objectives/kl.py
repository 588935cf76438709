"""Per-token estimators of KL(π_θ ‖ π_ref) from sampled-token log-probs (Schulman 2020, "Approximating KL").

Each estimator sees only the sampled token's log-probs, `logp [N,T]` under the policy π_θ
(differentiable) and `ref_logp [N,T]` under the reference (a constant), and returns a per-token
`[N,T]` f32 estimate (f64 for f64 inputs) with no reduction; the caller masks and aggregates it
like the policy loss.
With `δ = ref_logp − logp` (the log-ratio π_ref/π_θ at the sampled token, whose expectation under
π_θ is −KL):

    k1  = −δ                        unbiased, high variance, can be < 0   verl 'kl' / 'k1'
    abs = |δ|                       biased, ≥ 0                           verl 'abs'
    k2  = ½·δ²                      biased, low variance, ≥ 0             verl 'mse' / 'k2'
    k3  = clip(e^δ − 1 − δ, ±c)     unbiased if unclamped, low variance   verl 'low_var_kl' / 'k3'
    k1+, k3+ = the value of k1 / k3 with the gradient of k2 (straight-through; verl 'k1+', 'k3+')

All are 0 where `logp = ref_logp`. Equivalences (float64, values and gradients to 1e-6 on random
inputs: tests/objectives/test_peer_equivalence.py):

  * 'k1', 'kl', 'abs', 'k2', 'mse': verl's `kl_penalty` of the same name.
  * 'k3' / 'low_var_kl' with the default `kl_clamp=10.0`: verl's 'low_var_kl', which clamps δ
    to ±20 and the result to [−10, 10] (gradient zero where a clamp is active).
  * 'k3' with `kl_clamp=None` (or 0): TRL's GRPO KL `exp(ref − logp) − (ref − logp) − 1`,
    which has no clamp, for |δ| ≤ 20 (only the ±20 guard on δ remains; e^20 ≈ 4.9e8).
  * the '+' names: verl's straight-through `k2 − sg(k2) + sg(k)`; verl adds it for every name
    ending in '+' except k2/mse (whose gradient already is k2's).

Accuracy. `exp(δ) − δ − 1` in float32 subtracts numbers near 1: at δ = 1e-4 it returns 0 or
~1e-8 for a true 5.0e-9. `expm1(δ) − δ` still cancels (expm1's half-ulp error over a result
~δ²/2: relative error ~5e-4 at δ = 1e-4, ~5e-5 at 1e-2). So k3 = `expm1(δ) − δ` only for
|δ| > 1, where the cancellation costs at most ~2 ulps, and for |δ| ≤ 1 the Taylor series
`δ²·Σ_{n<14} δⁿ/(n+2)!` (truncation < 1e-12 relative): float32 k3 is within ~2e-7 relative of
the float64 value for every δ.
"""

import math

import jax
import jax.numpy as jnp

# verl clamps δ at ±20 before exp (exp(20) ≈ 4.9e8), then k3 itself at ±10 (the default below).
_K3_LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0
# (e^δ − 1 − δ)/δ² = Σ_n δⁿ/(n+2)!: Horner coefficients, highest order first, used for |δ| ≤ 1.
_K3_SERIES = tuple(1.0 / math.factorial(n + 2) for n in reversed(range(14)))
_K3_SERIES_MAX = 1.0


def _expm1_minus_x(delta: jax.Array) -> jax.Array:
  """`e^δ − 1 − δ` without cancellation, elementwise, in δ's dtype. See the module docstring."""
  small = jnp.abs(delta) <= _K3_SERIES_MAX
  x = jnp.where(small, delta, 0.0)        # series never sees a large δ: finite grads on both sides
  acc = jnp.zeros_like(x)
  for c in _K3_SERIES:
    acc = acc * x + c
  return jnp.where(small, x * x * acc, jnp.expm1(delta) - delta)


def _log_ratio(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  if logp.shape != ref_logp.shape:
    raise ValueError(f"ref_logp: expected shape {logp.shape} (as logp), got {ref_logp.shape}")
  dtype = jnp.promote_types(logp.dtype, jnp.float32)            # f32, or f64 for f64 inputs
  return jax.lax.stop_gradient(ref_logp).astype(dtype) - logp.astype(dtype)


def _check_clamp(kl_clamp: float | None) -> float | None:
  if kl_clamp is None or kl_clamp == 0:
    return None
  if not kl_clamp > 0:
    raise ValueError(f"kl_clamp: expected > 0, or 0/None for no clamp, got {kl_clamp!r}")
  return float(kl_clamp)


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`k1 = logp − ref_logp` per token, `[N,T]` → `[N,T]`. See the module docstring."""
  return -_log_ratio(logp, ref_logp)


def kl_abs(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`|logp − ref_logp|` per token (verl 'abs'), `[N,T]` → `[N,T]`. See the module docstring."""
  return jnp.abs(_log_ratio(logp, ref_logp))


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """`k2 = ½ (ref_logp − logp)²` per token, `[N,T]` → `[N,T]`. See the module docstring."""
  return 0.5 * jnp.square(_log_ratio(logp, ref_logp))


def kl_k3(logp: jax.Array, ref_logp: jax.Array, *, kl_clamp: float | None = K3_CLAMP) -> jax.Array:
  """`k3 = clip(e^δ − 1 − δ, −c, c)`, `δ = clip(ref_logp − logp, ±20)`, `[N,T]` → `[N,T]`.

  The DeepSeekMath GRPO penalty `D[i,t]` (spec §0). `c` = `kl_clamp` (default 10, verl's
  'low_var_kl'; 0 or None = no clamp, TRL's GRPO KL). Where the clamp is active the value is `c`
  and the gradient 0 (as torch.clamp). See the module docstring.
  """
  clamp = _check_clamp(kl_clamp)
  delta = jnp.clip(_log_ratio(logp, ref_logp), -_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
  k3 = _expm1_minus_x(delta)
  return k3 if clamp is None else jnp.clip(k3, -clamp, clamp)


def _straight_through(estimator):
  """Value of `estimator`, gradient of k2 (verl's '+' names): `k2 − sg(k2) + sg(k)`."""
  def st(logp, ref_logp, **kwargs):
    k2 = kl_k2(logp, ref_logp)
    value = estimator(logp, ref_logp, **kwargs)
    return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)
  st.__name__ = f"{estimator.__name__}_plus"
  st.__doc__ = f"Value of `{estimator.__name__}`, gradient of `kl_k2` (verl's '+' names)."
  return st


kl_k1_plus = _straight_through(kl_k1)
kl_k3_plus = _straight_through(kl_k3)

# verl's spellings are aliases of the k-names, so configs port unchanged.
KL_ESTIMATORS = {
    "k1": kl_k1, "kl": kl_k1,
    "abs": kl_abs,
    "k2": kl_k2, "mse": kl_k2,
    "k3": kl_k3, "low_var_kl": kl_k3,
    "k1+": kl_k1_plus, "kl+": kl_k1_plus,
    "k3+": kl_k3_plus, "low_var_kl+": kl_k3_plus,
}
_CLAMPED = ("k3", "low_var_kl", "k3+", "low_var_kl+")   # the estimators that take `kl_clamp`


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3", *,
               kl_clamp: float | None = K3_CLAMP) -> jax.Array:
  """Per-token KL estimate `[N,T]` by name: one of `KL_ESTIMATORS` (see the module docstring).

  `kl_clamp` bounds the k3 family at ±`kl_clamp` (default 10 = verl; 0 or None = off, as TRL);
  the other estimators have no clamp (verl's have none) and ignore it.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"estimator: expected one of {tuple(KL_ESTIMATORS)}, got {estimator!r}")
  _check_clamp(kl_clamp)
  if estimator in _CLAMPED:
    return KL_ESTIMATORS[estimator](logp, ref_logp, kl_clamp=kl_clamp)
  return KL_ESTIMATORS[estimator](logp, ref_logp)
