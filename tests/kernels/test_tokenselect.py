"""TokenSelect kernels = their jnp references, plus hand-computed invariants.

Pallas runs in interpret mode on CPU (the Triton-style kernels); cache lengths are chosen not to
divide the key block so the masked tail is exercised. A jax.export test lowers the compiled
kernels for CUDA (Triton) without a GPU. TestOnAccelerator reruns the comparisons compiled.
"""
import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.kernels import tokenselect as TS

K_HEADS, H = 2, 16
PALLAS = dict(impl="pallas", block_t=64, interpret=True)


def _inputs(g, c=300, n=2, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((n, K_HEADS * g, H)), dtype)
  k = jnp.asarray(rng.standard_normal((n, c, K_HEADS, H)), dtype)
  return q, k


@pytest.mark.parametrize("g", [1, 4, 7, 8])
def test_votes_pallas_and_jnp_match_reference(g):
  q, k = _inputs(g)
  lo, hi = jnp.array([5, 0]), jnp.array([250, 300])
  want = np.asarray(TS.criticality_votes_reference(q, k, lo, hi))
  finite = np.isfinite(want)
  # Exactly the candidates [lo, hi) are finite.
  np.testing.assert_array_equal(finite[0], (np.arange(300) >= 5) & (np.arange(300) < 250))
  assert finite[1].all()
  # Each head's softmax sums to 1 over the candidates: the votes of a row sum to Q.
  np.testing.assert_allclose(want[finite].reshape(-1)[:245].sum(), K_HEADS * g, rtol=1e-5)
  for kw in (PALLAS, dict(impl="jnp")):
    got = np.asarray(TS.criticality_votes(q, k, lo, hi, **kw))
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-7)


