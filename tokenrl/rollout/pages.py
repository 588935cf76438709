"""Paged KV cache: a host-side page allocator and the device-side page ops.

The cache of one layer is a pool of fixed-size pages shared by every sequence instead of one
[N, C, K, H] slab sized for the longest sequence. A sequence owns a row of the page table: entry
j is the pool page holding its tokens [j·S_page, (j+1)·S_page). A finished sequence returns its
pages, which the next sequence reuses, so memory follows the tokens actually in flight.

Layout (per layer): k_pool, v_pool [K, P_pages, S_page, H]. Heads come first so that one page of
one KV head is a contiguous [S_page, H] tile: one DMA on TPU (a legal Mosaic block, its last two
dims being full), one coalesced load on GPU. (JAX's own TPU paged-attention kernel uses the same
order.) page_table [N, M_pages] int32, M_pages = pages per sequence, padded with the sentinel
P_pages (one past the last page): a gather at the sentinel is clamped and masked by the kernel,
a scatter at it is dropped, so a padded entry can never overwrite a real page.

Sharing. `PageAllocator.fork(src, dst)` gives dst all of src's pages (reference counts +1): the
G samples of one prompt prefill it once and share its pages. Pages are copy-on-write: before a
sequence writes position p it calls `ensure_writable(seq, p)`; if the page holding p is shared
(refcount > 1) the sequence gets a fresh page and the call returns the (src, dst) copy the
device must perform (`copy_pages`) before the write. Full prompt pages thus stay shared for
ever; only the last, partial page is copied, at the first divergent token.

The allocator is pure Python / NumPy and never touches the device: an engine calls it between
steps and ships `page_table()` and the copy list to the jitted step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PageAllocator", "write_kv", "copy_pages", "gather_pages"]


class PageAllocator:
  """A fixed pool of `num_pages` pages of `page_size` tokens, shared by up to `max_seqs` slots.

  Sequences are named by their slot s ∈ [0, max_seqs): row s of `page_table()`. Each slot has a
  length (tokens it holds) and a list of pages, ⌈length / page_size⌉ of them. Pages carry a
  reference count = the number of slot tables that list them; a page is free iff its count is 0.

  Invariants (checked by `check_invariants`): refcount[p] = Σ_s (occurrences of p in s's table);
  the free list is exactly the pages with refcount 0, without duplicates; no slot lists a page
  twice; a slot's table holds ⌈length / page_size⌉ pages, at most `pages_per_seq`.

  Out of pages raises ValueError (pages needed vs free) before any state changes; nothing is
  ever overwritten. `pages_needed` / `num_free` let a scheduler apply back-pressure instead.
  """

  def __init__(self, num_pages: int, page_size: int, max_seqs: int, pages_per_seq: int):
    for name, val in (("num_pages", num_pages), ("page_size", page_size),
                      ("max_seqs", max_seqs), ("pages_per_seq", pages_per_seq)):
      if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val <= 0:
        raise ValueError(f"{name} must be a positive int, got {val!r}")
    self.num_pages = int(num_pages)
    self.page_size = int(page_size)
    self.max_seqs = int(max_seqs)
    self.pages_per_seq = int(pages_per_seq)
    self.sentinel = self.num_pages  # one past the last page: dropped by scatters, masked by reads
    self._refcount = np.zeros(self.num_pages, np.int32)
    # LIFO free list: a just-freed page is reused first (still warm in cache on a host; on device
    # it makes reuse easy to observe in tests). Popped from the end.
    self._free = list(range(self.num_pages - 1, -1, -1))
    self._pages: list[list[int] | None] = [None] * self.max_seqs  # None = slot not in use
    self._length = [0] * self.max_seqs

  # -- queries ------------------------------------------------------------------------------------

  @property
  def num_free(self) -> int:
    return len(self._free)

  def active(self) -> list[int]:
    """Slots currently holding a sequence."""
    return [s for s, p in enumerate(self._pages) if p is not None]

  def length(self, seq: int) -> int:
    self._check_active(seq)
    return self._length[seq]

  def pages(self, seq: int) -> list[int]:
    self._check_active(seq)
    return list(self._pages[seq])

  def refcount(self, page: int) -> int:
    return int(self._refcount[page])

  def pages_needed(self, seq: int, length: int) -> int:
    """New pages `extend(seq, length)` would take (0 if the slot already covers `length`)."""
    have = len(self._pages[seq]) if self._pages[seq] is not None else 0
    return max(0, -(-length // self.page_size) - have)

  def page_table(self) -> np.ndarray:
    """int32 [max_seqs, pages_per_seq]: row s = slot s's pages, padded with `sentinel`."""
    table = np.full((self.max_seqs, self.pages_per_seq), self.sentinel, np.int32)
    for s, pages in enumerate(self._pages):
      if pages:
        table[s, :len(pages)] = pages
    return table

  def lengths(self) -> np.ndarray:
    """int32 [max_seqs]: tokens held per slot (0 for an unused slot)."""
    return np.asarray(self._length, np.int32)

  # -- mutations ----------------------------------------------------------------------------------

  def allocate(self, seq: int, length: int) -> list[int]:
    """Starts a sequence in the free slot `seq` with room for `length` tokens; returns its pages."""
    self._check_slot(seq)
    if self._pages[seq] is not None:
      raise ValueError(f"slot {seq} already holds a sequence; free it first")
    self._check_length(length)
    self._reserve(self.pages_needed(seq, length), f"allocate slot {seq} for {length} tokens")
    self._pages[seq] = []
    self._length[seq] = 0
    self.extend(seq, length)
    return list(self._pages[seq])

  def extend(self, seq: int, length: int) -> list[int]:
    """Grows slot `seq` to hold `length` tokens (never shrinks); returns the pages it added."""
    self._check_active(seq)
    self._check_length(length)
    need = self.pages_needed(seq, length)
    self._reserve(need, f"extend slot {seq} to {length} tokens")
    new = [self._pop() for _ in range(need)]
    self._pages[seq].extend(new)
    self._length[seq] = max(self._length[seq], length)
    return new

  def fork(self, src: int, dst: int) -> None:
    """Starts slot `dst` as a copy of `src` that shares all its pages (copy-on-write).

    No page is copied now; the first write of either sequence to a shared page goes through
    `ensure_writable`, which hands that sequence a private copy.
    """
    self._check_active(src)
    self._check_slot(dst)
    if self._pages[dst] is not None:
      raise ValueError(f"slot {dst} already holds a sequence; free it first")
    self._pages[dst] = list(self._pages[src])
    self._length[dst] = self._length[src]
    for p in self._pages[dst]:
      self._refcount[p] += 1

  def ensure_writable(self, seq: int, position: int) -> tuple[int, int] | None:
    """Makes the page holding `position` of `seq` private before a write.

    Returns None when it already is (refcount 1), else (src, dst): the shared page and the fresh
    page now in `seq`'s table; the caller must copy src -> dst on device (`copy_pages`) before
    writing. `position` must be inside the slot's pages (`extend` first). Raises ValueError when
    no page is free.
    """
    self._check_active(seq)
    j = position // self.page_size
    if position < 0 or j >= len(self._pages[seq]):
      raise ValueError(f"position {position} is outside slot {seq}'s {len(self._pages[seq])} "
                       f"pages of {self.page_size} tokens; extend the slot first")
    old = self._pages[seq][j]
    if self._refcount[old] == 1:
      return None
    self._reserve(1, f"copy-on-write of shared page {old} for slot {seq}")
    new = self._pop()
    self._refcount[old] -= 1
    self._pages[seq][j] = new
    return old, new

  def free(self, seq: int) -> list[int]:
    """Ends the sequence in `seq`; returns the pages that became free (shared ones stay held)."""
    self._check_active(seq)
    released = []
    for p in self._pages[seq]:
      self._refcount[p] -= 1
      if self._refcount[p] == 0:
        self._free.append(p)
        released.append(p)
    self._pages[seq] = None
    self._length[seq] = 0
    return released

  def check_invariants(self) -> None:
    """Raises AssertionError if the bookkeeping is inconsistent (see the class docstring)."""
    counts = np.zeros(self.num_pages, np.int64)
    for s, pages in enumerate(self._pages):
      if pages is None:
        assert self._length[s] == 0, f"free slot {s} has length {self._length[s]}"
        continue
      assert len(set(pages)) == len(pages), f"slot {s} lists a page twice: {pages}"
      assert len(pages) == -(-self._length[s] // self.page_size), (s, pages, self._length[s])
      assert len(pages) <= self.pages_per_seq, (s, len(pages))
      for p in pages:
        counts[p] += 1
    assert np.array_equal(counts, self._refcount), (counts, self._refcount)
    assert len(set(self._free)) == len(self._free), "free list has duplicates"
    assert sorted(self._free) == [p for p in range(self.num_pages) if counts[p] == 0]

  # -- internals ----------------------------------------------------------------------------------

  def _pop(self) -> int:
    p = self._free.pop()
    self._refcount[p] = 1
    return p

  def _reserve(self, need: int, what: str) -> None:
    if need > len(self._free):
      raise ValueError(
          f"out of KV pages: {what} needs {need} page(s) but {len(self._free)} of "
          f"{self.num_pages} are free ({self.page_size} tokens each); give the cache more pages "
          f"or run fewer sequences at once (fewer slots / a shorter max length)")

  def _check_slot(self, seq: int) -> None:
    if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not (
        0 <= seq < self.max_seqs):
      raise ValueError(f"slot must be an int in [0, {self.max_seqs}), got {seq!r}")

  def _check_active(self, seq: int) -> None:
    self._check_slot(seq)
    if self._pages[seq] is None:
      raise ValueError(f"slot {seq} holds no sequence")

  def _check_length(self, length: int) -> None:
    cap = self.pages_per_seq * self.page_size
    if not 0 <= length <= cap:
      raise ValueError(f"length must be in [0, {cap}] (pages_per_seq={self.pages_per_seq} x "
                       f"page_size={self.page_size}), got {length}")


# ------------------------------------------------------------------------------------------------
# Device-side ops (pure jnp; jit them with the pools donated so the updates happen in place).


def write_kv(k_pool: jax.Array, v_pool: jax.Array, page_table: jax.Array, positions: jax.Array,
             k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Scatters new tokens' K/V into their pages.

  Args:
    k_pool, v_pool: [K, P_pages, S_page, H] one layer's pools.
    page_table: int [N, M_pages], padded with P_pages (the allocator's sentinel).
    positions: int [N, T] token positions in their sequences; −1 = nothing to write (padding).
    k, v: [N, T, K, H] the new tokens' keys / values (cast to the pool dtype).
  Returns:
    The updated (k_pool, v_pool). Token (n, t) lands in page page_table[n, pos // S_page], slot
    pos % S_page. Padding, positions past the table and sentinel pages are dropped, never
    written elsewhere. Pages written must be private (`PageAllocator.ensure_writable`).
  """
  num_kv, num_pages, page_size, h = k_pool.shape
  n, t = positions.shape
  if v_pool.shape != k_pool.shape:
    raise ValueError(f"v_pool must have k_pool's shape {k_pool.shape}, got {v_pool.shape}")
  if page_table.ndim != 2 or page_table.shape[0] != n:
    raise ValueError(f"page_table must be [N={n}, M_pages], got {tuple(page_table.shape)}")
  if k.shape != (n, t, num_kv, h) or v.shape != k.shape:
    raise ValueError(f"k and v must be [N, T, K, H] = {(n, t, num_kv, h)}, got "
                     f"{tuple(k.shape)} and {tuple(v.shape)}")
  positions = positions.astype(jnp.int32)
  j = positions // page_size
  ok = (positions >= 0) & (j < page_table.shape[1])
  page = jnp.take_along_axis(page_table.astype(jnp.int32), jnp.clip(j, 0, page_table.shape[1] - 1),
                             axis=1)
  # Anything invalid goes to page P_pages, out of bounds: mode='drop' discards it. (A negative
  # index would wrap around to the last page, hence the explicit sentinel, never −1.)
  page = jnp.where(ok & (page >= 0), page, num_pages)
  slot = positions % page_size
  # [N, T, K, H] -> per KV head: pool[:, page[n,t], slot[n,t]] = k[n, t]
  kt = jnp.moveaxis(k, 2, 0).astype(k_pool.dtype)  # [K, N, T, H]
  vt = jnp.moveaxis(v, 2, 0).astype(v_pool.dtype)
  k_pool = k_pool.at[:, page, slot].set(kt, mode="drop")
  v_pool = v_pool.at[:, page, slot].set(vt, mode="drop")
  return k_pool, v_pool


def copy_pages(pool: jax.Array, src: jax.Array, dst: jax.Array) -> jax.Array:
  """pool[:, dst[i]] = pool[:, src[i]] for each i (the copy-on-write copies).

  pool [K, P_pages, S_page, H]; src, dst int [M]. Pad a fixed-size copy list with dst = P_pages
  (the sentinel): those entries are dropped. All reads happen before the writes.
  """
  num_pages = pool.shape[1]
  src = jnp.clip(jnp.asarray(src, jnp.int32), 0, num_pages - 1)
  dst = jnp.asarray(dst, jnp.int32)
  dst = jnp.where(dst >= 0, dst, num_pages)
  return pool.at[:, dst].set(pool[:, src], mode="drop")


def gather_pages(pool: jax.Array, page_table: jax.Array) -> jax.Array:
  """The dense cache [N, M_pages·S_page, K, H] of each sequence (a sentinel entry reads a
  clamped real page: mask by the lengths). For references and tests; the kernel never builds it."""
  num_kv, num_pages, page_size, h = pool.shape
  n, m = page_table.shape
  idx = jnp.clip(page_table.astype(jnp.int32), 0, num_pages - 1)
  dense = pool[:, idx]  # [K, N, M, S, H]
  return jnp.moveaxis(dense, 0, 3).reshape(n, m * page_size, num_kv, h)
