"""The decoder as pure functions: `init_params`, `init_cache`, `forward`.

Params are a plain nested dict. Per-layer weights are stacked on a leading L axis and the layers
run under one `lax.scan`, so compile time does not grow with depth:

  embed [V,D]            lm_head [V,D] (untied only)        final_norm [D]
  layers/attn_norm [L,D]  q [L,D,Q,H]  k,v [L,D,K,H]  o [L,Q,H,D]
         q_bias [L,Q,H]  k_bias,v_bias [L,K,H]           (qwen2)
         q_norm,k_norm [L,H]                              (qwen3, gemma3)
         post_attn_norm [L,D]  post_mlp_norm [L,D]        (gemma3)
         mlp_norm [L,D]  gate,up [L,D,F]  down [L,F,D]

The KV cache is an explicit pytree passed in and returned:
  k, v [L,N,C,K,H]; pos [N,C] int32 (RoPE position held by each slot, -1 = empty or padding);
  index [] int32 (next slot to write; rows are aligned because prompts are left-padded),
        or int32 [N] (`init_cache(..., row_index=True)`): each row's own logical length and
        write column. Speculative decoding rolls a row back by lowering its index: slots at or
        beyond it are never attended (masked per row) and are overwritten by the next write,
        so stale entries need no zeroing.
`init_cache(..., per_layer=True)` gives the decode layout instead: k = L arrays [N,K,H,C]
(keys stored transposed), v = L arrays [N,K,C,H]. The layers then run unrolled (compile time
linear in L) and read each layer's cache in place: under the scan, XLA:CPU copies the
dynamic slice cache[l] ([N,C,K,H], transposed for the batched matmul) before every attention;
and keys [H,C] make QKᵀ a plain matmul (XLA:CPU runs [G,H]x[C,H]ᵀ ~3x slower). The sampler
uses it on CPU; the logits are the same up to float summation order.

With `config.attention == 'tokenselect'` the (stacked) cache also holds the Selection Cache
state under "ts" (see tokenrl.models.tokenselect); forward with a cache then attends each layer
to the TokenSelect selection, and runs prompts longer than `tokenselect.chunk_size` in chunks.
Without a cache (training) attention is always full.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # jax.core.Tracer moved in newer jax releases
  from jax.core import Tracer
except ImportError:  # pragma: no cover
  from jax._src.core import Tracer

from tokenrl.models import layers as L
from tokenrl.models import tokenselect as TS
from tokenrl.models.config import ModelConfig
from tokenrl.models.hooks import HookedOutput, Hooks, validate_hooks

Params = dict[str, Any]
Cache = dict[str, jax.Array]


def param_specs(config: ModelConfig) -> dict[str, Any]:
  """Nested dict of (shape, logical axis names) for every parameter of `config`.

  The single source of truth for init, eval_shape, HF loading and sharding rules.
  """
  c = config
  Ld, D, F, Q, K, H, V = c.num_layers, c.dim, c.mlp_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
  layer = {
      "attn_norm": ((Ld, D), ("layers", "norm")),
      "q": ((Ld, D, Q, H), ("layers", "embed", "heads", "head_dim")),
      "k": ((Ld, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
      "v": ((Ld, D, K, H), ("layers", "embed", "kv_heads", "head_dim")),
      "o": ((Ld, Q, H, D), ("layers", "heads", "head_dim", "embed")),
      "mlp_norm": ((Ld, D), ("layers", "norm")),
      "gate": ((Ld, D, F), ("layers", "embed", "mlp")),
      "up": ((Ld, D, F), ("layers", "embed", "mlp")),
      "down": ((Ld, F, D), ("layers", "mlp", "embed")),
  }
  if c.qkv_bias:
    layer["q_bias"] = ((Ld, Q, H), ("layers", "heads", "head_dim"))
    layer["k_bias"] = ((Ld, K, H), ("layers", "kv_heads", "head_dim"))
    layer["v_bias"] = ((Ld, K, H), ("layers", "kv_heads", "head_dim"))
  if c.qk_norm:
    layer["q_norm"] = ((Ld, H), ("layers", "norm"))
    layer["k_norm"] = ((Ld, H), ("layers", "norm"))
  if c.post_norms:
    layer["post_attn_norm"] = ((Ld, D), ("layers", "norm"))
    layer["post_mlp_norm"] = ((Ld, D), ("layers", "norm"))
  specs = {"embed": ((V, D), ("vocab", "embed")), "layers": layer, "final_norm": ((D,), ("norm",))}
  if not c.tie_embeddings:
    specs["lm_head"] = ((V, D), ("vocab", "embed"))
  return specs


def _is_spec(x: Any) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def param_logical_axes(config: ModelConfig) -> dict[str, Any]:
  """Same tree as the params, each leaf the tuple of logical axis names."""
  return jax.tree.map(lambda s: s[1], param_specs(config), is_leaf=_is_spec)


def param_shapes(config: ModelConfig) -> dict[str, Any]:
  return jax.tree.map(lambda s: s[0], param_specs(config), is_leaf=_is_spec)


def init_params(config: ModelConfig, rng: jax.Array, dtype: Any = jnp.float32) -> Params:
  """Random params: norms at identity, projections N(0, 1/fan_in), embeddings N(0, 1/D).

  With unit-RMS hidden states this keeps activations and (tied) logits at O(1) scale, which
  trains tiny models from scratch well; output projections are further scaled by 1/sqrt(2L).
  """
  specs = param_specs(config)
  flat, treedef = jax.tree.flatten_with_path(specs, is_leaf=_is_spec)
  keys = jax.random.split(rng, len(flat))
  depth_scale = (2 * config.num_layers) ** -0.5
  leaves = []
  for (path, (shape, axes)), key in zip(flat, keys):
    name = path[-1].key
    if axes[-1] == "norm":
      value = jnp.zeros(shape) if config.norm_plus_one else jnp.ones(shape)
    elif name.endswith("_bias"):
      value = jnp.zeros(shape)
    elif name in ("embed", "lm_head"):
      value = jax.random.normal(key, shape) * config.dim**-0.5
    else:
      fan_in = {"q": config.dim, "k": config.dim, "v": config.dim, "gate": config.dim,
                "up": config.dim, "o": config.num_heads * config.head_dim,
                "down": config.mlp_dim}[name]
      value = jax.random.normal(key, shape) * fan_in**-0.5
      if name in ("o", "down"):
        value = value * depth_scale
    leaves.append(value.astype(dtype))
  return jax.tree.unflatten(treedef, leaves)


def init_cache(config: ModelConfig, batch: int, length: int, dtype: Any = jnp.float32, *,
               per_layer: bool = False, row_index: bool = False) -> Cache:
  """An empty KV cache for `batch` rows (N) and `length` slots (C).

  per_layer=False: k, v [L,N,C,K,H] (one stacked array each, read inside the layer scan).
  per_layer=True: k a tuple of L arrays [N,K,H,C], v a tuple of L arrays [N,K,C,H] (the decode
  layout, see the module docstring). attention='tokenselect' adds the Selection Cache state
  "ts" (stacked layout only).
  row_index=False: index int32 [] (one write column for all rows).
  row_index=True: index int32 [N], each row's logical length: `forward` writes row n's S new
  tokens at slots index[n]..index[n]+S-1 and attends only to slots < index[n] + 1 + q for query
  q; setting cache["index"] lower rolls a row back (speculative decoding). The caller keeps
  index[n] + S <= C (a write past the end would be clamped onto earlier slots). Not for
  attention='tokenselect'.
  """
  n_kv, h = config.num_kv_heads, config.head_dim
  if per_layer:
    k = tuple(jnp.zeros((batch, n_kv, h, length), dtype) for _ in range(config.num_layers))
    v = tuple(jnp.zeros((batch, n_kv, length, h), dtype) for _ in range(config.num_layers))
  else:
    shape = (config.num_layers, batch, length, n_kv, h)
    k, v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
  index = jnp.zeros((batch,) if row_index else (), jnp.int32)
  cache = {"k": k, "v": v, "pos": jnp.full((batch, length), -1, jnp.int32), "index": index}
  if config.attention == "tokenselect":
    if row_index:
      raise ValueError("attention='tokenselect' keeps one write column for all rows: "
                       "init_cache(row_index=True) is not supported with it")
    if per_layer:
      raise ValueError("attention='tokenselect' needs the stacked cache (per_layer=False)")
    cache["ts"] = TS.init_state(config, batch)
  return cache


def _is_per_layer(cache: Cache | None) -> bool:
  return cache is not None and isinstance(cache["k"], (tuple, list))


def split_layers(params: Params) -> Params:
  """params with "layers" as a tuple of L per-layer dicts (each leaf without its L axis).

  For repeated decode calls with a per-layer cache inside one jitted loop: slicing the stacked
  weights once, outside the loop, saves XLA:CPU a copy of every layer's weights per step (it
  copies static slices fed to matmuls too), at the price of one extra copy of the layer weights
  while the loop runs. Only `forward` with a per-layer cache accepts it.
  """
  layers = params["layers"]
  if isinstance(layers, (tuple, list)):
    return params
  num_layers = jax.tree.leaves(layers)[0].shape[0]
  return {**params, "layers": tuple(jax.tree.map(lambda w, l=l: w[l], layers)
                                    for l in range(num_layers))}


def _attention_kv_major(q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array, *,
                        scale: float, softcap: float | None) -> jax.Array:
  """`layers.attention` on the per-layer cache layout.

  q [N,S,Q,H]; k_t [N,K,H,C] (keys transposed); v [N,K,C,H]; mask [N,S,C] (True = visible).
  With (N, K) leading in both cache arrays and C last in k_t, both products are batched
  matmuls XLA:CPU runs on the cache buffers as they are (no transpose copy). Query head q uses
  KV head q // (Q/K); scores and softmax in f32. Returns [N,S,Q,H].
  """
  n, s, num_q, h = q.shape
  num_kv = k_t.shape[1]
  g = num_q // num_kv
  # Rows m = (g, s) of each (n, k) block: [N,K,M,H] with M = G·S, so both products are plain
  # [M,H]x[H,C] and [M,C]x[C,H] matmuls per (n, k) (an [N,S,...] einsum lets XLA swap operands).
  qm = q.reshape(n, s, num_kv, g, h).transpose(0, 2, 3, 1, 4).reshape(n, num_kv, g * s, h)
  scores = jnp.einsum("nkmh,nkhc->nkmc", qm, k_t, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    scores = jnp.tanh(scores / softcap) * softcap
  visible = jnp.broadcast_to(mask[:, None, None], (n, 1, g, s, mask.shape[-1]))
  scores = jnp.where(visible.reshape(n, 1, g * s, -1), scores, L.MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("nkmc,nkch->nkmh", probs, v, preferred_element_type=jnp.float32)  # [N,K,M,H]
  out = out.reshape(n, num_kv, g, s, h).transpose(0, 3, 1, 2, 4)
  return out.reshape(n, s, num_q, h).astype(q.dtype)


def _dense(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
  """x [..., *c] · w [*c, *out] over the `contract` trailing dims of x, as one 2-D matmul.

  Same as the einsum, but every token row goes through one [M, c] x [c, out] product
  (M = N·S): the weight gradient is then a 2-D dot contracting M, which XLA:CPU runs as is,
  whereas for the [N,S,...] einsum it first transposes the activation through a strided loop
  fusion (measured: the MLP forward + backward at N·S = 64·31 ran 1.8x faster in 2-D).
  """
  lead, inner = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  k = math.prod(inner)
  y = jnp.matmul(x.reshape(-1, k), w.reshape(k, -1))
  return y.reshape(*lead, *w.shape[contract:])


def _gated_mlp(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array, *,
               activation: str) -> jax.Array:
  """`layers.gated_mlp` (down(act(x·gate) ⊙ x·up), x [N,S,D]) with 2-D matmuls (see _dense)."""
  act = jax.nn.silu if activation == "silu" else functools.partial(jax.nn.gelu, approximate=True)
  return _dense(act(_dense(x, gate)) * _dense(x, up), down)


def _concrete_int(x: Any) -> int | None:
  try:
    return int(x)
  except (jax.errors.ConcretizationTypeError, TypeError):
    return None


def _validate(params: Params, tokens: jax.Array, config: ModelConfig, cache: Cache | None) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [N,S] int, got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
  embed_shape = params["embed"].shape
  if embed_shape != (config.vocab_size, config.dim):
    raise ValueError(
        f"params['embed'] has shape {embed_shape}, config expects {(config.vocab_size, config.dim)}")
  if not isinstance(tokens, Tracer):
    host = np.asarray(tokens)  # numpy: a concrete array closed over inside jit stays concrete
    lo, hi = (int(host.min()), int(host.max())) if host.size else (0, 0)
    if lo < 0 or hi >= config.vocab_size:
      raise ValueError(f"tokens hold ids in [{lo}, {hi}], outside the vocabulary [0, {config.vocab_size})")
  if cache is not None:
    length = cache["pos"].shape[1]
    rows = cache["pos"].shape[0]
    if rows != tokens.shape[0]:
      raise ValueError(f"cache has {rows} rows, tokens has {tokens.shape[0]}")
    index_shape = tuple(cache["index"].shape)
    if index_shape not in ((), (rows,)):
      raise ValueError(f"cache['index'] must be int32 [] or [N]={[rows]}, got shape {list(index_shape)}")
    if index_shape and config.attention == "tokenselect":
      raise ValueError("attention='tokenselect' needs one write column for all rows: "
                       "cache['index'] must be a scalar, got a per-row index [N]")
    if index_shape:
      index = None if isinstance(cache["index"], Tracer) else int(np.max(np.asarray(cache["index"])))
    else:
      index = _concrete_int(cache["index"])
    if index is not None and index + tokens.shape[1] > length:
      raise ValueError(
          f"cache of length {length} at index {index} cannot take {tokens.shape[1]} more tokens")


def _row_update(buf: jax.Array, new: jax.Array, index: jax.Array, *, axis: int) -> jax.Array:
  """buf [N,...] with row n's `new[n]` written at offset index[n] along `axis` of the row.

  `axis` counts within a row (after N): 0 for pos [N,C], 2 for keys [N,K,H,C], 1 for values
  [N,K,C,H]. One dynamic_update_slice per row (vmapped), so rows write at their own columns.
  """
  def one(row, val, i):
    start = [jnp.zeros((), jnp.int32)] * row.ndim
    start[axis] = i
    return jax.lax.dynamic_update_slice(row, val, tuple(start))
  return jax.vmap(one)(buf, new, index.astype(jnp.int32))


def _row_update_stacked(buf: jax.Array, new: jax.Array, layer: jax.Array,
                        index: jax.Array) -> jax.Array:
  """Stacked cache buf [L,N,C,K,H] with new [N,S,K,H] written at (layer, n, index[n])."""
  zero = jnp.zeros((), jnp.int32)
  def one(row, val, i):  # row [L,C,K,H], val [S,K,H]
    return jax.lax.dynamic_update_slice(row, val[None], (layer, i.astype(jnp.int32), zero, zero))
  return jax.vmap(one, in_axes=(1, 0, 0), out_axes=1)(buf, new, index)


def segment_ids_from_lengths(lengths: Any, width: int) -> jax.Array:
  """segment_ids int32 [N,width] of left-padded rows from their real lengths [N].

    segment_ids[n, j] = 1 if j >= width - lengths[n] else 0     (0 = padding)

  Padding is always what the caller says (these lengths, or segment ids it built), never a
  token value: a pad id can be a real token (a config.json without pad_token_id, e.g. Llama 3
  base or many Qwen2 checkpoints, loads with pad_id 0, a real vocabulary entry).
  """
  if not isinstance(lengths, Tracer):
    arr = np.asarray(lengths)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"lengths must be an int array [N], got {arr.dtype} array of shape "
                       f"{arr.shape}")
    bad = np.flatnonzero((arr < 0) | (arr > width)).tolist()
    if bad:
      raise ValueError(f"lengths of rows {bad} are {arr[bad].tolist()}, outside [0, width={width}]")
  lengths = jnp.asarray(lengths, jnp.int32)
  return (jnp.arange(width, dtype=jnp.int32)[None, :] >= width - lengths[:, None]).astype(jnp.int32)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """positions [N,S]: index within each contiguous segment; 0 on padding (segment 0)."""
  s = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), segment_ids.shape)
  prev = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start = jax.lax.cummax(jnp.where(segment_ids != prev, idx, 0), axis=1)
  return jnp.where(segment_ids != 0, idx - start, 0)


def forward(params: Params, tokens: jax.Array, *, config: ModelConfig,
            positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
            cache: Cache | None = None, return_hidden: bool = False,
            remat: bool = False, input_embeddings: jax.Array | None = None,
            hooks: Hooks | None = None) -> tuple[jax.Array, Cache | None]:
  """Run the decoder on tokens [N,S].

  Args:
    params: nested dict (see module docstring); with a per-layer cache, params["layers"] may
      also be the tuple of `split_layers`.
    tokens: int [N,S] token ids.
    config: the static ModelConfig.
    positions: int [N,S] RoPE positions. Default: derived from segment_ids (restarting at 0 in
      each segment) or, with a cache, continuing after the last position held by the cache.
    segment_ids: int [N,S]; 0 = padding, equal non-zero ids attend to each other (packing).
      Default: every token is real (one segment per row, no padding). Padding is only what
      this argument says (see `segment_ids_from_lengths` for left-padded rows): no token value,
      `config.pad_id` included, is ever taken to mean padding, since it can be a real token.
    cache: KV cache from `init_cache` (stacked, or per_layer: then the layers run unrolled);
      new keys/values are written at cache['index']: int32 [] (all rows at one column) or
      int32 [N] (row n at its own column index[n]; slots >= index[n] are treated as empty, so
      lowering index[n] rolls the row back; see init_cache(row_index=True)).
    return_hidden: return the final-normed hidden states [N,S,D] instead of logits, so a
      caller can fuse the unembedding with a chunked log-prob and never hold [N,S,V].
    remat: rematerialize each layer in the backward pass (activation memory O(1) in L).
    input_embeddings: optional [N,S,D] inputs used instead of embed[tokens] (before the
      family's embedding scale), e.g. soft-token mixtures; `tokens` only gives the shape
      (padding and positions come from segment_ids / positions as above).
    hooks: optional `tokenrl.models.Hooks` (attention-mask edits, head mask, start layer,
      residual interventions) for analysis tools; no-cache forwards only. See
      tokenrl/models/hooks.py; `run_with_hooks` also returns the residual stream.

  Returns:
    (logits [N,S,V] f32 (accumulated in f32) or hidden [N,S,D], the updated cache or None).
  """
  out, new_cache, _ = _forward(params, tokens, config=config, positions=positions,
                               segment_ids=segment_ids, cache=cache, return_hidden=return_hidden,
                               remat=remat, input_embeddings=input_embeddings, hooks=hooks)
  return out, new_cache


def run_with_hooks(params: Params, tokens: jax.Array, *, config: ModelConfig, hooks: Hooks,
                   positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                   return_hidden: bool = False, remat: bool = False,
                   input_embeddings: jax.Array | None = None) -> HookedOutput:
  """`forward` without a cache under `hooks`, returning the residual stream [L+1,N,S,D] too
  when hooks.record_residuals (see tokenrl/models/hooks.py)."""
  out, _, residuals = _forward(params, tokens, config=config, positions=positions,
                               segment_ids=segment_ids, cache=None, return_hidden=return_hidden,
                               remat=remat, input_embeddings=input_embeddings, hooks=hooks)
  return HookedOutput(out, residuals)


def _forward(params: Params, tokens: jax.Array, *, config: ModelConfig,
             positions: jax.Array | None, segment_ids: jax.Array | None, cache: Cache | None,
             return_hidden: bool, remat: bool, input_embeddings: jax.Array | None,
             hooks: Hooks | None) -> tuple[jax.Array, Cache | None, jax.Array | None]:
  """`forward`, plus the recorded residual stream (None unless hooks.record_residuals)."""
  _validate(params, tokens, config, cache)
  c = config
  n, s = tokens.shape
  per_layer = _is_per_layer(cache)
  row_index = cache is not None and cache["index"].ndim == 1  # per-row write column [N]
  use_ts = (c.attention == "tokenselect" and cache is not None
            and not TS.always_full(c, cache["pos"].shape[1]))
  if use_ts and per_layer:
    raise ValueError("attention='tokenselect' needs the stacked cache (init_cache per_layer=False)")
  if use_ts and s > c.tokenselect.chunk_size:
    out, new_cache = _forward_chunked(params, tokens, config=c, positions=positions,
                                      segment_ids=segment_ids, cache=cache,
                                      return_hidden=return_hidden)
    return out, new_cache, None
  if isinstance(params["layers"], (tuple, list)) and not per_layer:
    raise ValueError("params['layers'] is split per layer (split_layers); forward needs the "
                     "stacked layers unless the cache is per_layer")
  if hooks is not None:
    if cache is not None:
      raise ValueError("hooks edit a no-cache forward pass only (analysis); call forward with "
                       "cache=None when passing hooks")
    validate_hooks(hooks, num_layers=c.num_layers, num_heads=c.num_heads, dim=c.dim, n=n, s=s)
  if segment_ids is None:
    segment_ids = jnp.ones((n, s), jnp.int32)
  valid = segment_ids != 0
  if positions is None:
    if cache is None:
      positions = positions_from_segments(segment_ids)
    else:
      held = cache["pos"]
      if row_index:  # slots at or past a row's index are stale (rolled back): not its history
        held = jnp.where(jnp.arange(held.shape[1])[None, :] < cache["index"][:, None], held, -1)
      start = jnp.max(held, axis=1) + 1  # [N]
      positions = start[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
      positions = jnp.where(valid, positions, 0)
  positions = positions.astype(jnp.int32)

  # Visibility [N,S,C] without the sliding window, and query-key distances for it.
  q_idx = jnp.arange(s)
  if cache is None:
    causal = q_idx[:, None] >= q_idx[None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, None, :]
    mask = causal[None] & same
    distance = positions[:, :, None] - positions[:, None, :]
    write_at = None
  else:
    write_at = cache["index"]
    new_pos = jnp.where(valid, positions, -1)
    slots = jnp.arange(cache["pos"].shape[1])
    if row_index:
      kpos = _row_update(cache["pos"], new_pos, write_at, axis=0)
      causal = slots[None, None, :] <= write_at[:, None, None] + q_idx[None, :, None]  # [N,S,C]
    else:
      kpos = jax.lax.dynamic_update_slice(cache["pos"], new_pos, (0, write_at))
      causal = (slots[None, :] <= write_at + q_idx[:, None])[None]  # [1,S,C]
    mask = causal & (kpos[:, None, :] >= 0) & (kpos[:, None, :] <= positions[:, :, None])
    distance = positions[:, :, None] - kpos[:, None, :]

  cos_g, sin_g = L.rope_tables(positions, c.rope, c.head_dim)
  if c.local_rope is not None:
    cos_l, sin_l = L.rope_tables(positions, c.local_rope, c.head_dim)
  else:
    cos_l, sin_l = cos_g, sin_g

  if input_embeddings is None:
    x = params["embed"][tokens]
  else:
    if input_embeddings.shape != (n, s, c.dim):
      raise ValueError(f"input_embeddings has shape {input_embeddings.shape}, expected {(n, s, c.dim)}")
    x = input_embeddings.astype(params["embed"].dtype)
  if c.embed_scale != 1.0:
    x = x * jnp.asarray(c.embed_scale, x.dtype)
  if hooks is not None and hooks.inputs_hidden is not None:
    x = hooks.inputs_hidden.astype(x.dtype)
  norm = lambda y, w: L.rms_norm(y, w, eps=c.norm_eps, plus_one=c.norm_plus_one)

  def layer_fn(carry, xs):
    x, cache_k, cache_v = carry
    p, window, layer_idx, ts_state, hook = xs
    if hook is not None and hook.residual_delta is not None:
      x = x + hook.residual_delta.astype(x.dtype)
    x_in = x
    is_local = window > 0
    h = norm(x, p["attn_norm"])
    q, k, v = _dense(h, p["q"]), _dense(h, p["k"]), _dense(h, p["v"])  # [N,S,Q|K,H]
    if c.qkv_bias:
      q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if c.qk_norm:
      q, k = norm(q, p["q_norm"]), norm(k, p["k_norm"])
    cos = jnp.where(is_local, cos_l, cos_g)
    sin = jnp.where(is_local, sin_l, sin_g)
    q_pre = q
    q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
    layer_mask = mask & ((window == 0) | (distance < window))
    if hook is not None and hook.attn_mask is not None:  # [S,S] or [N,S,S] for this layer
      layer_mask = layer_mask & hook.attn_mask
    if per_layer:  # this layer's own buffers: k_t [N,K,H,C], v [N,K,C,H], updated in place
      k_new = jnp.transpose(k, (0, 2, 3, 1)).astype(cache_k.dtype)  # [N,K,H,S]
      v_new = jnp.transpose(v, (0, 2, 1, 3)).astype(cache_v.dtype)  # [N,K,S,H]
      if row_index:
        cache_k = _row_update(cache_k, k_new, write_at, axis=2)
        cache_v = _row_update(cache_v, v_new, write_at, axis=1)
      else:
        cache_k = jax.lax.dynamic_update_slice(cache_k, k_new, (0, 0, 0, write_at))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v_new, (0, 0, write_at, 0))
      attn = _attention_kv_major(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), layer_mask,
                                 scale=c.attn_scale, softcap=c.attn_logit_softcap)
    else:
      if cache_k is not None and row_index:
        cache_k = _row_update_stacked(cache_k, k.astype(cache_k.dtype), layer_idx, write_at)
        cache_v = _row_update_stacked(cache_v, v.astype(cache_v.dtype), layer_idx, write_at)
        k = jax.lax.dynamic_index_in_dim(cache_k, layer_idx, 0, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(cache_v, layer_idx, 0, keepdims=False)
      elif cache_k is not None:
        start = (layer_idx, 0, write_at, 0, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
        k = jax.lax.dynamic_index_in_dim(cache_k, layer_idx, 0, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(cache_v, layer_idx, 0, keepdims=False)
      if use_ts:  # attend to the TokenSelect selection (global layers only, see ModelConfig)
        # The stacked cache and the layer index: the kernels read the layer in place.
        attn, ts_state = TS.attend(q, q_pre, positions, valid, cache_k, cache_v, kpos,
                                   write_at + s, ts_state, config=c, layer=layer_idx)
      else:
        attn = L.attention(q, k.astype(q.dtype), v.astype(q.dtype), layer_mask,
                           scale=c.attn_scale, softcap=c.attn_logit_softcap)
    if hook is not None and hook.head_mask is not None:  # [Q]: per query head, before o
      attn = attn * hook.head_mask.astype(attn.dtype)[:, None]
    attn = _dense(attn, p["o"], contract=2)
    if c.post_norms:
      attn = norm(attn, p["post_attn_norm"])
    x = x + attn
    h = norm(x, p["mlp_norm"])
    h = _gated_mlp(h, p["gate"], p["up"], p["down"], activation=c.activation)
    if c.post_norms:
      h = norm(h, p["post_mlp_norm"])
    record = x_in if hook is not None and hook.record_residuals else None
    return (x + h, cache_k, cache_v), (ts_state, record)

  if remat:
    layer_fn = jax.checkpoint(layer_fn)
  elif cache is None:
    # Keep only the matmul outputs as residuals and recompute the elementwise ops (norms,
    # RoPE, SiLU) in the backward pass: fewer [L,N,S,F] stacks to zero-fill, write and read
    # (measured ~10-15% off a CPU train step of the benchmark model); same values.
    layer_fn = jax.checkpoint(layer_fn,
                              policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  if per_layer:
    # Unrolled: layer l reads and writes its own cache arrays (static window and index).
    cache_k, cache_v = list(cache["k"]), list(cache["v"])
    layers = params["layers"]
    for l in range(c.num_layers):
      p = layers[l] if isinstance(layers, (tuple, list)) else jax.tree.map(lambda w: w[l], layers)
      (x, cache_k[l], cache_v[l]), _ = layer_fn((x, cache_k[l], cache_v[l]),
                                                (p, c.layer_windows[l], l, None, None))
    cache_k, cache_v = tuple(cache_k), tuple(cache_v)
  else:
    windows = jnp.asarray(c.layer_windows, jnp.int32)
    carry = (x, None, None) if cache is None else (x, cache["k"], cache["v"])
    ts_xs = cache["ts"] if use_ts else None
    # Per-layer hook arrays ride along the scan; inputs_hidden is not per layer (used above).
    layer_hooks = None if hooks is None else dataclasses.replace(hooks, inputs_hidden=None)
    xs = (params["layers"], windows, jnp.arange(c.num_layers, dtype=jnp.int32), ts_xs,
          layer_hooks)
    start = 0 if hooks is None else hooks.start_layer
    if start:  # skipped layers: scan over layers start..L-1 only (hook arrays sliced alike)
      xs = jax.tree.map(lambda a: a[start:], xs)
    if start < c.num_layers:
      (x, cache_k, cache_v), (ts_new, recorded) = jax.lax.scan(layer_fn, carry, xs)
    else:
      cache_k, cache_v, ts_new, recorded = None, None, None, None

  residuals = None
  if hooks is not None and hooks.record_residuals:
    n_run = c.num_layers - hooks.start_layer
    parts = [jnp.zeros((hooks.start_layer, n, s, c.dim), x.dtype)]
    if n_run:
      parts.append(recorded)
    residuals = jnp.concatenate(parts + [x[None]], axis=0)  # [L+1,N,S,D]

  new_cache = None
  if cache is not None:
    new_cache = {"k": cache_k, "v": cache_v, "pos": kpos, "index": cache["index"] + s}
    if "ts" in cache:
      new_cache["ts"] = ts_new if use_ts else cache["ts"]
  hidden = norm(x, params["final_norm"])
  if return_hidden:
    return hidden, new_cache, residuals
  return unembed(params, hidden, config=c), new_cache, residuals


def _forward_chunked(params: Params, tokens: jax.Array, *, config: ModelConfig,
                     positions: jax.Array | None, segment_ids: jax.Array | None, cache: Cache,
                     return_hidden: bool) -> tuple[jax.Array, Cache]:
  """TokenSelect chunked prefill: `forward` on consecutive chunks of tokens [N,S].

  The S % chunk_size leading tokens run first, then the full chunks under one lax.scan (two
  traces of the model, whatever S). Each chunk writes its K/V, selects with its mean query and
  attends causally to [init ∪ top-k ∪ local] (reference §2.5). Outputs are concatenated on S.
  """
  n, s = tokens.shape
  chunk = config.tokenselect.chunk_size
  if segment_ids is None:
    segment_ids = jnp.ones((n, s), jnp.int32)
  valid = segment_ids != 0
  if positions is None:
    start = jnp.max(cache["pos"], axis=1) + 1
    positions = jnp.where(valid, start[:, None] + jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
  positions = positions.astype(jnp.int32)
  run = lambda cache, tok, pos, seg: forward(params, tok, config=config, positions=pos,
                                             segment_ids=seg, cache=cache,
                                             return_hidden=return_hidden)
  r = s % chunk
  outs = []
  if r:
    out, cache = run(cache, tokens[:, :r], positions[:, :r], segment_ids[:, :r])
    outs.append(out)
  nc = (s - r) // chunk
  split = lambda a: jnp.swapaxes(a[:, r:].reshape(n, nc, chunk), 0, 1)  # [nc,N,chunk]

  def body(cache, xs):
    out, cache = run(cache, *xs)
    return cache, out

  cache, out = jax.lax.scan(body, cache, (split(tokens), split(positions), split(segment_ids)))
  outs.append(jnp.swapaxes(out, 0, 1).reshape(n, s - r, *out.shape[3:]))
  return jnp.concatenate(outs, axis=1) if len(outs) > 1 else outs[0], cache


def unembed(params: Params, hidden: jax.Array, *, config: ModelConfig) -> jax.Array:
  """logits [..., V] in f32 from hidden [..., D] (tied embeddings or lm_head, optional softcap)."""
  table = params["embed"] if config.tie_embeddings else params["lm_head"]
  logits = jnp.einsum("...d,vd->...v", hidden, table, preferred_element_type=jnp.float32)
  if config.final_logit_softcap is not None:
    cap = config.final_logit_softcap
    logits = jnp.tanh(logits / cap) * cap
  return logits