def test_stacked_cache_with_layer_index():
  q, k = _inputs(4, c=150)
  stack = jnp.stack([k * 0.5, k, -k])  # [L=3,N,C,K,H]
  lo, hi = jnp.array([2, 0]), jnp.array([140, 150])
  want = TS.criticality_votes_reference(q, k, lo, hi)
  for kw in (PALLAS, dict(impl="jnp")):
    got = jax.jit(lambda l: TS.criticality_votes(q, stack, lo, hi, layer=l, **kw))(1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  slots = jnp.array([[3, 7], [149, 0]])
  valid = jnp.ones((2, 2), bool)
  kpos = jnp.broadcast_to(jnp.arange(150), (2, 150))
  k_sel, _, _ = TS.gather_selected(stack, stack, kpos, slots, valid, layer=jnp.int32(2))
  np.testing.assert_array_equal(k_sel, -jnp.take_along_axis(k, slots[:, :, None, None], axis=1))


def test_modulo_grouping_is_a_head_permutation():
  g = 4
  q, k = _inputs(g, c=200)
  lo, hi = jnp.array([0, 10]), jnp.array([200, 150])
  mod = TS.criticality_votes_reference(q, k, lo, hi, gqa="modulo")
  # Head h reads KV head h % K under 'modulo'; reorder the heads so that h // G gives the same KV.
  perm = [g_ * K_HEADS + kv for kv in range(K_HEADS) for g_ in range(g)]
  grp = TS.criticality_votes_reference(q[:, perm], k, lo, hi, gqa="group")
  np.testing.assert_allclose(mod, grp, rtol=1e-6)
  got = TS.criticality_votes(q, k, lo, hi, gqa="modulo", **PALLAS)
  np.testing.assert_allclose(got, mod, rtol=1e-5, atol=1e-7)
  assert not np.allclose(mod, TS.criticality_votes_reference(q, k, lo, hi)[:, :])


def test_votes_bf16_keys():
  q, k = _inputs(7, seed=3, dtype=jnp.bfloat16)
  lo, hi = jnp.array([0, 4]), jnp.array([300, 290])
  want = TS.criticality_votes_reference(q.astype(jnp.float32), k.astype(jnp.float32), lo, hi)
  got = np.asarray(TS.criticality_votes(q, k, lo, hi, **PALLAS))
  finite = np.isfinite(np.asarray(want))
  # q is used in bf16 (as the reference kernel does): ~3 significant digits on each logit.
  np.testing.assert_allclose(got[finite], np.asarray(want)[finite], rtol=0.1, atol=2e-3)


def test_aligned_key_wins_the_vote():
  # Every head's query equals 10·e_0 and only slot 77 holds e_0: slot 77 gets Q·(nearly 1).
  n, c, g = 1, 150, 4
  q = jnp.zeros((n, K_HEADS * g, H)).at[:, :, 0].set(10.0)
  k = jnp.zeros((n, c, K_HEADS, H)).at[:, 77, :, 0].set(1.0)
  votes = TS.criticality_votes(q, k, jnp.array([3]), jnp.array([140]), **PALLAS)
  share = np.exp(10.0) / (np.exp(10.0) + 136)  # 137 candidates, 136 with logit 0
  np.testing.assert_allclose(votes[0, 77], K_HEADS * g * share, rtol=1e-5)
  slots, valid = TS.select_tokens(votes, jnp.array([0]), jnp.array([c]), top_k=1, n_init=3,
                                  n_local=10)
  np.testing.assert_array_equal(slots[0], [0, 1, 2, 77] + list(range(140, 150)))
  assert bool(valid.all())


@pytest.mark.parametrize("g", [7])
def test_selection_equals_reference(g):
  top_k, n_init, n_local = 16, 4, 8
  total = n_init + top_k + n_local
  q, k = _inputs(g, c=300, n=4, seed=5)
  # Rows: left-padded by 10; fallback boundary n = T (all tokens); n = T + 1 (one dropped);
  # a long row whose candidate count (262) is not a multiple of the block.
  first = jnp.array([10, 0, 0, 2])
  end = jnp.array([300, total, total + 1, 276])
  votes = TS.criticality_votes(q, k, first + n_init, end - n_local, **PALLAS)
  slots, valid = TS.select_tokens(votes, first, end, top_k=top_k, n_init=n_init, n_local=n_local)
  ref_votes = TS.criticality_votes_reference(q, k, first + n_init, end - n_local)
  want = TS.select_tokens_reference(ref_votes, first, end, top_k=top_k, n_init=n_init,
                                    n_local=n_local)
  for r in range(4):
    got = np.asarray(slots[r])[np.asarray(valid[r])].tolist()
    assert got == want[r], r
  assert len(want[1]) == total and want[1] == list(range(total))
  assert len(want[2]) == total and len(set(want[2])) == total
  ref_slots, ref_valid = TS.tokenselect_reference(q, k, first, end, top_k=top_k, n_init=n_init,
                                                  n_local=n_local)
  np.testing.assert_array_equal(ref_slots, slots)
  np.testing.assert_array_equal(ref_valid, valid)


def test_ties_break_to_the_lowest_slot():
  votes = jnp.array([[-jnp.inf, 1.0, 2.0, 2.0, 1.0, 2.0, -jnp.inf]])
  np.testing.assert_array_equal(TS.topk_from_votes(votes, 2), [[2, 3]])


def _attention_inputs(g, s, t, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  n = 2
  q = jnp.asarray(rng.standard_normal((n, s, K_HEADS * g, H)), dtype)
  k = jnp.asarray(rng.standard_normal((n, t, K_HEADS, H)), dtype)
  v = jnp.asarray(rng.standard_normal((n, t, K_HEADS, H)), dtype)
  kpos = np.sort(rng.integers(0, 60, (n, t)), axis=1)
  kpos[:, ::5] = -1  # unselected slots
  q_pos = jnp.asarray(rng.integers(30, 70, (n, s)), jnp.int32)
  return q, k, v, q_pos, jnp.asarray(kpos, jnp.int32)


@pytest.mark.parametrize("g, s, softcap", [(1, 1, None), (7, 1, None), (4, 5, 3.0)])
def test_attention_pallas_matches_reference(g, s, softcap):
  q, k, v, q_pos, kpos = _attention_inputs(g, s, t=70)
  want = TS.selected_attention_reference(q, k, v, q_pos, kpos, scale=0.25, softcap=softcap)
  got = TS.selected_attention(q, k, v, q_pos, kpos, scale=0.25, softcap=softcap, impl="pallas",
                              block_t=32, block_m=16, interpret=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got_jnp = TS.selected_attention(q, k, v, q_pos, kpos, scale=0.25, softcap=softcap, impl="jnp")
  np.testing.assert_allclose(got_jnp, want, rtol=1e-5, atol=1e-5)


def test_attention_bf16_and_hand_value():
  q, k, v, q_pos, kpos = _attention_inputs(4, 1, t=40, seed=2, dtype=jnp.bfloat16)
  want = TS.selected_attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                         v.astype(jnp.float32), q_pos, kpos, scale=0.25)
  got = TS.selected_attention(q, k, v, q_pos, kpos, scale=0.25, impl="pallas", block_t=16,
                              interpret=True)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=2e-2)
  # One visible key: the output is its value row; no visible key: 0.
  q1 = jnp.ones((1, 2, 2, H))
  k1 = jnp.ones((1, 16, 1, H))
  v1 = jnp.arange(16 * H, dtype=jnp.float32).reshape(1, 16, 1, H)
  kp = jnp.full((1, 16), -1, jnp.int32).at[0, 9].set(4)
  out = TS.selected_attention(q1, k1, v1, jnp.array([[5, 3]]), kp, scale=1.0, impl="pallas",
                              interpret=True)
  np.testing.assert_array_equal(out[0, 0, 0], v1[0, 9, 0])
  np.testing.assert_array_equal(out[0, 1], 0.0)


def test_gather_selected_marks_invalid():
  k = jnp.arange(2 * 6 * 1 * 2, dtype=jnp.float32).reshape(2, 6, 1, 2)
  kpos = jnp.array([[-1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]])
  slots = jnp.array([[1, 3, 9], [0, 5, 2]])
  valid = jnp.array([[True, True, False], [True, True, True]])
  k_sel, v_sel, kp = TS.gather_selected(k, k, kpos, slots, valid)
  np.testing.assert_array_equal(kp, [[0, 2, -1], [0, 5, 2]])
  np.testing.assert_array_equal(k_sel[1, :, 0], k[1, jnp.array([0, 5, 2]), 0])
  np.testing.assert_array_equal(v_sel[0, 2], k[0, 5])  # clipped slot 9 -> 5, marked invalid


_TRITON_CALL = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


def test_kernels_lower_for_cuda():
  q = jax.ShapeDtypeStruct((1, 14, 64), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 1, 1000, 2, 64), jnp.bfloat16)  # stacked [L,N,C,K,H]
  b = jax.ShapeDtypeStruct((1,), jnp.int32)
  score = lambda q, k, lo, hi, layer: TS._logits_pallas(q, k, lo, hi, layer, gqa="group",
                                                         block_t=256, interpret=False)
  text = export.export(jax.jit(score), platforms=["cuda"], disabled_checks=[_TRITON_CALL])(
      q, k, b, b, jax.ShapeDtypeStruct((), jnp.int32)).mlir_module()
  assert "triton" in text
  qq = jax.ShapeDtypeStruct((1, 1, 14, 64), jnp.bfloat16)
  ks = jax.ShapeDtypeStruct((1, 2700, 2, 64), jnp.bfloat16)
  attn = lambda q, k, v, qp, kp: TS._attention_pallas(q, k, v, qp, kp, scale=0.125, softcap=None,
                                                       block_t=128, block_m=64, interpret=False)
  text = export.export(jax.jit(attn), platforms=["cuda"], disabled_checks=[_TRITON_CALL])(
      qq, ks, ks, jax.ShapeDtypeStruct((1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, 2700), jnp.int32)).mlir_module()
  assert "triton" in text


