"""Lion-κ: bit-identity with optax.lion / scale_by_lion modes, hand-computed ∇κ, the box theorem."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenrl.optim import KAPPAS
from tokenrl.optim import kappa_direction
from tokenrl.optim import lion_kappa
from tokenrl.optim import scale_by_lion_kappa


def _assert_bitwise_equal(a, b):
  """Same tree structure, and every leaf has the same dtype, shape and bytes."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes(), (x, y)


def _params():
  # An f32 matrix, a bf16 matrix and an f32 bias: f32 and bf16 leaves in one tree.
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
      "w": jax.random.normal(k1, (4, 3), jnp.float32),
      "w_bf16": jax.random.normal(k2, (3, 5), jnp.float32).astype(jnp.bfloat16),
      "b": jnp.linspace(-1.0, 1.0, 3, dtype=jnp.float32),
  }


def _grads(params, t, grad_dtype):
  """Gradient of ½‖x‖² plus step-dependent "noise", so the parameters feed back into the updates.

  The noise is sin(1.7·i + 0.37·t + k) (i the flat index, k the leaf number): varied signs and
  magnitudes, and far cheaper to compile than jax.random inside a scan.
  """
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for k, p in enumerate(leaves):
    i = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
    g = 0.5 * p.astype(jnp.float32) + jnp.sin(1.7 * i + 0.37 * t + k)
    out.append(g.astype(grad_dtype or p.dtype))
  return treedef.unflatten(out)


def _run(tx, params, steps, grad_dtype=None, use_jit=True):
  def run(params):
    state = tx.init(params)

    def body(carry, t):
      p, s = carry
      u, s = tx.update(_grads(p, t, grad_dtype), s, p)
      return (optax.apply_updates(p, u), s), None

    if use_jit:
      # Step 0 outside the scan: with mu_dtype=None, f32 grads turn a bf16 mu into f32 after it.
      carry, _ = body((params, state), jnp.asarray(0))
      (p, s), _ = jax.lax.scan(body, carry, jnp.arange(1, steps))
    else:
      p, s = params, state
      for t in range(steps):
        (p, s), _ = body((p, s), jnp.asarray(t))
    return p, s

  return jax.jit(run)(params) if use_jit else run(params)


_COSINE = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 5, 50, 3e-3)
_MASK = {"w": True, "w_bf16": True, "b": False}

# (learning_rate, weight_decay, mu_dtype, mask, grad dtype) ; None grad dtype = the param's.
_LION_CASES = {
    "const_lr": (1e-2, 0.1, None, None, None),
    "cosine_mu_bf16_mask": (_COSINE, 0.1, jnp.bfloat16, _MASK, None),
    "wd_schedule_mask_fn": (_COSINE, optax.linear_schedule(0.2, 0.05, 50), None,
                            lambda p: jax.tree.map(lambda x: x.ndim == 2, p), None),
    "no_wd_f32_grads_bf16_params": (3e-3, 0.0, None, None, jnp.float32),
}

@pytest.mark.parametrize("case", sorted(_LION_CASES))
def test_l1_bit_identical_to_optax_lion(case):
  lr, wd, mu_dtype, mask, grad_dtype = _LION_CASES[case]
  ours = lion_kappa(lr, weight_decay=wd, kappa="l1", mu_dtype=mu_dtype, mask=mask)
  ref = optax.lion(lr, weight_decay=wd, mu_dtype=mu_dtype, mask=mask)
  p_ours, s_ours = _run(ours, _params(), 50, grad_dtype)
  p_ref, s_ref = _run(ref, _params(), 50, grad_dtype)
  _assert_bitwise_equal(p_ours, p_ref)
  _assert_bitwise_equal(s_ours, s_ref)  # same state pytree: checkpoints are interchangeable
  assert not np.array_equal(np.asarray(p_ours["w"]), np.asarray(_params()["w"]))


