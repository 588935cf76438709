"""cDPO (spec §4e): contrastive score, weighted loss, uniform scores = DPO, bad inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives.cdpo import cdpo_loss, cdpo_weights, contrastive_scores
from tokenrl.objectives.dpo import dpo_loss

LP_W = jnp.array([[0.2, -0.1, 0.3]])
LP_L = jnp.array([[-0.4, -0.2, 0.0]])
M_W, M_L, ZERO = jnp.array([[1, 1, 1]]), jnp.array([[1, 1, 0]]), jnp.zeros((1, 3))


def test_spec_contrastive_score():
  zp = jnp.array([[[2.0, 1.0, 0.0]] * 2])        # [1,2,3]
  zn = jnp.array([[[0.0, 2.0, 0.0]] * 2])
  s = contrastive_scores(zp, zn, jnp.array([[1, 0]]))
  np.testing.assert_allclose(s, [[0.017668, 0.964663]], atol=1e-6)
  _, w_l = cdpo_weights(s, s, jnp.ones((1, 2)), jnp.ones((1, 2)))
  np.testing.assert_allclose(w_l[0, 0], 0.982332, atol=1e-6)


def test_spec_loss():
  s_l = jnp.array([[0.9, 0.1, 0.5]])            # weights [0.1, 0.9, (masked)]
  loss, aux = cdpo_loss(LP_W, ZERO, ZERO, M_W, LP_L, ZERO, s_l, M_L, beta=0.1)
  np.testing.assert_allclose(aux["logits"], [0.062], atol=1e-7)
  np.testing.assert_allclose(loss, 0.662628, atol=1e-6)
  np.testing.assert_allclose(aux["weight_rejected"], [[0.1, 0.9, 0.0]], atol=1e-7)


def test_uniform_scores_equal_dpo():
  rng = np.random.default_rng(2)
  lw, ll, rw, rl = (jnp.asarray(rng.normal(size=(3, 4))) for _ in range(4))
  m = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
  ref, _ = dpo_loss(lw, rw, m, ll, rl, m, beta=0.1, label_smoothing=0.05)
  zeros, ones = jnp.zeros((3, 4)), jnp.ones((3, 4))
  got, _ = cdpo_loss(lw, rw, zeros, m, ll, rl, zeros, m, beta=0.1, label_smoothing=0.05)
  np.testing.assert_allclose(got, ref, rtol=1e-6)
  got, _ = cdpo_loss(lw, rw, ones, m, ll, rl, zeros, m, beta=0.1, only_neg=False,
                     label_smoothing=0.05)
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_equal_models_give_model_probability():
  # z+ = z-: (1+b)z - bz = z, so s = softmax(z)[y] for any beta_ce.
  z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 5)))
  y = jnp.array([[0, 4, 2], [1, 1, 3]])
  p = jnp.take_along_axis(jax_softmax(z), y[..., None], -1)[..., 0]
  np.testing.assert_allclose(contrastive_scores(z, z, y, beta_ce=3.0), p, rtol=1e-5)


def jax_softmax(z):
  e = np.exp(np.asarray(z) - np.asarray(z).max(-1, keepdims=True))
  return jnp.asarray(e / e.sum(-1, keepdims=True))


def test_bad_inputs():
  with pytest.raises(ValueError, match="logits_neg"):
    contrastive_scores(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), int))
  with pytest.raises(ValueError, match="targets"):
    contrastive_scores(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros((1, 3), int))
  with pytest.raises(ValueError, match="score_l"):
    cdpo_weights(ZERO, ZERO[:, :2], M_W, M_L)
