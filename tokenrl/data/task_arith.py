"""Integer arithmetic: '12+7=' -> '19' (addition, subtraction, multiplication, 1-9 digits).

Tiers: 'add:1-2,sub:1-2,mul:1' means: pick one entry uniformly, then each operand gets a digit
count uniform in [lo, hi] and a value uniform among integers with that many digits. Subtraction
puts the larger operand first, so answers are >= 0. Verifier: exact match
(`rewards.exact_answer_reward`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tokenrl.data import task_common

NAME = "arith"
DEFAULT_TIERS = "add:1-2,sub:1-2,mul:1"
_OPS = {"add": "+", "sub": "-", "mul": "*"}


def make_examples(split: str, n: int, seed: int, *, tiers: str = DEFAULT_TIERS,
                  test_fraction: float = task_common.DEFAULT_TEST_FRACTION,
                  unique: bool = False) -> list[dict[str, Any]]:
  """n arithmetic problems of `split` ('train' | 'test').

  Returns:
    [{'prompt': '12+7=', 'answer': '19', 'task': 'arith', 'op': 'add', 'operands': [12, 7]}].
  """
  parsed = task_common.parse_tiers(tiers, allowed={k: (1, 9) for k in _OPS})

  def draw(rng: np.random.Generator) -> dict[str, Any]:
    op, lo, hi = parsed[int(rng.integers(len(parsed)))]
    a = task_common.uniform_int_with_digits(rng, int(rng.integers(lo, hi + 1)))
    b = task_common.uniform_int_with_digits(rng, int(rng.integers(lo, hi + 1)))
    if op == "sub" and a < b:
      a, b = b, a
    result = a + b if op == "add" else a - b if op == "sub" else a * b
    return {"prompt": f"{a}{_OPS[op]}{b}=", "answer": str(result), "task": NAME, "op": op,
            "operands": [a, b]}

  return task_common.sample_split(draw, task=NAME, split=split, n=n, seed=seed,
                                  test_fraction=test_fraction, unique=unique)