def test_l1_bit_identical_eager():
  ours = lion_kappa(_COSINE, weight_decay=0.1, kappa="sign", mu_dtype=jnp.bfloat16, mask=_MASK)
  ref = optax.lion(_COSINE, weight_decay=0.1, mu_dtype=jnp.bfloat16, mask=_MASK)
  _assert_bitwise_equal(_run(ours, _params(), 8, use_jit=False),
                        _run(ref, _params(), 8, use_jit=False))


@pytest.mark.parametrize("kappa,kwargs,mode", [
    ("huber", {}, {"mode": "refined"}),
    ("logcosh", {"beta": 2.5}, {"mode": "smooth", "smooth_beta": 2.5}),
])
def test_huber_logcosh_bit_identical_to_optax_modes(kappa, kwargs, mode):
  assert KAPPAS["refined"] is KAPPAS["clip"] is KAPPAS["huber"]
  assert KAPPAS["smooth"] is KAPPAS["tanh"] is KAPPAS["logcosh"]
  ours = optax.chain(scale_by_lion_kappa(kappa=kappa, **kwargs), optax.scale(-1e-2))
  ref = optax.chain(optax.scale_by_lion(**mode), optax.scale(-1e-2))
  _assert_bitwise_equal(_run(ours, _params(), 30), _run(ref, _params(), 30))


# ---------------------------------------------------------------- ∇κ on hand-made momenta


def _direction(kappa, v, grouping="leaf", **kwargs):
  """The update of one step whose interpolated momentum is exactly v.

  b1 = 0.5, m = 1 and g = 2v - 1 give v = 0.5·(2v - 1) + 0.5·1 exactly for small dyadic v.
  """
  tx = scale_by_lion_kappa(b1=0.5, kappa=kappa, grouping=grouping, **kwargs)
  mu = jax.tree.map(jnp.ones_like, v)
  g = jax.tree.map(lambda x: 2 * x - 1, v)
  updates, new_state = tx.update(g, optax.ScaleByLionState(jnp.zeros([], jnp.int32), mu))
  # m_t = (1 - 0.99)·g + 0.99·m
  jax.tree.map(lambda m, gg: np.testing.assert_allclose(m, 0.01 * gg + 0.99, rtol=1e-6),
               new_state.mu, g)
  assert int(new_state.count) == 1
  return updates


def test_interpolation_uses_b1_on_old_momentum():
  tx = scale_by_lion_kappa(b1=0.75, kappa="quadratic")
  g, m = jnp.array([4.0, -8.0]), jnp.array([1.0, 2.0])
  u, _ = tx.update(g, optax.ScaleByLionState(jnp.zeros([], jnp.int32), m))
  np.testing.assert_allclose(u, [0.25 * 4 + 0.75 * 1, 0.25 * -8 + 0.75 * 2], rtol=1e-6)


