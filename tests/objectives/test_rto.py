"""RTO token rewards (spec objectives-preference-value §3): the spec's numeric case through GAE,
active clips, and the reduction to PPO's last-token reward."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import gae_advantages
from tokenrl.objectives.rto import last_token_indicator, rto_token_rewards

SPEC = dict(dpo=[[-1.0, -2.0, -0.5, -3.0]], ref=[[-1.5, -1.0, -0.5, -1.0]],
            old=[[-1.2, -1.5, -0.6, -2.0]], mask=[[1, 1, 1, 0]])


def _spec_rewards(**kw):
  args = [jnp.array(SPEC[k]) for k in ("dpo", "ref", "old")]
  return rto_token_rewards(*args, jnp.array([1.3]), jnp.array(SPEC["mask"]), **kw)


def test_spec_case():
  r, metrics = _spec_rewards(dpo_reward_scale=0.05, dpo_reward_clip=0.05, kl_coef=0.01)
  np.testing.assert_allclose(r, [[0.022, -0.045, 1.301, 0.0]], atol=1e-6)
  np.testing.assert_allclose(metrics["dpo_reward"], (0.025 - 0.05) / 3, atol=1e-6)
  np.testing.assert_allclose(metrics["kl_reward"], (0.3 - 0.5 - 0.1) / 3, atol=1e-6)
  a, ret = gae_advantages(r, jnp.array([[0.5, 0.6, 0.9, 0.0]]), jnp.array(SPEC["mask"]), 1.0, 0.95)
  np.testing.assert_allclose(a, [[0.726153, 0.63595, 0.401, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ret, [[1.226153, 1.23595, 1.301, 0.0]], atol=1e-6)


def test_clips_scale_first_then_clip():
  # β1 = 0.1: d = [0.05, −0.1, 0] → clipped to [0.05, −0.05, 0]; R = 15 clipped to 10.
  args = [jnp.array(SPEC[k]) for k in ("dpo", "ref", "old")]
  r, _ = rto_token_rewards(*args, jnp.array([15.0]), jnp.array(SPEC["mask"]),
                           dpo_reward_scale=0.1, dpo_reward_clip=0.05, kl_coef=0.0,
                           reward_clip=10.0)
  np.testing.assert_allclose(r, [[0.05, -0.05, 10.0, 0.0]], atol=1e-6)
  r, _ = rto_token_rewards(*args, jnp.array([15.0]), jnp.array(SPEC["mask"]),
                           dpo_reward_scale=0.1, dpo_reward_clip=0.0, kl_coef=0.0,
                           reward_clip=0.0)                          # both clips off
  np.testing.assert_allclose(r, [[0.05, -0.1, 15.0, 0.0]], atol=1e-6)


def test_reduces_to_last_token_reward():
  r, _ = _spec_rewards(dpo_reward_scale=0.0, kl_coef=0.0)
  np.testing.assert_allclose(r, [[0.0, 0.0, 1.3, 0.0]], atol=1e-7)


def test_last_token_indicator():
  m = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(last_token_indicator(m),
                                [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])


def test_bad_inputs():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="rewards"):
    rto_token_rewards(x, x, x, jnp.zeros(3), x)
  with pytest.raises(ValueError, match="old_logp"):
    rto_token_rewards(x, x, jnp.zeros((2, 4)), jnp.zeros(2), x)
  with pytest.raises(ValueError, match="kl_coef"):
    rto_token_rewards(x, x, x, jnp.zeros(2), x, kl_coef=-1.0)
