"""Ragged paged attention: Pallas (Triton- and Mosaic-style, interpret mode on CPU) = the jnp
reference = the model's dense causal attention on contiguous K/V.

The dense K/V are drawn first and written into scattered pages of a pool through the allocator
and `write_kv`, so the reference path (gather) and the independent one (the model's attention on
the original arrays) do not share a page-table bug. Unused pages and the tails of last pages
hold large stale values: the kernels must mask them, not merely down-weight them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.kernels import paged as PA
from tokenrl.models import layers
from tokenrl.rollout.pages import write_kv

H, PAGE = 16, 16
BACKENDS = ["triton", "mosaic"]


def _case(kv_lens, q_lens, t, g, *, num_kv=2, num_pages=24, pages_per_seq=4, seed=0,
          dtype=jnp.float32):
  """Returns (q [N,T,Q,H], k_pool, v_pool, page_table, kv_lens, q_lens, dense_k, dense_v)."""
  rng = np.random.default_rng(seed)
  n = len(kv_lens)
  c = pages_per_seq * PAGE
  # Pages scattered over the pool in random order; unused entries hold the sentinel.
  used = -(-np.asarray(kv_lens) // PAGE)
  table = rng.permutation(num_pages)[:n * pages_per_seq].reshape(n, pages_per_seq)
  table = jnp.asarray(np.where(np.arange(pages_per_seq)[None] < used[:, None], table, num_pages),
                      jnp.int32)
  dense_k = rng.standard_normal((n, c, num_kv, H)).astype(np.float32)
  dense_v = rng.standard_normal((n, c, num_kv, H)).astype(np.float32)
  pos = np.where(np.arange(c)[None] < np.asarray(kv_lens)[:, None], np.arange(c)[None], -1)
  stale = jnp.full((num_kv, num_pages, PAGE, H), 1e3, dtype)  # never visible
  k_pool, v_pool = write_kv(stale, stale, table, jnp.asarray(pos), jnp.asarray(dense_k, dtype),
                            jnp.asarray(dense_v, dtype))
  q = jnp.asarray(rng.standard_normal((n, t, num_kv * g, H)), dtype)
  return (q, k_pool, v_pool, table, jnp.asarray(kv_lens), jnp.asarray(q_lens),
          jnp.asarray(dense_k, dtype), jnp.asarray(dense_v, dtype))


def _dense(q, k, v, kv_lens, q_lens, scale, softcap=None):
  """The model's attention on contiguous K/V with the causal chunk mask built directly."""
  n, t = q.shape[:2]
  qpos = (np.asarray(kv_lens) - np.asarray(q_lens))[:, None] + np.arange(t)[None]
  valid = np.arange(t)[None] < np.asarray(q_lens)[:, None]
  mask = np.arange(k.shape[1])[None, None] <= qpos[:, :, None]
  out = layers.attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                         jnp.asarray(mask), scale=scale, softcap=softcap)
  return np.where(valid[:, :, None, None], np.asarray(out), 0.0)


# kv lengths: 1 (a single token), 32 (fills its last page exactly), ragged others.
DECODE = dict(kv_lens=[1, 32, 50, 17], q_lens=[1, 1, 1, 1], t=1)
PREFILL = dict(kv_lens=[1, 32, 50, 17], q_lens=[1, 5, 8, 3], t=8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode, g", [("decode", 1), ("decode", 3), ("prefill", 4)])
def test_kernel_equals_reference_equals_dense(backend, mode, g):
  q, kp, vp, table, kvl, ql, dk, dv = _case(**(DECODE if mode == "decode" else PREFILL), g=g,
                                            seed=g)
  scale = H ** -0.5
  ref = np.asarray(PA.paged_attention_reference(q, kp, vp, table, kvl, ql, scale=scale))
  np.testing.assert_allclose(ref, _dense(q, dk, dv, kvl, ql, scale), rtol=1e-5, atol=1e-6)
  # block_m 16 / 8 splits the prefill rows (T·G = 32) into several blocks: the per-block page
  # bound (causal skip) is exercised.
  got = PA.paged_attention(q, kp, vp, table, kvl, ql, scale=scale, impl="pallas",
                           pallas_backend=backend, block_m=16 if backend == "triton" else 8)
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)
  # Padding rows (i ≥ q_lens) are exactly 0.
  pad = np.arange(q.shape[1])[None] >= np.asarray(ql)[:, None]
  assert not np.asarray(got)[pad].any()


