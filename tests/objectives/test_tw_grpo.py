"""TW-GRPO (spec §4): hand-worked token weights, GRPO at α = 1, detach flag, partial credit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import policy_loss
from tokenrl.objectives import tw_grpo as tw

# V = 2, G = 2, T = 2: response 1 is uniform at both positions, response 2 is [0.9, 0.1] then
# uniform.
SPEC_LOGP = jnp.log(jnp.array([[[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.5, 0.5]]]))
ONES = jnp.ones((2, 2), jnp.int32)


def test_spec_weights():
  d = tw.tw_response_divergence(SPEC_LOGP, ONES, 2)
  np.testing.assert_allclose(d[:, 0], [0.29968, 0.47060], atol=1e-5)
  np.testing.assert_allclose(d[:, 1], 0.0, atol=1e-7)
  np.testing.assert_allclose(tw.tw_divergence(SPEC_LOGP, ONES, 2), [[0.3851, 0.0]] * 2, atol=1e-4)
  w = tw.tw_token_weights(SPEC_LOGP, ONES, 2, alpha=1.7)
  np.testing.assert_allclose(w, [[1.7, 1.0], [1.7, 1.0]], atol=1e-6)


def test_padding_is_uniform_and_masked_out():
  # Both responses padded at t = 1 with arbitrary values: uniform there, so D̄ = 0 and w·m = 0.
  junk = SPEC_LOGP.at[:, 1].set(jnp.log(jnp.array([0.99, 0.01])))
  mask = jnp.array([[1, 0], [1, 0]])
  np.testing.assert_allclose(tw.tw_divergence(junk, mask, 2)[:, 1], 0.0, atol=1e-7)
  np.testing.assert_allclose(tw.tw_token_weights(junk, mask, 2, alpha=1.7), [[1.7, 0], [1.7, 0]],
                             atol=1e-6)


def test_group_ids_match_contiguous_groups_in_any_order():
  rng = np.random.default_rng(0)
  lp = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32))
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  w = tw.tw_token_weights(lp, mask, 2, alpha=1.5)
  perm = jnp.array([2, 0, 3, 1])
  w_perm = tw.tw_token_weights(lp[perm], mask[perm], group_ids=(perm // 2), alpha=1.5)
  np.testing.assert_allclose(w_perm, w[perm], atol=1e-6)
  assert float(w.max()) == pytest.approx(1.5, abs=1e-5)


def test_alpha_one_is_plain_grpo_loss_and_gradient():
  rng = np.random.default_rng(1)
  lp_full = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32))
  logp = lp_full[..., 0]
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  adv = jnp.array([0.9, -0.9, 0.5, -0.5])
  w = tw.tw_token_weights(lp_full, mask, 2, alpha=1.0)
  np.testing.assert_allclose(w, mask)
  f = lambda lp, tok_w: policy_loss(lp, jax.lax.stop_gradient(lp), adv, mask,
                                    loss_agg_mode="token-mean", token_weights=tok_w)[0]
  np.testing.assert_allclose(f(logp, w), f(logp, None), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f)(logp, w), jax.grad(f)(logp, None), rtol=1e-6)


def test_denominator_is_not_weighted():
  # token-mean: Σ m·w·ℓ / Σ m. With ρ = 1 the per-token loss is −A: (−1.7 − 1.0)·2 / 4 rows·tokens.
  logp = SPEC_LOGP[..., 0]
  w = tw.tw_token_weights(SPEC_LOGP, ONES, 2, alpha=1.7)
  loss, _ = policy_loss(logp, logp, jnp.array([1.0, 1.0]), ONES, loss_agg_mode="token-mean",
                        token_weights=w)
  np.testing.assert_allclose(loss, -(1.7 + 1.0) * 2 / 4, rtol=1e-6)


def test_detach_flag():
  fn = lambda lp, detach: tw.tw_token_weights(lp, ONES, 2, alpha=1.7, detach=detach).sum()
  lp = SPEC_LOGP.at[1, 1].set(jnp.log(jnp.array([0.6, 0.4])))
  np.testing.assert_array_equal(jax.grad(fn)(lp, True), 0.0)
  assert float(jnp.abs(jax.grad(fn)(lp, False)).sum()) > 0


def test_partial_credit_reward():
  assert tw.partial_credit_reward("A", "A,C") == 0.5
  assert tw.partial_credit_reward("A,C", "A,C") == 1.0
  assert tw.partial_credit_reward("C, A", " A ,C") == 1.0
  assert tw.partial_credit_reward("A,B", "A,C") == 0.0
  assert tw.partial_credit_reward("", "A") == 0.0
  assert tw.partial_credit_reward("B", "B") == 1.0


def test_bad_inputs():
  with pytest.raises(ValueError, match="logp_full"):
    tw.tw_divergence(jnp.zeros((2, 2)), ONES, 2)
  with pytest.raises(ValueError, match="mask"):
    tw.tw_divergence(SPEC_LOGP, jnp.ones((2, 3)), 2)
  with pytest.raises(ValueError, match="group_size"):
    tw.tw_divergence(SPEC_LOGP, ONES, 3)
  with pytest.raises(ValueError, match="group_ids"):
    tw.tw_divergence(SPEC_LOGP, ONES, group_ids=jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="alpha"):
    tw.tw_token_weights(SPEC_LOGP, ONES, 2, alpha=0.5)
  with pytest.raises(ValueError, match="pred"):
    tw.partial_credit_reward(None, "A")


def test_legacy_loss_fn_matches_detached_value_not_gradient():
  # The method's jitted loss: legacy_no_detach recomputes w from the current logits (group ids),
  # the default uses host weights. Same loss value; the legacy gradient also flows through w.
  from tokenrl import models
  from tokenrl.methods import METHODS
  from tokenrl.methods.base import LossContext
  cfg = models.tiny("qwen2", vocab_size=12, dim=16, num_heads=2, num_kv_heads=1, mlp_dim=24,
                    eos_ids=(1,), pad_id=0)
  params = models.init_params(cfg, jax.random.key(0))
  p, n = 2, 4
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 12, size=(n, p + 3)), jnp.int32)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], jnp.int32)
  logits, _ = models.forward(params, tokens[:, :-1], config=cfg)
  w = tw.tw_token_weights(jax.nn.log_softmax(logits[:, p - 1:]), mask, 2, alpha=1.7)
  mb = dict(tokens=tokens, segment_ids=jnp.ones_like(tokens), mask=mask,
            advantages=jnp.array([1.0, -1.0, 0.5, -0.5]), sampler_logp=jnp.zeros((n, 3)),
            tw_group_id=jnp.array([0, 0, 1, 1], jnp.int32))
  opts = dict(epsilon=0.2, epsilon_high=0.28, loss_agg_mode="token-mean")
  method = METHODS["tw_grpo"]

  def run(legacy, tok_w):
    lctx = LossContext(model=cfg, prompt_len=p, temperature=1.0, remat=False, loss_options=opts,
                       section={"alpha": 1.7, "legacy_no_detach": legacy}, denom=mask.sum())
    f = lambda prm: method.loss_fn(prm, {**mb, "token_weights": tok_w}, lctx)[0]
    return jax.value_and_grad(f)(params)

  v_det, g_det = run(False, w)
  v_leg, g_leg = run(True, jnp.ones((n, 3)))
  np.testing.assert_allclose(v_leg, v_det, rtol=1e-5)
  diff = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), g_det, g_leg))
  assert max(float(d) for d in diff) > 1e-6