_S = 1 / 9 ** (1 / 3)  # lp, p = 1.5 on (1, -4): |x|^½ = (1, 2), ‖x‖_1.5^½ = 9^(1/3)
_HAND = [
    ("l1", {}, [-2.0, 0.0, 3.0, 0.25], [-1.0, 0.0, 1.0, 1.0]),
    ("huber", {"delta": 2.0}, [-3.0, 1.0, 0.5, 4.0], [-1.0, 0.5, 0.25, 1.0]),
    ("logcosh", {"beta": 2.0}, [0.5, -1.0, 2.0, 0.0],
     [math.tanh(1.0), math.tanh(-2.0), math.tanh(4.0), 0.0]),
    ("quadratic", {}, [0.5, -1.0, 2.0, 0.0], [0.5, -1.0, 2.0, 0.0]),
    ("deadzone", {"threshold": 1.0}, [-2.0, 0.5, -0.5, 1.0, 3.0], [-1.0, 0, 0, 0, 1.0]),
    ("l2", {}, [3.0, 4.0], [0.6, 0.8]),
    ("l2", {}, [0.0, 0.0], [0.0, 0.0]),
    ("lp", {"p": 1.5}, [1.0, -4.0], [_S, -2 * _S]),
    ("lp", {"p": 2.0}, [3.0, 4.0], [0.6, 0.8]),
    ("lp", {"p": 1.0}, [3.0, -4.0, 0.0], [1.0, -1.0, 0.0]),
    ("lp", {"p": 1.5}, [0.0, 0.0], [0.0, 0.0]),
    ("linf", {}, [1.0, -3.0, 2.0], [0.0, -1.0, 0.0]),
    ("linf", {}, [3.0, -3.0, 1.0], [0.5, -0.5, 0.0]),  # ties share the step
    ("linf", {}, [0.0, 0.0], [0.0, 0.0]),
    ("relativistic", {"c": 3.0}, [0.0, 4.0], [0.0, 0.8]),
    ("logsumexp", {}, [0.0, math.log(3.0)], [-0.75, -0.25]),
    ("nuclear", {}, [3.0, 4.0], [0.6, 0.8]),  # a vector is a 1×n matrix
]


@pytest.mark.parametrize("kappa,kwargs,v,expected", _HAND)
def test_direction_hand_computed(kappa, kwargs, v, expected):
  u = _direction(kappa, jnp.asarray(v, jnp.float32), **kwargs)
  np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-7)


def test_nuclear_polar_factor():
  q = np.array([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]], np.float32)
  stacked = jnp.asarray(np.stack([
      np.diag([3.0, -2.0]),                  # polar = diag(1, -1)
      np.array([[0.0, 2.0], [0.0, 0.0]]),    # rank 1: polar = e1·e2ᵀ, null space dropped
      q @ np.diag([2.0, 0.5]),               # polar = q
      np.zeros((2, 2)),                      # 0 -> 0
  ]), jnp.float32)
  expected = np.stack([np.diag([1.0, -1.0]), [[0.0, 1.0], [0.0, 0.0]], q, np.zeros((2, 2))])
  np.testing.assert_allclose(_direction("nuclear", stacked), expected, atol=1e-6)
  np.testing.assert_allclose(KAPPAS["polar"](jnp.asarray(-2.0)), -1.0)  # a scalar: sign


def test_callable_kappa_per_leaf_and_global():
  v = {"a": jnp.array([-2.0, 0.25]), "b": jnp.array([3.0])}
  u = _direction(lambda x: jnp.clip(x, -0.5, 0.5), v)
  np.testing.assert_allclose(u["a"], [-0.5, 0.25])
  np.testing.assert_allclose(u["b"], [0.5])
  # Under grouping='global' the callable receives the whole tree (one group).
  u = _direction(lambda t: jax.tree.map(lambda x: x / len(jax.tree.leaves(t)), t), v, "global")
  np.testing.assert_allclose(u["a"], [-1.0, 0.125])


def test_grouping_leaf_vs_global():
  v = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
  leaf = _direction("l2", v)
  glob = _direction("l2", v, "global")
  np.testing.assert_allclose([leaf["a"][0], leaf["b"][0]], [1.0, 1.0])
  np.testing.assert_allclose([glob["a"][0], glob["b"][0]], [0.6, 0.8], rtol=1e-6)
  w = {"a": jnp.array([1.0, -3.0]), "b": jnp.array([2.0])}
  np.testing.assert_allclose(_direction("linf", w, "global")["a"], [0.0, -1.0])
  np.testing.assert_allclose(_direction("linf", w, "global")["b"], [0.0])
  np.testing.assert_allclose(_direction("linf", w)["b"], [1.0])
  z = {"a": jnp.array([0.0]), "b": jnp.array([math.log(3.0)])}
  np.testing.assert_allclose(_direction("entropy", z, "global")["a"], [-0.75], rtol=1e-6)
  np.testing.assert_allclose(_direction("entropy", z)["a"], [-1.0], rtol=1e-6)


