"""Policy/value losses: spec hand numbers (§1.2–1.4), clipping, GSPO, TIS, and accumulation invariants."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import LOSS_AGG_MODES
from tokenrl.objectives import aggregate_loss
from tokenrl.objectives import loss_denominator
from tokenrl.objectives import policy_loss
from tokenrl.objectives import truncated_importance_weights
from tokenrl.objectives import value_loss

# Spec §1.2/1.3: two sequences of lengths 1 and 3, per-token losses [2] and [1,1,1].
LOSS = jnp.array([[2.0, 5.0, 5.0], [1.0, 1.0, 1.0]])     # 5.0 sits on padding
MASK = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.mark.parametrize("mode,kwargs,expected", [
    ("token-mean", {}, 1.25),                                   # (2+3)/4
    ("seq-mean-token-mean", {}, 1.5),                           # (2/1 + 3/3)/2
    ("seq-mean-token-sum", {}, 2.5),                            # (2 + 3)/2
    ("seq-mean-token-sum-norm", dict(loss_scale_factor=4), 0.625),  # (2+3)/(2·4)
    ("seq-mean-token-sum-norm", {}, 5 / 6),                     # L_norm = T = 3
])
def test_aggregation_spec_numbers(mode, kwargs, expected):
  np.testing.assert_allclose(aggregate_loss(LOSS, MASK, mode, **kwargs), expected, rtol=1e-6)


def test_denominators():
  assert float(loss_denominator(MASK, "token-mean")) == 4
  assert float(loss_denominator(MASK, "seq-mean-token-mean")) == 2
  assert float(loss_denominator(MASK, "seq-mean-token-sum")) == 2
  assert float(loss_denominator(MASK, "seq-mean-token-sum-norm")) == 6
  assert float(loss_denominator(MASK, "seq-mean-token-sum-norm", loss_scale_factor=4)) == 8
  assert float(aggregate_loss(LOSS, jnp.zeros_like(MASK), "token-mean")) == 0.0


def test_ratio_one_token_mean_is_minus_mean_advantage():
  # One update per rollout: logp = old_logp in value, so ρ = 1, nothing clips, and the loss is
  # −Σ m·A / Σ m; its gradient is −A·m/Σm per token.
  logp = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.6]]))
  adv = jnp.array([0.8, -1.1])
  loss, metrics = policy_loss(logp, logp, adv, MASK, epsilon_high=0.28, clip_ratio_c=3.0)
  np.testing.assert_allclose(loss, -(0.8 - 3 * 1.1) / 4, rtol=1e-6)
  assert float(metrics["clipfrac"]) == 0.0 and float(metrics["clipfrac_dual"]) == 0.0
  np.testing.assert_allclose(metrics["ratio_mean"], 1.0)
  np.testing.assert_allclose(metrics["approx_kl"], 0.0, atol=1e-7)
  g = jax.grad(lambda x: policy_loss(x, logp, adv, MASK)[0])(logp)
  np.testing.assert_allclose(g, -adv[:, None] * MASK / 4, rtol=1e-6)


OPTION_SETS = [
    dict(),
    dict(epsilon_high=0.28, clip_ratio_c=3.0),
    dict(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
         loss_agg_mode="seq-mean-token-mean"),
    dict(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=8.0),
    dict(tis_imp_ratio_cap=2.0),
]


def _batch():
  rng = np.random.RandomState(0)
  n, t = 6, 5
  old = jnp.asarray(np.log(rng.uniform(0.05, 1.0, (n, t))), jnp.float32)
  logp = old + jnp.asarray(rng.uniform(-0.5, 0.5, (n, t)), jnp.float32)
  sampler = old + jnp.asarray(rng.uniform(-0.3, 0.3, (n, t)), jnp.float32)
  lengths = np.array([5, 1, 3, 4, 2, 5])
  mask = jnp.asarray(np.arange(t)[None] < lengths[:, None], jnp.float32)
  adv = jnp.asarray(rng.randn(n), jnp.float32)
  return logp, old, sampler, adv, mask


@pytest.mark.parametrize("options", OPTION_SETS)
def test_zero_advantage_gives_zero_policy_gradient(options):
  logp, old, sampler, _, mask = _batch()
  g = jax.grad(lambda x: policy_loss(x, old, jnp.zeros(6), mask, sampler_logp=sampler,
                                     **options)[0])(logp)
  np.testing.assert_array_equal(g, 0.0)


def test_clipping_by_hand():
  old = jnp.zeros((1, 4))
  logp = jnp.log(jnp.array([[1.5, 1.5, 0.5, 0.5]]))
  adv = jnp.array([[1.0, 1.0, -1.0, 1.0]])
  ones = jnp.ones((1, 4))
  fn = functools.partial(policy_loss, loss_agg_mode="seq-mean-token-sum")
  # ε = 0.2: −min(1.5, 1.2) = −1.2 (clipped) ×2; −min(−0.5, −0.8) = 0.8 (clipped); −0.5.
  loss, metrics = fn(logp, old, adv, ones)
  np.testing.assert_allclose(loss, -1.2 - 1.2 + 0.8 - 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["clipfrac_high"], 0.5)
  np.testing.assert_allclose(metrics["clipfrac_low"], 0.25)
  np.testing.assert_allclose(metrics["clipfrac"], 0.75)
  np.testing.assert_allclose(metrics["ratio_max"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_min"], 0.5, rtol=1e-6)
  # Clip-higher ε_h = 0.28 moves the upper bound only.
  loss, _ = fn(logp, old, adv, ones, epsilon_high=0.28)
  np.testing.assert_allclose(loss, -1.28 - 1.28 + 0.8 - 0.5, rtol=1e-6)
  # Only the unclipped token carries gradient: d(−ρA)/dlogp = −ρA = −0.5.
  g = jax.grad(lambda x: fn(x, old, adv, ones)[0])(logp)
  np.testing.assert_allclose(g, [[0.0, 0.0, 0.0, -0.5]], atol=1e-7)


def test_dual_clip():
  # A = −1, ρ = 5: PPO term −min(−5, −1.2) = 5; dual clip with c = 3 caps it at −c·A = 3.
  old, logp, adv, m = jnp.zeros((1, 1)), jnp.log(jnp.full((1, 1), 5.0)), -jnp.ones(1), jnp.ones((1, 1))
  np.testing.assert_allclose(policy_loss(logp, old, adv, m)[0], 5.0, rtol=1e-6)
  loss, metrics = policy_loss(logp, old, adv, m, clip_ratio_c=3.0)
  np.testing.assert_allclose(loss, 3.0, rtol=1e-6)
  assert float(metrics["clipfrac_dual"]) == 1.0
  g = jax.grad(lambda x: policy_loss(x, old, adv, m, clip_ratio_c=3.0)[0])(logp)
  np.testing.assert_array_equal(g, 0.0)
  # Positive advantages are untouched by the dual clip.
  np.testing.assert_allclose(policy_loss(logp, old, -adv, m, clip_ratio_c=3.0)[0], -1.2,
                             rtol=1e-6)


GSPO = dict(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
            loss_agg_mode="seq-mean-token-mean")


def test_gspo_spec_numbers():
  # Token log-ratios [0.1, −0.3]: s = exp(−0.1) = 0.904837.
  old = jnp.zeros((1, 2))
  logp = jnp.array([[0.1, -0.3]])
  m = jnp.ones((1, 2))
  s = np.exp(-0.1)
  loss, metrics = policy_loss(logp, old, jnp.array([1.0]), m, **GSPO)
  np.testing.assert_allclose(loss, -s, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_mean"], s, rtol=1e-6)   # every token carries s
  # Gradient s·A·∇logp per token, averaged over L = 2 tokens.
  g = jax.grad(lambda x: policy_loss(x, old, jnp.array([1.0]), m, **GSPO)[0])(logp)
  np.testing.assert_allclose(g, [[-s / 2, -s / 2]], rtol=1e-6)
  # A = −1: the clipped branch −(1 − 3e-4)·(−1) wins and the whole sequence has zero gradient.
  loss, metrics = policy_loss(logp, old, jnp.array([-1.0]), m, **GSPO)
  np.testing.assert_allclose(loss, 0.9997, rtol=1e-6)
  assert float(metrics["clipfrac_low"]) == 1.0
  g = jax.grad(lambda x: policy_loss(x, old, jnp.array([-1.0]), m, **GSPO)[0])(logp)
  np.testing.assert_array_equal(g, 0.0)


def test_gspo_sequence_ratio_and_gradient_match_the_direct_form():
  # s_i = exp(mean_t log-ratio); with a per-sequence A and seq-mean-token-mean, the
  # stop-gradient token form has the same value and gradient as −min(s·A, clip(s)·A) per
  # sequence, averaged over sequences (GSPO's own objective, differentiated through s).
  logp, old, _, adv, mask = _batch()
  eps_l, eps_h = 0.05, 0.08

  def direct(x):
    lengths = mask.sum(1)
    s = jnp.exp(((x - old) * mask).sum(1) / lengths)
    return jnp.mean(-jnp.minimum(s * adv, jnp.clip(s, 1 - eps_l, 1 + eps_h) * adv)), s

  opts = dict(GSPO, epsilon=eps_l, epsilon_high=eps_h)
  loss, metrics = policy_loss(logp, old, adv, mask, **opts)
  ref_loss, s = direct(logp)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["ratio_mean"], (s[:, None] * mask).sum() / mask.sum(),
                             rtol=1e-6)
  g = jax.grad(lambda x: policy_loss(x, old, adv, mask, **opts)[0])(logp)
  g_ref = jax.grad(lambda x: direct(x)[0])(logp)
  np.testing.assert_allclose(g, g_ref * mask, rtol=1e-5, atol=1e-7)


def test_truncated_importance_sampling():
  old = jnp.zeros((1, 2))
  sampler = jnp.full((1, 2), -np.log(3.0))                      # exp(old − sampler) = 3
  adv, m = jnp.array([1.0]), jnp.ones((1, 2))
  base, _ = policy_loss(old, old, adv, m)
  np.testing.assert_allclose(truncated_importance_weights(old, sampler, 2.0), 2.0, rtol=1e-6)
  for cap, w in ((2.0, 2.0), (5.0, 3.0)):
    loss, metrics = policy_loss(old, old, adv, m, sampler_logp=sampler, tis_imp_ratio_cap=cap)
    np.testing.assert_allclose(loss, w * base, rtol=1e-6)
    np.testing.assert_allclose(metrics["tis_weight_mean"], w, rtol=1e-6)
  # The weight is a constant: the sampler log-probs get no gradient.
  g = jax.grad(lambda s: policy_loss(old, old, adv, m, sampler_logp=s,
                                     tis_imp_ratio_cap=5.0)[0])(sampler)
  np.testing.assert_array_equal(g, 0.0)


def test_kl_entropy_and_token_weights_terms():
  logp = jnp.array([[-1.0, -2.0]])
  ref = jnp.array([[-2.0, -1.0]])
  ent = jnp.array([[0.5, 1.5]])
  m = jnp.ones((1, 2))
  adv = jnp.array([2.0])
  k3 = np.array([np.exp(-1.0), np.exp(1.0) - 2.0])
  loss, metrics = policy_loss(logp, logp, adv, m, ref_logp=ref, beta=0.1, entropy=ent,
                              entropy_coeff=0.01)
  np.testing.assert_allclose(loss, -2.0 + 0.1 * k3.mean() - 0.01 * 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["kl"], k3.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["entropy"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["pg_loss"], -2.0, rtol=1e-6)
  # token_weights scale the policy term per token; the token-mean denominator is unchanged.
  loss, _ = policy_loss(logp, logp, adv, m, token_weights=jnp.array([[0.0, 3.0]]))
  np.testing.assert_allclose(loss, (0.0 - 3.0 * 2.0) / 2, rtol=1e-6)


def test_kl_bias_correction_by_hand():
  # One token, A = 0, β = 1, logp = old (ρ = 1), δ = ref − logp = −1: k3 = e⁻¹ − 1 + 1 = e⁻¹.
  # d k3/d logp = −(e^δ − 1) = 1 − e⁻¹. TRL's correction multiplies k3 by ρ = exp(logp − old),
  # not detached: same value, gradient (1 − e⁻¹)·ρ + k3·ρ = 1 − e⁻¹ + e⁻¹ = 1.
  logp, ref = jnp.array([[-1.0]]), jnp.array([[-2.0]])
  m, adv = jnp.ones((1, 1)), jnp.zeros((1,))

  def loss(x, corrected):
    return policy_loss(x, logp, adv, m, ref_logp=ref, beta=1.0,
                       use_bias_correction_kl=corrected)[0]

  for corrected, grad in ((False, 1.0 - np.exp(-1.0)), (True, 1.0)):
    np.testing.assert_allclose(loss(logp, corrected), np.exp(-1.0), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(logp, corrected), [[grad]], rtol=1e-6)
  # Off-policy (ρ = e^0.5): the value is scaled by ρ, and the `kl` metric reports it.
  old = logp - 0.5
  loss_c, metrics = policy_loss(logp, old, adv, m, ref_logp=ref, beta=1.0,
                                use_bias_correction_kl=True)
  np.testing.assert_allclose([loss_c, metrics["kl"]], np.exp(-1.0) * np.exp(0.5), rtol=1e-6)


def test_kl_clamp_reaches_the_loss():
  # δ = 3: k3 = e³ − 4 ≈ 16.09, clamped to 10 by default (verl), unclamped with kl_clamp=0.
  logp, ref, m, adv = jnp.array([[-4.0]]), jnp.array([[-1.0]]), jnp.ones((1, 1)), jnp.zeros((1,))
  np.testing.assert_allclose(policy_loss(logp, logp, adv, m, ref_logp=ref, beta=1.0)[0], 10.0,
                             rtol=1e-6)
  np.testing.assert_allclose(
      policy_loss(logp, logp, adv, m, ref_logp=ref, beta=1.0, kl_clamp=0.0)[0],
      np.exp(3.0) - 4.0, rtol=1e-6)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_micro_batches_with_global_denominator_sum_to_the_whole(mode, level):
  logp, old, sampler, adv, mask = _batch()
  kw = dict(loss_agg_mode=mode, importance_sampling_level=level, epsilon_high=0.28,
            sampler_logp=sampler, tis_imp_ratio_cap=2.0, loss_scale_factor=7.0)
  whole = jax.value_and_grad(lambda x: policy_loss(x, old, adv, mask, **kw)[0])(logp)
  denom = loss_denominator(mask, mode, loss_scale_factor=7.0)
  total, grads = 0.0, []
  for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):          # uneven micro-batches
    def micro(x, sl=sl):
      return policy_loss(x, old[sl], adv[sl], mask[sl], **dict(kw, sampler_logp=sampler[sl]),
                         global_denominator=denom)[0]
    v, g = jax.value_and_grad(micro)(logp[sl])
    total, grads = total + v, grads + [g]
  np.testing.assert_allclose(total, whole[0], rtol=1e-6)
  np.testing.assert_allclose(jnp.concatenate(grads), whole[1], rtol=1e-5, atol=1e-8)


def test_packed_rows_equal_unpacked_under_token_mean():
  # Token-level losses with token-mean do not depend on how sequences are laid out in rows.
  logp, old, _, adv, mask = _batch()
  a_tok = adv[:, None] * mask
  unpacked = policy_loss(logp[:2], old[:2], a_tok[:2], mask[:2], epsilon_high=0.28)[0]
  # Row 0 has 5 tokens, row 1 has 1: pack row 1's token after row 0's in a 6-wide row.
  pack = lambda x: jnp.concatenate([x[0, :5], x[1, :1]])[None]
  packed = policy_loss(pack(logp), pack(old), pack(a_tok), jnp.ones((1, 6)),
                       epsilon_high=0.28)[0]
  np.testing.assert_allclose(packed, unpacked, rtol=1e-6)


def test_value_loss_by_hand():
  m = jnp.ones((1, 2))
  old_v = jnp.array([[0.5, 0.5]])
  v = jnp.array([[1.0, 1.2]])
  ret = jnp.array([[0.0, 1.0]])
  # token 0: V_clip = 0.7, max(1.0, 0.49) = 1.0 → 0.5;  token 1: V_clip = 0.7,
  # max(0.04, 0.09) = 0.09 → 0.045 (clipped branch, no gradient).
  loss, metrics = value_loss(v, old_v, ret, m, cliprange_value=0.2)
  np.testing.assert_allclose(loss, (0.5 + 0.045) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["vf_clipfrac"], 0.5)
  g = jax.grad(lambda x: value_loss(x, old_v, ret, m, cliprange_value=0.2)[0])(v)
  np.testing.assert_allclose(g, [[0.5, 0.0]], rtol=1e-6)       # (V − R)/2 for token 0
  np.testing.assert_allclose(value_loss(v, old_v, ret, m, cliprange_value=None)[0],
                             (0.5 + 0.02) / 2, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(advantages=jnp.zeros((3,))), "advantages"),
    (dict(mask=jnp.ones((2, 2))), "mask"),
    (dict(loss_agg_mode="sum"), "loss_agg_mode"),
    (dict(importance_sampling_level="segment"), "importance_sampling_level"),
    (dict(beta=0.1), "ref_logp"),
    (dict(entropy_coeff=0.1), "entropy"),
    (dict(tis_imp_ratio_cap=2.0), "sampler_logp"),
    (dict(clip_ratio_c=1.0), "clip_ratio_c"),
    (dict(kl_estimator="k9", ref_logp=jnp.zeros((2, 3))), "kl_estimator"),
])
def test_validation(kwargs, match):
  args = dict(logp=jnp.zeros((2, 3)), old_logp=jnp.zeros((2, 3)), advantages=jnp.zeros((2,)),
              mask=jnp.ones((2, 3)))
  for key in list(args):
    if key in kwargs:
      args[key] = kwargs.pop(key)
  with pytest.raises(ValueError, match=match):
    policy_loss(args["logp"], args["old_logp"], args["advantages"], args["mask"], **kwargs)


def test_padding_values_never_leak():
  # NaN / −inf at padding (e.g. a pad target id of −1) change neither the loss nor the gradient.
  logp, old, sampler, adv, mask = _batch()
  pad = mask == 0
  def dirty(x, v):
    return jnp.where(pad, v, x)
  kw = dict(ref_logp=old + 0.1, beta=0.05, entropy=jnp.ones_like(old), entropy_coeff=0.01,
            tis_imp_ratio_cap=2.0, clip_ratio_c=3.0)

  def loss(x, o, s, r, e):
    return policy_loss(x, o, adv, mask, sampler_logp=s, **dict(kw, ref_logp=r, entropy=e))

  clean_v, clean_g = jax.value_and_grad(lambda x: loss(x, old, sampler, kw["ref_logp"],
                                                       kw["entropy"])[0])(logp)
  (v, metrics), g = jax.value_and_grad(
      lambda x: loss(x, dirty(old, -jnp.inf), dirty(sampler, jnp.nan),
                     dirty(kw["ref_logp"], jnp.nan), dirty(kw["entropy"], jnp.inf)),
      has_aux=True)(dirty(logp, jnp.nan))
  np.testing.assert_allclose(v, clean_v, rtol=1e-6)
  np.testing.assert_allclose(g, clean_g, rtol=1e-6)
  assert all(np.isfinite(float(x)) for x in metrics.values())
