"""Shared pieces of the vocabulary kernels: the (mantissa, exponent) pair arithmetic, the row-stats
kernels (one Triton-style, one Mosaic-style), backend selection and argument validation.

The pair arithmetic follows Dukhan & Ablavatski, "The Two-Pass Softmax Algorithm"
(arXiv 2001.04438), adapted to blocks: a block of a row contributes

  Σ_i e^{x_i} = 2^{n_b} · Σ_i e^{t_i},   t_i = x_i − n_b·ln2,   n_b = round(max_i x_i · log2 e),

so a row's partial sum is the pair (s, n) = (Σ_i e^{t_i}, n_b) with value s·2^n. The exponent n
is an integer held in a float32 (its range is therefore unbounded in practice); pairs are merged by
an exact power-of-two rescale, (s1, n1) ⊕ (s2, n2) = (s1·2^{n1−N} + s2·2^{n2−N}, N),
N = max(n1, n2), with 2^δ built from its float bits (no exp). No max pass over memory is needed:
n_b is taken from the block already in registers / VMEM. t_i comes from a three-constant Cody–Waite
reduction, exact for |x| < 2^16·ln2 ≈ 45,426, so t_i keeps full float32 precision even for logits
of ±1e4.

For entropy we also keep u = Σ_i e^{t_i}·t_i, the un-normalised first moment measured from n·ln2,
so that E_p[x] − n·ln2 = u/s and H = ln s − u/s never subtract two large numbers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

# ExtExp constants. log2(e) rounded to float32 (0x1.715476p+0), used only to *choose* the integer
# exponent and to feed exp2 a reduced argument |t·log2e| ≲ 0.5 near the row max.
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# ln2 = _LN2_HI + _LN2_MID + _LN2_LO. HI and MID carry 8 significant bits each, so n·HI and n·MID
# are exact float32 products for |n| < 2^16; LO (≈1.4e-6) absorbs the rest (residual 5.5e-14).
_LN2_HI = 0.69140625  # 0x1.62p-1
_LN2_MID = 0.001739501953125  # 0x1.c8p-10
_LN2_LO = 1.428606765330187e-06  # 0x1.7f7d1cp-20
# Exponent given to an empty or all −inf block. Finite so that x − n·ln2 stays −inf (never NaN) for
# x = −inf; a power of two so n·ln2_hi is exact; far below any real row.
N_FLOOR = -float(2**24)
# 2^δ for δ ≤ −127 is flushed to +0: such a term is < 2^-127 of the running total.
_MIN_DELTA = -127.0

IMPLS = ("auto", "pallas", "jnp", "xla")
PALLAS_BACKENDS = ("triton", "mosaic")


def reduce_ln2(x: jax.Array, n: jax.Array) -> jax.Array:
  """t = x − n·ln2 by Cody–Waite with three constants (float32 in, float32 out).

  Args:
    x: float32 values, any shape.
    n: integer-valued float32 exponents, broadcastable to x, |n| < 2^16 for an exact reduction.
  Returns:
    t with |error| ≲ ulp(t) whenever x is within a factor 2 of n·ln2 (the elements that matter).
    x = −inf gives −inf, +inf/NaN give NaN.
  """
  return ((x - n * _LN2_HI) - n * _LN2_MID) - n * _LN2_LO


def exp2_int(delta: jax.Array) -> jax.Array:
  """2^δ for integer-valued float32 δ ≤ 0, exact, built from the float bits (XNNPACK's AVX2 trick).

  δ is clamped at −127, which maps to +0.0 (biased exponent 0 with a zero mantissa).
  """
  d = jnp.maximum(delta, _MIN_DELTA)
  bits = lax.shift_left((d + 127.0).astype(jnp.int32), jnp.int32(23))
  return lax.bitcast_convert_type(bits, jnp.float32)


def block_exponent(x: jax.Array, *, axis: int = -1, keepdims: bool = False) -> jax.Array:
  """n_b = round(max(x)·log2e) over `axis`, integer-valued float32, floored at N_FLOOR.

  Rounds half up as floor(·+0.5): Triton has no round-to-nearest-even; any integer near the max
  works.
  """
  m = jnp.max(x, axis=axis, keepdims=keepdims)
  return jnp.maximum(jnp.floor(m * LOG2E + 0.5), N_FLOOR)


def block_state(x: jax.Array, *, with_u: bool, keepdims: bool = False):
  """Pair state (n, s, u) of one block of rows: x [..., bV] float32, masked entries already −inf.

  n = round(max x·log2e), t = x − n·ln2, s = Σ e^t, u = Σ e^t·t (0 if not with_u); reduction over
  the last axis. e^t is computed as exp2(t·log2e): t is already reduced, so the product is accurate.
  """
  n = block_exponent(x, keepdims=True)
  t = reduce_ln2(x, n)
  e = jnp.exp2(t * LOG2E)
  s = jnp.sum(e, axis=-1, keepdims=keepdims)
  if with_u:
    # 0·(−inf) would be NaN for masked / −inf entries: their e is exactly 0, drop them.
    u = jnp.sum(jnp.where(e > 0.0, e * t, 0.0), axis=-1, keepdims=keepdims)
  else:
    u = jnp.zeros_like(s)
  if not keepdims:
    n = jnp.squeeze(n, axis=-1)
  return n, s, u


def merge_state(a, b):
  """(n1, s1, u1) ⊕ (n2, s2, u2): exact power-of-two rescale to N = max(n1, n2).

  u is measured from n·ln2, so moving it to N adds δ·ln2·s before scaling: u' = (u + δ·ln2·s)·2^δ.
  """
  n1, s1, u1 = a
  n2, s2, u2 = b
  n = jnp.maximum(n1, n2)
  d1 = jnp.maximum(n1 - n, _MIN_DELTA)
  d2 = jnp.maximum(n2 - n, _MIN_DELTA)
  f1 = exp2_int(d1)
  f2 = exp2_int(d2)
  s = s1 * f1 + s2 * f2
  u = (u1 + d1 * LN2 * s1) * f1 + (u2 + d2 * LN2 * s2) * f2
  return n, s, u


def init_state(shape=()):
  """The empty pair state: (N_FLOOR, 0, 0)."""
  return (jnp.full(shape, N_FLOOR, jnp.float32), jnp.zeros(shape, jnp.float32),
          jnp.zeros(shape, jnp.float32))


# ------------------------------------------------------------------------------------------------
# Backend selection and configuration.


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Static (hashable) choice of implementation and block sizes.

  impl: 'pallas' or 'jnp' (resolved, never 'auto'). backend: 'triton' (GPU: grid over rows, loop
  over V-blocks inside the kernel) or 'mosaic' (TPU: 2-D grid (rows/block_m, V/block_v), state in
  revisited output blocks). block_v / block_m: resolved sizes. interpret: run Pallas on CPU.
  """
  impl: str
  backend: str
  block_v: int
  block_m: int
  interpret: bool
  num_warps: int | None = None


def _platform() -> str:
  p = jax.default_backend()
  return {"cuda": "gpu", "rocm": "gpu"}.get(p, p)


def _is_pow2(n: int) -> bool:
  return n > 0 and (n & (n - 1)) == 0


def resolve_config(
    *,
    shape: tuple[int, int],
    dtype: Any,
    impl: str,
    block_v: int | None,
    block_m: int | None,
    interpret: bool | None,
    pallas_backend: str | None,
    num_warps: int | None = None,
) -> KernelConfig:
  """Validates the backend arguments and picks block sizes for a [M, V] problem.

  impl='auto' is Pallas on GPU/TPU and jnp elsewhere ('xla' is an alias of 'jnp'). interpret=None
  means interpret when Pallas runs on CPU. pallas_backend=None picks 'mosaic' on TPU and 'triton'
  otherwise (on CPU both run in interpret mode, which is how the tests cover both).
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"interpret must be a bool or None, got {interpret!r}")
  if pallas_backend is not None and pallas_backend not in PALLAS_BACKENDS:
    raise ValueError(f"pallas_backend must be one of {PALLAS_BACKENDS} or None, "
                     f"got {pallas_backend!r}")
  for name, val in (("block_v", block_v), ("block_m", block_m), ("num_warps", num_warps)):
    if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val <= 0):
      raise ValueError(f"{name} must be a positive int or None, got {val!r}")
  platform = _platform()
  if impl == "xla":
    impl = "jnp"
  if impl == "auto":
    impl = "pallas" if platform in ("gpu", "tpu") else "jnp"
  m, v = shape
  if impl == "jnp":
    bv = min(block_v or 4096, v)
    return KernelConfig("jnp", "none", bv, m, False)

  backend = pallas_backend or ("mosaic" if platform == "tpu" else "triton")
  if interpret is None:
    interpret = platform == "cpu"
  if not interpret:
    need = "gpu" if backend == "triton" else "tpu"
    if platform != need:
      raise ValueError(f"pallas_backend={backend!r} compiles only on a {need.upper()} (this is "
                       f"{platform}); pass interpret=True or impl='jnp'")
  itemsize = jnp.dtype(dtype).itemsize
  if backend == "triton":
    if block_v is None:
      # 4096 bf16 = 8 KiB per load: enough bytes in flight per program, few registers per thread.
      bv = min(4096, pl.next_power_of_2(v))
    else:
      if not _is_pow2(block_v):
        raise ValueError(f"block_v must be a power of 2 for pallas_backend='triton' (Triton "
                         f"tensors have power-of-2 sizes), got {block_v}")
      bv = block_v
    warps = num_warps or (8 if bv * itemsize >= 8192 else 4)
    return KernelConfig("pallas", "triton", bv, 1, interpret, warps)

  # Mosaic: last block dim a multiple of 128 or the full V; second-last a multiple of the sublane
  # packing (8 rows of f32, 16 of bf16, 32 of 8-bit) or the full M.
  sub = 8 * max(1, 4 // itemsize)
  if block_v is None:
    bv = v if v <= 2048 else 2048
  else:
    if block_v < v and block_v % 128:
      raise ValueError(f"block_v must be a multiple of 128 (or >= V={v}) for "
                       f"pallas_backend='mosaic', got {block_v}")
    bv = min(block_v, v)
  if block_m is None:
    bm = m if m <= 128 else 128
  else:
    if block_m < m and block_m % sub:
      raise ValueError(f"block_m must be a multiple of {sub} for {jnp.dtype(dtype).name} (or >= "
                       f"M={m}) for pallas_backend='mosaic', got {block_m}")
    bm = min(block_m, m)
  return KernelConfig("pallas", "mosaic", bv, bm, interpret)


def check_logits(x: Any, name: str, ndim: int | None = None) -> jax.Array:
  """Validates a floating array argument (any shape if ndim is None); returns a jax array."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating (bf16/f16/f32), got dtype {x.dtype}")
  if any(d == 0 for d in x.shape):
    raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
  # float64 (e.g. a NumPy array) is computed in float32, as jnp does without jax_enable_x64.
  return jnp.asarray(x, jnp.float32) if x.dtype == jnp.float64 else jnp.asarray(x)


