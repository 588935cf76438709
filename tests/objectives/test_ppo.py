"""PPO with a value head (tokenrl.methods.ppo.ValueMethod, shared by poad and rto): the loss is
policy + c_v·value loss, values align with the completion positions, the trunk is shared unless
detached, and the config sections validate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.methods import METHODS
from tokenrl.methods.base import LossContext, completion_forward
from tokenrl.methods.ppo import explained_variance, rollout_values
from tokenrl.models import value_head as vh
from tokenrl.methods.config import resolve_objective, rl_config
from tokenrl.objectives import (POLICY_LOSS_OPTIONS, gae_advantages, loss_denominator, policy_loss,
                                value_loss)
from tokenrl.objectives.rto import last_token_indicator

from tests.configs_util import set_fields

CONFIG = models.tiny("qwen2", vocab_size=20, dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                     mlp_dim=24)
P, T, N = 3, 4, 4


def _cfg(objective, **fields):
  c = rl_config()
  c.objective = objective
  return set_fields(c, fields)


def _setup(advantages, detach=False):
  opts = resolve_objective(_cfg("ppo"))
  METHODS["ppo"].validate(None, opts)
  loss_options = {k: opts[k] for k in POLICY_LOSS_OPTIONS}
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 20, size=(N, P + T)).astype(np.int32)
  mask = np.ones((N, T), np.int32)
  mask[1, 2:] = 0
  batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.ones((N, P + T), jnp.int32),
           "mask": jnp.asarray(mask), "advantages": jnp.asarray(advantages, jnp.float32),
           "sampler_logp": jnp.zeros((N, T)), "token_weights": jnp.ones((N, T)),
           "old_values": jnp.asarray(rng.normal(size=(N, T)) * 0.1, jnp.float32),
           "returns": jnp.asarray(rng.normal(size=(N, T)), jnp.float32)}
  lctx = LossContext(model=CONFIG, prompt_len=P, temperature=1.0, remat=False,
                     loss_options=loss_options, section={"detach_trunk": detach},
                     denom=loss_denominator(batch["mask"], loss_options["loss_agg_mode"]))
  params = METHODS["ppo"].init_params(models.init_params(CONFIG, jax.random.key(0)), CONFIG,
                                      jax.random.key(1))
  return params, batch, lctx, opts


def test_values_align_with_completion_positions():
  params, batch, lctx, _ = _setup(np.zeros(N))
  v = rollout_values(params, np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"]), P,
                     CONFIG)
  _, _, hidden = completion_forward(params, batch["tokens"], batch["segment_ids"], lctx)
  np.testing.assert_allclose(v, vh.values(params["value_head"], hidden), atol=1e-5)
  assert v.shape == (N, T)
  with pytest.raises(ValueError, match="value_head"):
    rollout_values(vh.policy_params(params), np.asarray(batch["tokens"]),
                   np.asarray(batch["segment_ids"]), P, CONFIG)


def test_loss_is_policy_plus_weighted_value_loss():
  params, batch, lctx, opts = _setup(np.array([1.0, -0.5, 0.3, 2.0]))
  loss, metrics = METHODS["ppo"].loss_fn(params, batch, lctx)
  logp, entropy, hidden = completion_forward(params, batch["tokens"], batch["segment_ids"], lctx)
  pg, _ = policy_loss(logp, logp, batch["advantages"], batch["mask"],
                      sampler_logp=batch["sampler_logp"], entropy=entropy,
                      token_weights=batch["token_weights"], global_denominator=lctx.denom,
                      **lctx.loss_options)
  vl, _ = value_loss(vh.values(params["value_head"], hidden), batch["old_values"],
                     batch["returns"], batch["mask"], cliprange_value=0.2,
                     global_denominator=lctx.denom)
  np.testing.assert_allclose(loss, pg + opts["vf_coef"] * vl, rtol=1e-5)
  # token-mean over this micro-batch = the whole batch here.
  np.testing.assert_allclose(metrics["value_loss"], vl, rtol=1e-5)
  for key in ("value_mean", "vf_clipfrac", "pg_loss"):
    assert np.isfinite(metrics[key])


@pytest.mark.parametrize("detach", [False, True])
def test_shared_trunk_gets_value_gradients_unless_detached(detach):
  # Zero advantages: the policy term has no gradient, so every trunk gradient is the value's.
  params, batch, lctx, _ = _setup(np.zeros(N), detach=detach)
  grads = jax.grad(lambda p: METHODS["ppo"].loss_fn(p, batch, lctx)[0])(params)
  assert float(jnp.abs(grads["value_head"]["w"]).sum()) > 0
  trunk = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(vh.policy_params(grads)))
  assert (trunk == 0.0) if detach else (trunk > 0.0)


def test_last_token_reward_gae_reduces_to_r_minus_v():
  # PPO's shaping: R on the last valid token; with γ = λ = 1, Â_t = R − V_t on valid tokens.
  m = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
  r = last_token_indicator(m) * jnp.array([2.0, -1.0])[:, None]
  v = jnp.array([[0.5, 1.0, 1.5, 7.0], [0.25, 3.0, 3.0, 3.0]])
  a, ret = gae_advantages(r, v, m, 1.0, 1.0)
  np.testing.assert_allclose(a, [[1.5, 1.0, 0.5, 0.0], [-1.25, 0, 0, 0]], atol=1e-6)
  np.testing.assert_allclose(ret, [[2.0, 2.0, 2.0, 0.0], [-1.0, 0, 0, 0]], atol=1e-6)


def test_explained_variance():
  m = np.array([[1, 1, 1, 0]])
  r = np.array([[1.0, 2.0, 3.0, 99.0]])
  assert explained_variance(r, r, m) == pytest.approx(1.0)
  assert explained_variance(np.full_like(r, 5.0), r, m) == pytest.approx(0.0)
  # V = [1, 1, 1]: Var(R − V) = Var([0, 1, 2]) = Var(R), so 0.
  assert explained_variance(np.ones_like(r), r, m) == pytest.approx(0.0)
  assert explained_variance(r, np.ones_like(r), m) == 0.0           # Var(R) = 0


def test_section_validation():
  assert resolve_objective(_cfg("ppo"))["advantage_estimator"] == "gae"
  with pytest.raises(ValueError, match="rl.poad.gamma"):
    resolve_objective(_cfg("poad", gamma=0.9))
  with pytest.raises(ValueError, match="rl.poad.delimiter|rl.poad.max_action_tokens"):
    resolve_objective(_cfg("poad", **{"poad.max_action_tokens": 1}))
  with pytest.raises(ValueError, match="rl.rto.dpo_workdir"):
    resolve_objective(_cfg("rto"))
  with pytest.raises(ValueError, match="exactly one"):
    resolve_objective(_cfg("rto", **{"rto.dpo_workdir": "/x", "rto.dpo_hf_path": "/y"}))
  with pytest.raises(ValueError, match="rl.rto.lam"):
    resolve_objective(_cfg("rto", lam=0.9, **{"rto.dpo_stand_in": "perturbed_policy"}))
  assert resolve_objective(_cfg("rto", **{"rto.dpo_stand_in": "perturbed_policy"}))["objective"] == "rto"
