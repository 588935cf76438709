"""DEL (spec §6): the TPL / EMA / threshold / clip rules on hand-worked cases, greedy DEL =
greedy `sample` token for token, the exit choice on a model built to have known acceptance
rates, and the sampled law = the target's (chi-square on the exact joint by teacher forcing)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from tokenrl import models
from tokenrl.rollout import sample
from tokenrl.rollout import dynamic_exit as D


def test_tpl_hand_case_spec_6e2():
  # L = 4, α = (0.2, 0.5, 0.8) for E = 1, 2, 3, d_max = 18: argmax (E = 3, d = 1).
  alpha = jnp.asarray([0.2, 0.5, 0.8])
  tpl = np.asarray(D.tokens_per_layer(alpha, (1, 2, 3), 4, 18))
  np.testing.assert_allclose(tpl[2, :4], [0.25, 0.257143, 0.244, 0.227077], atol=1e-6)
  # Brute force: the closed form (1 − α^{d+1}) / (1 − α) / (d·E + L).
  for c, (a, e) in enumerate(zip([0.2, 0.5, 0.8], [1, 2, 3])):
    for d in range(18):
      assert tpl[c, d] == pytest.approx((1 - a ** (d + 1)) / (1 - a) / (d * e + 4), rel=1e-5)
  idx, d = D.select_exit(alpha, (1, 2, 3), 4, 18)
  assert (int(idx), int(d)) == (2, 1)
  assert tpl[2, 1] == pytest.approx(0.257143, abs=1e-6)
  # Batched: a second row with α = 1 everywhere prefers the cheapest layer and the longest d.
  idx, d = D.select_exit(jnp.asarray([[0.2, 0.5, 0.8], [1.0, 1.0, 1.0]]), (1, 2, 3), 4, 18)
  np.testing.assert_array_equal(idx, [2, 0])
  np.testing.assert_array_equal(d, [1, 17])


def test_tpl_without_statistics_only_d0_and_min_draft():
  alpha = jnp.asarray([-jnp.inf, 0.5])
  tpl = np.asarray(D.tokens_per_layer(alpha, (1, 2), 4, 5))
  assert tpl[0, 0] == pytest.approx(0.25) and np.all(tpl[0, 1:] == -np.inf)
  # d_min = 2 masks d = 0, 1; ties go to the lower d.
  tpl = np.asarray(D.tokens_per_layer(jnp.asarray([0.5, 0.5]), (1, 2), 4, 5, d_min=2))
  assert np.all(tpl[:, :2] == -np.inf) and np.all(np.isfinite(tpl[:, 2:]))
  # All layers unknown: every row ties at 1/L for d = 0, the first (E_0, 0) wins.
  idx, d = D.select_exit(jnp.full((3,), -jnp.inf), (1, 2, 3), 4, 18)
  assert (int(idx), int(d)) == (0, 0)


def test_ema_hand_case_spec_6e5():
  # Round 1: 3 matches, 1 mismatch; round 2: 0, 2; ω = 0.95 → M = 2.85, U = 2.95.
  r1 = D.round_counts(jnp.asarray([[True], [True], [False], [True]]),
                      jnp.asarray([[0.9], [0.8], [0.4], [0.7]]), jnp.ones((4,), bool))
  r2 = D.round_counts(jnp.asarray([[False], [False], [True]]), jnp.asarray([[0.3], [0.5], [1.0]]),
                      jnp.asarray([True, True, False]))  # the third position does not count
  s = D.update_exit_stats(D.init_exit_stats((), 1), r1, omega=0.95)
  s = D.update_exit_stats(s, r2, omega=0.95)
  assert float(s.matches[0]) == pytest.approx(2.85)
  assert float(s.mismatches[0]) == pytest.approx(2.95)
  assert float(D.acceptance_rates(s)[0]) == pytest.approx(0.491379, abs=1e-6)
  # C⁺ = 0.95·(0.9 + 0.8 + 0.7) = 2.28, C⁻ = 0.95·0.4 + 0.8 = 1.18.
  assert float(s.conf_matches[0]) == pytest.approx(2.28)
  assert float(s.conf_mismatches[0]) == pytest.approx(1.18)
  # τ = (2.28/2.85 + 1.18/2.95) / 2 = (0.8 + 0.4) / 2 = 0.6; stop below it, not at it.
  tau = float(D.confidence_thresholds(s)[0])
  assert tau == pytest.approx(0.6)
  np.testing.assert_array_equal(D.draft_continues(jnp.asarray([0.59, 0.6, 0.9]), tau),
                                [False, True, True])


def test_threshold_never_stops_without_both_classes():
  s = D.ExitStats(*(jnp.asarray([3.0, 0.0, 0.0]) if i != 1 else jnp.asarray([0.0, 2.0, 0.0])
                    for i in range(4)))
  tau = np.asarray(D.confidence_thresholds(s))
  assert np.all(tau == -np.inf)
  assert bool(D.draft_continues(jnp.asarray(0.0), tau[0]))
  np.testing.assert_array_equal(np.asarray(D.acceptance_rates(s)), [1.0, 0.0, -np.inf])


def test_clip_after_first_mismatch_at_current_exit():
  # Positions 0..4, two candidates; candidate 1 first mismatches at position 2.
  match = jnp.asarray([[True, True], [False, True], [True, False], [True, True], [False, False]])
  valid = jnp.asarray([True, True, True, True, False])
  np.testing.assert_array_equal(D.clip_after_first_mismatch(match, valid, 1, True),
                                [True, True, True, False, False])
  np.testing.assert_array_equal(D.clip_after_first_mismatch(match, valid, 0, True),
                                [True, True, False, False, False])
  np.testing.assert_array_equal(D.clip_after_first_mismatch(match, valid, 1, False), valid)


def test_accept_rule_greedy_and_bonus():
  # p: argmax 2 at every position; drafts (2, 2, 3) with draft_len 3 → n = 2, y = argmax p_2.
  p = jax.nn.one_hot(jnp.asarray([[2, 2, 2, 1]]), 4) * 0.7 + 0.1 * (1 - jax.nn.one_hot(
      jnp.asarray([[2, 2, 2, 1]]), 4))
  q = jnp.full((1, 3, 4), 0.25)
  keys = jax.random.split(jax.random.key(0), 1)
  n, y = D.speculative_accept(p, q, jnp.asarray([[2, 2, 3]]), jnp.asarray([3]), keys, True)
  assert (int(n[0]), int(y[0])) == (2, 2)
  # draft_len 2 with both accepted: the bonus token comes from p_3 (argmax 2).
  n, y = D.speculative_accept(p, q, jnp.asarray([[2, 2, 3]]), jnp.asarray([2]), keys, True)
  assert (int(n[0]), int(y[0])) == (2, 2)
  # Sampling with q = p: every draft accepted (u·q ≤ p), the bonus from p_{K+1}.
  n, y = D.speculative_accept(p, p[:, :3], jnp.asarray([[0, 3, 2]]), jnp.asarray([3]), keys, False)
  assert int(n[0]) == 3


CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                     mlp_dim=48, eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]


def _scaled(params, scale):
  """Each layer's output projections (o, down) × scale[l]: 0 makes layer l the identity
  (pre-norm residual: x + 0 + 0), large values make it matter more."""
  s = jnp.asarray(scale, jnp.float32)
  lay = dict(params["layers"])
  for name in ("o", "down"):
    lay[name] = lay[name] * s.reshape(-1, *([1] * (lay[name].ndim - 1)))
  return {**params, "layers": lay}


def test_greedy_del_equals_greedy_sample_with_exit_choice():
  # Layers 2, 3 are the identity: shadow tokens at E = 2, 3 always equal the full model's
  # (α = 1 exactly), while layer 1 is made strong so E = 1 drafts badly. Then by TPL with
  # K = 4, L = 4: E = 2 gives (d+1)/(2d+4) → 0.4 at d = 3, and E = 1 with α ≤ 0.7 at most
  # 0.362: after round 1 (E = first candidate, one draft) every round must use E = 2.
  params = _scaled(PARAMS, [1.0, 8.0, 0.0, 0.0])
  kw = dict(config=CONFIG, rng=jax.random.key(1), max_new_tokens=12, temperature=0.0,
            stop_tokens=(14,))
  out, info = D.del_sample(params, PROMPTS, exit_layers=(1, 2, 3), max_draft=4, **kw)
  ref = sample(params, PROMPTS, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_array_equal(out.truncated, ref.truncated)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_allclose(out.entropy, ref.entropy, atol=1e-5)
  alpha = np.asarray(D.acceptance_rates(info.stats))
  np.testing.assert_array_equal(alpha[:, 1:], 1.0)
  summed = jax.tree.map(lambda x: x.sum(0), info.stats)
  assert float(D.acceptance_rates(summed)[0]) <= 0.7
  rounds = int(info.num_rounds)
  hist = np.asarray(info.exit_layer)
  assert hist[0] == 1 and np.all(hist[1:rounds] == 2) and np.all(hist[rounds:] == -1)
  # At E = 2 the draft is exact: once the stop threshold of E = 2 is -inf (no mismatch ever),
  # every round drafts min(4, remaining − 1) and all are accepted.
  assert rounds < 12
  np.testing.assert_array_equal(info.accepted >= info.drafted - 1, True)


def test_greedy_del_all_exact_layers_hand_rounds():
  # Layers 1..3 identity: every candidate is exact (α = 1), E = 1 wins (cheapest), drafts
  # are never stopped by confidence (no mismatch: τ = -inf). T = 12, K = 4: round 1 drafts 1
  # (2 tokens), rounds 2 and 3 draft 4 (5 tokens each): 3 rounds, 9 drafted, 9 accepted.
  params = _scaled(PARAMS, [1.0, 0.0, 0.0, 0.0])
  kw = dict(config=CONFIG, rng=jax.random.key(1), max_new_tokens=12, temperature=0.0,
            stop_tokens=(14,))  # as above (one compile); this model never emits 14
  out, info = D.del_sample(params, PROMPTS, exit_layers=(1, 2, 3), max_draft=4, **kw)
  np.testing.assert_array_equal(out.tokens, sample(params, PROMPTS, **kw).tokens)
  assert np.all(np.asarray(out.truncated))
  assert int(info.num_rounds) == 3
  np.testing.assert_array_equal(np.asarray(info.exit_layer)[:4], [1, 1, 1, -1])
  np.testing.assert_array_equal(info.drafted, [9, 9, 9])
  np.testing.assert_array_equal(info.accepted, [9, 9, 9])
  np.testing.assert_array_equal(D.acceptance_rates(info.stats), 1.0)


@pytest.mark.slow
def test_sampled_law_equals_target_chi_square():
  # V = 8, T = 3, 1e5 rows of one prompt; layers 1, 2 scaled up so the early exits disagree
  # with the full model (drafts get rejected, residuals sampled, and E switches to 2).
  config = models.tiny("qwen2", vocab_size=8, dim=16, num_layers=3, num_heads=2, num_kv_heads=1,
                       mlp_dim=32, eos_ids=(1,), pad_id=0)
  params = _scaled(models.init_params(config, jax.random.key(3)), [8.0, 8.0, 8.0])
  prompt, n = [5, 6, 7], 100_000
  out, info = D.del_sample(params, [prompt], config=config, rng=jax.random.key(1),
                           max_new_tokens=3, temperature=1.0, stop_tokens=(), max_draft=2,
                           num_samples=n)
  tok = np.asarray(out.tokens)
  drafted, accepted = int(info.drafted.sum()), int(info.accepted.sum())
  assert drafted > n and 0.5 * drafted < accepted < 0.7 * drafted  # many rejections
  assert 2 in np.asarray(info.exit_layer)
  # Exact joint of (x0, x1, x2) by teacher forcing all 64 prefixes (x0, x1).
  pairs = np.array([[a, b] for a in range(8) for b in range(8)])
  seqs = np.concatenate([np.tile(prompt, (64, 1)), pairs], axis=1)
  logits, _ = models.forward(params, jnp.asarray(seqs), config=config)
  lp = np.asarray(jax.nn.log_softmax(logits, -1)).astype(np.float64)
  p = len(prompt)
  joint = np.exp(lp[0, p - 1, pairs[:, 0]] + lp[np.arange(64), p, pairs[:, 1]])[:, None] \
      * np.exp(lp[:, p + 1])
  joint = joint.reshape(-1) / joint.sum()
  counts = np.bincount(tok[:, 0] * 64 + tok[:, 1] * 8 + tok[:, 2], minlength=512)
  assert sps.chisquare(counts, joint * n).pvalue > 1e-3
  two = sps.chisquare(counts.reshape(64, 8).sum(1), joint.reshape(64, 8).sum(1) * n)
  assert two.pvalue > 1e-3
  # Stored log-probs are the target's: log p(x0) at column 0.
  np.testing.assert_allclose(np.asarray(out.logprobs)[:, 0], lp[0, p - 1, tok[:, 0]], atol=1e-4)