@pytest.mark.parametrize("seed", [11, 12])
def test_random_ragged_batches(seed):
  """Random kv lengths in [1, 64] and chunk sizes in [1, min(kv, 6)]: both kernels = dense."""
  rng = np.random.default_rng(seed)
  kv = rng.integers(1, 65, size=5)
  ql = np.minimum(rng.integers(1, 7, size=5), kv)
  q, kp, vp, table, kvl, qll, dk, dv = _case(kv.tolist(), ql.tolist(), 6, g=2, seed=seed,
                                             num_pages=32)
  want = _dense(q, dk, dv, kvl, qll, 0.25)
  for backend in BACKENDS:
    got = PA.paged_attention(q, kp, vp, table, kvl, qll, scale=0.25, impl="pallas",
                             pallas_backend=backend)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_and_softcap(backend):
  q, kp, vp, table, kvl, ql, dk, dv = _case(**PREFILL, g=2, seed=7, dtype=jnp.bfloat16)
  f32 = lambda x: x.astype(jnp.float32)
  want = PA.paged_attention_reference(f32(q), f32(kp), f32(vp), table, kvl, ql, scale=0.3,
                                      softcap=5.0)
  np.testing.assert_allclose(want, _dense(q, dk, dv, kvl, ql, 0.3, softcap=5.0), rtol=1e-5,
                             atol=1e-6)
  got = PA.paged_attention(q, kp, vp, table, kvl, ql, scale=0.3, softcap=5.0, impl="pallas",
                           pallas_backend=backend)
  assert got.dtype == jnp.bfloat16
  # bf16 probabilities in the P·V product and a bf16 output: ~2-3 significant digits.
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=3e-2)


def test_jnp_and_auto_are_the_reference_on_cpu():
  q, kp, vp, table, kvl, ql, _, _ = _case(**PREFILL, g=2, seed=1)
  ref = PA.paged_attention_reference(q, kp, vp, table, kvl, ql, scale=0.25)
  for impl in ("jnp", "auto"):
    np.testing.assert_array_equal(
        PA.paged_attention(q, kp, vp, table, kvl, ql, scale=0.25, impl=impl), ref)


def test_shared_prefix_pages_read_the_same_prompt():
  """Two sequences whose tables share their prompt pages (a fork) and then diverge read the same
  prompt; the kernel follows each table, not the slot."""
  q, kp, vp, table, kvl, ql, _, _ = _case([40, 40], [1, 1], 1, g=2, pages_per_seq=3, seed=3)
  forked = table.at[1, :2].set(table[0, :2])  # prompt pages 0-1 shared, page 2 private
  ref = PA.paged_attention_reference(q, kp, vp, forked, kvl, ql, scale=0.25)
  got = PA.paged_attention(q, kp, vp, forked, kvl, ql, scale=0.25, impl="pallas",
                           pallas_backend="triton")
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # Same query on both rows: the outputs differ only through the private third page.
  same_q = q.at[1].set(q[0])
  out = PA.paged_attention_reference(same_q, kp, vp, forked, jnp.array([32, 32]), ql, scale=0.25)
  np.testing.assert_allclose(out[0], out[1], rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(q=jnp.zeros((2, 1, 3, H))), "K dividing Q=3"),
    (dict(v_pool=jnp.zeros((2, 8, PAGE, 8))), "v_pool must have"),
    (dict(page_table=jnp.zeros((3, 2), jnp.int32)), r"page_table must be \[N=2"),
    (dict(kv_lens=jnp.zeros((2,), jnp.float32)), "kv_lens must be an integer"),
    (dict(q_lens=jnp.zeros((3,), jnp.int32)), r"q_lens must be \[N=2\]"),
    (dict(impl="cuda"), "impl must be"),
    (dict(impl="pallas", pallas_backend="mosaic", interpret=False), "compiles only on a TPU"),
    (dict(impl="pallas", pallas_backend="triton", block_m=24), "power of 2"),
    (dict(impl="pallas", pallas_backend="triton", k_pool=jnp.zeros((2, 8, 12, H)),
          v_pool=jnp.zeros((2, 8, 12, H))), "S_page and H powers of 2"),
])
def test_validation(kwargs, match):
  args = dict(q=jnp.zeros((2, 1, 4, H)), k_pool=jnp.zeros((2, 8, PAGE, H)),
              v_pool=jnp.zeros((2, 8, PAGE, H)), page_table=jnp.zeros((2, 2), jnp.int32),
              kv_lens=jnp.ones((2,), jnp.int32), q_lens=None)
  args.update(kwargs)
  extra = {k: args.pop(k) for k in ("impl", "pallas_backend", "block_m", "interpret")
           if k in args}
  with pytest.raises(ValueError, match=match):
    PA.paged_attention(**args, scale=1.0, **extra)


def _accelerator():
  return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")


@pytest.mark.gpu
@pytest.mark.tpu
@pytest.mark.skipif(not _accelerator(), reason="needs a GPU or TPU")
class TestOnAccelerator:
  """The comparisons with the kernel compiled (interpret=False) on the device's backend."""

  @pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-2), (jnp.bfloat16, 3e-2)])
  def test_prefill_and_decode(self, dtype, tol):
    for spec in (DECODE, PREFILL):
      q, kp, vp, table, kvl, ql, _, _ = _case(**spec, g=4, seed=5, dtype=dtype)
      f32 = lambda x: x.astype(jnp.float32)
      want = PA.paged_attention_reference(f32(q), f32(kp), f32(vp), table, kvl, ql, scale=0.25)
      got = PA.paged_attention(q, kp, vp, table, kvl, ql, scale=0.25, impl="pallas")
      # The device dot may run in tf32 / bf16 passes: ~1e-3 relative per logit.
      np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol)
