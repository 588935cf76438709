"""THR (spec §2): the hand-worked kernel case, brute-force kernel, τ anchor, GRPO reduction."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import group_relative_advantages, policy_loss
from tokenrl.objectives import thr


def _spec_case():
  """V = 2, D = 2, G = 2, T = 1, both sampled token 0 with q = [0.5, 0.5], h = [1, 0]."""
  q = jnp.full((1, 2, 1, 2), 0.5)
  y = jnp.zeros((1, 2, 1), jnp.int32)
  valid = jnp.ones((1, 2), bool)
  h = jnp.broadcast_to(jnp.array([1.0, 0.0]), (1, 2, 1, 2))
  mask = jnp.ones((1, 2, 1), jnp.int32)
  correct = jnp.array([[1.0, 0.0]])
  return q, y, valid, h, mask, correct


def test_spec_hand_worked_case():
  q, y, valid, h, mask, correct = _spec_case()
  s = thr.thr_kernel_scores(q, y, valid, h, mask, correct).reshape(2, 1)
  np.testing.assert_allclose(s, [[0.5], [0.5]], atol=1e-6)
  adv = group_relative_advantages(jnp.array([1.0, 0.0]), 2, ddof=0, epsilon=0.0)
  np.testing.assert_allclose(adv, [1.0, -1.0], atol=1e-6)
  value = thr.token_hidden_reward(s, adv, jnp.ones((2, 1)))
  np.testing.assert_allclose(value, [[0.5], [-0.5]], atol=1e-6)
  np.testing.assert_allclose(thr.thr_reweight(adv, value, 0.0, p=0.2), [[1.2], [-0.8]], atol=1e-6)
  np.testing.assert_allclose(thr.thr_reweight(adv, value, 0.0, p=-0.2), [[0.8], [-1.2]], atol=1e-6)


def test_restricted_vocab_of_the_spec_case():
  # Only id 0 occurs, so V* = {0}: g = [0.5] (not renormalised) and S = 0.5·0.5·<h,h> = 0.25.
  probs = np.full((2, 1, 2), 0.5, np.float32)
  q, y, valid = thr.restrict_vocab(probs, np.zeros((2, 1), np.int32), np.ones((2, 1)), 2)
  assert q.shape == (1, 2, 1, 1) and valid.tolist() == [[True]]
  _, _, _, h, mask, correct = _spec_case()
  s = thr.thr_kernel_scores(jnp.asarray(q), jnp.asarray(y), jnp.asarray(valid), h, mask, correct)
  np.testing.assert_allclose(s.reshape(-1), [0.25, 0.25], atol=1e-6)


def test_restrict_vocab_gathers_each_group_vocabulary():
  probs = np.arange(4 * 2 * 5, dtype=np.float32).reshape(4, 2, 5)
  comp = np.array([[3, 1], [1, 9], [4, 4], [0, 2]])
  mask = np.array([[1, 1], [1, 0], [1, 1], [1, 0]])   # id 9 is padding: not in V*
  q, y, valid = thr.restrict_vocab(probs, comp, mask, 2)
  assert q.shape == (2, 2, 2, 2)
  np.testing.assert_array_equal(valid, [[True, True], [True, True]])   # V* = {1,3}, {0,4}
  np.testing.assert_array_equal(q[0, 0, 0], probs[0, 0, [1, 3]])
  np.testing.assert_array_equal(q[1, 1, 0], probs[3, 0, [0, 4]])
  np.testing.assert_array_equal(y, [[[1, 0], [0, 0]], [[1, 1], [0, 0]]])


def test_kernel_equals_brute_force_pair_sum():
  rng = np.random.default_rng(0)
  b, g, t, k, d = 1, 3, 2, 3, 2
  q = rng.dirichlet(np.ones(k), size=(b, g, t)).astype(np.float32)
  y = rng.integers(0, k, size=(b, g, t))
  h = rng.normal(size=(b, g, t, d)).astype(np.float32)
  mask = np.array([[[1, 1], [1, 0], [1, 1]]])
  correct = np.array([[1.0, 1.0, 0.0]])
  s = np.asarray(thr.thr_kernel_scores(jnp.asarray(q), jnp.asarray(y), jnp.ones((b, k), bool),
                                       jnp.asarray(h), jnp.asarray(mask), jnp.asarray(correct)))
  err = np.eye(k)[y] - q
  for j, s_ in itertools.product(range(g), range(t)):
    want = 0.0
    if mask[0, j, s_]:
      for i, t_ in itertools.product(range(g), range(t)):
        if correct[0, i] and mask[0, i, t_]:
          want += (err[0, i, t_] @ err[0, j, s_]) * (h[0, i, t_] @ h[0, j, s_])
    np.testing.assert_allclose(s[0, j, s_], want, rtol=1e-5, atol=1e-6)


def test_kappa_divides_by_length_and_keeps_the_sign():
  s = jnp.array([[1.0, -2.0], [3.0, 0.0]])
  mask = jnp.array([[1, 1], [1, 0]])
  adv = jnp.array([1.0, -1.0])
  np.testing.assert_allclose(thr.token_hidden_reward(s, adv, mask, kappa=1),
                             [[0.5, -1.0], [-3.0, 0.0]])
  np.testing.assert_array_equal(np.sign(thr.token_hidden_reward(s, adv, mask, kappa=0)),
                                np.sign(thr.token_hidden_reward(s, adv, mask, kappa=1)))


def test_nthr_threshold_and_thr_only_gate():
  scores = jnp.array([[1.0, 3.0], [4.0, 100.0], [5.0, 5.0], [7.0, 7.0]])
  mask = jnp.array([[1, 1], [1, 0], [1, 1], [1, 1]])
  correct = jnp.array([1.0, 1.0, 0.0, 0.0])
  # Group 0: min(mean [1,3], mean [4]) = 2; group 1 has no correct response: τ = 0.
  np.testing.assert_allclose(thr.nthr_threshold(scores, mask, correct, 2), [2, 2, 0, 0])
  np.testing.assert_allclose(thr.nthr_threshold(scores, mask, correct, 2, beta_tau=0.5),
                             [1, 1, 0, 0])
  adv = jnp.array([2.0, -1.0])
  value = jnp.array([[0.5, 0.1], [-0.3, 0.2]])
  np.testing.assert_allclose(thr.thr_reweight(adv, value, 0.2, p=0.5, thr_only=True),
                             [[2.0, 0.0], [-1.0, 0.0]])
  # Reweighting mode: below the gate the advantage is unchanged.
  np.testing.assert_allclose(thr.thr_reweight(adv, value, jnp.array([0.2, 0.2]), p=0.5),
                             [[3.0, 2.0], [-0.5, -1.0]])


def test_equal_rewards_leave_the_group_unchanged():
  adv = group_relative_advantages(jnp.array([1.0, 1.0]), 2)
  value = thr.token_hidden_reward(jnp.ones((2, 3)), adv, jnp.ones((2, 3)))
  np.testing.assert_array_equal(thr.thr_reweight(adv, value, 0.0, p=0.3), 0.0)


def test_p_zero_is_plain_grpo_loss_and_gradient():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(size=(4, 3)) - 2.0, jnp.float32)
  old = logp + jnp.asarray(rng.normal(size=(4, 3)) * 0.1, jnp.float32)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  adv = jnp.array([0.9, -0.9, 0.5, -0.5])
  value = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  new_adv = thr.thr_reweight(adv, value, 0.0, p=0.0)
  for mode in ("seq-mean-token-mean", "token-mean"):
    f = lambda lp, a: policy_loss(lp, old, a, mask, loss_agg_mode=mode)[0]
    np.testing.assert_allclose(f(logp, new_adv), f(logp, adv), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(logp, new_adv), jax.grad(f)(logp, adv), rtol=1e-6)


def test_no_gradient_through_thr():
  g = jax.grad(lambda v: thr.thr_reweight(jnp.array([1.0]), v, 0.0, p=0.3).sum())(
      jnp.array([[0.5, -0.5]]))
  np.testing.assert_array_equal(g, 0.0)


def test_bad_inputs():
  q, y, valid, h, mask, correct = _spec_case()
  with pytest.raises(ValueError, match="hidden"):
    thr.thr_kernel_scores(q, y, valid, h[..., 0], mask, correct)
  with pytest.raises(ValueError, match="correct"):
    thr.thr_kernel_scores(q, y, valid, h, mask, correct[0])
  with pytest.raises(ValueError, match="kappa"):
    thr.token_hidden_reward(jnp.ones((2, 1)), jnp.ones(2), jnp.ones((2, 1)), kappa=2)
  with pytest.raises(ValueError, match="advantages"):
    thr.thr_reweight(jnp.ones(3), jnp.ones((2, 1)), 0.0, p=0.1)
  with pytest.raises(ValueError, match="group_size"):
    thr.restrict_vocab(np.ones((3, 1, 2)), np.zeros((3, 1), int), np.ones((3, 1)), 2)
  with pytest.raises(ValueError, match="tau"):
    thr.thr_reweight(jnp.ones(2), jnp.ones((2, 1)), jnp.ones(3), p=0.1)
