"""The countdown expression parser: exact values, precedence, strict errors (never eval)."""
import pytest
from hypothesis import given, settings, strategies as st

from tokenrl.data.expr_parser import ExpressionError, parse_int_expression


@pytest.mark.parametrize("text,value,literals", [
    ("3*5+7", 22, (3, 5, 7)),
    ("3+5*7", 38, (3, 5, 7)),
    ("(3+5)*7", 56, (3, 5, 7)),
    ("10-4-3", 3, (10, 4, 3)),        # left-associative
    ("10-(4-3)", 9, (10, 4, 3)),
    (" 2 * ( 3 + 4 ) ", 14, (2, 3, 4)),
    ("((7))", 7, (7,)),
    ("2*3*4-1", 23, (2, 3, 4, 1)),
])
def test_values(text, value, literals):
  parsed = parse_int_expression(text)
  assert parsed.value == value and parsed.literals == literals


def test_unary_minus_only_when_allowed():
  with pytest.raises(ExpressionError, match="position 0"):
    parse_int_expression("-3+5")
  assert parse_int_expression("-3+5", allow_unary_minus=True).value == 2
  assert parse_int_expression("2*-(1+2)", allow_unary_minus=True).value == -6


@pytest.mark.parametrize("text,msg", [
    ("", "empty"), ("3+", "end of input"), ("3 4", "position 2"), ("(3+4", r"expected '\)'"),
    ("3/4", r"'/' at position 1"), ("__import__('os')", "'_' at position 0"),
    ("2**3", "position 2"), ("1e5", "'e' at position 1"), ("(" * 40 + "1" + ")" * 40, "deeper"),
    ("1" * 19, "19 digits"), ("1+" * 200 + "1", "max_length"),
])
def test_errors(text, msg):
  with pytest.raises(ExpressionError, match=msg):
    parse_int_expression(text)


def _tree(depth):
  leaf = st.integers(0, 99).map(lambda v: (str(v), v))
  if depth == 0:
    return leaf

  def combine(args):
    (ls, lv), op, (rs, rv) = args
    value = lv + rv if op == "+" else lv - rv if op == "-" else lv * rv
    return f"({ls}){op}({rs})", value

  sub = _tree(depth - 1)
  return st.one_of(leaf, st.tuples(sub, st.sampled_from("+-*"), sub).map(combine))


@settings(max_examples=100, deadline=None)
@given(_tree(3))
def test_fully_parenthesized_trees(pair):
  text, value = pair
  assert parse_int_expression(text).value == value
