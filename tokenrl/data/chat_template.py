"""Rendering Hugging Face chat templates (Jinja) in a sandbox, as `transformers` renders them.

Chat templates ship with checkpoints from the Hub, so they are untrusted code: they are compiled
by `jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute access to internals, no mutation
of lists/dicts passed in). The environment matches what templates are written against:
`trim_blocks=True, lstrip_blocks=True`, the `loopcontrols` extension (`{% break %}`), a `tojson`
filter that does not HTML-escape (and takes indent/separators/sort_keys), the globals
`raise_exception(msg)` and `strftime_now(fmt)`, and a `{% generation %}...{% endgeneration %}`
block (used by templates that mark assistant tokens; here it just renders its body).

Bounded rendering: a sandbox stops attribute tricks but not work, and a template of 200
bytes can loop 10^5 x 10^5 times or build a 10^10-character string. Every `{% for %}` iterable
is wrapped (at parse time) in a counter shared by the whole render, and '+', '*', '~' and
'**' refuse results past the output limit; a render that exceeds MAX_LOOP_ITERATIONS loop steps,
MAX_RENDER_SECONDS seconds, or MAX_OUTPUT_CHARS characters raises `TemplateLimitError` (a
`jinja2.exceptions.SecurityError`) saying which limit. Real chat templates use a few
thousand loop steps per conversation.
"""
from __future__ import annotations

import contextvars
import datetime
import functools
import json
import operator
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.visitor
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationBlock(jinja2.ext.Extension):
  """`{% generation %}body{% endgeneration %}` -> body (assistant-mask tracking is not needed)."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

  def _render(self, caller):
    return caller()


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
  # Jinja's built-in tojson HTML-escapes '<' and '>', which templates do not expect.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


MAX_LOOP_ITERATIONS = 1_000_000  # loop steps per render, all loops and nesting levels together
MAX_RENDER_SECONDS = 10.0
MAX_OUTPUT_CHARS = 10_000_000    # also the largest string or list '*' may build


class TemplateLimitError(jinja2.exceptions.SecurityError):
  """A chat template exceeded a rendering limit (loop steps, seconds or output size)."""


class _Budget:
  """The limits of one render: loop steps left and a deadline."""

  def __init__(self):
    self.steps = MAX_LOOP_ITERATIONS
    self.deadline = time.monotonic() + MAX_RENDER_SECONDS

  def step(self) -> None:
    self.steps -= 1
    if self.steps < 0:
      raise TemplateLimitError(f"chat template ran more than {MAX_LOOP_ITERATIONS} loop "
                               "iterations in one render (a runaway or hostile template)")
    if self.steps % 1024 == 0 and time.monotonic() > self.deadline:
      raise TemplateLimitError(f"chat template render took more than {MAX_RENDER_SECONDS} s")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("budget", default=None)
_BOUNDED_FILTER = "_tokenrl_bounded_iter"


def _bounded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
  """Yields from `iterable`, charging one step of the current render's budget per item."""
  budget = _BUDGET.get()
  for item in iterable:
    if budget is not None:
      budget.step()
    yield item


def _size(x: Any) -> int | None:
  return len(x) if isinstance(x, (str, list, tuple)) else None


def _checked_concat(value: str) -> str:
  """The result of a '~' concatenation, refused past MAX_OUTPUT_CHARS (doubling in a loop)."""
  if len(value) > MAX_OUTPUT_CHARS:
    raise TemplateLimitError(f"chat template builds a string of {len(value)} characters with "
                             f"'~' (limit {MAX_OUTPUT_CHARS})")
  return value


_CONCAT_FILTER = "_tokenrl_checked_concat"


