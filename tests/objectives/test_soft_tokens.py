"""Soft Tokens, Hard Truths (spec §13): Gaussian log-prob, RLOO and noise-scale numbers;
gradient through μ only; aggregation; bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import rloo_advantages
from tokenrl.objectives import soft_tokens as st


def test_spec_gaussian_logprob():
  # d = 2, σ = 0.5, μ = [0.75, 0.25] (p = [0.75, 0.25], E = I), h̃ = [0.85, 0.05].
  mu = st.mixture_embedding(jnp.log(jnp.array([0.75, 0.25])), jnp.eye(2), 1.0)
  np.testing.assert_allclose(mu, [0.75, 0.25], rtol=1e-6)
  lp = st.gaussian_logprob(jnp.array([0.85, 0.05]), mu, 0.5)
  np.testing.assert_allclose(lp, -0.1 - np.log(2 * np.pi * 0.25), rtol=1e-6)
  np.testing.assert_allclose(lp, -0.55158, atol=1e-5)


def test_spec_rloo():
  np.testing.assert_allclose(rloo_advantages(jnp.array([1.0, 0.0, 0.0]), 3), [1, -0.5, -0.5])


def test_spec_noise_scale():
  e = jnp.array([[3.0, 4.0], [1.0, 1.0]])
  np.testing.assert_allclose(st.noise_scale(e, 1.0), np.sqrt(6.75), rtol=1e-6)
  np.testing.assert_allclose(st.noise_scale(e, 0.33), 0.857365, atol=1e-6)
  np.testing.assert_allclose(st.noise_scale(e, 0.33, "absolute"), 0.33)


def test_fuzzy_mixture_is_the_argmax_embedding():
  e = jnp.arange(12.0).reshape(4, 3)
  mu = st.mixture_embedding(jnp.array([0.1, 2.0, 1.9, -1.0]), e, 1e-4)
  np.testing.assert_allclose(mu, e[1], atol=1e-6)


def test_gradient_flows_through_mu_only_and_per_row_sigma():
  x = jnp.array([[0.85, 0.05], [0.0, 0.0]])
  mu = jnp.array([[0.75, 0.25], [0.0, 1.0]])
  sigma = jnp.array([0.5, 1.0])
  lp = st.gaussian_logprob(x, mu, sigma)
  np.testing.assert_allclose(lp[1], -0.5 - np.log(2 * np.pi), rtol=1e-6)
  gx = jax.grad(lambda a: st.gaussian_logprob(a, mu, sigma).sum())(x)
  np.testing.assert_array_equal(gx, 0.0)
  gmu = jax.grad(lambda b: st.gaussian_logprob(x, b, sigma).sum())(mu)
  np.testing.assert_allclose(gmu, (x - mu) / sigma[:, None] ** 2, rtol=1e-6)   # (h̃ − μ)/σ²


def test_reinforce_loss_and_sequence_logprob():
  cot = jnp.array([[-1.0, -2.0], [-0.5, -0.5]])
  ans = jnp.array([[-0.1, -0.2, -9.0], [-0.3, -9.0, -9.0]])
  m = jnp.array([[1, 1, 0], [1, 0, 0]])
  lam = st.sequence_logprob(cot, ans, m)
  np.testing.assert_allclose(lam, [-3.3, -1.3], rtol=1e-6)
  a = jnp.array([1.0, -1.0])
  np.testing.assert_allclose(st.reinforce_loss(lam, a, 2.0), -(-3.3 + 1.3) / 2, rtol=1e-6)
  # Zero advantage -> zero gradient; the gradient of Λ_i is −A_i/denominator.
  g = jax.grad(lambda l: st.reinforce_loss(l, jnp.zeros(2), 2.0))(lam)
  np.testing.assert_array_equal(g, 0.0)
  g = jax.grad(lambda l: st.reinforce_loss(l, a, 2.0))(lam)
  np.testing.assert_allclose(g, [-0.5, 0.5])


def test_bad_inputs():
  with pytest.raises(ValueError, match="mu"):
    st.gaussian_logprob(jnp.zeros((2, 3)), jnp.zeros((2, 2)), 1.0)
  with pytest.raises(ValueError, match="sigma"):
    st.gaussian_logprob(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(3))
  with pytest.raises(ValueError, match="embedding"):
    st.mixture_embedding(jnp.zeros((2, 5)), jnp.zeros((4, 3)), 0.5)
  with pytest.raises(ValueError, match="temperature"):
    st.mixture_embedding(jnp.zeros((2, 4)), jnp.zeros((4, 3)), 0.0)
  with pytest.raises(ValueError, match="mode"):
    st.noise_scale(jnp.ones((2, 2)), 0.33, "rms_rows")
  with pytest.raises(ValueError, match="advantages"):
    st.reinforce_loss(jnp.zeros(3), jnp.zeros(2), 1.0)
  with pytest.raises(ValueError, match="cot_logp"):
    st.sequence_logprob(jnp.zeros(3), jnp.zeros((3, 2)), jnp.zeros((3, 2)))


def test_validate_names_the_field():
  from tokenrl.methods.soft_tokens import SoftTokens
  method = SoftTokens()
  sec = method.config()
  sec.noise_scale_mode = "rows"
  with pytest.raises(ValueError, match="rl.soft_tokens.noise_scale_mode"):
    method.validate(sec, {"num_generations": 4, "num_iterations": 1, "beta": 0.0})
  with pytest.raises(ValueError, match="num_generations"):
    method.validate(method.config(), {"num_generations": 1, "num_iterations": 1, "beta": 0.0})
