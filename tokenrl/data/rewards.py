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
  'count'     count_linear_reward   max(0, 1 - RE) of a '<count>N</count>' (tokenrl/data/palace.py)

Digits, one rule for every verifier: only the ASCII digits 0-9 are digits. Other Unicode
digits ('٧', '７', '߇') are ordinary characters: they never form a number in 'math'/'format',
never equal an ASCII answer in 'exact', and are a syntax error in 'countdown' (so each of
these scores 0 for '٧' against the answer '7'). Why: a model that is rewarded for a digit
lookalike learns to emit it, and no downstream consumer reads it as a number.

Numbers ('math'): integers compare exactly, whatever their size (up to `MAX_NUMBER_CHARS`
characters); so do terminating decimals and fractions ('0.75' == '3/4', '18.0' == '18',
'1000001' != '1000000'). The one tolerance: a decimal compared with a fraction that has no
finite decimal expansion ('0.3333333' vs '1/3') matches when |x - y| <= 1e-6 * max(|x|, |y|).
Parsing is linear in the text length (no backtracking regex), so hostile completions are cheap.

Functions run in worker processes (`RewardRunner`), so user rewards must be picklable: module-
level functions, `functools.partial` of them, or instances of module-level classes such as
`RegexReward`. `load_reward_fns('my_rewards:fn,math', '1.0,0.5')` resolves the config's
`rewards.fns` / `rewards.weights` strings to such functions, with errors naming the key.
"""
from __future__ import annotations

import fractions
import importlib
import inspect
import math
import os
import re
import sys
from typing import Any, Callable, Mapping

from tokenrl.data import expr_parser
from tokenrl.data import palace
from tokenrl.data import task_arith_cot

RewardFn = Callable[[str, Mapping[str, Any]], float]

MAX_NUMBER_CHARS = 1000  # Longer digit strings are not numbers (int() of 10^6 digits is slow).

# A number: optional sign and '$', digits with optional thousands commas, optional decimals,
# optional '/denominator' (e.g. '-1,234.5', '$18', '3/4', '.5'). ASCII digits only (see the
# module docstring). Linear time (no possessive quantifiers: Python >= 3.10): after its first
# digit every part is optional and always succeeds, so a match never backtracks into it.
_NUM = (r"[-+]?\$?[ ]?(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
        r"(?:/[0-9]+)?")
_NUM_RE = re.compile(_NUM)
# One unbounded whitespace run before the number: the old 'answer\s+is\s*[:=]?\s*' had two
# adjacent ones, which backtrack quadratically (6-8 s on 'the answer is' + 8000 spaces); with
# one run, a failed match costs O(run length).
_HASH_RE = re.compile(r"####\s*(" + _NUM + r")")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*(?:[:=]\s*)?(" + _NUM + r")", re.IGNORECASE)
_PLAIN_NUMBER_RE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:/[0-9]+)?")
_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def parse_number(text: str) -> fractions.Fraction | None:
  """'1,234.50' -> Fraction(2469, 2); '$18' -> 18; '3/4' -> 3/4; '12%' -> 12; else None.

  Commas, '$', '%', spaces and a trailing '.' are dropped; no evaluation of any kind. ASCII
  digits only; more than MAX_NUMBER_CHARS characters -> None.
  """
  if not isinstance(text, str):
    text = str(text)
  if len(text) > 4 * MAX_NUMBER_CHARS:
    return None
  s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".").rstrip("%")
  # Plain decimal or a/b only: Fraction would also accept '1e999999999' (a 10^9-digit integer).
  if len(s) > MAX_NUMBER_CHARS or not _PLAIN_NUMBER_RE.fullmatch(s):
    return None
  try:
    value = fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None
  return value


def _terminates(x: fractions.Fraction) -> bool:
  """Whether x has a finite decimal expansion (its reduced denominator is 2^a 5^b)."""
  d = x.denominator
  for p in (2, 5):
    while d % p == 0:
      d //= p
  return d == 1


def numbers_equal(a: str | float | int, b: str | float | int, *, rel_tol: float = 1e-6) -> bool:
  """Whether two numeric strings denote the same number.

  Exact rational equality ('0.75' == '3/4', '1000001' != '1000000', integers of any size).
  The one tolerance: when exactly one side has no finite decimal expansion (1/3, 2/7), so the
  other (a decimal) can only approximate it, |a - b| <= rel_tol * max(|a|, |b|) (computed
  exactly on rationals). Unparseable -> False.
  """
  x, y = parse_number(str(a)), parse_number(str(b))
  if x is None or y is None:
    return False
  if x == y:
    return True
  if _terminates(x) == _terminates(y):
    return False  # Both exact decimals/integers (or both repeating fractions): exact only.
  return abs(x - y) <= fractions.Fraction(rel_tol) * max(abs(x), abs(y))


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


def delimited_answer_text(answer: str, delimiter: str, example: Mapping[str, Any]) -> str:
  """The text a verifier should score for an answer written after `delimiter` (a think end).

  Methods that sample the answer apart from the thought (BRPO's summaries, MRT's forced answers)
  hold the answer alone. A think-delimited task (its reference completion holds `delimiter`,
  e.g. arith_cot's '#') verifies the text after the delimiter, so the delimiter goes back in
  front: '157' -> '#157'. An answer-only task (the quickstart's 'arith') verifies the answer as
  is. An empty delimiter changes nothing.
  """
  if delimiter and delimiter in str(example.get("answer", "")):
    return delimiter + answer
  return answer


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
  Worked countdown (tiers 'cot:1', the reference answer holds a '#'): the expression is the
  text after the completion's last '#' (`task_arith_cot.final_answer`); no '#' scores 0.
  """
  numbers, target = example["numbers"], int(example["target"])
  if task_arith_cot.THINK_END in str(example.get("answer", "")):
    completion = task_arith_cot.final_answer(completion)
    if completion is None:
      return 0.0
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
    "copy": exact_answer_reward,
    "countdown": countdown_reward,
    "gsm8k": math_answer_reward,
    "hidden_length": palace.count_threshold_reward,
    "arith_cot": task_arith_cot.final_answer_reward,
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
    "count": palace.count_linear_reward,
}


def _resolve_reward(entry: str, builtins: Mapping[str, RewardFn], key: str) -> RewardFn:
  """One entry of rewards.fns: a built-in name ('math') or 'module:function' (or 'pkg.mod:Cls.fn')."""
  if ":" not in entry:
    if entry in builtins:
      return builtins[entry]
    raise ValueError(f"{key}: {entry!r} is neither a built-in reward ({sorted(builtins)}) nor "
                     "'module:function'")
  module_name, _, attr = entry.partition(":")
  if not module_name or not attr:
    raise ValueError(f"{key}: {entry!r} must be 'module:function' (both parts non-empty)")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(
        f"{key}: cannot import module {module_name!r} for {entry!r} ({type(e).__name__}: {e}); "
        f"it must be importable from the working directory {os.getcwd()!r} or PYTHONPATH") from e
  obj: Any = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{key}: module {module_name!r} ({getattr(module, '__file__', '?')}) has "
                       f"no attribute {attr!r}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise ValueError(f"{key}: {entry!r} is a {type(obj).__name__}, not callable; a reward is "
                     "fn(completion: str, example: dict) -> float")
  try:
    inspect.signature(obj).bind("", {})
  except TypeError as e:
    raise ValueError(f"{key}: {entry!r} has the wrong signature {inspect.signature(obj)} "
                     f"({e}); a reward is fn(completion: str, example: dict) -> float") from None
  except ValueError:  # Builtins without a signature: cannot check, accept.
    pass
  return obj


