"""Registry of the embedded tasks (no download): name -> generator + verifier + default tiers.

  arith      '12+7=' -> '19'                  tiers 'add:1-2,sub:1-2,mul:1'   exact match
  sort       'sort 3142=' -> '1234'           tiers 'len:3-5'                 exact match
  copy       'copy k3x9=' -> 'k3x9'           tiers 'len:8-16'                exact match
  countdown  'make 22 from 7 3 5=' -> '3*5+7' tiers 'nums:3,vals:1-9,target:1-50'  expression check
  hidden_length '12+345=357;' -> '<count>150</count>' tiers 'math:1-4,code:3-8'  RE <= 0.1 (PALACE)
  arith_cot  '37*48=' -> '37*8=296\\n37*40=1480\\n296+1480=1776\\n#1776'
             tiers 'mul:2-4,chain:3-10,reflect:20'    exact match of the text after '#'
             (a worked trace, one step per line; 20% with a '?' reflection that fixes a slip)

`make_examples(task, split, n, seed, tiers=..., test_fraction=0.1, unique=False)`; train and
test never share a prompt (see task_common.py). All prompts and answers fit `CharTokenizer`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from tokenrl.data import rewards
from tokenrl.data import task_arith
from tokenrl.data import task_arith_cot
from tokenrl.data import task_copy
from tokenrl.data import task_countdown
from tokenrl.data import task_hidden_length
from tokenrl.data import task_sort


@dataclasses.dataclass(frozen=True)
class Task:
  """name; make_examples(split, n, seed, *, tiers, test_fraction, unique) -> list[example];
  reward_fn(completion, example) -> float; default_tiers."""
  name: str
  make_examples: Callable[..., list[dict[str, Any]]]
  reward_fn: rewards.RewardFn
  default_tiers: str


TASKS: dict[str, Task] = {
    m.NAME: Task(m.NAME, m.make_examples, rewards.TASK_VERIFIERS[m.NAME], m.DEFAULT_TIERS)
    for m in (task_arith, task_sort, task_copy, task_countdown, task_hidden_length,
              task_arith_cot)
}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
  return TASKS[name]


def make_examples(task: str, split: str, n: int, seed: int, **tier: Any) -> list[dict[str, Any]]:
  """n examples of `task` for `split` ('train' | 'test'); `tier` = tiers/test_fraction/unique."""
  return get_task(task).make_examples(split, n, seed, **tier)
