"""Per-token log-prob of the target and entropy over the vocabulary, in one read of the logits.

For logits ℓ [M, V] (M = N·T tokens, V vocab), targets y [M] and temperature τ, with x = ℓ/τ:

  logp_m = x_{m,y_m} − LSE_m,          LSE_m = ln Σ_v e^{x_{m,v}},
  H_m    = −Σ_v p_{m,v} ln p_{m,v} = LSE_m − E_p[x_m],   p_{m,v} = e^{x_{m,v} − LSE_m},

reduced over v only; nothing of size [M, V] is written in the forward pass. Every row is read once,
block by block, into the pair state (n, s, u) of `_common` (Dukhan & Ablavatski's two-pass
algorithm, pass 1 only): Σ_v e^{x_v} = s·2^n and Σ_v e^{x_v}(x_v − n·ln2) = u·2^n, so

  logp = (x_y − n·ln2) − ln s,     H = ln s − u/s,

with x_y − n·ln2 computed by the exact Cody–Waite reduction: no large numbers are subtracted, so
logits of ±1e4 keep float32 accuracy. Inputs may be bf16/f16/f32; all arithmetic is float32.
(`jax.nn.log_softmax` on bf16 logits computes max/sub/exp/log in bf16 and loses ~0.17 nats per token
at V = 152k; this path does not.)

Backward (custom_vjp), for cotangents c_lp (of logp) and c_H (of H), one more read of the logits and
one write of the gradient, recomputing p per block from the saved per-row (n, ln s, u/s):

  ∂L/∂ℓ_{m,v} = (1/τ)·[ c_lp·(1[v = y_m] − p_v) − c_H·p_v·(t_v − u/s) ],   t_v = x_v − n·ln2,

using ∂H/∂x_v = −p_v(ln p_v + H) = −p_v(t_v − u/s).

Backends as in `softmax.py`: 'triton' (GPU, grid over rows, loop over V-blocks inside the kernel),
'mosaic' (TPU, 2-D grid with the row state in revisited output blocks), 'jnp' (same block algorithm
as a fori_loop; the default on CPU). `token_logprobs_entropy_reference` is the plain jnp composition
log_softmax + gather + entropy on the float32 upcast.
"""
from __future__ import annotations

import functools
import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from tokenrl.kernels import _common as C

__all__ = [
    "token_logprobs_entropy",
    "token_logprobs_entropy_from_hidden",
    "token_logprobs_entropy_reference",
    "top_entropy_mask",
]


# ------------------------------------------------------------------------------------------------
# Forward: row stats -> (logp, H).


def _finalize(logits, targets, n, s, u, inv_temp):
  """Per-row outputs and residuals from the pair state. All [M] float32."""
  v = logits.shape[1]
  ok = (targets >= 0) & (targets < v)
  # The target logit: M scattered reads (a gather), negligible next to the [M, V] read.
  g = jnp.take_along_axis(logits, jnp.clip(targets, 0, v - 1)[:, None], axis=1)[:, 0]
  g = jnp.where(ok, g.astype(jnp.float32) * inv_temp, jnp.nan)
  ln_s = jnp.log(s)
  mu = u / s  # E_p[x] − n·ln2
  logp = C.reduce_ln2(g, n) - ln_s
  entropy = ln_s - mu
  return logp, entropy, ln_s, mu


# ------------------------------------------------------------------------------------------------
# Backward: dℓ from (n, ln s, u/s) and the cotangents, recomputing p per block.


def _grad_elements(x, cols, tgt, n, ln_s, mu, c_lp, c_h):
  """dℓ for one block. x = ℓ/τ float32; c_lp, c_h already divided by τ; per-row values broadcast."""
  t = C.reduce_ln2(x, n)
  p = jnp.exp2((t - ln_s) * C.LOG2E)
  # p = 0 where x = −inf (t = −inf): drop the term instead of forming 0·(−inf).
  q = jnp.where(p > 0.0, p * (c_lp + c_h * (t - mu)), 0.0)
  return jnp.where(cols == tgt, c_lp, 0.0) - q


