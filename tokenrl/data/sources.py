"""One entry point from a task name (config.data.task) to its examples.

  load_examples('arith', 'train', n=20_000, seed=0, tiers='add:1-3')   # embedded: generated
  load_examples('gsm8k', 'test', n=256, data_dir='/data/tfds')        # prepared TFDS copy
  load_examples('jsonl', 'train', jsonl_path='data/{split}.jsonl')    # your files
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from tokenrl.data import tasks as tasks_lib

EXTERNAL_TASKS = ("gsm8k", "jsonl")


def load_examples(task: str, split: str, *, n: int | None = None, seed: int = 0,
                  tiers: str = "", jsonl_path: str = "",
                  data_dir: str | os.PathLike | None = None) -> Sequence[Mapping[str, Any]]:
  """Examples ({'prompt', 'answer', 'task', ...}) of `task` for `split` ('train' | 'test').

  Args:
    task: an embedded task ('arith' | 'sort' | 'countdown'), 'gsm8k' or 'jsonl'.
    split: 'train' or 'test'.
    n: embedded tasks: how many to generate (required). gsm8k / jsonl: the first n (None = all).
    seed: generation seed of the embedded tasks (train and test never share a prompt).
    tiers: embedded task difficulty ('' = the task's default).
    jsonl_path: for 'jsonl'; a '{split}' in it is replaced by the split name, otherwise the same
      file serves both splits.
    data_dir: TFDS data_dir for 'gsm8k' (None or '' = $TFDS_DATA_DIR / ~/tensorflow_datasets).

  Returns:
    A list (embedded, jsonl) or a lazy grain.MapDataset (gsm8k); both index and len() alike,
    and `pipeline.make_dataset` takes either.
  """
  if split not in ("train", "test"):
    raise ValueError(f"load_examples: split must be 'train' or 'test', got {split!r}")
  if n is not None and n < 0:
    raise ValueError(f"load_examples: n must be >= 0 or None, got {n}")
  if task == "gsm8k":
    from tokenrl.data import tfds_tasks  # tfds + grain only when needed.
    ds = tfds_tasks.gsm8k_source(split, data_dir=data_dir or None)
    return ds if n is None else ds[:n]
  if task == "jsonl":
    from tokenrl.data import jsonl
    if not jsonl_path:
      raise ValueError("load_examples: task='jsonl' needs jsonl_path")
    rows = jsonl.read_jsonl(jsonl_path.replace("{split}", split))
    return rows if n is None else rows[:n]
  if task not in tasks_lib.TASKS:
    raise ValueError(f"load_examples: unknown task {task!r}; known: "
                     f"{sorted(tasks_lib.TASKS) + list(EXTERNAL_TASKS)}")
  if n is None:
    raise ValueError(f"load_examples: embedded task {task!r} needs n (examples to generate)")
  t = tasks_lib.get_task(task)
  return t.make_examples(split, n, seed, tiers=tiers or t.default_tiers)


def default_reward_name(task: str) -> str:
  """The REWARD_FNS name that verifies `task`: 'task' for the embedded tasks (dispatch on
  example['task']), 'math' for gsm8k, and 'math' for jsonl (final-number match)."""
  if task in tasks_lib.TASKS:
    return "task"
  if task in EXTERNAL_TASKS:
    return "math"
  raise ValueError(f"default_reward_name: unknown task {task!r}")
