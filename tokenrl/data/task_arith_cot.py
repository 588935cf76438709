"""Worked arithmetic: '37*48=' -> a scratchpad, one step per line, then '#' and the answer.

The embedded reasoning task (issue 16): its SFT target is the whole worked trace, so methods that
act on *how long* or *how* a model thinks (budget guidance, CyclicReflex, BRPO, RMT) have a
thought to act on, while the verifier reads the final answer only.

Format (every character is in `CharTokenizer`):

  prompt      '37*48='
  completion  '37*8=296\\n37*40=1480\\n296+1480=1776\\n#1776'   then EOS

  - One step per line, 'x<op>y=z' with x, y, z integers >= 0 and <op> one of + - *. Lines are
    separated by '\\n', so "the first token of a new line" (budget guidance's guidance step,
    spec decoding-and-test-time §9) is where the model chooses among the next step, a
    reflection ('?') and ending the thought ('#').
  - THINK_END = '#' ends the thought; the final answer follows it directly and the sequence ends
    (the same delimiter as BRPO's and RMT's `think_end`, which read the token right after it).
  - Reflection (a fraction of the traces, tiers 'reflect:P' percent): one step is written with a
    slip (one digit of its result off by one), and the next line starts with REFLECTION = '?'
    and repeats the step with the right result. Every later step uses the corrected value, so
    the final answer is always right. '?' is one character, so a logit control such as
    CyclicReflex (§14) biases exactly one token id.

    '37*48=' with a slip:  '37*8=286\\n?37*8=296\\n37*40=1480\\n296+1480=1776\\n#1776'

Problems (tiers, parsed by task_common.parse_tiers; each example picks one problem entry
uniformly):
  'mul:lo-hi'    a*b, each operand with a digit count uniform in [lo, hi] (1 <= lo, hi <= 6),
                 no operand is 0. Trace: one partial product per non-zero digit d·10^i of b,
                 units first ('37*40=1480': the digit times its place value), then the partial
                 products summed left to right. b with k non-zero digits gives 2k-1 steps.
  'chain:lo-hi'  lo..hi operands (2 <= lo, hi <= 12) joined by + - * (uniform), with the usual
                 precedence: the products are worked first, left to right (a run 7*8*9 is
                 '7*8=56', '56*9=504'), then the sums and differences left to right. The
                 additive operands have 1-2 digits (1-99); the right operand of every '*' is one
                 digit (2-9), so a product step has the granularity of a partial product of
                 'mul'. Chains with an intermediate value below 0 are redrawn (every number in a
                 trace is >= 0, and the answer too). An n-operand chain gives n-1 steps.
  'reflect:P'    percent of traces with one reflection (0-100; default 20). It applies to both
                 splits: the held-out traces are only references, the verifier reads the answer.

Default tiers 'mul:2-4,chain:3-10,reflect:20'. Trace length, measured over 2000 train examples
(seed 0; characters = tokens of `CharTokenizer`, the '#' line included, EOS not):

               mean   p50   p90   max   min
  characters   67.8    64   114   169    14     (mul 80.6 mean / 169 max, chain 54.7 / 129)
  lines         6.1     6     9    11     2     (worked steps 1-9, + 1 with a reflection)

20.9% of those traces hold a reflection; 20000 examples (seed 1) still have max 169 characters.
A model on the default tiers needs sampler.max_new_tokens >= 170 (the completion and EOS);
configs/arith_cot.py uses the shorter tiers 'mul:1-2,chain:2-5' (max 70 characters).

Verifier (`final_answer_reward`): exact string match of `final_answer(completion)` with the
reference's final answer. `final_answer` is the text after the *last* '#', stripped of leading
and trailing whitespace ('#1776 \\n' and '# 1776' are '1776'; '#17 76', '#01776' and '#1776.'
are not): no '#' scores 0, whatever the trace says; only the final answer is scored, not the
steps. Nothing is evaluated as code.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tokenrl.data import task_common

NAME = "arith_cot"
DEFAULT_TIERS = "mul:2-4,chain:3-10,reflect:20"
THINK_END = "#"     # ends the thought; the final answer follows it
REFLECTION = "?"    # starts the line that redoes a step written with a slip
_ALLOWED = {"mul": (1, 6), "chain": (2, 12), "reflect": (0, 100)}
DEFAULT_REFLECT_PERCENT = 20


def parse(tiers: str) -> tuple[list[tuple[str, int, int]], float]:
  """'mul:2-4,chain:3-8,reflect:20' -> ([('mul', 2, 4), ('chain', 3, 8)], 0.2).

  Raises:
    ValueError: a malformed entry (named), 'reflect' given as a range or twice, no problem entry.
  """
  problems, reflect, seen = [], DEFAULT_REFLECT_PERCENT, False
  for key, lo, hi in task_common.parse_tiers(tiers, allowed=_ALLOWED):
    if key != "reflect":
      problems.append((key, lo, hi))
      continue
    if lo != hi or seen:
      raise ValueError(f"tiers: 'reflect' takes one percentage once, e.g. 'reflect:20', in "
                       f"{tiers!r}")
    reflect, seen = lo, True
  if not problems:
    raise ValueError(f"tiers: {tiers!r} has no problem entry; give 'mul:lo-hi' and/or "
                     f"'chain:lo-hi', e.g. '{DEFAULT_TIERS}'")
  return problems, reflect / 100.0


def final_answer(text: str) -> str | None:
  """The text after the last THINK_END, stripped ('...\\n#1776 ' -> '1776'); None without one."""
  if not isinstance(text, str) or THINK_END not in text:
    return None
  return text.rpartition(THINK_END)[2].strip()


def final_answer_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 if final_answer(completion) == the reference's final answer, else 0.0.

  The reference is final_answer(example['answer']) (the trace survives JSONL/TFDS round trips,
  extra keys may not); an answer without THINK_END is taken whole, stripped.
  """
  gold = str(example["answer"])
  gold = final_answer(gold) if THINK_END in gold else gold.strip()
  pred = final_answer(completion)
  return float(pred is not None and pred == gold)


