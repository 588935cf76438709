"""`HFTokenizer`: a local Hugging Face tokenizer folder, without `transformers`.

Reads, as `transformers` (v4.4x-v5) does for a fast tokenizer:
  * `tokenizer.json` through the `tokenizers` library (normalizer, pre-tokenizer, model,
    post-processor, decoder, added tokens);
  * `tokenizer_config.json`: `bos_token`, `eos_token`, `pad_token`, `unk_token` (a string or an
    AddedToken dict with 'content'), `added_tokens_decoder`, `chat_template` (a string, or a list
    of {'name', 'template'}), `clean_up_tokenization_spaces`;
  * `special_tokens_map.json` (legacy folders: used when the config has no
    `added_tokens_decoder`, and then it overrides the config's token strings, as transformers);
  * `chat_template.jinja` and `additional_chat_templates/<name>.jinja` (they take priority over
    the config's `chat_template`; several templates form a dict with the file one as 'default');
  * `generation_config.json`: `eos_token_id` (int or list) joins `eos_token_ids` (these are the
    ids generation stops on), `pad_token_id` is a fallback for `pad_id`.

Token ids equal `transformers.AutoTokenizer.from_pretrained(folder)` for tokenizers of the
generic class (`PreTrainedTokenizerFast`/`TokenizersBackend`, e.g. Llama 3, Qwen 2/3);
tests/data/test_tokenizer_hf.py checks encode / decode / apply_chat_template against it.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import tokenizers
from tokenizers import processors

from tokenrl.data import chat_template as chat_template_lib

# Named special tokens, visible to templates as variables (transformers' SPECIAL_TOKENS_ATTRIBUTES).
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_CHAT_TEMPLATE_DIR = "additional_chat_templates"
# transformers' clean_up_tokenization: undo the spaces a WordPiece decoder puts before punctuation.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: malformed JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


def _token_content(value: Any) -> str | None:
  """'<s>' or {'content': '<s>', ...} (serialized AddedToken) -> '<s>'; None stays None."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"special token must be a string or a dict with 'content', got {value!r}")


def _added_token(value: Any, *, special: bool) -> tokenizers.AddedToken:
  if isinstance(value, Mapping):
    kw = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
          if k in value}
    kw.setdefault("special", special)
    kw.setdefault("normalized", not kw["special"])
    return tokenizers.AddedToken(value["content"], **kw)
  return tokenizers.AddedToken(value, special=special, normalized=not special)


