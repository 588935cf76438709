"""Reward functions: answer extraction, numeric comparison, format, countdown."""
import fractions
import functools
import pickle

import pytest

from tokenrl.data import rewards


@pytest.mark.parametrize("text,want", [
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("#### 1,234", "1234"),
    ("The answer is 42.", "42"),
    ("the answer is: $1,000.50", "1000.50"),
    ("We get \\boxed{18} dollars, not 20", "18"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\boxed{x = {2}+1 = 3}", "3"),
    ("I think 5 apples and then 12", "12"),
    ("#### 5 ... The answer is 6", "5"),          # '####' has priority
    ("The answer is 6, \\boxed{7}", "6"),         # 'answer is' before \boxed
    ("temperature -3.5 degrees", "-3.5"),
    ("no numbers here", None),
])
def test_extract_final_answer(text, want):
  assert rewards.extract_final_answer(text) == want


def test_parse_number_and_equality():
  assert rewards.parse_number("1,234.50") == fractions.Fraction(2469, 2)
  assert rewards.parse_number("$18") == 18 and rewards.parse_number("12%") == 12
  assert rewards.parse_number("3/4") == fractions.Fraction(3, 4)
  # Exponents and words are refused (Fraction('1e999999999') would build a huge integer).
  for bad in ("1e999999999", "nan", "inf", "", "3/0", "abc", "1.5/2"):
    assert rewards.parse_number(bad) is None, bad
  assert rewards.numbers_equal("0.75", "3/4") and rewards.numbers_equal("18.0", "18")
  assert rewards.numbers_equal("0.3333333", "1/3")        # within rel_tol=1e-6
  assert not rewards.numbers_equal("0.333", "1/3")
  assert not rewards.numbers_equal("x", "1")


def test_math_answer_reward():
  ex = {"answer": "1234"}
  assert rewards.math_answer_reward("step... #### 1,234", ex) == 1.0
  assert rewards.math_answer_reward("The answer is 1234.0", ex) == 1.0
  assert rewards.math_answer_reward("The answer is 1235", ex) == 0.0
  assert rewards.math_answer_reward("nothing", ex) == 0.0
  assert rewards.math_answer_reward("\\boxed{72}", {"answer": "48 + 24 = 72 #### 72"}) == 1.0


def test_exact_and_format():
  assert rewards.exact_answer_reward(" 19\n", {"answer": "19"}) == 1.0
  assert rewards.exact_answer_reward("19.", {"answer": "19"}) == 0.0
  assert rewards.format_reward("... #### 5", {}) == 1.0
  assert rewards.format_reward("so \\boxed{5}", {}) == 1.0
  assert rewards.format_reward("so \\boxed{x}", {}) == 0.0
  assert rewards.format_reward("5", {}) == 0.0


def test_countdown_reward():
  ex = {"numbers": [7, 3, 5], "target": 22}
  assert rewards.countdown_reward("3*5+7", ex) == 1.0
  assert rewards.countdown_reward(" 7+5*3 = 22 ", ex) == 1.0
  assert rewards.countdown_reward("(3*5)+7", ex) == 1.0
  assert rewards.countdown_reward("3*5+7+0", ex) == 0.0       # 0 is not a given number
  assert rewards.countdown_reward("3*5*7", ex) == 0.0         # wrong value
  assert rewards.countdown_reward("22", ex) == 0.0            # numbers not used
  assert rewards.countdown_reward("7+7+3+5", ex) == 0.0       # 7 used twice
  assert rewards.countdown_reward("__import__('os')", ex) == 0.0


def test_task_reward_dispatch_and_registry():
  assert rewards.task_reward("3*5+7", {"task": "countdown", "numbers": [3, 5, 7],
                                       "target": 22}) == 1.0
  assert rewards.task_reward("#### 4", {"task": "gsm8k", "answer": "4"}) == 1.0
  with pytest.raises(KeyError, match="no verifier"):
    rewards.task_reward("1", {"task": "chess"})
  assert set(rewards.REWARD_FNS) == {"exact", "math", "format", "countdown", "task", "count"}


def test_regex_reward_pickles():
  r = rewards.RegexReward(r"<answer>\d+</answer>", value=0.5)
  r2 = pickle.loads(pickle.dumps(r))
  assert r2("x <answer>12</answer>", {}) == 0.5 and r2("<answer>a</answer>", {}) == 0.0
  assert rewards.RegexReward(r"\d+", fullmatch=True)("12 ", {}) == 0.0
  pickle.dumps(functools.partial(rewards.math_answer_reward))


def test_delimited_answer_text_puts_the_think_end_back_only_for_delimited_tasks():
  from tokenrl.data import task_arith_cot
  from tokenrl.data.rewards import delimited_answer_text, task_reward
  cot = {"task": "arith_cot", "prompt": "37*4+9=", "answer": "37*4=148\n148+9=157\n#157"}
  plain = {"task": "arith", "prompt": "12+7=", "answer": "19"}
  assert delimited_answer_text("157", "#", cot) == "#157"
  assert task_arith_cot.final_answer_reward(delimited_answer_text("157", "#", cot), cot) == 1.0
  assert task_arith_cot.final_answer_reward("157", cot) == 0.0  # why: no '#', no answer
  assert delimited_answer_text("19", "#", plain) == "19"
  assert task_reward(delimited_answer_text("19", "#", plain), plain) == 1.0
  assert delimited_answer_text("157", "", cot) == "157"
