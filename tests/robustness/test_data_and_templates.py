"""Hostile data files and chat templates: errors name file:line; templates render bounded."""
import json
import time

import jinja2
import pytest

from tokenrl.data import chat_template as ct
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.jsonl import read_jsonl, where_of, write_jsonl
from tokenrl.data.preference import read_preference_jsonl
from tokenrl.data.prompts import tokenize_prompts
from tokenrl.data.sources import load_examples

OK = json.dumps({"prompt": "1+1=", "answer": "2"}).encode() + b"\n"


def test_non_utf8_byte_names_file_and_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_bytes(OK + OK + b'{"prompt": "caf\xe9", "answer": "1"}\n')
  with pytest.raises(ValueError, match=r"d\.jsonl:3: not UTF-8: byte 0xe9"):
    read_jsonl(path)
  path.write_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
  with pytest.raises(ValueError, match=r"d\.jsonl:1: not UTF-8"):
    read_preference_jsonl(path)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_names_the_file(tmp_path, content):
  path = tmp_path / "empty.jsonl"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r"empty\.jsonl: no examples"):
    read_jsonl(path)
  with pytest.raises(ValueError, match=r"empty\.jsonl: no examples"):
    load_examples("jsonl", "train", jsonl_path=str(path))


def test_bom_is_not_an_error(tmp_path):
  path = tmp_path / "bom.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + OK)
  assert read_jsonl(path) == [{"prompt": "1+1=", "answer": "2"}]


def test_character_outside_the_tokenizer_names_file_and_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_bytes(OK + b"\n" + json.dumps({"prompt": "2+2=\u00e9?", "answer": "4"}).encode() + b"\n")
  rows = read_jsonl(path)
  assert [where_of(r, "?") for r in rows] == [f"{path}:1", f"{path}:3"]
  tok = CharTokenizer()
  with pytest.raises(ValueError, match=rf"{tmp_path}/d\.jsonl:3: .*character 'é' at position 4"):
    tokenize_prompts(tok, [r["prompt"] for r in rows], use_chat_template=False,
                     where=[where_of(r, f"example {i}") for i, r in enumerate(rows)])
  with pytest.raises(ValueError, match=r"^prompts\[1\]: "):  # without labels: the index
    tokenize_prompts(tok, [r["prompt"] for r in rows], use_chat_template=False)
  # The source line rides along as an attribute: the example is still a plain-equal dict,
  # and writing it back adds nothing.
  assert rows[1] == {"prompt": "2+2=\u00e9?", "answer": "4"}
  write_jsonl(tmp_path / "out.jsonl", rows)
  assert "where" not in (tmp_path / "out.jsonl").read_text()


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template,limit", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop"),
    ("{% for m in messages %}{% for i in range(100000) %}{% for j in range(100000) %}x"
     "{% endfor %}{% endfor %}{% endfor %}", "loop"),
    ("{{ 'x' * 100000 * 100000 }}", "'\\*'"),
    ("{{ (range(100000)|list) * 100000 }}", "'\\*'"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}{{ ns.s|length }}", "'~'"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "'\\+'"),
    ("{{ 10 ** 100000 }}", "\\*\\*"),
])
def test_runaway_templates_are_bounded(template, limit):
  t0 = time.monotonic()
  with pytest.raises(ct.TemplateLimitError, match=limit):
    ct.render_chat_template(template, MSG, add_generation_prompt=True, special_tokens={})
  assert time.monotonic() - t0 < 5.0
  assert isinstance(ct.TemplateLimitError("x"), jinja2.TemplateError)


def test_normal_templates_render_unchanged():
  template = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
              "{% if not loop.last %}, {% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ 'ab' ~ 'c' }}{{ 'd' * 2 }}")
  msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
  got = ct.render_chat_template(template, msgs, add_generation_prompt=True,
                                special_tokens={"bos_token": "<s>"})
  assert got == "<s><|user|>a, <|assistant|>b<|assistant|>abcdd"
  # The budget is per render: many ordinary renders in a row never accumulate.
  loop = "{% for i in range(5000) %}{% endfor %}ok"
  for _ in range(300):
    assert ct.render_chat_template(loop, MSG, add_generation_prompt=False, special_tokens={}) == "ok"
