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
  a byte sequence that is not UTF-8, malformed JSON or a line that is not a JSON object:
  nothing is silently dropped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{who}: {path!r} does not exist")
  with open(path, "rb") as f:  # Bytes, decoded per line, so a bad byte names its line.
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of "
                         "the line (save the file as UTF-8)") from None
      if lineno == 1 and line.startswith("\ufeff"):
        line = line[1:]  # A UTF-8 byte-order mark (Windows editors) is not part of the JSON.
      if not line.strip():
        continue
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

  Each example is a `JsonlExample`: a plain dict (equal to one) whose `.where` attribute is
  '<path>:<line>', so later errors (e.g. a character the tokenizer lacks) can name the line.

  Raises:
    FileNotFoundError: no such file.
    ValueError: '<path>:<line>: ...' for a non-UTF-8 byte, malformed JSON, a non-object line, a
      missing 'prompt'/'answer', or a wrong type (bool or non-finite answers included);
      '<path>: no examples' for an empty file (or only blank lines).
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
    out.append(JsonlExample(obj, where=where))
  if not out:
    raise ValueError(f"{os.fspath(path)}: no examples (the file is empty or holds only blank "
                     "lines); expected one JSON object per line with 'prompt' and 'answer'")
  return out


class JsonlExample(dict):
  """A dict example that remembers its source line: `.where` = '<path>:<line>'.

  A dict subclass (not an extra key) so rewards, equality and write_jsonl see the same data.
  """

  def __init__(self, data: Mapping[str, Any], where: str = ""):
    super().__init__(data)
    self.where = where


def where_of(example: Mapping[str, Any], default: str) -> str:
  """'<path>:<line>' of a `read_jsonl` example, else `default` (e.g. 'example 3')."""
  return getattr(example, "where", "") or default


def write_jsonl(path: str | os.PathLike, examples: Iterable[Mapping[str, Any]]) -> int:
  """Writes examples one JSON object per line (UTF-8); returns the number written."""
  n = 0
  with open(os.fspath(path), "w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps(dict(ex), ensure_ascii=False) + "\n")
      n += 1
  return n
