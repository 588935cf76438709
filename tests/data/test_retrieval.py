"""The retrieval task generator: exact lengths, one planted key, determinism, training rows."""
import numpy as np
import pytest

from tokenrl.data import retrieval as R
from tokenrl.data.char_tokenizer import CharTokenizer


def test_example_layout():
  for seed in range(20):
    ex = R.make_example(np.random.default_rng(seed), length=120, key_digits=4, min_depth=10)
    assert len(ex.prompt) == 120
    assert ex.prompt.endswith("?key:")
    assert ex.prompt.count("key:") == 2  # the plant and the question
    assert ex.answer.isdigit() and len(ex.answer) == 4
    assert ex.prompt[ex.key_start - 4:ex.key_start] == "key:"
    assert ex.prompt[ex.key_start:ex.key_start + 5] == ex.answer + "."
    assert ex.key_start - 4 >= 10
    # The key's digits are the only digits of the prompt.
    digits = [i for i, ch in enumerate(ex.prompt) if ch.isdigit()]
    assert digits == list(range(ex.key_start, ex.key_start + 4))


def test_depth_spans_the_range_and_is_deterministic():
  a = R.make_examples(200, seed=3, length=40, key_digits=2)
  assert a == R.make_examples(200, seed=3, length=40, key_digits=2)
  assert a != R.make_examples(200, seed=4, length=40, key_digits=2)
  starts = {e.key_start - 4 for e in a}
  room = 40 - 5 - (4 + 2 + 1)  # filler characters
  assert starts == set(range(room + 1))  # every depth 0..room occurs in 200 draws


def test_training_batch_masks_the_answer_and_eos():
  tok = CharTokenizer()
  ex = R.make_examples(3, seed=0, length=30, key_digits=3)
  tokens, mask = R.training_batch(tok, ex)
  assert tokens.shape == (3, 1 + 30 + 3 + 1) and mask.shape == (3, 34)
  for b, e in enumerate(ex):
    assert tok.decode(tokens[b, 1:31]) == e.prompt
    targets = tokens[b, 1:][mask[b] == 1]
    assert tok.decode(targets[:-1]) == e.answer and targets[-1] == tok.eos_token_ids[0]
  assert mask.sum() == 3 * 4


def test_exact_match_and_errors():
  ex = R.make_examples(2, seed=1, length=20, key_digits=2)
  assert R.exact_match([ex[0].answer + "<eos>", "xx"], ex) == 0.5
  with pytest.raises(ValueError, match="completions"):
    R.exact_match(["1"], ex)
  with pytest.raises(ValueError, match="min_depth"):
    R.make_example(np.random.default_rng(0), length=12, key_digits=4)
  with pytest.raises(ValueError, match="key_digits"):
    R.make_example(np.random.default_rng(0), length=40, key_digits=0)
  with pytest.raises(ValueError, match="share prompt length"):
    R.training_batch(CharTokenizer(), R.make_examples(1, 0, length=20) +
                     R.make_examples(1, 0, length=21))