def load_reward_fns(spec: str, weights: str = "", *,
                    builtins: Mapping[str, RewardFn] | None = None,
                    key: str = "rewards.fns",
                    weights_key: str = "rewards.weights") -> tuple[dict[str, RewardFn],
                                                                   dict[str, float]]:
  """Resolves the config strings rewards.fns / rewards.weights to (name -> fn, name -> weight).

    load_reward_fns('my_rewards:length_penalty,math', '0.1,1.0')
    -> ({'my_rewards:length_penalty': <function>, 'math': math_answer_reward},
        {'my_rewards:length_penalty': 0.1, 'math': 1.0})

  Args:
    spec: comma-separated entries, each a built-in name (a key of `builtins`, default
      REWARD_FNS) or 'module:function'. The module is imported from sys.path; the working
      directory is appended to it (a console script does not put it there), so a
      my_rewards.py next to where you launch is found. The entry is the function's name in
      the RewardRunner and the metrics.
    weights: '' (every weight 1.0) or comma-separated floats, one per entry, in order;
      rewards = sum_k w_k r_k.
    builtins: the names an entry may use without a module (the train loop passes REWARD_FNS
      with 'task' bound to the data task's verifier).
    key, weights_key: config key names used in the error messages.

  Raises:
    ValueError naming the key, the entry and why: empty spec, duplicate entry, a module that
    cannot be imported, a missing attribute, not callable, a signature that cannot take
    (completion, example), or a weight count / non-finite weight mismatch.
  """
  builtins = REWARD_FNS if builtins is None else builtins
  entries = [e.strip() for e in str(spec).split(",")]
  if not spec or not all(entries):
    raise ValueError(f"{key}={spec!r}: give comma-separated entries, each a built-in reward "
                     f"({sorted(builtins)}) or 'module:function'")
  duplicates = sorted({e for e in entries if entries.count(e) > 1})
  if duplicates:
    raise ValueError(f"{key}={spec!r}: entries {duplicates} are listed more than once")
  cwd = os.getcwd()
  if cwd not in sys.path and "" not in sys.path:
    sys.path.append(cwd)  # After the installed packages: a local file never shadows them.
  fns = {e: _resolve_reward(e, builtins, key) for e in entries}
  if not str(weights).strip():
    return fns, {e: 1.0 for e in entries}
  parts = [w.strip() for w in str(weights).split(",")]
  if len(parts) != len(entries):
    raise ValueError(f"{weights_key}={weights!r} has {len(parts)} weights but {key} has "
                     f"{len(entries)} entries {entries}: give one weight per entry, or '' for all 1.0")
  out = {}
  for e, w in zip(entries, parts):
    try:
      value = float(w)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise ValueError(f"{weights_key}={weights!r}: weight {w!r} of {e!r} is not a finite number")
    out[e] = value
  return fns, out
