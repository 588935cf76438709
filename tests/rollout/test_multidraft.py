"""Multi-draft acceptance rules (spec decoding-and-test-time §0.3, §4, §5).

Hand-computed values: the §0.3 worked example p = (0.4, 0.3, 0.2, 0.1), q = (0.1, 0.2, 0.3, 0.4),
n = 3. Single draft Σ min(p, q) = 0.1 + 0.2 + 0.2 + 0.1 = 0.6. Sorted by p/q ascending the tokens
are 4, 3, 2, 1 (ratios 1/4, 2/3, 3/2, 4); the prefix terms P_i + 1 − Q_i³ are 1, 1.036, 0.957,
0.871, 1, so α* = 0.871 (prefix {4, 3, 2}: 0.6 + 1 − 0.9³). Without replacement 3 distinct drafts
out of 4 can only all lie in A if |A| ≥ 3; for A = V∖{1}, P(token 1 drawn last) = 0.5512 < 1 − p(1)
= 0.6, and the other 3-sets lose more, so no subset beats A = V and α* = 1.

Invariants: every sampler's output law is p (chi-square against the target law), the empirical
acceptance matches the closed form, K-SEQ ≤ optimum, and the optimum equals an LP over couplings.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.rollout import multidraft as md

scipy_stats = pytest.importorskip("scipy.stats")
scipy_optimize = pytest.importorskip("scipy.optimize")

P_EX = np.array([0.4, 0.3, 0.2, 0.1])
Q_EX = np.array([0.1, 0.2, 0.3, 0.4])
P_MC = np.array([0.5, 0.2, 0.2, 0.1])  # §4(e) Monte-Carlo case
Q_MC = np.array([0.1, 0.4, 0.3, 0.2])
CHI2_MIN_PVALUE = 1e-3


def f32(x):
  return jnp.asarray(x, jnp.float32)


def assert_law(samples, law, n_categories=None):
  """Chi-square goodness of fit of integer samples to `law`; zero-probability bins must be empty."""
  law = np.asarray(law, np.float64).ravel()
  counts = np.bincount(np.asarray(samples).ravel(), minlength=n_categories or law.size)
  assert counts.size == law.size, counts
  assert counts[law == 0].sum() == 0, counts
  keep = law > 0
  stat = scipy_stats.chisquare(counts[keep], law[keep] / law[keep].sum() * counts.sum())
  assert stat.pvalue > CHI2_MIN_PVALUE, (counts / counts.sum(), law)


def assert_rate(events, expected, sigmas=4.0):
  """Mean of Bernoulli events within `sigmas` standard errors of `expected`."""
  events = np.asarray(events, np.float64)
  se = np.sqrt(expected * (1 - expected) / events.size)
  assert abs(events.mean() - expected) < sigmas * se + 1e-12, (events.mean(), expected)


def broadcast_rows(x, n):
  return jnp.broadcast_to(f32(x), (n, len(x)))


# --------------------------------------------------------------------------------------------
# Closed forms against the spec's numbers.
# --------------------------------------------------------------------------------------------


def test_worked_example_matches_spec_table():
  report = md.acceptance_report(P_EX, Q_EX, 3)
  assert report["single_draft"] == pytest.approx(0.600, abs=1e-12)
  assert report["kseq"] == pytest.approx(0.7939, abs=1e-4)
  assert report["optimal_iid"] == pytest.approx(0.8710, abs=1e-12)
  assert report["optimal_without_replacement"] == pytest.approx(1.000, abs=1e-12)
  rho = md.kseq_rho(P_EX, Q_EX, 3)
  assert rho == pytest.approx(1.9395, abs=1e-4)
  # At the root the acceptance equals ρ*·β(ρ*) (the equation solved; 30 halvings: ~1e-9).
  assert report["kseq"] == pytest.approx(rho * md.kseq_beta(P_EX, Q_EX, rho), abs=1e-8)
  # The f32 jax path agrees with the float64 numpy one.
  np.testing.assert_allclose(md.kseq_rho(f32(P_EX), f32(Q_EX), 3), rho, atol=1e-5)
  np.testing.assert_allclose(md.kseq_acceptance(f32(P_EX), f32(Q_EX), 3), report["kseq"],
                             atol=1e-5)
  np.testing.assert_allclose(md.optimal_multidraft_acceptance(f32(P_EX), f32(Q_EX), 3), 0.871,
                             atol=1e-6)
  # Recursive rejection: the spec quotes Monte-Carlo values ≈0.767 and ≈0.840; exact enumeration.
  assert md.recursive_rejection_acceptance(P_EX, Q_EX, 3) == pytest.approx(0.767, abs=2e-3)
  assert md.recursive_rejection_acceptance(P_EX, Q_EX, 3, replacement=False) == pytest.approx(
      0.840, abs=2e-3)
  # §4(e) case: acceptance 0.710.
  assert md.kseq_acceptance(P_MC, Q_MC, 3) == pytest.approx(0.710, abs=1e-4)


def test_kseq_rho_invariants():
  rng = np.random.default_rng(0)
  for _ in range(200):
    v, k = rng.integers(2, 8), int(rng.integers(1, 9))
    p, q = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))
    # k = 1 is §2: ρ = 1 and acceptance Σ min(p, q).
    if k == 1:
      assert md.kseq_rho(p, q, 1) == 1.0
      assert md.kseq_acceptance(p, q, 1) == pytest.approx(np.minimum(p, q).sum(), abs=1e-14)
      continue
    # Bernoulli: (1 − β)^k ≥ 1 − kβ, so the gap is ≤ 0 at ρ = k and a root always exists.
    beta_k = md.kseq_beta(p, q, np.float64(k))
    assert 1 - (1 - beta_k) ** k <= k * beta_k + 1e-15
    rho = md.kseq_rho(p, q, k)
    beta = md.kseq_beta(p, q, rho)
    assert 1.0 <= rho <= k
    assert abs(1 - (1 - beta) ** k - rho * beta) < 1e-8  # a root, to bisection accuracy
    # At the root the general residual equals max(0, p − ρq), with mass (1 − β)^k.
    general = p - np.minimum(q, p / rho) * (1 - (1 - beta) ** k) / beta
    np.testing.assert_allclose(general, np.maximum(0, p - rho * q), atol=1e-8)
    assert np.maximum(0, p - rho * q).sum() == pytest.approx((1 - beta) ** k, abs=1e-8)
  # Per-row k, zero candidates included: acceptance 0.
  acc = md.kseq_acceptance(np.stack([P_EX] * 3), np.stack([Q_EX] * 3), np.array([0, 1, 3]))
  np.testing.assert_allclose(acc, [0.0, 0.6, md.kseq_acceptance(P_EX, Q_EX, 3)], atol=1e-14)


# --------------------------------------------------------------------------------------------
# Optimum vs LP over couplings vs brute force.
# --------------------------------------------------------------------------------------------


def lp_optimal_acceptance(p, q, n, replacement):
  """max Σ f[t, x] over flows from draft tuple t to tokens x ∈ t, with Σ_x f[t, x] ≤ P(t) and
  Σ_t f[t, x] ≤ p(x): the largest probability that Y ~ p is one of the drafts under a coupling."""
  tuples, probs = md.draft_tuple_law(q, n, replacement)
  edges = [(t, x) for t, tup in enumerate(tuples) for x in sorted(set(tup.tolist()))]
  a = np.zeros((len(tuples) + len(p), len(edges)))
  for e, (t, x) in enumerate(edges):
    a[t, e] = 1.0
    a[len(tuples) + x, e] = 1.0
  res = scipy_optimize.linprog(-np.ones(len(edges)), A_ub=a, b_ub=np.concatenate([probs, p]),
                               bounds=(0, None), method="highs",
                               options={"primal_feasibility_tolerance": 1e-10,
                                        "dual_feasibility_tolerance": 1e-10})
  assert res.status == 0, res.message
  return -res.fun


def test_optimum_equals_lp_and_bruteforce_and_bounds_the_verifiers():
  rng = np.random.default_rng(1)
  cases = 0
  for _ in range(60):
    v = int(rng.integers(2, 6))
    n = int(rng.integers(1, min(v, 3) + 1))
    p = rng.dirichlet(np.full(v, rng.choice([0.5, 1.0, 3.0])))
    q = rng.dirichlet(np.full(v, rng.choice([0.5, 1.0, 3.0])))
    prefix = md.optimal_multidraft_acceptance(p, q, n)
    brute = md.optimal_multidraft_acceptance_bruteforce(p, q, n)
    lp = lp_optimal_acceptance(p, q, n, replacement=True)
    assert abs(prefix - brute) < 1e-8 and abs(prefix - lp) < 1e-8, (p, q, n, prefix, brute, lp)
    wor = md.optimal_multidraft_acceptance_bruteforce(p, q, n, replacement=False)
    assert abs(wor - lp_optimal_acceptance(p, q, n, replacement=False)) < 1e-8, (p, q, n)
    assert wor >= prefix - 1e-12  # distinct drafts never cover less
    if n == 1:
      assert prefix == pytest.approx(np.minimum(p, q).sum(), abs=1e-12)
    kseq = md.kseq_acceptance(p, q, n)
    assert (1 - 1 / np.e) * prefix <= kseq <= prefix + 1e-12, (p, q, n, kseq, prefix)
    assert md.recursive_rejection_acceptance(p, q, n) <= prefix + 1e-12
    assert md.recursive_rejection_acceptance(p, q, n, replacement=False) <= wor + 1e-12
    cases += 1
  assert cases >= 50
  # Batched f32 jax path agrees with the float64 numpy one.
  p = rng.dirichlet(np.ones(7), size=16)
  q = rng.dirichlet(np.ones(7), size=16)
  np.testing.assert_allclose(md.optimal_multidraft_acceptance(f32(p), f32(q), 3),
                             md.optimal_multidraft_acceptance(p, q, 3), atol=2e-6)


# --------------------------------------------------------------------------------------------
# K-SEQ sampler.
# --------------------------------------------------------------------------------------------

kseq_select = jax.jit(md.kseq_select)


def test_kseq_monte_carlo_law_and_acceptance():
  n, k = 200_000, 3
  p, q = broadcast_rows(P_MC, n), broadcast_rows(Q_MC, n)
  cands = md.sample_drafts(q, k, jax.random.key(0))
  assert_law(cands, Q_MC)  # the candidates really are i.i.d. q
  accepted, token, chosen = kseq_select(p, q, cands, jnp.full((n,), k, jnp.int32),
                                        jax.random.key(1))
  accepted, token, chosen = map(np.asarray, (accepted, token, chosen))
  assert_law(token, P_MC)
  closed = float(md.kseq_acceptance(P_MC, Q_MC, k))
  assert abs(accepted.mean() - 0.710) < 0.005
  assert_rate(accepted, closed)
  # chosen points at the first accepted candidate, which holds the token.
  np.testing.assert_array_equal(chosen >= 0, accepted)
  rows = np.flatnonzero(accepted)
  np.testing.assert_array_equal(np.asarray(cands)[rows, chosen[rows]], token[rows])


def test_kseq_with_one_candidate_is_standard_speculative_sampling():
  # §2(e)1-style case: V = 5, random p, q. Standard SD emits the draft with probability
  # min(1, p/q) (joint mass min(p, q)(x)) and otherwise a draw from max(0, p − q).
  rng = np.random.default_rng(2)
  p_row, q_row = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
  n = 200_000
  p, q = broadcast_rows(p_row, n), broadcast_rows(q_row, n)
  assert md.kseq_rho(p_row, q_row, 1) == 1.0
  cands = md.sample_drafts(q, 1, jax.random.key(3))
  accepted, token, _ = map(np.asarray, kseq_select(p, q, cands, jnp.ones((n,), jnp.int32),
                                                   jax.random.key(4)))
  # Joint law of (accepted, token) equals §2's: index token + V·rejected.
  joint = np.concatenate([np.minimum(p_row, q_row), np.maximum(p_row - q_row, 0)])
  assert_law(token + 5 * (~accepted), joint)
  assert_rate(accepted, np.minimum(p_row, q_row).sum())


def test_masked_candidates_are_never_chosen_and_law_stays_p():
  # k = 4 slots; the padding holds token 0, which p favours, so a mask leak would both choose a
  # padded slot and inflate token 0.
  n, k = 4 * 50_000, 4
  num = np.repeat(np.arange(4), n // 4).astype(np.int32)  # 0, 1, 2, 3 live candidates
  p, q = broadcast_rows(P_MC, n), broadcast_rows(Q_MC, n)
  cands = np.asarray(md.sample_drafts(q, k, jax.random.key(5)))
  cands = np.where(np.arange(k)[None, :] < num[:, None], cands, 0).astype(np.int32)
  accepted, token, chosen = map(np.asarray, kseq_select(p, q, jnp.asarray(cands),
                                                        jnp.asarray(num), jax.random.key(6)))
  assert np.all(chosen < num)
  for m in range(4):
    rows = num == m
    assert_law(token[rows], P_MC)
    assert_rate(accepted[rows], float(md.kseq_acceptance(P_MC, Q_MC, m)))
  assert not accepted[num == 0].any()


def test_kseq_batch_rows_are_independent_of_the_batch():
  # Per-row keys: a batch gives each row what that row alone gives with the same key.
  rng = np.random.default_rng(7)
  p = f32(rng.dirichlet(np.ones(6), size=5))
  q = f32(rng.dirichlet(np.ones(6), size=5))
  keys = jax.random.split(jax.random.key(8), 5)
  cands = md.sample_drafts(q, 3, keys)
  num = jnp.array([3, 2, 1, 0, 3], jnp.int32)
  batch = kseq_select(p, q, cands, num, keys)
  for b in range(5):
    row = kseq_select(p[b:b + 1], q[b:b + 1], cands[b:b + 1], num[b:b + 1], keys[b:b + 1])
    for got, want in zip(row, batch):
      assert got[0] == want[b]


def test_kseq_degenerate_rows():
  # p = q: ρ* → 1 and every first candidate is accepted. Disjoint supports: β ≡ 0, the gap is 0
  # for every ρ ("no root", ρ = k), nothing is accepted and the residual is p itself (token 0).
  # A candidate with p = 0 = q (row 2, padding-like) is never accepted.
  p = f32([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
  q = f32([[0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])
  cands = jnp.array([[3, 0, 1], [1, 2, 1], [3, 3, 3]], jnp.int32)
  np.testing.assert_allclose(md.kseq_rho(p, q, 3)[1], 3.0)
  np.testing.assert_allclose(md.kseq_acceptance(p, q, 3), [1.0, 0.0, 1.0], atol=1e-6)
  for seed in range(5):
    accepted, token, chosen = kseq_select(p, q, cands, jnp.full((3,), 3, jnp.int32),
                                          jax.random.key(seed))
    np.testing.assert_array_equal(accepted, [True, False, False])
    np.testing.assert_array_equal(chosen, [0, -1, -1])
    assert token[0] == 3 and token[1] == 0 and token[2] in (0, 1)


def test_shape_errors_name_the_argument():
  p = f32(np.full((2, 4), 0.25))
  with pytest.raises(ValueError, match="q"):
    md.kseq_select(p, p[:, :3], jnp.zeros((2, 3), jnp.int32), jnp.ones(2, jnp.int32),
                   jax.random.key(0))
  with pytest.raises(ValueError, match="num_candidates"):
    md.kseq_select(p, p, jnp.zeros((2, 3), jnp.int32), jnp.ones(3, jnp.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="p"):
    md.spectr_verify(jnp.zeros((2, 3, 3, 4)), jnp.zeros((2, 3, 3, 4)),
                     jnp.zeros((2, 3, 3), jnp.int32), jax.random.key(0))


# --------------------------------------------------------------------------------------------
# Recursive rejection sampling.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("replacement", [True, False])
def test_recursive_rejection_is_lossless(replacement):
  n = 200_000
  p, q = broadcast_rows(P_EX, n), broadcast_rows(Q_EX, n)
  cands = md.sample_drafts(q, 3, jax.random.key(9), replacement=replacement)
  if not replacement:
    c = np.sort(np.asarray(cands), axis=1)
    assert np.all(c[:, 1:] != c[:, :-1])  # distinct drafts
  accepted, token, chosen = map(np.asarray, jax.jit(md.recursive_rejection, static_argnums=4)(
      p, q, cands, jax.random.key(10), replacement))
  assert_law(token, P_EX)
  assert_rate(accepted, md.recursive_rejection_acceptance(P_EX, Q_EX, 3, replacement))
  rows = np.flatnonzero(accepted)
  np.testing.assert_array_equal(np.asarray(cands)[rows, chosen[rows]], token[rows])


# --------------------------------------------------------------------------------------------
# Sequence-level SpecTr on toy full-prefix tables.
# --------------------------------------------------------------------------------------------

V, K, L, MAX_CTX = 4, 3, 3, 5
OFFSETS = np.cumsum([0] + [V ** m for m in range(MAX_CTX + 1)])  # contexts of length 0..5


def context_ids(tokens, length):
  """Id of the prefix tokens[..., :length] (mixed radix per length). tokens int [..., ≥ length]."""
  radix = V ** np.arange(tokens.shape[-1])
  used = np.arange(tokens.shape[-1]) < length[..., None]
  return OFFSETS[length] + np.sum(np.where(used, tokens * radix, 0), axis=-1)


def draw(rng, probs):
  """One draw per row of probs [..., V] by inverse CDF."""
  u = rng.random(probs.shape[:-1] + (1,))
  return np.minimum(np.sum(np.cumsum(probs, -1) < u, -1), V - 1)


def test_spectr_sequence_law_equals_target_autoregressive_law():
  rng = np.random.default_rng(11)
  # The target and the draft depend on the whole prefix, so reading p from a draft row with a
  # different prefix would change the law.
  p_tab = rng.dirichlet(np.ones(V), size=OFFSETS[-1])
  q_tab = rng.dirichlet(np.full(V, 0.7), size=OFFSETS[-1])
  n = 100_000
  out = np.zeros((n, 3 + L + 1), np.int64)  # emitted tokens; ≤ L + 1 per round
  count = np.zeros(n, np.int64)
  verify = jax.jit(md.spectr_verify)
  key = jax.random.key(12)
  for rnd in range(3):  # each round emits ≥ 1 token, so 3 rounds give ≥ 3
    m = np.where(count < 3, count, 0)  # finished rows replay a dummy empty prefix
    seq = np.zeros((n, K, MAX_CTX + 1), np.int64)
    seq[:, :, :3] = np.minimum(out[:, None, :3], V - 1)
    mk = np.broadcast_to(m[:, None], (n, K))
    q_rows = np.zeros((n, K, L, V))
    p_rows = np.zeros((n, K, L + 1, V))
    for j in range(L + 1):
      ids = context_ids(seq, mk + j)
      p_rows[:, :, j] = p_tab[ids]
      if j < L:
        q_rows[:, :, j] = q_tab[ids]
        np.put_along_axis(seq, (mk + j)[..., None], draw(rng, q_rows[:, :, j])[..., None], -1)
    drafts = np.take_along_axis(seq, mk[..., None] + np.arange(L), axis=-1)
    n_acc, row, nxt = map(np.asarray, verify(f32(p_rows), f32(q_rows),
                                             jnp.asarray(drafts, jnp.int32),
                                             jax.random.fold_in(key, rnd)))
    emitted = np.concatenate([drafts[np.arange(n), row], nxt[:, None]], axis=1)
    for i in range(L + 1):
      write = (count < 3) & (i <= n_acc)
      tok = np.where(i < n_acc, emitted[:, i], nxt)
      out[write, count[write]] = tok[write]
      count = count + write
  assert np.all(count >= 3)
  first3 = out[:, 0] * V * V + out[:, 1] * V + out[:, 2]
  x = np.array(list(itertools.product(range(V), repeat=3)))
  law = (p_tab[context_ids(x, np.zeros(len(x), int))][np.arange(len(x)), x[:, 0]]
         * p_tab[context_ids(x, np.ones(len(x), int))][np.arange(len(x)), x[:, 1]]
         * p_tab[context_ids(x, np.full(len(x), 2))][np.arange(len(x)), x[:, 2]])
  assert law.sum() == pytest.approx(1.0)
  assert_law(first3, law)


def test_spectr_survivors_and_duplicate_candidates():
  # Fixed drafts, the same p and q at every prefix: rows 0 and 1 share the prefix (0, 1), row 2
  # starts with 1. With fixed candidates K-SEQ accepts X_i with probability
  # r(x) = min(1, p(x)/(ρ q(x))), ρ = ρ*(k') for the k' survivors, so:
  #   depth 0, candidates (0, 0, 1), k' = 3: emits 0 w.p. 1 − (1−r₃(0))², 1 w.p. (1−r₃(0))² r₃(1);
  #   depth 1 after 0: candidates (1, 1), k' = 2: accepted w.p. 1 − (1−r₂(1))²;
  #   depth 1 after 1: candidate (2), k' = 1: accepted w.p. min(1, p(2)/q(2)).
  b = 100_000
  # Every r below is < 1, so each branch is visited.
  p_row, q_row = np.array([0.2, 0.3, 0.1, 0.4]), np.array([0.4, 0.3, 0.2, 0.1])
  drafts = np.zeros((b, K, L), np.int32)
  drafts[:, 0] = [0, 1, 2]
  drafts[:, 1] = [0, 1, 3]
  drafts[:, 2] = [1, 2, 3]
  p = np.broadcast_to(p_row, (b, K, L + 1, V))
  q = np.broadcast_to(q_row, (b, K, L, V))
  n_acc, row, nxt = map(np.asarray, jax.jit(md.spectr_verify)(f32(p), f32(q),
                                                              jnp.asarray(drafts),
                                                              jax.random.key(14)))

  def r(k):
    return np.minimum(1.0, p_row / (md.kseq_rho(p_row, q_row, k) * q_row))

  r3, r2, r1 = r(3), r(2), r(1)
  first = np.where(n_acc >= 1, drafts[np.arange(b), row, 0], -1)
  assert_rate(first == 0, 1 - (1 - r3[0]) ** 2)
  assert_rate(first == 1, (1 - r3[0]) ** 2 * r3[1])
  assert_rate(n_acc[first == 0] >= 2, 1 - (1 - r2[1]) ** 2)
  assert_rate(n_acc[first == 1] >= 2, r1[2])
  # The kept row holds the emitted prefix: after (0, 1) it is row 0 or 1, after (1, ...) row 2.
  assert np.all(np.isin(row[first == 0], [0, 1])) and np.all(row[first == 1] == 2)
  for m in range(1, L + 1):
    rows = n_acc == m
    np.testing.assert_array_equal(drafts[rows, row[rows], :m][:, :1], first[rows][:, None])
  # The residual after a depth-0 rejection never emits a token below ρ₃·q (max(0, p − ρq) form):
  # with ρ₃ ≥ 1 that rules out tokens 0 and 1 here (p ≤ q), only 2 (if ρ₃q(2) < p(2)) or 3.
  allowed = np.flatnonzero(p_row - md.kseq_rho(p_row, q_row, 3) * q_row > 0)
  assert np.all(np.isin(nxt[n_acc == 0], allowed))


def test_spectr_greedy_is_the_longest_match():
  # Target greedy path from prefix x: g(x) = (len(x) + sum(x)) mod V (one-hot scores).
  def g(prefix):
    return (len(prefix) + sum(prefix)) % V

  path = []
  for _ in range(L + 1):
    path.append(g(path))  # 0, 1, 3, 3
  drafts = np.array([
      [[0, 1, 3], [2, 2, 2], [0, 0, 0]],  # draft 0 matches fully → 3 accepted, bonus g(0,1,3) = 3
      [[0, 0, 0], [0, 1, 0], [2, 1, 3]],  # draft 1 matches 2 tokens → next g(0,1) = 3
      [[1, 1, 3], [2, 1, 3], [3, 0, 0]],  # nothing matches → 0 accepted, next g() = 0
      [[0, 2, 2], [0, 1, 2], [0, 1, 3]],  # drafts 1, 2 share 2 tokens; draft 2 matches all 3
  ], np.int32)
  b = drafts.shape[0]
  p = np.zeros((b, K, L + 1, V), np.float32)
  for i, j, d in itertools.product(range(b), range(K), range(L + 1)):
    p[i, j, d, g(list(drafts[i, j, :d]))] = 1.0
  n_acc, row, nxt = map(np.asarray, jax.jit(md.spectr_verify_greedy)(jnp.asarray(p),
                                                                      jnp.asarray(drafts)))
  assert path == [0, 1, 3, 3]
  np.testing.assert_array_equal(n_acc, [3, 2, 0, 3])
  np.testing.assert_array_equal(nxt, [3, 3, 0, 3])
  np.testing.assert_array_equal(row[[0, 1, 3]], [0, 1, 2])
  for i in range(b):
    emitted = list(drafts[i, row[i], :n_acc[i]]) + [nxt[i]]
    assert emitted == path[:len(emitted)]
