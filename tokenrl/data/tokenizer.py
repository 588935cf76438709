"""The `Tokenizer` protocol every tokenizer in tokenrl follows, and `load_tokenizer`.

Two implementations:
  * `CharTokenizer` (char_tokenizer.py): a fixed ~55-symbol character vocabulary for the embedded
    tasks, no files, so tiny models stay cheap (V ~ 55).
  * `HFTokenizer` (hf_tokenizer.py): a local Hugging Face folder (`tokenizer.json` through the
    `tokenizers` library, special tokens and chat templates as `transformers` reads them).

The rollout code only needs `encode`, `decode`, `pad_id`, `eos_token_ids` and (for chat models)
`apply_chat_template`; everything else is convenience.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, Sequence, runtime_checkable

Message = dict[str, Any]


@runtime_checkable
class Tokenizer(Protocol):
  """What the train loop, the sampler and the rewards may rely on.

  Attributes:
    vocab_size: number of ids the tokenizer can produce, special/added tokens included (the
      model's embedding must have at least this many rows, V >= vocab_size).
    pad_id: id used for left padding of prompts (its logits are never trained: it is masked).
    bos_id: id of the beginning-of-sequence token, or None if the tokenizer has none.
    eos_token_ids: every id that ends a completion (several are common: `<|im_end|>` and
      `<|endoftext|>` for Qwen, `<|eot_id|>` and `<|end_of_text|>` for Llama 3). Non-empty list
      order: the tokenizer's own eos first.
    has_chat_template: whether `apply_chat_template` can be used.
  """

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def bos_id(self) -> int | None: ...

  @property
  def eos_token_ids(self) -> list[int]: ...

  @property
  def has_chat_template(self) -> bool: ...

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = True) -> list[list[int]]: ...

  def decode_batch(self, ids: Sequence[Sequence[int]],
                   skip_special_tokens: bool = False) -> list[str]: ...

  def apply_chat_template(self, messages: Sequence[Message], *,
                          add_generation_prompt: bool = True, tokenize: bool = True,
                          **template_kwargs: Any) -> list[int] | str: ...


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer named by `spec`.

  Args:
    spec: 'char' for the built-in `CharTokenizer`, otherwise the path of a local Hugging Face
      folder holding `tokenizer.json` (and usually `tokenizer_config.json`).

  Raises:
    FileNotFoundError: the folder or its `tokenizer.json` does not exist (the path is named).
  """
  # Imported here so that `tokenizer.py` stays importable without the `tokenizers`/jinja2 deps.
  from tokenrl.data.char_tokenizer import CharTokenizer
  from tokenrl.data.hf_tokenizer import HFTokenizer
  if not isinstance(spec, (str, os.PathLike)):
    raise ValueError(f"load_tokenizer: spec must be 'char' or a folder path, got {spec!r}")
  if str(spec) == "char":
    return CharTokenizer()
  return HFTokenizer(spec)
