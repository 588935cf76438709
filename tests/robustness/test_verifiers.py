"""Hostile completions against the built-in verifiers: reward holes, slow parsing, digit lookalikes."""
import time

import pytest

from tokenrl.data import expr_parser, rewards


@pytest.mark.parametrize("pred,gold", [
    ("1000001", "1000000"),            # rel diff 1e-6: was accepted by a relative tolerance
    ("123456800", "123456789"),
    ("10000000000000000000001", "10000000000000000000000"),   # beyond float64 precision
    ("1000001.0", "1000000"),
    ("0.1", "0.10000001"),             # both terminating decimals: exact
])
def test_integers_and_decimals_compare_exactly(pred, gold):
  assert not rewards.numbers_equal(pred, gold)
  assert rewards.math_answer_reward(f"The answer is {pred}", {"answer": gold}) == 0.0


def test_exact_equalities_and_the_one_tolerance():
  assert rewards.numbers_equal("10000000000000000000001", "10000000000000000000001.00")
  assert rewards.numbers_equal("0.75", "3/4") and rewards.numbers_equal("-18.0", "-18")
  # Decimal vs a fraction with no finite decimal expansion: |x-y| <= 1e-6 max(|x|,|y|).
  assert rewards.numbers_equal("0.3333333", "1/3")            # diff 3.3e-8
  assert not rewards.numbers_equal("0.33333", "1/3")          # diff 3.3e-6 > 3.3e-7
  assert not rewards.numbers_equal("1/3", "2/6.0")            # '2/6.0' is not a number
  assert not rewards.numbers_equal("1/3", "0.3333333", rel_tol=0.0)
  # Two repeating fractions compare exactly.
  assert rewards.numbers_equal("2/6", "1/3") and not rewards.numbers_equal("1/3", "333334/1000003")


@pytest.mark.parametrize("text", [
    "the answer is" + " " * 8000,
    "the answer is" + " " * 8000 + "x",
    "The answer is:" + " " * 8000 + "=",
    "####" + " " * 8000,
    ("the answer is " * 2000),
    "1," * 50_000,
    "1" * 100_000,
    "\\boxed{" * 20_000,
    "\\frac{" * 20_000 + "}",
    "-$ " * 30_000,
    "the answer is" + " " * 4000 + ":" + " " * 4000 + "x",
    "answer is " + " :" * 20_000,
    ("answer" + " " * 50) * 2000,
    "#### " + "#### " * 20_000,
    ("9" * 99 + ".") * 1000,
])
@pytest.mark.parametrize("fn", [rewards.math_answer_reward, rewards.format_reward,
                                rewards.countdown_reward, rewards.exact_answer_reward])
def test_hostile_text_is_fast(text, fn):
  ex = {"answer": "7", "numbers": [1, 2], "target": 3}
  t0 = time.perf_counter()
  fn(text, ex)
  assert time.perf_counter() - t0 < 0.1, (fn.__name__, text[:30])


def test_huge_numbers_are_not_parsed():
  assert rewards.parse_number("1" * (rewards.MAX_NUMBER_CHARS + 1)) is None
  assert rewards.math_answer_reward("1" * 100_000, {"answer": "1" * 100_000}) == 0.0
  n = "9" * 500  # arbitrary size below the limit: exact
  assert rewards.math_answer_reward(f"#### {n}", {"answer": n}) == 1.0
  assert rewards.math_answer_reward(f"#### {n[:-1]}8", {"answer": n}) == 0.0


# One rule for every verifier: only ASCII 0-9 are digits.
@pytest.mark.parametrize("digit", ["٧", "７", "߇", "𝟕"])
def test_unicode_digits_are_not_digits_anywhere(digit):
  assert rewards.math_answer_reward(f"The answer is {digit}", {"answer": "7"}) == 0.0
  assert rewards.math_answer_reward(digit, {"answer": "7"}) == 0.0
  assert rewards.format_reward(f"#### {digit}", {}) == 0.0
  assert rewards.exact_answer_reward(digit, {"answer": "7"}) == 0.0
  assert rewards.countdown_reward(f"{digit}", {"numbers": [7], "target": 7}) == 0.0
  assert rewards.task_reward(digit, {"task": "arith", "answer": "7"}) == 0.0
  assert rewards.task_reward(f"#### {digit}", {"task": "gsm8k", "answer": "7"}) == 0.0
  assert rewards.parse_number(digit) is None
  with pytest.raises(expr_parser.ExpressionError):
    expr_parser.parse_int_expression(f"{digit}+1")
  # The ASCII digit itself scores everywhere (the rule is not "no 7s").
  assert rewards.math_answer_reward("The answer is 7", {"answer": "7"}) == 1.0
  assert rewards.countdown_reward("7", {"numbers": [7], "target": 7}) == 1.0


def test_model_output_is_never_evaluated():
  ex = {"answer": "2", "numbers": [1, 1], "target": 2}
  for text in ("__import__('os').system('true')", "1+1", "#### 2**1", "(lambda: 2)()"):
    assert rewards.countdown_reward(text, ex) == (1.0 if text == "1+1" else 0.0)
