"""Dead-end rectification (spec §11): the cap on the spec's numbers, TD targets by hand, the
processor on a toy with a known Q_D, bad inputs, and a short Q_D training run."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import rectification as rect
from tokenrl.rollout.sampler import DecodeContext

Z = jnp.asarray([[2.0, 1.0, 0.0, -1.0]])
Q = jnp.asarray([[-0.95, -0.2, 0.0, -0.5]])


def test_spec_numeric_case():
  np.testing.assert_allclose(jax.nn.softmax(Z[0]), [0.643914, 0.236883, 0.087144, 0.032059], atol=1e-6)
  one = rect.rectify_logits(Z, Q, epsilon=0.1, iterations=1)
  np.testing.assert_allclose(one[0], [-13.677906, 1, 0, -1], atol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(one[0])[0], 2.81e-7, rtol=1e-2)
  two = rect.rectify_logits(Z, Q, epsilon=0.1)
  np.testing.assert_allclose(two[0], [-14.710489, 1, 0, -1], atol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(two[0]), [1.0e-7, 0.665241, 0.244728, 0.090031],
                             rtol=1e-4, atol=1e-9)


def test_invariants():
  z = jax.random.normal(jax.random.key(0), (3, 7)) * 3
  # Q_D = 0, ε = 0: every cap is 1, nothing changes.
  np.testing.assert_array_equal(rect.rectify_logits(z, jnp.zeros_like(z)), z)
  # Logits are only ever lowered (a cap, not a multiplicative reweighting).
  q = -jax.random.uniform(jax.random.key(1), z.shape)
  out = rect.rectify_logits(z, q, epsilon=0.05)
  assert bool(jnp.all(out <= z))
  # A token whose cap is 1 (Q_D = 0, ε = 0) is never lowered.
  q1 = q.at[:, 0].set(0.0)
  np.testing.assert_array_equal(rect.rectify_logits(z, q1)[:, 0], z[:, 0])


def test_sarsa_targets_and_td_loss():
  q_tgt = jnp.asarray([[-0.1, -0.4, -0.7, 0.0], [-0.2, 0.3, 0.0, 0.0]])
  mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
  reward = jnp.asarray([-1.0, 0.0])
  y = rect.sarsa_targets(q_tgt, mask, reward, gamma=0.5)
  # Row 0: [γ·(−0.4), γ·(−0.7), R = −1, 0]; row 1: [γ·0.3 → clip 0, R = 0, 0, 0].
  np.testing.assert_allclose(y, [[-0.2, -0.35, -1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], atol=1e-7)
  q = jnp.asarray([[0.0, -0.35, -0.5, 9.0], [0.5, 0.0, 9.0, 9.0]])
  # Σ m (q − y)² / Σ m = (0.04 + 0 + 0.25 + 0.25 + 0) / 5.
  assert float(rect.td_loss(q, y, mask)) == pytest.approx(0.108)
  g = jax.grad(lambda t: rect.td_loss(q, t, mask))(y)          # targets are stop-gradient
  assert float(jnp.abs(g).max()) == 0.0


def test_polyak_and_head():
  a, b = {"w": jnp.ones(2)}, {"w": jnp.zeros(2)}
  np.testing.assert_allclose(rect.polyak(a, b, 0.1)["w"], [0.1, 0.1])
  head = rect.init_q_head(jax.random.key(0), 4, 9)
  assert rect.q_head(head, jnp.ones((2, 3, 4))).shape == (2, 3, 9)


def test_dead_end_cap_processor_known_q():
  # Q_D known per token: the processed distribution is the hand-computed capped one.
  proc = rect.DeadEndCap(q_table=(-0.95, -0.2, 0.0, -0.5), epsilon=0.1)
  assert hash(proc) == hash(rect.DeadEndCap(q_table=(-0.95, -0.2, 0.0, -0.5), epsilon=0.1))
  ctx = DecodeContext(jnp.asarray(0), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1,), bool))
  np.testing.assert_allclose(jax.nn.softmax(proc(Z, ctx)[0]),
                             [1.0e-7, 0.665241, 0.244728, 0.090031], rtol=1e-4, atol=1e-9)
  # A cap of 0.5 on the favourite token, by hand: z0 = log 0.5 + logsumexp(z) per pass.
  proc2 = rect.DeadEndCap(q_table=(-0.5, 0.0, 0.0, 0.0), iterations=50)
  p = jax.nn.softmax(proc2(Z, ctx)[0])
  rest = np.exp([1.0, 0.0, -1.0])
  np.testing.assert_allclose(p, np.concatenate([[0.5], 0.5 * rest / rest.sum()]), atol=1e-5)


def test_bad_inputs():
  with pytest.raises(ValueError, match="q_values"):
    rect.rectify_logits(Z, Q[:, :3])
  with pytest.raises(ValueError, match="p_min"):
    rect.rectify_logits(Z, Q, p_min=0.0)
  with pytest.raises(ValueError, match="reward"):
    rect.sarsa_targets(Q, jnp.ones((1, 4)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match="alpha"):
    rect.polyak({"w": 1.0}, {"w": 0.0}, 1.5)


def test_train_rectification_smoke(tmp_path):
  from tokenrl.train.rectification import train_rectification
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.objective = "rectification"
  c.model.dim, c.model.mlp_dim, c.model.num_layers = 32, 64, 1
  c.data.eval_size = 8
  c.train.sft_steps = 2
  c.rl.rectification.q_steps = 2
  c.rl.rectification.samples_per_prompt = 2
  s = train_rectification(c, str(tmp_path))
  assert 0 <= s["accuracy_plain"] <= 1 and 0 <= s["accuracy_rectified"] <= 1
  with open(tmp_path / "metrics.jsonl") as f:
    lines = [l for l in f if '"q"' in l]
  assert len(lines) == 2 and all('"dead_end_rate"' in l and '"q_mean"' in l for l in lines)
  c.rl.rectification.iterations = 0
  with pytest.raises(ValueError, match="rl.rectification.iterations"):
    train_rectification(c, str(tmp_path))
