"""TFDS (without TensorFlow): the embedded tasks as a dataset builder, and GSM8K.

Both are written/read as ArrayRecord files through `tensorflow_datasets` and read back as
random-access sources for grain (`tfds.data_source` / `builder.as_data_source`); TensorFlow is
never imported (tests check `'tensorflow' not in sys.modules`). Nothing here downloads unless
asked: `gsm8k_source` only reads a prepared copy; `prepare_gsm8k` is the one call that fetches.

  name = prepare_task_dataset('/data/tfds', 'arith', tiers='add:1-3', n_train=100_000)
  src = task_source('/data/tfds', name, split='train')     # grain.MapDataset of example dicts
  it = pipeline.make_dataset(src, batch_size=64, seed=0)

  src = gsm8k_source('train')       # reads $TFDS_DATA_DIR (default ~/tensorflow_datasets)
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import grain
import tensorflow_datasets as tfds

from tokenrl.data import tasks as tasks_lib

_CORE_KEYS = ("prompt", "answer", "task")
_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class TaskBuilderConfig(tfds.core.BuilderConfig):
  """One prepared variant of an embedded task.

  task: 'arith' | 'sort' | 'countdown'; tiers: the task's tier string ('' = its default);
  n_train / n_test: examples per split; seed: generation seed; test_fraction: see task_common.
  """
  task: str = "arith"
  tiers: str = ""
  n_train: int = 10_000
  n_test: int = 500
  seed: int = 0
  test_fraction: float = 0.1


class TokenrlTasks(tfds.core.GeneratorBasedBuilder):
  """The embedded tasks; features: prompt, answer, task (text) and meta (JSON of other keys)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "arith, sort, countdown."}
  # No predefined configs: every variant is a custom TaskBuilderConfig (tfds refuses a custom
  # config that reuses a predefined name), read back from its files by name.
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="tokenrl embedded tasks (generated, no download).",
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Text(), "answer": tfds.features.Text(),
            "task": tfds.features.Text(), "meta": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated locally.
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split: str):
    c = self.builder_config
    task = tasks_lib.get_task(c.task)
    n = c.n_train if split == "train" else c.n_test
    for i, ex in enumerate(task.make_examples(split, n, c.seed, tiers=c.tiers or task.default_tiers,
                                              test_fraction=c.test_fraction)):
      meta = {k: v for k, v in ex.items() if k not in _CORE_KEYS}
      yield i, {"prompt": ex["prompt"], "answer": ex["answer"], "task": ex["task"],
                "meta": json.dumps(meta, sort_keys=True)}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def task_record_to_example(record: Mapping[str, Any]) -> dict[str, Any]:
  """A TokenrlTasks record (bytes fields) -> the task's example dict (meta keys restored)."""
  ex = {k: _text(record[k]) for k in _CORE_KEYS}
  ex.update(json.loads(_text(record["meta"])))
  return ex


def prepare_task_dataset(data_dir: str | os.PathLike, task: str, *, tiers: str = "",
                         n_train: int = 10_000, n_test: int = 500, seed: int = 0,
                         test_fraction: float = 0.1, name: str | None = None) -> str:
  """Generates a task variant into `data_dir` as ArrayRecord; returns its name for reading.

  Args:
    data_dir: the TFDS data directory.
    task, tiers, n_train, n_test, seed, test_fraction: see TaskBuilderConfig.
    name: config name (default: the task name); one name per distinct set of arguments.

  Returns:
    'tokenrl_tasks/<name>' for `task_source` / `tfds.data_source`.
  """
  tasks_lib.get_task(task)  # Fails early on an unknown task.
  config = TaskBuilderConfig(name=name or task, task=task, tiers=tiers, n_train=n_train,
                             n_test=n_test, seed=seed, test_fraction=test_fraction)
  builder = TokenrlTasks(config=config, data_dir=os.fspath(data_dir), file_format=_FORMAT)
  builder.download_and_prepare()
  return f"{TokenrlTasks.name}/{config.name}"


