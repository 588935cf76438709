"""The optimizer builder: config schema, schedules, chains equal to hand-built optax chains."""
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenrl.optim import build_optimizer
from tokenrl.optim import builder
from tokenrl.optim import build_schedule
from tokenrl.optim import optimizer_config


def _params():
  return {"w": jnp.arange(6.0).reshape(2, 3) / 6 - 0.4, "b": jnp.array([0.5, -0.25, 1.0])}


def _grads(t):
  # Global norm > 1 on purpose, so clip_by_global_norm(1.0) is active.
  return {"w": jnp.sin(jnp.arange(6.0).reshape(2, 3) + t) * 2.0, "b": jnp.cos(jnp.arange(3.0) * t)}


def _run(tx, steps=4):
  @jax.jit
  def run(params):
    state = tx.init(params)
    for t in range(steps):
      u, state = tx.update(_grads(t), state, params)
      params = optax.apply_updates(params, u)
    return params, state
  return run(_params())


def _assert_bitwise_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _matrices(params):
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def test_config_is_locked_and_complete():
  cfg = optimizer_config()
  for field in ("name", "learning_rate", "schedule", "warmup_steps", "min_lr_ratio", "b1", "b2",
                "eps", "weight_decay", "kappa", "kappa_p", "kappa_delta", "kappa_grouping",
                "mu_dtype", "grad_clip_norm"):
    assert field in cfg
  with pytest.raises(AttributeError):
    cfg.learning_rte = 1.0
  assert cfg.name == "adamw" and cfg.mu_dtype == ""


def test_adamw_equals_hand_built_chain():
  cfg = optimizer_config()
  cfg.learning_rate = 1e-2
  ours = build_optimizer(cfg, total_steps=10)
  ref = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(optax.constant_schedule(1e-2), b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                  mask=_matrices))
  _assert_bitwise_equal(_run(ours), _run(ref))


def test_lion_kappa_l1_via_builder_equals_optax_lion():
  cfg = optimizer_config()
  cfg.name, cfg.learning_rate, cfg.b2, cfg.weight_decay = "lion_kappa", 1e-2, 0.99, 0.5
  cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio = "cosine", 2, 0.1
  cfg.grad_clip_norm, cfg.weight_decay_mask, cfg.mu_dtype = 0.0, "all", "bfloat16"
  schedule = build_schedule(cfg, total_steps=6)
  ref = optax.lion(schedule, b1=0.9, b2=0.99, weight_decay=0.5, mu_dtype=jnp.bfloat16)
  _assert_bitwise_equal(_run(build_optimizer(cfg, 6), 6), _run(ref, 6))
  cfg.name = "lion"
  _assert_bitwise_equal(_run(build_optimizer(cfg, 6), 6), _run(ref, 6))


def test_lion_kappa_other_kappa_via_builder():
  cfg = optimizer_config()
  cfg.name, cfg.kappa, cfg.kappa_grouping, cfg.kappa_p, cfg.grad_clip_norm = (
      "lion_kappa", "lp", "global", 2.0, 0.0)
  cfg.learning_rate, cfg.weight_decay = 0.1, 0.0
  tx = build_optimizer(cfg, 1)
  params = {"a": jnp.array([1.0]), "b": jnp.array([2.0])}
  u, _ = tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(params), params)
  np.testing.assert_allclose([u["a"][0], u["b"][0]], [-0.06, -0.08], rtol=1e-5)


def test_sgd_equals_hand_built_chain():
  cfg = optimizer_config()
  cfg.name, cfg.learning_rate, cfg.momentum, cfg.weight_decay_mask = "sgd", 0.1, 0.9, "all"
  ref = optax.chain(optax.clip_by_global_norm(1.0), optax.chain(
      optax.add_decayed_weights(0.01), optax.sgd(optax.constant_schedule(0.1), momentum=0.9)))
  _assert_bitwise_equal(_run(build_optimizer(cfg, 4)), _run(ref))


