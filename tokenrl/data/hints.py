"""Hints for prompts on which every rollout failed (Guide-GRPO spec §7, NuRL spec §8).

Host-side plain Python. A hint is a short text derived from an example dict of the embedded tasks
(tokenrl/data/tasks.py: 'prompt', 'answer', and per task 'op'/'operands', 'digits',
'numbers'/'target'), or written by the model itself (NuRL: `clean_generated_hint` +
`hint_reveals_answer`). `format_prompt` puts it into the prompt through a user template such as
"hint: {hint}\\n{prompt}" (placeholders checked with `string.Formatter`, never evaluated).

Hint kinds (`HINT_KINDS`), from the strongest to the most abstract (NuRL's finding: abstract cues
beat partial steps, which beat the answer):

  prefix  'starts 1'       the first `num_chars` characters of the answer, never all of it
  step    'units 2+7=9'    one worked step (arith: the units-digit column; sort: the smallest
                           digit; countdown: the first operation of the reference expression)
  length  '2 chars'        the answer's length only (abstract; reveals no digit)

Texts are terse and lowercase so they fit the embedded tasks' `CharTokenizer` and a 64-token
context; the template adds whatever framing a real model needs.
"""
from __future__ import annotations

import re
import string
from typing import Any, Callable, Mapping, Sequence

HINT_FIELDS = ("hint", "prompt")


def template_fields(template: str, *, arg_name: str = "template") -> set[str]:
  """The `{name}` placeholders of a str.format template (no conversions, specs or indexing).

  Raises:
    ValueError: not a str, a malformed template, or a placeholder with attribute/index access,
      a conversion or a format spec (named with `arg_name`).
  """
  if not isinstance(template, str):
    raise ValueError(f"{arg_name}: expected a str template, got {type(template).__name__}")
  try:
    parts = list(string.Formatter().parse(template))
  except ValueError as e:
    raise ValueError(f"{arg_name}: malformed template {template!r}: {e}") from None
  fields = set()
  for _, name, spec, conv in parts:
    if name is None:
      continue
    if not name.isidentifier() or spec or conv:
      raise ValueError(f"{arg_name}: placeholders must be plain names like {{hint}}, got "
                       f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} in "
                       f"{template!r}")
    fields.add(name)
  return fields


def check_template(template: str, required: Sequence[str], *, arg_name: str = "template") -> None:
  """Raise ValueError unless the placeholders of `template` are exactly `required`."""
  fields = template_fields(template, arg_name=arg_name)
  if fields != set(required):
    raise ValueError(f"{arg_name}: expected exactly the placeholders "
                     f"{sorted('{' + f + '}' for f in required)}, got "
                     f"{sorted('{' + f + '}' for f in fields)} in {template!r}")


def format_prompt(template: str, **values: str) -> str:
  """`template` with its placeholders replaced by `values` (all placeholders must be given)."""
  check_template(template, tuple(values))
  return template.format(**values)


def _answer(example: Mapping[str, Any]) -> str:
  if not isinstance(example, Mapping) or "answer" not in example:
    raise ValueError(f"example: expected a dict with an 'answer' field, got {example!r}")
  answer = str(example["answer"])
  if not answer:
    raise ValueError(f"example: empty 'answer' in {example!r}")
  return answer


def length_hint(example: Mapping[str, Any], num_chars: int = 1) -> str:
  """'2 chars': the length of the answer in characters (an abstract cue; `num_chars` unused)."""
  del num_chars
  return f"{len(_answer(example))} chars"


def prefix_hint(example: Mapping[str, Any], num_chars: int = 1) -> str:
  """'starts 1': the first k = min(num_chars, len(answer) − 1) answer characters.

  The whole answer is never given: a one-character answer gets `length_hint` instead.
  """
  if num_chars < 1:
    raise ValueError(f"num_chars: expected >= 1, got {num_chars}")
  answer = _answer(example)
  k = min(num_chars, len(answer) - 1)
  if k < 1:
    return length_hint(example)
  return f"starts {answer[:k]}"


def _arith_step(example: Mapping[str, Any]) -> str | None:
  op, operands = example.get("op"), example.get("operands")
  if op not in ("add", "sub", "mul") or not operands or len(operands) != 2:
    return None
  a, b = (int(x) % 10 for x in operands)
  if op == "add":
    return f"units {a}+{b}={a + b}"
  if op == "mul":
    return f"units {a}*{b}={a * b}"
  if a >= b:
    return f"units {a}-{b}={a - b}"
  return f"units borrow {a + 10}-{b}={a + 10 - b}"


def step_hint(example: Mapping[str, Any], num_chars: int = 1) -> str:
  """One worked step of the solution; falls back to `prefix_hint(example, num_chars)`.

  arith: the units-digit column ('units 2+7=9', 'units borrow 12-7=5', 'units 3*4=12');
  sort: the smallest digit ('smallest 1'); countdown: the first operation of the reference
  expression ('first 3*5').
  """
  answer = _answer(example)
  task = example.get("task")
  hint = None
  if task == "arith":
    hint = _arith_step(example)
  elif task == "sort" and example.get("digits"):
    hint = f"smallest {min(int(d) for d in example['digits'])}"
  elif task == "countdown":
    m = re.match(r"\(*\d+[-+*/]\d+", answer)
    if m and m.group(0) != answer:
      hint = f"first {m.group(0).lstrip('(')}"
  return hint if hint is not None else prefix_hint(example, num_chars)


# name -> (example, num_chars) -> hint text.
HINT_KINDS: dict[str, Callable[..., str]] = {
    "prefix": prefix_hint,
    "step": step_hint,
    "length": length_hint,
}


def example_hint(example: Mapping[str, Any], kind: str, num_chars: int = 1) -> str:
  """The hint of kind `kind` (a key of HINT_KINDS) for `example`."""
  if kind not in HINT_KINDS:
    raise ValueError(f"kind: expected one of {tuple(HINT_KINDS)}, got {kind!r}")
  return HINT_KINDS[kind](example, num_chars)


def hint_reveals_answer(hint: str, example: Mapping[str, Any]) -> bool:
  """Whether `hint` contains the whole answer string (NuRL: hints must not give the answer)."""
  return _answer(example).strip() in hint


def clean_generated_hint(text: str, *, max_chars: int = 200) -> str:
  """A model-written hint made one line: whitespace runs (newlines included) -> one space,
  stripped, cut to `max_chars` characters."""
  if max_chars < 1:
    raise ValueError(f"max_chars: expected >= 1, got {max_chars}")
  return " ".join(str(text).split())[:max_chars].strip()


def self_hint_prompts(example: Mapping[str, Any], *, rationale_template: str,
                      hint_template: str, rationale: str | None = None) -> str:
  """NuRL's two offline prompts (spec §8 (b) 1) for example (q, a):

    rationale_template(prompt=q, answer=a)               -> the model writes why a is correct, y
    hint_template(prompt=q, answer=a, rationale=y)       -> the model abstracts a hint h

  Returns the first prompt when `rationale` is None, else the second.
  """
  prompt, answer = str(example["prompt"]), _answer(example)
  if rationale is None:
    check_template(rationale_template, ("prompt", "answer"), arg_name="rationale_template")
    return rationale_template.format(prompt=prompt, answer=answer)
  check_template(hint_template, ("prompt", "answer", "rationale"), arg_name="hint_template")
  return hint_template.format(prompt=prompt, answer=answer, rationale=clean_generated_hint(rationale))
