"""load_examples: one entry point for embedded tasks, JSONL files and GSM8K."""
import pytest

from tokenrl.data import sources, tasks
from tokenrl.data.jsonl import write_jsonl


def test_embedded_matches_make_examples():
  got = sources.load_examples("sort", "test", n=10, seed=4, tiers="len:2")
  assert got == tasks.make_examples("sort", "test", 10, 4, tiers="len:2")
  assert sources.load_examples("arith", "train", n=3) == tasks.make_examples("arith", "train", 3, 0)


def test_jsonl_split_placeholder(tmp_path):
  write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "answer": "1"}] * 3)
  write_jsonl(tmp_path / "test.jsonl", [{"prompt": "b", "answer": "2"}])
  path = str(tmp_path / "{split}.jsonl")
  assert len(sources.load_examples("jsonl", "train", jsonl_path=path)) == 3
  assert len(sources.load_examples("jsonl", "train", n=2, jsonl_path=path)) == 2
  assert sources.load_examples("jsonl", "test", jsonl_path=path)[0]["prompt"] == "b"


def test_errors_and_reward_names(tmp_path):
  with pytest.raises(ValueError, match="needs n"):
    sources.load_examples("arith", "train")
  with pytest.raises(ValueError, match="unknown task 'chess'"):
    sources.load_examples("chess", "train", n=1)
  with pytest.raises(ValueError, match="needs jsonl_path"):
    sources.load_examples("jsonl", "train")
  with pytest.raises(FileNotFoundError, match="prepare_gsm8k"):
    sources.load_examples("gsm8k", "train", data_dir=str(tmp_path))
  assert [sources.default_reward_name(t) for t in ("countdown", "gsm8k", "jsonl")] == [
      "task", "math", "math"]
