"""HFTokenizer: parity with transformers' AutoTokenizer on tiny local folders, plus loading rules.

The folders are built here (a 320-token BPE trained on four sentences), never downloaded.
"""
import json

import jinja2
import pytest

from tests.data import tokenizer_fixtures as fx
from tokenrl.data.hf_tokenizer import HFTokenizer
from tokenrl.data.tokenizer import Tokenizer, load_tokenizer

TEXTS = ["hello world", "What is 12+7?<|im_end|> tail", " spaces  and\nnewlines ",
         "<|begin_of_text|>x<|eot_id|>", "héllo ünïcode 🙂", "", "Natalia sold 48 clips.",
         "call <|tool|> now"]
CHATS = [
    [{"role": "user", "content": "What is 12+7?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "sort 3 1 2"}],
]


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory):
  return fx.build_legacy_style(tmp_path_factory.mktemp("legacy"))


def test_missing_files_raise_with_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    HFTokenizer(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
    HFTokenizer(tmp_path)


def test_legacy_folder_special_tokens_and_templates(legacy_dir):
  tok = load_tokenizer(str(legacy_dir))
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
  # eos from the AddedToken dict, pad from special_tokens_map.json, no bos in the folder.
  assert tok.eos_token_ids == [im_end] and tok.pad_id == eot and tok.bos_id is None
  assert tok.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
  assert sorted(tok.chat_template) == ["default", "plain"]
  msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
  assert tok.apply_chat_template(msgs, tokenize=False, chat_template="plain") == "a\nb\n"
  default = tok.apply_chat_template(msgs[:1], tokenize=False)
  assert default.endswith("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n")
  ids = tok.apply_chat_template(msgs[:1])
  assert ids == tok.encode(default, add_special_tokens=False)
  assert tok.decode(ids) == default
  assert "<|im_start|>" not in tok.decode(ids, skip_special_tokens=True)


def test_generation_config_adds_stop_ids(tmp_path, legacy_dir):
  folder = tmp_path / "gen"
  folder.mkdir()
  for f in legacy_dir.iterdir():
    (folder / f.name).write_bytes(f.read_bytes())
  (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2, 0]}))
  tok = HFTokenizer(folder)
  assert tok.eos_token_ids == [2, 0]  # config eos (<|im_end|> = 2) first, de-duplicated.


def test_template_sandbox_and_raise_exception(tmp_path, legacy_dir):
  folder = tmp_path / "t"
  folder.mkdir()
  (folder / "tokenizer.json").write_bytes((legacy_dir / "tokenizer.json").read_bytes())
  (folder / "chat_template.jinja").write_text(
      "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
      "{{ messages[0]['content'].__class__.__mro__ }}")
  tok = HFTokenizer(folder)
  assert tok.chat_template is not None and tok.pad_id == 0  # No pad/eos anywhere: 0.
  with pytest.raises(jinja2.TemplateError, match="no tools"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}])
  with pytest.raises(jinja2.exceptions.SecurityError):
    tok.apply_chat_template([{"role": "user", "content": "x"}])
  with pytest.raises(ValueError, match="empty"):
    tok.apply_chat_template([])


def test_no_chat_template_raises(tmp_path, legacy_dir):
  folder = tmp_path / "n"
  folder.mkdir()
  (folder / "tokenizer.json").write_bytes((legacy_dir / "tokenizer.json").read_bytes())
  tok = HFTokenizer(folder)
  assert not tok.has_chat_template
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parity
@pytest.mark.parametrize("builder", ["qwen", "llama3", "legacy"])
def test_matches_transformers(tmp_path, builder):
  transformers = pytest.importorskip("transformers")
  build = {"qwen": fx.build_qwen_style, "llama3": fx.build_llama3_style,
           "legacy": fx.build_legacy_style}[builder]
  folder = build(tmp_path / builder)
  ref = transformers.AutoTokenizer.from_pretrained(str(folder))
  ours = HFTokenizer(folder)
  assert ours.vocab_size == len(ref)
  assert ours.bos_id == ref.bos_token_id
  assert ours.eos_token_ids[0] == ref.eos_token_id
  if ref.pad_token_id is not None:
    assert ours.pad_id == ref.pad_token_id
  for text in TEXTS:
    for special in (True, False):
      ids = ref.encode(text, add_special_tokens=special)
      assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
      for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
            ids, skip_special_tokens=skip), (text, skip)
  assert ours.encode_batch(TEXTS) == [ref.encode(t) for t in TEXTS]
  for chat in CHATS:
    for gen in (True, False):
      text = ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
      assert ours.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == text
      ids = ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True,
                                    return_dict=False)
      assert ours.apply_chat_template(chat, add_generation_prompt=gen) == ids
  if builder == "llama3":
    # Template kwargs reach the template; the tokenizer.json post-processor adds bos.
    kw = dict(add_generation_prompt=True, tokenize=False, date_string="1 Jan 2025")
    assert ours.apply_chat_template(CHATS[0], **kw) == ref.apply_chat_template(CHATS[0], **kw)
    assert ours.encode("hi")[0] == ours.bos_id
