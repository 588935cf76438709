"""Selection strategies and unbiased pass@k (spec §11, §12): hand-worked cases, pass@k against
brute-force enumeration of k-subsets, BoM's limiting cases (alpha = 0 is top-k best-of-N, alpha
= the maximum frequency is majority vote), FFS = the shortest finished sample."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from tokenrl.eval.passk import pass_at_k
from tokenrl.eval.selection import (best_of_majority, best_of_n, ffs_token_cost, first_finish,
                                    majority_vote, strategy_pass_at_k)


def test_pass_at_k_hand_cases():
  assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-12)
  assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5), abs=1e-12)
  assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12, abs=1e-12)   # 1 − 21/252
  assert pass_at_k(10, 0, 4) == 0.0 and pass_at_k(10, 7, 4) == 1.0  # n − c < k: certain


def test_pass_at_k_equals_brute_force_over_all_k_subsets():
  # Label samples 0..c-1 correct: a k-subset passes iff its smallest index is < c, so one
  # enumeration per (n, k) gives the exact fraction for every c.
  for n in range(1, 13):
    for k in range(1, n + 1):
      mins = Counter(s[0] for s in itertools.combinations(range(n), k))
      total = math.comb(n, k)
      for c in range(n + 1):
        exact = sum(v for m, v in mins.items() if m < c) / total
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_majority_vote_ties_first_seen_and_none_never_wins():
  assert majority_vote(["b", "a", "a", "b", "c"]) == [0]             # a, b tie: b seen first
  assert majority_vote(["b", "a", "a", "b", "c"], k=3) == [0, 1, 4]
  assert majority_vote([None, None, None, "x"]) == [3]
  assert majority_vote([None, "x"], k=2) == [1]                      # None fills no spare slot
  assert majority_vote([None, None]) == [0] and majority_vote([]) == []


def test_best_of_n_dedupes_by_answer_and_breaks_ties_low():
  answers = ["a", "a", "b", None, "c"]
  rewards = [0.9, 0.9, 0.5, 1.0, 0.5]
  assert best_of_n(answers, rewards, k=1) == [0]                     # None skipped; tie -> 0
  assert best_of_n(answers, rewards, k=3) == [0, 2, 4]               # a once; b, c tie -> 2
  assert best_of_n(answers, rewards, k=2, dedupe=False) == [0, 1]
  assert best_of_n([None, None], [0.1, 0.7]) == [1]
  with pytest.raises(ValueError, match="rewards"):
    best_of_n(answers, rewards[:4])


def test_bom_hand_case_differs_from_majority_and_best_of_n():
  # N = 6: π̂(a) = 3/6, π̂(b) = 2/6, π̂(c) = 1/6. alpha = 0.3 keeps C = {a, b}; max scores a 0.3,
  # b 0.8 (means 0.2, 0.65), so BoM submits b (its best member, index 3). Majority submits a
  # (index 0); best-of-N submits the rare c (index 5, reward 0.9).
  answers = ["a", "a", "a", "b", "b", "c"]
  rewards = [0.1, 0.2, 0.3, 0.8, 0.5, 0.9]
  for gs in ("max", "mean"):
    assert best_of_majority(answers, rewards, k=1, alpha=0.3, group_score=gs) == [3]
  assert majority_vote(answers) == [0]
  assert best_of_n(answers, rewards) == [5]
  # k = 2: BoM [b, a] with a's best member (index 2); BoN [c, b]; majority [a, b].
  assert best_of_majority(answers, rewards, k=2, alpha=0.3) == [3, 2]
  assert best_of_n(answers, rewards, k=2) == [5, 3]
  assert majority_vote(answers, k=2) == [0, 3]
  # C holds 2 groups, so k = 5 submits only min(k, |C|) = 2.
  assert best_of_majority(answers, rewards, k=5, alpha=0.3) == [3, 2]
  # alpha above every frequency: empty C falls back to the majority answer, best member.
  assert best_of_majority(answers, rewards, k=2, alpha=0.9) == [2]
  correct = [False, False, False, True, True, False]
  assert strategy_pass_at_k([3], correct) and not strategy_pass_at_k([0, 5], correct)


def test_bom_group_score_max_vs_mean():
  # a: max 0.9, mean 0.5; b: 0.6.
  assert best_of_majority(["a", "a", "b"], [0.9, 0.1, 0.6], group_score="max") == [0]
  assert best_of_majority(["a", "a", "b"], [0.9, 0.1, 0.6], group_score="mean") == [2]


def _random_case(rng):
  n = int(rng.integers(1, 13))
  pool = ["a", "b", "c", "d", None]
  answers = [pool[i] for i in rng.integers(0, int(rng.integers(1, 6)), size=n)]
  rewards = rng.integers(0, 4, size=n) / 4.0                          # coarse: forces ties
  return answers, rewards


def test_bom_alpha_zero_is_top_k_best_of_n():
  rng = np.random.default_rng(0)
  for _ in range(300):
    answers, rewards = _random_case(rng)
    for k in (1, 2, 3, 5):
      assert best_of_majority(answers, rewards, k=k, alpha=0.0) == best_of_n(answers, rewards, k=k)


def test_bom_alpha_max_frequency_is_majority_vote():
  rng = np.random.default_rng(1)
  checked = 0
  for _ in range(300):
    answers, rewards = _random_case(rng)
    counts = Counter(a for a in answers if a is not None)
    top = counts.most_common()
    if not top or (len(top) > 1 and top[0][1] == top[1][1]):
      continue  # tied modes: BoM splits them by reward, majority vote by first occurrence
    alpha = top[0][1] / len(answers)
    bom = best_of_majority(answers, rewards, k=1, alpha=alpha)
    assert answers[bom[0]] == answers[majority_vote(answers)[0]]
    checked += 1
  assert checked > 50


def test_first_finish_is_argmin_over_finished_lowest_index():
  lengths = np.array([7, 3, 5, 3, 2, 9])
  finished = np.array([True, True, True, True, False, False])           # 4: short but truncated
  assert first_finish(lengths, finished) == 1
  rng = np.random.default_rng(0)
  assert {first_finish(lengths, finished, tie="random", rng=rng) for _ in range(50)} == {1, 3}
  assert first_finish(lengths, np.zeros(6, bool)) is None
  assert not strategy_pass_at_k([], [True] * 6)                        # FFS None = failure
  gen = np.random.default_rng(2)
  for _ in range(200):
    ln = gen.integers(1, 6, size=8)
    fin = gen.random(8) < 0.6
    if fin.any():
      masked = np.where(fin, ln, np.iinfo(np.int64).max)
      assert first_finish(ln, fin) == int(np.argmin(masked))           # argmin: first minimum
  with pytest.raises(ValueError, match="rng"):
    first_finish(lengths, finished, tie="random")


def test_ffs_token_cost():
  # Winner: 3 tokens incl. EOS (2 + EOS, the spec's "min length + 1"); all 4 rows decode 3 steps.
  lengths = np.array([7, 3, 5, 8])
  assert ffs_token_cost(lengths, np.array([True, True, False, False])) == 4 * 3
  # A row stopped (truncated) before the winner adds only its own tokens.
  assert ffs_token_cost(np.array([2, 5, 6]), np.array([False, True, False])) == 2 + 5 + 5
  assert ffs_token_cost(np.array([4, 4]), np.array([False, False])) == 8  # none stops early
  with pytest.raises(ValueError, match="lengths"):
    ffs_token_cost(np.array([0, 3]), np.array([True, True]))
