"""two_pass_softmax / two_pass_log_softmax = float64 numpy, forward and gradient, on every backend.

Pallas runs in interpret mode on CPU (both the Triton-style and the Mosaic-style kernel); block
sizes are chosen small and not dividing V so the masked tail is exercised. TestOnAccelerator reruns the
cases compiled on a GPU or TPU when one is present.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.kernels import softmax as S

BACKENDS = {
    "jnp": dict(impl="jnp", block_v=300),
    "triton": dict(impl="pallas", pallas_backend="triton", block_v=256, interpret=True),
    "mosaic": dict(impl="pallas", pallas_backend="mosaic", block_v=256, block_m=8, interpret=True),
}


def _logits(v, seed=0):
  """Rows 0–5 N(0, 3²); 6: +1e4 offset; 7: ±1e4 alternating; 8: ten −inf; 9: all equal."""
  rng = np.random.default_rng(seed)
  x = (3.0 * rng.standard_normal((10, v))).astype(np.float32)
  x[6] += 1e4
  x[7, ::2] += 1e4
  x[7, 1::2] -= 1e4
  x[8, :10] = -np.inf
  x[9] = 3.0
  return x


def _np_log_softmax(x):
  x = x.astype(np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _check_softmax(y, x):
  want = np.exp(_np_log_softmax(x))
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=4e-6, atol=1e-30)


def _check_log_softmax(ly, x):
  want = _np_log_softmax(x)
  ly = np.asarray(ly, np.float64)
  finite = np.isfinite(want)
  assert np.array_equal(finite, np.isfinite(ly))
  # Absolute error: a few ulp of log y itself (log y reaches −2e4 on the ±1e4 row).
  np.testing.assert_allclose(ly[finite], want[finite], rtol=3e-7, atol=2e-6)


@pytest.mark.parametrize("v", [1000, 4097])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_forward_matches_float64(backend, v):
  x = _logits(v)
  kw = BACKENDS[backend]
  _check_softmax(S.two_pass_softmax(x, **kw), x)
  _check_log_softmax(S.two_pass_log_softmax(x, **kw), x)
  y = np.asarray(S.two_pass_softmax(x, **kw))
  np.testing.assert_allclose(y[9], 1.0 / v, rtol=1e-6)  # all-equal row
  np.testing.assert_allclose(y.sum(-1), 1.0, rtol=2e-6)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_gradient_matches_float64(backend):
  v = 1000
  x = _logits(v)
  w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  kw = BACKENDS[backend]
  g = jax.grad(lambda x: jnp.sum(w * S.two_pass_softmax(x, **kw)))(x)
  p = np.exp(_np_log_softmax(x))
  want = p * (w - (w * p).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=2e-5, atol=1e-6)
  gl = jax.grad(lambda x: jnp.sum(w * S.two_pass_log_softmax(x, **kw)))(x)
  want_l = w - p * w.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(gl, np.float64), want_l, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_minus_inf_row_is_nan_and_bf16_in(backend):
  v = 1000
  x = _logits(v)
  x[3] = -np.inf
  y = np.asarray(S.two_pass_softmax(x, **BACKENDS[backend]))
  assert np.isnan(y[3]).all()
  assert np.isfinite(np.delete(y, 3, axis=0)).all()
  # bf16 in, float32 out: exact up to float32 rounding of the bf16 values' softmax.
  xb = jnp.asarray(_logits(v, seed=2)[:6]).astype(jnp.bfloat16)
  yb = S.two_pass_softmax(xb, out_dtype=jnp.float32, **BACKENDS[backend])
  _check_softmax(yb, np.asarray(xb.astype(jnp.float32)))
  # bf16 out: one bf16 rounding.
  yb16 = S.two_pass_softmax(xb, **BACKENDS[backend])
  assert yb16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(yb16, np.float64), np.asarray(yb, np.float64),
                             rtol=2**-8, atol=0)


def test_xnnpack_distribution_and_offset():
  # XNNPACK's benchmark inputs U(−1000, 1000) and a +300 offset: outputs finite and accurate.
  rng = np.random.default_rng(3)
  x = rng.uniform(-1000, 1000, size=(2, 5000)).astype(np.float32)
  _check_softmax(S.two_pass_softmax(x, impl="jnp"), x)
  x2 = (rng.standard_normal((2, 5000)) * 4 + 300).astype(np.float32)
  _check_softmax(S.two_pass_softmax(x2, impl="jnp"), x2)


def test_axis_and_rank():
  x = _logits(257)[:6].reshape(2, 3, 257)
  xt = np.moveaxis(x, -1, 0)  # [257, 2, 3]
  y = S.two_pass_softmax(xt, axis=0, impl="jnp", block_v=100)
  assert y.shape == xt.shape
  _check_softmax(np.moveaxis(np.asarray(y), 0, -1).reshape(6, 257), x.reshape(6, 257))
  y1 = S.two_pass_log_softmax(x[0, 0], impl="jnp")
  _check_log_softmax(np.asarray(y1)[None], x[0, 0][None])


def test_reference_is_jax_nn_on_f32():
  x = jnp.asarray(_logits(300)[:6]).astype(jnp.bfloat16)
  np.testing.assert_array_equal(
      S.two_pass_softmax_reference(x, out_dtype=jnp.float32),
      jax.nn.softmax(x.astype(jnp.float32)))
  np.testing.assert_array_equal(S.two_pass_log_softmax_reference(x),
                                jax.nn.log_softmax(x.astype(jnp.float32)).astype(jnp.bfloat16))


@pytest.mark.parametrize("args, kw, match", [
    ((np.zeros((2, 3), np.int32),), {}, "x must be floating"),
    ((np.zeros((2, 3), np.float32),), dict(axis=2), "axis must be an int"),
    ((np.zeros((2, 3), np.float32),), dict(out_dtype=jnp.int32), "out_dtype must be floating"),
    ((np.zeros((2, 0), np.float32),), {}, "x must be non-empty"),
    ((np.zeros((2, 3), np.float32),), dict(impl="triton"), "impl must be one of"),
    (([1.0, 2.0],), {}, "x must be an array"),
])
def test_validation_errors(args, kw, match):
  with pytest.raises(ValueError, match=match):
    S.two_pass_softmax(*args, **kw)


def _accelerator():
  return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")


@pytest.mark.gpu
@pytest.mark.tpu
@pytest.mark.skipif(not _accelerator(), reason="needs a GPU or TPU")
class TestOnAccelerator:
  """The same checks with the kernels compiled (interpret=False) for the local accelerator."""

  @pytest.mark.parametrize("v", [1000, 4097, 32768 + 3])
  def test_forward(self, v):
    x = _logits(v)
    _check_softmax(S.two_pass_softmax(x, impl="pallas"), x)
    _check_log_softmax(S.two_pass_log_softmax(x, impl="pallas"), x)
    xb = jnp.asarray(x).astype(jnp.bfloat16)
    _check_softmax(S.two_pass_softmax(xb, impl="pallas", out_dtype=jnp.float32),
                   np.asarray(xb.astype(jnp.float32)))

  def test_gradient(self):
    x = _logits(4097)
    w = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(w * S.two_pass_softmax(x, impl="pallas")))(x)
    p = np.exp(_np_log_softmax(x))
    want = p * (w - (w * p).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=2e-5, atol=1e-6)
