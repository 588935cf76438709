"""All-for-One (AF1) last-token subgraph: CAMA + attention-based peeking (spec §2, 2509.09650).

A restricted forward pass that tests whether, on a fixed-template task (`[BOS, a, +, b, =]`),
all input-specific computation happens late and at the last token:

  1. wait     (layers 0..l_wait-1, skipped): every position enters layer l_wait with its
              context-aware mean (CAMA) μ[t, x_t], the mean residual at depth l_wait over
              reference inputs that hold the same token x_t at position t;
  2. transfer (layers l_wait..l_wait+l_transfer-1): attention-based peeking (ABP): the last
              token attends causally, every other token only to itself (and BOS);
  3. compute  (the remaining layers): every token, the last included, attends only to itself
              (and BOS, unless keep_bos=False: ambiguity B2).

`l_wait` is the number of layers skipped (ambiguity B1), so CAMA at depth l_wait is residual
index l_wait of `run_with_hooks` (what enters layer l_wait). Positions (RoPE) stay the original
indices. The output is the last position's logits [B,V].

Public functions here are pure (params, tokens, config in; arrays out); the host-side driver
that groups prompts by template, scores accuracy, sweeps the grid, checks necessity and prunes
heads is tokenrl/analysis/af1_eval.py.

Templates (ambiguity B3): a CamaTable belongs to one sequence length S, and its slots are the
absolute positions 0..S-1: inputs of one fixed template (equal length) align slot by slot.
Inputs of different lengths are not pooled into one table (that would mix residuals computed
at different RoPE positions); af1_eval groups prompts and references by length, one table per
length, so a template slot is (length, position) there.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl import models

# Python-side trace counts of the jitted passes (tests check that af1_forward compiles once per
# shape and stage split: a second call with new values must not add to these).
TRACES: collections.Counter = collections.Counter()


# ------------------------------------------------------------------------------------ masks

def _stage_rows(s: int, last_sees_all: bool, keep_bos: bool) -> jax.Array:
  """bool [S,S]: self (+ BOS at key 0), and, if last_sees_all, the whole causal last row."""
  i = jax.lax.broadcasted_iota(jnp.int32, (s, s), 0)
  j = jax.lax.broadcasted_iota(jnp.int32, (s, s), 1)
  rows = (j == i) | (keep_bos & (j == 0))
  if last_sees_all:
    rows = rows | ((i == s - 1) & (j <= i))
  return rows


def _causal(s: int) -> jax.Array:
  i = jax.lax.broadcasted_iota(jnp.int32, (s, s), 0)
  j = jax.lax.broadcasted_iota(jnp.int32, (s, s), 1)
  return j <= i


def check_split(num_layers: int, l_wait: Any, l_transfer: Any) -> None:
  for name, v in (("l_wait", l_wait), ("l_transfer", l_transfer)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
      raise ValueError(f"{name} must be a Python int >= 0, got {v!r}")
  if l_wait + l_transfer > num_layers:
    raise ValueError(f"l_wait + l_transfer = {l_wait} + {l_transfer} exceeds num_layers="
                     f"{num_layers}; pick l_transfer <= {max(num_layers - l_wait, 0)}")


def af1_masks(seq_len: int, *, num_layers: int, l_wait: int, l_transfer: int,
              keep_bos: bool = True, cut_layers: Sequence[int] = ()) -> jax.Array:
  """bool [L,S,S] (True = visible; the model ANDs it with causal + segment masks).

  Layers < l_wait: causal (they are skipped by af1_forward; causal says so honestly).
  Transfer layers [l_wait, l_wait+l_transfer): ABP, M[i,j] = (j=i) ∨ (bos ∧ j=0) ∨ (i=S-1 ∧ j≤i).
  Compute layers: M[i,j] = (j=i) ∨ (bos ∧ j=0).
  cut_layers: layer indices where, in addition, the last row keeps only self (+ BOS): the
  necessity check (cutting the last token's links in one transfer layer at a time).
  Self is always visible, so no row is all-masked. BOS is key 0 (the template's first token).
  """
  if not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
  check_split(num_layers, l_wait, l_transfer)
  bad = [l for l in cut_layers if not 0 <= int(l) < num_layers]
  if bad:
    raise ValueError(f"cut_layers {bad} outside [0, num_layers={num_layers})")
  s = int(seq_len)
  causal = _causal(s)
  abp = _stage_rows(s, True, keep_bos)
  cut = _stage_rows(s, False, keep_bos)
  cuts = {int(c) for c in cut_layers}
  layers = []
  for l in range(num_layers):
    m = causal if l < l_wait else abp if l < l_wait + l_transfer else cut
    layers.append(cut if l in cuts else m)
  return jnp.stack(layers)  # [L,S,S]


def context_cut_masks(seq_len: int, *, num_layers: int, from_layer: int,
                      keep_bos: bool = True) -> jax.Array:
  """bool [L,S,S]: the full (causal) model except that from layer `from_layer` on the last row
  sees only itself (+ BOS). from_layer = L is the full model. Sweeping from_layer gives the
  layer at which the last token stops needing the context (the AF1 curve)."""
  if not isinstance(from_layer, (int, np.integer)) or not 0 <= from_layer <= num_layers:
    raise ValueError(f"from_layer must be an int in [0, num_layers={num_layers}], got "
                     f"{from_layer!r}")
  s = int(seq_len)
  causal, cut = _causal(s), _stage_rows(s, False, keep_bos)
  last = jax.lax.broadcasted_iota(jnp.int32, (s, s), 0) == s - 1
  cut_last = jnp.where(last, cut, causal)
  return jnp.stack([causal if l < from_layer else cut_last for l in range(num_layers)])


# ------------------------------------------------------------------------------------- CAMA

@dataclasses.dataclass(frozen=True)
class CamaTable:
  """Context-aware means of one depth for inputs of one length S (a pytree).

  means    f32 [S,U,D]: slot 0 of position t is the position mean (over every reference row,
           the fallback for tokens never seen at t); slot u >= 1 is the mean residual of the
           reference rows holding token `slot_tokens[t,u]` at t.
  slot_map i32 [S,V]: token v at position t -> its slot (0 = unseen at t: fallback).
  counts   i32 [S,U]: reference rows averaged into each slot (slot 0: all of them).
  l_wait   int (static): the depth (number of layers skipped) the residuals were read at.

  Compact: U = 1 + the most distinct tokens any position holds, never a dense [S,V,D].
  """
  means: jax.Array
  slot_map: jax.Array
  counts: jax.Array
  l_wait: int = 0

  @property
  def seq_len(self) -> int:
    return int(self.means.shape[0])

  def slot_tokens(self) -> np.ndarray:
    """i32 [S,U]: the token of each slot (-1 for slot 0 and unused slots)."""
    smap = np.asarray(self.slot_map)
    out = np.full(self.counts.shape, -1, np.int32)
    t, v = np.nonzero(smap)
    out[t, smap[t, v]] = v
    return out

  def entering(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tokens [B,S] -> (residual entering layer l_wait [B,S,D], fallback bool [B,S])."""
    pos = jnp.arange(self.means.shape[0])[None, :]  # [1,S]
    slot = self.slot_map[pos, tokens]  # [B,S]
    return self.means[pos, slot], slot == 0

  def token_agnostic(self) -> "CamaTable":
    """Mean ablation: every token enters at its position mean (slot 0), whatever it is."""
    return dataclasses.replace(self, slot_map=jnp.zeros_like(self.slot_map))

  def zeroed(self) -> "CamaTable":
    """Zero ablation: every position enters with a zero residual."""
    return dataclasses.replace(self, means=jnp.zeros_like(self.means))


jax.tree_util.register_dataclass(CamaTable, data_fields=["means", "slot_map", "counts"],
                                 meta_fields=["l_wait"])


def _slots(ref_tokens: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(slot_map i32 [S,V], ref_slots i32 [N,S], U): distinct tokens of each position -> 1..u_t."""
  n, s = ref_tokens.shape
  slot_map = np.zeros((s, vocab_size), np.int32)
  u = 1
  for t in range(s):
    seen = np.unique(ref_tokens[:, t])
    slot_map[t, seen] = np.arange(1, len(seen) + 1)
    u = max(u, len(seen) + 1)
  return slot_map, slot_map[np.arange(s)[None, :], ref_tokens], u


def _check_tokens(name: str, tokens: Any, vocab_size: int, seq_len: int | None = None) -> np.ndarray:
  try:
    arr = np.asarray(tokens)
  except ValueError:  # ragged rows
    arr = np.zeros((0,), np.int32)
  if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be int [N,S] with N, S >= 1, got "
                     f"{'ragged rows' if arr.ndim == 1 and not arr.size else (arr.dtype, arr.shape)}; rows of different lengths form separate templates: "
                     "group them by length (af1_eval does)")
  if seq_len is not None and arr.shape[1] != seq_len:
    raise ValueError(f"{name} has length S={arr.shape[1]}, but the CAMA table was built for "
                     f"S={seq_len}: build a table from references of this length")
  if arr.min() < 0 or arr.max() >= vocab_size:
    raise ValueError(f"{name} holds ids outside [0, {vocab_size}) (min {arr.min()}, max "
                     f"{arr.max()})")
  return arr


def cama_from_residuals(ref_tokens: Any, residuals: Any, *, vocab_size: int,
                        l_wait: int = 0) -> CamaTable:
  """CamaTable from reference rows and their residuals at depth l_wait.

  ref_tokens i32 [N,S], residuals f32 [N,S,D]:
    μ[t,v] = mean_{r: R[r,t]=v} h_t(R_r)   (slot of v at t),   μ[t] = mean_r h_t(R_r) (slot 0).
  """
  ref = _check_tokens("ref_tokens", ref_tokens, vocab_size)
  res = jnp.asarray(residuals, jnp.float32)
  if res.ndim != 3 or res.shape[:2] != ref.shape:
    raise ValueError(f"residuals must be [N,S,D] = [{ref.shape[0]},{ref.shape[1]},D], got "
                     f"{tuple(res.shape)}")
  slot_map, ref_slots, u = _slots(ref, vocab_size)
  sums, counts = _segment_sums(res[None], jnp.asarray(ref_slots), jnp.ones(ref.shape[0]), u)
  return _table(sums[0], counts, jnp.asarray(slot_map), ref.shape[0], l_wait)


def _segment_sums(res: jax.Array, ref_slots: jax.Array, weight: jax.Array,
                  u: int) -> tuple[jax.Array, jax.Array]:
  """res [Z,N,S,D] (Z depths), ref_slots [N,S], weight [N] (0 = padding row) ->
  (slot sums [Z,S,U,D] f32, slot counts [S,U] f32). A one-hot matmul, not a scatter: exact
  sums in f32, and it runs well on every backend."""
  onehot = jax.nn.one_hot(ref_slots, u, dtype=jnp.float32) * weight[:, None, None]  # [N,S,U]
  sums = jnp.einsum("nsu,znsd->zsud", onehot, res.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
  return sums, onehot.sum(0)


def _table(sums: jax.Array, counts: jax.Array, slot_map: jax.Array, n: int,
           l_wait: int) -> CamaTable:
  """sums [S,U,D], counts [S,U] (slot 0 unused by references) -> CamaTable."""
  means = sums / jnp.maximum(counts, 1.0)[..., None]
  pos_mean = sums.sum(1) / n  # [S,D]
  means = means.at[:, 0].set(pos_mean)
  counts = counts.at[:, 0].set(n)
  return CamaTable(means=means, slot_map=slot_map, counts=counts.astype(jnp.int32),
                   l_wait=int(l_wait))


def bucket(n: int, chunk: int) -> int:
  """Rows per model call for n rows: the next power of two, at most `chunk`. Padding every
  call to a bucket bounds the compiles (one per (bucket, S)) whatever the set sizes are."""
  return min(chunk, 1 << max(int(n) - 1, 0).bit_length())


@functools.partial(jax.jit, static_argnames=("config", "u"))
def _cama_chunk(params, tokens, ref_slots, weight, depths, *, config, u):
  """Residual sums of one chunk of reference rows at depths i32 [Z] (traced): [Z,S,U,D], counts
  [S,U]. U is static (one-hot width), padded to a power of two by the caller."""
  TRACES["cama_chunk"] += 1
  out = models.run_with_hooks(params, tokens, config=config,
                              hooks=models.Hooks(record_residuals=True))
  res = out.residuals[depths]  # [Z,N,S,D]
  return _segment_sums(res, ref_slots, weight, u)


def cama_tables(params: Any, ref_tokens: Any, *, config: models.ModelConfig,
                l_waits: Sequence[int], chunk: int = 256) -> dict[int, CamaTable]:
  """{l_wait: CamaTable} for several depths from one pass over the reference rows.

  ref_tokens i32 [N_ref,S] share one template (length). The references run through the full
  model in chunks of at most `chunk` rows (padded with zero-weight rows to a power of two, so
  compiles stay bounded); only the running slot sums [Z,S,U,D] are kept, never [L+1,N,S,D]
  for all N. Spec default N_ref >= 1000 per template [recon].
  """
  ref = _check_tokens("ref_tokens", ref_tokens, config.vocab_size)
  depths = tuple(int(d) for d in l_waits)
  if not depths or any(not 0 <= d <= config.num_layers for d in depths):
    raise ValueError(f"l_waits must be a non-empty list of ints in [0, num_layers="
                     f"{config.num_layers}], got {list(l_waits)}")
  if chunk < 1:
    raise ValueError(f"chunk must be >= 1, got {chunk}")
  n, s = ref.shape
  slot_map, ref_slots, u = _slots(ref, config.vocab_size)
  # One-hot width: a power of two, at least 64, so tables of one model share compiles.
  u_pad = max(64, 1 << (u - 1).bit_length())
  rows = bucket(n, chunk)
  sums, counts = 0.0, 0.0
  for start in range(0, n, rows):
    part, part_slots = ref[start:start + rows], ref_slots[start:start + rows]
    weight = np.zeros(rows, np.float32)
    weight[:len(part)] = 1.0
    pad = rows - len(part)
    if pad:  # zero-weight rows (token 0 is a real id; its weight keeps it out of every mean)
      part = np.concatenate([part, np.zeros((pad, s), part.dtype)])
      part_slots = np.concatenate([part_slots, np.zeros((pad, s), part_slots.dtype)])
    z, c = _cama_chunk(params, jnp.asarray(part, jnp.int32), jnp.asarray(part_slots),
                       jnp.asarray(weight), jnp.asarray(depths, jnp.int32), config=config,
                       u=u_pad)
    sums, counts = sums + z, counts + c
  sums, counts = sums[:, :, :u], counts[:, :u]
  smap = jnp.asarray(slot_map)
  return {d: _table(sums[i], counts, smap, n, d) for i, d in enumerate(depths)}


def cama_table(params: Any, ref_tokens: Any, *, config: models.ModelConfig, l_wait: int,
               chunk: int = 256) -> CamaTable:
  """CamaTable at depth l_wait (layers skipped) from reference rows i32 [N_ref,S] of one
  template; see cama_tables."""
  return cama_tables(params, ref_tokens, config=config, l_waits=(l_wait,), chunk=chunk)[l_wait]


# -------------------------------------------------------------------------------- forward

@functools.partial(jax.jit, static_argnames=("config", "start_layer"))
def _restricted_last_logits(params, tokens, hidden, attn_mask, head_mask, *, config,
                            start_layer):
  """Last-position logits [B,V] f32 of forward from `hidden` entering layer start_layer under
  attn_mask [L,S,S] and head_mask [L,Q]. Masks are traced: new masks, same shapes, no retrace."""
  TRACES["af1_forward"] += 1
  hooks = models.Hooks(attn_mask=attn_mask, head_mask=head_mask, start_layer=start_layer,
                       inputs_hidden=hidden)
  logits, _ = models.forward(params, tokens, config=config, hooks=hooks)
  return logits[:, -1].astype(jnp.float32)


def restricted_forward(params: Any, tokens: Any, *, config: models.ModelConfig,
                       cama: CamaTable | None, attn_mask: Any, head_mask: Any = None
                       ) -> tuple[jax.Array, jax.Array]:
  """(last-position logits [B,V], fallback bool [B,S]): the residual entering layer cama.l_wait
  is the table's μ[t, x_t], layers from cama.l_wait on run under attn_mask bool [L,S,S] and
  head_mask [L,Q] (default ones). cama=None: the ordinary embeddings enter layer 0 (the full
  model under the masks). af1_forward is this with af1_masks."""
  tok = _check_tokens("tokens", tokens, config.vocab_size,
                      None if cama is None else cama.seq_len)
  b, s = tok.shape
  num_layers, q = config.num_layers, config.num_heads
  if cama is not None and cama.means.shape[-1] != config.dim:
    raise ValueError(f"cama was built for D={cama.means.shape[-1]}, the model has D={config.dim}")
  mask = jnp.asarray(attn_mask)
  if mask.shape != (num_layers, s, s) or mask.dtype != jnp.bool_:
    raise ValueError(f"attn_mask must be bool [L,S,S] = [{num_layers},{s},{s}], got "
                     f"{mask.dtype} {tuple(mask.shape)}")
  hm = jnp.ones((num_layers, q), jnp.float32) if head_mask is None else jnp.asarray(
      head_mask, jnp.float32)
  if hm.shape != (num_layers, q):
    raise ValueError(f"head_mask must be [L,Q] = [{num_layers},{q}], got {tuple(hm.shape)}")
  tok = jnp.asarray(tok, jnp.int32)
  if cama is None:
    hidden, fallback, start = None, jnp.zeros((b, s), bool), 0
  else:
    (hidden, fallback), start = cama.entering(tok), cama.l_wait
  logits = _restricted_last_logits(params, tok, hidden, mask, hm, config=config,
                                   start_layer=start)
  return logits, fallback


def af1_forward(params: Any, tokens: Any, *, config: models.ModelConfig, cama: CamaTable,
                l_wait: int, l_transfer: int, keep_bos: bool = True, head_mask: Any = None,
                cut_layers: Sequence[int] = ()) -> jax.Array:
  """Last-position logits f32 [B,V] of the AF1 subgraph on tokens i32 [B,S].

  cama: a CamaTable at depth l_wait for this length S (cama_table, or its token_agnostic() /
  zeroed() ablations). Layers < l_wait are skipped; transfer layers use ABP; compute layers
  self (+ BOS when keep_bos). head_mask [L,Q] scales heads (pruning); cut_layers: layers where
  the last row also loses its context (necessity check). Compiles once per (B, S, l_wait):
  masks and head masks are traced values.
  """
  check_split(config.num_layers, l_wait, l_transfer)
  if cama.l_wait != l_wait:
    raise ValueError(f"cama was read at depth l_wait={cama.l_wait}, but l_wait={l_wait}: "
                     f"build the table with cama_table(..., l_wait={l_wait})")
  s = _check_tokens("tokens", tokens, config.vocab_size, cama.seq_len).shape[1]
  mask = af1_masks(s, num_layers=config.num_layers, l_wait=l_wait,
                   l_transfer=l_transfer, keep_bos=keep_bos, cut_layers=cut_layers)
  return restricted_forward(params, tokens, config=config, cama=cama, attn_mask=mask,
                            head_mask=head_mask)[0]
