"""JSONL prompt files: one JSON object per line with 'prompt' and 'answer' (extra keys kept).

  {"prompt": "What is 2+3?", "answer": "5", "source": "mine"}
  {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}],
   "answer": 5}

'prompt' is a string or a list of chat messages ({'role': str, 'content': str}); 'answer' is a
string or a number (numbers become their str(), e.g. 5 -> '5'). Blank lines are skipped; every
other line is an example or an error naming the file and line: nothing is silently dropped.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Iterator, Mapping


def _check_messages(prompt: Any) -> str | None:
  """None if `prompt` is a valid message list, else what is wrong."""
  if not prompt:
    return "'prompt' is an empty message list"
  for i, m in enumerate(prompt):
    if not isinstance(m, dict):
      return f"'prompt'[{i}] must be an object, got {type(m).__name__}"
    for key in ("role", "content"):
      if not isinstance(m.get(key), str):
        return f"'prompt'[{i}]['{key}'] must be a string, got {type(m.get(key)).__name__}"
  return None


def iter_json_objects(path: str | os.PathLike, who: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """('<path>:<line>', object) for every non-blank line of a JSONL file, in order.

  Raises FileNotFoundError (naming `who`, the caller) or ValueError '<path>:<line>: ...' for
  malformed JSON or a line that is not a JSON object: nothing is silently dropped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{who}: {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      yield where, obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads every example of a JSONL file.

  Returns:
    [{'prompt': str | list[message], 'answer': str, **extra_keys}, ...] in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: '<path>:<line>: ...' for malformed JSON, a non-object line, a missing
      'prompt'/'answer', or a wrong type (bool or non-finite answers included).
  """
  out = []
  for where, obj in iter_json_objects(path, "read_jsonl"):
    missing = [k for k in ("prompt", "answer") if k not in obj]
    if missing:
      raise ValueError(f"{where}: missing key(s) {missing} (have {sorted(obj)})")
    prompt, answer = obj["prompt"], obj["answer"]
    if isinstance(prompt, list):
      problem = _check_messages(prompt)
      if problem:
        raise ValueError(f"{where}: {problem}")
    elif not isinstance(prompt, str):
      raise ValueError(f"{where}: 'prompt' must be a string or a list of messages, got "
                       f"{type(prompt).__name__}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
      raise ValueError(f"{where}: 'answer' must be a string or a number, got "
                       f"{type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
      raise ValueError(f"{where}: 'answer' must be finite, got {answer}")
    obj["answer"] = answer if isinstance(answer, str) else str(answer)
    out.append(obj)
  return out


def write_jsonl(path: str | os.PathLike, examples: Iterable[Mapping[str, Any]]) -> int:
  """Writes examples one JSON object per line (UTF-8); returns the number written."""
  n = 0
  with open(os.fspath(path), "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(dict(ex), ensure_ascii=False) + "\n")
      n += 1
  return n
