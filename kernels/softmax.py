"""Two-pass softmax / log-softmax over long rows (Dukhan & Ablavatski 2020, arXiv 2001.04438).

  y_i = e^{x_i} / Σ_k e^{x_k},   log y_i = x_i − LSE,   LSE = ln Σ_k e^{x_k},   reduced over `axis`.

Pass 1 reads the row once and accumulates Σ_k e^{x_k} as a (mantissa s, exponent n) pair, value
s·2^n, block by block (see `_common`); no max pass over memory is needed because every block picks its own
integer exponent and pairs merge by exact powers of two. Pass 2 reads the row again and writes
y_i = e^{x_i − n·ln2} · (1/s) (or log y_i = (x_i − n·ln2) − ln s). Traffic: 2 reads + 1 write of the
row, against 3 reads + 1 write for max / sum / normalise.

Backends (`impl`, `pallas_backend`):
  * 'triton' (GPU): grid = rows; each program loops over V in blocks of `block_v` (a power of 2)
    with masked loads, pass 1 then pass 2 in the same program.
  * 'mosaic' (TPU): pass 1 = grid (M/block_m, V/block_v) with the row state in revisited output
    blocks; pass 2 = an elementwise grid over the same blocks.
  * 'jnp': the same block algorithm in plain jnp (fori_loop over V-blocks, then one fused
    elementwise pass 2); this is what runs on CPU by default.
`*_reference` is plain `jax.nn.softmax` / `log_softmax` on the float32 upcast.

Gradients (custom_vjp) use the saved output, as `jax.nn.softmax` does:
  softmax:      dx = y ⊙ (dy − Σ_k dy_k y_k)
  log_softmax:  dx = dy − e^{log y} · Σ_k dy_k
computed in float32 by XLA (one reduction + one fused elementwise pass; no kernel needed).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tokenrl.kernels import _common as C

__all__ = [
    "two_pass_softmax",
    "two_pass_log_softmax",
    "two_pass_softmax_reference",
    "two_pass_log_softmax_reference",
]


def _outputs(x, n, scale, log: bool):
  """Pass-2 element map. x float32 [..., bV]; n, scale broadcastable; scale = ln s (log) or 1/s."""
  t = C.reduce_ln2(x, n)
  if log:
    return t - scale
  return jnp.exp2(t * C.LOG2E) * scale


def _softmax_triton_kernel(x_ref, o_ref, *, block_v: int, log: bool):
  """One program per row (x_ref, o_ref: [V]); pass 1 and pass 2 are two loops over V-blocks."""
  v = x_ref.shape[-1]
  nb = pl.cdiv(v, block_v)

  def pass1(j, state):
    cols = j * block_v + jnp.arange(block_v)
    x = C.tl_load(x_ref, j, block_v, cols < v).astype(jnp.float32)
    return C.merge_state(state, C.block_state(x, with_u=False))

  n, s, _ = lax.fori_loop(0, nb, pass1, C.init_state())
  scale = jnp.log(s) if log else 1.0 / s

  def pass2(j, carry):
    cols = j * block_v + jnp.arange(block_v)
    mask = cols < v
    x = C.tl_load(x_ref, j, block_v, mask).astype(jnp.float32)
    C.tl_store(o_ref, j, block_v, _outputs(x, n, scale, log).astype(o_ref.dtype), mask)
    return carry

  lax.fori_loop(0, nb, pass2, 0)


def _softmax_out_mosaic_kernel(x_ref, n_ref, c_ref, o_ref, *, log: bool):
  """Pass 2 on TPU: x block [bM, bV], n and scale [bM, 1] -> output block [bM, bV]."""
  o_ref[...] = _outputs(x_ref[...].astype(jnp.float32), n_ref[...], c_ref[...],
                        log).astype(o_ref.dtype)


def _forward_2d(x: jax.Array, cfg: C.KernelConfig, log: bool, out_dtype) -> jax.Array:
  m, v = x.shape
  if cfg.impl == "pallas" and cfg.backend == "triton":
    return pl.pallas_call(
        functools.partial(_softmax_triton_kernel, block_v=cfg.block_v, log=log),
        grid=(m,),
        in_specs=[pl.BlockSpec((None, v), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((None, v), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((m, v), out_dtype),
        compiler_params=C.triton_params(cfg),
        interpret=cfg.interpret,
        name="two_pass_softmax_triton",
    )(x)
  n, s, _ = C.row_stats(x, cfg, with_u=False)
  scale = jnp.log(s) if log else 1.0 / s
  if cfg.impl == "jnp":
    # One fused elementwise XLA pass: read x, write y.
    return _outputs(x.astype(jnp.float32), n[:, None], scale[:, None], log).astype(out_dtype)
  bm, bv = cfg.block_m, cfg.block_v
  row = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
  block = pl.BlockSpec((bm, bv), lambda i, j: (i, j))
  return pl.pallas_call(
      functools.partial(_softmax_out_mosaic_kernel, log=log),
      grid=(pl.cdiv(m, bm), pl.cdiv(v, bv)),
      in_specs=[block, row, row],
      out_specs=block,
      out_shape=jax.ShapeDtypeStruct((m, v), out_dtype),
      compiler_params=C.mosaic_params("parallel", "parallel"),
      interpret=cfg.interpret,
      name="two_pass_softmax_out_mosaic",
  )(x, n[:, None], scale[:, None])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _softmax_2d(x, cfg, log, out_dtype):
  return _forward_2d(x, cfg, log, out_dtype)


def _softmax_2d_fwd(x, cfg, log, out_dtype):
  y = _forward_2d(x, cfg, log, out_dtype)
  # The zero-size array only carries x's dtype to the backward pass.
  return y, (y, jnp.zeros((0,), x.dtype))


def _softmax_2d_bwd(cfg, log, out_dtype, res, dy):
  del cfg, out_dtype
  y, like = res
  y = y.astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  if log:
    dx = dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True)
  else:
    dx = y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True))
  return (dx.astype(like.dtype),)


_softmax_2d.defvjp(_softmax_2d_fwd, _softmax_2d_bwd)
_softmax_2d_jit = jax.jit(_softmax_2d, static_argnums=(1, 2, 3))


def two_pass_softmax(
    x: jax.Array,
    axis: int = -1,
    *,
    log: bool = False,
    out_dtype: Any = None,
    impl: str = "auto",
    block_v: int | None = None,
    block_m: int | None = None,
    interpret: bool | None = None,
    pallas_backend: str | None = None,
) -> jax.Array:
  """Softmax (or log-softmax with log=True) of x over `axis` by the two-pass algorithm.

  y_i = e^{x_i} / Σ_k e^{x_k}; accumulation in float32 whatever x's dtype (bf16 in is upcast
  per block, never as a whole row). Rows of 32k–256k+ elements are processed in blocks of
  `block_v`, so no row has to fit on chip.

  Args:
    x: floating array (bf16, f16 or f32; float64 is computed as float32), any rank >= 1.
    axis: the reduction axis.
    log: return log-softmax, log y_i = x_i − LSE, instead.
    out_dtype: output dtype, default x.dtype.
    impl: 'auto' (Pallas on GPU/TPU, jnp elsewhere), 'pallas', 'jnp' (alias 'xla').
    block_v: V-block size (Triton: a power of 2, default 4096; Mosaic: a multiple of 128, default
      2048; jnp: any, default 4096). Need not divide the axis length: the tail is masked.
    block_m: rows per block, Mosaic only (default 128, a multiple of the sublane packing).
    interpret: run the Pallas kernel in interpret mode; None = interpret on CPU.
    pallas_backend: 'triton' or 'mosaic'; None = mosaic on TPU, triton otherwise.
  Returns:
    Array of x's shape and `out_dtype`. A row of −inf gives NaN and +inf gives NaN, as in
    jax.nn.softmax. Rows with |x| > ~4.5e4 lose the exact range reduction (still finite).
  """
  x = C.check_logits(x, "x")
  if x.ndim < 1:
    raise ValueError(f"x must have at least 1 dim, got shape {tuple(x.shape)}")
  if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
    raise ValueError(f"axis must be an int in [{-x.ndim}, {x.ndim}), got {axis!r} for x of "
                     f"shape {tuple(x.shape)}")
  out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
  if not jnp.issubdtype(out_dtype, jnp.floating):
    raise ValueError(f"out_dtype must be floating, got {out_dtype}")
  moved = jnp.moveaxis(x, axis, -1)
  v = moved.shape[-1]
  x2 = moved.reshape(-1, v)
  cfg = C.resolve_config(shape=x2.shape, dtype=x2.dtype, impl=impl, block_v=block_v,
                         block_m=block_m, interpret=interpret, pallas_backend=pallas_backend)
  y = _softmax_2d_jit(x2, cfg, bool(log), out_dtype)
  return jnp.moveaxis(y.reshape(moved.shape), -1, axis)


def two_pass_log_softmax(x: jax.Array, axis: int = -1, **kwargs) -> jax.Array:
  """log_softmax by the two-pass algorithm: log y_i = (x_i − n·ln2) − ln s. See two_pass_softmax."""
  return two_pass_softmax(x, axis, log=True, **kwargs)


def two_pass_softmax_reference(x: jax.Array, axis: int = -1, *, log: bool = False,
                               out_dtype: Any = None) -> jax.Array:
  """Plain jnp reference: jax.nn.(log_)softmax of the float32 upcast, cast to out_dtype."""
  out_dtype = x.dtype if out_dtype is None else out_dtype
  fn = jax.nn.log_softmax if log else jax.nn.softmax
  return fn(x.astype(jnp.float32), axis=axis).astype(out_dtype)


def two_pass_log_softmax_reference(x: jax.Array, axis: int = -1, *,
                                   out_dtype: Any = None) -> jax.Array:
  """Plain jnp reference of two_pass_log_softmax."""
  return two_pass_softmax_reference(x, axis, log=True, out_dtype=out_dtype)