def _grad_triton_kernel(x_ref, tgt_ref, n_ref, lns_ref, mu_ref, clp_ref, ch_ref, dx_ref, *,
                        block_v: int, inv_temp: float):
  """One program per row: loop over V-blocks, masked load of ℓ, masked store of dℓ."""
  v = x_ref.shape[-1]
  tgt = tgt_ref[...]
  n, ln_s, mu = n_ref[...], lns_ref[...], mu_ref[...]
  c_lp, c_h = clp_ref[...], ch_ref[...]

  def body(j, carry):
    cols = j * block_v + jnp.arange(block_v)
    mask = cols < v
    x = C.tl_load(x_ref, j, block_v, mask, other=0.0).astype(jnp.float32)
    if inv_temp != 1.0:
      x = x * inv_temp
    dx = _grad_elements(x, cols, tgt, n, ln_s, mu, c_lp, c_h)
    C.tl_store(dx_ref, j, block_v, dx.astype(dx_ref.dtype), mask)
    return carry

  lax.fori_loop(0, pl.cdiv(v, block_v), body, 0)


def _grad_mosaic_kernel(x_ref, tgt_ref, n_ref, lns_ref, mu_ref, clp_ref, ch_ref, dx_ref, *,
                        block_v: int, inv_temp: float):
  """Elementwise over a (bM, bV) block; per-row inputs are (bM, 1)."""
  x = x_ref[...].astype(jnp.float32)
  if inv_temp != 1.0:
    x = x * inv_temp
  cols = pl.program_id(1) * block_v + lax.broadcasted_iota(jnp.int32, x.shape, 1)
  dx = _grad_elements(x, cols, tgt_ref[...], n_ref[...], lns_ref[...], mu_ref[...],
                      clp_ref[...], ch_ref[...])
  dx_ref[...] = dx.astype(dx_ref.dtype)


def _grad(logits, targets, rows, inv_temp, cfg: C.KernelConfig):
  """rows = (n, ln_s, mu, c_lp/τ, c_H/τ), each [M] float32. Returns dℓ [M, V] in logits.dtype."""
  m, v = logits.shape
  targets = targets.astype(jnp.int32)
  out = jax.ShapeDtypeStruct((m, v), logits.dtype)
  if cfg.impl == "jnp":
    # One fused XLA elementwise pass: read ℓ, write dℓ.
    x = logits.astype(jnp.float32) * inv_temp
    cols = lax.broadcasted_iota(jnp.int32, (m, v), 1)
    per_row = [r[:, None] for r in rows]
    return _grad_elements(x, cols, targets[:, None], *per_row).astype(logits.dtype)
  if cfg.backend == "triton":
    scalar = pl.BlockSpec((None,), lambda i: (i,))
    return pl.pallas_call(
        functools.partial(_grad_triton_kernel, block_v=cfg.block_v, inv_temp=inv_temp),
        grid=(m,),
        in_specs=[pl.BlockSpec((None, v), lambda i: (i, 0))] + [scalar] * 6,
        out_specs=pl.BlockSpec((None, v), lambda i: (i, 0)),
        out_shape=out,
        compiler_params=C.triton_params(cfg),
        interpret=cfg.interpret,
        name="logprobs_entropy_grad_triton",
    )(logits, targets, *rows)
  bm, bv = cfg.block_m, cfg.block_v
  row = pl.BlockSpec((bm, 1), lambda i, j: (i, 0))
  block = pl.BlockSpec((bm, bv), lambda i, j: (i, j))
  return pl.pallas_call(
      functools.partial(_grad_mosaic_kernel, block_v=bv, inv_temp=inv_temp),
      grid=(pl.cdiv(m, bm), pl.cdiv(v, bv)),
      in_specs=[block] + [row] * 6,
      out_specs=block,
      out_shape=out,
      compiler_params=C.mosaic_params("parallel", "parallel"),
      interpret=cfg.interpret,
      name="logprobs_entropy_grad_mosaic",
  )(logits, targets[:, None], *[r[:, None] for r in rows])


# ------------------------------------------------------------------------------------------------
# custom_vjp wiring.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _logprobs_entropy(logits, targets, inv_temp, cfg):
  return _logprobs_entropy_fwd(logits, targets, inv_temp, cfg)[0]


def _logprobs_entropy_fwd(logits, targets, inv_temp, cfg):
  n, s, u = C.row_stats(logits, cfg, inv_temp=inv_temp, with_u=True)
  logp, entropy, ln_s, mu = _finalize(logits, targets, n, s, u, inv_temp)
  return (logp, entropy), (logits, targets, n, ln_s, mu)


def _logprobs_entropy_bwd(inv_temp, cfg, res, cts):
  logits, targets, n, ln_s, mu = res
  c_lp, c_h = cts
  rows = (n, ln_s, mu, c_lp.astype(jnp.float32) * inv_temp, c_h.astype(jnp.float32) * inv_temp)
  return _grad(logits, targets, rows, inv_temp, cfg), None


