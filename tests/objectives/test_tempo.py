"""TEMPO (spec §6): the hand-worked tree, GRPO at non-branching tokens, λ flag, bad inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives.tempo import branch_stats, prefix_match, tempo_advantages

# Spec §6 (e): y1 = abc (r 1), y2 = abd (0), y3 = aef (1), y4 = ghi (0); a..i -> 1..9.
TOKENS = jnp.array([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9]], jnp.int32)
MASK = jnp.ones((4, 3), jnp.int32)
REWARDS = jnp.array([1.0, 0.0, 1.0, 0.0])
NO_STD = np.array([[2 / 3, 1 / 3, 1.0], [-1 / 3, -2 / 3, -1.0], [2 / 3, 5 / 6, 0.5],
                   [-1.0, -0.5, -0.5]])


def test_spec_example_without_std():
  a = tempo_advantages(TOKENS, MASK, REWARDS, 4, norm_adv_by_std=False)
  np.testing.assert_allclose(a, NO_STD, atol=1e-6)


def test_spec_example_with_std():
  a = tempo_advantages(TOKENS, MASK, REWARDS, 4, epsilon=0.0)
  want = [[1.1547, 0.5774, 1.7321], [-0.5774, -1.1547, -1.7321], [1.1547, 1.4434, 0.8660],
          [-1.7321, -0.8660, -0.8660]]
  np.testing.assert_allclose(a, want, atol=1e-4)
  np.testing.assert_allclose(a, NO_STD / np.sqrt(1 / 3), atol=1e-5)  # σ (ddof=1) = 0.57735


def test_prefix_sets_of_spec_example():
  eq = np.asarray(prefix_match(TOKENS, MASK, 4))[0]               # [G,G,T]
  assert eq[0, :, 0].tolist() == [True, True, True, False]        # 'a' shared by y1..y3
  assert eq[0, :, 1].tolist() == [True, True, False, False]       # 'ab'
  assert eq[0, :, 2].tolist() == [True, False, False, False]      # alone at 'c'
  branching, nodes = branch_stats(TOKENS, MASK, 4)
  # Splits: root -> {a..}, {g..}; node 'a' -> 'ab', 'ae'; node 'ab' -> 'abc', 'abd'.
  np.testing.assert_array_equal(branching, [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(nodes, [3.0])


def test_equals_grpo_at_non_branching_tokens():
  rng = np.random.default_rng(0)
  # Two groups of G = 4 over a 3-token alphabet (many shared prefixes), ragged lengths.
  tokens = jnp.asarray(rng.integers(1, 4, size=(8, 6)), jnp.int32)
  lengths = rng.integers(1, 7, size=8)
  mask = jnp.asarray(np.arange(6)[None, :] < lengths[:, None], jnp.int32)
  rewards = jnp.asarray(rng.integers(0, 2, size=8), jnp.float32)
  a = np.asarray(tempo_advantages(tokens, mask, rewards, 4))
  grpo = np.asarray(group_relative_advantages(rewards, 4))
  branching, _ = branch_stats(tokens, mask, 4)
  plain = (np.asarray(branching) == 0) & (np.asarray(mask) == 1)
  assert plain.any() and (np.asarray(branching) > 0).any()
  np.testing.assert_allclose(a[plain], np.broadcast_to(grpo[:, None], a.shape)[plain], atol=1e-6)
  np.testing.assert_array_equal(a[np.asarray(mask) == 0], 0.0)


def test_distinct_first_tokens_telescope_to_own_reward():
  # All G completions differ at t = 0: A[i,0] = (r_i − μ + (r_i − μ)), then plain GRPO.
  tokens = jnp.array([[1, 1], [2, 1], [3, 1], [4, 1]], jnp.int32)
  a = tempo_advantages(tokens, jnp.ones((4, 2), jnp.int32), REWARDS, 4, norm_adv_by_std=False)
  np.testing.assert_allclose(a[:, 0], 2 * (np.asarray(REWARDS) - 0.5), atol=1e-6)
  np.testing.assert_allclose(a[:, 1], np.asarray(REWARDS) - 0.5, atol=1e-6)


def test_lambda_weights_td_term_unless_legacy():
  half = tempo_advantages(TOKENS, MASK, REWARDS, 4, norm_adv_by_std=False, td_lambda=0.5)
  grpo = np.asarray(REWARDS - 0.5)[:, None]
  np.testing.assert_allclose(half, grpo + 0.5 * (NO_STD - grpo), atol=1e-6)
  legacy = tempo_advantages(TOKENS, MASK, REWARDS, 4, norm_adv_by_std=False, td_lambda=0.5,
                            legacy_unused_lambda=True)
  np.testing.assert_allclose(legacy, NO_STD, atol=1e-6)
  zero = tempo_advantages(TOKENS, MASK, REWARDS, 4, norm_adv_by_std=False, td_lambda=0.0)
  np.testing.assert_allclose(zero, np.broadcast_to(grpo, (4, 3)), atol=1e-6)


def test_finished_completion_never_matches_unless_legacy_padding():
  # y1 = 'a<eos>' then pad 0; y2 = 'a' then a live token that equals the pad id 0... use 'x'=0.
  tokens = jnp.array([[5, 2, 0], [5, 2, 0], [6, 1, 1], [6, 1, 1]], jnp.int32)
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], jnp.int32)
  r = jnp.array([1.0, 0.0, 0.0, 0.0])
  eq = np.asarray(prefix_match(tokens, mask, 4))[0]
  assert not eq[1, 0, 2]                                           # y1 ended: no match at t=2
  assert np.asarray(prefix_match(tokens, mask, 4, match_padding=True))[0][1, 0, 2]
  a = np.asarray(tempo_advantages(tokens, mask, r, 4, norm_adv_by_std=False))
  # y2 at t=2: node {y1,y2} (value 0.5) -> {y2} (value 0): δ = −0.5 on top of r − μ = −0.25.
  np.testing.assert_allclose(a[1, 2], -0.75, atol=1e-6)
  legacy = np.asarray(tempo_advantages(tokens, mask, r, 4, norm_adv_by_std=False,
                                       match_padding=True))
  np.testing.assert_allclose(legacy[1, 2], -0.25, atol=1e-6)


def test_bad_inputs():
  with pytest.raises(ValueError, match="tokens"):
    tempo_advantages(TOKENS[0], MASK[0], REWARDS, 4)
  with pytest.raises(ValueError, match="mask"):
    tempo_advantages(TOKENS, MASK[:, :2], REWARDS, 4)
  with pytest.raises(ValueError, match="rewards"):
    tempo_advantages(TOKENS, MASK, REWARDS[:3], 4)
  with pytest.raises(ValueError, match="group_size"):
    tempo_advantages(TOKENS, MASK, REWARDS, 3)
