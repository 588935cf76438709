"""Sorting digits: 'sort 3142=' -> '1234' (ascending, repeats allowed).

Tiers: 'len:3-5' = the number of digits is uniform in [3, 5], each digit uniform in 0-9.
Cheap and learnable by tiny models (one output token per input digit). Verifier: exact match.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tokenrl.data import task_common

NAME = "sort"
DEFAULT_TIERS = "len:3-5"


def make_examples(split: str, n: int, seed: int, *, tiers: str = DEFAULT_TIERS,
                  test_fraction: float = task_common.DEFAULT_TEST_FRACTION,
                  unique: bool = False) -> list[dict[str, Any]]:
  """n sorting problems of `split`.

  Returns:
    [{'prompt': 'sort 3142=', 'answer': '1234', 'task': 'sort', 'digits': [3, 1, 4, 2]}].
  """
  parsed = task_common.parse_tiers(tiers, allowed={"len": (1, 32)})

  def draw(rng: np.random.Generator) -> dict[str, Any]:
    _, lo, hi = parsed[int(rng.integers(len(parsed)))]
    digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(lo, hi + 1)))]
    return {"prompt": "sort " + "".join(map(str, digits)) + "=",
            "answer": "".join(map(str, sorted(digits))), "task": NAME, "digits": digits}

  return task_common.sample_split(draw, task=NAME, split=split, n=n, seed=seed,
                                  test_fraction=test_fraction, unique=unique)