def _value(rng: np.random.Generator, digits: int) -> int:
  """Uniform over the positive integers with exactly `digits` digits (1 digit: 1-9)."""
  return int(rng.integers(1 if digits == 1 else 10 ** (digits - 1), 10 ** digits))


def _mul_steps(a: int, b: int) -> list[tuple[str, int]]:
  """[(lhs, value)] of a*b: partial products per non-zero digit of b (units first), then sums."""
  steps, partials = [], []
  for i, d in enumerate(reversed(str(b))):
    if d != "0":
      place = int(d) * 10 ** i
      steps.append((f"{a}*{place}", a * place))
      partials.append(a * place)
  total = partials[0]
  for p in partials[1:]:
    steps.append((f"{total}+{p}", total + p))
    total += p
  return steps


def _chain_steps(operands: list[int], ops: list[str]) -> list[tuple[str, int]] | None:
  """[(lhs, value)] of the chain with precedence, or None if a value would drop below 0."""
  steps, terms, signs = [], [operands[0]], []
  for op, x in zip(ops, operands[1:]):
    if op == "*":
      steps.append((f"{terms[-1]}*{x}", terms[-1] * x))
      terms[-1] *= x
    else:
      terms.append(x)
      signs.append(op)
  total = terms[0]
  for op, x in zip(signs, terms[1:]):
    value = total + x if op == "+" else total - x
    if value < 0:
      return None
    steps.append((f"{total}{op}{x}", value))
    total = value
  return steps


def _slip(rng: np.random.Generator, value: int) -> int:
  """A wrong result a careless hand writes: one digit of `value` off by one (no leading 0)."""
  s = str(value)
  i = int(rng.integers(len(s)))
  d = int(s[i])
  lowest = 1 if i == 0 and len(s) > 1 else 0
  options = [c for c in (d - 1, d + 1) if lowest <= c <= 9]
  return int(s[:i] + str(options[int(rng.integers(len(options)))]) + s[i + 1:])


def render(steps: list[tuple[str, int]], result: int,
           slip: tuple[int, int] | None = None) -> str:
  """The completion text: one 'lhs=value' line per step, '#result' last.

  slip=(i, wrong): step i is written '=wrong', then '?' and the step with its true value.
  """
  lines = []
  for i, (lhs, value) in enumerate(steps):
    if slip is not None and slip[0] == i:
      lines.append(f"{lhs}={slip[1]}")
      lines.append(f"{REFLECTION}{lhs}={value}")
    else:
      lines.append(f"{lhs}={value}")
  return "\n".join(lines + [f"{THINK_END}{result}"])


def make_examples(split: str, n: int, seed: int, *, tiers: str = DEFAULT_TIERS,
                  test_fraction: float = task_common.DEFAULT_TEST_FRACTION,
                  unique: bool = False) -> list[dict[str, Any]]:
  """n worked-arithmetic problems of `split` ('train' | 'test').

  Returns:
    [{'prompt': '37*48=', 'answer': '37*8=296\\n37*40=1480\\n296+1480=1776\\n#1776',
      'result': '1776', 'task': 'arith_cot', 'kind': 'mul', 'operands': [37, 48],
      'ops': ['*'], 'steps': 3, 'reflection': False}]
    ('steps' counts the worked steps; a reflection adds one line on top of them.)
  """
  problems, reflect = parse(tiers)

  def draw(rng: np.random.Generator) -> dict[str, Any]:
    kind, lo, hi = problems[int(rng.integers(len(problems)))]
    if kind == "mul":
      operands = [_value(rng, int(rng.integers(lo, hi + 1))) for _ in range(2)]
      ops = ["*"]
      steps = _mul_steps(*operands)
    else:
      for _ in range(10_000):
        count = int(rng.integers(lo, hi + 1))
        ops = ["+-*"[int(rng.integers(3))] for _ in range(count - 1)]
        operands = [_value(rng, int(rng.integers(1, 3)))]
        for op in ops:
          operands.append(int(rng.integers(2, 10)) if op == "*" else _value(rng, int(rng.integers(1, 3))))
        steps = _chain_steps(operands, ops)
        if steps is not None:
          break
      else:  # a chain of 12 stays >= 0 in ~40% of draws: 10^4 misses do not happen
        raise ValueError(f"arith_cot: tiers {tiers!r} almost never give a chain that stays >= 0")
    result = steps[-1][1]
    slip = None
    if rng.random() < reflect:
      i = int(rng.integers(len(steps)))
      slip = (i, _slip(rng, steps[i][1]))
    prompt = "".join(f"{x}{op}" for x, op in zip(operands, ops + ["="]))
    return {"prompt": prompt, "answer": render(steps, result, slip), "result": str(result),
            "task": NAME, "kind": kind, "operands": operands, "ops": ops, "steps": len(steps),
            "reflection": slip is not None}

  return task_common.sample_split(draw, task=NAME, split=split, n=n, seed=seed,
                                  test_fraction=test_fraction, unique=unique)
