"""A tiny recursive-descent parser for integer expressions with + - * and parentheses.

Used to check countdown answers. It never evaluates text as code (no eval/exec): the grammar
below is the whole language, and anything else raises `ExpressionError`.

  expr    := term (('+' | '-') term)*
  term    := unary ('*' unary)*
  unary   := '-' unary  (only if allow_unary_minus)  |  primary
  primary := INTEGER | '(' expr ')'

Whitespace between tokens is ignored. Evaluation is exact (Python ints), left-associative.
Size limits (length, nesting depth, digits per literal) keep hostile completions cheap.
"""
from __future__ import annotations

import dataclasses

_OPS = "+-*()"


class ExpressionError(ValueError):
  """The text is not an expression of the grammar (the message names what and where)."""


@dataclasses.dataclass(frozen=True)
class ParsedExpression:
  """value: the exact integer value; literals: the integer literals in order of appearance."""
  value: int
  literals: tuple[int, ...]


def _tokenize(text: str, max_literal_digits: int) -> list[tuple[str, int, int]]:
  """-> [(kind, value, position)], kind in {'int', '+', '-', '*', '(', ')', 'end'}."""
  tokens = []
  i = 0
  while i < len(text):
    c = text[i]
    if c.isspace():
      i += 1
    elif c in _OPS:
      tokens.append((c, 0, i))
      i += 1
    elif "0" <= c <= "9":
      j = i
      while j < len(text) and "0" <= text[j] <= "9":
        j += 1
      if j - i > max_literal_digits:
        raise ExpressionError(f"integer at position {i} has {j - i} digits > {max_literal_digits}")
      tokens.append(("int", int(text[i:j]), i))
      i = j
    else:
      raise ExpressionError(f"unexpected character {c!r} at position {i}")
  tokens.append(("end", 0, len(text)))
  return tokens


class _Parser:

  def __init__(self, tokens, allow_unary_minus: bool, max_depth: int):
    self.tokens = tokens
    self.pos = 0
    self.allow_unary_minus = allow_unary_minus
    self.max_depth = max_depth
    self.literals: list[int] = []

  def peek(self) -> str:
    return self.tokens[self.pos][0]

  def take(self, kind: str):
    tok = self.tokens[self.pos]
    if tok[0] != kind:
      what = "end of input" if tok[0] == "end" else repr(tok[0] if tok[0] != "int" else tok[1])
      raise ExpressionError(f"expected {kind!r} at position {tok[2]}, found {what}")
    self.pos += 1
    return tok

  def expr(self, depth: int) -> int:
    if depth > self.max_depth:
      raise ExpressionError(f"parentheses nested deeper than {self.max_depth}")
    value = self.term(depth)
    while self.peek() in "+-":
      op = self.take(self.peek())[0]
      rhs = self.term(depth)
      value = value + rhs if op == "+" else value - rhs
    return value

  def term(self, depth: int) -> int:
    value = self.unary(depth)
    while self.peek() == "*":
      self.take("*")
      value = value * self.unary(depth)
    return value

  def unary(self, depth: int) -> int:
    if self.peek() == "-" and self.allow_unary_minus:
      if depth > self.max_depth:
        raise ExpressionError(f"unary minus nested deeper than {self.max_depth}")
      self.take("-")
      return -self.unary(depth + 1)
    return self.primary(depth)

  def primary(self, depth: int) -> int:
    kind, value, pos = self.tokens[self.pos]
    if kind == "int":
      self.pos += 1
      self.literals.append(value)
      return value
    if kind == "(":
      self.take("(")
      inner = self.expr(depth + 1)
      self.take(")")
      return inner
    what = "end of input" if kind == "end" else repr(kind)
    raise ExpressionError(f"expected a number or '(' at position {pos}, found {what}")


def parse_int_expression(text: str, *, allow_unary_minus: bool = False, max_length: int = 256,
                         max_depth: int = 32, max_literal_digits: int = 18) -> ParsedExpression:
  """Parses and evaluates `text` exactly.

  Args:
    text: e.g. '(3+5)*7-2'.
    allow_unary_minus: accept '-3' / '-(1+2)' (countdown does not: numbers are used as given).
    max_length, max_depth, max_literal_digits: limits; exceeding one raises.

  Returns:
    ParsedExpression(value, literals).

  Raises:
    ExpressionError (a ValueError): empty text, a character outside digits/+-*()/space,
      a syntax error, or a limit exceeded; the message gives the position.
  """
  if not isinstance(text, str):
    raise ExpressionError(f"expression must be a str, got {type(text).__name__}")
  if len(text) > max_length:
    raise ExpressionError(f"expression has {len(text)} characters > max_length={max_length}")
  if not text.strip():
    raise ExpressionError("empty expression")
  parser = _Parser(_tokenize(text, max_literal_digits), allow_unary_minus, max_depth)
  value = parser.expr(0)
  parser.take("end")
  return ParsedExpression(value=value, literals=tuple(parser.literals))
