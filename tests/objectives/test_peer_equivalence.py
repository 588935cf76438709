"""The estimators equal verl's and TRL's own definitions, in float64, on random inputs.

The peers' functions are re-implemented here from their definitions (not copied, no torch):

* verl (verl/utils/torch_functional.py, verl/trainer/ppo/core_algos.py):
  `masked_mean(v, m) = Σ v·m / (Σ m + 1e-8)`; `masked_var(v, m)` = masked mean of the squared
  deviation × n/(n−1), n = Σ m (unbiased=True, the default); `masked_whiten(v, m) =
  (v − mean)·rsqrt(var + 1e-8)`; `kl_penalty` 'kl'/'k1' = logp − ref, 'abs' = |logp − ref|,
  'mse'/'k2' = ½(logp − ref)², 'low_var_kl'/'k3' = clamp(e^κ − κ − 1, −10, 10) with
  κ = clamp(ref − logp, −20, 20), and a name ending in '+' = k2 − sg(k2) + sg(forward);
  `compute_grpo_outcome_advantage`: per group mean and unbiased std, a group of one sample gets
  mean 0 and std 1, A = (s − mean)/(std + ε) or s − mean (`norm_adv_by_std_in_grpo=False`).
* TRL (trl/trainer/grpo_trainer.py): advantages `r − mean_g`, divided by (std + 1e-4) with the
  unbiased std of the group ('group') or of the whole batch ('batch'), or not ('none');
  `per_token_kl = exp(ref − logp) − (ref − logp) − 1` (no clamp), times `coef_1 = exp(logp −
  old_logp)` with `use_bias_correction_kl`, added as β·per_token_kl to the clipped surrogate;
  loss_type 'grpo' = mean over sequences of the per-sequence token mean.

Gradients of the peers' formulas are taken with jax on the same float64 re-implementations.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives import kl_penalty
from tokenrl.objectives import masked_whiten
from tokenrl.objectives import policy_loss


def _x64():
  """float64 inside the block (jax >= 0.8: jax.enable_x64; older: jax.experimental)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _close(actual, expected, tol=1e-6):
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                             rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# verl, re-implemented
def verl_masked_mean(v, m):
  return (v * m).sum() / (m.sum() + 1e-8)


def verl_masked_whiten(v, m, unbiased=True):
  mean = verl_masked_mean(v, m)
  var = verl_masked_mean((v - mean) ** 2, m)
  if unbiased:
    n = m.sum()
    var = var * n / (n - 1)
  return (v - mean) / np.sqrt(var + 1e-8)


def verl_kl_forward(logp, ref, name, xp=jnp):
  if name in ("kl", "k1"):
    return logp - ref
  if name == "abs":
    return xp.abs(logp - ref)
  if name in ("mse", "k2"):
    return 0.5 * (logp - ref) ** 2
  if name in ("low_var_kl", "k3"):
    kappa = xp.clip(ref - logp, -20, 20)
    return xp.clip(xp.exp(kappa) - kappa - 1, -10, 10)
  raise NotImplementedError(name)


def verl_kl_penalty(logp, ref, name):
  base = name[:-1] if name.endswith("+") else name
  forward = verl_kl_forward(logp, ref, base)
  if not name.endswith("+") or base in ("mse", "k2"):
    return forward
  backward = 0.5 * (logp - ref) ** 2
  return backward - jax.lax.stop_gradient(backward) + jax.lax.stop_gradient(forward)


def verl_grpo_outcome(scores, index, epsilon=1e-6, norm_by_std=True):
  out = np.empty_like(scores)
  for g in np.unique(index):
    rows = index == g
    s = scores[rows]
    mean, std = (0.0, 1.0) if s.size == 1 else (s.mean(), s.std(ddof=1))
    out[rows] = (s - mean) / (std + epsilon) if norm_by_std else s - mean
  return out


# TRL, re-implemented
def trl_grpo_advantages(rewards, g, scale_rewards):
  grouped = rewards.reshape(-1, g)
  centred = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
  if scale_rewards == "group":
    std = np.repeat(grouped.std(axis=1, ddof=1), g)
  elif scale_rewards == "batch":
    std = np.full_like(rewards, rewards.std(ddof=1))
  else:
    return centred
  return centred / (std + 1e-4)


