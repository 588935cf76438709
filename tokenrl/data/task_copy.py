"""Copying a string: 'copy k3x9q2=' -> 'k3x9q2' (the completion repeats the prompt's text).

Tiers: 'len:8-16' = the string length is uniform in [8, 16], each character uniform over the
36 lowercase letters and digits. The copy-like task of speculative decoding (issue 15): its
completion re-reads a span of the prompt, the case prompt-lookup (n-gram) drafting is built for
(code edits, quoting, retrieval answers), and a small draft model learns it almost exactly.
With 36 symbols a bigram recurs inside one 16-character string with probability < 0.1, so
looking up the last two tokens finds the right continuation almost always. Verifier: exact match.
"""
from __future__ import annotations

import string
from typing import Any

from tokenrl.data import task_common

NAME = "copy"
DEFAULT_TIERS = "len:8-16"
ALPHABET = string.ascii_lowercase + string.digits


def make_examples(split: str, n: int, seed: int, *, tiers: str = DEFAULT_TIERS,
                  test_fraction: float = task_common.DEFAULT_TEST_FRACTION,
                  unique: bool = False) -> list[dict[str, Any]]:
  """n copying problems of `split`.

  Returns:
    [{'prompt': 'copy k3x9q2=', 'answer': 'k3x9q2', 'task': 'copy'}].
  """
  parsed = task_common.parse_tiers(tiers, allowed={"len": (1, 48)})

  def draw(rng) -> dict[str, Any]:
    _, lo, hi = parsed[int(rng.integers(len(parsed)))]
    idx = rng.integers(0, len(ALPHABET), size=int(rng.integers(lo, hi + 1)))
    text = "".join(ALPHABET[int(i)] for i in idx)
    return {"prompt": f"copy {text}=", "answer": text, "task": NAME}

  return task_common.sample_split(draw, task=NAME, split=split, n=n, seed=seed,
                                  test_fraction=test_fraction, unique=unique)
