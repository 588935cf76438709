"""Reward functions: plain callables `(completion_text, example) -> float`.

`completion_text` is the decoded completion, cut before EOS (`prompts.decode_completions`);
`example` is the task's dict ({'prompt', 'answer', ...}). Nothing here evaluates text as code:
numbers go through `fractions.Fraction`, expressions through `expr_parser`.

Built in (the registry `REWARD_FNS` maps config names to them):
  'exact'     exact_answer_reward   1 if completion.strip() == answer.strip()
  'math'      math_answer_reward    1 if the final number of the completion equals the answer
  'format'    format_reward         1 if the completion states an explicit final answer
  'countdown' countdown_reward      1 if the expression uses the numbers once and hits the target
  'task'      task_reward           the verifier of example['task'] (TASK_VERIFIERS)

Functions run in worker processes (`RewardRunner`), so user rewards must be picklable: module-
level functions, `functools.partial` of them, or instances of module-level classes such as
`RegexReward`.
"""
from __future__ import annotations

import fractions
import math
import re
from typing import Any, Callable, Mapping

from tokenrl.data import expr_parser

RewardFn = Callable[[str, Mapping[str, Any]], float]

# A number: optional sign and '$', digits with optional thousands commas, optional decimals,
# optional '/denominator' (e.g. '-1,234.5', '$18', '3/4', '.5').
_NUM = r"[-+]?\$?\s?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(" + _NUM + r")")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*[:=]?\s*(" + _NUM + r")", re.IGNORECASE)
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def parse_number(text: str) -> fractions.Fraction | None:
  """'1,234.50' -> Fraction(2469, 2); '$18' -> 18; '3/4' -> 3/4; '12%' -> 12; else None.

  Commas, '$', '%', spaces and a trailing '.' are dropped; no evaluation of any kind.
  """
  if not isinstance(text, str):
    text = str(text)
  s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".").rstrip("%")
  # Plain decimal or a/b only: Fraction would also accept '1e999999999' (a 10^9-digit integer).
  if len(s) > 64 or not _PLAIN_NUMBER_RE.fullmatch(s):
    return None
  try:
    value = fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None
  return value


def numbers_equal(a: str | float | int, b: str | float | int, *, rel_tol: float = 1e-6,
                  abs_tol: float = 1e-9) -> bool:
  """Whether two numeric strings denote the same number.

  Exact rational equality, or |a - b| <= max(rel_tol * max(|a|, |b|), abs_tol) (so '0.333333'
  vs '1/3' is equal at rel_tol=1e-6). Unparseable -> False.
  """
  x, y = parse_number(str(a)), parse_number(str(b))
  if x is None or y is None:
    return False
  if x == y:
    return True
  xf, yf = float(x), float(y)
  return math.isclose(xf, yf, rel_tol=rel_tol, abs_tol=abs_tol)


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} (braces balanced), or None."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  i = start + len("\\boxed{")
  depth = 1
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i:j]
  return None


def _clean_number(s: str) -> str:
  return s.replace(",", "").replace("$", "").replace(" ", "")


def extract_final_answer(text: str) -> str | None:
  """The final numeric answer of a solution, as a plain string ('-1234.5', '3/4'), or None.

  Priority: '#### N' (GSM8K) > 'the answer is N' > the last \\boxed{...} (its last number;
  \\frac{a}{b} read as a/b) > the last number in the text. The last occurrence of each wins.
  """
  if not isinstance(text, str):
    return None
  for regex in (_HASH_RE, _ANSWER_IS_RE):
    hits = regex.findall(text)
    if hits:
      return _clean_number(hits[-1])
  boxed = _last_boxed(text)
  if boxed is not None:
    inner = _FRAC_RE.sub(r"\1/\2", boxed).replace("\\$", "").replace("\\!", "").replace("\\,", "")
    nums = _NUM_RE.findall(inner)
    if nums:
      return _clean_number(nums[-1])
  nums = _NUM_RE.findall(text)
  return _clean_number(nums[-1]) if nums else None


def _gold(example: Mapping[str, Any]) -> str:
  if "answer" not in example:
    raise KeyError("example has no 'answer' key")
  return str(example["answer"])


def exact_answer_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 if completion.strip() == str(example['answer']).strip(), else 0.0 (embedded tasks)."""
  return float(completion.strip() == _gold(example).strip())


def math_answer_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 if `extract_final_answer(completion)` equals the answer numerically, else 0.0.

  The answer may itself be a full GSM8K solution ('... #### 72'); its final number is used.
  """
  pred = extract_final_answer(completion)
  gold = _gold(example)
  gold = extract_final_answer(gold) if "####" in gold else gold
  return float(pred is not None and gold is not None and numbers_equal(pred, gold))


def format_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 if the completion states its final answer explicitly ('#### N', 'the answer is N' or
  '\\boxed{...}' holding a number), else 0.0. The value is not checked (`math` does that)."""
  del example
  if _HASH_RE.search(completion) or _ANSWER_IS_RE.search(completion):
    return 1.0
  boxed = _last_boxed(completion)
  return float(boxed is not None and _NUM_RE.search(boxed) is not None)


def countdown_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1.0 if the completion is an expression over + - * ( ) that uses each of example['numbers']
  exactly once and equals example['target']; else 0.0.

  Text after a first '=' (e.g. '3*5+7=22') is ignored. Parsed by `expr_parser` (no eval).
  """
  numbers, target = example["numbers"], int(example["target"])
  expr = completion.strip().split("=", 1)[0]
  try:
    parsed = expr_parser.parse_int_expression(expr)
  except expr_parser.ExpressionError:
    return 0.0
  return float(sorted(parsed.literals) == sorted(int(v) for v in numbers)
               and parsed.value == target)


class RegexReward:
  """`value` if `re.search(pattern, completion)` matches (with re.DOTALL), else 0.0.

  A class (not a closure) so instances pickle into reward worker processes.
  """

  def __init__(self, pattern: str, value: float = 1.0, fullmatch: bool = False):
    self.pattern = pattern
    self.value = float(value)
    self.fullmatch = fullmatch
    self._re = re.compile(pattern, re.DOTALL)

  def __getstate__(self):
    return {"pattern": self.pattern, "value": self.value, "fullmatch": self.fullmatch}

  def __setstate__(self, state):
    self.__init__(**state)

  def __call__(self, completion: str, example: Mapping[str, Any]) -> float:
    del example
    m = self._re.fullmatch(completion) if self.fullmatch else self._re.search(completion)
    return self.value if m else 0.0

  def __repr__(self) -> str:
    return f"RegexReward({self.pattern!r}, value={self.value}, fullmatch={self.fullmatch})"


# The verifier of each built-in task, keyed by example['task'].
TASK_VERIFIERS: dict[str, RewardFn] = {
    "arith": exact_answer_reward,
    "sort": exact_answer_reward,
    "countdown": countdown_reward,
    "gsm8k": math_answer_reward,
}


def task_reward(completion: str, example: Mapping[str, Any]) -> float:
  """The verifier of example['task'] (see TASK_VERIFIERS): one reward for mixed-task data."""
  task = example.get("task")
  if task not in TASK_VERIFIERS:
    raise KeyError(f"task_reward: example['task']={task!r} has no verifier; known: "
                   f"{sorted(TASK_VERIFIERS)}")
  return TASK_VERIFIERS[task](completion, example)


REWARD_FNS: dict[str, RewardFn] = {
    "exact": exact_answer_reward,
    "math": math_answer_reward,
    "format": format_reward,
    "countdown": countdown_reward,
    "task": task_reward,
}
