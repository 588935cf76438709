"""Lion-κ: Lion with the sign replaced by the (sub)gradient ∇κ of a convex function κ.

Paper: L. Chen, B. Liu, K. Liang, Q. Liu, "Lion Secretly Solves Constrained Optimization: As
Lyapunov Predicts", arXiv 2310.05898 (ICLR 2024). Lion itself: Chen et al. 2023, arXiv 2302.06675.

Update, per step t, in optax's gradient-EMA convention (m_0 = 0, g_t = ∇f(x_{t-1})):

  v_t = (1 - β1)·g_t + β1·m_{t-1}          interpolated momentum, used only for the update
  x_t = x_{t-1} - η_t·(∇κ(v_t) + λ·x_{t-1})  decoupled weight decay λ, learning rate η_t
  m_t = (1 - β2)·g_t + β2·m_{t-1}          the EMA uses the *other* beta

With κ = ‖·‖₁, ∇κ = sign and this is exactly `optax.lion` (bit for bit: same expressions, same
order, same state). The paper writes the negative momentum; its K is K(y) = κ(-y), which equals κ
for every even κ here (all but 'logsumexp', defined so that the paper's K = logsumexp holds).
The theorem: the dynamics minimise f(x) + (1/λ)·K*(λx) (up to continuous-time rates), K* the
convex conjugate; for Lion K* is the indicator of the ℓ∞ unit ball, so Lion solves
min f(x) s.t. ‖x‖∞ ≤ 1/λ.

Registry `KAPPAS` (name -> ∇κ). Every entry maps a pytree `x` (one *group*) to a pytree of the
same structure and dtypes. Separable κ (l1, huber, logcosh, quadratic, deadzone) act elementwise,
so grouping does not matter. Non-separable κ (l2, lp, linf, relativistic, logsumexp) reduce over
the group: with grouping='leaf' (default) each parameter array is its own group; with
grouping='global' the whole update tree is one vector. 'nuclear' acts on matrices and is
separable across leaves (the nuclear norm of a block-diagonal matrix is the sum of the blocks'),
so both groupings agree. Reductions run in float32 (or wider); results are cast back to each
leaf's dtype.

  name (aliases)               ∇κ(x)                                 λx is constrained to
  l1 (sign, hard)              sign(x)                               ‖·‖∞ ≤ 1          (Lion)
  huber (clip, refined)        clip(x/δ, -1, 1)                      ‖·‖∞ ≤ 1, + (δ/2)‖·‖²
  logcosh (tanh, smooth)       tanh(β·x)                             ‖·‖∞ ≤ 1, + entropy barrier
  quadratic                    x                                     soft: + ½‖·‖² (momentum SGD)
  deadzone                     sign(x)·1[|x| > τ]                    ‖·‖∞ ≤ 1, + τ‖·‖₁
  l2                           x / max(‖x‖₂, ε)                      ‖·‖₂ ≤ 1
  lp                           sign(x)|x|^(p-1) / ‖x‖_p^(p-1)        ‖·‖_q ≤ 1, 1/p + 1/q = 1
  linf                         sign(x_i)·1[|x_i| = ‖x‖∞] / #ties     ‖·‖₁ ≤ 1
  relativistic                 x / √(‖x‖₂² + c²)                     ‖·‖₂ ≤ 1, + smooth barrier
  logsumexp (entropy)          -softmax(-x)                          probability simplex, + entropy
  nuclear (polar)              U·Vᵀ for x = U·Σ·Vᵀ                   ‖·‖_op ≤ 1        (Muon-like)
"""
from __future__ import annotations

from collections.abc import Callable
import inspect
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any
KappaGrad = Callable[..., PyTree]

__all__ = ["KAPPAS", "kappa_direction", "lion_kappa", "scale_by_lion_kappa"]


# ------------------------------------------------------------------------------------------------
# ∇κ functions. Each takes one group (a pytree; an array is a one-leaf pytree) and κ's parameters
# as keyword arguments, and returns the update direction with the group's structure and dtypes.
# ------------------------------------------------------------------------------------------------


def _acc(x: jax.Array) -> jax.Array:
  """x upcast to the accumulation dtype (at least float32): bf16 norms lose 8 bits otherwise."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _group_sum(leaves: list[jax.Array], fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Σ over all leaves of Σ fn(leaf), in the accumulation dtype; 0.0 for an empty group."""
  total = jnp.zeros([], jnp.float32)
  for leaf in leaves:
    total = total + jnp.sum(fn(_acc(leaf)))
  return total


