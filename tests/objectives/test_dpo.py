"""DPO + token view + ipo/hinge/robust (spec §1e): hand-computed values and invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives.dpo import credit_map, dpo_loss, token_rewards
from tokenrl.objectives.pairwise import pairwise_logits, pairwise_loss

# Spec §1e: lr^w = [0.2, -0.1, 0.3] (sum 0.4), lr^l = [-0.4, -0.2] (sum -0.6), beta = 0.1.
# Written as lp_ref = 0 and lp_theta = lr; the rejected row is padded to T = 3 (mask 0).
LP_W = jnp.array([[0.2, -0.1, 0.3]])
LP_L = jnp.array([[-0.4, -0.2, -7.0]])
M_W = jnp.array([[1, 1, 1]])
M_L = jnp.array([[1, 1, 0]])
ZERO = jnp.zeros((1, 3))


def _loss(loss_type, eps=0.0):
  return float(pairwise_loss(LP_W, ZERO, M_W, LP_L, ZERO, M_L, beta=0.1, loss_type=loss_type,
                             label_smoothing=eps)[0])


def test_spec_numbers():
  loss, aux = dpo_loss(LP_W, ZERO, M_W, LP_L, ZERO, M_L, beta=0.1)
  np.testing.assert_allclose(aux["logits"], [0.1], rtol=1e-6)
  np.testing.assert_allclose(loss, 0.644397, atol=1e-6)
  np.testing.assert_allclose(aux["reward_chosen"], [0.04], atol=1e-7)
  np.testing.assert_allclose(aux["reward_rejected"], [-0.06], atol=1e-7)
  np.testing.assert_allclose(token_rewards(LP_W, ZERO, M_W, beta=0.1), [[0.02, -0.01, 0.03]],
                             atol=1e-7)
  np.testing.assert_allclose(token_rewards(LP_L, ZERO, M_L, beta=0.1), [[-0.04, -0.02, 0.0]],
                             atol=1e-7)
  np.testing.assert_allclose(_loss("sigmoid", 0.1), 0.654397, atol=1e-6)   # conservative DPO
  np.testing.assert_allclose(_loss("ipo"), 16.0, rtol=1e-5)                # (1.0 - 5)^2


def test_variants_hand_computed():
  # h = 0.1: hinge = max(0, 1 - h); robust = ((1-e)(-log s(h)) - e(-log s(-h))) / (1 - 2e).
  np.testing.assert_allclose(_loss("hinge"), 0.9, atol=1e-6)
  lp, ln = 0.6443966600735709, 0.7443966600735709   # -log sigmoid(0.1), -log sigmoid(-0.1)
  np.testing.assert_allclose(_loss("robust", 0.1), (0.9 * lp - 0.1 * ln) / 0.8, atol=1e-6)
  np.testing.assert_allclose(_loss("robust", 0.0), _loss("sigmoid"), atol=1e-7)


def test_gradient_coefficient():
  # dL/dh = -sigma(-h) and dh/dlp^w_t = beta, so dL/dlp^w_t = -beta*sigma(-h) = -0.047502.
  g = jax.grad(lambda lp: pairwise_loss(lp, ZERO, M_W, LP_L, ZERO, M_L, beta=0.1)[0])(LP_W)
  np.testing.assert_allclose(g, [[-0.047502] * 3], atol=1e-6)
  g = jax.grad(lambda lp: pairwise_loss(LP_W, ZERO, M_W, lp, ZERO, M_L, beta=0.1)[0])(LP_L)
  np.testing.assert_allclose(g, [[0.047502, 0.047502, 0.0]], atol=1e-6)   # padding: no gradient


def test_token_rewards_sum_to_sequence_reward_and_ignore_padding():
  rng = np.random.default_rng(0)
  lp = jnp.asarray(rng.normal(size=(3, 5)))
  ref = jnp.asarray(rng.normal(size=(3, 5))).at[0, 4].set(-jnp.inf)
  m = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  r = token_rewards(lp, ref, m, beta=0.5)
  assert np.all(np.isfinite(r)) and np.all(np.asarray(r)[np.asarray(m) == 0] == 0)
  np.testing.assert_allclose(r.sum(-1), 0.5 * ((lp - jnp.where(m > 0, ref, 0)) * m).sum(-1),
                             rtol=1e-6)


def test_reference_free_and_equal_policy():
  # Policy = reference: h = 0, loss = log 2 for every pair.
  loss, _ = dpo_loss(LP_W, LP_W, M_W, LP_L, LP_L, M_L, beta=0.1)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  loss, aux = dpo_loss(LP_W, LP_W, M_W, LP_L, LP_L, M_L, beta=0.1, reference_free=True)
  np.testing.assert_allclose(aux["logits"], [0.1], rtol=1e-6)


def test_credit_map():
  text = credit_map(["1", "9", "<eos>", "<pad>"], [0.02, -0.01, 0.03, 5.0], [1, 1, 1, 0])
  assert text == "1:+0.020 9:-0.010 <eos>:+0.030 | Σ=+0.040"
  assert credit_map(["\n"], [0.5]) == "\\n:+0.500 | Σ=+0.500"


def test_bad_inputs():
  with pytest.raises(ValueError, match="mask_w"):
    pairwise_logits(LP_W, LP_L, M_W[:, :2], M_L, coef_w=0.1, coef_l=0.1)
  with pytest.raises(ValueError, match="coef_l"):
    pairwise_logits(LP_W, LP_L, M_W, M_L, coef_w=0.1, coef_l=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="loss_type"):
    pairwise_loss(LP_W, ZERO, M_W, LP_L, ZERO, M_L, beta=0.1, loss_type="nope")
  with pytest.raises(ValueError, match="beta"):
    pairwise_loss(LP_W, ZERO, M_W, LP_L, ZERO, M_L, beta=0.0)
  with pytest.raises(ValueError, match="ref_logp"):
    dpo_loss(LP_W, ZERO[:, :2], M_W, LP_L, ZERO, M_L)
  with pytest.raises(ValueError, match="tokens"):
    credit_map(["a"], [0.1, 0.2])