@pytest.mark.parametrize("kappa", ["l1", "huber", "logcosh", "deadzone", "quadratic", "nuclear"])
def test_separable_kappas_ignore_grouping(kappa):
  v = {"a": jnp.array([[0.5, -2.0], [1.5, 0.25]]), "b": jnp.array([-0.75, 3.0])}
  jax.tree.map(np.testing.assert_array_equal, _direction(kappa, v), _direction(kappa, v, "global"))


@pytest.mark.parametrize("kappa,kwargs,norm", [
    ("l1", {}, lambda x: np.abs(x).sum()),
    ("l2", {}, lambda x: np.sqrt((x ** 2).sum())),
    ("lp", {"p": 1.3}, lambda x: (np.abs(x) ** 1.3).sum() ** (1 / 1.3)),
    ("linf", {}, lambda x: np.abs(x).max()),
    ("nuclear", {}, lambda x: np.linalg.svd(x, compute_uv=False).sum()),
])
def test_norm_kappas_euler_identity(kappa, kwargs, norm):
  """For a norm κ (1-homogeneous), ⟨∇κ(x), x⟩ = κ(x) and the dual norm of ∇κ(x) is 1."""
  x = np.asarray(jax.random.normal(jax.random.key(3), (3, 4)), np.float64)
  u = np.asarray(KAPPAS[kappa](jnp.asarray(x, jnp.float32), **kwargs), np.float64)
  np.testing.assert_allclose((u * x).sum(), norm(x), rtol=1e-5)
  if kappa == "lp":
    q = 1.3 / 0.3
    np.testing.assert_allclose((np.abs(u) ** q).sum() ** (1 / q), 1.0, rtol=1e-5)


def test_bf16_momentum_keeps_dtype_and_f32_norm():
  v = {"w": jnp.array([3.0, 4.0], jnp.bfloat16)}
  u = _direction("l2", v)
  assert u["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(u["w"], np.float32), [0.6, 0.8], rtol=1e-2)


def test_rescale_by_sqrt_group_size():
  u = _direction("l2", jnp.array([2.0, 2.0, 2.0, 2.0]), rescale=True)
  np.testing.assert_allclose(u, [1.0, 1.0, 1.0, 1.0], rtol=1e-6)  # = sign for a flat vector


# ----------------------------------------------------------------------- the theorem on a quadratic


def _minimize(tx, target, steps=600):
  """Runs tx on f(x) = ½‖x - target‖² from x = 0 and returns the final x."""
  grad = jax.grad(lambda x: 0.5 * sum(jnp.sum((a - b) ** 2) for a, b in
                                      zip(jax.tree.leaves(x), jax.tree.leaves(target))))

  @jax.jit
  def run(x):
    def body(carry, _):
      x, s = carry
      u, s = tx.update(grad(x), s, x)
      return (optax.apply_updates(x, u), s), None
    (x, _), _ = jax.lax.scan(body, (x, tx.init(x)), None, length=steps)
    return x

  return run(jax.tree.map(jnp.zeros_like, target))


_DECAY = optax.cosine_decay_schedule(0.05, 600)


def test_l1_converges_to_box_constrained_minimum():
  """Lion solves min ½‖x - a‖² s.t. ‖x‖∞ ≤ 1/λ: the answer is clip(a, -1/λ, 1/λ)."""
  a = jnp.array([3.0, -0.5, -2.5, 0.25])
  x = _minimize(lion_kappa(_DECAY, weight_decay=0.5, kappa="l1"), a)
  np.testing.assert_allclose(x, np.clip(a, -2.0, 2.0), atol=2e-2)


def test_l2_converges_to_ball_constrained_minimum_per_leaf_and_global():
  """κ = ℓ2 solves min ½‖x - a‖² s.t. ‖x‖₂ ≤ 1/λ per group: the answer is a / max(1, λ‖a‖)."""
  a = {"u": jnp.array([3.0, 4.0]), "v": jnp.array([0.3, 0.4])}
  x = _minimize(lion_kappa(_DECAY, weight_decay=1.0, kappa="l2"), a)
  np.testing.assert_allclose(x["u"], [0.6, 0.8], atol=2e-2)  # outside its ball: projected
  np.testing.assert_allclose(x["v"], [0.3, 0.4], atol=2e-2)  # inside: the free minimum
  x = _minimize(lion_kappa(_DECAY, weight_decay=1.0, kappa="l2", grouping="global"), a)
  r = math.sqrt(25.25)  # ‖a‖₂ over the whole tree
  np.testing.assert_allclose(x["u"], [3 / r, 4 / r], atol=2e-2)
  np.testing.assert_allclose(x["v"], [0.3 / r, 0.4 / r], atol=2e-2)


# ---------------------------------------------------------------------------- API and validation


def test_usable_in_chain_and_inject_hyperparams():
  params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([0.5])}
  grads = {"w": jnp.array([[3.0, 4.0]]), "b": jnp.array([-1.0])}
  tx = optax.chain(optax.clip_by_global_norm(1.0), lion_kappa(0.1, weight_decay=0.0, kappa="l2"))
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(u["w"], [[-0.06, -0.08]], rtol=1e-5)
  np.testing.assert_allclose(u["b"], [0.1], rtol=1e-5)
  injected = optax.inject_hyperparams(lion_kappa)(learning_rate=0.1, weight_decay=0.0, kappa="l2")
  state = injected.init(params)
  u2, state = jax.jit(injected.update)(grads, state, params)
  np.testing.assert_allclose(u2["w"], [[-0.06, -0.08]], rtol=1e-5)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.1)


