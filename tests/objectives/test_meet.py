"""MEET pure functions (spec §9, [abstract-level]: only the generic controlled CE is specified)."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import meet


def test_soft_prompt_embeddings_places_each_rows_control():
  embed = jnp.arange(12, dtype=jnp.float32).reshape(6, 2)            # [V=6, D=2]: row v = (2v, 2v+1)
  soft = jnp.asarray([[[100., 101.], [102., 103.]],                   # control 0, n_c = 2
                      [[200., 201.], [202., 203.]]])                  # control 1
  tokens = jnp.asarray([[0, 0, 0, 4, 5], [0, 0, 0, 3, 1]])
  slots = jnp.asarray([[-1, 0, 1, -1, -1], [0, 1, -1, -1, -1]])
  x = meet.soft_prompt_embeddings(embed, tokens, slots, soft, jnp.asarray([1, 0]))
  expect = [[[0, 1], [200, 201], [202, 203], [8, 9], [10, 11]],
            [[100, 101], [102, 103], [0, 1], [6, 7], [2, 3]]]
  np.testing.assert_array_equal(x, np.asarray(expect, np.float32))


def test_controlled_nll_hand_computed():
  logp = jnp.asarray([[-1.0, -2.0, -jnp.inf], [-0.5, -0.25, -3.0]])
  mask = jnp.asarray([[1, 1, 0], [1, 1, 1]])
  # −(−1 −2 −0.5 −0.25 −3) / 5 = 6.75 / 5 (the −inf on a masked token is ignored).
  assert float(meet.controlled_nll(logp, mask)) == pytest.approx(1.35)
  assert float(meet.controlled_nll(logp, mask, denominator=10.0)) == pytest.approx(0.675)
  assert float(meet.controlled_nll(logp, jnp.zeros_like(mask))) == 0.0


def test_control_gap():
  correct = jnp.asarray([1., 1., 0., 0., 1., 0.])
  control = jnp.asarray([0, 0, 0, 1, 1, 1])
  good, bad, gap = meet.control_gap(correct, control)
  assert float(good) == pytest.approx(2 / 3) and float(bad) == pytest.approx(1 / 3)
  assert float(gap) == pytest.approx(1 / 3)


def test_bad_inputs():
  with pytest.raises(ValueError, match="share D"):
    meet.soft_prompt_embeddings(jnp.zeros((6, 2)), jnp.zeros((1, 3), int), jnp.zeros((1, 3), int),
                                jnp.zeros((2, 1, 3)), jnp.zeros((1,), int))
  with pytest.raises(ValueError, match="control"):
    meet.soft_prompt_embeddings(jnp.zeros((6, 2)), jnp.zeros((1, 3), int), jnp.zeros((1, 3), int),
                                jnp.zeros((2, 1, 2)), jnp.zeros((2,), int))
  with pytest.raises(ValueError, match="logp and mask"):
    meet.controlled_nll(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="correct and control"):
    meet.control_gap(jnp.zeros((3,)), jnp.zeros((4,), int))
