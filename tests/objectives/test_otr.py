"""OTR (spec §7, [reconstructed] — provisional): the spec's Monte Carlo and exact numbers, the
K → ∞ limit of the MC estimator (= the exact expectation over the vocabulary, value and
gradient), DFT at β = 0, τ_s = 1, the inverse-CDF sampler, reductions and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import otr

# Spec §7(e) MC case: one position, π = [y 0.5, a 0.2, b 0.1, c 0.2], samples [y, a, y, b].
PI_MC = jnp.log(jnp.array([[[0.5, 0.2, 0.1, 0.2]]], jnp.float32))      # [1,1,4]
Y = jnp.array([[0]], jnp.int32)
CANDS = jnp.array([[[0, 1, 0, 2]]], jnp.int32)


@pytest.mark.parametrize("beta,expected", [(0.0, 0.346574), (-0.1, 0.248773)])
def test_spec_monte_carlo(beta, expected):
  loss, match = otr.otr_token_loss(PI_MC, Y, CANDS, beta=beta)
  np.testing.assert_allclose(loss, [[expected]], rtol=1e-5)
  np.testing.assert_allclose(match, [[0.5]])


@pytest.mark.parametrize("tau,expected", [(1.0, 0.278266), (2.0, 0.206933)])
def test_spec_exact(tau, expected):
  logits = jnp.log(jnp.array([[[0.5, 0.3, 0.2]]], jnp.float32))
  loss, p_y = otr.otr_token_loss(logits, Y, beta=-0.1, estimator="exact", temperature=tau)
  np.testing.assert_allclose(loss, [[expected]], rtol=1e-5)
  np.testing.assert_allclose(p_y, [[0.5 if tau == 1 else 0.415446]], rtol=1e-5)


def test_large_k_monte_carlo_matches_exact_expectation():
  """K → ∞: the MC loss and its gradient converge to the exact expectation under π′."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, 5)) * 1.5, jnp.float32)            # [N,T,V]
  y = jnp.asarray(rng.integers(0, 5, size=(2, 3)), jnp.int32)
  k, tau, beta = 20000, 1.5, -0.1
  u = jax.random.uniform(jax.random.key(0), (2, 3, k))
  cands = otr.sample_candidates(logits, u, temperature=tau)
  mc = lambda z: otr.otr_token_loss(z, y, cands, beta=beta)[0].sum()
  exact = lambda z: otr.otr_token_loss(z, y, beta=beta, estimator="exact", temperature=tau)[0].sum()
  # Monte Carlo error ~ 1/sqrt(K) ≈ 0.007 per position of O(1) terms.
  np.testing.assert_allclose(mc(logits), exact(logits), atol=0.05)
  np.testing.assert_allclose(jax.grad(mc)(logits), jax.grad(exact)(logits), atol=0.03)


def test_exact_at_beta0_tau1_is_dft():
  """β = 0, τ_s = 1: ∇ℓ = −π(y)·∇log π(y) (Dynamic Fine-Tuning), i.e. −π_y·(onehot_y − π)."""
  logits = jnp.array([[[1.0, -0.5, 0.3, 2.0]]], jnp.float32)
  y = jnp.array([[2]], jnp.int32)
  g = jax.grad(lambda z: otr.otr_token_loss(z, y, beta=0.0, estimator="exact")[0].sum())(logits)
  p = jax.nn.softmax(logits[0, 0])
  np.testing.assert_allclose(g[0, 0], -p[2] * (jax.nn.one_hot(2, 4) - p), rtol=1e-5, atol=1e-7)


def test_sampler_frequencies_and_zero_probability_tokens():
  logits = jnp.log(jnp.array([[[0.6, 0.0, 0.3, 0.1]]], jnp.float32))              # token 1: p = 0
  u = jax.random.uniform(jax.random.key(1), (1, 1, 40000))
  a = np.asarray(otr.sample_candidates(logits, u, temperature=1.0)).ravel()
  freq = np.bincount(a, minlength=4) / a.size
  assert freq[1] == 0.0
  np.testing.assert_allclose(freq, [0.6, 0.0, 0.3, 0.1], atol=0.01)
  # Temperature: π′ ∝ π^(1/τ).
  a = np.asarray(otr.sample_candidates(logits, u, temperature=2.0)).ravel()
  q = np.sqrt([0.6, 0.0, 0.3, 0.1])
  np.testing.assert_allclose(np.bincount(a, minlength=4) / a.size, q / q.sum(), atol=0.01)
  # Edges of the uniform range map to the first and last tokens with mass.
  edge = otr.sample_candidates(logits, jnp.array([[[0.0, 0.999999]]]), temperature=1.0)
  np.testing.assert_array_equal(edge, [[[0, 3]]])


def test_always_include_gt_and_no_gradient_through_rewards():
  cands = jnp.array([[[1, 1, 2, 3]]], jnp.int32)
  loss, match = otr.otr_token_loss(PI_MC, Y, cands, beta=0.0)
  np.testing.assert_allclose(loss, [[0.0]])                    # y never drawn, β = 0: no signal
  loss, match = otr.otr_token_loss(PI_MC, Y, cands, beta=0.0, always_include_gt=True)
  np.testing.assert_allclose(loss, [[-np.log(0.5) / 4]], rtol=1e-6)
  np.testing.assert_allclose(match, [[0.25]])


def test_reductions():
  tok = jnp.array([[1.0, 3.0, 9.0], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
  np.testing.assert_allclose(otr.otr_loss(tok, mask), (2.0 + 2.0) / 2)         # empty row out
  np.testing.assert_allclose(otr.otr_loss(tok, mask, normalize="global_token_mean"), 10.0 / 5)
  np.testing.assert_allclose(otr.otr_loss(tok, mask, denominator=4.0), 1.0)
  np.testing.assert_allclose(otr.otr_denominator(mask, "per_sequence"), 2.0)
  np.testing.assert_allclose(otr.otr_denominator(mask, "global_token_mean"), 5.0)


def test_bad_inputs():
  with pytest.raises(ValueError, match="targets"):
    otr.otr_token_loss(PI_MC, jnp.zeros((1, 2), jnp.int32), CANDS, beta=0.0)
  with pytest.raises(ValueError, match="candidates"):
    otr.otr_token_loss(PI_MC, Y, None, beta=0.0)
  with pytest.raises(ValueError, match="estimator"):
    otr.otr_token_loss(PI_MC, Y, CANDS, beta=0.0, estimator="bogus")
  with pytest.raises(ValueError, match="uniforms"):
    otr.sample_candidates(PI_MC, jnp.zeros((1, 2, 3)), temperature=1.0)
  with pytest.raises(ValueError, match="temperature"):
    otr.sample_candidates(PI_MC, jnp.zeros((1, 1, 3)), temperature=0.0)
  with pytest.raises(ValueError, match="normalize"):
    otr.otr_loss(jnp.zeros((1, 1)), jnp.ones((1, 1)), normalize="x")
