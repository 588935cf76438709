"""Rendering Hugging Face chat templates (Jinja) in a sandbox, as `transformers` renders them.

Chat templates ship with checkpoints from the Hub, so they are untrusted code: they are compiled
by `jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute access to internals, no mutation
of lists/dicts passed in). The environment matches what templates are written against:
`trim_blocks=True, lstrip_blocks=True`, the `loopcontrols` extension (`{% break %}`), a `tojson`
filter that does not HTML-escape (and takes indent/separators/sort_keys), the globals
`raise_exception(msg)` and `strftime_now(fmt)`, and a `{% generation %}...{% endgeneration %}`
block (used by templates that mark assistant tokens; here it just renders its body).
"""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
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


@functools.lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
  """Compiles `template` once (cached by its text) in the sandboxed environment."""
  env = ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
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
  return compile_chat_template(template).render(
      messages=chat, tools=_plain(tools), documents=_plain(documents),
      add_generation_prompt=add_generation_prompt, **variables)
