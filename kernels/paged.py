"""Ragged paged attention: decode and chunked prefill reading K/V through a page table.

The KV cache of one layer is a pool of pages shared by all sequences (`tokenrl.rollout.pages`):
k_pool, v_pool [K, P_pages, S_page, H]; sequence n's token c lives in page
page_table[n, c // S_page], slot c % S_page. One call serves a batch of N sequences, each with
its own cache length kv_lens[n] (ragged) and its own number of new queries q_lens[n] ≤ T
(1 for decode, a chunk for chunked prefill; the chunk's K/V are already written to the cache,
so they are its last q_lens[n] tokens). Query i < q_lens[n] sits at position

  p_i = kv_lens[n] − q_lens[n] + i,     o_{n,i,h} = Σ_{c ≤ p_i} softmax_c(a_c) · V_{n,c,h//G},
  a_c = cap(scale · <q_{n,i,h}, K_{n,c,h//G}>),   cap(x) = softcap·tanh(x/softcap) (optional)

(causal inside the chunk, GQA with query head h reading KV head h // G, G = Q/K, HF's
repeat_kv grouping). Rows i ≥ q_lens[n] are padding and return 0. Requires q_lens ≤ kv_lens.

Kernels. Queries are regrouped per KV head as rows r = i·G + g of [N, K, T·G, H], so one
program holds the G query heads that share a KV head and each K/V page is read once for all of
them (the same trick as JAX's ragged paged attention). Both kernels run an online softmax
(running max m, sum l, accumulator [bM, H] in f32) over the sequence's pages and stop at the
last page the block's queries can see (causal + length), so a decode row reads ⌈kv_len/S_page⌉
pages, not the table's width.
  * 'triton' (GPU): grid (N, K, rows/bM); a loop over pages loads each page's index from the
    table row and then the [S_page, H] tile of K and V (contiguous: heads lead the pool).
  * 'mosaic' (TPU): grid (N, K, rows/bM, M_pages) with the page table, kv_lens and q_lens
    prefetched to SMEM; the K/V BlockSpecs' index maps look the page up, so the pipeline DMAs
    page j+1 while page j is computed. Pages past the block's last visible one map to that same
    page (no new DMA) and skip the compute; the (m, l, acc) state lives in VMEM scratch.
Both run in interpret mode on CPU (how the tests cover them); 'jnp' is the reference (gather
the pages to a dense cache, mask, softmax in f32), what 'auto' picks on CPU. Forward only: this
serves inference (the rollout engine), never a gradient.

The module is `paged`, not `paged_attention`: `tokenrl.kernels` re-exports the function
`paged_attention`, which would shadow a submodule of the same name.
"""
from __future__ import annotations

import functools
import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from tokenrl.kernels import _common as C

__all__ = ["paged_attention", "paged_attention_reference"]

IMPLS = ("auto", "pallas", "jnp", "xla")
_MIN_DOT = 16  # Triton's tl.dot needs every dim >= 16


# ------------------------------------------------------------------------------------------------
# Reference.


def _gather_dense(pool: jax.Array, page_table: jax.Array) -> jax.Array:
  """[K, P_pages, S_page, H] through page_table [N, M] -> dense [N, M·S_page, K, H] (sentinel
  entries read a clamped real page; the length mask hides them)."""
  num_kv, num_pages, page_size, h = pool.shape
  n, m = page_table.shape
  dense = pool[:, jnp.clip(page_table, 0, num_pages - 1)]  # [K, N, M, S, H]
  return jnp.moveaxis(dense, 0, 3).reshape(n, m * page_size, num_kv, h)


def _query_positions(kv_lens, q_lens, t):
  """[N, T] position of each query row, −1 for padding rows (i ≥ q_lens)."""
  i = jnp.arange(t, dtype=jnp.int32)[None]
  return jnp.where(i < q_lens[:, None], kv_lens[:, None] - q_lens[:, None] + i, -1)