# ------------------------------------------------------------------------------------------------
# Row statistics (n, s, u) of x·inv_temp over the last axis: one read of x.


def _row_stats_triton_kernel(x_ref, n_ref, s_ref, u_ref, *, block_v, inv_temp, with_u):
  """One program per row: loop over V in blocks of block_v with masked loads (tail = −inf)."""
  v = x_ref.shape[-1]

  def body(j, state):
    cols = j * block_v + jnp.arange(block_v)
    x = tl_load(x_ref, j, block_v, cols < v)
    x = x.astype(jnp.float32)
    if inv_temp != 1.0:
      x = x * inv_temp
    return merge_state(state, block_state(x, with_u=with_u))

  n, s, u = lax.fori_loop(0, pl.cdiv(v, block_v), body, init_state())
  n_ref[...] = n
  s_ref[...] = s
  u_ref[...] = u


def tl_load(ref, j, block_v, mask, other=-jnp.inf):
  """Triton masked load of ref[j·block_v : (j+1)·block_v]; masked lanes read `other`."""
  return plgpu.load(ref.at[pl.ds(j * block_v, block_v)], mask=mask, other=other)


def tl_store(ref, j, block_v, value, mask):
  """Triton masked store of value into ref[j·block_v : (j+1)·block_v]."""
  plgpu.store(ref.at[pl.ds(j * block_v, block_v)], value, mask=mask)