def task_source(data_dir: str | os.PathLike, name: str, split: str) -> grain.MapDataset:
  """The prepared variant `name` ('tokenrl_tasks/<config>') as a MapDataset of example dicts.

  Reads the files by their directory (so variants made with custom arguments work too).

  Raises:
    FileNotFoundError: the variant was not prepared in `data_dir` (path named).
  """
  dataset, _, config = name.partition("/")
  if dataset != TokenrlTasks.name or not config:
    raise ValueError(f"task_source: name must be '{TokenrlTasks.name}/<config>', got {name!r}")
  path = os.path.join(os.fspath(data_dir), dataset, config, str(TokenrlTasks.VERSION))
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(f"task_source: {path!r} holds no prepared dataset; run "
                            f"prepare_task_dataset({os.fspath(data_dir)!r}, ...) first")
  source = tfds.builder_from_directory(path).as_data_source(split=split)
  return grain.MapDataset.source(source).map(task_record_to_example)


def _gsm8k_builder(data_dir: str | os.PathLike | None):
  # tfds 4.9.10 registers dataset builders lazily: import the module to register 'gsm8k'.
  from tensorflow_datasets.text.gsm8k import gsm8k as _  # noqa: F401
  return tfds.builder("gsm8k", data_dir=None if data_dir is None else os.fspath(data_dir),
                      file_format=_FORMAT)


def prepare_gsm8k(data_dir: str | os.PathLike | None = None) -> None:
  """Downloads GSM8K (~5 MB, needs network) and writes it as ArrayRecord into `data_dir`
  (default $TFDS_DATA_DIR or ~/tensorflow_datasets). Run once, before training."""
  _gsm8k_builder(data_dir).download_and_prepare()


def gsm8k_record_to_example(record: Mapping[str, Any]) -> dict[str, Any]:
  """A TFDS gsm8k record -> {'prompt': question, 'answer': final number, 'solution', 'task'}.

  The answer is the text after '####' in the record's 'answer' (commas removed: '1,234' ->
  '1234'); 'solution' keeps the worked solution before it.

  Raises:
    ValueError: the record's answer has no '####'.
  """
  full = _text(record["answer"])
  solution, sep, final = full.rpartition("####")
  if not sep:
    raise ValueError(f"gsm8k record has no '####' in its answer: {full[:200]!r}")
  return {"prompt": _text(record["question"]).strip(),
          "answer": final.strip().replace(",", ""),
          "solution": solution.strip(), "task": "gsm8k"}


def gsm8k_source(split: str = "train", data_dir: str | os.PathLike | None = None
                 ) -> grain.MapDataset:
  """A prepared GSM8K split ('train' | 'test' | 'train_socratic' | 'test_socratic') as a
  MapDataset of {'prompt', 'answer', 'solution', 'task'} (reward: rewards.math_answer_reward).

  Never downloads.

  Raises:
    FileNotFoundError: GSM8K is not prepared in `data_dir` (the message says how to prepare it).
    ValueError: it was prepared in another file format than array_record.
  """
  builder = _gsm8k_builder(data_dir)
  where = os.fspath(data_dir) if data_dir is not None else "$TFDS_DATA_DIR (~/tensorflow_datasets)"
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"GSM8K is not prepared in {where} (looked for {builder.data_path}); prepare it once "
        f"(needs network) with: python -c \"from tokenrl.data.tfds_tasks import prepare_gsm8k; "
        f"prepare_gsm8k({None if data_dir is None else os.fspath(data_dir)!r})\"")
  file_format = builder.info.file_format
  if file_format is None or file_format.value != _FORMAT:
    raise ValueError(
        f"GSM8K in {builder.data_path} was prepared as {file_format}; random access needs "
        f"{_FORMAT}: delete that folder and run tokenrl.data.tfds_tasks.prepare_gsm8k")
  return grain.MapDataset.source(builder.as_data_source(split=split)).map(gsm8k_record_to_example)
