"""arith_cot: every trace line is right arithmetic, reflections fix a real slip, the verifier
reads the text after '#' only; the countdown worked variant ('cot:1')."""
import re

import numpy as np
import pytest

from tokenrl.data import char_tokenizer, rewards, task_arith_cot as cot, task_common, tasks

_STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)")
_STEP_SIGNED = re.compile(r"(\(-\d+\)|\d+)([-+*])(\(-\d+\)|\d+)=(-?\d+)")


def _apply(x: int, op: str, y: int) -> int:
  return x + y if op == "+" else x - y if op == "-" else x * y


def _check_trace(ex):
  """Parses the trace by hand (no eval): returns (slips [(wrong, right)], step values)."""
  *lines, last = ex["answer"].split("\n")
  assert last == cot.THINK_END + ex["result"] and cot.final_answer(ex["answer"]) == ex["result"]
  parsed = []
  for line in lines:
    reflected = line.startswith(cot.REFLECTION)
    m = _STEP.fullmatch(line[1:] if reflected else line)
    assert m, (line, ex["answer"])
    parsed.append((reflected, int(m[1]), m[2], int(m[3]), int(m[4])))
  assert not parsed[0][0]
  slips, values = [], []
  for i, (reflected, x, op, y, z) in enumerate(parsed):
    if i + 1 < len(parsed) and parsed[i + 1][0]:
      # A slip: the next '?' line redoes it with the same operands and the right value.
      assert parsed[i + 1][1:4] == (x, op, y) and _apply(x, op, y) != z
      slips.append((z, parsed[i + 1][4]))
      continue
    assert _apply(x, op, y) == z, (lines[i], ex["answer"])
    values.append(z)
  return slips, values


def _true_value(ex) -> int:
  """The problem's value from its operands (precedence: products first), no eval."""
  if ex["kind"] == "mul":
    a, b = ex["operands"]
    return a * b
  terms, signs = [ex["operands"][0]], []
  for op, x in zip(ex["ops"], ex["operands"][1:]):
    if op == "*":
      terms[-1] *= x
    else:
      terms.append(x)
      signs.append(op)
  total = terms[0]
  for op, x in zip(signs, terms[1:]):
    total = _apply(total, op, x)
  return total


def test_every_trace_line_is_right_and_the_answer_is_true():
  exs = cot.make_examples("train", 1000, 0)
  for ex in exs:
    slips, values = _check_trace(ex)
    assert len(values) == ex["steps"] and ex["result"] == str(values[-1])
    assert int(ex["result"]) == _true_value(ex) >= 0
    assert len(slips) == int(ex["reflection"])
    assert ex["prompt"] == "".join(f"{x}{o}" for x, o in zip(ex["operands"], ex["ops"] + ["="]))
  # Both kinds occur and the trace lengths vary (budget methods need variation).
  assert {e["kind"] for e in exs} == {"mul", "chain"}
  assert len({e["steps"] for e in exs}) >= 8


def test_steps_follow_the_documented_order():
  assert cot.render(cot._mul_steps(37, 48), 1776) == "37*8=296\n37*40=1480\n296+1480=1776\n#1776"
  assert cot.render(cot._mul_steps(37, 305), 11285) == (
      "37*5=185\n37*300=11100\n185+11100=11285\n#11285")  # zero digits have no partial product
  assert cot._chain_steps([12, 7, 3, 5, 2], ["+", "*", "-", "*"]) == [
      ("7*3", 21), ("5*2", 10), ("12+21", 33), ("33-10", 23)]
  assert cot._chain_steps([3, 15, 4], ["-", "+"]) is None  # 3-15 < 0: redrawn
  assert cot.render([("37*8", 296)], 296, slip=(0, 286)) == "37*8=286\n?37*8=296\n#296"


def test_reflection_fraction_and_one_real_slip():
  for pct in (0, 20, 50):
    exs = cot.make_examples("train", 1000, 1, tiers=f"mul:2-3,chain:3-6,reflect:{pct}")
    frac = np.mean([e["reflection"] for e in exs])
    assert abs(frac - pct / 100) < 0.04, (pct, frac)      # 3.2 binomial std at 50%
    for ex in exs:
      assert ex["answer"].count(cot.REFLECTION) == int(ex["reflection"])
      slips, _ = _check_trace(ex)
      for wrong, right in slips:
        # One digit off by one, same length: a slip, never the right value.
        assert wrong != right and len(str(wrong)) == len(str(right))
        assert sum(a != b for a, b in zip(str(wrong), str(right))) == 1


