"""`CharTokenizer`: a fixed character vocabulary for the embedded tasks (no files, V = 58).

Ids: 0 = `<pad>`, 1 = `<bos>`, 2 = `<eos>`, then one id per character of `CHARS` in order
(digits, the operators `+-*=()`, space, `a`-`z`, punctuation, newline). The order is part of
the checkpoint format of any model trained with it: append new characters, never reorder.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Everything the embedded task prompts/answers use, plus a little punctuation for free text.
CHARS = "0123456789+-*=() abcdefghijklmnopqrstuvwxyz.,:;?!#/<>_\n"


class CharTokenizer:
  """One id per character; unknown characters are an error, never an <unk> id.

  `encode(text, add_special_tokens=True)` = [bos] + [id(c) for c in text] (no eos: prompts end
  where the model starts writing; the model learns to emit eos itself).
  """

  def __init__(self) -> None:
    self._id_to_token = list(SPECIAL_TOKENS) + list(CHARS)
    self._char_to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(CHARS)}

  def __repr__(self) -> str:
    return f"CharTokenizer(vocab_size={self.vocab_size})"

  @property
  def vocab_size(self) -> int:
    return len(self._id_to_token)

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int | None:
    return BOS_ID

  @property
  def eos_token_ids(self) -> list[int]:
    return [EOS_ID]

  @property
  def has_chat_template(self) -> bool:
    return False

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Returns [bos] + one id per character (bos only if `add_special_tokens`).

    Raises:
      ValueError: `text` holds a character outside the vocabulary (named, with its position).
    """
    if not isinstance(text, str):
      raise ValueError(f"CharTokenizer.encode: text must be str, got {type(text).__name__}")
    ids = [BOS_ID] if add_special_tokens else []
    for pos, c in enumerate(text):
      i = self._char_to_id.get(c)
      if i is None:
        raise ValueError(
            f"CharTokenizer.encode: character {c!r} at position {pos} of {text!r} is not in the "
            f"vocabulary {CHARS!r}")
      ids.append(i)
    return ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """Returns the text of `ids`; special ids render as `<pad>`/`<bos>`/`<eos>` unless skipped.

    Raises:
      ValueError: an id is outside [0, vocab_size).
    """
    out = []
    for pos, i in enumerate(np.asarray(ids, dtype=np.int64).reshape(-1).tolist()):
      if not 0 <= i < self.vocab_size:
        raise ValueError(
            f"CharTokenizer.decode: id {i} at position {pos} is outside [0, {self.vocab_size})")
      if i < len(SPECIAL_TOKENS) and skip_special_tokens:
        continue
      out.append(self._id_to_token[i])
    return "".join(out)

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = True) -> list[list[int]]:
    return [self.encode(t, add_special_tokens) for t in texts]

  def decode_batch(self, ids: Sequence[Sequence[int]],
                   skip_special_tokens: bool = False) -> list[str]:
    return [self.decode(row, skip_special_tokens) for row in ids]

  def apply_chat_template(self, messages: Sequence[dict[str, Any]], *,
                          add_generation_prompt: bool = True, tokenize: bool = True,
                          **template_kwargs: Any) -> list[int] | str:
    """Always raises: the character tokenizer has no chat format (use raw prompts)."""
    del messages, add_generation_prompt, tokenize, template_kwargs
    raise ValueError(
        "CharTokenizer has no chat template: tokenize raw prompt strings "
        "(tokenize_prompts(..., use_chat_template=False))")
