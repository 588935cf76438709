"""RMT (spec §10): budget, length reward and curriculum hand-worked values; host helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.data import tasks
from tokenrl.methods import rmt as m
from tokenrl.objectives import rmt


def test_spec_budget():
  got = [m.token_budget(t, 2, b0=800, b_min=1, gamma=0.2) for t in (0, 1, 2)]
  assert got == [800, 357, 160]
  assert m.token_budget(10, 10, b0=4, b_min=3, gamma=0.2) == 3   # floored at B_min


def test_spec_length_reward():
  r = rmt.length_reward(jnp.array([50, 100, 150, 200, 250]), 100, r_max=1.0)
  np.testing.assert_allclose(r, [0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(rmt.length_reward(jnp.array([0, 3]), 2, r_max=2.0), [0.0, 1.0])


def test_spec_curriculum():
  p = m.curriculum_probs(50, 30, 70, (0.6, 0.3, 0.1), (0.1, 0.3, 0.6))
  np.testing.assert_allclose(p, [0.35, 0.3, 0.35])
  assert m.curriculum_probs(10, 30, 70, (0.6, 0.3, 0.1), (0.1, 0.3, 0.6)) == (0.6, 0.3, 0.1)
  assert m.curriculum_probs(70, 30, 70, (0.6, 0.3, 0.1), (0.1, 0.3, 0.6)) == (0.1, 0.3, 0.6)


def test_reward_mixes_match_and_length():
  r = rmt.rmt_reward(jnp.array([1.0, 0.0, 1.0]), jnp.array([0, 4, 2]), 4, length_weight=0.25)
  np.testing.assert_allclose(r, [0.75, 0.25, 0.75 + 0.25 * 0.5])
  # w = 0: pure exact next-token match.
  np.testing.assert_allclose(rmt.rmt_reward(jnp.array([1.0, 0.0]), jnp.array([3, 3]), 4,
                                            length_weight=0.0), [1.0, 0.0])


def test_ntp_loss_is_weighted_nll_and_gradient_only_on_weighted_tokens():
  logp = jnp.log(jnp.array([[0.5, 0.25], [1.0, 0.5]]))
  w = jnp.array([[0.5, 0.0], [0.0, 0.5]])
  np.testing.assert_allclose(rmt.ntp_loss(logp, w), -(0.5 * np.log(0.5) + 0.5 * np.log(0.5)),
                             rtol=1e-6)
  g = jax.grad(rmt.ntp_loss)(logp, w)
  np.testing.assert_allclose(g, -w)


def test_tiers_from_the_arith_task_tiers():
  # data.tiers 'add:1-2,sub:1-2' (quickstart): 2, 3 or 4 operand digits = easy, medium, hard.
  exs = tasks.make_examples("arith", "train", 200, 0, tiers="add:1-2,sub:1-2")
  scores = [m.example_difficulty(e) for e in exs]
  assert set(scores) == {2, 3, 4}
  tiers = m.difficulty_tiers(scores)
  for s, t in zip(scores, tiers):
    assert t == s - 2
  np.testing.assert_array_equal(m.difficulty_tiers([5, 5, 7]), [0, 0, 1])   # hard tier empty


def test_curriculum_sampler_draws_only_from_the_chosen_tiers():
  tiers = np.array([0, 0, 1, 2, 2, 2])
  rng = np.random.default_rng(0)
  idx, drawn = m.sample_curriculum(tiers, (0.0, 0.0, 1.0), 50, rng)
  assert set(drawn) == {2} and set(idx) <= {3, 4, 5}
  # Mass on an empty tier moves to the non-empty ones.
  idx, drawn = m.sample_curriculum(np.array([0, 0]), (0.5, 0.0, 0.5), 10, rng)
  assert set(drawn) == {0}
  with pytest.raises(ValueError, match="probs"):
    m.sample_curriculum(np.array([0, 0]), (0.0, 1.0, 0.0), 3, rng)


def test_parse_action():
  # '#' = 9, eos = 2: c = [5, 6], ŷ = 7, the action is 4 tokens (c, '#', ŷ).
  assert m.parse_action([5, 6, 9, 7, 8, 2], close_id=9, eos_ids=[2]) == (2, 7, 4)
  assert m.parse_action([7, 8, 2], close_id=9, eos_ids=[2]) == (0, 7, 1)
  assert m.parse_action([5, 9, 2], close_id=9, eos_ids=[2]) == (1, -1, 3)
  assert m.parse_action([2], close_id=9, eos_ids=[2]) == (0, -1, 1)


def test_bad_inputs():
  with pytest.raises(ValueError, match="length"):
    rmt.length_reward(jnp.zeros((2, 2)), 3)
  with pytest.raises(ValueError, match="correct"):
    rmt.rmt_reward(jnp.zeros(3), jnp.zeros(2), 4, length_weight=0.1)
  with pytest.raises(ValueError, match="weights"):
    rmt.ntp_loss(jnp.zeros((2, 3)), jnp.zeros((2, 2)))


def test_validate_names_the_field():
  method = m.Rmt()
  sec = method.config()
  sec.tier_probs_end = (0.5, 0.5, 0.5)
  with pytest.raises(ValueError, match="rl.rmt.tier_probs_end"):
    method.validate(sec, {})
