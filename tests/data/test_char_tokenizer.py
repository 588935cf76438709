"""CharTokenizer: fixed ids, round trips, errors."""
import numpy as np
import pytest

from tokenrl.data import char_tokenizer
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.tokenizer import Tokenizer, load_tokenizer


def test_ids_are_fixed():
  tok = CharTokenizer()
  # pad, bos, eos = 0, 1, 2; '0' is the first character (id 3), '+' follows the 10 digits.
  assert (tok.pad_id, tok.bos_id, tok.eos_token_ids) == (0, 1, [2])
  assert tok.encode("0", add_special_tokens=False) == [3]
  assert tok.encode("12+7=") == [1, 4, 5, 13, 10, 16]
  assert tok.vocab_size == 3 + len(char_tokenizer.CHARS) == 58
  assert 40 <= tok.vocab_size <= 70


def test_round_trip_and_specials():
  tok = CharTokenizer()
  text = "make 22 from 7 3 5=3*5+7\n(1-2)"
  ids = tok.encode(text)
  assert tok.decode(ids, skip_special_tokens=True) == text
  assert tok.decode([1] + ids[1:] + [2, 0, 0]) == "<bos>" + text + "<eos><pad><pad>"
  assert tok.decode(np.asarray(ids + [2]), skip_special_tokens=True) == text
  assert tok.decode_batch([[4], [5, 2]], skip_special_tokens=True) == ["1", "2"]
  assert tok.encode_batch(["1", "2"], add_special_tokens=False) == [[4], [5]]


def test_errors_name_character_and_position():
  tok = CharTokenizer()
  with pytest.raises(ValueError, match=r"'Q' at position 2"):
    tok.encode("12Q")
  with pytest.raises(ValueError, match=r"id 58 at position 1"):
    tok.decode([3, 58])
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "1+1="}])


def test_protocol_and_loader():
  tok = load_tokenizer("char")
  assert isinstance(tok, CharTokenizer) and isinstance(tok, Tokenizer)
  assert not tok.has_chat_template
  with pytest.raises(FileNotFoundError, match="no_such_folder"):
    load_tokenizer("/tmp/no_such_folder_tokenrl")
