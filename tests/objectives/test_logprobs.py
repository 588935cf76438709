"""token_logprobs against a direct f64 numpy log-softmax + gather + entropy, values and gradients."""
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokenrl.kernels
from tokenrl.objectives import logprobs as lp_lib
from tokenrl.objectives import token_logprobs


def _reference(x: np.ndarray, t: np.ndarray, tau: float):
  """f64 numpy: logp, entropy, and d(Σ w1·logp + Σ w2·H)/dx as functions of the weights."""
  z = x.astype(np.float64) / tau
  z = z - z.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  p = np.exp(logp_all)
  ent = -(p * logp_all).sum(-1)
  logp = np.take_along_axis(logp_all, t[..., None], -1)[..., 0]

  def grad(w1, w2):
    onehot = np.eye(x.shape[-1])[t]
    dz = w1[..., None] * (onehot - p) - w2[..., None] * p * (logp_all + ent[..., None])
    return dz / tau

  return logp, ent, grad


def _inputs(shape, v, scale=3.0, seed=0):
  rng = np.random.RandomState(seed)
  x = (rng.randn(*shape, v) * scale).astype(np.float32)
  t = rng.randint(0, v, size=shape).astype(np.int32)
  w1 = rng.randn(*shape)
  w2 = rng.randn(*shape)
  return x, t, w1, w2


@pytest.mark.parametrize("shape,chunk,tau", [
    ((2, 5), 3, 0.7),     # M = 10 not divisible by 3: the last chunk is shifted back
    ((2, 5), 64, 1.0),    # chunk larger than M
    ((7,), 2, 1.3),       # [T,V] input
    ((2, 1, 3), 4, 1.0),  # extra leading dims
])
def test_matches_f64_reference_f32(shape, chunk, tau):
  x, t, w1, w2 = _inputs(shape, 37)
  logp, ent = token_logprobs(jnp.asarray(x), jnp.asarray(t), temperature=tau, chunk_size=chunk)
  ref_logp, ref_ent, ref_grad = _reference(x, t, tau)
  assert logp.dtype == ent.dtype == jnp.float32 and logp.shape == shape
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=2e-5)

  def objective(xx):
    a, b = token_logprobs(xx, jnp.asarray(t), temperature=tau, chunk_size=chunk)
    return (a * w1).sum() + (b * w2).sum()

  g = jax.jit(jax.grad(objective))(jnp.asarray(x))
  np.testing.assert_allclose(g, ref_grad(w1, w2), rtol=1e-4, atol=2e-5)


def test_bf16_logits_accumulate_in_f32():
  x, t, w1, w2 = _inputs((3, 6), 50, scale=4.0, seed=1)
  xb = jnp.asarray(x).astype(jnp.bfloat16)
  x_exact = np.asarray(xb.astype(jnp.float32))           # the values the bf16 array holds
  ref_logp, ref_ent, ref_grad = _reference(x_exact, t, 1.0)
  logp, ent = token_logprobs(xb, jnp.asarray(t), chunk_size=4)
  # f32 accumulation: errors at f32 level, far below bf16's 2^-8 relative step.
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=2e-5)

  g = jax.jit(jax.grad(lambda xx: sum((o * w).sum() for o, w in zip(
      token_logprobs(xx, jnp.asarray(t), chunk_size=4), (w1, w2)))))(xb)
  assert g.dtype == jnp.bfloat16
  # The gradient is rounded once to bf16 at the end: within bf16's relative step.
  np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), ref_grad(w1, w2),
                             rtol=1e-2, atol=1e-3)


