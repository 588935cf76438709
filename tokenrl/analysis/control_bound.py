"""Upper bound on how far k control tokens can move one self-attention head's output (spec §3(a)).

One head over the input [U; X0]: U [k,d] control rows with ‖u‖ <= M_u, X0 [m,d] imposed rows with
‖x‖ <= M_x, query/key/value maps W_q [d,d_k], W_k [d,d_k], W_v [d,d_v] with largest singular
values σ_q, σ_k, σ_v. The output row i of X0 splits into an uncontrolled part and the control
part y_i^u = Σ_{j in U} a_ij u_j W_v. Every control score is at most
α = σ_q σ_k M_u M_x / √d_k, and the uncontrolled denominator is
g_i = Σ_{j in X0 visible to i} exp(q_i·k_j / √d_k), so [derived]

    ‖y_i^u‖ <= σ_v M_u · k e^α / (g_i + k e^α)          (tight)
            <= σ_v M_u · k e^α / g_i                     (loose).

A target whose component orthogonal to the uncontrolled output exceeds this is unreachable.
Causal (the default): U precedes X0, so row i sees x_0..x_i. The authors' notebook
(theorem_numerics/02_Theorem_Demo.ipynb) sums g_i over all of X0, omits the σ_v M_u factor and
uses σ_v for σ_k in α [code]; `notebook=True` reproduces that variant (spec C4: taken as a typo).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_control_bound(wq: jax.Array, wk: jax.Array, wv: jax.Array, x0: jax.Array, *,
                            k: int, m_u: float, m_x: float | None = None, causal: bool = True,
                            tight: bool = True, notebook: bool = False) -> jax.Array:
  """Bound on ‖y_i^u‖ for each imposed row i -> f32 [m] (module docstring).

  wq, wk: [d,d_k]; wv: [d,d_v]; x0: [m,d] imposed rows; k: control tokens (>= 1); m_u: bound on
  a control row's norm; m_x: bound on an imposed row's norm (default: the largest in x0).
  causal=False sums g_i over all of X0; notebook=True is the authors' notebook variant.
  Computed in log space (α can be large for real weights): tight = σ_v M_u · sigmoid(log k + α
  − log g_i), loose = σ_v M_u · exp(log k + α − log g_i).
  """
  wq, wk, wv, x0 = (jnp.asarray(a, jnp.float32) for a in (wq, wk, wv, x0))
  if x0.ndim != 2:
    raise ValueError(f"x0 must be [m,d] imposed rows, got shape {x0.shape}")
  d = x0.shape[1]
  if wq.shape != wk.shape or wq.ndim != 2 or wq.shape[0] != d:
    raise ValueError(f"wq and wk must both be [d={d}, d_k], got {wq.shape} and {wk.shape}")
  if wv.ndim != 2 or wv.shape[0] != d:
    raise ValueError(f"wv must be [d={d}, d_v], got {wv.shape}")
  if k < 1:
    raise ValueError(f"k must be >= 1 control tokens, got {k}")
  if m_u <= 0:
    raise ValueError(f"m_u must be > 0, got {m_u}")
  d_k = wq.shape[1]
  sigma = lambda w: jnp.linalg.norm(w, ord=2)  # largest singular value
  if m_x is None:
    m_x = jnp.max(jnp.linalg.norm(x0, axis=1))
  s_q, s_k, s_v = sigma(wq), sigma(wk), sigma(wv)
  alpha = s_q * (s_v if notebook else s_k) * m_u * m_x / jnp.sqrt(d_k)
  scores = (x0 @ wq) @ (x0 @ wk).T / jnp.sqrt(d_k)  # [m,m] q_i·k_j/√d_k
  if causal:
    m = x0.shape[0]
    scores = jnp.where(jnp.tril(jnp.ones((m, m), bool)), scores, -jnp.inf)
  log_ratio = jnp.log(k) + alpha - jax.nn.logsumexp(scores, axis=1)  # log(k e^α / g_i)
  scale = 1.0 if notebook else s_v * m_u
  frac = jax.nn.sigmoid(log_ratio) if tight else jnp.exp(log_ratio)
  return (scale * frac).astype(jnp.float32)