def test_tokenizer_covers_every_character():
  tok = char_tokenizer.CharTokenizer()
  for ex in cot.make_examples("train", 300, 2):
    assert set(ex["prompt"] + ex["answer"]) <= set(char_tokenizer.CHARS)
    assert tok.decode(tok.encode(ex["answer"], add_special_tokens=False)) == ex["answer"]
  # One token each, so a logit control biases exactly one id.
  for c in (cot.THINK_END, cot.REFLECTION, "\n"):
    assert len(tok.encode(c, add_special_tokens=False)) == 1


def test_splits_disjoint_and_deterministic():
  a = cot.make_examples("train", 300, 1)
  assert a == cot.make_examples("train", 300, 1)
  train = {e["prompt"] for s in (1, 2) for e in cot.make_examples("train", 300, s)}
  test = {e["prompt"] for s in (1, 2) for e in cot.make_examples("test", 100, s)}
  assert train and test and not train & test
  assert all(task_common.in_test_split(p, 0.1) for p in test)
  # The reflection share does not move problems across the split.
  assert all(task_common.in_test_split(e["prompt"], 0.1)
             for e in cot.make_examples("test", 50, 0, tiers="mul:2,chain:3,reflect:100"))


def test_verifier_reads_the_final_answer_only():
  ex = cot.make_examples("test", 1, 0, tiers="mul:2")[0]
  right = ex["result"]
  wrong = str(int(right) + 1)
  v = tasks.get_task("arith_cot").reward_fn
  assert v is cot.final_answer_reward and rewards.TASK_VERIFIERS["arith_cot"] is v
  assert v(ex["answer"], ex) == 1.0
  assert v("#" + right, ex) == 1.0                    # the steps are not scored
  assert v("1+1=3\n#" + right, ex) == 1.0              # not even wrong ones
  assert v(ex["answer"].rpartition("#")[0] + "#" + wrong, ex) == 0.0
  assert v(ex["answer"].replace("#", ""), ex) == 0.0   # no delimiter: 0, whatever the text
  assert v(right, ex) == 0.0
  assert v("", ex) == 0.0
  # Whitespace: stripped around the answer, kept inside it; the last '#' wins.
  assert v("#  " + right + " \n", ex) == 1.0
  assert v("#" + right[:1] + " " + right[1:], ex) == 0.0
  assert v("#0" + right, ex) == 0.0 and v("#" + right + ".", ex) == 0.0
  assert v("#" + wrong + "\n#" + right, ex) == 1.0
  assert v("#" + right + "\n#" + wrong, ex) == 0.0
  # A bare reference answer (no '#') is compared whole.
  assert v("x\n#42", {"answer": "42", "task": "arith_cot"}) == 1.0
  assert cot.final_answer("no delimiter") is None and cot.final_answer("a#b#c ") == "c"


@pytest.mark.parametrize("spec,msg", [
    ("reflect:20", "no problem entry"), ("mul:2,reflect:10-20", "one percentage"),
    ("mul:2,reflect:10,reflect:20", "one percentage"), ("mul:7", "lo <= hi <= 6"),
    ("chain:1", "2 <= lo"), ("div:2", "key in"),
])
def test_bad_tiers(spec, msg):
  with pytest.raises(ValueError, match=msg):
    cot.make_examples("train", 1, 0, tiers=spec)


def test_countdown_worked_variant():
  plain = tasks.make_examples("countdown", "train", 200, 0, tiers="nums:3-4")
  worked = tasks.make_examples("countdown", "train", 200, 0, tiers="nums:3-4,cot:1")
  for p, ex in zip(plain, worked):
    assert p["prompt"] == ex["prompt"] and p["answer"] == ex["expression"]  # same problems
    *lines, last = ex["answer"].split("\n")
    assert last == "#" + ex["expression"] and len(lines) == len(ex["numbers"]) - 1
    for line in lines:
      m = _STEP_SIGNED.fullmatch(line)
      assert m, line
      x, y = (int(s.strip("()")) for s in (m[1], m[3]))
      assert _apply(x, m[2], y) == int(m[4])
    assert int(_STEP_SIGNED.fullmatch(lines[-1])[4]) == ex["target"]
    assert rewards.task_reward(ex["answer"], ex) == 1.0
    assert rewards.task_reward("#" + ex["expression"] + " ", ex) == 1.0
    assert rewards.task_reward(ex["expression"], ex) == 0.0      # the worked form needs '#'
    assert rewards.task_reward(ex["answer"] + "+1", ex) == 0.0
    assert rewards.task_reward(p["answer"], p) == 1.0            # plain countdown unchanged
  with pytest.raises(ValueError, match="'cot' takes one value"):
    tasks.make_examples("countdown", "train", 1, 0, tiers="cot:0-1")