def paged_attention_reference(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array,
                              page_table: jax.Array, kv_lens: jax.Array,
                              q_lens: jax.Array | None = None, *, scale: float,
                              softcap: float | None = None) -> jax.Array:
  """The module docstring's o [N,T,Q,H] in plain jnp: gather the pages into a dense cache
  [N, M·S_page, K, H], mask keys c > p_i, softmax in f32. Padding rows (i ≥ q_lens) give 0."""
  q, k_pool, v_pool, page_table, kv_lens, q_lens = _validate(q, k_pool, v_pool, page_table,
                                                             kv_lens, q_lens)
  n, t, num_q, h = q.shape
  num_kv = k_pool.shape[0]
  k = _gather_dense(k_pool, page_table).astype(jnp.float32)
  v = _gather_dense(v_pool, page_table).astype(jnp.float32)
  qg = q.reshape(n, t, num_kv, num_q // num_kv, h).astype(jnp.float32)
  a = jnp.einsum("ntkgh,nckh->nkgtc", qg, k, precision=lax.Precision.HIGHEST) * scale
  if softcap is not None:
    a = jnp.tanh(a / softcap) * softcap
  qpos = _query_positions(kv_lens, q_lens, t)  # [N, T]
  cols = jnp.arange(k.shape[1], dtype=jnp.int32)
  vis = (cols[None, None, :] <= qpos[:, :, None]) & (cols[None, None, :] < kv_lens[:, None, None])
  vis = vis[:, None, None]  # [N, 1, 1, T, C]
  p = jax.nn.softmax(jnp.where(vis, a, -jnp.inf), axis=-1, where=vis)
  p = jnp.where(vis, p, 0.0)  # rows with no visible key: 0, not NaN
  o = jnp.einsum("nkgtc,nckh->ntkgh", p, v, precision=lax.Precision.HIGHEST)
  return o.reshape(n, t, num_q, h).astype(q.dtype)


# ------------------------------------------------------------------------------------------------
# Shared pieces of the two kernels.


def _div(a, b: int):
  """a // b for non-negative int32 a: lax.div truncates, which equals floor here, and avoids the
  sign() that jnp's floor division lowers to (Mosaic lowers sign only on a known TPU)."""
  return lax.div(a, jnp.int32(b))


def _cdiv(a, b: int):
  return _div(a + (b - 1), b)


def _block_keys(kv_len, q_len, r, bm: int, g: int):
  """Keys visible to query-row block r (rows r·bM .. r·bM+bM−1, row = i·G + g): one past the
  last visible position, 0 if the block is all padding. Scalar int32 arithmetic only (it runs in
  index maps and kernels alike)."""
  first = _div(r * bm, g)
  last = jnp.minimum(_div(r * bm + bm - 1, g), q_len - 1)
  n = jnp.where(first < q_len, kv_len - q_len + last + 1, 0)
  return jnp.clip(n, 0, kv_len)


def _online_step(carry, q, k, v, cols, qpos, scale, softcap):
  """One page of the online softmax. carry (m [bM,1], l [bM,1], acc [bM,H]) f32; q [bM,H];
  k, v [S,H]; cols [1,S] key positions; qpos [bM,1] (−1 = padding row)."""
  m, l, acc = carry
  s = lax.dot_general(q.astype(k.dtype), k, (((1,), (1,)), ((), ())),
                      preferred_element_type=jnp.float32) * scale  # [bM, S]
  if softcap is not None:
    s = jnp.tanh(s / softcap) * softcap
  vis = cols <= qpos
  s = jnp.where(vis, s, -jnp.inf)
  m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no visible key yet: keep e^{-inf} = 0
  alpha = jnp.exp(m - m_safe)
  # `where`, not just exp(−inf): a slot past kv_len may hold a stale token of a freed sequence.
  p = jnp.where(vis, jnp.exp(s - m_safe), 0.0)
  l = l * alpha + jnp.sum(p, axis=1, keepdims=True)
  acc = acc * alpha + lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
  return m_new, l, acc


def _finish(l, acc):
  return acc / jnp.where(l > 0, l, 1.0)


# ------------------------------------------------------------------------------------------------
# Triton (GPU).


def _triton_kernel(lens_ref, pt_ref, q_ref, qpos_ref, k_ref, v_ref, o_ref, *, g, scale, softcap):
  """lens_ref [2] (kv_len, q_len); pt_ref [M] page ids; q_ref [bM,H]; qpos_ref [bM,1];
  k_ref/v_ref [P_pages,S,H] (this KV head's whole pool: pages are picked by the loop);
  o_ref [bM,H]."""
  bm, h = q_ref.shape
  page_size = k_ref.shape[1]
  kv_len, q_len = lens_ref[0], lens_ref[1]
  n_keys = _block_keys(kv_len, q_len, pl.program_id(2), bm, g)
  q = q_ref[...]
  qpos = qpos_ref[...]

  def body(j, carry):
    page = pt_ref[j]
    k = k_ref[page]
    v = v_ref[page]
    cols = j * page_size + lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
    return _online_step(carry, q, k, v, cols, qpos, scale, softcap)

  init = (jnp.full((bm, 1), -jnp.inf, jnp.float32), jnp.zeros((bm, 1), jnp.float32),
          jnp.zeros((bm, h), jnp.float32))
  _, l, acc = lax.fori_loop(0, _cdiv(n_keys, page_size), body, init)
  o_ref[...] = _finish(l, acc).astype(o_ref.dtype)


def _call_triton(qm, qpos, k_pool, v_pool, page_table, lens, *, g, bm, scale, softcap, interpret):
  n, num_kv, rows, h = qm.shape
  _, num_pages, page_size, _ = k_pool.shape
  m = page_table.shape[1]
  pool_spec = pl.BlockSpec((None, num_pages, page_size, h), lambda i, j, r: (j, 0, 0, 0))
  return pl.pallas_call(
      functools.partial(_triton_kernel, g=g, scale=scale, softcap=softcap),
      grid=(n, num_kv, rows // bm),
      in_specs=[
          pl.BlockSpec((None, 2), lambda i, j, r: (i, 0)),
          pl.BlockSpec((None, m), lambda i, j, r: (i, 0)),
          pl.BlockSpec((None, None, bm, h), lambda i, j, r: (i, j, r, 0)),
          pl.BlockSpec((None, bm, 1), lambda i, j, r: (i, r, 0)),
          pool_spec, pool_spec,
      ],
      out_specs=pl.BlockSpec((None, None, bm, h), lambda i, j, r: (i, j, r, 0)),
      out_shape=jax.ShapeDtypeStruct(qm.shape, qm.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="paged_attention_triton",
  )(lens, page_table, qm, qpos, k_pool, v_pool)


# ------------------------------------------------------------------------------------------------
# Mosaic (TPU).


def _mosaic_kernel(pt_ref, kvl_ref, ql_ref, q_ref, qpos_ref, k_ref, v_ref, o_ref, m_ref, l_ref,
                   acc_ref, *, g, scale, softcap):
  """Grid (N, K, rows/bM, M). Scalar prefetch: pt_ref [N·M], kvl_ref [N], ql_ref [N] (SMEM).
  q_ref [bM,H], qpos_ref [bM,1]; k_ref/v_ref [S,H]: page j of the row (already looked up by the
  index map); o_ref [bM,H] written at the last j; scratch m, l [bM,1], acc [bM,H] f32."""
  i, r, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  bm = q_ref.shape[0]
  page_size = k_ref.shape[0]
  n_keys = _block_keys(kvl_ref[i], ql_ref[i], r, bm, g)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  @pl.when(j * page_size < n_keys)
  def _page():
    cols = j * page_size + lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
    m, l, acc = _online_step((m_ref[...], l_ref[...], acc_ref[...]), q_ref[...], k_ref[...],
                             v_ref[...], cols, qpos_ref[...], scale, softcap)
    m_ref[...], l_ref[...], acc_ref[...] = m, l, acc

  @pl.when(j == pl.num_programs(3) - 1)
  def _out():
    o_ref[...] = _finish(l_ref[...], acc_ref[...]).astype(o_ref.dtype)


def _call_mosaic(qm, qpos, k_pool, v_pool, page_table, lens, *, g, bm, scale, softcap, interpret):
  n, num_kv, rows, h = qm.shape
  page_size = k_pool.shape[2]
  m = page_table.shape[1]

  def page_index(i, j, r, p, pt, kvl, ql):
    # Past the block's last visible page, repeat that page: the pipeline sees an unchanged block
    # index and issues no DMA, and the kernel skips the compute.
    last = jnp.maximum(_cdiv(_block_keys(kvl[i], ql[i], r, bm, g), page_size) - 1, 0)
    return j, pt[i * m + jnp.minimum(p, last)], 0, 0

  pool_spec = pl.BlockSpec((None, None, page_size, h), page_index)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(n, num_kv, rows // bm, m),
      in_specs=[
          pl.BlockSpec((None, None, bm, h), lambda i, j, r, p, *_: (i, j, r, 0)),
          pl.BlockSpec((None, bm, 1), lambda i, j, r, p, *_: (i, r, 0)),
          pool_spec, pool_spec,
      ],
      out_specs=pl.BlockSpec((None, None, bm, h), lambda i, j, r, p, *_: (i, j, r, 0)),
      scratch_shapes=[pltpu.VMEM((bm, 1), jnp.float32), pltpu.VMEM((bm, 1), jnp.float32),
                      pltpu.VMEM((bm, h), jnp.float32)],
  )
  return pl.pallas_call(
      functools.partial(_mosaic_kernel, g=g, scale=scale, softcap=softcap),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct(qm.shape, qm.dtype),
      compiler_params=C.mosaic_params("parallel", "parallel", "parallel", "arbitrary"),
      interpret=interpret,
      name="paged_attention_mosaic",
  )(page_table.reshape(-1), lens[:, 0], lens[:, 1], qm, qpos, k_pool, v_pool)


@functools.partial(jax.jit, static_argnames=("backend", "block_m", "scale", "softcap",
                                             "interpret"))
def _paged_pallas(q, k_pool, v_pool, page_table, kv_lens, q_lens, *, backend, block_m, scale,
                  softcap, interpret):
  """Regroups q [N,T,Q,H] to rows [N,K,T·G(padded),H], runs one kernel, undoes the grouping."""
  n, t, num_q, h = q.shape
  num_kv = k_pool.shape[0]
  g = num_q // num_kv
  rows = t * g
  if backend == "triton":
    bm = min(block_m, max(_MIN_DOT, pl.next_power_of_2(rows)))
  else:  # Mosaic: a multiple of the sublane packing (8 rows of f32, 16 of bf16)
    sub = 8 * max(1, 4 // jnp.dtype(q.dtype).itemsize)
    bm = pl.cdiv(min(block_m, rows), sub) * sub
  rows_p = pl.cdiv(rows, bm) * bm
  qm = q.reshape(n, t, num_kv, g, h).transpose(0, 2, 1, 3, 4).reshape(n, num_kv, rows, h)
  qm = jnp.pad(qm, ((0, 0), (0, 0), (0, rows_p - rows), (0, 0)))
  qpos = jnp.repeat(_query_positions(kv_lens, q_lens, t), g, axis=1)  # [N, T·G]
  qpos = jnp.pad(qpos, ((0, 0), (0, rows_p - rows)), constant_values=-1)[..., None]
  lens = jnp.stack([kv_lens, q_lens], axis=1)  # [N, 2]
  pt = jnp.clip(page_table, 0, k_pool.shape[1] - 1)  # sentinel entries are never visible
  call = _call_triton if backend == "triton" else _call_mosaic
  out = call(qm, qpos, k_pool, v_pool, pt, lens, g=g, bm=bm, scale=scale, softcap=softcap,
             interpret=interpret)
  out = out[:, :, :rows].reshape(n, num_kv, t, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(n, t, num_q, h)


# ------------------------------------------------------------------------------------------------
# Public wrapper.


def _validate(q, k_pool, v_pool, page_table, kv_lens, q_lens):
  q = C.check_logits(q, "q", 4)
  k_pool = C.check_logits(k_pool, "k_pool", 4)
  v_pool = C.check_logits(v_pool, "v_pool", 4)
  n, t, num_q, h = q.shape
  num_kv = k_pool.shape[0]
  if k_pool.shape[3] != h or num_q % num_kv:
    raise ValueError(f"k_pool must be [K, P_pages, S_page, H={h}] with K dividing Q={num_q}, "
                     f"got {tuple(k_pool.shape)}")
  if v_pool.shape != k_pool.shape:
    raise ValueError(f"v_pool must have k_pool's shape {tuple(k_pool.shape)}, got "
                     f"{tuple(v_pool.shape)}")
  ints = []
  for name, x, shape in (("page_table", page_table, None), ("kv_lens", kv_lens, (n,)),
                         ("q_lens", jnp.full((n,), t, jnp.int32) if q_lens is None else q_lens,
                          (n,))):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{name} must be an integer array, got dtype {x.dtype}")
    if shape is None and (x.ndim != 2 or x.shape[0] != n):
      raise ValueError(f"page_table must be [N={n}, M_pages], got shape {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
      raise ValueError(f"{name} must be [N={n}], got shape {tuple(x.shape)}")
    ints.append(x.astype(jnp.int32))
  return (q, k_pool, v_pool, *ints)


def paged_attention(q: jax.Array, k_pool: jax.Array, v_pool: jax.Array, page_table: jax.Array,
                    kv_lens: jax.Array, q_lens: jax.Array | None = None, *, scale: float,
                    softcap: float | None = None, impl: str = "auto",
                    pallas_backend: str | None = None, block_m: int | None = None,
                    interpret: bool | None = None) -> jax.Array:
  """Ragged paged attention (module docstring): o [N, T, Q, H] in q's dtype, f32 accumulation.

  Args:
    q: [N, T, Q, H] queries of the new tokens (T = the chunk bucket; 1 for decode).
    k_pool, v_pool: [K, P_pages, S_page, H] one layer's page pools (any float dtype).
    page_table: int [N, M_pages] pool pages of each sequence, padded with any out-of-range id
      (the allocator's sentinel P_pages); entries past ⌈kv_lens/S_page⌉ are never read.
    kv_lens: int [N] cached tokens per sequence, the chunk's own included (q_lens ≤ kv_lens ≤
      M_pages·S_page; not checked: they are traced).
    q_lens: int [N] valid queries per sequence (≤ T; default T): rows past it return 0.
    scale: logit scale (usually H^-1/2). softcap: optional tanh soft-cap of the logits.
    impl: 'auto' (Pallas on GPU/TPU, jnp elsewhere) | 'pallas' | 'jnp' (= the reference;
      'xla' is an alias).
    pallas_backend: 'triton' | 'mosaic' | None (mosaic on TPU, triton otherwise).
    block_m: query rows (T·G of one KV head) per program; Triton: a power of 2 >= 16
      (default 64); Mosaic: a multiple of 8 (default 128).
    interpret: Pallas interpret mode (default: on when Pallas runs on CPU).
  The Triton kernel needs S_page and H powers of 2 >= 16 (tl.dot tiles); 'auto' falls back to
  jnp otherwise, 'pallas' raises.
  """
  q, k_pool, v_pool, page_table, kv_lens, q_lens = _validate(q, k_pool, v_pool, page_table,
                                                             kv_lens, q_lens)
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"interpret must be a bool or None, got {interpret!r}")
  if pallas_backend is not None and pallas_backend not in C.PALLAS_BACKENDS:
    raise ValueError(f"pallas_backend must be one of {C.PALLAS_BACKENDS} or None, "
                     f"got {pallas_backend!r}")
  if block_m is not None and (isinstance(block_m, bool) or not isinstance(block_m, int)
                              or block_m <= 0):
    raise ValueError(f"block_m must be a positive int or None, got {block_m!r}")
  platform = C._platform()
  explicit = impl == "pallas"
  if impl == "auto":
    impl = "pallas" if platform in ("gpu", "tpu") else "jnp"
  softcap = None if softcap is None else float(softcap)
  if impl in ("jnp", "xla"):
    return paged_attention_reference(q, k_pool, v_pool, page_table, kv_lens, q_lens,
                                     scale=scale, softcap=softcap)
  backend = pallas_backend or ("mosaic" if platform == "tpu" else "triton")
  if interpret is None:
    interpret = platform == "cpu"
  if not interpret and platform != ("gpu" if backend == "triton" else "tpu"):
    raise ValueError(f"pallas_backend={backend!r} compiles only on a "
                     f"{'GPU' if backend == 'triton' else 'TPU'} (this is {platform}); pass "
                     f"interpret=True or impl='jnp'")
  page_size, h = k_pool.shape[2], k_pool.shape[3]
  if backend == "triton":
    if not (C._is_pow2(page_size) and C._is_pow2(h) and min(page_size, h) >= _MIN_DOT):
      if explicit:
        raise ValueError(f"the Triton paged-attention kernel needs S_page and H powers of 2 >= "
                         f"{_MIN_DOT}, got k_pool of shape {tuple(k_pool.shape)}")
      return paged_attention_reference(q, k_pool, v_pool, page_table, kv_lens, q_lens,
                                       scale=scale, softcap=softcap)
    if block_m is not None and (block_m < _MIN_DOT or not C._is_pow2(block_m)):
      raise ValueError(f"block_m must be a power of 2 >= {_MIN_DOT} for pallas_backend='triton', "
                       f"got {block_m}")
    bm = block_m or 64
  else:
    if block_m is not None and block_m % 8:
      raise ValueError(f"block_m must be a multiple of 8 for pallas_backend='mosaic', "
                       f"got {block_m}")
    bm = block_m or 128
  return _paged_pallas(q, k_pool, v_pool, page_table, kv_lens, q_lens, backend=backend,
                       block_m=bm, scale=float(scale), softcap=softcap, interpret=interpret)