_logprobs_entropy.defvjp(_logprobs_entropy_fwd, _logprobs_entropy_bwd)
_logprobs_entropy_jit = jax.jit(_logprobs_entropy, static_argnums=(2, 3))


# ------------------------------------------------------------------------------------------------
# Public API.


def top_entropy_mask(entropy: jax.Array, quantile: float,
                     where: jax.Array | None = None) -> jax.Array:
  """Keeps the top-`quantile` fraction of tokens by entropy (the "80/20" high-entropy minority).

  mask_m = (H_m >= Q_{1−ρ}(H[where])) ∧ where_m, ρ = quantile, Q the linear-interpolation quantile
  over the valid rows (TRL's `top_entropy_quantile`, same threshold as torch.quantile). ρ = 1 keeps
  every valid row; no valid row gives an all-False mask. No gradient flows through the mask.

  Args:
    entropy: [M] float entropies.
    quantile: ρ in (0, 1].
    where: optional [M] bool, the rows that count (padding excluded); default all.
  Returns:
    [M] bool.
  """
  if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not (
      0.0 < quantile <= 1.0):
    raise ValueError(f"quantile must be a float in (0, 1], got {quantile!r}")
  h = lax.stop_gradient(jnp.asarray(entropy)).astype(jnp.float32)
  if h.ndim != 1:
    raise ValueError(f"entropy must have shape [M], got {tuple(h.shape)}")
  if where is None:
    valid = jnp.ones(h.shape, bool)
  else:
    where = jnp.asarray(where)
    if tuple(where.shape) != tuple(h.shape):
      raise ValueError(f"where must have shape {tuple(h.shape)} (= entropy [M]), got "
                       f"{tuple(where.shape)}")
    valid = jnp.asarray(where).astype(bool)
  threshold = jnp.nanquantile(jnp.where(valid, h, jnp.nan), 1.0 - quantile)
  return (h >= threshold) & valid


def _check_temperature(temperature) -> float:
  if isinstance(temperature, jax.core.Tracer):
    raise ValueError("temperature must be a concrete Python float (it is baked into the kernel), "
                     "got a traced value")
  try:
    t = float(temperature)
  except (TypeError, ValueError):
    raise ValueError(f"temperature must be a positive float, got {temperature!r}") from None
  if isinstance(temperature, bool) or not (t > 0.0) or t == float("inf"):
    raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
  return t


def token_logprobs_entropy(
    logits: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    *,
    impl: str = "auto",
    block_v: int | None = None,
    interpret: bool | None = None,
    return_entropy_mask_quantile: float | None = None,
    where: jax.Array | None = None,
    block_m: int | None = None,
    pallas_backend: str | None = None,
) -> tuple[jax.Array, ...]:
  """Log-prob of each target token and the entropy of each row, in one read of the logits.

  With x = logits/τ (float32): logp_m = x_{m,y_m} − LSE_m and H_m = LSE_m − E_p[x_m] (module
  docstring), reduced over V; no [M, V] array is written. Differentiable in `logits` (custom_vjp;
  the backward recomputes p per block). The caller flattens [N, T, V] -> [M, V], M = N·T.

  Args:
    logits: [M, V] bf16 / f16 / f32 (float64 is computed as float32).
    targets: [M] integer token ids in [0, V). An id outside [0, V) gives logp = NaN.
    temperature: τ > 0, a Python float (static).
    impl: 'auto' (Pallas on GPU/TPU, jnp elsewhere), 'pallas', 'jnp' (alias 'xla').
    block_v: V-block size; need not divide V (the tail is masked). Triton: power of 2 (default
      4096); Mosaic: multiple of 128 (default 2048); jnp: any (default 4096).
    interpret: Pallas interpret mode; None = interpret when on CPU.
    return_entropy_mask_quantile: ρ in (0, 1] or None. If set, also return
      `top_entropy_mask(entropy, ρ, where)`: the top-ρ fraction of rows by entropy (TRL's
      `top_entropy_quantile`; the 80/20 paper uses ρ = 0.2).
    where: optional [M] bool of valid rows, used only by the entropy mask.
    block_m: rows per block (Mosaic only; default 128).
    pallas_backend: 'triton' | 'mosaic' | None (mosaic on TPU, triton otherwise).
  Returns:
    (logp [M], entropy [M]) float32, plus mask [M] bool if return_entropy_mask_quantile is set.
    A row of all −inf logits gives NaN for both.
  """
  logits = C.check_logits(logits, "logits", ndim=2)
  m, v = logits.shape
  if not hasattr(targets, "shape") or not hasattr(targets, "dtype"):
    raise ValueError(f"targets must be an integer array of shape ({m},), got "
                     f"{type(targets).__name__}")
  if tuple(targets.shape) != (m,):
    raise ValueError(f"targets must have shape ({m},) to match logits [M, V] = {(m, v)}, got "
                     f"{tuple(targets.shape)}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"targets must be an integer array, got dtype {targets.dtype}")
  inv_temp = 1.0 / _check_temperature(temperature)
  q = return_entropy_mask_quantile
  if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float))
                        or not 0.0 < q <= 1.0):
    raise ValueError(f"return_entropy_mask_quantile must be None or a float in (0, 1], got {q!r}")
  cfg = C.resolve_config(shape=(m, v), dtype=logits.dtype, impl=impl, block_v=block_v,
                         block_m=block_m, interpret=interpret, pallas_backend=pallas_backend)
  logp, entropy = _logprobs_entropy_jit(logits, jnp.asarray(targets).astype(jnp.int32),
                                        inv_temp, cfg)
  if q is None:
    return logp, entropy
  return logp, entropy, top_entropy_mask(entropy, float(q), where)


