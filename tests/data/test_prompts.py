"""left_pad / bucket_length / tokenize_prompts / decode_completions."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.data import tokenizer_fixtures as fx
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.hf_tokenizer import HFTokenizer
from tokenrl.data.prompts import bucket_length, decode_completions, left_pad, tokenize_prompts


def test_left_pad_hand_values():
  tokens, lengths = left_pad([[5, 6, 7], [8]], pad_id=0, bucket_sizes=[2, 4, 8])
  np.testing.assert_array_equal(tokens, [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(lengths, [3, 1])
  assert tokens.dtype == np.int32 and lengths.dtype == np.int32


def test_bucket_rules():
  assert bucket_length(17) == 32 and bucket_length(3) == 16 and bucket_length(16) == 16
  assert bucket_length(3, min_bucket=1) == 4
  assert bucket_length(17, multiple=16) == 32 and bucket_length(16, multiple=16) == 16
  assert bucket_length(5, bucket_sizes=[64, 8]) == 8
  with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
    bucket_length(9, bucket_sizes=[4, 8])
  with pytest.raises(ValueError, match="not both"):
    bucket_length(9, bucket_sizes=[16], multiple=16)


def test_left_pad_never_truncates():
  with pytest.raises(ValueError, match=r"prompt 1 has 5 tokens > max_length=4"):
    left_pad([[1], [1, 2, 3, 4, 5]], 0, max_length=4)
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    left_pad([[], [1]], 0)
  with pytest.raises(ValueError, match="seqs is empty"):
    left_pad([], 0)
  tokens, _ = left_pad([[1, 2, 3]], 9, max_length=10)  # Power-of-two bucket 16 capped at 10.
  assert tokens.shape == (1, 10)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 99), min_size=1, max_size=40), min_size=1, max_size=6))
def test_left_pad_invariants(seqs):
  tokens, lengths = left_pad(seqs, pad_id=0, multiple=16)
  p = tokens.shape[1]
  assert p % 16 == 0 and p >= max(map(len, seqs)) and p - 16 < max(map(len, seqs))
  for b, s in enumerate(seqs):
    assert tokens[b, p - len(s):].tolist() == s and not tokens[b, :p - len(s)].any()
    assert lengths[b] == len(s)


def test_tokenize_prompts_char():
  tok = CharTokenizer()
  assert tokenize_prompts(tok, ["1+1="]) == [[1, 4, 13, 4, 16]]
  assert tokenize_prompts(tok, ["1+1="], add_special_tokens=False) == [[4, 13, 4, 16]]
  with pytest.raises(ValueError, match="no chat template"):
    tokenize_prompts(tok, [[{"role": "user", "content": "1"}]])
  with pytest.raises(ValueError, match=r"prompts\[0\] must be a str"):
    tokenize_prompts(tok, [3])


def test_tokenize_prompts_chat(tmp_path):
  tok = HFTokenizer(fx.build_legacy_style(tmp_path / "t"))
  [ids] = tokenize_prompts(tok, ["hi"], system_prompt="Be brief.")
  assert ids == tok.apply_chat_template(
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
  assert tokenize_prompts(tok, ["hi"], use_chat_template=False) == [tok.encode("hi")]
  msgs = [{"role": "user", "content": "hi"}]
  assert tokenize_prompts(tok, [msgs]) == [tok.apply_chat_template(msgs)]


def test_decode_completions_cuts_at_eos_and_mask():
  tok = CharTokenizer()
  one, two, eos = tok.encode("12", add_special_tokens=False) + [2]
  tokens = np.asarray([[one, two, eos, one, 0],    # cut at eos
                       [one, two, one, two, one],  # no eos, mask 0 from t = 3
                       [eos, one, one, one, one]])  # empty completion
  mask = np.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  assert decode_completions(tok, tokens, mask) == ["12", "121", ""]
  assert decode_completions(tok, tokens) == ["12", "12121", ""]
  with pytest.raises(ValueError, match=r"mask shape \(1, 5\)"):
    decode_completions(tok, tokens, mask[:1])
