"""TGDPO (spec §2e): the hand-worked case, α = 0 equals DPO, the optional clamp, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives.dpo import dpo_loss
from tokenrl.objectives.tgdpo import tgdpo_coefficients, tgdpo_loss

LP_W = jnp.array([[0.2, -0.1, 0.3]])            # lr^w with lp_ref = 0
LP_L = jnp.array([[-0.4, -0.2, 0.0]])           # lr^l, padded to T = 3
G_W = jnp.array([[2.0, -1.0, 0.0]])             # reward-model log-ratios lr_r^w
G_L = jnp.array([[-3.0, 1.0, 9.0]])             # lr_r^l (the padded 9 must not matter)
M_W, M_L, ZERO = jnp.array([[1, 1, 1]]), jnp.array([[1, 1, 0]]), jnp.zeros((1, 3))


def _loss(alpha, **kw):
  return tgdpo_loss(LP_W, ZERO, G_W, M_W, LP_L, ZERO, G_L, M_L, beta=0.1, alpha=alpha, **kw)


def test_spec_numbers():
  c_w = tgdpo_coefficients(G_W, ZERO, M_W, beta=0.1, alpha=0.5, chosen=True)
  c_l = tgdpo_coefficients(G_L, ZERO, M_L, beta=0.1, alpha=0.5, chosen=False)
  np.testing.assert_allclose(c_w, [[0.110, 0.095, 0.100]], atol=1e-7)
  np.testing.assert_allclose(c_l[:, :2], [[0.115, 0.095]], atol=1e-7)
  loss, aux = _loss(0.5)
  np.testing.assert_allclose(aux["logits"], [0.1075], atol=1e-7)
  np.testing.assert_allclose(loss, 0.640841, atol=1e-6)


def test_alpha_zero_is_dpo():
  loss, aux = _loss(0.0)
  ref, ref_aux = dpo_loss(LP_W, ZERO, M_W, LP_L, ZERO, M_L, beta=0.1)
  np.testing.assert_allclose(loss, 0.644397, atol=1e-6)
  np.testing.assert_allclose(loss, ref, rtol=1e-7)
  np.testing.assert_allclose(aux["logits"], ref_aux["logits"], rtol=1e-7)
  rng = np.random.default_rng(1)
  lp = jnp.asarray(rng.normal(size=(4, 6)))
  zeros, ones = jnp.zeros((4, 6)), jnp.ones((4, 6))
  g1 = jax.grad(lambda x: tgdpo_loss(x, zeros, lp, ones, lp * 2, zeros, lp, ones,
                                     alpha=0.0)[0])(lp)
  g2 = jax.grad(lambda x: dpo_loss(x, zeros, ones, lp * 2, zeros, ones)[0])(lp)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)


def test_negative_coefficients_kept_unless_clamped():
  big = jnp.array([[-30.0, 0.0, 0.0]])          # alpha*r_hat = 0.5*0.1*(-30) = -1.5 < -1
  c = tgdpo_coefficients(big, ZERO, M_W, beta=0.1, alpha=0.5, chosen=True)
  np.testing.assert_allclose(c[0, 0], -0.05, atol=1e-7)
  c = tgdpo_coefficients(big, ZERO, M_W, beta=0.1, alpha=0.5, chosen=True, coef_min=0.0)
  np.testing.assert_allclose(c[0], [0.0, 0.1, 0.1], atol=1e-7)


def test_pref_ftx_adds_chosen_nll():
  l0, _ = _loss(0.5)
  l1, _ = _loss(0.5, pref_ftx=2.0)
  np.testing.assert_allclose(l1 - l0, 2.0 * -(0.2 - 0.1 + 0.3) / 3, atol=1e-6)


def test_bad_inputs():
  with pytest.raises(ValueError, match="ref_logp"):
    tgdpo_coefficients(G_W, ZERO[:, :2], M_W, beta=0.1, alpha=0.5, chosen=True)
  with pytest.raises(ValueError, match="mask"):
    tgdpo_loss(LP_W, ZERO, G_W, M_W[:, :1], LP_L, ZERO, G_L, M_L)
