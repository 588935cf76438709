"""DAPO dynamic sampling and overlong shaping (spec §1.2), truncation masking, top-entropy mask."""
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import dynamic_sampling_groups
from tokenrl.objectives import mask_truncated_completions
from tokenrl.objectives import overlong_reward_penalty
from tokenrl.objectives import top_entropy_mask


def test_overlong_spec_numbers():
  lengths = jnp.array([16000, 16384, 18432, 20480, 20481])
  np.testing.assert_allclose(overlong_reward_penalty(lengths, 20480, 4096),
                             [0, 0, -0.5, -1.0, -1.0], atol=1e-7)
  np.testing.assert_allclose(overlong_reward_penalty(lengths, 20480, 4096, 0.5),
                             [0, 0, -0.25, -0.5, -0.5], atol=1e-7)
  np.testing.assert_allclose(overlong_reward_penalty(lengths, 20480, 0), 0.0)


def test_dynamic_sampling_spec_groups():
  rewards = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1], np.float32)
  kept = dynamic_sampling_groups(rewards, 4)
  np.testing.assert_array_equal(kept, [2])
  assert kept.dtype == np.int64
  np.testing.assert_array_equal(dynamic_sampling_groups(np.array([0.5, 0.5, 0.2, 0.7]), 2), [1])


def test_mask_truncated_completions():
  eos = 2
  tokens = jnp.array([[5, 2, 0], [5, 5, 5], [3, 0, 0], [7, 9, 0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], jnp.float32)
  out = mask_truncated_completions(mask, tokens, eos)
  np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
  # Several stop ids; an id only in the padding does not count.
  out = mask_truncated_completions(mask, tokens, [2, 9, 0])
  np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]])


def test_top_entropy_mask():
  h = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  # 0.5-quantile of [1,2,3,4] is 2.5: keep 3 and 4.
  np.testing.assert_array_equal(top_entropy_mask(h, jnp.ones((1, 4)), 0.5), [[0, 0, 1, 1]])
  # Only valid tokens enter the quantile: [1,2,3] → 0.5-quantile 2.0, keep 2 and 3.
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
  np.testing.assert_array_equal(top_entropy_mask(h, mask, 0.5), [[0, 1, 1, 0]])
  np.testing.assert_array_equal(top_entropy_mask(h, mask, 1.0), mask)
  # The quantile is over the whole batch, not per row: ρ = 0.2 of 10 tokens keeps the top 2.
  h2 = jnp.arange(10.0).reshape(2, 5)
  np.testing.assert_array_equal(top_entropy_mask(h2, jnp.ones((2, 5)), 0.2),
                                [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])


@pytest.mark.parametrize("call,match", [
    (lambda: dynamic_sampling_groups(np.zeros((5,)), 2), "group_size"),
    (lambda: dynamic_sampling_groups(np.zeros((2, 2)), 2), "rewards"),
    (lambda: overlong_reward_penalty(jnp.zeros((3,)), 10, 11), "overlong_buffer_len"),
    (lambda: mask_truncated_completions(jnp.ones((2, 3)), jnp.ones((2, 4), jnp.int32), 1),
     "tokens"),
    (lambda: top_entropy_mask(jnp.ones((2, 3)), jnp.ones((2, 3)), 0.0), "quantile"),
    (lambda: top_entropy_mask(jnp.ones((2, 3)), jnp.ones((3, 3)), 0.5), "mask"),
])
def test_validation(call, match):
  with pytest.raises(ValueError, match=match):
    call()
