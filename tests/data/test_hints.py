"""Hint texts derived from the embedded tasks' examples, templates, and self-hint hygiene."""

import pytest

from tokenrl.data import hints
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.tasks import make_examples

ADD = {"prompt": "12+7=", "answer": "19", "task": "arith", "op": "add", "operands": [12, 7]}
SUB = {"prompt": "42-17=", "answer": "25", "task": "arith", "op": "sub", "operands": [42, 17]}
ONE = {"prompt": "3+4=", "answer": "7", "task": "arith", "op": "add", "operands": [3, 4]}


def test_hint_kinds_by_hand():
  assert hints.prefix_hint(ADD) == "starts 1"
  assert hints.prefix_hint(ADD, 5) == "starts 1"       # never the whole answer
  assert hints.prefix_hint(ONE) == "1 chars"           # one-character answer: length instead
  assert hints.step_hint(ADD) == "units 2+7=9"
  assert hints.step_hint(SUB) == "units borrow 12-7=5"
  assert hints.step_hint({"prompt": "sort 3142=", "answer": "1234", "task": "sort",
                          "digits": [3, 1, 4, 2]}) == "smallest 1"
  assert hints.step_hint({"prompt": "make 22 from 7 3 5=", "answer": "3*5+7",
                          "task": "countdown"}) == "first 3*5"
  assert hints.length_hint(SUB) == "2 chars"


@pytest.mark.parametrize("task", ["arith", "sort", "countdown"])
def test_every_kind_fits_char_tokenizer_and_hides_multi_char_answers(task):
  tok = CharTokenizer()
  for ex in make_examples(task, "train", 30, seed=1):
    for kind in hints.HINT_KINDS:
      h = hints.example_hint(ex, kind, 2)
      tok.encode(hints.format_prompt("hint: {hint}\n{prompt}", hint=h, prompt=ex["prompt"]))
      if kind != "step" and len(ex["answer"]) > 1:
        assert not hints.hint_reveals_answer(h, ex), (kind, h, ex)


def test_templates():
  assert hints.format_prompt("hint: {hint}\n{prompt}", hint="a", prompt="1+1=") == "hint: a\n1+1="
  with pytest.raises(ValueError, match="placeholders"):
    hints.check_template("{hint} {prompt} {x}", hints.HINT_FIELDS)
  with pytest.raises(ValueError, match="plain names"):
    hints.check_template("{hint.__class__}{prompt}", hints.HINT_FIELDS)
  with pytest.raises(ValueError, match="malformed"):
    hints.check_template("{hint", hints.HINT_FIELDS)
  with pytest.raises(ValueError, match="kind"):
    hints.example_hint(ADD, "answer")


def test_self_hint_prompts_and_cleaning():
  kw = dict(rationale_template="{prompt}{answer}\nwhy:",
            hint_template="{prompt}{answer}\nwhy:{rationale}\nhint:")
  assert hints.self_hint_prompts(ADD, **kw) == "12+7=19\nwhy:"
  assert hints.self_hint_prompts(ADD, rationale=" add\n the units ", **kw) == (
      "12+7=19\nwhy:add the units\nhint:")
  assert hints.clean_generated_hint("  carry\n\nthe one ", max_chars=9) == "carry the"
  assert hints.hint_reveals_answer("it is 19", ADD) and not hints.hint_reveals_answer("carry", ADD)
