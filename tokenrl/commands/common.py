"""What every analysis / audit subcommand shares: loading a model, printing a table, a PNG."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Sequence


@dataclasses.dataclass
class LoadedModel:
  """params and ModelConfig of an HF folder or a tokenrl workdir, with its tokenizer.

  cfg and run are the workdir's experiment config and built Run (None for an HF folder).
  """
  params: Any
  config: Any
  tokenizer: Any
  cfg: Any = None
  run: Any = None


def add_model_args(parser: argparse.ArgumentParser) -> None:
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--model", help="HF-format folder (config.json + safetensors + tokenizer)")
  group.add_argument("--workdir", help="tokenrl run directory (latest checkpoint)")


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "checkpoints"))


def load_model(model: str | None = None, workdir: str | None = None) -> LoadedModel:
  """The model of --model DIR (an HF folder, or a workdir given as a model) or --workdir W.

  Raises SystemExit with a message naming the path when it is neither.
  """
  path = workdir or model
  if not path or not os.path.isdir(path):
    raise SystemExit(f"error: {path!r} is not a folder; give --model HF_DIR or --workdir RUN_DIR")
  if workdir or is_workdir(path):
    from tokenrl.train.workdir import load_workdir, model_params
    try:
      cfg, run, params = load_workdir(path)
    except FileNotFoundError as e:
      raise SystemExit(f"error: {e}") from e
    return LoadedModel(model_params(params, run.model), run.model, run.tokenizer, cfg, run)
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise SystemExit(f"error: {path!r} has no config.json: neither an HF model folder nor a "
                     "tokenrl workdir")
  from tokenrl import models
  from tokenrl.data.tokenizer import load_tokenizer
  config, params = models.load_hf(path)
  return LoadedModel(params, config, load_tokenizer(path))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table: floats with 4 significant decimals, columns padded to width."""
  cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  body = [[cell(v) for v in row] for row in rows]
  widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h))
            for i, h in enumerate(headers)]
  line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
  return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in body])


def save_figure(fig: Any, path: str) -> str:
  """Write a matplotlib figure as PNG (creating the folder), close it, return the path."""
  import matplotlib.pyplot as plt
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def int_list(text: str) -> tuple[int, ...]:
  """argparse type for '4,6,8' (empty items ignored): a tuple of ints, or a usage error."""
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def read_prompt_rows(path: str, flag: str, answer_keys: Sequence[str] = ("answer",),
                     need_answer: bool = True) -> list[tuple[str, str | None]]:
  """(prompt, answer) per line of a JSONL file of {"prompt": str, <answer key>: str|int}.

  The answer is the first of `answer_keys` present. SystemExit naming the flag, or file:line
  and the expected shape, on a missing file, bad UTF-8/JSON, a bad row or an empty file.
  """
  from tokenrl.data.jsonl import iter_json_objects
  want = "{" + '"prompt": str' + (f', "{answer_keys[0]}": str' if need_answer else "") + "}"
  out = []
  try:
    for where, row in iter_json_objects(path, flag):
      answer = next((row[k] for k in answer_keys if k in row), None)
      if not isinstance(row.get("prompt"), str) or (
          need_answer and not isinstance(answer, (str, int))):
        raise SystemExit(f"error: {where}: expected {want}")
      out.append((row["prompt"], None if answer is None else str(answer)))
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from e
  if not out:
    raise SystemExit(f"error: {flag} {path!r} holds no rows")
  return out
