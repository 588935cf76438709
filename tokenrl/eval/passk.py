"""Unbiased pass@k (Chen et al. 2021) and majority-vote accuracy from n samples per problem."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """pass@k = 1 − C(n−c, k) / C(n, k), computed as a stable product; requires k <= n."""
  if not 0 < k <= num_samples:
    raise ValueError(f"k must be in [1, n={num_samples}], got {k}")
  if num_samples - num_correct < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))


def majority_correct(answers: Sequence[str], correct: Sequence[bool]) -> bool:
  """maj@n: is the most frequent answer (ties: first seen) a correct one?"""
  if not answers:
    return False
  counts = Counter(answers)
  best = max(counts.values())
  for answer, ok in zip(answers, correct):
    if counts[answer] == best:
      return bool(ok)
  return False