def _group_max(leaves: list[jax.Array], fn: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """max over all leaves of max fn(leaf); -inf for an empty group."""
  out = jnp.full([], -jnp.inf, jnp.float32)
  for leaf in leaves:
    if leaf.size:
      out = jnp.maximum(out, jnp.max(fn(_acc(leaf))))
  return out


def grad_l1(x: PyTree) -> PyTree:
  """∇‖x‖₁ = sign(x) elementwise (sign(0) = 0 is a valid subgradient). κ* = δ{‖y‖∞ ≤ 1}: Lion."""
  return jax.tree.map(jnp.sign, x)


def grad_huber(x: PyTree, *, delta: float = 1.0) -> PyTree:
  """∇Σ huber_δ(x_i) = clip(x/δ, -1, 1), huber_δ(z) = z²/(2δ) if |z| ≤ δ else |z| - δ/2.

  κ*(y) = (δ/2)‖y‖² + δ{‖y‖∞ ≤ 1}: box plus an ℓ2 penalty. With δ = 1 this is optax
  `scale_by_lion(mode='refined')` bit for bit (x/1.0 is exact, clip saturates to ±1 = sign).
  """
  return jax.tree.map(lambda v: jnp.clip(v / delta, -1.0, 1.0), x)


def grad_logcosh(x: PyTree, *, beta: float = 1.0) -> PyTree:
  """∇Σ (1/β)·log cosh(β·x_i) = tanh(β·x); optax `scale_by_lion(mode='smooth', smooth_beta=β)`.

  κ*(y) = Σ (1/2β)[(1+y_i)ln(1+y_i) + (1-y_i)ln(1-y_i)] on |y_i| ≤ 1: box + entropy barrier.
  """
  return jax.tree.map(lambda v: jnp.tanh(beta * v), x)


def grad_quadratic(x: PyTree) -> PyTree:
  """∇½‖x‖² = x: momentum SGD with decoupled weight decay; κ*(y) = ½‖y‖² (soft ℓ2, no box)."""
  return jax.tree.map(lambda v: v, x)


def grad_deadzone(x: PyTree, *, threshold: float = 0.0) -> PyTree:
  """∇Σ max(|x_i| - τ, 0) = sign(x)·1[|x| > τ], τ = threshold (τ = 0: Lion).

  κ*(y) = τ‖y‖₁ + δ{‖y‖∞ ≤ 1}: box plus an ℓ1 (sparsity) penalty.
  """
  return jax.tree.map(
      lambda v: jnp.where(jnp.abs(v) > threshold, jnp.sign(v), 0).astype(v.dtype), x)


def grad_l2(x: PyTree, *, eps: float = 1e-12) -> PyTree:
  """∇‖x‖₂ = x / max(‖x‖₂, ε), ‖x‖₂ over the whole group. κ* = δ{‖y‖₂ ≤ 1}: normalized momentum.

  The ε floor keeps ‖∇κ‖₂ ≤ 1 (so λx stays in the ball) and maps x = 0 to 0.
  """
  leaves, treedef = jax.tree.flatten(x)
  denom = jnp.maximum(jnp.sqrt(_group_sum(leaves, jnp.square)), eps)
  return treedef.unflatten([(_acc(v) / denom).astype(v.dtype) for v in leaves])


def grad_lp(x: PyTree, *, p: float = 1.5) -> PyTree:
  """∇‖x‖_p = sign(x)·|x|^(p-1) / ‖x‖_p^(p-1), p ≥ 1, over the group ("Lion-ℓp").

  κ* = δ{‖y‖_q ≤ 1} with 1/p + 1/q = 1, so ‖∇κ‖_q = 1. ∇‖·‖_p is 0-homogeneous, so x is first
  divided by ‖x‖∞ (no overflow of |x|^p for large p); then ‖y‖_p ≥ 1 and x = 0 maps to 0.
  """
  leaves, treedef = jax.tree.flatten(x)
  amax = _group_max(leaves, jnp.abs)
  scale = jnp.where(amax > 0, amax, 1.0)
  norm_p = _group_sum(leaves, lambda v: jnp.abs(v / scale) ** p) ** (1.0 / p)
  denom = jnp.maximum(norm_p, 1.0) ** (p - 1.0)
  out = []
  for v in leaves:
    y = _acc(v) / scale
    out.append((jnp.sign(y) * jnp.abs(y) ** (p - 1.0) / denom).astype(v.dtype))
  return treedef.unflatten(out)


def grad_linf(x: PyTree) -> PyTree:
  """∇‖x‖∞ = sign(x_i)·1[|x_i| = ‖x‖∞] / #ties over the group: a greedy-coordinate step.

  With ties, the average of the tied one-hots is a subgradient (the subdifferential is their
  convex hull) and keeps the map permutation-equivariant. κ* = δ{‖y‖₁ ≤ 1}: ℓ1 ball.
  """
  leaves, treedef = jax.tree.flatten(x)
  amax = _group_max(leaves, jnp.abs)
  hits = [(jnp.abs(_acc(v)) == amax) & (amax > 0) for v in leaves]
  count = jnp.zeros([], jnp.float32)
  for h in hits:
    count = count + jnp.sum(h, dtype=jnp.float32)
  count = jnp.maximum(count, 1.0)
  return treedef.unflatten(
      [(jnp.sign(_acc(v)) * h / count).astype(v.dtype) for v, h in zip(leaves, hits)])


def grad_relativistic(x: PyTree, *, c: float = 1.0) -> PyTree:
  """∇√(‖x‖₂² + c²) = x / √(‖x‖₂² + c²), c > 0, over the group.

  κ*(y) = -c·√(1 - ‖y‖²) + δ{‖y‖₂ ≤ 1}: ℓ2 ball with a smooth barrier; ≈ x/c for ‖x‖ ≪ c
  (momentum SGD) and ≈ x/‖x‖ for ‖x‖ ≫ c (normalized momentum).
  """
  leaves, treedef = jax.tree.flatten(x)
  denom = jnp.sqrt(_group_sum(leaves, jnp.square) + jnp.square(jnp.asarray(c, jnp.float32)))
  return treedef.unflatten([(_acc(v) / denom).astype(v.dtype) for v in leaves])


def grad_logsumexp(x: PyTree) -> PyTree:
  """∇κ for κ(x) = log Σ_i exp(-x_i): -softmax(-x) over the group.

  This is the paper's K = log-sum-exp written in optax's momentum sign (K(y) = κ(-y)); then
  K*(z) = Σ z_i ln z_i on the probability simplex, i.e. λx is kept on the simplex (x ≥ 0,
  Σx = 1/λ per group) with an entropy regularizer.
  """
  leaves, treedef = jax.tree.flatten(x)
  zmax = _group_max(leaves, jnp.negative)
  zmax = jnp.where(jnp.isfinite(zmax), zmax, 0.0)
  total = _group_sum(leaves, lambda v: jnp.exp(-v - zmax))
  return treedef.unflatten(
      [(-jnp.exp(-_acc(v) - zmax) / total).astype(v.dtype) for v in leaves])


def _polar(v: jax.Array) -> jax.Array:
  """U·Vᵀ of the thin SVD of each matrix in the last two axes, singular values ≈ 0 dropped."""
  if v.size == 0:
    return v
  a = _acc(v)
  if a.ndim < 2:  # a vector is a 1×n matrix (polar = x/‖x‖), a scalar a 1×1 one (polar = sign)
    a = a.reshape(1, -1)
  u, s, vh = jnp.linalg.svd(a, full_matrices=False)
  # Same cut as numpy's matrix_rank: directions with σ below it are numerically in the null
  # space, where 0 is a valid subgradient (and U·Vᵀ there would be arbitrary).
  tol = jnp.max(s, axis=-1, keepdims=True) * max(a.shape[-2:]) * jnp.finfo(a.dtype).eps
  keep = (s > tol).astype(a.dtype)
  out = jnp.matmul(u * keep[..., None, :], vh, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(v.shape).astype(v.dtype)


def grad_nuclear(x: PyTree) -> PyTree:
  """∇‖X‖_* = U·Vᵀ (polar factor of X = U·Σ·Vᵀ) per leaf. κ* = δ{‖Y‖_op ≤ 1}.

  Leading axes of an array with ndim > 2 are batch axes (e.g. stacked layers [L, D, F] give one
  polar factor per layer); a vector is a 1×n matrix (x/‖x‖₂), a scalar 1×1 (sign). Exact SVD:
  fine for small models; Muon-scale training would use a Newton–Schulz iteration instead.
  """
  return jax.tree.map(_polar, x)


KAPPAS: dict[str, KappaGrad] = {
    "l1": grad_l1,
    "sign": grad_l1,
    "hard": grad_l1,
    "huber": grad_huber,
    "clip": grad_huber,
    "refined": grad_huber,
    "logcosh": grad_logcosh,
    "tanh": grad_logcosh,
    "smooth": grad_logcosh,
    "quadratic": grad_quadratic,
    "deadzone": grad_deadzone,
    "l2": grad_l2,
    "lp": grad_lp,
    "linf": grad_linf,
    "relativistic": grad_relativistic,
    "logsumexp": grad_logsumexp,
    "entropy": grad_logsumexp,
    "nuclear": grad_nuclear,
    "polar": grad_nuclear,
}

GROUPINGS = ("leaf", "global")


# ------------------------------------------------------------------------------------------------
# Validation and resolution of `kappa`.
# ------------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
  """True for Python/numpy scalars; arrays and tracers (inject_hyperparams) are not checked."""
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check(name: str, value: Any, ok: Callable[[float], bool], expected: str) -> None:
  if _is_number(value) and not (math.isfinite(value) and ok(value)):
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def _validate_betas(b1: Any, b2: Any) -> None:
  _check("b1", b1, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
  _check("b2", b2, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def kappa_direction(
    kappa: str | KappaGrad = "l1",
    *,
    grouping: str = "leaf",
    p: float = 1.5,
    delta: float = 1.0,
    beta: float = 1.0,
    c: float = 1.0,
    threshold: float = 0.0,
    eps: float = 1e-12,
    rescale: bool = False,
) -> Callable[[PyTree], PyTree]:
  """The map v ↦ ∇κ(v) over a whole update tree, with κ's parameters bound.

  Args:
    kappa: a name in `KAPPAS`, or a callable ∇κ(x) -> array of x's shape and dtype. A callable
      is applied to each leaf (grouping='leaf') or to the whole tree (grouping='global'), so an
      elementwise callable (e.g. `jnp.tanh`) must be used with grouping='leaf'.
    grouping: 'leaf' (each parameter array is one group) or 'global' (the whole tree is one
      vector) for non-separable κ; separable κ give the same result either way.
    p: the p of 'lp', p ≥ 1 (p = 1: sign, p = 2: 'l2').
    delta: the Huber width δ > 0 of 'huber' (δ = 1: optax mode='refined').
    beta: the sharpness β > 0 of 'logcosh' (optax `smooth_beta`).
    c: the rest-mass c > 0 of 'relativistic'.
    threshold: the dead-zone τ ≥ 0 of 'deadzone', in units of the momentum.
    eps: the norm floor ε > 0 of 'l2'.
    rescale: multiply each group's direction by √n, n = the group's element count (the ℓ2 norm
      of a dense sign update), so that a learning rate tuned for Lion transfers to l2/lp/...
      (community Lion-ℓp convention). The constraint radius then scales by √n too.

  Returns:
    direction(v: PyTree) -> PyTree with v's structure and leaf dtypes.

  Raises:
    ValueError: unknown name (the message lists the valid ones), bad grouping or parameter.
  """
  if grouping not in GROUPINGS:
    raise ValueError(f"grouping must be one of {list(GROUPINGS)}, got {grouping!r}")
  _check("p", p, lambda v: v >= 1.0, "a finite number >= 1")
  _check("delta", delta, lambda v: v > 0.0, "> 0")
  _check("beta", beta, lambda v: v > 0.0, "> 0")
  _check("c", c, lambda v: v > 0.0, "> 0")
  _check("threshold", threshold, lambda v: v >= 0.0, ">= 0")
  _check("eps", eps, lambda v: v > 0.0, "> 0")
  if isinstance(kappa, str):
    if kappa not in KAPPAS:
      raise ValueError(f"kappa must be one of {sorted(KAPPAS)} or a callable, got {kappa!r}")
    fn = KAPPAS[kappa]
    params = dict(p=p, delta=delta, beta=beta, c=c, threshold=threshold, eps=eps)
    accepted = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in params.items() if k in accepted}
  elif callable(kappa):
    fn, kwargs = kappa, {}
  else:
    raise ValueError(f"kappa must be a name in KAPPAS or a callable, got {type(kappa).__name__}")

  def scaled(group: PyTree) -> PyTree:
    out = fn(group, **kwargs)
    if not rescale:
      return out
    n = sum(leaf.size for leaf in jax.tree.leaves(group))
    return jax.tree.map(lambda u: u * math.sqrt(n), out)

  def direction(v: PyTree) -> PyTree:
    if grouping == "global":
      return scaled(v)
    return jax.tree.map(scaled, v)

  return direction


# ------------------------------------------------------------------------------------------------
# The transformations.
# ------------------------------------------------------------------------------------------------


def scale_by_lion_kappa(
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any | None = None,
    *,
    kappa: str | KappaGrad = "l1",
    grouping: str = "leaf",
    p: float = 1.5,
    delta: float = 1.0,
    beta: float = 1.0,
    c: float = 1.0,
    threshold: float = 0.0,
    eps: float = 1e-12,
    rescale: bool = False,
) -> optax.GradientTransformation:
  """Lion-κ direction, no learning rate or weight decay: g_t ↦ ∇κ(v_t) (cf. optax.scale_by_lion).

  Per leaf, in optax 0.2.8's exact order (so kappa='l1' is bit-identical to scale_by_lion):
    v_t = (1.0 - β1)·g_t + β1·m_{t-1}   (1.0 - β1 in double, then weakly cast to the leaf dtype)
    u_t = ∇κ(v_t)                       (per group, see `kappa_direction`)
    m_t = cast((1 - β2)·g_t**1 + β2·m_{t-1}, mu_dtype)
  State: `optax.ScaleByLionState(count int32 [], mu)`, the same pytree as optax.lion's, so
  checkpoints of the two are interchangeable.

  Args:
    b1: β1, the weight of the old momentum in the update interpolation, in [0, 1].
    b2: β2, the EMA rate of the momentum, in [0, 1].
    mu_dtype: dtype of the momentum m; None keeps the dtype the arithmetic gives (as optax).
    kappa, grouping, p, delta, beta, c, threshold, eps, rescale: see `kappa_direction`.

  Returns:
    An `optax.GradientTransformation` whose updates are the (unscaled) directions ∇κ(v_t).
  """
  _validate_betas(b1, b2)
  direction = kappa_direction(kappa, grouping=grouping, p=p, delta=delta, beta=beta, c=c,
                              threshold=threshold, eps=eps, rescale=rescale)
  mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

  def init_fn(params: PyTree) -> optax.ScaleByLionState:
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    return optax.ScaleByLionState(count=jnp.zeros([], jnp.int32), mu=mu)

  def update_fn(updates: PyTree, state: optax.ScaleByLionState, params: PyTree = None):
    del params
    # Exactly optax's expression and constant order: (1.0 - b1) is a Python double.
    v = jax.tree.map(lambda g, m: (1.0 - b1) * g + b1 * m, updates, state.mu)
    new_updates = direction(v)
    mu = optax.tree.update_moment(updates, state.mu, b2, 1)
    mu = optax.tree.cast(mu, mu_dtype)
    count = optax.safe_increment(state.count)
    return new_updates, optax.ScaleByLionState(count=count, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


def lion_kappa(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    kappa: str | KappaGrad = "l1",
    mu_dtype: Any | None = None,
    mask: Any | Callable[[PyTree], Any] | None = None,
    *,
    grouping: str = "leaf",
    p: float = 1.5,
    delta: float = 1.0,
    beta: float = 1.0,
    c: float = 1.0,
    threshold: float = 0.0,
    eps: float = 1e-12,
    rescale: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The Lion-κ optimizer (Chen, Liu, Liang, Liu 2023, arXiv 2310.05898).

  x_t = x_{t-1} - η_t·(∇κ(v_t) + λ_t·x_{t-1}), v_t = (1 - β1)·g_t + β1·m_{t-1},
  m_t = (1 - β2)·g_t + β2·m_{t-1}; η = learning_rate, λ = weight_decay (decoupled: multiplied by
  η, as in optax.lion). It minimises f(x) + (1/λ)·κ*(-λx); for kappa='l1' (Lion, bit-identical
  to `optax.lion`) that is min f(x) s.t. ‖x‖∞ ≤ 1/λ. optax's default λ = 1e-3 makes the box
  1000 wide (inactive); λ ~ 0.1-1 makes it bind.

  Composition (same as optax.lion): chain(scale_by_lion_kappa, add_decayed_weights(λ, mask),
  scale_by_learning_rate(η)).

  Args:
    learning_rate: η, a scalar or an optax schedule of the step count.
    b1: β1 in [0, 1].
    b2: β2 in [0, 1].
    weight_decay: λ ≥ 0, a scalar or a schedule; 1/λ is the radius of κ*'s constraint set.
    kappa: a name in `KAPPAS` or a callable ∇κ (see `kappa_direction`). With
      `optax.inject_hyperparams`, pass a callable kappa in `static_args`.
    mu_dtype: dtype of the momentum; None keeps the dtype the arithmetic gives.
    mask: pytree of bools (or a callable params -> such a tree): where weight decay applies.
    grouping, p, delta, beta, c, threshold, eps, rescale: see `kappa_direction`.

  Returns:
    An `optax.GradientTransformationExtraArgs` (needs `params` in `update`, for weight decay).
  """
  _check("weight_decay", weight_decay, lambda v: v >= 0.0, ">= 0")
  return optax.chain(
      scale_by_lion_kappa(b1, b2, mu_dtype, kappa=kappa, grouping=grouping, p=p, delta=delta,
                          beta=beta, c=c, threshold=threshold, eps=eps, rescale=rescale),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
