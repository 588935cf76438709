"""The (mantissa, exponent) pair arithmetic and backend selection of tokenrl.kernels._common."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.kernels import _common as C


def test_exp2_int_is_exact_power_of_two():
  d = np.arange(-130, 1, dtype=np.float32)
  got = np.asarray(jax.jit(C.exp2_int)(d))
  want = np.where(d >= -126, np.ldexp(1.0, d.astype(np.int64)), 0.0)
  np.testing.assert_array_equal(got, want.astype(np.float32))


def test_reduce_ln2_keeps_full_precision_at_1e4():
  # x − n·ln2 for |x| up to 4e4 must be accurate to a few ulp of the *small* result (exact
  # Cody–Waite), whereas x − f32(n·ln2) would be off by up to ulp(4e4)/2 ≈ 2e-3.
  rng = np.random.default_rng(0)
  x = rng.uniform(-4e4, 4e4, size=4096).astype(np.float32)
  n = np.floor(x.astype(np.float64) * np.log2(np.e) + 0.5).astype(np.float32)
  got = np.asarray(jax.jit(C.reduce_ln2)(x, n)).astype(np.float64)
  want = x.astype(np.float64) - n.astype(np.float64) * np.log(2.0)
  assert np.abs(want).max() < 0.35
  assert np.abs(got - want).max() < 1e-6


def test_reduce_ln2_of_minus_inf_is_minus_inf():
  t = C.reduce_ln2(jnp.float32(-jnp.inf), jnp.float32(C.N_FLOOR))
  assert t == -jnp.inf


def test_merge_state_hand_values():
  # (s=1, n=0) ⊕ (s=1, n=1) = 1 + 2 = 3 = 1.5·2^1.
  n, s, u = C.merge_state((jnp.float32(0), jnp.float32(1), jnp.float32(0)),
                          (jnp.float32(1), jnp.float32(1), jnp.float32(0)))
  assert (float(n), float(s)) == (1.0, 1.5)
  # u is measured from n·ln2: the first term moves by δ·ln2·s = −ln2 before the ½ rescale.
  np.testing.assert_allclose(float(u), -0.5 * np.log(2.0), rtol=1e-6)
  # Merging with the empty state is the identity.
  state = (jnp.float32(7), jnp.float32(1.25), jnp.float32(0.5))
  got = C.merge_state(C.init_state(), state)
  assert tuple(map(float, got)) == (7.0, 1.25, 0.5)


def test_block_state_hand_values():
  # x = [0, 0, −inf]: n = 0, s = 2, u = 0 (the −inf entry contributes nothing, not NaN).
  n, s, u = C.block_state(jnp.array([0.0, 0.0, -jnp.inf]), with_u=True)
  assert (float(n), float(s), float(u)) == (0.0, 2.0, 0.0)
  # x = [ln 2, ln 2]: n = round(1) = 1, t = 0, s = 2 (value 2·2 = 4 = e^{ln2}+e^{ln2}).
  n, s, u = C.block_state(jnp.full((2,), np.log(2.0), jnp.float32), with_u=True)
  assert float(n) == 1.0
  np.testing.assert_allclose(float(s), 2.0, rtol=1e-6)


def test_block_state_all_minus_inf_is_empty_state():
  n, s, u = C.block_state(jnp.full((4,), -jnp.inf), with_u=True)
  assert (float(n), float(s), float(u)) == (C.N_FLOOR, 0.0, 0.0)


def _cfg(**kw):
  args = dict(shape=(16, 1000), dtype=jnp.float32, impl="auto", block_v=None, block_m=None,
              interpret=None, pallas_backend=None)
  args.update(kw)
  return C.resolve_config(**args)


_CPU_ONLY = pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU defaults")


@_CPU_ONLY
def test_resolve_config_defaults_on_cpu():
  assert _cfg().impl == "jnp"
  assert _cfg(impl="xla").impl == "jnp"
  cfg = _cfg(impl="pallas")
  assert (cfg.impl, cfg.backend, cfg.interpret, cfg.block_v) == ("pallas", "triton", True, 1024)
  cfg = _cfg(impl="pallas", pallas_backend="mosaic", dtype=jnp.bfloat16, shape=(300, 5000))
  assert (cfg.backend, cfg.block_m, cfg.block_v) == ("mosaic", 128, 2048)


@_CPU_ONLY
@pytest.mark.parametrize("kw, match", [
    (dict(impl="cuda"), "impl must be one of"),
    (dict(impl="pallas", block_v=1000), "power of 2"),
    (dict(impl="pallas", pallas_backend="mosaic", block_v=200), "multiple of 128"),
    (dict(impl="pallas", pallas_backend="mosaic", block_m=12, shape=(64, 1000),
          dtype=jnp.bfloat16), "multiple of 16"),
    (dict(block_v=0), "block_v must be a positive int"),
    (dict(pallas_backend="cuda"), "pallas_backend must be one of"),
    (dict(impl="pallas", interpret=False), "compiles only on a GPU"),
    (dict(interpret="yes"), "interpret must be a bool"),
])
def test_resolve_config_errors_name_the_argument(kw, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**kw)