def triton_params(cfg: KernelConfig):
  return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=2)


def mosaic_params(*semantics: str):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _row_stats_mosaic_kernel(x_ref, n_ref, s_ref, u_ref, *, v, block_v, inv_temp, with_u):
  """Grid (M/block_m, V/block_v); the (block_m, 1) outputs stay resident across the V axis and
  hold the running state: initialised at the first V-block, merged at every block."""
  j = pl.program_id(1)

  @pl.when(j == 0)
  def _init():
    n_ref[...] = jnp.full(n_ref.shape, N_FLOOR, jnp.float32)
    s_ref[...] = jnp.zeros(s_ref.shape, jnp.float32)
    u_ref[...] = jnp.zeros(u_ref.shape, jnp.float32)

  x = x_ref[...].astype(jnp.float32)
  if inv_temp != 1.0:
    x = x * inv_temp
  if v % block_v:
    # The last V-block is padded with unspecified values: mask them to −inf.
    cols = j * block_v + lax.broadcasted_iota(jnp.int32, x.shape, 1)
    x = jnp.where(cols < v, x, -jnp.inf)
  state = merge_state((n_ref[...], s_ref[...], u_ref[...]),
                      block_state(x, with_u=with_u, keepdims=True))
  n_ref[...], s_ref[...], u_ref[...] = state