def test_weight_decay_mask_skips_vectors():
  """Zero gradients: AdamW's step is -lr·wd·p on matrices only (m = v = 0 give a zero Adam step)."""
  cfg = optimizer_config()
  cfg.learning_rate, cfg.weight_decay = 0.1, 0.5
  tx = build_optimizer(cfg, 1)
  params = _params()
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(u["w"], -0.05 * params["w"], rtol=1e-6)
  np.testing.assert_array_equal(u["b"], 0.0)


@pytest.mark.parametrize("kind,expected", [
    # warmup 10 steps to lr = 1, decay over steps 10..110 to min_lr_ratio = 0.1.
    ("constant", {0: 0.0, 5: 0.5, 10: 1.0, 60: 1.0, 200: 1.0}),
    ("cosine", {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 200: 0.1}),
    ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 200: 0.1}),
])
def test_schedules(kind, expected):
  cfg = optimizer_config()
  cfg.schedule, cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio = kind, 1.0, 10, 0.1
  schedule = build_schedule(cfg, total_steps=110)
  for step, lr in expected.items():
    np.testing.assert_allclose(schedule(jnp.asarray(step)), lr, atol=1e-6, err_msg=str(step))


def test_schedule_without_warmup_starts_at_peak():
  cfg = optimizer_config()
  cfg.schedule, cfg.learning_rate = "cosine", 2.0
  np.testing.assert_allclose(build_schedule(cfg, 4)(jnp.asarray(0)), 2.0)
  np.testing.assert_allclose(build_schedule(cfg, 4)(jnp.asarray(2)), 1.0, atol=1e-6)


def test_warmup_longer_than_the_run_is_clamped_and_logged():
  cfg = optimizer_config()
  cfg.schedule, cfg.learning_rate, cfg.warmup_steps = "constant", 1.0, 20
  with mock.patch.object(builder.logging, "warning") as warn:
    schedule = build_schedule(cfg, 3, total_key="train.max_steps")
  # 3 // 10 = 0 warm-up steps: the 3-step run trains at the peak rate from its first step.
  np.testing.assert_allclose(schedule(jnp.asarray(0)), 1.0)
  message = warn.call_args[0][0] % warn.call_args[0][1:]
  assert "optimizer.warmup_steps=20" in message and "train.max_steps=3" in message
  assert "clamped to 0" in message
  with mock.patch.object(builder.logging, "warning") as warn:
    schedule = build_schedule(cfg, 50)  # 20 <= 50: unchanged, no warning
  np.testing.assert_allclose(schedule(jnp.asarray(10)), 0.5, atol=1e-6)
  warn.assert_not_called()
  assert builder.clamp_warmup(20, 100) == 20 and builder.clamp_warmup(200, 100) == 10


@pytest.mark.parametrize("field,value,match", [
    ("name", "adam", r"optimizer.name must be one of \['adamw', 'lion', 'lion_kappa', 'sgd'\]"),
    ("schedule", "exp", "optimizer.schedule must be one of"),
    ("weight_decay_mask", "none", "optimizer.weight_decay_mask must be one of"),
    ("min_lr_ratio", 1.5, "optimizer.min_lr_ratio must be in"),
    ("learning_rate", 0.0, "optimizer.learning_rate must be > 0"),
    ("mu_dtype", "float33", "optimizer.mu_dtype must be"),
    ("b2", 2.0, "optimizer.b2 must be in"),
    ("grad_clip_norm", -1.0, "optimizer.grad_clip_norm must be >= 0"),
])
def test_bad_config_raises_naming_field(field, value, match):
  cfg = optimizer_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    build_optimizer(cfg, total_steps=10)


@pytest.mark.parametrize("field,value,match", [
    ("kappa", "l3", r"optimizer.kappa must be one of \[.*'l1'"),
    ("kappa_grouping", "tree", "optimizer.kappa_grouping must be one of"),
    ("kappa_p", 0.5, r"optimizer.kappa_\*: p must be"),
])
def test_bad_kappa_config_raises(field, value, match):
  cfg = optimizer_config()
  cfg.name = "lion_kappa"
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    build_optimizer(cfg, total_steps=10)


def test_total_steps_validated():
  with pytest.raises(ValueError, match="total_steps must be a positive int"):
    build_optimizer(optimizer_config(), total_steps=0)
