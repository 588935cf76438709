"""SpecDec++ labels, data mixing and the weighted soft-label BCE (spec decoding §3(b) 3-5 and
the tiny checks §3(e) 3-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import specdec_pp as sp


def test_labels_are_min_one_p_over_q_elementwise():
  rng = np.random.default_rng(0)
  p = rng.uniform(1e-4, 1.0, (4, 7))
  q = rng.uniform(1e-4, 1.0, (4, 7))
  a = sp.acceptance_labels(jnp.log(jnp.asarray(p)), jnp.log(jnp.asarray(q)))
  np.testing.assert_allclose(a, np.minimum(1.0, p / q), rtol=1e-5)
  assert a.dtype == jnp.float32
  # p = q accepts surely; a token outside the target's support (log p = -inf) never is.
  np.testing.assert_array_equal(sp.acceptance_labels(jnp.log(jnp.asarray([0.3, 0.0])),
                                                     jnp.log(jnp.asarray([0.3, 0.2]))), [1.0, 0.0])
  # Log space: p/q = e^-5 exactly even where p and q underflow in f32.
  np.testing.assert_allclose(sp.acceptance_labels(jnp.asarray([-205.0]), jnp.asarray([-200.0])),
                             [np.exp(-5.0)], rtol=1e-6)
  with pytest.raises(ValueError, match="draft_logp_y"):
    sp.acceptance_labels(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


H = jnp.asarray([0.8, 0.5, 0.2])       # ĥ
A = jnp.asarray([1.0, 0.5, 0.25])      # a


def test_hand_computed_three_positions():
  # w = 6. Numerator terms −[w(1−a)log(1−ĥ) + a log ĥ]:
  #   pos 1: a = 1:    −log 0.8                         = 0.2231436, weight w·0 + 1     = 1
  #   pos 2: a = 0.5:  −(3 log 0.5 + 0.5 log 0.5)       = 2.4260151, weight 3 + 0.5     = 3.5
  #   pos 3: a = 0.25: −(4.5 log 0.8 + 0.25 log 0.2)    = 1.4065055, weight 4.5 + 0.25  = 4.75
  # ℓ = 4.0556641 / 9.25 = 0.4384502
  m = jnp.ones(3)
  np.testing.assert_allclose(sp.acceptance_loss(H, A, m, 6.0), 0.4384502, rtol=1e-6)
  # The same from two-class logits (log ĥ/(1−ĥ) on class 1, 0 on class 0).
  logits = jnp.stack([jnp.zeros(3), jnp.log(H / (1 - H))], axis=-1)
  np.testing.assert_allclose(sp.acceptance_loss(logits, A, m, 6.0), 0.4384502, rtol=1e-6)
  # Masking position 2 drops its term and its weight: (0.2231436 + 1.4065055) / 5.75.
  np.testing.assert_allclose(sp.acceptance_loss(H, A, jnp.asarray([1, 0, 1]), 6.0), 0.2834172,
                             rtol=1e-6)
  # Default w is the reference's 6.
  np.testing.assert_allclose(sp.acceptance_loss(H, A, m), 0.4384502, rtol=1e-6)


def test_weight_one_is_standard_soft_bce():
  rng = np.random.default_rng(1)
  h = jnp.asarray(rng.uniform(0.05, 0.95, (3, 5)))
  a = jnp.asarray(rng.uniform(0.0, 1.0, (3, 5)))
  m = jnp.asarray(np.where(rng.uniform(size=(3, 5)) < 0.7, 1, 0))
  bce = -(a * jnp.log(h) + (1 - a) * jnp.log(1 - h))
  want = (bce * m).sum() / m.sum()
  np.testing.assert_allclose(sp.acceptance_loss(h, a, m, 1.0), want, rtol=1e-5)
  # On the three-position example: mean of the three soft BCEs by hand = 0.4953360.
  np.testing.assert_allclose(sp.acceptance_loss(H, A, jnp.ones(3), 1.0), 0.4953360, rtol=1e-6)


def test_loss_invariants_and_gradients():
  a = jnp.asarray([0.0, 0.3, 1.0])
  m = jnp.ones(3)
  # Minimised at ĥ = a when w = 1 (soft BCE is a proper scoring rule): zero gradient there.
  g = jax.grad(lambda h: sp.acceptance_loss(h, a, m, 1.0))(jnp.asarray([0.2, 0.3, 0.9]))
  assert abs(float(g[1])) < 1e-6
  # w > 1 pushes predictions down (rejections cost more): the optimum of a = 0.5 is ĥ = 1/(1+w).
  hs = jnp.linspace(0.01, 0.99, 981)
  losses = jax.vmap(lambda h: sp.acceptance_loss(h[None], jnp.asarray([0.5]), jnp.ones(1), 6.0))(hs)
  np.testing.assert_allclose(hs[jnp.argmin(losses)], 1 / 7, atol=1e-3)
  # Saturated logits stay finite; no loss position gives 0.
  big = jnp.asarray([[0.0, 80.0], [80.0, 0.0]])
  loss, grad = jax.value_and_grad(sp.acceptance_loss)(big, jnp.asarray([0.0, 1.0]), jnp.ones(2))
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  assert float(sp.acceptance_loss(H, A, jnp.zeros(3))) == 0.0
  for bad in (jnp.zeros(4), jnp.zeros((3, 3))):
    with pytest.raises(ValueError, match="logits_or_prob"):
      sp.acceptance_loss(bad, A, jnp.ones(3))
  with pytest.raises(ValueError, match="rejection_weight"):
    sp.acceptance_loss(H, A, jnp.ones(3), 0.0)


def _mix_inputs(n=64, p=5, s=40, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, 50, (n, s)), jnp.int32)
  y = jnp.asarray(rng.integers(50, 100, (n, s)), jnp.int32)  # disjoint ids: the source is visible
  lengths = rng.integers(1, s - p + 1, n)
  mask = jnp.asarray(np.arange(s)[None] < p + lengths[:, None], jnp.int32)
  return x, y, mask, p


def test_mixing_masks_never_cover_prompt_or_x_positions():
  x, y, mask, p = _mix_inputs()
  z, lm = sp.mix_sequences(x, y, 0.3, jax.random.key(0), prompt_len=p, mask=mask)
  z, lm, x, y, mask = map(np.asarray, (z, lm, x, y, mask))
  assert lm.dtype == np.int32 and z.dtype == np.int32
  np.testing.assert_array_equal(z[:, :p], x[:, :p])      # prompt kept
  assert not lm[:, :p].any()                             # never trained on the prompt
  from_y = z >= 50
  np.testing.assert_array_equal(lm, from_y.astype(np.int32))   # loss exactly at the Y positions
  np.testing.assert_array_equal(np.where(from_y, y, x), z)      # every other slot holds X
  assert not lm[mask == 0].any()                          # nor past the response
  np.testing.assert_array_equal(z[mask == 0], x[mask == 0])
  # r = 0: all response positions are Y and trained; r = 1: the target sequence, no loss.
  z0, lm0 = sp.mix_sequences(jnp.asarray(x), jnp.asarray(y), 0.0, jax.random.key(1),
                             prompt_len=p, mask=jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(lm0), np.where(np.arange(x.shape[1]) >= p, mask, 0))
  z1, lm1 = sp.mix_sequences(jnp.asarray(x), jnp.asarray(y), 1.0, jax.random.key(1),
                             prompt_len=p, mask=jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(z1), x)
  assert not np.asarray(lm1).any()


def test_mixing_ratio_statistics():
  x, y, mask, p = _mix_inputs(n=256, s=128)
  for r in (0.15, 0.5):
    _, lm = sp.mix_sequences(x, y, r, jax.random.key(7), prompt_len=p, mask=mask)
    response = np.asarray(mask).astype(bool) & (np.arange(x.shape[1]) >= p)[None]
    n = response.sum()
    frac_x = 1.0 - np.asarray(lm)[response].mean()
    # Binomial(n, r): 5 standard deviations (n ~ 15k positions).
    assert abs(frac_x - r) < 5 * np.sqrt(r * (1 - r) / n), (r, frac_x, n)
  # Different keys give different draws; the same key the same.
  a = sp.mix_sequences(x, y, 0.5, jax.random.key(0), prompt_len=p)[1]
  b = sp.mix_sequences(x, y, 0.5, jax.random.key(0), prompt_len=p)[1]
  c = sp.mix_sequences(x, y, 0.5, jax.random.key(1), prompt_len=p)[1]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_mixing_bad_inputs():
  x = jnp.zeros((2, 6), jnp.int32)
  with pytest.raises(ValueError, match="y_tokens"):
    sp.mix_sequences(x, jnp.zeros((2, 5), jnp.int32), 0.1, jax.random.key(0))
  with pytest.raises(ValueError, match="mix_ratio"):
    sp.mix_sequences(x, x, 1.5, jax.random.key(0))
  with pytest.raises(ValueError, match="prompt_len"):
    sp.mix_sequences(x, x, 0.1, jax.random.key(0), prompt_len=7)
  with pytest.raises(ValueError, match="mask"):
    sp.mix_sequences(x, x, 0.1, jax.random.key(0), mask=jnp.ones((2, 5)))