def _row_stats_jnp(x, *, block_v, inv_temp, with_u):
  """Same blocked algorithm in plain jnp: fori_loop over V-blocks of [M, block_v].

  The last block starts at V − block_v (a static-size slice) and masks the columns already counted,
  so nothing is padded or copied.
  """
  m, v = x.shape
  bv = min(block_v, v)
  nb = -(-v // bv)

  def body(j, state):
    start = jnp.minimum(j * bv, v - bv)
    # Tie x to the loop index so it is not loop-invariant: XLA:CPU cannot dynamic-slice bf16, so it
    # converts the slice's operand to f32, and loop-invariant code motion would then hoist a
    # convert of the whole [M, V] array out of the loop (an [M, V] f32 temp, exactly what this
    # path avoids). With the barrier only the [M, block_v] slice is converted. A no-op elsewhere.
    xj, _ = lax.optimization_barrier((x, j))
    xb = lax.dynamic_slice_in_dim(xj, start, bv, axis=1)
    xb = xb.astype(jnp.float32)
    if inv_temp != 1.0:
      xb = xb * inv_temp
    if v % bv:
      cols = start + lax.broadcasted_iota(jnp.int32, xb.shape, 1)
      xb = jnp.where(cols >= j * bv, xb, -jnp.inf)
    return merge_state(state, block_state(xb, with_u=with_u))

  return lax.fori_loop(0, nb, body, init_state((m,)))


def row_stats(x: jax.Array, cfg: KernelConfig, *, inv_temp: float = 1.0, with_u: bool = True):
  """(n, s, u) per row of x [M, V] (each [M] float32): Σ_j e^{x_j·inv_temp} = s·2^n and
  Σ_j e^{x_j·inv_temp}·(x_j·inv_temp − n·ln2) = u·2^n. One read of x."""
  m, v = x.shape
  if cfg.impl == "jnp":
    return _row_stats_jnp(x, block_v=cfg.block_v, inv_temp=inv_temp, with_u=with_u)
  out = jax.ShapeDtypeStruct
  if cfg.backend == "triton":
    kernel = functools.partial(_row_stats_triton_kernel, block_v=cfg.block_v, inv_temp=inv_temp,
                               with_u=with_u)
    row = pl.BlockSpec((None,), lambda i: (i,))
    return pl.pallas_call(
        kernel,
        grid=(m,),
        in_specs=[pl.BlockSpec((None, v), lambda i: (i, 0))],
        out_specs=[row, row, row],
        out_shape=[out((m,), jnp.float32)] * 3,
        compiler_params=triton_params(cfg),
        interpret=cfg.interpret,
        name="row_stats_triton",
    )(x)
  kernel = functools.partial(_row_stats_mosaic_kernel, v=v, block_v=cfg.block_v,
                             inv_temp=inv_temp, with_u=with_u)
  bm, bv = cfg.block_m, cfg.block_v
  row = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
  n, s, u = pl.pallas_call(
      kernel,
      grid=(pl.cdiv(m, bm), pl.cdiv(v, bv)),
      in_specs=[pl.BlockSpec((bm, bv), lambda i, j: (i, j))],
      out_specs=[row, row, row],
      out_shape=[out((m, 1), jnp.float32)] * 3,
      compiler_params=mosaic_params("parallel", "arbitrary"),
      interpret=cfg.interpret,
      name="row_stats_mosaic",
  )(x)
  return n[:, 0], s[:, 0], u[:, 0]
