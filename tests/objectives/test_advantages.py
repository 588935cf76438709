"""Advantage estimators against the spec's hand-worked numbers (§1.1, §1.3, §1.5) and by-hand GAE."""
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import ADVANTAGE_ESTIMATORS
from tokenrl.objectives import gae_advantages
from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives import masked_whiten
from tokenrl.objectives import rloo_advantages

R = jnp.array([1.0, 0.0, 0.0, 1.0])   # spec §1.5 shared vector, G = 4


def test_spec_vector_grpo_unbiased_std():
  a = group_relative_advantages(R, 4, ddof=1, epsilon=1e-6)
  # (1 − 0.5) / (sqrt(1/3) + 1e-6)
  expected = 0.5 / (np.sqrt(1 / 3) + 1e-6)
  np.testing.assert_allclose(a, [expected, -expected, -expected, expected], rtol=1e-6)
  np.testing.assert_allclose(a, [0.866, -0.866, -0.866, 0.866], atol=1e-3)


def test_spec_vector_grpo_population_std():
  a = group_relative_advantages(R, 4, ddof=0, epsilon=0.0)
  np.testing.assert_allclose(a, [1, -1, -1, 1], rtol=1e-6)


def test_spec_vector_dr_grpo_no_std():
  a = group_relative_advantages(R, 4, scale_rewards="none")
  np.testing.assert_allclose(a, [0.5, -0.5, -0.5, 0.5], rtol=1e-6)


def test_equal_rewards_give_zero_and_groups_are_contiguous():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
  a = group_relative_advantages(r, 4)
  np.testing.assert_allclose(a[4:], 0.0)
  np.testing.assert_allclose(a[:4], group_relative_advantages(R, 4), rtol=1e-6)


def test_batch_scaling_divides_by_the_std_of_all_rewards():
  r = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
  a = group_relative_advantages(jnp.asarray(r), 4, scale_rewards="batch", epsilon=0.0)
  centred = np.array([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
  np.testing.assert_allclose(a, centred / np.std(r, ddof=1), rtol=1e-6)


def test_masked_whiten_unbiased_and_population_by_hand():
  # Valid x = [1, 2, 3, 6]: mean 3, Σ(x − 3)² = 14; unbiased var 14/3, population var 14/4.
  x = jnp.array([[1.0, 2.0, 9.0], [3.0, 6.0, -5.0]])
  m = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
  centred = np.array([[-2.0, -1.0, 0.0], [0.0, 3.0, 0.0]])
  np.testing.assert_allclose(masked_whiten(x, m), centred / np.sqrt(14 / 3 + 1e-8), rtol=1e-6)
  np.testing.assert_allclose(masked_whiten(x, m, unbiased=False), centred / np.sqrt(14 / 4 + 1e-8),
                             rtol=1e-6)


def test_group_size_one_never_nan():
  # verl's singleton convention: μ = 0, σ = 1 (the unbiased std of one sample would be 0/0).
  r = jnp.array([1.0, 0.0, 3.0])
  a = group_relative_advantages(r, 1)
  assert np.isfinite(np.asarray(a)).all()
  np.testing.assert_allclose(a, np.array([1.0, 0.0, 3.0]) / (1 + 1e-6), rtol=1e-7)
  np.testing.assert_allclose(group_relative_advantages(r, 1, ddof=0, scale_rewards="none"),
                             [1.0, 0.0, 3.0])
  with pytest.raises(ValueError, match="group_size"):
    rloo_advantages(r, 1)                             # leave-one-out needs G >= 2


def test_rloo():
  np.testing.assert_allclose(rloo_advantages(jnp.array([1.0, 0.0, 0.0]), 3), [1, -0.5, -0.5],
                             rtol=1e-6)
  # Equals G/(G−1)·(r − μ_g) group by group.
  r = jnp.array([3.0, 1.0, 2.0, 0.0, 5.0, 5.0])
  g = 2
  centred = group_relative_advantages(r, g, scale_rewards="none")
  np.testing.assert_allclose(rloo_advantages(r, g), centred * g / (g - 1), rtol=1e-6)


def test_gae_by_hand():
  # One terminal reward on the last token, V = [0.2, 0.5, 0.6], γ = λ = 0.95.
  #   Â2 = 1 − 0.6 = 0.4
  #   Â1 = (0.95·0.6 − 0.5) + 0.9025·0.4 = 0.431
  #   Â0 = (0.95·0.5 − 0.2) + 0.9025·0.431 = 0.6639775
  rewards = jnp.array([[0.0, 0.0, 1.0]])
  values = jnp.array([[0.2, 0.5, 0.6]])
  adv, ret = gae_advantages(rewards, values, jnp.ones((1, 3)), 0.95, 0.95)
  np.testing.assert_allclose(adv, [[0.6639775, 0.431, 0.4]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.8639775, 0.931, 1.0]], rtol=1e-6)
  # γ = λ = 1 telescopes to Â_t = (sum of future rewards) − V_t.
  adv, ret = gae_advantages(rewards, values, jnp.ones((1, 3)), 1.0, 1.0)
  np.testing.assert_allclose(adv, [[0.8, 0.5, 0.4]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0]], rtol=1e-6)


