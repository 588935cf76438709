"""Paged, continuously batched decoding (#17, part 2): `paged_sample`, same output as `sample`.

    rollout = paged_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                           temperature=1.0, num_samples=8, num_slots=16, page_size=16)

`sample` decodes all N rows in lockstep over a dense [N, P+T] cache until the LAST row stops,
so a batch whose lengths are very uneven spends most steps on rows that are already done, and
the cache is sized for the longest row. Here a fixed number of decode slots S run the rows: the
rows wait in a FIFO queue, and a slot whose row stopped (stop token or max_new_tokens) takes the
next waiting row. The KV cache is a pool of pages (`tokenrl.rollout.pages`); a row holds pages
only while it is in a slot, and the G = num_samples rows of one prompt share its prefill.

Host loop (one iteration = one host round trip):
  1. admit: pop waiting rows into free slots while their pages fit (back-pressure: a row that
     does not fit waits for a slot to free pages; FIFO, nothing skips ahead). A prompt not yet
     in the cache is prefilled ONCE into a "holder" sequence of the allocator (one jitted
     prefill per admission batch, rows bucketed); each of its G rows `fork`s the holder's pages
     and copies (copy-on-write) only the partial last prompt page it will write into.
  2. decode: one jitted `lax.while_loop` of decode steps over the S slots, until some slot's
     row finishes while rows still wait (or, once the queue is empty, until every row is done):
     no host round trip per token.
  3. free the finished slots' pages; repeat.

Exactly `sample`'s output. Row i's key is fold_in(rng, i) and its t-th token is drawn with
fold_in(row key, t) from the same processed distribution (`choose_tokens` after temperature and
the logit processor), whichever slot runs it and whenever: tokens, mask and truncated are equal
to `sample`'s; logprobs / entropy equal up to float summation order (paged attention sums the
keys in another order than the dense cache; on the tests' tiny models |Δ| < 1e-5). The logit
processor runs per row (vmapped over the slots, each with its own DecodeContext: step, tokens,
done, aux, temperature, hidden), so it must treat rows independently, as `sample`'s rows are
independent anyway (a processor mixing rows would see other rows here); `processor_state` is
shared by all rows (aux with a leading per-row axis is not supported).

Pages are reserved for a row's whole length (prompt + max_new_tokens − 1) when it is admitted,
so the device loop never needs the host to grow a sequence; growing on demand is future work.
Not done yet: chunked prefill mixed into the decode steps (a prefill is its own jitted call per
admission batch), sliding-window / TokenSelect attention (refused), prompt_sharding (one device).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.kernels import paged_attention
from tokenrl.models import layers as L
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.pages import PageAllocator, copy_pages, write_kv
from tokenrl.rollout.sampler import DecodeContext, LogitProcessor, bucket_length, prepare_rows
from tokenrl.rollout.sampling import choose_tokens
from tokenrl.types import Rollout

__all__ = ["paged_sample", "EngineStats"]


@dataclasses.dataclass
class EngineStats:
  """Host-side counters of one `paged_sample` call (`return_stats=True`).

  prefill_tokens   real prompt tokens run through a prefill (shared prompts count once).
  prefill_padded   prefill tokens including the bucket padding (rows x width of each call).
  prefill_calls    jitted prefill calls (one per admission batch that has a new prompt).
  decode_calls     jitted decode loops = host round trips.
  decode_steps     decode steps run (each step advances every live slot by one token).
  page_copies      copy-on-write page copies (the partial last prompt page of forked rows).
  peak_pages       most pages in use at once.
  free_pages_end   free pages when the call returns (= num_pages: every page came back).
  num_pages, page_size, num_slots: the engine's geometry.
  """

  prefill_tokens: int = 0
  prefill_padded: int = 0
  prefill_calls: int = 0
  decode_calls: int = 0
  decode_steps: int = 0
  page_copies: int = 0
  peak_pages: int = 0
  free_pages_end: int = 0
  num_pages: int = 0
  page_size: int = 0
  num_slots: int = 0


def _check_config(config: ModelConfig) -> None:
  if config.attention != "full":
    raise ValueError(f"paged_sample supports attention='full' only, got {config.attention!r} "
                     "(TokenSelect keeps its own dense cache): use sample")
  if any(int(w) > 0 for w in config.layer_windows):
    raise ValueError(f"paged_sample does not support sliding-window layers yet (layer_windows "
                     f"{tuple(config.layer_windows)}); paged_attention has no window: use sample")


def _paged_forward(layers, params, tokens, positions, pools, page_table, kv_lens, q_lens, *,
                   config: ModelConfig, impl: str):
  """The decoder's layers over a paged KV cache (the same math as transformer.forward).

  tokens int [N,S]; positions int [N,S] (RoPE position = cache slot; −1 = padding: not written,
  its output ignored). pools: tuple of L (k_pool, v_pool) [K, P_pages, S_page, H];
  page_table int [N, M]; kv_lens int [N] tokens cached AFTER this call's writes; q_lens int [N]
  real tokens of this call (left-aligned: row i < q_lens is position kv_lens − q_lens + i).
  layers: the L per-layer weight dicts (sliced once outside any loop).
  Returns (final-normed hidden [N,S,D], updated pools).
  """
  c = config
  norm = lambda y, w: L.rms_norm(y, w, eps=c.norm_eps, plus_one=c.norm_plus_one)
  x = params["embed"][tokens]
  if c.embed_scale != 1.0:
    x = x * jnp.asarray(c.embed_scale, x.dtype)
  cos, sin = L.rope_tables(jnp.maximum(positions, 0), c.rope, c.head_dim)  # [N,S,H]
  new_pools = []
  for p, (k_pool, v_pool) in zip(layers, pools):
    h = norm(x, p["attn_norm"])
    q, k, v = (transformer._dense(h, p["q"]), transformer._dense(h, p["k"]),
               transformer._dense(h, p["v"]))  # [N,S,Q|K,H]
    if c.qkv_bias:
      q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if c.qk_norm:
      q, k = norm(q, p["q_norm"]), norm(k, p["k_norm"])
    q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
    # Write first: the chunk attends to itself causally through the cache.
    k_pool, v_pool = write_kv(k_pool, v_pool, page_table, positions, k, v)
    attn = paged_attention(q, k_pool, v_pool, page_table, kv_lens, q_lens, scale=c.attn_scale,
                           softcap=c.attn_logit_softcap, impl=impl)
    attn = transformer._dense(attn, p["o"], contract=2)
    if c.post_norms:
      attn = norm(attn, p["post_attn_norm"])
    x = x + attn
    h = transformer._gated_mlp(norm(x, p["mlp_norm"]), p["gate"], p["up"], p["down"],
                               activation=c.activation)
    if c.post_norms:
      h = norm(h, p["post_mlp_norm"])
    x = x + h
    new_pools.append((k_pool, v_pool))
  return norm(x, params["final_norm"]), tuple(new_pools)


def _split(params):
  """The L per-layer weight dicts (`transformer.split_layers`: sliced once, outside loops)."""
  return transformer.split_layers(params)["layers"]


@functools.partial(jax.jit, static_argnames=("config", "impl"), donate_argnums=(1, 2))
def _prefill(params, pools, holder_hidden, tokens, lens, page_table, holder_idx, *, config, impl):
  """Prefills A prompts into their holder sequences' pages.

  tokens int [A,W] right-padded prompts; lens int [A] real lengths (0 = padding row);
  page_table int [A,M] the holders' rows; holder_idx int [A] where each prompt's last hidden
  goes in holder_hidden [S,D] (S = padding row: dropped). Returns (pools, holder_hidden).
  """
  w = tokens.shape[1]
  cols = jnp.arange(w, dtype=jnp.int32)[None]
  positions = jnp.where(cols < lens[:, None], cols, -1)
  hidden, pools = _paged_forward(_split(params), params, tokens, positions, pools,
                                 page_table, lens, lens, config=config, impl=impl)
  last = hidden[jnp.arange(tokens.shape[0]), jnp.maximum(lens - 1, 0)]  # [A,D]
  holder_hidden = holder_hidden.at[holder_idx].set(last.astype(holder_hidden.dtype), mode="drop")
  return pools, holder_hidden


@functools.partial(jax.jit, donate_argnums=(0, 2))
def _install(pools, holder_hidden, slot_hidden, copy_src, copy_dst, take, take_from):
  """Copy-on-write page copies (dst = sentinel: none) and each admitted slot's first hidden.

  copy_src, copy_dst int [S]; take bool [S] slots admitted now; take_from int [S] their holder.
  """
  pools = tuple((copy_pages(k, copy_src, copy_dst), copy_pages(v, copy_src, copy_dst))
                for k, v in pools)
  first = holder_hidden[jnp.clip(take_from, 0, holder_hidden.shape[0] - 1)]
  return pools, jnp.where(take[:, None], first, slot_hidden)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Slots:
  """Carry of the decode while_loop: S slots, N rows, T = max_new_tokens.

  hidden [S,D] final-normed hidden state the slot's next token is chosen from; row int32 [S]
  (N = empty); step int32 [S] tokens the row has chosen; length int32 [S] tokens in its cache;
  active bool [S] the row still decodes. tokens/mask/logprobs/entropy [N,T] and stopped bool [N]
  are the outputs, written at (row, step). finished: a row finished in this call; steps int32 [].
  """

  hidden: jax.Array
  row: jax.Array
  step: jax.Array
  length: jax.Array
  active: jax.Array
  pools: Any
  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  entropy: jax.Array
  stopped: jax.Array
  finished: jax.Array
  steps: jax.Array


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "top_p",
                                             "stop_tokens", "logit_processor", "impl"),
                   donate_argnums=(1,))
def _decode(params, state: _Slots, page_table, rng, temperature, aux, stop_on_finish, *, config,
            max_new_tokens, top_k, top_p, stop_tokens, logit_processor, impl) -> _Slots:
  """Decode steps until a row finishes (stop_on_finish) or every slot is idle."""
  n = state.tokens.shape[0]
  layers = _split(params)  # sliced once, outside the loop (see sampler._generate)
  greedy = temperature <= 0
  divisor = jnp.where(greedy, 1.0, temperature).astype(jnp.float32)
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

  def body(s: _Slots) -> _Slots:
    hidden = s.hidden.astype(jnp.float32)
    scaled = transformer.unembed(params, s.hidden, config=config).astype(jnp.float32) / divisor
    row = jnp.clip(s.row, 0, n - 1)
    if logit_processor is not None:
      # One row at a time, as `sample` would see it at this row's own step: context [1, ...].
      def one(lg, t, toks, h):
        ctx = DecodeContext(t, toks[None], jnp.zeros((1,), bool), aux, divisor, h[None])
        return logit_processor(lg[None], ctx)[0]
      scaled = jax.vmap(one)(scaled, s.step, s.tokens[row], hidden)
    # sample's keys: fold_in(fold_in(rng, row), t), the row index and step as int32.
    keys = jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(rng, r), t))(row, s.step)
    token, logp, ent = choose_tokens(scaled, keys, greedy=greedy, top_k=top_k, top_p=top_p)
    live = s.active
    at = (jnp.where(live, s.row, n), s.step)  # row n: out of bounds, dropped
    put = lambda buf, val: buf.at[at].set(val.astype(buf.dtype), mode="drop")
    stop = jnp.isin(token, stops)
    step = jnp.where(live, s.step + 1, s.step)
    done = live & (stop | (step >= max_new_tokens))
    active = live & ~done
    # Feed the chosen token of each continuing row at position `length` (its next cache slot);
    # idle / just-finished slots write nothing (position −1) and attend to nothing (q_len 0).
    pos = jnp.where(active, s.length, -1)[:, None]
    kv_lens = jnp.where(active, s.length + 1, 0)
    new_hidden, pools = _paged_forward(layers, params, token[:, None], pos, s.pools, page_table,
                                       kv_lens, active.astype(jnp.int32), config=config,
                                       impl=impl)
    return dataclasses.replace(
        s, hidden=new_hidden[:, 0].astype(s.hidden.dtype), step=step,
        length=jnp.where(active, s.length + 1, s.length), active=active, pools=pools,
        tokens=put(s.tokens, token), mask=put(s.mask, jnp.ones_like(token)),
        logprobs=put(s.logprobs, logp), entropy=put(s.entropy, ent),
        stopped=s.stopped.at[at[0]].set(stop, mode="drop"),
        finished=s.finished | jnp.any(done), steps=s.steps + 1)

  def cond(s: _Slots) -> jax.Array:
    return jnp.any(s.active) & ~(stop_on_finish & s.finished)

  state = dataclasses.replace(state, finished=jnp.zeros((), bool), steps=jnp.zeros((), jnp.int32))
  return jax.lax.while_loop(cond, body, state)


def paged_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                 max_new_tokens: int, prompt_mask: Any = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
                 stop_tokens: Sequence[int] | None = None,
                 logit_processor: LogitProcessor | None = None, processor_state: Any = None,
                 cache_dtype: Any = None, num_slots: int = 8, page_size: int = 16,
                 num_pages: int | None = None, share_prompts: bool = True,
                 attention_impl: str = "auto", return_stats: bool = False):
  """`sample` (same arguments, same Rollout) on a paged KV cache with continuous batching.

  Args (beyond `sample`'s, whose meaning is unchanged):
    num_slots: S, rows decoded at once (the decode batch; static: one compile per S).
    page_size: tokens per KV page.
    num_pages: pages in the pool (per layer, K and V each); default: enough for every slot at
      its longest plus one prefilled prompt per slot. Fewer pages admit fewer rows at once
      (back-pressure); ValueError only if one row (with its prompt's prefill) cannot fit.
    share_prompts: prefill each prompt once for its G samples and fork its pages (False:
      prefill every row on its own; the output is the same, only the work differs).
    attention_impl: `tokenrl.kernels.paged_attention` impl ('auto' = Pallas on GPU/TPU, jnp on
      CPU).
    return_stats: also return the `EngineStats` of the call.

  Returns:
    Rollout (tokens/mask/logprobs/entropy [N,T], prompt_tokens/prompt_mask [N,P], truncated
    [N]), or (Rollout, EngineStats) with return_stats.
  Raises:
    ValueError: the arguments `sample` refuses; a config with sliding-window or TokenSelect
      attention; geometry that is not a positive int; a row that cannot fit in num_pages.
  """
  _check_config(config)
  for name, val in (("num_slots", num_slots), ("page_size", page_size)):
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val <= 0:
      raise ValueError(f"{name} must be a positive int, got {val!r}")
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  n, width = tokens.shape
  steps, g, ps, slots = int(max_new_tokens), int(num_samples), int(page_size), int(num_slots)
  lens = mask.sum(axis=1).astype(np.int64)  # [N] real prompt tokens
  # A row's cache holds its prompt and every chosen token but the last (never fed back).
  totals = lens + steps - 1
  pages_of = lambda length: -(-int(length) // ps)
  # Page-table width M: static per (bucketed prompt width, T), like sample's cache length.
  width_pages = pages_of(width + steps - 1)
  if num_pages is None:
    num_pages = slots * (width_pages + pages_of(width))
  if isinstance(num_pages, bool) or not isinstance(num_pages, (int, np.integer)) or num_pages <= 0:
    raise ValueError(f"num_pages must be a positive int or None, got {num_pages!r}")
  num_pages = int(num_pages)
  # Rows of one prompt share a holder when share_prompts (group = prompt), else one each.
  group_of = (lambda r: r // g) if share_prompts else (lambda r: r)
  group_size = g if share_prompts else 1
  cow = steps >= 2  # a row with T = 1 never writes to its cache: no copy-on-write

  def row_pages(r: int) -> int:
    """New pages row r takes when forked from its prompt's holder (+1 for the COW copy)."""
    return pages_of(totals[r]) - pages_of(lens[r]) + int(cow and lens[r] % ps != 0)

  worst = max(row_pages(r) + pages_of(lens[r]) for r in range(n))
  if worst > num_pages:
    raise ValueError(f"one row needs {worst} KV pages of {ps} tokens (its prompt's prefill plus "
                     f"prompt + max_new_tokens - 1 = up to {int(totals.max())} tokens) but "
                     f"num_pages is {num_pages}: raise num_pages or page_size, or lower "
                     f"max_new_tokens")

  # Holders are allocator sequences S..2S−1: at most S prompts are in the cache without all
  # their rows admitted (FIFO: only the last group of an admission batch can be partial).
  alloc = PageAllocator(num_pages, ps, max_seqs=2 * slots, pages_per_seq=width_pages)
  c = config
  pool_shape = (c.num_kv_heads, num_pages, ps, c.head_dim)
  pools = tuple((jnp.zeros(pool_shape, dtype), jnp.zeros(pool_shape, dtype))
                for _ in range(c.num_layers))
  hdtype = params["embed"].dtype
  holder_hidden = jnp.zeros((slots, c.dim), hdtype)
  state = _Slots(
      hidden=jnp.zeros((slots, c.dim), hdtype), row=jnp.full((slots,), n, jnp.int32),
      step=jnp.zeros((slots,), jnp.int32), length=jnp.zeros((slots,), jnp.int32),
      active=jnp.zeros((slots,), bool), pools=pools,
      tokens=jnp.full((n, steps), c.pad_id, jnp.int32), mask=jnp.zeros((n, steps), jnp.int32),
      logprobs=jnp.zeros((n, steps), jnp.float32), entropy=jnp.zeros((n, steps), jnp.float32),
      stopped=jnp.zeros((n,), bool), finished=jnp.zeros((), bool),
      steps=jnp.zeros((), jnp.int32))
  aux = jax.tree.map(jnp.asarray, processor_state)
  temp = jnp.asarray(np.float32(temperature))
  stats = EngineStats(num_pages=num_pages, page_size=ps, num_slots=slots)

  queue = collections.deque(range(n))
  holders: dict[int, int] = {}  # group -> holder index h (allocator sequence S + h)
  left: dict[int, int] = {}  # group -> rows not yet admitted
  free_holders = list(range(slots))
  slot_row = np.full(slots, -1)  # host view of which row each slot runs (−1 = idle)
  host = dict(row=np.full(slots, n, np.int32), step=np.zeros(slots, np.int32),
              length=np.zeros(slots, np.int32), active=np.zeros(slots, bool))

  while queue or (slot_row >= 0).any():
    # -- 1. admit ---------------------------------------------------------------------------
    prefill, copies, take = [], [], {}  # prefill: (h, row); take: slot -> h
    released = []
    idle = [s for s in range(slots) if slot_row[s] < 0]
    while queue and idle:
      r = queue[0]
      grp = group_of(r)
      need = row_pages(r) + (0 if grp in holders else pages_of(lens[r]))
      if need > alloc.num_free:
        break  # back-pressure: wait for running rows to return pages (FIFO order kept)
      if grp not in holders:
        h = free_holders.pop(0)
        alloc.allocate(slots + h, int(lens[r]))
        holders[grp], left[grp] = h, group_size
        prefill.append((h, r, alloc.page_table()[slots + h]))
      h = holders[grp]
      s = idle.pop(0)
      queue.popleft()
      alloc.fork(slots + h, s)
      left[grp] -= 1
      if left[grp] == 0:
        # Last row of the prompt: drop the holder's references first, so this row takes the
        # partial page over without a copy (G − 1 copies per prompt, 0 without sharing). Its
        # index is reused only after this batch (holder_hidden[h] is still to be read).
        alloc.free(slots + h)
        del holders[grp], left[grp]
        released.append(h)
      alloc.extend(s, int(totals[r]))
      if cow:
        copy = alloc.ensure_writable(s, int(lens[r]))
        if copy is not None:
          copies.append(copy)
      take[s] = h
      slot_row[s] = r
      host["row"][s], host["step"][s], host["length"][s], host["active"][s] = r, 0, lens[r], True
    free_holders.extend(released)
    stats.peak_pages = max(stats.peak_pages, num_pages - alloc.num_free)
    if not take and not (slot_row >= 0).any():
      raise ValueError(f"row {queue[0]} cannot be admitted: it needs more than the "
                       f"{alloc.num_free} free KV pages")  # guarded by `worst` above

    if prefill:
      a = len(prefill)
      rows_b = min(1 << (a - 1).bit_length(), slots)  # rows bucketed: powers of 2, at most S
      w = min(bucket_length(int(max(lens[r] for _, r, _ in prefill))), width)
      ptoks = np.full((rows_b, w), c.pad_id, np.int32)
      plens = np.zeros(rows_b, np.int32)
      ptable = np.full((rows_b, width_pages), num_pages, np.int32)
      pidx = np.full(rows_b, slots, np.int32)
      for i, (h, r, table) in enumerate(prefill):
        ptoks[i, :lens[r]] = tokens[r, width - lens[r]:]  # right-aligned -> left-aligned
        plens[i], ptable[i], pidx[i] = lens[r], table, h
      pools, holder_hidden = _prefill(params, state.pools, holder_hidden, ptoks, plens, ptable,
                                      pidx, config=c, impl=attention_impl)
      state = dataclasses.replace(state, pools=pools)
      stats.prefill_calls += 1
      stats.prefill_tokens += int(plens.sum())
      stats.prefill_padded += rows_b * w
    if take:
      src = np.zeros(slots, np.int32)
      dst = np.full(slots, num_pages, np.int32)  # sentinel: no copy
      for i, (a_, b_) in enumerate(copies):
        src[i], dst[i] = a_, b_
      tmask = np.zeros(slots, bool)
      tfrom = np.zeros(slots, np.int32)
      for s, h in take.items():
        tmask[s], tfrom[s] = True, h
      pools, hidden = _install(state.pools, holder_hidden, state.hidden, src, dst, tmask, tfrom)
      state = dataclasses.replace(state, pools=pools, hidden=hidden)
      stats.page_copies += len(copies)

    # -- 2. decode until a row finishes while others wait (or all are done) -----------------
    state = dataclasses.replace(state, **{k: jnp.asarray(v) for k, v in host.items()})
    state = _decode(params, state, jnp.asarray(alloc.page_table()[:slots]), rng, temp, aux,
                    jnp.asarray(bool(queue)), config=c, max_new_tokens=steps, top_k=int(top_k),
                    top_p=float(top_p), stop_tokens=stops, logit_processor=logit_processor,
                    impl=attention_impl)
    stats.decode_calls += 1
    stats.decode_steps += int(state.steps)
    # -- 3. free the finished slots ---------------------------------------------------------
    host = {k: np.array(getattr(state, k)) for k in ("row", "step", "length", "active")}
    for s in range(slots):
      if slot_row[s] >= 0 and not host["active"][s]:
        alloc.free(s)
        slot_row[s] = -1
        host["row"][s] = n

  alloc.check_invariants()
  stats.free_pages_end = alloc.num_free
  rollout = Rollout(tokens=state.tokens, mask=state.mask, logprobs=state.logprobs,
                    entropy=state.entropy, prompt_tokens=jnp.asarray(tokens),
                    prompt_mask=jnp.asarray(mask), truncated=~state.stopped)
  return (rollout, stats) if return_stats else rollout