def token_logprobs_entropy_reference(logits: jax.Array, targets: jax.Array,
                                     temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Plain jnp composition on the float32 upcast: log_softmax, gather, −Σ p log p.

  Materialises [M, V] float32 arrays; use it for tests and as the XLA baseline.
  """
  x = logits.astype(jnp.float32) / temperature
  lp = jax.nn.log_softmax(x, axis=-1)
  logp = jnp.take_along_axis(lp, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  p = jnp.exp(lp)
  entropy = -jnp.sum(jnp.where(p > 0.0, p * lp, 0.0), axis=-1)
  return logp, entropy


# ------------------------------------------------------------------------------------------------
# Fused with the output projection: logits = hidden @ w never reach memory.
#
# Does it pay? In memory, yes: no [M, V] logits (bf16) nor their gradient, only [M, block_v] f32
# per step (M = 8k, V = 152k: 2.5 GB + 2.5 GB saved). In time, no: the projection GEMM is
# 2·M·D·V flops (10 TFLOP at D = 4096, ~10 ms on an H200) against ~0.5 ms to read the bf16 logits
# once, and the backward recomputes each logits block (one extra GEMM: ~+33% flops over the
# unfused forward+backward). A Pallas version would fight cuBLAS / the MXU for the GEMM and save
# at most the 0.5–1 ms of logits traffic, so this is plain jnp: a loop over V-blocks of w, XLA's
# matmuls in the input dtype with f32 accumulation, the same pair state as above.


def _hidden_block(hidden, w, j, bv, v, inv_temp):
  """x_j = (hidden @ w[:, block j])·inv_temp in f32 [M, bv], columns of earlier blocks at −inf."""
  start = jnp.minimum(j * bv, v - bv)
  # Not loop-invariant, so XLA:CPU cannot hoist an f32 convert of the whole w (see _common).
  wj, _ = lax.optimization_barrier((w, j))
  wj = lax.dynamic_slice_in_dim(wj, start, bv, axis=1)
  x = jnp.matmul(hidden, wj, preferred_element_type=jnp.float32)
  if inv_temp != 1.0:
    x = x * inv_temp
  cols = start + lax.broadcasted_iota(jnp.int32, x.shape, 1)
  if v % bv:
    x = jnp.where(cols >= j * bv, x, -jnp.inf)
  return x, cols, start, wj


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _from_hidden(hidden, w, targets, inv_temp, bv):
  return _from_hidden_fwd(hidden, w, targets, inv_temp, bv)[0]


def _from_hidden_fwd(hidden, w, targets, inv_temp, bv):
  m, v = hidden.shape[0], w.shape[1]

  def body(j, carry):
    state, g = carry
    x, cols, _, _ = _hidden_block(hidden, w, j, bv, v, inv_temp)
    # The target logit from the same f32 block the LSE sees (masked columns are −inf, never hit).
    g = g + jnp.sum(jnp.where(cols == targets[:, None], x, 0.0), axis=1)
    return C.merge_state(state, C.block_state(x, with_u=True)), g

  nb = -(-v // bv)
  (n, s, u), g = lax.fori_loop(0, nb, body, (C.init_state((m,)), jnp.zeros((m,), jnp.float32)))
  ok = (targets >= 0) & (targets < v)
  ln_s = jnp.log(s)
  mu = u / s
  logp = jnp.where(ok, C.reduce_ln2(g, n) - ln_s, jnp.nan)
  return (logp, ln_s - mu), (hidden, w, targets, n, ln_s, mu)


def _from_hidden_bwd(inv_temp, bv, res, cts):
  hidden, w, targets, n, ln_s, mu = res
  m, v = hidden.shape[0], w.shape[1]
  rows = [r[:, None] for r in (n, ln_s, mu)]
  c_lp = cts[0].astype(jnp.float32)[:, None] * inv_temp
  c_h = cts[1].astype(jnp.float32)[:, None] * inv_temp

  def body(j, carry):
    dh, dw = carry
    x, cols, start, wj = _hidden_block(hidden, w, j, bv, v, inv_temp)
    dx = _grad_elements(x, cols, targets[:, None], *rows, c_lp, c_h)
    if v % bv:
      dx = jnp.where(cols >= j * bv, dx, 0.0)  # columns owned by the previous block
    # Matmuls in the input dtype with f32 accumulation (an f32 GEMM here is several times slower).
    dx = dx.astype(hidden.dtype)
    dh = dh + jnp.matmul(dx, wj.T, preferred_element_type=jnp.float32)
    dwj = jnp.matmul(hidden.T, dx, preferred_element_type=jnp.float32)
    # Blocks are disjoint except where the last one overlaps (its dx is 0 there): add, in w.dtype.
    old = _from_bits(lax.dynamic_slice_in_dim(dw, start, bv, axis=1), w.dtype)
    new = _to_bits((old.astype(jnp.float32) + dwj).astype(w.dtype))
    return dh, lax.dynamic_update_slice_in_dim(dw, new, start, axis=1)

  nb = -(-v // bv)
  init = (jnp.zeros(hidden.shape, jnp.float32), _to_bits(jnp.zeros_like(w)))
  dh, dw = lax.fori_loop(0, nb, body, init)
  return dh.astype(hidden.dtype), _from_bits(dw, w.dtype), None


# dw [D, V] is carried as uint16 bits when w is bf16/f16: XLA:CPU has no 16-bit-float
# dynamic-update-slice and would convert the whole carried dw to f32 and back at every block.
def _to_bits(a):
  return lax.bitcast_convert_type(a, jnp.uint16) if a.dtype.itemsize == 2 else a


def _from_bits(a, dtype):
  return lax.bitcast_convert_type(a, dtype) if jnp.dtype(dtype).itemsize == 2 else a


_from_hidden.defvjp(_from_hidden_fwd, _from_hidden_bwd)
_from_hidden_jit = jax.jit(_from_hidden, static_argnums=(3, 4))


def token_logprobs_entropy_from_hidden(
    hidden: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    *,
    block_v: int = 8192,
) -> tuple[jax.Array, jax.Array]:
  """token_logprobs_entropy of logits = hidden @ w, without materialising the [M, V] logits.

  logp_m = x_{m,y_m} − LSE_m, H_m = LSE_m − E_p[x_m], x = (hidden @ w)/τ, computed over V-blocks
  of w (each block's logits [M, block_v] in f32, then the pair-state update); the backward
  recomputes each block and accumulates dhidden [M, D] (f32) and dw [D, V] (w.dtype). Plain
  jnp/XLA on every backend (see the note above on why a Pallas version would not pay).

  Args:
    hidden: [M, D] final hidden states (after the final norm), bf16 or f32.
    w: [D, V] output projection (the unembedding; for tied embeddings pass embedding.T).
    targets: [M] integer ids in [0, V); outside gives logp = NaN.
    temperature: τ > 0, a Python float.
    block_v: V-block size (any positive int; the tail overlaps the previous block and is masked).
  Returns:
    (logp [M], entropy [M]) float32.
  """
  hidden = C.check_logits(hidden, "hidden", ndim=2)
  w = C.check_logits(w, "w", ndim=2)
  m, d = hidden.shape
  if w.shape[0] != d:
    raise ValueError(f"w must have shape [D, V] with D = {d} (hidden's last dim), got "
                     f"{tuple(w.shape)}")
  if not hasattr(targets, "shape") or tuple(targets.shape) != (m,) or not jnp.issubdtype(
      targets.dtype, jnp.integer):
    raise ValueError(f"targets must be an integer array of shape ({m},), got "
                     f"{getattr(targets, 'shape', type(targets).__name__)}")
  if isinstance(block_v, bool) or not isinstance(block_v, int) or block_v <= 0:
    raise ValueError(f"block_v must be a positive int, got {block_v!r}")
  inv_temp = 1.0 / _check_temperature(temperature)
  bv = min(block_v, w.shape[1])
  return _from_hidden_jit(hidden, w, jnp.asarray(targets).astype(jnp.int32), inv_temp, bv)
