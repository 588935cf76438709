"""Model-side TokenSelect: the Selection Cache state and one layer's selected attention.

Used by `transformer.forward` when `config.attention == 'tokenselect'` and a KV cache is given
(prefill in chunks of `tokenselect.chunk_size`, and decode); training forwards (no cache) always
use full attention. Kernels and the algorithm: `tokenrl.kernels.tokenselect`.

Selection Cache (paper §3; reference `QUERY_CACHE`, off in the released code): per layer and row
we keep an anchor fingerprint a [Q·H] (the pre-RoPE chunk-mean query that produced the cached
selection) and its top-k slots. For the next fingerprint q̄ (pre-RoPE, so the rotation of a moving
position does not lower the similarity), if cos(q̄, a) = <q̄,a>/(|q̄||a|) ≥ θ the cached top-k is
reused (the init and local windows are still rebuilt for the current length); otherwise the votes
are recomputed and (anchor, top-k) replaced. Scoring is skipped (lax.cond) only when every row of
the batch hits; otherwise rows that hit keep their cached slots through a per-row select.

Cache state, added to the KV cache dict under "ts" (leading axis L = layers):
  anchor [L,N,Q·H] f32   topk [L,N,top_k] int32   has [L,N] bool (a non-fallback selection is
  cached)   hits [L] int32 (steps served from the cache)   calls [L] int32 (non-fallback steps).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tokenrl.kernels import tokenselect as K
from tokenrl.models.config import ModelConfig


def init_state(config: ModelConfig, batch: int) -> dict[str, jax.Array]:
  """Empty Selection Cache state for `batch` rows (see the module docstring)."""
  ts = config.tokenselect
  nl, qh = config.num_layers, config.num_heads * config.head_dim
  return {"anchor": jnp.zeros((nl, batch, qh), jnp.float32),
          "topk": jnp.zeros((nl, batch, ts.top_k), jnp.int32),
          "has": jnp.zeros((nl, batch), bool),
          "hits": jnp.zeros((nl,), jnp.int32),
          "calls": jnp.zeros((nl,), jnp.int32)}


def always_full(config: ModelConfig, cache_len: int) -> bool:
  """True when the selection covers every slot of a cache of `cache_len` (C ≤ T): full attention."""
  return cache_len <= config.tokenselect.k_total


def skip_rate(cache: dict[str, Any]) -> jax.Array:
  """Fraction of non-fallback (layer, row, step) selections served from the Selection Cache."""
  ts = cache["ts"]
  return jnp.sum(ts["hits"]) / jnp.maximum(jnp.sum(ts["calls"]), 1)


def _mean_query(q: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over the valid queries of the chunk: q [N,S,Q,H], valid [N,S] -> [N,Q,H] f32."""
  w = valid.astype(jnp.float32)
  total = jnp.einsum("ns,nsqh->nqh", w, q.astype(jnp.float32))
  return total / jnp.maximum(jnp.sum(w, axis=1), 1.0)[:, None, None]


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cos(a, b) of [N, M] arrays (0 when either is zero)."""
  dot = jnp.sum(a * b, axis=-1)
  norm = jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))
  return jnp.where(norm > 0, dot / jnp.where(norm > 0, norm, 1.0), 0.0)


def select(q_rot: jax.Array, q_pre: jax.Array, valid_q: jax.Array, k_all: jax.Array,
           kpos: jax.Array, end: jax.Array, state: dict[str, jax.Array], *,
           config: ModelConfig, layer: jax.Array | int | None = None):
  """One layer's selection: (slots [N,T] int32, valid [N,T] bool, new per-layer state).

  q_rot / q_pre: the chunk's queries [N,S,Q,H] after / before RoPE; valid_q [N,S] (pads False).
  k_all [N,C,K,H] this layer's key cache (chunk already written), or the stacked cache
  [L,N,C,K,H] with `layer` (int [], may be traced; read in place); kpos [N,C] slot positions
  (−1 empty); end [] or [N] = one past the last written slot. state: this layer's slices of the
  "ts" dict (anchor [N,Q·H], topk [N,k], has [N], hits [], calls []).
  """
  ts = config.tokenselect
  n_row = jnp.sum(kpos >= 0, axis=1).astype(jnp.int32)  # tokens held by each row
  end = jnp.broadcast_to(jnp.asarray(end, jnp.int32), n_row.shape)
  first = end - n_row  # rows are contiguous [first, end): left padding, then the tokens
  fallback = n_row <= ts.k_total
  q_bar = _mean_query(q_rot, valid_q)  # [N,Q,H], scoring fingerprint (rotated)
  fp = _mean_query(q_pre, valid_q).reshape(n_row.shape[0], -1)  # [N,Q·H], cache fingerprint
  if ts.cache:
    hit = state["has"] & (_cosine(fp, state["anchor"]) >= ts.threshold) & ~fallback
  else:
    hit = jnp.zeros_like(fallback)

  def compute(_):
    votes = K.criticality_votes(q_bar, k_all, first + ts.n_init, end - ts.n_local, layer=layer,
                                gqa=ts.gqa, impl=ts.impl)
    return K.topk_from_votes(votes, ts.top_k)

  skip = jnp.all(hit | fallback)
  fresh = jax.lax.cond(skip, lambda _: state["topk"], compute, None)
  topk = jnp.where(hit[:, None], state["topk"], fresh)
  slots, valid = K.select_tokens(None, first, end, top_k=ts.top_k, n_init=ts.n_init,
                                 n_local=ts.n_local, topk_slots=topk)
  new_state = {
      "anchor": jnp.where(hit[:, None], state["anchor"], fp),
      "topk": topk,
      "has": ~fallback,
      "hits": state["hits"] + jnp.sum(hit).astype(jnp.int32),
      "calls": state["calls"] + jnp.sum(~fallback).astype(jnp.int32),
  }
  return slots, valid, new_state


def attend(q_rot: jax.Array, q_pre: jax.Array, positions: jax.Array, valid_q: jax.Array,
           k_all: jax.Array, v_all: jax.Array, kpos: jax.Array, end: jax.Array,
           state: dict[str, jax.Array], *, config: ModelConfig,
           layer: jax.Array | int | None = None):
  """TokenSelect attention of one layer: (out [N,S,Q,H], new per-layer state).

  Selects (see `select`), gathers the selected K/V rows and attends with the model's scale and
  logit soft-cap at true positions (key visible iff selected, position ≥ 0 and ≤ the query's).
  k_all / v_all: [N,C,K,H], or the stacked [L,N,C,K,H] with `layer`.
  """
  slots, valid, new_state = select(q_rot, q_pre, valid_q, k_all, kpos, end, state, config=config,
                                   layer=layer)
  k_sel, v_sel, kpos_sel = K.gather_selected(k_all, v_all, kpos, slots, valid, layer=layer)
  # Pad queries (valid_q False) see nothing: their output is discarded by every caller.
  q_pos = jnp.where(valid_q, positions, -1)
  out = K.selected_attention(q_rot, k_sel.astype(q_rot.dtype), v_sel.astype(q_rot.dtype), q_pos,
                             kpos_sel, scale=config.attn_scale, softcap=config.attn_logit_softcap,
                             impl=config.tokenselect.impl)
  return out, new_state
