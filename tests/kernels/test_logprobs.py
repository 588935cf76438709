"""token_logprobs_entropy = float64 numpy (forward and gradient) on every backend, its accuracy on
bf16 logits, the entropy-quantile mask, and that no [M, V] float32 buffer is allocated.

Pallas runs in interpret mode on CPU (Triton-style and Mosaic-style kernels) with blocks that do not
divide V; TestOnAccelerator reruns the cases compiled when a GPU or TPU is present.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.kernels import logprobs as L

BACKENDS = {
    "jnp": dict(impl="jnp", block_v=300),
    "triton": dict(impl="pallas", pallas_backend="triton", block_v=256, interpret=True),
    "mosaic": dict(impl="pallas", pallas_backend="mosaic", block_v=256, block_m=8, interpret=True),
}


def _logits(v, seed=0, scale=3.0, big=True):
  """[10, V]: rows 0–5 N(0, scale²); 6: +1e4 offset; 7: ±1e4 alternating; 8: ten −inf;
  9: all equal. With big=False rows 6 and 7 stay N(0, scale²)."""
  rng = np.random.default_rng(seed)
  x = (scale * rng.standard_normal((10, v))).astype(np.float32)
  if big:
    x[6] += 1e4
    x[7, ::2] += 1e4
    x[7, 1::2] -= 1e4
  x[8, :10] = -np.inf
  x[9] = 3.0
  return x


def _targets(v, seed=0):
  t = np.random.default_rng(seed + 100).integers(0, v, size=10).astype(np.int32)
  t[8] = 3  # a −inf logit: logp = −inf
  return t


def _np_reference(x, targets, inv_temp=1.0):
  """float64 logp, entropy, log p of x·inv_temp (x·inv_temp rounded to float32 first)."""
  x = (x * np.float32(inv_temp)).astype(np.float64)
  m = x.max(-1, keepdims=True)
  lp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
  p = np.exp(lp)
  ent = -np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0).sum(-1)
  return lp[np.arange(len(targets)), targets], ent, lp


def _np_grad(x, targets, c_lp, c_h, inv_temp=1.0):
  """∂(Σ c_lp·logp + Σ c_H·H)/∂ℓ in float64."""
  _, ent, lp = _np_reference(x, targets, inv_temp)
  p = np.exp(lp)
  onehot = np.zeros_like(p)
  onehot[np.arange(len(targets)), targets] = 1.0
  dh = -p * (np.where(p > 0, lp, 0.0) + ent[:, None])
  return (c_lp[:, None] * (onehot - p) + c_h[:, None] * dh) * inv_temp


def _check_close(got, want, rtol, atol):
  got = np.asarray(got, np.float64)
  assert np.array_equal(np.isfinite(got), np.isfinite(want)), (got, want)
  np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])
  f = np.isfinite(want)
  np.testing.assert_allclose(got[f], want[f], rtol=rtol, atol=atol)


@pytest.mark.parametrize("v", [1000, 4097])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_forward_matches_float64(backend, v):
  x, t = _logits(v), _targets(v)
  logp, ent = L.token_logprobs_entropy(x, t, **BACKENDS[backend])
  assert logp.dtype == ent.dtype == jnp.float32
  want_lp, want_h, _ = _np_reference(x, t)
  assert want_lp[8] == -np.inf
  # logp reaches −2e4 on the ±1e4 row: a few ulp of that.
  _check_close(logp, want_lp, rtol=3e-7, atol=2e-6)
  _check_close(ent, want_h, rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose([logp[9], ent[9]], [-math.log(v), math.log(v)], rtol=1e-6)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_gradient_matches_float64(backend):
  v, tau = 1000, 0.7
  x, t = _logits(v, big=False), _targets(v)
  rng = np.random.default_rng(5)
  c_lp, c_h = rng.standard_normal((2, 10)).astype(np.float32)
  c_lp[8] = 0.0  # its logp is −inf: keep the loss finite
  kw = BACKENDS[backend]

  def loss(x):
    logp, ent = L.token_logprobs_entropy(x, t, tau, **kw)
    return jnp.sum(jnp.where(c_lp != 0, c_lp * logp, 0.0)) + jnp.sum(c_h * ent)

  g = jax.grad(loss)(x)
  want = _np_grad(x, t, c_lp, c_h, 1.0 / tau)
  np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=1e-5, atol=2e-6)
  # Only logp used: the entropy cotangent is a zero, not a NaN.
  g1 = jax.grad(lambda x: jnp.sum(L.token_logprobs_entropy(x[:8], t[:8], tau, **kw)[0]))(x)
  want1 = _np_grad(x[:8], t[:8], np.ones(8), np.zeros(8), 1.0 / tau)
  np.testing.assert_allclose(np.asarray(g1[:8], np.float64), want1, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["jnp", "mosaic"])
def test_temperature_and_bf16_in(backend):
  v, tau = 1000, 0.6
  x = jnp.asarray(_logits(v, big=False)).astype(jnp.bfloat16)
  t = _targets(v)
  kw = dict(BACKENDS[backend], block_m=16) if backend == "mosaic" else BACKENDS[backend]
  logp, ent = L.token_logprobs_entropy(x, t, tau, **kw)
  want_lp, want_h, _ = _np_reference(np.asarray(x.astype(jnp.float32)), t, 1.0 / tau)
  _check_close(logp, want_lp, rtol=1e-6, atol=4e-6)
  _check_close(ent, want_h, rtol=1e-6, atol=4e-6)
  g = jax.grad(lambda x: jnp.sum(L.token_logprobs_entropy(x, t, tau, **kw)[1]))(x)
  assert g.dtype == jnp.bfloat16
  want_g = _np_grad(np.asarray(x.astype(jnp.float32)), t, np.zeros(10), np.ones(10), 1 / tau)
  np.testing.assert_allclose(np.asarray(g, np.float64), want_g, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("backend", ["jnp", "triton"])
def test_bf16_logits_keep_f32_accuracy_where_jax_nn_loses_nats(backend):
  # Spec §1.7: jax.nn.log_softmax on bf16 (V = 151,936, σ = 3) computes max/sub/exp/log in bf16 and
  # is off by ~0.17 nats; upcasting per block keeps the float32 answer for the same bf16 values.
  v = 151_936
  rng = np.random.default_rng(7)
  x = jnp.asarray(3.0 * rng.standard_normal((2, v)), jnp.float32).astype(jnp.bfloat16)
  t = jnp.asarray(rng.integers(0, v, size=2), jnp.int32)
  want_lp, want_h, lp64 = _np_reference(np.asarray(x.astype(jnp.float32)), np.asarray(t))
  naive = np.asarray(jax.nn.log_softmax(x).astype(jnp.float32), np.float64)
  assert np.abs(naive - lp64).max() > 0.05
  kw = dict(BACKENDS[backend], block_v=16384)
  logp, ent = L.token_logprobs_entropy(x, t, **kw)
  np.testing.assert_allclose(np.asarray(logp, np.float64), want_lp, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent, np.float64), want_h, rtol=0, atol=1e-5)


def test_entropy_mask_hand_values():
  # Row i is uniform over k_i = 2^i tokens (others −inf), so H_i = ln k_i exactly.
  k = 2 ** np.arange(8)
  x = np.full((8, 128), -np.inf, np.float32)
  for i, ki in enumerate(k):
    x[i, :ki] = 0.0
  t = np.zeros(8, np.int32)
  logp, ent, mask = L.token_logprobs_entropy(x, t, return_entropy_mask_quantile=0.25,
                                             impl="jnp", block_v=48)
  np.testing.assert_allclose(ent, np.log(k), atol=1e-6)
  np.testing.assert_allclose(logp, -np.log(k), atol=1e-6)
  # quantile_{0.75} of ln 1..ln 128 lies between ln 32 and ln 64: the top two rows.
  assert mask.tolist() == [False] * 6 + [True] * 2
  where = np.array([True] * 7 + [False])
  *_, mask = L.token_logprobs_entropy(x, t, return_entropy_mask_quantile=0.25, where=where,
                                      impl="jnp", block_v=48)
  # Over the 7 valid rows the 0.75-quantile lies between ln 16 and ln 32: rows 5 and 6.
  assert mask.tolist() == [False] * 5 + [True] * 2 + [False]
  assert L.top_entropy_mask(ent, 1.0, where).tolist() == where.tolist()
  assert not L.top_entropy_mask(ent, 0.5, np.zeros(8, bool)).any()


def test_out_of_range_target_gives_nan():
  x = _logits(300)[:4]
  logp, ent = L.token_logprobs_entropy(x, np.array([0, -1, 300, 5], np.int32), impl="jnp")
  assert np.isnan(np.asarray(logp)[[1, 2]]).all()
  assert np.isfinite(np.asarray(logp)[[0, 3]]).all() and np.isfinite(ent).all()


def test_float64_input_is_computed_in_float32():
  x, t = _logits(300, big=False), _targets(300)
  got = L.token_logprobs_entropy(x.astype(np.float64), t, impl="jnp")
  want = L.token_logprobs_entropy(x, t, impl="jnp")
  for a, b in zip(got, want):
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


def test_all_minus_inf_row_is_nan():
  x = _logits(300)
  x[2] = -np.inf
  logp, ent = L.token_logprobs_entropy(x, _targets(300), impl="jnp")
  assert np.isnan(logp[2]) and np.isnan(ent[2])
  assert np.isfinite(np.delete(np.asarray(ent), 2)).all()


def test_reference_matches_float64():
  x, t = _logits(500, big=False), _targets(500)
  logp, ent = L.token_logprobs_entropy_reference(x, t)
  want_lp, want_h, _ = _np_reference(x, t)
  _check_close(logp, want_lp, rtol=1e-6, atol=1e-5)
  _check_close(ent, want_h, rtol=1e-6, atol=1e-5)


def test_no_mv_float32_buffer():
  # Compiled temp memory: the blocked path never holds an f32 [M, V] (M·V·4 bytes); the reference
  # composition does. Compile only, nothing runs.
  m, v = 256, 32768
  full = m * v * 4
  t = jax.ShapeDtypeStruct((m,), jnp.int32)

  def temp_bytes(f, dtype):
    x = jax.ShapeDtypeStruct((m, v), dtype)
    return jax.jit(f).lower(x, t).compile().memory_analysis().temp_size_in_bytes

  def ours(x, t):
    return sum(map(jnp.sum, L.token_logprobs_entropy(x, t, impl="jnp", block_v=2048)))

  def ref(x, t):
    return sum(map(jnp.sum, L.token_logprobs_entropy_reference(x, t)))

  assert temp_bytes(ref, jnp.float32) >= full
  assert temp_bytes(ours, jnp.float32) <= full / 8
  assert temp_bytes(jax.grad(ours), jnp.float32) <= full / 8
  assert temp_bytes(jax.grad(ours), jnp.bfloat16) <= full / 8
  assert temp_bytes(ours, jnp.bfloat16) <= full / 8


@pytest.mark.parametrize("args, kw, match", [
    ((np.zeros((4,), np.float32), np.zeros(4, np.int32)), {}, "logits must have 2 dims"),
    ((np.zeros((4, 8), np.float32), np.zeros(3, np.int32)), {}, r"targets must have shape \(4,\)"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.float32)), {}, "targets must be an integer"),
    ((np.zeros((4, 8), np.int32), np.zeros(4, np.int32)), {}, "logits must be floating"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32), 0.0), {}, "temperature must be"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32), float("inf")), {}, "temperature"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32)),
     dict(return_entropy_mask_quantile=1.5), "return_entropy_mask_quantile must be"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32)),
     dict(return_entropy_mask_quantile=0.5, where=np.ones(3, bool)), "where must have shape"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32)), dict(impl="cuda"), "impl must be"),
    ((np.zeros((4, 8), np.float32), np.zeros(4, np.int32)),
     dict(impl="pallas", pallas_backend="triton", interpret=True, block_v=100),
     "block_v must be a power of 2"),
])
def test_validation_errors(args, kw, match):
  with pytest.raises(ValueError, match=match):
    L.token_logprobs_entropy(*args, **kw)


def test_traced_temperature_is_rejected():
  x, t = np.zeros((2, 8), np.float32), np.zeros(2, np.int32)
  with pytest.raises(ValueError, match="temperature must be a concrete"):
    jax.jit(lambda tau: L.token_logprobs_entropy(x, t, tau, impl="jnp"))(0.5)


def test_from_hidden_matches_reference_forward_and_gradient():
  m, d, v, tau = 6, 16, 1000, 0.7
  rng = np.random.default_rng(11)
  h = rng.standard_normal((m, d)).astype(np.float32)
  w = rng.standard_normal((d, v)).astype(np.float32)
  t = rng.integers(0, v, size=m).astype(np.int32)
  c_lp, c_h = rng.standard_normal((2, m)).astype(np.float32)

  def loss(fn):
    def f(h, w):
      logp, ent = fn(h, w)
      return jnp.sum(c_lp * logp) + jnp.sum(c_h * ent)
    return f

  ours = lambda h, w: L.token_logprobs_entropy_from_hidden(h, w, t, tau, block_v=256)  # noqa: E731
  ref = lambda h, w: L.token_logprobs_entropy_reference(h @ w, t, tau)  # noqa: E731
  want_lp, want_h, _ = _np_reference(h.astype(np.float64) @ w.astype(np.float64), t, 1 / tau)
  logp, ent = ours(h, w)
  np.testing.assert_allclose(logp, want_lp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, want_h, rtol=1e-5, atol=1e-5)
  g = jax.grad(loss(ours), argnums=(0, 1))(h, w)
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(h, w)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
  # bf16 in: gradients come back in bf16, within bf16 rounding of the f32 ones.
  hb, wb = jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  gb = jax.grad(loss(ours), argnums=(0, 1))(hb, wb)
  assert gb[0].dtype == gb[1].dtype == jnp.bfloat16
  for a, b in zip(gb, g_ref):
    np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=0.03 * float(jnp.abs(b).max()))


def test_from_hidden_never_holds_mv_logits():
  m, d, v = 256, 64, 32768
  full = m * v * 4
  specs = (jax.ShapeDtypeStruct((m, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.bfloat16),
           jax.ShapeDtypeStruct((m,), jnp.int32))

  def temp(fn):
    loss = lambda h, w, t: sum(map(jnp.sum, fn(h, w, t)))  # noqa: E731
    f = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return f.lower(*specs).compile().memory_analysis().temp_size_in_bytes

  ref = temp(lambda h, w, t: L.token_logprobs_entropy_reference(h @ w, t))
  ours = temp(lambda h, w, t: L.token_logprobs_entropy_from_hidden(h, w, t, block_v=2048))
  assert ref >= full
  assert ours <= full / 4


def test_from_hidden_validation():
  h, t = np.zeros((4, 8), np.float32), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match=r"w must have shape \[D, V\] with D = 8"):
    L.token_logprobs_entropy_from_hidden(h, np.zeros((7, 10), np.float32), t)
  with pytest.raises(ValueError, match=r"targets must be an integer array of shape \(4,\)"):
    L.token_logprobs_entropy_from_hidden(h, np.zeros((8, 10), np.float32), t[:3])
  with pytest.raises(ValueError, match="block_v must be a positive int"):
    L.token_logprobs_entropy_from_hidden(h, np.zeros((8, 10), np.float32), t, block_v=0)


def _accelerator():
  return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")


@pytest.mark.gpu
@pytest.mark.tpu
@pytest.mark.skipif(not _accelerator(), reason="needs a GPU or TPU")
class TestOnAccelerator:
  """The same checks with the kernels compiled (interpret=False) for the local accelerator."""

  @pytest.mark.parametrize("v", [1000, 4097, 32768 + 3])
  def test_forward(self, v):
    x, t = _logits(v), _targets(v)
    logp, ent = L.token_logprobs_entropy(x, t, impl="pallas")
    want_lp, want_h, _ = _np_reference(x, t)
    _check_close(logp, want_lp, rtol=3e-7, atol=2e-6)
    _check_close(ent, want_h, rtol=1e-6, atol=2e-6)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
  def test_gradient(self, dtype):
    v, tau = 4097, 0.7
    x = jnp.asarray(_logits(v, big=False)[:8]).astype(dtype)
    t = _targets(v)[:8]
    c_lp, c_h = np.random.default_rng(5).standard_normal((2, 8)).astype(np.float32)

    def loss(x):
      logp, ent = L.token_logprobs_entropy(x, t, tau, impl="pallas")
      return jnp.sum(c_lp * logp) + jnp.sum(c_h * ent)

    g = jax.grad(loss)(x)
    want = _np_grad(np.asarray(x.astype(jnp.float32)), t, c_lp, c_h, 1.0 / tau)
    rtol = 1e-5 if dtype == jnp.float32 else 2**-8
    np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=rtol, atol=2e-6)

  def test_bf16_accuracy(self):
    v = 151_936
    rng = np.random.default_rng(7)
    x = jnp.asarray(3.0 * rng.standard_normal((64, v)), jnp.float32).astype(jnp.bfloat16)
    t = jnp.asarray(rng.integers(0, v, size=64), jnp.int32)
    want_lp, want_h, _ = _np_reference(np.asarray(x.astype(jnp.float32)), np.asarray(t))
    logp, ent = L.token_logprobs_entropy(x, t, impl="pallas")
    np.testing.assert_allclose(np.asarray(logp, np.float64), want_lp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent, np.float64), want_h, rtol=0, atol=1e-5)
