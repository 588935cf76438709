"""LaSeR (spec §5): the spec's numeric case end to end, class-balance edges, verifier metrics."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.methods.laser import resolve_token_id
from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives import laser

LPZ = jnp.array([-13.0, -20.0, -25.0, -18.0])
RV = jnp.array([1.0, 0.0, 0.0, 1.0])
FIN = jnp.array([1.0, 1.0, 1.0, 0.0])


def test_spec_numeric_case():
  rs = laser.self_reward_scores(LPZ, beta_v=0.1, c_ref=-23.0)
  np.testing.assert_allclose(rs, [1.0, 0.3, -0.2, 0.5], atol=1e-6)
  w = laser.class_balance_weights(RV, FIN)
  np.testing.assert_allclose(w, [1.5, 0.75, 0.75, 1.5])
  sr = laser.self_reward_loss(rs, RV, FIN, w)
  np.testing.assert_allclose(sr, 0.024375, rtol=1e-5)
  np.testing.assert_allclose(0.1 * sr, 0.0024375, rtol=1e-5)
  a_v = group_relative_advantages(RV, 4, epsilon=1e-6)
  np.testing.assert_allclose(a_v, [0.866024, -0.866024, -0.866024, 0.866024], atol=1e-6)
  a_s = laser.self_reward_advantages(rs, FIN, a_v, 4, threshold=0.1)
  np.testing.assert_allclose(a_s, [1.430997, -0.053000, -0.688999, -0.688999], atol=1e-5)
  np.testing.assert_allclose(laser.mix_advantages(a_v, a_s, tau=0.1),
                             [0.922521, -0.784722, -0.848321, 0.710522], atol=1e-5)


def test_low_spread_group_falls_back_to_verifier_advantage():
  rs = jnp.array([0.5, 0.52, 0.51, 0.5])                      # std of clip(r_s) < T = 0.1
  a_v = jnp.array([1.0, -1.0, 0.5, -0.5])
  np.testing.assert_allclose(laser.self_reward_advantages(rs, jnp.ones(4), a_v, 4), a_v)
  # Group size 1: μ = 0, σ = 1 > T, so A_s = clip(r_s, 0, 1).
  np.testing.assert_allclose(laser.self_reward_advantages(jnp.array([1.7, 0.2]), jnp.ones(2),
                                                          jnp.zeros(2), 1), [1.0, 0.2])
  np.testing.assert_allclose(laser.mix_advantages(a_v, a_v, tau=0.0), a_v)


def test_class_balance_edges():
  np.testing.assert_allclose(laser.class_balance_weights(jnp.zeros(3), jnp.ones(3)), [0.5] * 3)
  np.testing.assert_allclose(laser.class_balance_weights(jnp.ones(2), jnp.zeros(2)), [0.0, 0.0])
  # Balanced batch: every weight is 1.
  np.testing.assert_allclose(laser.class_balance_weights(jnp.array([1.0, 0.0]), jnp.ones(2)), [1, 1])


def test_loss_mean_is_over_all_rows_and_truncated_rows_add_nothing():
  rs = jnp.array([0.0, 0.0])
  loss = laser.self_reward_loss(rs, jnp.array([1.0, 1.0]), jnp.array([1.0, 0.0]), jnp.ones(2))
  np.testing.assert_allclose(loss, 0.5)
  np.testing.assert_allclose(laser.self_reward_loss(rs, jnp.ones(2), jnp.ones(2), jnp.ones(2),
                                                    denominator=4.0), 0.5)


def test_verification_metrics_and_auc():
  s = np.array([0.9, 0.2, 0.6, 0.4, 0.7])
  c = np.array([1, 0, 1, 0, 0])
  f = np.array([1, 1, 1, 1, 0])                               # the last row is truncated
  m = laser.verification_metrics(s, c, f)
  assert m["accuracy"] == 1.0 and m["auc"] == 1.0
  assert laser.binary_auc([0.1, 0.9], [1, 0]) == 0.0
  assert laser.binary_auc([0.5, 0.5], [1, 0]) == 0.5
  assert laser.binary_auc([0.3, 0.4], [1, 1]) == 0.5         # one class: finite 0.5
  assert laser.verification_metrics(s, c, np.zeros(5)) == {"accuracy": 0.5, "auc": 0.5}


def test_token_id_and_bad_inputs():
  assert resolve_token_id(-1, 58) == 57 and resolve_token_id(5, 58) == 5
  with pytest.raises(ValueError, match="token_id"):
    resolve_token_id(58, 58)
  with pytest.raises(ValueError, match="correct"):
    laser.self_reward_loss(jnp.zeros(3), jnp.zeros(2), jnp.zeros(3), jnp.zeros(3))
  with pytest.raises(ValueError, match="group_size"):
    laser.self_reward_advantages(jnp.zeros(4), jnp.ones(4), jnp.zeros(4), 3)
  with pytest.raises(ValueError, match="tau"):
    laser.mix_advantages(jnp.zeros(2), jnp.zeros(2), tau=1.5)
  with pytest.raises(ValueError, match="logp_z"):
    laser.self_reward_scores(jnp.zeros((2, 2)), beta_v=0.1, c_ref=-23.0)
