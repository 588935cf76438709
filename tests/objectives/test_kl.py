"""KL estimators: zero at p = ref, hand values, and unbiasedness of k1/k3 summed over a vocabulary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import KL_ESTIMATORS
from tokenrl.objectives import kl_penalty


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_kl_of_p_with_itself_is_zero(name):
  logp = jnp.log(jnp.array([[0.1, 0.5, 0.9], [0.3, 0.01, 1.0]]))
  np.testing.assert_allclose(kl_penalty(logp, logp, name), 0.0, atol=1e-7)


def test_hand_values():
  logp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-2.0, -1.0]])
  # δ = ref − logp = [−1, 1]
  np.testing.assert_allclose(kl_penalty(logp, ref, "k1"), [[1.0, -1.0]], rtol=1e-6)
  np.testing.assert_allclose(kl_penalty(logp, ref, "k2"), [[0.5, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(kl_penalty(logp, ref, "k3"),
                             [[np.exp(-1.0), np.exp(1.0) - 2.0]], rtol=1e-6)
  for alias, name in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
    assert KL_ESTIMATORS[alias] is KL_ESTIMATORS[name]


def test_gradients_at_equality():
  # k2 and k3 have zero gradient at logp = ref (they are ≥ 0 with a minimum there); k1 has 1.
  logp = jnp.array([[-0.5, -1.5]])
  for name, expected in (("k1", 1.0), ("k2", 0.0), ("k3", 0.0)):
    g = jax.grad(lambda x, n=name: kl_penalty(x, logp, n).sum())(logp)
    np.testing.assert_allclose(g, expected, atol=1e-7)
  # The reference is a constant.
  g_ref = jax.grad(lambda r: kl_penalty(logp + 0.3, r, "k3").sum())(logp)
  np.testing.assert_allclose(g_ref, 0.0)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_exact_kl(name):
  # E_{v∼p}[k(log p_v, log q_v)] = KL(p‖q) for k1 and k3: sum over the vocabulary with weights p.
  p = np.array([0.5, 0.2, 0.2, 0.1])
  q = np.array([0.25, 0.25, 0.4, 0.1])
  k = kl_penalty(jnp.log(jnp.asarray(p))[None], jnp.log(jnp.asarray(q))[None], name)[0]
  np.testing.assert_allclose(float((p * np.asarray(k)).sum()), (p * np.log(p / q)).sum(),
                             rtol=1e-5)


def test_validation():
  with pytest.raises(ValueError, match="estimator"):
    kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "k4")
  with pytest.raises(ValueError, match="ref_logp"):
    kl_penalty(jnp.zeros((1, 2)), jnp.zeros((1, 3)), "k3")