def test_mu_dtype_and_state_structure():
  params = {"w": jnp.ones((2, 2))}
  s = lion_kappa(1e-3, kappa="lp", mu_dtype="bfloat16").init(params)
  assert s[0].mu["w"].dtype == jnp.bfloat16
  ref = optax.lion(1e-3, mu_dtype="bfloat16").init(params)
  assert jax.tree.structure(s) == jax.tree.structure(ref)


@pytest.mark.parametrize("kwargs,match", [
    ({"kappa": "l3"}, r"kappa must be one of \[.*'l1'.*'nuclear'.*\]"),
    ({"kappa": 3}, "kappa must be a name in KAPPAS or a callable"),
    ({"grouping": "tree"}, r"grouping must be one of \['leaf', 'global'\]"),
    ({"kappa": "lp", "p": 0.5}, "p must be a finite number >= 1"),
    ({"delta": 0.0}, "delta must be > 0"),
    ({"b1": 1.5}, r"b1 must be in \[0, 1\]"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
])
def test_invalid_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lion_kappa(1e-3, **kwargs)


def test_kappa_direction_is_public():
  direction = kappa_direction("huber", delta=2.0)
  np.testing.assert_allclose(direction({"x": jnp.array([1.0, -5.0])})["x"], [0.5, -1.0])


@pytest.mark.parametrize("kappa,grouping", [("l1", "leaf"), ("l2", "global"), ("lp", "leaf")])
def test_sharded_equals_unsharded(kappa, grouping):
  """Params sharded over 8 devices: the group reductions become cross-device, same result."""
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  params = {"w": jnp.linspace(-2.0, 2.0, 32).reshape(8, 4), "b": jnp.linspace(1.0, 3.0, 8)}
  grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)
  tx = lion_kappa(0.1, weight_decay=0.1, kappa=kappa, grouping=grouping)
  step = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])
  expected = step(grads, params)
  put = lambda t: jax.tree.map(lambda x: jax.device_put(x, sharding), t)
  got = step(put(grads), put(params))
  assert got["w"].sharding.spec[0] == "fsdp"  # the update stays sharded like the params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
