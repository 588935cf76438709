"""GRPO-N (spec §12): hand-worked advantages, zero gradient from positive samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import group_relative_advantages, policy_loss
from tokenrl.objectives.negative import negative_only_advantages


def test_spec_vectors():
  a = group_relative_advantages(jnp.array([1.0, 0, 0, 1]), 4, ddof=1, epsilon=0.0)
  np.testing.assert_allclose(negative_only_advantages(a), [0, -0.866025, -0.866025, 0], atol=1e-5)
  a = group_relative_advantages(jnp.array([1.0, 0.5, 0, 0]), 4, ddof=0, epsilon=0.0)
  np.testing.assert_allclose(a[1], 0.3015, atol=1e-4)
  np.testing.assert_allclose(negative_only_advantages(a), [0, 0, -0.9045, -0.9045], atol=1e-4)


def test_positive_samples_have_zero_gradient():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(size=(4, 3)) - 2.0, jnp.float32)
  adv = negative_only_advantages(jnp.array([1.0, -0.5, 0.7, -1.2]))
  mask = jnp.ones((4, 3), jnp.int32)

  def loss(lp):
    return policy_loss(lp, jax.lax.stop_gradient(lp), adv, mask)[0]

  g = jax.grad(loss)(logp)
  np.testing.assert_array_equal(g[0], 0.0)
  np.testing.assert_array_equal(g[2], 0.0)
  assert np.all(np.abs(g[1]) > 0) and np.all(np.abs(g[3]) > 0)


def test_rejects_bad_rank():
  with pytest.raises(ValueError, match="advantages"):
    negative_only_advantages(jnp.zeros((2, 2, 2)))