class HFTokenizer:
  """A Hugging Face tokenizer folder behind the `Tokenizer` protocol.

  Attributes (see `Tokenizer`): vocab_size (added tokens included, = len(transformers tokenizer)),
  pad_id (pad token, else generation_config pad_token_id, else the first eos id, else 0),
  bos_id (None if the folder has no bos token), eos_token_ids (config eos first, then
  generation_config eos ids, de-duplicated), special_tokens ({'bos_token': '<s>', ...}),
  chat_template (str, dict name -> str, or None).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    if not self.path.is_dir():
      raise FileNotFoundError(f"HFTokenizer: tokenizer folder {str(self.path)!r} does not exist")
    tok_file = self.path / "tokenizer.json"
    if not tok_file.is_file():
      raise FileNotFoundError(
          f"HFTokenizer: {str(tok_file)!r} not found (only tokenizer.json folders are supported; "
          "convert a sentencepiece-only folder once with transformers' save_pretrained)")
    self._tok = tokenizers.Tokenizer.from_file(str(tok_file))
    # We pad and truncate ourselves (left_pad); the raw ids must not be altered by file settings.
    self._tok.no_truncation()
    self._tok.no_padding()

    tok_json = _read_json(self.path / "tokenizer_config.json")
    special_map = _read_json(self.path / "special_tokens_map.json")
    gen_json = _read_json(self.path / "generation_config.json")

    raw_special = {k: tok_json.get(k) for k in _NAMED_SPECIAL}
    if "added_tokens_decoder" not in tok_json:
      # Legacy folders: special_tokens_map.json overrides tokenizer_config.json.
      for k in _NAMED_SPECIAL:
        if special_map.get(k) is not None:
          raw_special[k] = special_map[k]
    self.special_tokens: dict[str, str] = {
        k: c for k, c in ((k, _token_content(v)) for k, v in raw_special.items()) if c is not None}

    # As transformers at load time: added tokens listed in the config but missing from
    # tokenizer.json are appended (ids in config order), then the extra special tokens
    # (`extra_special_tokens` / legacy `additional_special_tokens`); then every named special
    # token is registered as a special added token (so it is matched whole and skipped by
    # decode(skip_special_tokens=True)); an existing id is reused, never renumbered.
    present = {t.content for t in self._tok.get_added_tokens_decoder().values()}
    decoder = {v["content"]: v for _, v in sorted(
        (tok_json.get("added_tokens_decoder") or {}).items(), key=lambda kv: int(kv[0]))
        if isinstance(v, Mapping) and isinstance(v.get("content"), str)}
    missing = [_added_token(v, special=bool(v.get("special", False)))
               for c, v in decoder.items() if c not in present]
    if missing:
      self._tok.add_tokens(missing)
    extra = tok_json.get("extra_special_tokens") or tok_json.get("additional_special_tokens") or (
        special_map.get("additional_special_tokens") if "added_tokens_decoder" not in tok_json
        else None) or []
    extra = list(extra.values()) if isinstance(extra, Mapping) else list(extra)
    present = {t.content for t in self._tok.get_added_tokens_decoder().values()}
    extra = [_added_token(x, special=True) for x in extra if _token_content(x) not in present]
    if extra:
      self._tok.add_special_tokens(extra)
    named = []
    for k in _NAMED_SPECIAL:
      if k in self.special_tokens:
        spec = decoder.get(self.special_tokens[k], raw_special[k])
        if isinstance(spec, Mapping):
          spec = {**spec, "special": True}
        named.append(_added_token(spec, special=True))
    if named:
      self._tok.add_special_tokens(named)
    if self._tok.post_processor is None:
      # transformers installs an identity TemplateProcessing then (no bos/eos added).
      self._tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")

    self._clean_up_spaces = bool(tok_json.get("clean_up_tokenization_spaces", False)) and (
        type(self._tok.model).__name__ != "BPE")  # transformers skips it for BPE models.

    self._bos_id = self._id_of("bos_token")
    eos = []
    if (eos_id := self._id_of("eos_token")) is not None:
      eos.append(eos_id)
    gen_eos = gen_json.get("eos_token_id")
    for i in ([gen_eos] if isinstance(gen_eos, int) else (gen_eos or [])):
      if int(i) not in eos:
        eos.append(int(i))
    self._eos_ids = eos
    pad = self._id_of("pad_token")
    if pad is None and isinstance(gen_json.get("pad_token_id"), int):
      pad = gen_json["pad_token_id"]
    if pad is None:
      pad = eos[0] if eos else 0
    self._pad_id = int(pad)

    self.chat_template = self._read_chat_templates(tok_json)

  def _id_of(self, name: str) -> int | None:
    content = self.special_tokens.get(name)
    return None if content is None else self._tok.token_to_id(content)

  def _read_chat_templates(self, tok_json: Mapping[str, Any]) -> str | dict[str, str] | None:
    templates: dict[str, str] = {}
    if (f := self.path / _CHAT_TEMPLATE_FILE).is_file():
      templates["default"] = f.read_text(encoding="utf-8")
    if (d := self.path / _CHAT_TEMPLATE_DIR).is_dir():
      for f in sorted(d.glob("*.jinja")):
        templates[f.stem] = f.read_text(encoding="utf-8")
    if templates:  # Template files take priority over the tokenizer_config.json entry.
      return templates["default"] if list(templates) == ["default"] else templates
    value = tok_json.get("chat_template")
    if isinstance(value, list):
      return {t["name"]: t["template"] for t in value}
    if value is not None and not isinstance(value, str):
      raise ValueError(f"{self.path / 'tokenizer_config.json'}: chat_template must be a string or "
                       f"a list of {{name, template}}, got {type(value).__name__}")
    return value

  def __repr__(self) -> str:
    return (f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, "
            f"eos_token_ids={self.eos_token_ids}, pad_id={self.pad_id})")

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_token_ids(self) -> list[int]:
    return list(self._eos_ids)

  @property
  def has_chat_template(self) -> bool:
    return self.chat_template is not None

  @property
  def backend(self) -> tokenizers.Tokenizer:
    """The underlying `tokenizers.Tokenizer` (for offsets, token strings, ...)."""
    return self._tok

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Ids of `text`; `add_special_tokens` applies tokenizer.json's post-processor (e.g. bos)."""
    if not isinstance(text, str):
      raise ValueError(f"HFTokenizer.encode: text must be str, got {type(text).__name__}")
    return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: Sequence[str],
                   add_special_tokens: bool = True) -> list[list[int]]:
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise ValueError(
            f"HFTokenizer.encode_batch: texts[{i}] must be str, got {type(t).__name__}")
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    return [e.ids for e in encodings]

  def _clean(self, text: str) -> str:
    if self._clean_up_spaces:
      for a, b in _CLEANUP:
        text = text.replace(a, b)
    return text

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
    return self._clean(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))

  def decode_batch(self, ids: Sequence[Sequence[int]],
                   skip_special_tokens: bool = False) -> list[str]:
    rows = [np.asarray(r, dtype=np.int64).reshape(-1).tolist() for r in ids]
    return [self._clean(t) for t in
            self._tok.decode_batch(rows, skip_special_tokens=skip_special_tokens)]

  def get_chat_template(self, name: str | None = None) -> str:
    """The template text: `name` picks one of several (or is itself a template), else default."""
    t = self.chat_template
    if isinstance(t, dict):
      if name is not None and name in t:
        return t[name]
      if name is None:
        if "default" not in t:
          raise ValueError(f"{self.path}: several chat templates {sorted(t)} and no 'default'; "
                           "pass chat_template=<name>")
        return t["default"]
      return name
    if name is not None:
      return name
    if t is None:
      raise ValueError(f"{self.path}: the tokenizer has no chat template "
                       "(no chat_template in tokenizer_config.json, no chat_template.jinja)")
    return t

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                          add_generation_prompt: bool = True, tokenize: bool = True,
                          chat_template: str | None = None,
                          **template_kwargs: Any) -> list[int] | str:
    """Renders `messages` with the chat template; ids (tokenize=True) or text.

    As transformers: the rendered text is encoded with add_special_tokens=False (the template
    writes bos itself), the template sees `bos_token`, `eos_token`, ... and `template_kwargs`
    (e.g. `enable_thinking=False`).

    Args:
      messages: [{'role': 'system'|'user'|'assistant', 'content': str}, ...].
      add_generation_prompt: end with the assistant header, so the model writes the answer.
      tokenize: return ids (list[int]) instead of the text.
      chat_template: name of one of several templates, or a template string.
    """
    text = chat_template_lib.render_chat_template(
        self.get_chat_template(chat_template), messages,
        add_generation_prompt=add_generation_prompt, special_tokens=self.special_tokens,
        **template_kwargs)
    return self.encode(text, add_special_tokens=False) if tokenize else text