@pytest.mark.parametrize("fn, match", [
    (lambda: TS.criticality_votes(jnp.zeros((2, 4, 16)), jnp.zeros((3, 8, 2, 16)), jnp.zeros(2, int),
                                  jnp.zeros(2, int)), "k must be"),
    (lambda: TS.criticality_votes(jnp.zeros((2, 3, 16)), jnp.zeros((2, 8, 2, 16)), jnp.zeros(2, int),
                                  jnp.zeros(2, int)), "not a multiple"),
    (lambda: TS.criticality_votes(jnp.zeros((2, 4, 16)), jnp.zeros((2, 8, 2, 16)), jnp.zeros(3, int),
                                  jnp.zeros(2, int)), "lo and hi"),
    (lambda: TS.criticality_votes(jnp.zeros((2, 4, 16)), jnp.zeros((2, 8, 2, 16)), jnp.zeros(2, int),
                                  jnp.zeros(2, int), impl="triton"), "impl must be"),
    (lambda: TS.criticality_votes(jnp.zeros((2, 4, 16)), jnp.zeros((2, 8, 2, 16)), jnp.zeros(2, int),
                                  jnp.zeros(2, int), gqa="mod"), "gqa must be"),
    (lambda: TS.criticality_logits(jnp.zeros((2, 4, 16)), jnp.zeros((2, 8, 2, 16)),
                                   jnp.zeros(2, int), jnp.zeros(2, int), block_t=100), "block_t"),
    (lambda: TS.selected_attention(jnp.zeros((1, 2, 4, 16)), jnp.zeros((1, 8, 2, 16)),
                                   jnp.zeros((1, 8, 2, 16)), jnp.zeros((1, 3), int),
                                   jnp.zeros((1, 8), int), scale=1.0), "q_pos must be"),
    (lambda: TS.select_tokens(jnp.zeros((1, 8)), jnp.zeros(1, int), jnp.ones(1, int), top_k=9,
                              n_init=0, n_local=1), "fewer than top_k"),
])
def test_validation_errors(fn, match):
  with pytest.raises(ValueError, match=match):
    fn()


def _accelerator():
  return jax.default_backend() in ("gpu", "cuda", "rocm")


@pytest.mark.gpu
@pytest.mark.skipif(not _accelerator(), reason="needs a GPU")
class TestOnAccelerator:
  """The comparisons with the Triton kernels compiled (interpret=False)."""

  @pytest.mark.parametrize("g", [1, 7, 8])
  def test_votes(self, g):
    q, k = _inputs(g, c=5000, seed=1)
    lo, hi = jnp.array([128, 0]), jnp.array([4000, 5000])
    want = np.asarray(TS.criticality_votes_reference(q, k, lo, hi))
    got = np.asarray(TS.criticality_votes(q, k, lo, hi, impl="pallas"))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    # The GPU dot may run in tf32: ~1e-3 relative on each logit.
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-2, atol=1e-6)

  def test_attention(self):
    q, k, v, q_pos, kpos = _attention_inputs(7, 3, t=300, dtype=jnp.bfloat16)
    want = TS.selected_attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                           v.astype(jnp.float32), q_pos, kpos, scale=0.25)
    got = TS.selected_attention(q, k, v, q_pos, kpos, scale=0.25, impl="pallas")
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=2e-2)
