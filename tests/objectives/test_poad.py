"""POAD / BAD (spec §14): the spec's hand-worked case, a two-action case with an observation gap
worked by hand, the NTPO ablation, reductions to GAE, and the minibatch normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import gae_advantages
from tokenrl.objectives.poad import bad_advantages, normalize_advantages


def test_spec_case_one_terminal_action():
  r = jnp.array([[0.0, 0.0, 1.0]])
  v = jnp.array([[0.2, 0.5, 0.6]])
  m = jnp.ones((1, 3))
  end = jnp.array([[0, 0, 1]])
  a, ret = bad_advantages(r, v, m, end, 0.95, 0.95)
  np.testing.assert_allclose(a, [[0.756, 0.48, 0.40]], atol=1e-6)
  np.testing.assert_allclose(ret, [[0.956, 0.98, 1.0]], atol=1e-6)
  a1, _ = bad_advantages(r, v, m, end, 0.95, 1.0)                  # λ = 1: Â_j = R − V_j
  np.testing.assert_allclose(a1, [[0.8, 0.5, 0.4]], atol=1e-6)


# Two actions of two tokens, an observation token (mask 0, its value ignored) between them:
#   mask [1,1,0,1,1], end [0,1,0,0,1], R1 = 0.5, R2 = 1, V = [0.1, 0.2, 9, 0.4, 0.3], γ=0.9, λ=0.8
#   t4 (end, terminal): δ = 1 − 0.3 = 0.7                       Â = 0.7
#   t3 (inner):         δ = 0.3 − 0.4 = −0.1                    Â = −0.1 + 0.8·0.7 = 0.46
#   t1 (end):           δ = 0.5 + 0.9·0.4 − 0.2 = 0.66           Â = 0.66 + 0.72·0.46 = 0.9912
#   t0 (inner):         δ = 0.2 − 0.1 = 0.1                     Â = 0.1 + 0.8·0.9912 = 0.89296
# NTPO (γ inside too): t3: δ = 0.9·0.3 − 0.4 = −0.13, Â = −0.13 + 0.72·0.7 = 0.374;
#   t1: Â = 0.66 + 0.72·0.374 = 0.92928;  t0: δ = 0.9·0.2 − 0.1 = 0.08, Â = 0.08 + 0.72·0.92928.
TWO = dict(r=[[0, 0.5, 0, 0, 1.0]], v=[[0.1, 0.2, 9.0, 0.4, 0.3]], m=[[1, 1, 0, 1, 1]],
           end=[[0, 1, 0, 0, 1]])


def _two(ntpo):
  return bad_advantages(*(jnp.array(TWO[k], jnp.float32) for k in ("r", "v", "m", "end")),
                        0.9, 0.8, ntpo=ntpo)


def test_two_actions_by_hand():
  a, ret = _two(False)
  np.testing.assert_allclose(a, [[0.89296, 0.9912, 0.0, 0.46, 0.7]], atol=1e-6)
  np.testing.assert_allclose(ret, [[0.99296, 1.1912, 0.0, 0.86, 1.0]], atol=1e-6)


def test_ntpo_by_hand():
  a, _ = _two(True)
  np.testing.assert_allclose(a, [[0.08 + 0.72 * 0.92928, 0.92928, 0.0, 0.374, 0.7]], atol=1e-6)


def test_reductions_to_gae():
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  m = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 0]], jnp.float32)
  gae = gae_advantages(r, v, m, 0.9, 0.7)
  # Every token its own action: BAD is token-level GAE; NTPO always is.
  np.testing.assert_allclose(bad_advantages(r, v, m, jnp.ones_like(m), 0.9, 0.7)[0], gae[0],
                             atol=1e-6)
  np.testing.assert_allclose(bad_advantages(r, v, m, m * 0, 0.9, 0.7, ntpo=True)[0], gae[0],
                             atol=1e-6)
  # γ = 1: no discount anywhere, so BAD = GAE whatever the action boundaries.
  np.testing.assert_allclose(bad_advantages(r, v, m, m * 0, 1.0, 0.7)[0],
                             gae_advantages(r, v, m, 1.0, 0.7)[0], atol=1e-6)


def test_normalize_over_valid_tokens():
  a = jnp.array([[1.0, 3.0, 100.0]])
  m = jnp.array([[1, 1, 0]])
  np.testing.assert_allclose(normalize_advantages(a, m, epsilon=0.0), [[-1.0, 1.0, 0.0]],
                             atol=1e-6)
  # zeros_as_padding: stats over {2, 4} (mean 3, std 1) vs all three (mean 2, std sqrt(8/3)).
  a = jnp.array([[0.0, 2.0, 4.0]])
  m = jnp.ones((1, 3))
  np.testing.assert_allclose(normalize_advantages(a, m, zeros_as_padding=True, epsilon=0.0),
                             [[-3.0, -1.0, 1.0]], atol=1e-6)
  s = np.sqrt(8 / 3)
  np.testing.assert_allclose(normalize_advantages(a, m, epsilon=0.0), [[-2 / s, 0.0, 2 / s]],
                             atol=1e-6)


def test_bad_inputs():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="rewards"):
    bad_advantages(jnp.zeros(3), x, x, x, 0.9, 0.9)
  with pytest.raises(ValueError, match="action_end"):
    bad_advantages(x, x, x, jnp.zeros((2, 4)), 0.9, 0.9)
  with pytest.raises(ValueError, match="gamma, lam"):
    bad_advantages(x, x, x, x, 1.5, 0.9)
  with pytest.raises(ValueError, match="mask"):
    normalize_advantages(x, jnp.zeros((3, 2)))
