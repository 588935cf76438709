"""HAPO (spec §5e): every hand-worked number, the hand-computed loss, the sampler's tempered
log-probs on a toy model, and the reduction to the dual-clip token-mean PPO loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.objectives import hapo, policy_loss
from tokenrl.rollout import sample

H5 = jnp.exp(jnp.array([[-2.0, -1.0, 0.0, 1.0, 2.0]]))   # log-entropies −2..2 in one row
M5 = jnp.ones((1, 5), jnp.int32)


def test_token_level_group_average():
  a = hapo.token_group_average_advantages(jnp.array([1.0, 0.0]), jnp.array([1, 3]), 2)
  np.testing.assert_allclose(a, [1.7320, -0.5774], atol=1e-4)
  a, fb = hapo.token_group_average_advantages(jnp.array([1.0, 0.0]), jnp.array([1, 99]), 2,
                                              with_fallback=True)
  np.testing.assert_allclose(a, [0.7071, -0.7071], atol=1e-4)   # GRPO fallback, ddof = 1
  np.testing.assert_array_equal(fb, [True])
  # Groups are independent: the first keeps the token-level value.
  a = hapo.token_group_average_advantages(jnp.array([1.0, 0.0, 1.0, 0.0]),
                                          jnp.array([1, 3, 1, 99]), 2)
  np.testing.assert_allclose(a, [1.7320, -0.5774, 0.7071, -0.7071], atol=1e-4)


def test_normalised_entropy_intended_and_legacy_sign():
  stats = hapo.entropy_norm_stats(H5, M5, pivot=0.5)
  np.testing.assert_allclose(stats, [0.0, np.sqrt(2), np.sqrt(2), np.sqrt(2)], atol=1e-5)
  np.testing.assert_allclose(hapo.normalized_entropy(H5, M5, pivot=0.5),
                             [[-1, -0.5, 0, 0.5, 1]], atol=1e-5)
  np.testing.assert_allclose(hapo.normalized_entropy(H5, M5, pivot=0.5, legacy_sign=True),
                             [[1, 0.5, 0, 0.5, 1]], atol=1e-5)
  np.testing.assert_allclose(hapo.entropy_norm_stats(H5, M5, pivot=0.8)[0], 1.0, atol=1e-6)
  # Padding is ignored by the statistics and zeroed in the output.
  h = jnp.concatenate([H5, jnp.full((1, 1), 1e9)], axis=1)
  m = jnp.concatenate([M5, jnp.zeros((1, 1), jnp.int32)], axis=1)
  np.testing.assert_allclose(hapo.normalized_entropy(h, m, pivot=0.5),
                             [[-1, -0.5, 0, 0.5, 1, 0]], atol=1e-5)


def test_temperature_clip_and_redistribution_numbers():
  np.testing.assert_allclose(hapo.adaptive_temperature(jnp.array(-1.0), 1.0, 0.05), 0.95)
  np.testing.assert_allclose(hapo.adaptive_temperature(jnp.array(3.0), 1.0, 0.05), 1.05)
  h = jnp.array([-1.0, 1.0, 0.5, -0.5])
  el, eh = hapo.adaptive_clip(h, 0.2, 0.2, 1.0)
  np.testing.assert_allclose(el, [0.4, 0.2, 0.2, 0.3], atol=1e-7)
  np.testing.assert_allclose(eh, [0.2, 0.4, 0.3, 0.2], atol=1e-7)
  h = jnp.array([0.5, 0.5, -0.5, -0.5])
  rho = jnp.array([1.0, 1.2, 1.0, 1.2])
  el, eh = hapo.adaptive_clip(h, 0.2, 0.2, 1.0)
  a = hapo.redistribute_advantages(jnp.ones(4), rho, h, el, eh, 1.0)
  np.testing.assert_allclose(a, [1.0, 1.5, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("legacy_sign, want", [(False, -7.975 / 5), (True, -9.95 / 5)])
def test_loss_hand_computed(legacy_sign, want):
  # A = 1, ρ = 1.25 on every token, ĥ = [−1, −.5, 0, .5, 1] (legacy [1, .5, 0, .5, 1]); all
  # outside their neutral zones. Low-entropy tokens keep A = 1 and clip at 1 + 0.2: −1.2 each;
  # ĥ = .5: A' = 1.5, upper clip 1.3 unbound: −1.875; ĥ = 1: A' = 2, clip 1.4: −2.5.
  logp = jnp.full((1, 5), jnp.log(1.25))
  loss, metrics = hapo.hapo_policy_loss(logp, jnp.zeros((1, 5)), jnp.ones(1), M5, H5,
                                        entropy_pivot=0.5, legacy_sign=legacy_sign)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert 0 < float(metrics["hapo_redistributed_fraction"]) < 1


def test_dual_clip_caps_negative_advantages():
  loss, _ = hapo.hapo_policy_loss(jnp.full((1, 1), jnp.log(5.0)), jnp.zeros((1, 1)),
                                  -jnp.ones(1), jnp.ones((1, 1)), jnp.ones((1, 1)))
  np.testing.assert_allclose(loss, 3.0, rtol=1e-6)   # min(ρ·1, c = 3)


def test_knobs_off_is_dual_clip_token_mean_ppo():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(size=(4, 3)) - 2.0, jnp.float32)
  old = logp + jnp.asarray(rng.normal(size=(4, 3)) * 0.3, jnp.float32)
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
  adv = jnp.array([0.9, -0.9, 0.5, -0.5])
  ent = jnp.asarray(rng.random((4, 3)) + 0.1, jnp.float32)
  f = lambda lp: hapo.hapo_policy_loss(lp, old, adv, mask, ent, clip_alpha=0.0, adv_beta=0.0)[0]
  g = lambda lp: policy_loss(lp, old, adv, mask, clip_ratio_c=3.0, loss_agg_mode="token-mean")[0]
  np.testing.assert_allclose(f(logp), g(logp), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f)(logp), jax.grad(g)(logp), rtol=1e-5, atol=1e-7)


CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)


@functools.lru_cache(maxsize=1)
def _params():
  return models.init_params(CONFIG, jax.random.key(0))


def test_sampler_logprobs_are_those_of_the_tempered_distribution():
  # Previous-step stats put the pivot at log H = 0.5: every token is adapted (T ≠ T₀ = 0.8).
  proc = hapo.AdaptiveTemperature(center=0.5, sigma=1.0, scale_pos=0.4, scale_neg=2.0, tau=0.5)
  prompts = [[5, 6, 7], [8, 9]]
  out = sample(_params(), prompts, config=CONFIG, rng=jax.random.key(3), max_new_tokens=4,
               temperature=0.8, stop_tokens=(), logit_processor=proc)
  stats = jnp.array([0.5, 1.0, 0.4, 2.0])
  temps_seen = []
  for row, prompt in enumerate(prompts):
    comp = np.asarray(out.tokens[row])
    seq = jnp.asarray([list(prompt) + list(comp[:-1])])
    logits, _ = models.forward(_params(), seq, config=CONFIG)
    logits = np.asarray(logits[0, len(prompt) - 1:], np.float64)           # [T,V] raw
    z = logits / 0.8
    lp0 = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    ent = -(np.exp(lp0) * lp0).sum(-1)                                      # entropy at T₀
    temp = 0.8 * np.asarray(hapo.adaptive_temperature(
        hapo.apply_entropy_norm(jnp.asarray(ent, jnp.float32), stats), 1.0, 0.5))
    zt = logits / temp[:, None]
    lpt = zt - np.log(np.exp(zt - zt.max(-1, keepdims=True)).sum(-1, keepdims=True)) - zt.max(-1, keepdims=True)
    want = lpt[np.arange(len(comp)), comp]
    np.testing.assert_allclose(np.asarray(out.logprobs[row]), want, atol=2e-4)
    want_ent = -(np.exp(lpt) * lpt).sum(-1)
    np.testing.assert_allclose(np.asarray(out.entropy[row]), want_ent, atol=2e-4)
    # The test bites: the tempered log-probs differ from those at T₀.
    assert np.abs(want - lp0[np.arange(len(comp)), comp]).max() > 1e-3
    temps_seen.append(temp)
  assert np.all(np.abs(np.concatenate(temps_seen) - 0.8) > 1e-3)


def test_statistics_as_traced_sampler_state_equal_the_static_fields():
  # The method passes the statistics as processor_state (no recompilation per RL step); the
  # sampled tokens and log-probs equal those of a processor holding them as fields.
  prompts = [[5, 6, 7], [8, 9]]
  fields = hapo.AdaptiveTemperature(center=0.5, sigma=1.0, scale_pos=0.4, scale_neg=2.0, tau=0.5)
  static = hapo.AdaptiveTemperature(0.0, 1.0, 1.0, 1.0, tau=0.5)
  kw = dict(config=CONFIG, rng=jax.random.key(3), max_new_tokens=4, temperature=0.8, stop_tokens=())
  a = sample(_params(), prompts, logit_processor=fields, **kw)
  b = sample(_params(), prompts, logit_processor=static,
             processor_state=np.array([0.5, 1.0, 0.4, 2.0], np.float32), **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_allclose(np.asarray(a.logprobs), np.asarray(b.logprobs), atol=1e-6)


def test_processor_with_tau_zero_is_identity():
  proc = hapo.AdaptiveTemperature(center=0.0, sigma=1.0, scale_pos=1.0, scale_neg=1.0, tau=0.0)
  logits = jnp.array([[1.0, 2.0, 3.0]])
  np.testing.assert_allclose(proc(logits, None), logits)
  assert hash(proc) == hash(hapo.AdaptiveTemperature(0.0, 1.0, 1.0, 1.0, 0.0))


def test_bad_inputs():
  with pytest.raises(ValueError, match="mask"):
    hapo.entropy_norm_stats(H5, jnp.ones((1, 4)))
  with pytest.raises(ValueError, match="pivot"):
    hapo.entropy_norm_stats(H5, M5, pivot=1.5)
  with pytest.raises(ValueError, match="stats"):
    hapo.apply_entropy_norm(H5, jnp.ones(3))
  with pytest.raises(ValueError, match="lengths"):
    hapo.token_group_average_advantages(jnp.ones(4), jnp.ones(3), 2)
  with pytest.raises(ValueError, match="entropy"):
    hapo.hapo_policy_loss(jnp.zeros((1, 5)), jnp.zeros((1, 5)), jnp.ones(1), M5, H5[:, :4])
  with pytest.raises(ValueError, match="clip_ratio_c"):
    hapo.hapo_policy_loss(jnp.zeros((1, 5)), jnp.zeros((1, 5)), jnp.ones(1), M5, H5,
                          clip_ratio_c=0.5)