def test_gae_skips_masked_positions():
  # Padding at the end and a masked position inside: the result on the valid positions equals
  # the compressed row, and masked positions are 0 whatever their reward/value.
  rewards = jnp.array([[0.0, 7.0, 0.0, 1.0, 9.0]])
  values = jnp.array([[0.2, 9.0, 0.5, 0.6, 9.0]])
  mask = jnp.array([[1.0, 0.0, 1.0, 1.0, 0.0]])
  adv, ret = gae_advantages(rewards, values, mask, 0.95, 0.95)
  np.testing.assert_allclose(adv, [[0.6639775, 0, 0.431, 0.4, 0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.8639775, 0, 0.931, 1.0, 0]], rtol=1e-6)


def test_gae_whiten_standardises_valid_tokens():
  rewards = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
  values = jnp.array([[0.2, 0.5, 0.6, 0.0], [0.1, 0.3, 0.0, 0.0]])
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  raw, ret_raw = gae_advantages(rewards, values, mask, 0.9, 0.8)
  adv, ret = gae_advantages(rewards, values, mask, 0.9, 0.8, whiten=True)
  v = np.asarray(raw)[np.asarray(mask) > 0]
  # Unbiased variance (ddof 1), as verl's masked_whiten.
  np.testing.assert_allclose(np.asarray(adv)[np.asarray(mask) > 0],
                             (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8), rtol=1e-5)
  np.testing.assert_allclose(ret, ret_raw)              # returns are not whitened
  np.testing.assert_allclose(masked_whiten(raw, mask) * (1 - mask), 0.0)


def test_registry():
  assert ADVANTAGE_ESTIMATORS["grpo"] is group_relative_advantages
  assert ADVANTAGE_ESTIMATORS["rloo"] is rloo_advantages
  assert ADVANTAGE_ESTIMATORS["gae"] is gae_advantages


@pytest.mark.parametrize("call,match", [
    (lambda: group_relative_advantages(jnp.zeros((2, 4)), 4), "rewards"),
    (lambda: group_relative_advantages(jnp.zeros((6,)), 4), "rewards"),
    (lambda: group_relative_advantages(jnp.zeros((4,)), 4, scale_rewards="std"), "scale_rewards"),
    (lambda: group_relative_advantages(jnp.zeros((4,)), 0), "group_size"),
    (lambda: rloo_advantages(jnp.zeros((4,)), 1), "group_size"),
    (lambda: gae_advantages(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)), 1.0, 1.0),
     "values"),
    (lambda: gae_advantages(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((3,)), 1.0, 1.0),
     "mask"),
])
def test_validation(call, match):
  with pytest.raises(ValueError, match=match):
    call()
