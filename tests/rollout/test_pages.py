"""Paged KV cache: allocator invariants (hypothesis state machine) and the device page ops.

The device pools are modelled exactly: a NumPy shadow of every sequence's tokens is checked
against `gather_pages` after random allocate / fork / write / free programs, so a write that
lands in a shared page (no copy-on-write) or in another sequence's page shows up as a mismatch.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenrl.rollout.pages import PageAllocator, copy_pages, gather_pages, write_kv

K, H = 2, 3


def test_allocate_extend_free_reuses_pages():
  a = PageAllocator(num_pages=6, page_size=4, max_seqs=3, pages_per_seq=4)
  assert a.allocate(0, 5) == [0, 1]  # ⌈5/4⌉ = 2 pages
  assert a.allocate(1, 4) == [2]  # a length filling its page exactly takes no extra page
  assert a.extend(1, 5) == [3]
  assert a.extend(1, 3) == []  # never shrinks
  table = a.page_table()
  assert table.dtype == np.int32 and table.shape == (3, 4)
  np.testing.assert_array_equal(table, [[0, 1, 6, 6], [2, 3, 6, 6], [6, 6, 6, 6]])
  np.testing.assert_array_equal(a.lengths(), [5, 5, 0])
  assert sorted(a.free(0)) == [0, 1]
  assert a.num_free == 4
  assert a.allocate(2, 1) == [1]  # LIFO: the last freed page comes back first
  a.check_invariants()


def test_out_of_pages_raises_and_changes_nothing():
  a = PageAllocator(num_pages=3, page_size=2, max_seqs=2, pages_per_seq=3)
  a.allocate(0, 4)
  before = (a.page_table().copy(), a.num_free)
  with pytest.raises(ValueError, match=r"needs 2 page\(s\) but 1 of 3 are free.*more pages"):
    a.allocate(1, 3)
  with pytest.raises(ValueError, match="needs 2 page"):
    a.allocate(1, 4)
  np.testing.assert_array_equal(a.page_table(), before[0])
  assert a.num_free == before[1] and a.active() == [0]
  a.fork(0, 1)
  a.extend(0, 5)  # the last free page
  with pytest.raises(ValueError, match="copy-on-write"):
    a.ensure_writable(1, 0)
  a.check_invariants()


def test_fork_shares_and_copy_on_write_splits_only_the_written_page():
  a = PageAllocator(num_pages=8, page_size=4, max_seqs=3, pages_per_seq=3)
  prompt = a.allocate(0, 6)  # one full page + a partial one
  a.fork(0, 1)
  a.fork(0, 2)
  assert [a.refcount(p) for p in prompt] == [3, 3]
  assert a.ensure_writable(1, 1) is not None  # a write into the full prompt page also copies
  a.free(1)
  a.fork(0, 1)
  # Decoding token 6 (page 1, slot 2) diverges: every sample gets its own copy of that page;
  # the last holder keeps the original, without a copy.
  copies = [a.ensure_writable(s, 6) for s in (1, 2, 0)]
  assert copies[0][0] == copies[1][0] == prompt[1] and copies[2] is None
  assert copies[0][1] != copies[1][1]
  assert a.pages(0)[1] == prompt[1]
  assert a.refcount(prompt[0]) == 3 and a.refcount(prompt[1]) == 1
  assert a.ensure_writable(1, 6) is None  # already private
  for s in (0, 1, 2):
    a.free(s)
  assert a.num_free == 8
  a.check_invariants()


@pytest.mark.parametrize("call, match", [
    (lambda a: a.allocate(3, 1), r"slot must be an int in \[0, 3\)"),
    (lambda a: a.allocate(1, 17), r"length must be in \[0, 16\]"),
    (lambda a: a.extend(1, 2), "slot 1 holds no sequence"),
    (lambda a: a.fork(0, 0), "already holds"),
    (lambda a: a.ensure_writable(0, 8), "outside slot 0"),
    (lambda a: PageAllocator(0, 4, 1, 1), "num_pages must be a positive int"),
])
def test_validation(call, match):
  a = PageAllocator(num_pages=8, page_size=4, max_seqs=3, pages_per_seq=4)
  a.allocate(0, 5)
  with pytest.raises(ValueError, match=match):
    call(a)


def test_write_kv_copy_pages_gather_roundtrip():
  a = PageAllocator(num_pages=5, page_size=4, max_seqs=2, pages_per_seq=3)
  a.allocate(0, 6)
  a.allocate(1, 3)
  table = jnp.asarray(a.page_table())
  rng = np.random.default_rng(0)
  k = rng.standard_normal((2, 6, K, H)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, -1, -1, -1]])  # row 1 padded with −1
  pool = jnp.zeros((K, 5, 4, H))
  kp, vp = write_kv(pool, pool, table, jnp.asarray(pos), jnp.asarray(k), jnp.asarray(-k))
  dense = np.asarray(gather_pages(kp, table))  # [N, 12, K, H]
  np.testing.assert_array_equal(dense[0, :6], k[0])
  np.testing.assert_array_equal(dense[1, :3], k[1, :3])
  np.testing.assert_array_equal(np.asarray(gather_pages(vp, table))[1, :3], -k[1, :3])
  # The padding was dropped: the only free page and the rest of row 1's page are still zero.
  free = [p for p in range(5) if a.refcount(p) == 0]
  assert not np.asarray(kp)[:, free].any() and not dense[1, 3:4].any()
  # A position past the table is dropped too (the sentinel is out of bounds, never wraps).
  k2, _ = write_kv(kp, vp, table, jnp.array([[12, -1], [40, 3]]), jnp.ones((2, 2, K, H)),
                   jnp.ones((2, 2, K, H)))
  changed = np.argwhere(np.asarray(k2 != kp).any(axis=(0, 3)))
  np.testing.assert_array_equal(changed, [[a.pages(1)[0], 3]])
  copied = copy_pages(kp, jnp.array([a.pages(0)[1], 0]), jnp.array([free[0], 5]))
  np.testing.assert_array_equal(copied[:, free[0]], kp[:, a.pages(0)[1]])
  np.testing.assert_array_equal(np.delete(np.asarray(copied), free[0], 1),
                                np.delete(np.asarray(kp), free[0], 1))


# ------------------------------------------------------------------------------------------------
# Property test: random programs against a token-level shadow.

PAGES, PAGE, SLOTS, PER_SEQ = 12, 3, 4, 5

_write = jax.jit(write_kv)
_copy = jax.jit(copy_pages)

op = st.one_of(
    st.tuples(st.just("new"), st.just(0), st.integers(0, 2 * PAGE + 2)),
    st.tuples(st.just("fork"), st.integers(0, SLOTS - 1), st.just(0)),
    st.tuples(st.just("write"), st.integers(0, SLOTS - 1), st.integers(1, 4)),
    st.tuples(st.just("write"), st.integers(0, SLOTS - 1), st.integers(1, 4)),
    st.tuples(st.just("free"), st.integers(0, SLOTS - 1), st.just(0)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25))
def test_random_programs_keep_invariants_and_contents(ops):
  a = PageAllocator(PAGES, PAGE, SLOTS, PER_SEQ)
  pool = jnp.zeros((1, PAGES, PAGE, 1))  # K = H = 1: the value written is a token id
  shadow = {}  # slot -> list of token values it holds
  counter = [1.0]

  def write(slot, count):
    """Appends `count` tokens to `slot` the way an engine would: extend, COW, then write."""
    nonlocal pool
    start = len(shadow[slot])
    end = min(start + count, PAGE * PER_SEQ)
    if end == start:
      return
    need = a.pages_needed(slot, end)
    pages = a.pages(slot)
    touched = range(start // PAGE, (end - 1) // PAGE + 1)
    shared = [j for j in touched if j < len(pages) and a.refcount(pages[j]) > 1]
    if need > a.num_free:
      with pytest.raises(ValueError, match="out of KV pages"):
        a.extend(slot, end)
      return
    if need + len(shared) > a.num_free:
      return  # back-pressure: an engine would hold this sequence until pages free up
    a.extend(slot, end)
    copies = [c for j in touched if (c := a.ensure_writable(slot, max(start, j * PAGE)))]
    if copies:
      src, dst = map(jnp.asarray, zip(*copies))
      pool = _copy(pool, src, dst)
    vals = [counter[0] + i for i in range(end - start)]
    counter[0] += len(vals)
    pos = np.full((1, 16), -1)
    pos[0, :len(vals)] = np.arange(start, end)
    val = np.zeros((1, 16, 1, 1), np.float32)
    val[0, :len(vals), 0, 0] = vals
    row = jnp.asarray(a.page_table()[slot:slot + 1])
    pool, _ = _write(pool, pool, row, jnp.asarray(pos), jnp.asarray(val), jnp.asarray(val))
    shadow[slot].extend(vals)

  for kind, x, y in ops:
    # Operands are resolved against the current state (x indexes the live / free slots), so
    # every generated step does something.
    live = sorted(shadow)
    idle = [s for s in range(SLOTS) if s not in shadow]
    if kind == "new" and idle:
      slot = idle[0]
      if a.pages_needed(slot, y) > a.num_free:
        with pytest.raises(ValueError, match="out of KV pages"):
          a.allocate(slot, y)
        continue
      a.allocate(slot, 0)
      shadow[slot] = []
      write(slot, y)
    elif kind == "fork" and live and idle:
      src = live[x % len(live)]
      a.fork(src, idle[0])
      shadow[idle[0]] = list(shadow[src])
    elif kind == "write" and live:
      write(live[x % len(live)], y)
    elif kind == "free" and live:
      slot = live[x % len(live)]
      a.free(slot)
      del shadow[slot]
    a.check_invariants()
    # Pages are shared only between sequences related by fork, and every sequence reads back
    # exactly its own tokens: no write ever reached a page another sequence still sees.
    dense = np.asarray(gather_pages(pool, jnp.asarray(a.page_table())))[..., 0, 0]
    for s, toks in shadow.items():
      assert a.length(s) == len(toks)
      np.testing.assert_array_equal(dense[s, :len(toks)], toks)
  for s in list(shadow):
    a.free(s)
  a.check_invariants()
  assert a.num_free == PAGES and all(a.refcount(p) == 0 for p in range(PAGES))
