"""Per-prompt selection over N sampled responses: majority vote, best-of-N, Best-of-Majority, FFS.

Each strategy returns the indices it *submits* (at most k), so a caller scores the strategy's
pass@k with `strategy_pass_at_k` (success if any submitted response is correct). This is not the
unbiased pass@k of `passk.pass_at_k`, which estimates the chance that k random samples contain a
correct one; report the two under distinct names (spec §11).

Conventions shared by every strategy:
  * answers [N]: normalised final answers (any hashable; equal answers form one group). None
    means "no parseable answer": it can never be graded correct, so a None answer is submitted
    only when every answer is None (then exactly one index), and never fills a spare slot.
  * Distinct answers per slot: submitting one answer twice wastes a slot, so best-of-N and BoM
    submit one representative per answer: its best-scoring member (ties: lowest index). Majority
    vote has no scores and submits the first occurrence.
  * Ties between groups or samples go to the lowest index (majority vote: the answer seen first),
    so every strategy is deterministic given its inputs.
  * lengths count generated tokens including the EOS token; `finished` marks rows that emitted
    EOS (a truncated row has no EOS and finished=False).
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable, Optional, Sequence

import numpy as np

Answer = Optional[Hashable]


def _check_k(k: int) -> None:
  if int(k) != k or k < 1:
    raise ValueError(f"k: expected an integer >= 1, got {k!r}")


def _rewards(rewards, n: int) -> np.ndarray:
  r = np.asarray(rewards, np.float64)
  if r.shape != (n,):
    raise ValueError(f"rewards: expected shape ({n},), got {r.shape}")
  if np.isnan(r).any():
    raise ValueError(f"rewards: NaN at indices {np.flatnonzero(np.isnan(r)).tolist()}")
  return r


def majority_vote(answers: Sequence[Answer], k: int = 1) -> list[int]:
  """maj@k submission: the k most frequent distinct non-None answers, first occurrence of each.

  Ties in frequency go to the answer seen first. All None: [0]. Empty input: [].
  """
  _check_k(k)
  if not answers:
    return []
  counts = Counter(a for a in answers if a is not None)
  if not counts:
    return [0]
  first = {}
  for i, a in enumerate(answers):
    if a is not None:
      first.setdefault(a, i)
  ranked = sorted(counts, key=lambda a: (-counts[a], first[a]))
  return [first[a] for a in ranked[:k]]


def best_of_n(answers: Sequence[Answer], rewards, k: int = 1, dedupe: bool = True) -> list[int]:
  """Top-k BoN: the k best-scoring samples by reward (ties: lowest index).

  dedupe=True (default) keeps only the best-scoring member of each answer, so the k slots hold
  k distinct answers; dedupe=False submits the top-k samples even when they share an answer.
  None answers are skipped; all None: [argmax reward]. Empty input: [].
  """
  _check_k(k)
  if not answers:
    return []
  r = _rewards(rewards, len(answers))
  order = sorted(range(len(answers)), key=lambda i: (-r[i], i))
  out, seen = [], set()
  for i in order:
    a = answers[i]
    if a is None or (dedupe and a in seen):
      continue
    seen.add(a)
    out.append(i)
    if len(out) == k:
      break
  return out or [order[0]]


def best_of_majority(answers: Sequence[Answer], rewards, k: int = 1, alpha: float = 0.0,
                     group_score: str = "max") -> list[int]:
  """Best-of-Majority (spec §11(b)): top-k by reward among the frequent answers.

  π̂(y) = count(y)/N over all N samples (None answers count in N but are never candidates);
  C = {y ≠ None : π̂(y) ≥ alpha}; submit the top min(k, |C|) groups of C by group score, the max
  or mean reward of the group's members (`group_score`), one representative per group: its
  best-scoring member. Group-score ties go to the group whose representative has the lower index.
  C empty (alpha above every frequency, or all None) [recon]: fall back to the most frequent
  answer (ties: first seen, as majority_vote), represented by its best-scoring member.

  Limiting cases: alpha = 0 with 'max' is best_of_n(dedupe=True); alpha = the maximum frequency
  with k = 1 submits the majority answer (with a unique mode; tied modes are split by reward).
  """
  _check_k(k)
  if group_score not in ("max", "mean"):
    raise ValueError(f"group_score: expected 'max' or 'mean', got {group_score!r}")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha: expected a frequency in [0, 1], got {alpha}")
  if not answers:
    return []
  n = len(answers)
  r = _rewards(rewards, n)
  members: dict[Answer, list[int]] = {}
  for i, a in enumerate(answers):
    members.setdefault(a, []).append(i)
  # Representative = best-scoring member, ties lowest index (members are in index order).
  rep = {a: max(idx, key=lambda i: (r[i], -i)) for a, idx in members.items()}
  # Compare count/N exactly as a caller computing max frequency would: alpha = max_count/N keeps
  # the modal groups (the same float), so the "alpha = max frequency" limit holds bit for bit.
  cands = [a for a in members if a is not None and len(members[a]) / n >= alpha]
  if not cands:
    fallback = answers[majority_vote(answers, 1)[0]]
    return [rep[fallback]]
  agg = np.max if group_score == "max" else np.mean
  score = {a: float(agg(r[members[a]])) for a in cands}
  cands.sort(key=lambda a: (-score[a], rep[a]))
  return [rep[a] for a in cands[:k]]


def _lengths_finished(lengths, finished) -> tuple[np.ndarray, np.ndarray]:
  ln, fin = np.asarray(lengths), np.asarray(finished, bool)
  if ln.ndim != 1 or not np.issubdtype(ln.dtype, np.integer):
    raise ValueError(f"lengths: expected an integer array [N], got {ln.dtype} {ln.shape}")
  if fin.shape != ln.shape:
    raise ValueError(f"finished: expected shape {ln.shape}, got {fin.shape}")
  if (ln < 0).any():
    raise ValueError(f"lengths: expected >= 0, got {ln.min()}")
  # A finished row emitted EOS, and lengths count the EOS, so it is at least 1 token long.
  if (fin & (ln < 1)).any():
    raise ValueError("lengths: a finished row must have length >= 1 (lengths include the EOS)")
  return ln, fin


def first_finish(lengths, finished, tie: str = "lowest",
                 rng: np.random.Generator | None = None) -> int | None:
  """Sync-FFS (spec §12): index of the shortest finished sample, None if no sample finished.

  Decoding n rows in lockstep and stopping at the first EOS returns the finished row of minimum
  length, which is what this computes from n fully generated samples (same keys, same result).
  tie='lowest': ties to the lowest index; 'random': uniform among the tied rows with `rng` (a
  numpy Generator, required). No finished row returns None: Sync-FFS never stops early and has no
  answer to submit, which a caller counts as a failure (submit []).
  """
  if tie not in ("lowest", "random"):
    raise ValueError(f"tie: expected 'lowest' or 'random', got {tie!r}")
  if tie == "random" and rng is None:
    raise ValueError("rng: tie='random' needs a numpy Generator, got None")
  ln, fin = _lengths_finished(lengths, finished)
  if not fin.any():
    return None
  shortest = ln[fin].min()
  tied = np.flatnonzero(fin & (ln == shortest))
  return int(tied[0] if tie == "lowest" else rng.choice(tied))


def ffs_token_cost(lengths, finished) -> int:
  """Tokens Sync-FFS generates: Σ_i min(lengths_i, L*), L* = the shortest finished length.

  Every row decodes until it stops or the winner emits EOS at step L*. Usually every other row
  is still running at L*, so this is n × L*: the spec's "n × (min length + 1)" (§12(e)) counts
  the length without the EOS and adds it back, while our lengths already include the EOS, hence
  no +1 here. No finished row: nothing stops early, so every row's full length counts.
  """
  ln, fin = _lengths_finished(lengths, finished)
  if not fin.any():
    return int(ln.sum())
  return int(np.minimum(ln, ln[fin].min()).sum())


def strategy_pass_at_k(submitted: Sequence[int], correct) -> bool:
  """A strategy's pass@k: is any submitted index correct? Nothing submitted (FFS None) is False."""
  ok = np.asarray(correct, bool)
  idx = np.asarray(list(submitted), np.int64)
  if ok.ndim != 1:
    raise ValueError(f"correct: expected a vector [N], got shape {ok.shape}")
  if idx.size and (idx.min() < 0 or idx.max() >= ok.size):
    raise ValueError(f"submitted: expected indices in [0, {ok.size}), got {idx.tolist()}")
  return bool(ok[idx].any()) if idx.size else False