def trl_grpo_loss(logp, old, ref, adv, mask, beta, eps, use_bias_correction_kl):
  coef_1 = jnp.exp(logp - old)
  kl = jnp.exp(ref - logp) - (ref - logp) - 1
  if use_bias_correction_kl:
    kl = kl * coef_1
  coef_2 = jnp.clip(coef_1, 1 - eps, 1 + eps)
  a = adv[:, None]
  per_token = -jnp.minimum(coef_1 * a, coef_2 * a) + beta * kl
  return ((per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).mean()


# ---------------------------------------------------------------------------------------------
def _random_logps(rng, shape, spread):
  """logp and ref with δ = ref − logp spread over ±`spread` (covers both clamps of verl's k3)."""
  logp = -rng.exponential(2.0, shape)
  return logp, logp + rng.uniform(-spread, spread, shape)


@pytest.mark.parametrize("seed", range(4))
def test_masked_whiten_is_verl(seed):
  rng = np.random.default_rng(seed)
  v = rng.normal(size=(6, 9)) * rng.uniform(0.1, 5.0)
  m = (rng.uniform(size=(6, 9)) < 0.6).astype(np.float64)
  m[0, 0] = m[0, 1] = 1.0                                       # n >= 2
  valid = m > 0
  with _x64():
    got = np.asarray(masked_whiten(jnp.asarray(v), jnp.asarray(m)))
    pop = np.asarray(masked_whiten(jnp.asarray(v), jnp.asarray(m), unbiased=False))
  _close(got[valid], verl_masked_whiten(v, m)[valid])
  _close(pop[valid], verl_masked_whiten(v, m, unbiased=False)[valid])
  np.testing.assert_array_equal(got[~valid], 0.0)
  # The two differ by exactly sqrt(n/(n−1)) (up to ε), so the default is not the population one.
  n = m.sum()
  _close(pop[valid] / got[valid], np.sqrt(n / (n - 1)), tol=1e-6)


def test_float64_inputs_stay_float64():
  """So the comparisons above are float64 throughout (f32 / bf16 inputs still give f32)."""
  with _x64():
    x = jnp.ones((2, 3), jnp.float64)
    assert masked_whiten(x, x).dtype == jnp.float64
    assert kl_penalty(x, 2 * x, "k3").dtype == jnp.float64
    assert group_relative_advantages(jnp.arange(4.0), 2).dtype == jnp.float64
  assert kl_penalty(jnp.ones((1, 2), jnp.bfloat16), jnp.ones((1, 2)), "k3").dtype == jnp.float32


def test_masked_whiten_single_valid_token_is_zero_not_nan():
  m = jnp.array([[0.0, 1.0, 0.0]])
  np.testing.assert_array_equal(masked_whiten(jnp.array([[3.0, 5.0, 7.0]]), m), 0.0)


VERL_KL_NAMES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "kl+", "k1+", "low_var_kl+",
                 "k3+")


@pytest.mark.parametrize("name", VERL_KL_NAMES)
@pytest.mark.parametrize("seed", range(3))
def test_kl_estimators_are_verl_values_and_gradients(name, seed):
  rng = np.random.default_rng(seed)
  logp, ref = _random_logps(rng, (5, 40), spread=25.0)
  w = rng.normal(size=logp.shape)                               # a random cotangent
  with _x64():
    logp_j, ref_j, w_j = jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(w)
    ours = kl_penalty(logp_j, ref_j, name)
    theirs = verl_kl_penalty(logp_j, ref_j, name)
    g_ours = jax.grad(lambda x: (w_j * kl_penalty(x, ref_j, name)).sum())(logp_j)
    g_theirs = jax.grad(lambda x: (w_j * verl_kl_penalty(x, ref_j, name)).sum())(logp_j)
  _close(ours, theirs)
  _close(g_ours, g_theirs)


def test_k3_clamp_applies_like_verl_and_is_optional():
  # δ = ref − logp: 1 (no clamp), 3 (e³ − 4 = 16.1 → 10), 25 (δ clamped to 20, then 10).
  logp = jnp.array([[-1.0, -1.0, -30.0]])
  ref = jnp.array([[0.0, 2.0, -5.0]])
  k3 = kl_penalty(logp, ref, "k3")
  _close(k3, [[np.e - 2.0, 10.0, 10.0]], tol=1e-6)
  g = jax.grad(lambda x: kl_penalty(x, ref, "k3").sum())(logp)
  _close(g, [[-(np.e - 1.0), 0.0, 0.0]], tol=1e-6)    # d k3/d logp = −(e^δ − 1); 0 where clamped
  free = kl_penalty(logp, ref, "k3", kl_clamp=None)
  _close(free[0, :2], [np.e - 2.0, np.exp(3.0) - 4.0], tol=1e-6)
  g_free = jax.grad(lambda x: kl_penalty(x, ref, "k3", kl_clamp=0).sum())(logp)
  _close(g_free[0, 1], -(np.exp(3.0) - 1.0), tol=1e-6)
  with pytest.raises(ValueError, match="kl_clamp"):
    kl_penalty(logp, ref, "k3", kl_clamp=-1.0)


@pytest.mark.parametrize("seed", range(3))
def test_unclamped_k3_is_trl_kl(seed):
  rng = np.random.default_rng(seed)
  logp, ref = _random_logps(rng, (4, 50), spread=8.0)
  with _x64():
    logp_j, ref_j = jnp.asarray(logp), jnp.asarray(ref)
    trl = lambda x: jnp.exp(ref_j - x) - (ref_j - x) - 1
    _close(kl_penalty(logp_j, ref_j, "k3", kl_clamp=None), trl(logp_j))
    _close(jax.grad(lambda x: kl_penalty(x, ref_j, "k3", kl_clamp=None).sum())(logp_j),
           jax.grad(lambda x: trl(x).sum())(logp_j))


