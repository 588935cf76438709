"""Tiny local tokenizer folders for the HF tokenizer tests (no download).

Each builder trains a ~300-token byte-level BPE on a few sentences with the `tokenizers` library
and writes a folder in one of the layouts met on the Hub.
"""
import json
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

CORPUS = [
    "hello world, what is 12+7? The answer is 19.",
    "Sort the digits 3 1 2 and give 1 2 3.",
    "Natalia sold clips to 48 of her friends in April.",
    "You are a helpful assistant. Think step by step.",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Today Date: ' + date_string + '\n\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}\n"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['user', 'assistant'] %}"
    "{{- raise_exception('Only user and assistant roles are supported!') }}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}\n")


def _train_bpe(special_tokens):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def build_qwen_style(path: pathlib.Path) -> pathlib.Path:
  """ChatML template in chat_template.jinja (transformers v5 layout), no bos, eos <|im_end|>."""
  from transformers import PreTrainedTokenizerFast
  tok = _train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
  hf.chat_template = CHATML_TEMPLATE
  hf.save_pretrained(str(path))
  (path / "generation_config.json").write_text(json.dumps(
      {"eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
       "pad_token_id": tok.token_to_id("<|endoftext|>")}))
  return path


def build_llama3_style(path: pathlib.Path) -> pathlib.Path:
  """Bos added by tokenizer.json's post-processor, Llama-3 template, no pad token."""
  from transformers import PreTrainedTokenizerFast
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"]
  tok = _train_bpe(specials)
  bos = tok.token_to_id("<|begin_of_text|>")
  tok.post_processor = processors.TemplateProcessing(
      single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
      special_tokens=[("<|begin_of_text|>", bos)])
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                               eos_token="<|eot_id|>")
  hf.chat_template = LLAMA3_TEMPLATE
  hf.save_pretrained(str(path))
  (path / "generation_config.json").write_text(json.dumps(
      {"bos_token_id": bos,
       "eos_token_id": [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]}))
  return path


def build_legacy_style(path: pathlib.Path) -> pathlib.Path:
  """Hand-written transformers-4.x layout: templates as a named list inside
  tokenizer_config.json, tokens as AddedToken dicts, special_tokens_map.json, no post-processor."""
  path.mkdir(parents=True, exist_ok=True)
  tok = _train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
  tok.save(str(path / "tokenizer.json"))
  added = {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
           "single_word": False, "special": True}
  (path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast",
      "eos_token": dict(added, __type="AddedToken"),
      "chat_template": [
          {"name": "default", "template": CHATML_TEMPLATE},
          {"name": "plain", "template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"},
      ],
      "additional_special_tokens": ["<|im_start|>", "<|tool|>"],  # <|tool|> is new: appended
      "clean_up_tokenization_spaces": False,
      "model_max_length": 4096,
  }))
  (path / "special_tokens_map.json").write_text(json.dumps(
      {"eos_token": added, "pad_token": "<|endoftext|>"}))
  return path
