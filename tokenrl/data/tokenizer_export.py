"""Write a run's tokenizer as Hugging Face tokenizer files, next to an exported model.

`save_tokenizer(folder, tokenizer)`:
  * `HFTokenizer`: its own files are copied unchanged (tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, chat templates), so the folder reads back exactly as the original.
  * `CharTokenizer`: a tokenizer.json is built that `tokenizers.Tokenizer.from_file`,
    `tokenrl.data.tokenizer.load_tokenizer` and `transformers.AutoTokenizer` read back with the
    same ids: a BPE model with one entry per character and no merges (so every character is one
    token; no pre-tokenizer, no normalizer), the specials <pad>/<bos>/<eos> at ids 0/1/2 as
    special added tokens, a post-processor that prepends <bos> (CharTokenizer.encode's
    add_special_tokens=True), and a Fuse decoder (tokens joined without spaces). Plus a
    tokenizer_config.json naming bos/eos/pad.
    Two differences remain, both outside what CharTokenizer accepts: a character outside its
    vocabulary is dropped instead of raising, and the literal text "<eos>" in a prompt becomes
    the special token (CharTokenizer encodes it as five characters).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from tokenrl.data import char_tokenizer
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.hf_tokenizer import HFTokenizer

# Files of an HF tokenizer folder that describe the tokenizer (not the model).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "chat_template.jinja")
HF_TOKENIZER_DIRS = ("additional_chat_templates",)


def char_tokenizer_json() -> dict[str, Any]:
  """The tokenizer.json (as a dict) of `CharTokenizer` (see the module docstring)."""
  specials = list(char_tokenizer.SPECIAL_TOKENS)
  tokens = specials + list(char_tokenizer.CHARS)
  return {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": [
          {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True} for i, t in enumerate(specials)],
      "normalizer": None,
      "pre_tokenizer": None,
      "post_processor": {
          "type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}},
                   {"Sequence": {"id": "B", "type_id": 1}}],
          "special_tokens": {"<bos>": {"id": "<bos>", "ids": [char_tokenizer.BOS_ID],
                                       "tokens": ["<bos>"]}},
      },
      "decoder": {"type": "Fuse"},
      "model": {"type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
  }


def save_tokenizer(folder: str, tokenizer: Any) -> None:
  """Write `tokenizer`'s files into `folder` (created if needed).

  Raises:
    ValueError: a tokenizer type with no file form (named).
  """
  os.makedirs(folder, exist_ok=True)
  if isinstance(tokenizer, HFTokenizer):
    src = str(tokenizer.path)
    if os.path.abspath(src) == os.path.abspath(folder):
      return
    for name in HF_TOKENIZER_FILES:
      if os.path.isfile(os.path.join(src, name)):
        shutil.copyfile(os.path.join(src, name), os.path.join(folder, name))
    for name in HF_TOKENIZER_DIRS:
      if os.path.isdir(os.path.join(src, name)):
        shutil.copytree(os.path.join(src, name), os.path.join(folder, name), dirs_exist_ok=True)
    return
  if isinstance(tokenizer, CharTokenizer):
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
      json.dump(char_tokenizer_json(), f, indent=1, ensure_ascii=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
              "eos_token": "<eos>", "pad_token": "<pad>", "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"]}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
    return
  raise ValueError(f"save_tokenizer: cannot write a {type(tokenizer).__name__} as tokenizer files "
                   "(CharTokenizer and HFTokenizer can be written)")