def test_k3_float32_has_no_cancellation():
  """f32 k3 within ~1e-7 relative of float64 e^δ − 1 − δ for every δ (old exp(δ) − δ − 1: 1.0 at
  δ = 1e-4; expm1(δ) − δ alone: 5e-4)."""
  d = np.concatenate([np.logspace(-8, 1.3, 400), -np.logspace(-8, 1.3, 400)]).astype(np.float32)
  d64 = d.astype(np.float64)
  exact = np.where(np.abs(d64) < 1e-3, d64**2 / 2 + d64**3 / 6 + d64**4 / 24 + d64**5 / 120,
                   np.expm1(d64) - d64)
  got = kl_penalty(jnp.zeros(d.shape, jnp.float32)[None], jnp.asarray(d)[None], "k3",
                   kl_clamp=None)[0]
  assert got.dtype == jnp.float32
  rel = np.abs(np.asarray(got, np.float64) - exact) / exact
  assert rel.max() < 5e-7, (rel.max(), d[rel.argmax()])
  at = np.argmin(np.abs(d - 1e-4))
  assert rel[at] < 2e-7, rel[at]
  # The gradient −(e^δ − 1) is as accurate.
  g = jax.grad(lambda x: kl_penalty(x, jnp.asarray(d)[None], "k3", kl_clamp=None).sum())(
      jnp.zeros(d.shape, jnp.float32)[None])[0]
  rel_g = np.abs(np.asarray(g, np.float64) + np.expm1(d64)) / np.abs(np.expm1(d64))
  assert rel_g.max() < 5e-7, (rel_g.max(), d[rel_g.argmax()])


@pytest.mark.parametrize("group_size", [1, 2, 3, 5])
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_relative_advantages_are_verl(group_size, norm_by_std):
  rng = np.random.default_rng(group_size)
  rewards = rng.normal(size=6 * group_size) * 2.0
  rewards[:group_size] = 1.5                                    # one constant group (std 0)
  expected = verl_grpo_outcome(rewards, np.repeat(np.arange(6), group_size), 1e-6, norm_by_std)
  with _x64():
    got = group_relative_advantages(jnp.asarray(rewards), group_size, epsilon=1e-6,
                                    scale_rewards="group" if norm_by_std else "none")
  assert np.isfinite(np.asarray(got)).all()
  _close(got, expected)


@pytest.mark.parametrize("group_size", [2, 4, 7])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_relative_advantages_are_trl(group_size, scale_rewards):
  rng = np.random.default_rng(10 + group_size)
  rewards = rng.integers(0, 3, size=5 * group_size).astype(np.float64)
  with _x64():
    got = group_relative_advantages(jnp.asarray(rewards), group_size, epsilon=1e-4,
                                    scale_rewards=scale_rewards)
  _close(got, trl_grpo_advantages(rewards, group_size, scale_rewards))


def test_group_size_one_is_verl_singleton_convention():
  r = jnp.array([1.0, 0.0, 2.0])
  _close(group_relative_advantages(r, 1, epsilon=1e-6), np.array([1.0, 0.0, 2.0]) / (1 + 1e-6))
  _close(group_relative_advantages(r, 1, scale_rewards="none"), [1.0, 0.0, 2.0])
  _close(group_relative_advantages(r, 1, scale_rewards="batch", epsilon=0.0),
         np.array([1.0, 0.0, 2.0]) / np.std([1.0, 0.0, 2.0], ddof=1))


@pytest.mark.parametrize("use_bias_correction_kl", [False, True])
@pytest.mark.parametrize("seed", range(2))
def test_policy_loss_with_kl_is_trl_grpo_loss(use_bias_correction_kl, seed):
  rng = np.random.default_rng(seed)
  n, t = 4, 7
  logp, ref = _random_logps(rng, (n, t), spread=2.0)
  old = logp + rng.normal(scale=0.15, size=(n, t))               # ratio ≠ 1, some clipped
  adv = rng.normal(size=n)
  mask = np.ones((n, t))
  mask[1, 5:] = mask[3, 2:] = 0.0
  kw = dict(beta=0.04, eps=0.2, use_bias_correction_kl=use_bias_correction_kl)
  with _x64():
    args = [jnp.asarray(a) for a in (logp, old, ref, adv, mask)]

    def ours(x):
      return policy_loss(x, args[1], args[3], args[4], ref_logp=args[2], beta=kw["beta"],
                         epsilon=kw["eps"], loss_agg_mode="seq-mean-token-mean", kl_clamp=None,
                         use_bias_correction_kl=use_bias_correction_kl)[0]

    def trl(x):
      return trl_grpo_loss(x, args[1], args[2], args[3], args[4], **kw)

    _close(ours(args[0]), trl(args[0]))
    _close(jax.grad(ours)(args[0]), jax.grad(trl)(args[0]))