def test_uniform_logits_give_log_v_and_entropy_log_v():
  x = jnp.zeros((2, 3, 16))
  logp, ent = token_logprobs(x, jnp.zeros((2, 3), jnp.int32), chunk_size=4)
  np.testing.assert_allclose(logp, -np.log(16) * np.ones((2, 3)), rtol=1e-6)
  np.testing.assert_allclose(ent, np.log(16) * np.ones((2, 3)), rtol=1e-6)


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_path_never_materialises_f32_ntv():
  n, t, v, chunk = 4, 256, 2048, 32
  ntv4 = n * t * v * 4
  chunk_f32 = chunk * v * 4
  targets = jnp.zeros((n, t), jnp.int32)

  def fwd(x, tg):
    return token_logprobs(x, tg, chunk_size=chunk)

  def grad(x, tg):
    return jax.grad(lambda xx: sum(o.sum() for o in token_logprobs(xx, tg, chunk_size=chunk)))(x)

  for fn in (fwd, grad):
    temp = _temp_bytes(fn, jnp.zeros((n, t, v), jnp.float32), targets)
    # A few chunk-sized f32 temporaries, nothing of size [N,T,V].
    assert temp <= 4 * chunk_f32 < ntv4 / 4, (fn.__name__, temp)
    # bf16 input: on XLA:CPU one 16-bit copy of the input remains (see logprobs._as_bits); on
    # GPU/TPU none. Still no f32 [N,T,V] (which alone would be `ntv4`).
    temp = _temp_bytes(fn, jnp.zeros((n, t, v), jnp.bfloat16), targets)
    assert temp <= ntv4 // 2 + 4 * chunk_f32 < ntv4, (fn.__name__, temp)


def test_pallas_impl_calls_the_kernel_wrapper(monkeypatch):
  calls = []

  def fake(logits2d, targets1d, temperature, impl):
    calls.append((logits2d.shape, targets1d.shape, temperature, impl))
    return jnp.ones(targets1d.shape), 2 * jnp.ones(targets1d.shape)

  module = types.SimpleNamespace(token_logprobs_entropy=fake)
  monkeypatch.setitem(sys.modules, "tokenrl.kernels.logprobs", module)
  monkeypatch.setattr(tokenrl.kernels, "logprobs", module, raising=False)
  logp, ent = token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32),
                             temperature=0.5, impl="pallas")
  assert calls == [((6, 5), (6,), 0.5, "pallas")]
  assert logp.shape == ent.shape == (2, 3) and float(ent[0, 0]) == 2.0
  # 'auto' on CPU takes the XLA path even when the kernel imports.
  calls.clear()
  token_logprobs(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), impl="auto")
  assert not calls and lp_lib._pallas_available()


@pytest.mark.parametrize("kwargs,match", [
    (dict(logits=jnp.zeros((5,)), targets=jnp.zeros((), jnp.int32)), "logits"),
    (dict(logits=jnp.zeros((2, 5)), targets=jnp.zeros((3,), jnp.int32)), "targets"),
    (dict(logits=jnp.zeros((2, 5)), targets=jnp.zeros((2,))), "targets"),
    (dict(logits=jnp.zeros((2, 5)), targets=jnp.zeros((2,), jnp.int32), temperature=0.0),
     "temperature"),
    (dict(logits=jnp.zeros((2, 5)), targets=jnp.zeros((2,), jnp.int32), impl="cuda"), "impl"),
    (dict(logits=jnp.zeros((2, 5)), targets=jnp.zeros((2,), jnp.int32), chunk_size=0),
     "chunk_size"),
])
def test_validation(kwargs, match):
  logits, targets = kwargs.pop("logits"), kwargs.pop("targets")
  with pytest.raises(ValueError, match=match):
    token_logprobs(logits, targets, **kwargs)


def test_pallas_kernel_in_interpret_mode_matches_the_xla_path():
  # On CPU the kernel runs in Pallas interpret mode: same numbers, same gradients.
  x, t, w1, w2 = _inputs((2, 3), 37, seed=2)
  xs, ts = jnp.asarray(x), jnp.asarray(t)

  def objective(xx, impl):
    a, b = token_logprobs(xx, ts, temperature=0.8, impl=impl)
    return (a * w1).sum() + (b * w2).sum(), (a, b)

  (_, (lp_p, h_p)), g_p = jax.value_and_grad(objective, has_aux=True)(xs, "pallas")
  (_, (lp_x, h_x)), g_x = jax.value_and_grad(objective, has_aux=True)(xs, "xla")
  np.testing.assert_allclose(lp_p, lp_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(h_p, h_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_p, g_x, rtol=1e-4, atol=1e-5)
