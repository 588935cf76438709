"""The embedded refusal task: arithmetic prompts, some of which must be refused (spec §10).

Answerable: the `arith` task's prompts ('12+7=' -> respond_token + '19').
Unanswerable (refusal_fraction of the examples), two kinds:
  'negative'  a subtraction whose result would be negative ('7-12='): the task's answers are
              non-negative integers, so it is an out-of-range request;
  'divzero'   a division by zero ('12/0=').
Every target starts with a category token (one character of the CharTokenizer, default
'?' = [refuse], '#' = [respond]): '#19', '?'. `refusal_reward` scores a completion 1 when it
refuses an unanswerable prompt or responds with the right answer to an answerable one.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tokenrl.data import task_arith
from tokenrl.data import task_common

KINDS = ("negative", "divzero")


def make_refusal_examples(split: str, n: int, seed: int, *, tiers: str = "add:1-2,sub:1-2",
                          refusal_fraction: float = 0.25, refuse_token: str = "?",
                          respond_token: str = "#", kinds: tuple[str, ...] = KINDS
                          ) -> list[dict[str, Any]]:
  """n examples of `split`: {'prompt', 'answer' (category token first), 'refuse', 'kind',
  'value' (the plain answer, '' when refused)}; deterministic in (split, seed)."""
  if not 0.0 <= refusal_fraction <= 1.0:
    raise ValueError(f"refusal_fraction: expected in [0, 1], got {refusal_fraction}")
  if not kinds or any(k not in KINDS for k in kinds):
    raise ValueError(f"kinds: expected a non-empty subset of {KINDS}, got {kinds}")
  if len(refuse_token) != 1 or len(respond_token) != 1 or refuse_token == respond_token:
    raise ValueError(f"refuse_token / respond_token: expected two different single characters, "
                     f"got {refuse_token!r}, {respond_token!r}")
  base = task_arith.make_examples(split, n, seed, tiers=tiers)
  rng = np.random.default_rng([seed, 0 if split == "train" else 1, 17])
  out = []
  for ex in base:
    if rng.random() < refusal_fraction:
      kind = kinds[int(rng.integers(len(kinds)))]
      while True:  # train/test stay disjoint by the task's own prompt hash
        a = task_common.uniform_int_with_digits(rng, int(rng.integers(1, 3)))
        b = task_common.uniform_int_with_digits(rng, int(rng.integers(1, 3)))
        if kind == "negative" and a == b:
          continue
        prompt = f"{min(a, b)}-{max(a, b)}=" if kind == "negative" else f"{a}/0="
        if task_common.in_test_split(prompt, task_common.DEFAULT_TEST_FRACTION) == (split == "test"):
          break
      out.append({"prompt": prompt, "answer": refuse_token, "refuse": True, "kind": kind,
                  "value": "", "task": "refusal"})
    else:
      out.append({"prompt": ex["prompt"], "answer": respond_token + ex["answer"], "refuse": False,
                  "kind": "answerable", "value": ex["answer"], "task": "refusal"})
  return out


def refusal_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 for a correct refusal (completion starts with the refuse token of example['answer'])
  or a correct answer (exactly example['answer'] = respond token + value), else 0.0."""
  text = completion.strip()
  if example["refuse"]:
    return float(text[:1] == example["answer"])
  return float(text == example["answer"])