class _Bound(jinja2.visitor.NodeTransformer):
  """Rewrites a parsed template: `for x in it` -> `for x in it|bounded`, `a ~ b` -> checked."""

  def visit_For(self, node):
    node = self.generic_visit(node)
    node.iter = jinja2.nodes.Filter(node.iter, _BOUNDED_FILTER, [], [], None, None,
                                    lineno=node.lineno)
    return node

  def visit_Concat(self, node):
    node = self.generic_visit(node)
    return jinja2.nodes.Filter(node, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
  """The sandbox plus work limits: every for-loop iterable goes through `_bounded_iter` and
  '+', '*', '~' refuse results beyond MAX_OUTPUT_CHARS items, '**' exponents over 10^4 bits."""
  intercepted_binops = frozenset(["+", "*", "**"])

  def _parse(self, source, name, filename):
    return _Bound().visit(super()._parse(source, name, filename))

  def call_binop(self, context, operator_name, left, right):
    if operator_name == "+":
      if (_size(left) is not None and _size(right) is not None
          and _size(left) + _size(right) > MAX_OUTPUT_CHARS):
        raise TemplateLimitError(f"chat template builds a sequence of {_size(left) + _size(right)} "
                                 f"items with '+' (limit {MAX_OUTPUT_CHARS})")
      return operator.add(left, right)
    if operator_name == "*":
      for seq, n in ((left, right), (right, left)):
        if _size(seq) is not None and isinstance(n, int) and _size(seq) * n > MAX_OUTPUT_CHARS:
          raise TemplateLimitError(f"chat template builds a sequence of {_size(seq) * n} items "
                                   f"with '*' (limit {MAX_OUTPUT_CHARS})")
      return operator.mul(left, right)
    if operator_name == "**":
      if (isinstance(left, int) and isinstance(right, int) and abs(left) > 1
          and right * max(abs(left), 2).bit_length() > 10_000):
        raise TemplateLimitError(f"chat template computes {left} ** {right} (over 10^4 bits)")
      return operator.pow(left, right)
    return super().call_binop(context, operator_name, left, right)


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
  """Compiles `template` once (cached by its text) in the bounded sandboxed environment."""
  env = _BoundedSandbox(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
  env.filters[_BOUNDED_FILTER] = _bounded_iter
  env.filters[_CONCAT_FILTER] = _checked_concat
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env.from_string(template)


def _plain(value: Any) -> Any:
  """Copies `value` into plain JSON-like types so the template never sees rich objects."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "item"):  # numpy scalars
    return _plain(value.item())
  return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool, special_tokens: Mapping[str, str],
                         tools: Sequence[Mapping[str, Any]] | None = None,
                         documents: Sequence[Mapping[str, Any]] | None = None,
                         **template_kwargs: Any) -> str:
  """Renders one conversation to text.

  Args:
    template: the Jinja source.
    messages: [{'role': ..., 'content': ...}, ...]; keys whose value is None are dropped (as
      transformers does: templates test for a key's presence, not for None).
    add_generation_prompt: append the header that starts an assistant turn.
    special_tokens: {'bos_token': '<s>', 'eos_token': ..., ...}, visible to the template;
      `template_kwargs` (e.g. `enable_thinking=False`) override them.
    tools, documents: passed through to templates that use them.

  Raises:
    ValueError: `messages` is empty or not a list of dicts.
    jinja2.TemplateError: the template called `raise_exception` or is malformed.
    TemplateLimitError (a jinja2.TemplateError): more than MAX_LOOP_ITERATIONS loop steps,
      MAX_RENDER_SECONDS seconds, or MAX_OUTPUT_CHARS characters of output.
  """
  if not messages:
    raise ValueError("render_chat_template: messages is empty; give at least one message")
  chat = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise ValueError(
          f"render_chat_template: messages[{i}] must be a dict, got {type(m).__name__}")
    chat.append({k: _plain(v) for k, v in m.items() if v is not None})
  variables = {**dict(special_tokens), **_plain(dict(template_kwargs))}
  compiled = compile_chat_template(template)
  token = _BUDGET.set(_Budget())
  try:
    parts, size = [], 0
    for part in compiled.generate(
        messages=chat, tools=_plain(tools), documents=_plain(documents),
        add_generation_prompt=add_generation_prompt, **variables):
      size += len(part)
      if size > MAX_OUTPUT_CHARS:
        raise TemplateLimitError(f"chat template output exceeds {MAX_OUTPUT_CHARS} characters")
      parts.append(part)
    return "".join(parts)
  finally:
    _BUDGET.reset(token)
