"""Embedded tasks: determinism, disjoint splits, correct answers, tier parsing."""
import re

import pytest

from tokenrl.data import rewards, task_common, tasks
from tokenrl.data.char_tokenizer import CharTokenizer


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_deterministic_and_disjoint(task):
  a = tasks.make_examples(task, "train", 300, seed=1)
  assert a == tasks.make_examples(task, "train", 300, seed=1)
  assert a != tasks.make_examples(task, "train", 300, seed=2)
  train = {e["prompt"] for s in (1, 2) for e in tasks.make_examples(task, "train", 300, seed=s)}
  test = {e["prompt"] for s in (1, 2) for e in tasks.make_examples(task, "test", 100, seed=s)}
  assert train and test and not train & test
  assert all(task_common.in_test_split(p, 0.1) for p in test)


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_char_tokenizable_and_verified(task):
  tok = CharTokenizer()
  t = tasks.get_task(task)
  for ex in t.make_examples("train", 100, 0):
    tok.encode(ex["prompt"])
    tok.encode(ex["answer"])
    assert ex["task"] == task
    assert t.reward_fn(ex["answer"], ex) == 1.0
    assert rewards.task_reward(" " + ex["answer"] + "\n", ex) == 1.0
    assert t.reward_fn(ex["answer"] + "1", ex) == 0.0


def test_arith_answers():
  for ex in tasks.make_examples("arith", "train", 200, 3, tiers="add:1-3,sub:2,mul:1-2"):
    a, b = ex["operands"]
    sym = {"add": "+", "sub": "-", "mul": "*"}[ex["op"]]
    assert ex["prompt"] == f"{a}{sym}{b}="
    want = {"add": a + b, "sub": a - b, "mul": a * b}[ex["op"]]
    assert ex["answer"] == str(want) and want >= 0
    if ex["op"] == "sub":
      assert 10 <= b <= a <= 99
    if ex["op"] == "add":
      assert a < 1000 and b < 1000


def test_sort_answers():
  for ex in tasks.make_examples("sort", "test", 50, 0, tiers="len:4-6"):
    assert 4 <= len(ex["digits"]) <= 6
    assert ex["prompt"] == "sort " + "".join(map(str, ex["digits"])) + "="
    assert ex["answer"] == "".join(map(str, sorted(ex["digits"])))


def test_copy_answers_repeat_the_prompt_text():
  from tokenrl.data import char_tokenizer, rewards
  exs = tasks.make_examples("copy", "train", 200, 0, tiers="len:8-16")
  for ex in exs:
    text = ex["prompt"][len("copy "):-1]
    assert ex["prompt"] == f"copy {text}=" and ex["answer"] == text
    assert 8 <= len(text) <= 16 and set(text) <= set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert set(ex["prompt"]) <= set(char_tokenizer.CHARS)  # the char tokenizer reads it
    assert rewards.task_reward(text, ex) == 1.0 and rewards.task_reward(text[:-1], ex) == 0.0
  assert len({len(e["answer"]) for e in exs}) == 9  # every length of the tier occurs


def test_countdown_problems():
  for ex in tasks.make_examples("countdown", "train", 100, 0, tiers="nums:3-4,target:1-30"):
    assert 3 <= len(ex["numbers"]) <= 4 and all(1 <= v <= 9 for v in ex["numbers"])
    assert 1 <= ex["target"] <= 30
    assert re.fullmatch(r"make \d+ from [\d ]+=", ex["prompt"])


def test_unique_and_small_spaces():
  # 'add:1' has 100 problems, ~10 held out: 8 unique test prompts exist, 500 do not.
  exs = tasks.make_examples("arith", "test", 5, 0, tiers="add:1", unique=True)
  assert len({e["prompt"] for e in exs}) == 5
  with pytest.raises(ValueError, match="too small"):
    tasks.make_examples("arith", "test", 500, 0, tiers="add:1", unique=True)


@pytest.mark.parametrize("spec,msg", [
    ("", "expected"), ("div:1", "key in"), ("add:3-1", "lo <= hi"), ("add:x", "integers"),
    ("add:0-1", "1 <= lo"),
])
def test_bad_tiers(spec, msg):
  with pytest.raises(ValueError, match=msg):
    tasks.make_examples("arith", "train", 1, 0, tiers=spec)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown task"):
    tasks.get_task("chess")
  with pytest.raises(ValueError, match="split must be"):
    tasks.make_examples("sort", "valid", 1, 0)
  with pytest.raises(ValueError, match="test_fraction"):
    tasks.make_examples("sort", "train", 1, 0, test_fraction=0.0)
  with pytest.raises(ValueError, match="given twice"):
    tasks.make_examples("countdown", "train", 1, 0, tiers="nums:3,nums:4")
