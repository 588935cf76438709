"""TFDS without TensorFlow: the embedded tasks round-trip through ArrayRecord; GSM8K mapping.

Nothing is downloaded: GSM8K is faked by a local JSONL fed through tfds' own gsm8k builder code.
"""
import json
import sys

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.text.gsm8k import gsm8k as tfds_gsm8k

from tokenrl.data import pipeline, rewards, tasks, tfds_tasks


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_task_dataset_round_trip_without_tensorflow(data_dir):
  name = tfds_tasks.prepare_task_dataset(data_dir, "countdown", tiers="nums:3", n_train=40,
                                         n_test=8, seed=5, name="cd3")
  assert name == "tokenrl_tasks/cd3"
  want = tasks.make_examples("countdown", "train", 40, 5, tiers="nums:3")
  src = tfds_tasks.task_source(data_dir, name, "train")
  got = [src[i] for i in range(len(src))]
  key = lambda e: (e["prompt"], e["answer"])  # tfds shuffles records on write
  assert sorted(got, key=key) == sorted(want, key=key)
  assert all(rewards.countdown_reward(e["answer"], e) == 1.0 for e in got)
  # The generic tfds entry point reads the same files (raw records: bytes + JSON meta).
  raw = tfds.data_source(name, data_dir=str(data_dir), split="test", download=False)
  it = pipeline.make_dataset(raw, batch_size=8, seed=0, repeat=False, shard_index=0,
                             shard_count=1, map_fn=tfds_tasks.task_record_to_example)
  test = next(it)
  assert sorted(test, key=key) == sorted(
      tasks.make_examples("countdown", "test", 8, 5, tiers="nums:3"), key=key)
  # Into grain, sharded and batched.
  batch = next(pipeline.make_dataset(src, batch_size=4, seed=0, shard_index=0, shard_count=2))
  assert len(batch) == 4 and all(set(e) >= {"prompt", "answer", "numbers", "target"}
                                 for e in batch)
  assert "tensorflow" not in sys.modules


def test_task_source_errors(data_dir):
  with pytest.raises(FileNotFoundError, match="never_made"):
    tfds_tasks.task_source(data_dir, "tokenrl_tasks/never_made", "train")
  with pytest.raises(ValueError, match="tokenrl_tasks/<config>"):
    tfds_tasks.task_source(data_dir, "mnist", "train")


def test_gsm8k_record_mapping():
  record = {"question": b"Tom has 1,000 apples and buys 234 more. How many?",
            "answer": b"1000 + 234 = <<1000+234=1234>>1234\n#### 1,234",
            "annotation": b"...", "short_answer": b"1,234"}
  ex = tfds_tasks.gsm8k_record_to_example(record)
  assert ex == {"prompt": "Tom has 1,000 apples and buys 234 more. How many?", "answer": "1234",
                "solution": "1000 + 234 = <<1000+234=1234>>1234", "task": "gsm8k"}
  assert rewards.math_answer_reward("so #### 1234", ex) == 1.0
  with pytest.raises(ValueError, match="no '####'"):
    tfds_tasks.gsm8k_record_to_example({"question": "q", "answer": "42"})


def test_gsm8k_missing_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="prepare_gsm8k"):
    tfds_tasks.gsm8k_source("train", data_dir=tmp_path)


class _LocalGsm8k(tfds_gsm8k.Gsm8k, skip_registration=True):
  """tfds' gsm8k builder fed from a local file instead of GitHub."""
  name = "gsm8k"
  jsonl_path = None

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(self.jsonl_path)}


def test_gsm8k_source_reads_a_prepared_copy(tmp_path):
  lines = [{"question": "What is 6 * 7?", "answer": "6 * 7 = 42\n#### 42"},
           {"question": "Half of 3?", "answer": "3 / 2 = 1.5\n#### 1.5"}]
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps(l) + "\n" for l in lines))
  _LocalGsm8k.jsonl_path = str(path)
  _LocalGsm8k(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  src = tfds_tasks.gsm8k_source("train", data_dir=tmp_path / "tfds")
  got = sorted((src[i] for i in range(len(src))), key=lambda e: e["answer"])
  assert [(e["prompt"], e["answer"]) for e in got] == [("Half of 3?", "1.5"),
                                                      ("What is 6 * 7?", "42")]
  assert "tensorflow" not in sys.modules
