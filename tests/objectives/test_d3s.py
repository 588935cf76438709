"""D³S (spec §3): max-variance subset, top-K tokens by |A|·H, schedule, GRPO when off."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import d3s, group_relative_advantages, policy_loss


def test_spec_sample_selection():
  a = group_relative_advantages(jnp.array([1.0, 0.5, 0.0, 0.0]), 4, ddof=0, epsilon=0.0)
  np.testing.assert_allclose(a, [1.5076, 0.3015, -0.9045, -0.9045], atol=1e-4)
  keep = np.asarray(d3s.select_samples(a, 4, 2, mode="group"))
  np.testing.assert_array_equal(keep, [True, False, True, False])   # {0, 2}: tie broken by index
  np.testing.assert_allclose(np.var(np.asarray(a)[keep]), 1.4545, atol=1e-4)


def test_max_variance_subset_equals_brute_force():
  rng = np.random.default_rng(0)
  values = np.round(rng.normal(size=(3, 6)), 1).astype(np.float32)   # rounding makes ties
  for n in range(7):
    keep = np.asarray(d3s.max_variance_subset(jnp.asarray(values), n))
    for row, k in zip(values, keep):
      assert k.sum() == n
      best = max(np.var(row[list(s)]) if n else 0.0 for s in itertools.combinations(range(6), n))
      np.testing.assert_allclose(np.var(row[k]) if n else 0.0, best, atol=1e-5)


def test_cross_group_pools_the_batch():
  # Group 0 is all mild, group 1 holds both extremes: pooling keeps n·B = 2 rows from group 1.
  a = jnp.array([0.1, -0.1, 2.0, -2.0])
  np.testing.assert_array_equal(d3s.select_samples(a, 2, 1, mode="cross"), [0, 0, 1, 1])
  np.testing.assert_array_equal(d3s.select_samples(a, 2, 1, mode="group").sum(), 2)
  np.testing.assert_array_equal(d3s.select_samples(a, 2, 2, mode="cross"), [1, 1, 1, 1])


def test_spec_token_selection():
  a = jnp.array([[1.0, 1.0, -1.0, -1.0]])
  h = jnp.array([[0.1, 2.0, 0.5, 0.05]])
  keep = d3s.select_tokens(a, h, jnp.ones((1, 4)), 0.5)
  np.testing.assert_array_equal(keep, [[0, 1, 1, 0]])


def test_token_selection_is_global_and_ignores_padding():
  a = jnp.array([1.0, 2.0])                       # [N] broadcast over tokens
  h = jnp.array([[1.0, 1.0, 9.0], [1.0, 0.1, 0.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 0]])       # the 9.0 is padding
  # scores [1, 1, -, 2, 0.2, -]; ⌈0.5·4⌉ = 2 kept: (1,0) and the first of the tied 1s.
  np.testing.assert_array_equal(d3s.select_tokens(a, h, mask, 0.5), [[1, 0, 0], [1, 0, 0]])


def test_spec_schedule():
  n, k = d3s.d3s_schedule(0.5, 4, 8, 0.2, 1.0)
  assert d3s.round_half_up(n) == 6
  np.testing.assert_allclose(k, 0.6)
  assert d3s.d3s_schedule(2.0, 4, 8, 0.2, 1.0) == (8, 1.0)
  assert d3s.round_half_up(2.5) == 3


def test_everything_kept_is_plain_grpo():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.normal(size=(4, 3)) - 2.0, jnp.float32)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  adv = jnp.array([0.9, -0.9, 0.5, -0.5])
  keep = d3s.select_samples(adv, 2, 2)
  sel = d3s.select_tokens(adv, jnp.asarray(rng.random((4, 3)), jnp.float32),
                          mask * keep[:, None], 1.0)
  np.testing.assert_array_equal(sel, mask)
  f = lambda lp, m: policy_loss(lp, jax.lax.stop_gradient(lp), adv, m,
                                loss_agg_mode="token-mean")[0]
  np.testing.assert_allclose(f(logp, sel), f(logp, mask))
  np.testing.assert_allclose(jax.grad(f)(logp, sel), jax.grad(f)(logp, mask))


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_select"):
    d3s.max_variance_subset(jnp.ones((1, 3)), 4)
  with pytest.raises(ValueError, match="mode"):
    d3s.select_samples(jnp.ones(4), 2, 1, mode="batch")
  with pytest.raises(ValueError, match="group_size"):
    d3s.select_samples(jnp.ones(5), 2, 1)
  with pytest.raises(ValueError, match="fraction"):
    d3s.select_tokens(jnp.ones(2), jnp.ones((2, 2)), jnp.ones((2, 2)), 0.0)
  with pytest.raises(ValueError, match="mask"):
    d3s.select_tokens(jnp.ones(2), jnp.ones((2, 2)), jnp.ones((2, 3)), 0.5)
