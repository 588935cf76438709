"""TokenSelect kernels: criticality scoring, top-k selection, attention over the selection.

TokenSelect (Wu, Pan et al., arXiv 2411.02886, EMNLP 2025; reference code pzs19/TokenSelect,
`patcher/token_retrieval.py`) picks, per layer and step, the KV slots one chunk of queries attends
to. With q̄ [Q,H] the mean query of the chunk, K [C,K,H] the cached keys, kvh(h) the KV head of
query head h and the candidate slots j ∈ [lo, hi) (lo = first + n_init, hi = n_end − n_local):

  s_hj = <q̄_h, K_{kvh(h), j}>                  per-head logit, no 1/√H scaling, no soft-cap
  V_j  = Σ_h exp(s_hj − M_h) / S_h              per-head softmax over candidates, summed over heads
         M_h = max_j s_hj,  S_h = Σ_j exp(s_hj − M_h)
  sel  = [first, first+n_init) ∪ sort(top_k(V)) ∪ [n_end − n_local, n_end)

Q query heads, K KV heads, G = Q/K, H head dim, C cache slots, N rows, T selected slots. When
n_init + top_k + n_local ≥ n (tokens in the row) the selection is every token (full fallback).

Kernels (each with a plain-jnp `*_reference`):
  * `criticality_logits` (S1, Pallas): grid (N, K, C/bT). One program loads one key block
    [bT,H] of one KV head once and scores all G query heads of that head ([Gp,H]·[H,bT] dot,
    G padded to ≥ 16 for the Triton dot), writing logits [N,K,Gp,C] f32 and per-block softmax
    partials (m, s) [N,K,Gp,C/bT]. Blocks outside [lo, hi) skip the key load. The reference
    kernel instead re-reads each key block once per query head (G times). With `layer`, k is
    the model's stacked cache [L,N,C,K,H] and the kernel reads that layer in place (a traced
    layer index under the layer scan; no per-layer copy of the cache).
  * `criticality_votes`: S1, then the partials merged per head in jnp (M_h, S_h) and the votes
    V_j = Σ_h exp(l_hj − M_h)/S_h as one fused XLA pass over the logits (S2); −inf off-candidates.
  * `select_tokens`: exact `lax.top_k` (ties: lowest slot first), sorted, concatenated with the
    windows; the full-fallback rows get first + arange(T) with a validity mask.
  * `selected_attention` (Pallas): flash attention of the chunk's queries over the gathered
    selection K/V [N,T,K,H] (gathered by XLA, `gather_selected`); grid (N, K, rows/bM), loop over
    T in blocks of bT with an online softmax; visibility from positions (key pos ≥ 0 and ≤ the
    query's). Forward only (inference: decode and chunked prefill), no gradient.

Positions: unlike the reference (un-rotated key cache, RoPE re-applied at positions within the
gathered list), tokenrl's cache holds keys rotated at their true positions; q̄ is the mean of the
rotated queries, so s_hj is the true per-head logit, and attention over the selection keeps true
positions (a full-coverage selection is exactly full attention). No length extrapolation.

GQA: gqa='group' maps query head h to KV head h // G (HF repeat_kv); gqa='modulo' to h % K,
the reference Triton kernel's mapping. Both are a reordering of q̄'s heads before the kernel.

Backends: impl='pallas' is the Triton-style kernel (GPU; interpret mode on CPU); 'jnp' is the
same math in XLA; 'auto' = Pallas on GPU, jnp elsewhere (no Mosaic/TPU kernel yet: 'auto' on
TPU is jnp).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from tokenrl.kernels import _common as C

__all__ = [
    "criticality_logits",
    "criticality_votes",
    "criticality_votes_reference",
    "select_tokens",
    "select_tokens_reference",
    "topk_from_votes",
    "tokenselect_reference",
    "gather_selected",
    "selected_attention",
    "selected_attention_reference",
    "group_query_heads",
]

IMPLS = ("auto", "pallas", "jnp")
GQA_MODES = ("group", "modulo")
_MIN_DOT = 16  # Triton's tl.dot needs every dim >= 16


def _resolve(impl: str, interpret: bool | None) -> tuple[str, bool]:
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(f"interpret must be a bool or None, got {interpret!r}")
  platform = C._platform()
  if impl == "auto":
    impl = "pallas" if platform == "gpu" else "jnp"
  if impl == "jnp":
    return "jnp", False
  if interpret is None:
    interpret = platform != "gpu"
  if not interpret and platform != "gpu":
    raise ValueError(f"the TokenSelect Pallas kernels compile only on a GPU (Triton); this is "
                     f"{platform}: pass interpret=True or impl='jnp'")
  return "pallas", interpret


def _check_block(name: str, val: int | None, default: int) -> int:
  if val is None:
    return default
  if isinstance(val, bool) or not isinstance(val, int) or val < _MIN_DOT or not C._is_pow2(val):
    raise ValueError(f"{name} must be a power of 2 >= {_MIN_DOT}, got {val!r}")
  return val


def _check_array(x: Any, name: str, ndim: int, floating: bool = True) -> jax.Array:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{name} must be an array, got {type(x).__name__}")
  if x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
  kind = jnp.floating if floating else jnp.integer
  if not jnp.issubdtype(x.dtype, kind):
    raise ValueError(f"{name} must be {'floating' if floating else 'integer'}, got {x.dtype}")
  return jnp.asarray(x)


def group_query_heads(q: jax.Array, num_kv: int, gqa: str = "group") -> jax.Array:
  """q [..., Q, H] -> [..., K, G, H]: row (k, g) is the query head that reads KV head k.

  'group': head h = k·G + g (h // G = k). 'modulo': head h = g·K + k (h % K = k).
  """
  if gqa not in GQA_MODES:
    raise ValueError(f"gqa must be one of {GQA_MODES}, got {gqa!r}")
  *lead, num_q, h = q.shape
  g = num_q // num_kv
  if gqa == "group":
    return q.reshape(*lead, num_kv, g, h)
  return jnp.swapaxes(q.reshape(*lead, g, num_kv, h), -3, -2)


def _validate_scoring(q_bar, k, lo, hi, layer=None):
  """Checks the scoring arguments; returns (q_bar, k as [L,N,C,K,H], lo, hi, layer int32 [])."""
  q_bar = _check_array(q_bar, "q_bar", 3)
  stacked = layer is not None
  k = _check_array(k, "k", 5 if stacked else 4)
  k5 = k if stacked else k[None]
  n, num_q, h = q_bar.shape
  want = "[L, N={}, C, K, H={}]" if stacked else "[N={}, C, K, H={}]"
  if k5.shape[1] != n or k5.shape[4] != h:
    raise ValueError(f"k must be {want.format(n, h)}, got shape {tuple(k.shape)}")
  if num_q % k5.shape[3]:
    raise ValueError(f"q_bar has {num_q} heads, not a multiple of k's {k5.shape[3]} KV heads")
  lo = _check_array(jnp.asarray(lo), "lo", 1, floating=False)
  hi = _check_array(jnp.asarray(hi), "hi", 1, floating=False)
  if lo.shape != (n,) or hi.shape != (n,):
    raise ValueError(f"lo and hi must be [N={n}], got {tuple(lo.shape)} and {tuple(hi.shape)}")
  layer = jnp.asarray(0 if layer is None else layer, jnp.int32)
  if layer.shape != ():
    raise ValueError(f"layer must be a scalar int, got shape {tuple(layer.shape)}")
  return q_bar, k5, lo.astype(jnp.int32), hi.astype(jnp.int32), layer


# ------------------------------------------------------------------------------------------------
# S1: per-head logits + per-block softmax partials.


def _score_kernel(bounds_ref, q_ref, k_ref, l_ref, m_ref, s_ref, *, block_t: int):
  """One (row, KV head, key block b): bounds_ref [3] = (lo, hi, layer); q_ref [Gp,H] f32;
  k_ref [L,C,H] (every layer of the row: the stacked cache is read in place, no per-layer copy;
  rows of block b are loaded with a mask, Triton does not bound-check block loads);
  l_ref [Gp,bT] (the logits buffer is padded to a multiple of bT), m/s [Gp,1]."""
  b = pl.program_id(2)
  c = k_ref.shape[1]
  lo = bounds_ref[0]
  hi = bounds_ref[1]
  layer = bounds_ref[2]
  start = b * block_t
  active = (start < hi) & (start + block_t > lo)

  @pl.when(active)
  def _score():
    rows = start + lax.broadcasted_iota(jnp.int32, (block_t, k_ref.shape[2]), 0)
    k = plgpu.load(k_ref.at[layer, pl.ds(start, block_t), :], mask=rows < c, other=0)
    q = q_ref[...].astype(k.dtype)
    logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)  # [Gp, bT]
    cols = start + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    ok = (cols >= lo) & (cols < hi)
    # `where`, not a multiply: the tail block past C may hold NaN (interpret) or garbage.
    logits = jnp.where(ok, logits, -jnp.inf)
    m = jnp.max(logits, axis=1, keepdims=True)  # [Gp, 1]
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    e = jnp.where(ok, jnp.exp(logits - m_safe), 0.0)
    l_ref[...] = logits
    m_ref[...] = m
    s_ref[...] = jnp.sum(e, axis=1, keepdims=True)

  @pl.when(jnp.logical_not(active))
  def _skip():  # no key load: the block holds no candidate
    l_ref[...] = jnp.full(l_ref.shape, -jnp.inf, jnp.float32)
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    s_ref[...] = jnp.zeros(s_ref.shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("gqa", "block_t", "interpret"))
def _logits_pallas(q_bar, k, lo, hi, layer, *, gqa, block_t, interpret):
  """k [L,N,C,K,H] (stacked layers), layer int []: scores layer `layer`."""
  n, num_q, h = q_bar.shape
  num_layers, c, num_kv = k.shape[0], k.shape[2], k.shape[3]
  g = num_q // num_kv
  gp = max(_MIN_DOT, pl.next_power_of_2(g))
  qg = group_query_heads(q_bar.astype(jnp.float32), num_kv, gqa)  # [N,K,G,H]
  qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gp - g), (0, 0)))
  nb = pl.cdiv(c, block_t)
  bounds = jnp.stack([lo, hi, jnp.broadcast_to(jnp.asarray(layer, jnp.int32), lo.shape)],
                     axis=1)  # [N, 3]
  part = pl.BlockSpec((None, None, gp, 1), lambda i, j, b: (i, j, 0, b))
  logits, m, s = pl.pallas_call(
      functools.partial(_score_kernel, block_t=block_t),
      grid=(n, num_kv, nb),
      in_specs=[
          pl.BlockSpec((None, 3), lambda i, j, b: (i, 0)),
          pl.BlockSpec((None, None, gp, h), lambda i, j, b: (i, j, 0, 0)),
          pl.BlockSpec((num_layers, None, c, None, h), lambda i, j, b: (0, i, 0, j, 0)),
      ],
      out_specs=[pl.BlockSpec((None, None, gp, block_t), lambda i, j, b: (i, j, 0, b)), part, part],
      out_shape=[jax.ShapeDtypeStruct((n, num_kv, gp, nb * block_t), jnp.float32),
                 jax.ShapeDtypeStruct((n, num_kv, gp, nb), jnp.float32),
                 jax.ShapeDtypeStruct((n, num_kv, gp, nb), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="tokenselect_scores",
  )(bounds, qg, k)
  return logits[:, :, :g, :c], m[:, :, :g], s[:, :, :g]


def criticality_logits(q_bar: jax.Array, k: jax.Array, lo: jax.Array, hi: jax.Array, *,
                       layer: jax.Array | int | None = None, gqa: str = "group",
                       block_t: int | None = None, interpret: bool | None = None):
  """S1 (Pallas): logits l [N,K,G,C] f32 and per-block partials (m, s) [N,K,G,C/bT].

  l_{kgj} = <q̄_{h(k,g)}, K_{j,k}> for candidates j ∈ [lo, hi), −inf elsewhere;
  m_b = max_{j∈b} l_j, s_b = Σ_{j∈b} exp(l_j − m_b) (−inf, 0 for a block without candidates).

  Args:
    q_bar: [N,Q,H] fingerprint queries (any float; computed in k's dtype, f32 accumulation).
    k: [N,C,K,H] the key cache of one layer, or with `layer` the stacked cache [L,N,C,K,H]
      (read in place: no copy of the layer's slice is made for the kernel).
    lo, hi: int [N] candidate slot range per row.
    layer: int [] (may be traced) layer of a stacked k; None for a 4-D k.
    gqa: 'group' | 'modulo' head mapping (see `group_query_heads`).
    block_t: key slots per program (power of 2 >= 16; default 256).
    interpret: interpret mode (default: off on GPU only).
  """
  q_bar, k, lo, hi, layer = _validate_scoring(q_bar, k, lo, hi, layer)
  if k.shape[4] < _MIN_DOT or not C._is_pow2(k.shape[4]):
    raise ValueError(f"the Pallas scoring kernel needs a power-of-2 head dim >= 16, got "
                     f"k of shape {tuple(k.shape)}")
  if gqa not in GQA_MODES:
    raise ValueError(f"gqa must be one of {GQA_MODES}, got {gqa!r}")
  _, interpret = _resolve("pallas", interpret)
  block_t = _check_block("block_t", block_t, 256)
  return _logits_pallas(q_bar, k, lo, hi, layer, gqa=gqa, block_t=block_t, interpret=interpret)


def _votes_from_partials(logits, m, s):
  """S2: V_j = Σ_h exp(l_hj − M_h)/S_h from logits [N,K,G,C] and partials [N,K,G,nb] -> [N,C]."""
  big_m = jnp.max(m, axis=-1, keepdims=True)  # [N,K,G,1]
  m_safe = jnp.where(big_m == -jnp.inf, 0.0, big_m)
  big_s = jnp.sum(s * jnp.exp(m - m_safe), axis=-1, keepdims=True)
  inv = jnp.where(big_s > 0, 1.0 / jnp.where(big_s > 0, big_s, 1.0), 0.0)
  votes = jnp.sum(jnp.exp(logits - m_safe) * inv, axis=(1, 2))
  return votes


@functools.partial(jax.jit, static_argnames=("gqa",))
def _votes_jnp(q_bar, k, lo, hi, layer, *, gqa):
  k = lax.dynamic_index_in_dim(k, layer, 0, keepdims=False)  # [N,C,K,H]
  num_kv = k.shape[2]
  qg = group_query_heads(q_bar.astype(k.dtype), num_kv, gqa)  # [N,K,G,H]
  logits = jnp.einsum("nkgh,nckh->nkgc", qg, k, preferred_element_type=jnp.float32)
  cols = jnp.arange(k.shape[1])
  ok = (cols[None] >= lo[:, None]) & (cols[None] < hi[:, None])  # [N,C]
  logits = jnp.where(ok[:, None, None], logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m_safe = jnp.where(m == -jnp.inf, 0.0, m)
  e = jnp.exp(logits - m_safe)
  sums = jnp.sum(e, axis=-1, keepdims=True)
  votes = jnp.sum(e / jnp.where(sums > 0, sums, 1.0), axis=(1, 2))
  return jnp.where(ok, votes, -jnp.inf)


def criticality_votes(q_bar: jax.Array, k: jax.Array, lo: jax.Array, hi: jax.Array, *,
                      layer: jax.Array | int | None = None, gqa: str = "group",
                      impl: str = "auto", block_t: int | None = None,
                      interpret: bool | None = None) -> jax.Array:
  """Per-slot criticality votes V [N,C] f32 (−inf outside the candidates [lo, hi)).

  V_j = Σ_{h<Q} softmax_{j∈[lo,hi)}(s_h)_j with s_hj = <q̄_h, K_{j,kvh(h)}> (no scaling), the
  softmax per head over the row's candidates. Keys are read once (S1), the logits once (S2).
  Shapes and arguments as in `criticality_logits`; impl 'auto' | 'pallas' | 'jnp'.
  """
  q_bar, k, lo, hi, layer = _validate_scoring(q_bar, k, lo, hi, layer)
  if gqa not in GQA_MODES:
    raise ValueError(f"gqa must be one of {GQA_MODES}, got {gqa!r}")
  impl, interpret = _resolve(impl, interpret)
  if impl == "jnp" or k.shape[4] < _MIN_DOT or not C._is_pow2(k.shape[4]):
    return _votes_jnp(q_bar, k, lo, hi, layer, gqa=gqa)
  logits, m, s = criticality_logits(q_bar, k, lo, hi, layer=layer, gqa=gqa, block_t=block_t,
                                    interpret=interpret)
  cols = jnp.arange(k.shape[2])
  ok = (cols[None] >= lo[:, None]) & (cols[None] < hi[:, None])
  return jnp.where(ok, _votes_from_partials(logits, m, s), -jnp.inf)


def criticality_votes_reference(q_bar: jax.Array, k: jax.Array, lo: jax.Array, hi: jax.Array, *,
                                gqa: str = "group") -> jax.Array:
  """Plain jnp §2.2 steps 3–4, head by head in f32: per-head dot, softmax over [lo,hi), sum.

  k [N,C,K,H] (one layer)."""
  q_bar, k, lo, hi, _ = _validate_scoring(q_bar, k, lo, hi)
  k = k[0]
  num_q, num_kv = q_bar.shape[1], k.shape[2]
  g = num_q // num_kv
  cols = jnp.arange(k.shape[1])
  ok = (cols[None] >= lo[:, None]) & (cols[None] < hi[:, None])
  votes = jnp.zeros(ok.shape, jnp.float32)
  for h in range(num_q):
    kv = h // g if gqa == "group" else h % num_kv
    s = jnp.einsum("nh,nch->nc", q_bar[:, h].astype(jnp.float32), k[:, :, kv].astype(jnp.float32))
    votes = votes + jax.nn.softmax(jnp.where(ok, s, -jnp.inf), axis=-1, where=ok)
  return jnp.where(ok, votes, -jnp.inf)


# ------------------------------------------------------------------------------------------------
# Selection.


def select_tokens(votes: jax.Array, first: jax.Array, end: jax.Array, *, top_k: int, n_init: int,
                  n_local: int, topk_slots: jax.Array | None = None):
  """Slots [N,T] int32 and validity [N,T] bool of the selection, T = n_init + top_k + n_local.

  Row r holds tokens in slots [first_r, end_r) (n_r = end_r − first_r). If n_r > T the slots are
  [first, first+n_init) ∪ sort(top_k(votes)) ∪ [end − n_local, end) (all valid; ascending);
  otherwise (full fallback) first + arange(T), valid where < end. top_k ties: lowest slot first.

  Args:
    votes: [N,C] f32, −inf outside the candidates (from `criticality_votes`).
    first, end: int [N].
    topk_slots: optional [N,top_k] int32 precomputed top-k slots (a Selection Cache hit); then
      votes is not read (may be None).
  """
  if topk_slots is None:
    votes = _check_array(votes, "votes", 2)
    if votes.shape[1] < top_k:
      raise ValueError(f"votes has {votes.shape[1]} slots, fewer than top_k={top_k}")
    topk_slots = topk_from_votes(votes, top_k)
  first = jnp.asarray(first, jnp.int32)
  end = jnp.asarray(end, jnp.int32)
  total = n_init + top_k + n_local
  fallback = (end - first) <= total  # [N]
  sel = jnp.concatenate([first[:, None] + jnp.arange(n_init, dtype=jnp.int32),
                         topk_slots.astype(jnp.int32),
                         end[:, None] - n_local + jnp.arange(n_local, dtype=jnp.int32)], axis=1)
  every = first[:, None] + jnp.arange(total, dtype=jnp.int32)
  slots = jnp.where(fallback[:, None], every, sel)
  valid = jnp.where(fallback[:, None], every < end[:, None], True)
  return slots, valid


def topk_from_votes(votes: jax.Array, top_k: int) -> jax.Array:
  """Ascending slots [N,top_k] of the top_k largest votes (exact lax.top_k, lowest slot on ties)."""
  _, idx = lax.top_k(votes, top_k)
  return jnp.sort(idx.astype(jnp.int32), axis=-1)


def select_tokens_reference(votes: jax.Array, first: jax.Array, end: jax.Array, *, top_k: int,
                            n_init: int, n_local: int) -> list[list[int]]:
  """Per row, the selected slot list of §2.2 steps 1, 5, 6 built in Python (for tests)."""
  import numpy as np
  votes = np.asarray(votes, np.float64)
  out = []
  for r in range(votes.shape[0]):
    f, e = int(first[r]), int(end[r])
    if e - f <= n_init + top_k + n_local:
      out.append(list(range(f, e)))
      continue
    cand = np.arange(f + n_init, e - n_local)
    order = sorted(cand.tolist(), key=lambda j: (-votes[r, j], j))[:top_k]
    out.append(list(range(f, f + n_init)) + sorted(order) + list(range(e - n_local, e)))
  return out


def tokenselect_reference(q_bar: jax.Array, k: jax.Array, first: jax.Array, end: jax.Array, *,
                          top_k: int, n_init: int, n_local: int, gqa: str = "group"):
  """§2.2 end to end in jnp: votes over [first+n_init, end−n_local), top_k, sort, concat.

  q_bar [N,Q,H] (already the chunk-mean query with RoPE applied), k [N,C,K,H]. Returns
  (slots [N,T], valid [N,T]) as `select_tokens`.
  """
  first = jnp.asarray(first, jnp.int32)
  end = jnp.asarray(end, jnp.int32)
  votes = criticality_votes_reference(q_bar, k, first + n_init, end - n_local, gqa=gqa)
  return select_tokens(votes, first, end, top_k=top_k, n_init=n_init, n_local=n_local)


# ------------------------------------------------------------------------------------------------
# Attention over the selection.


def gather_selected(k: jax.Array, v: jax.Array, kpos: jax.Array, slots: jax.Array,
                    valid: jax.Array, layer: jax.Array | int | None = None):
  """(k_sel, v_sel [N,T,K,H], kpos_sel [N,T]) gathered by XLA; invalid slots get position −1.

  k, v [N,C,K,H], or with `layer` the stacked [L,N,C,K,H] (one gather of the selected rows of
  that layer, no copy of the layer slice); kpos [N,C] int (−1 = empty); slots [N,T] int;
  valid [N,T] bool. Slots are clipped to [0, C) (a clipped slot is always invalid).
  """
  c = kpos.shape[1]
  idx = jnp.clip(slots, 0, c - 1)
  if layer is None:
    k_sel = jnp.take_along_axis(k, idx[:, :, None, None], axis=1)
    v_sel = jnp.take_along_axis(v, idx[:, :, None, None], axis=1)
  else:
    rows = jnp.arange(idx.shape[0])[:, None]
    k_sel, v_sel = k[layer, rows, idx], v[layer, rows, idx]
  kpos_sel = jnp.where(valid, jnp.take_along_axis(kpos, idx, axis=1), -1)
  return k_sel, v_sel, kpos_sel


def _attn_kernel(q_ref, qp_ref, k_ref, v_ref, kp_ref, o_ref, *, block_t: int, scale: float,
                 softcap: float | None):
  """q_ref [bM,H], qp_ref [bM]; k_ref/v_ref [T,H], kp_ref [T] (T a multiple of bT); o_ref [bM,H]."""
  q = q_ref[...]
  qp = qp_ref[...]
  bm, h = q.shape
  t = k_ref.shape[0]

  def body(j, carry):
    m, l, acc = carry
    k = k_ref[pl.ds(j * block_t, block_t), :]
    v = v_ref[pl.ds(j * block_t, block_t), :]
    kp = kp_ref[pl.ds(j * block_t, block_t)]
    s = lax.dot_general(q.astype(k.dtype), k, (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32) * scale  # [bM, bT]
    if softcap is not None:
      s = jnp.tanh(s / softcap) * softcap
    vis = (kp[None, :] >= 0) & (kp[None, :] <= qp[:, None])
    s = jnp.where(vis, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - m_safe)
    p = jnp.where(vis, jnp.exp(s - m_safe[:, None]), 0.0)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                                 preferred_element_type=jnp.float32)
    return m_new, l, acc

  init = (jnp.full((bm,), -jnp.inf, jnp.float32), jnp.zeros((bm,), jnp.float32),
          jnp.zeros((bm, h), jnp.float32))
  _, l, acc = lax.fori_loop(0, t // block_t, body, init)
  o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("scale", "softcap", "block_t", "block_m", "interpret"))
def _attention_pallas(q, k_sel, v_sel, q_pos, kpos_sel, *, scale, softcap, block_t, block_m,
                      interpret):
  n, s, num_q, h = q.shape
  t, num_kv = k_sel.shape[1], k_sel.shape[2]
  g = num_q // num_kv
  # Rows (s, g) of each (n, k): [N,K,S·G,H]; the row's query position is q_pos[s].
  rows = s * g
  qm = q.reshape(n, s, num_kv, g, h).transpose(0, 2, 1, 3, 4).reshape(n, num_kv, rows, h)
  qp = jnp.repeat(q_pos.astype(jnp.int32), g, axis=1)  # [N, S·G]
  bm = min(block_m, max(_MIN_DOT, pl.next_power_of_2(rows)))
  rows_p = pl.cdiv(rows, bm) * bm
  t_p = pl.cdiv(t, block_t) * block_t
  qm = jnp.pad(qm, ((0, 0), (0, 0), (0, rows_p - rows), (0, 0)))
  qp = jnp.pad(qp, ((0, 0), (0, rows_p - rows)), constant_values=-1)
  k_sel = jnp.pad(k_sel, ((0, 0), (0, t_p - t), (0, 0), (0, 0)))
  v_sel = jnp.pad(v_sel, ((0, 0), (0, t_p - t), (0, 0), (0, 0)))
  kp = jnp.pad(kpos_sel.astype(jnp.int32), ((0, 0), (0, t_p - t)), constant_values=-1)
  kv_spec = pl.BlockSpec((None, t_p, None, h), lambda i, j, r: (i, 0, j, 0))
  out = pl.pallas_call(
      functools.partial(_attn_kernel, block_t=block_t, scale=scale, softcap=softcap),
      grid=(n, num_kv, rows_p // bm),
      in_specs=[
          pl.BlockSpec((None, None, bm, h), lambda i, j, r: (i, j, r, 0)),
          pl.BlockSpec((None, bm), lambda i, j, r: (i, r)),
          kv_spec, kv_spec,
          pl.BlockSpec((None, t_p), lambda i, j, r: (i, 0)),
      ],
      out_specs=pl.BlockSpec((None, None, bm, h), lambda i, j, r: (i, j, r, 0)),
      out_shape=jax.ShapeDtypeStruct((n, num_kv, rows_p, h), q.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
      interpret=interpret,
      name="tokenselect_attention",
  )(qm, qp, k_sel, v_sel, kp)
  out = out[:, :, :rows].reshape(n, num_kv, s, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(n, s, num_q, h)


def _validate_attention(q, k_sel, v_sel, q_pos, kpos_sel):
  q = _check_array(q, "q", 4)
  k_sel = _check_array(k_sel, "k_sel", 4)
  v_sel = _check_array(v_sel, "v_sel", 4)
  q_pos = _check_array(jnp.asarray(q_pos), "q_pos", 2, floating=False)
  kpos_sel = _check_array(jnp.asarray(kpos_sel), "kpos_sel", 2, floating=False)
  n, s, num_q, h = q.shape
  if k_sel.shape[0] != n or k_sel.shape[3] != h or num_q % k_sel.shape[2]:
    raise ValueError(f"k_sel must be [N={n}, T, K, H={h}] with K dividing Q={num_q}, got "
                     f"{tuple(k_sel.shape)}")
  if v_sel.shape != k_sel.shape:
    raise ValueError(f"v_sel must have k_sel's shape {tuple(k_sel.shape)}, got {tuple(v_sel.shape)}")
  if q_pos.shape != (n, s):
    raise ValueError(f"q_pos must be [N={n}, S={s}], got {tuple(q_pos.shape)}")
  if kpos_sel.shape != k_sel.shape[:2]:
    raise ValueError(f"kpos_sel must be [N, T] = {tuple(k_sel.shape[:2])}, got "
                     f"{tuple(kpos_sel.shape)}")
  return q, k_sel, v_sel, q_pos, kpos_sel


def selected_attention_reference(q: jax.Array, k_sel: jax.Array, v_sel: jax.Array,
                                 q_pos: jax.Array, kpos_sel: jax.Array, *, scale: float,
                                 softcap: float | None = None) -> jax.Array:
  """GQA attention over the selection in jnp (f32 scores/softmax), [N,S,Q,H].

  o_{s,h} = Σ_t softmax_t(a_st)·V_{t,kvh(h)}, a_st = cap(scale·<q_sh, K_{t,kvh(h)}>), over the
  visible t: kpos_sel[t] ≥ 0 and kpos_sel[t] ≤ q_pos[s]; kvh(h) = h // G. A query with no visible
  key gets 0 (the Pallas kernel's convention).
  """
  q, k_sel, v_sel, q_pos, kpos_sel = _validate_attention(q, k_sel, v_sel, q_pos, kpos_sel)
  n, s, num_q, h = q.shape
  num_kv = k_sel.shape[2]
  qg = q.reshape(n, s, num_kv, num_q // num_kv, h).astype(jnp.float32)
  a = jnp.einsum("nskgh,ntkh->nkgst", qg, k_sel.astype(jnp.float32)) * scale
  if softcap is not None:
    a = jnp.tanh(a / softcap) * softcap
  vis = (kpos_sel[:, None, :] >= 0) & (kpos_sel[:, None, :] <= q_pos[:, :, None])  # [N,S,T]
  vis = vis[:, None, None]
  p = jax.nn.softmax(jnp.where(vis, a, -jnp.inf), axis=-1, where=vis)
  p = jnp.where(vis, p, 0.0)
  out = jnp.einsum("nkgst,ntkh->nskgh", p, v_sel.astype(jnp.float32))
  return out.reshape(n, s, num_q, h).astype(q.dtype)


def selected_attention(q: jax.Array, k_sel: jax.Array, v_sel: jax.Array, q_pos: jax.Array,
                       kpos_sel: jax.Array, *, scale: float, softcap: float | None = None,
                       impl: str = "auto", block_t: int | None = None, block_m: int | None = None,
                       interpret: bool | None = None) -> jax.Array:
  """Attention of queries q [N,S,Q,H] over the gathered selection k_sel/v_sel [N,T,K,H].

  o = softmax(cap(scale·q·k_selᵀ) masked to kpos_sel ∈ [0, q_pos]) · v_sel per query head, KV
  head h // G; f32 accumulation, output in q's dtype. impl='pallas': flash-style kernel (grid
  (N, K, S·G/bM), online softmax over T in blocks of bT; forward only). impl='jnp': the masked
  einsum of `tokenrl.models.layers.attention` (a query with no visible key then averages
  uniformly, the model's convention; the kernel and the reference return 0 there).

  Args:
    q_pos: int [N,S] query positions. kpos_sel: int [N,T] key positions, −1 = not selected.
    block_t / block_m: key slots / query rows per program (powers of 2 >= 16; 128 / 64).
  """
  q, k_sel, v_sel, q_pos, kpos_sel = _validate_attention(q, k_sel, v_sel, q_pos, kpos_sel)
  impl, interpret = _resolve(impl, interpret)
  h = q.shape[3]
  if impl == "jnp" or h < _MIN_DOT or not C._is_pow2(h):
    from tokenrl.models import layers  # the model's attention: one code path on CPU
    vis = (kpos_sel[:, None, :] >= 0) & (kpos_sel[:, None, :] <= q_pos[:, :, None])
    return layers.attention(q, k_sel.astype(q.dtype), v_sel.astype(q.dtype), vis, scale=scale,
                            softcap=softcap)
  block_t = _check_block("block_t", block_t, 128)
  block_m = _check_block("block_m", block_m, 64)
  return _attention_pallas(q, k_sel, v_sel, q_pos, kpos_sel, scale=float(scale),
                           softcap=None if softcap is None else float(softcap), block_t=block_t,
                           block_m=block_m, interpret=interpret)
