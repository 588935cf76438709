"""Hostile CLI arguments: `tokenrl sample | export | plan` refuse bad flags with the flag named,
never silently change them, and bucket prompts up to the context, never past it."""

import os

import jax
import numpy as np
import pytest
import tokenizers
from absl import app, flags

from tokenrl import cli, models
from tokenrl.data.char_tokenizer import CHARS, CharTokenizer
from tokenrl.data.tokenizer import load_tokenizer
from tokenrl.rollout import prepare_prompts, sample

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIG = models.tiny("qwen2", vocab_size=58, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))


def _cli(*args):
  """Run `tokenrl <args>` in this process (absl flags reparsed); returns what main returns."""
  f = flags.FLAGS
  f.unparse_flags()
  argv = f(["tokenrl", *args])
  return cli.main(argv)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """A 64-token model saved with its (char) tokenizer, as `tokenrl export` writes it."""
  path = str(tmp_path_factory.mktemp("hf"))
  models.save_hf(path, CONFIG, models.init_params(CONFIG, jax.random.key(0)),
                 tokenizer=CharTokenizer())
  return path


@pytest.mark.parametrize("flag,message", [
    ("--max_new_tokens=0", "--max_new_tokens must be >= 1, got 0"),
    ("--top_k=-3", "--top_k must be >= 0 (0 = off), got -3"),
    ("--top_p=0", "--top_p must be in (0, 1]"),
    ("--num_samples=0", "--num_samples must be >= 1, got 0"),
    ("--temperature=-1", "--temperature must be >= 0"),
])
def test_sample_refuses_bad_flags(hf_folder, flag, message):
  with pytest.raises(app.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
    _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", flag)


def test_sample_fills_the_context_exactly(hf_folder, capsys):
  """57 characters + <bos> = 58 prompt tokens + 2 new = 60 <= 64: power-of-two bucketing (64)
  must not refuse it."""
  prompt = ("1+2=3 " * 10)[:57]
  _cli("sample", f"--model={hf_folder}", f"--prompt={prompt}", "--max_new_tokens=2")
  out = capsys.readouterr().out
  assert out.startswith(f"[0.0] {prompt}")


def test_sample_too_long_names_the_numbers(hf_folder):
  prompt = "1" * 62  # 63 tokens + 2 > 64
  with pytest.raises(app.UsageError, match=r"63 tokens \+ --max_new_tokens 2 = 65 > the model's "
                                           r"context of 64 tokens: lower --max_new_tokens to 1"):
    _cli("sample", f"--model={hf_folder}", f"--prompt={prompt}", "--max_new_tokens=2")


def test_hf_default_new_tokens_fit_a_small_context(hf_folder, capsys):
  # The default 128 would exceed the 64-token model: it is capped at 64 - 5 prompt tokens.
  assert cli.default_max_new_tokens(64, 5) == 59
  assert cli.default_max_new_tokens(4096, 5) == cli.HF_DEFAULT_NEW_TOKENS
  _cli("sample", f"--model={hf_folder}", "--prompt=1+2=")
  assert capsys.readouterr().out.startswith("[0.0] 1+2=")


def test_sampler_caps_the_bucket_at_the_context():
  tokens, mask = prepare_prompts([[5] * 57], 0, max_width=62)
  assert tokens.shape == (1, 62) and mask.sum() == 57  # bucket 64 capped at 64 - 2
  tokens, _ = prepare_prompts([[5] * 9], 0, max_width=62)
  assert tokens.shape == (1, 16)  # the cap never changes a bucket that fits
  params = models.init_params(CONFIG, jax.random.key(0))
  out = sample(params, [[5] * 57], config=CONFIG, rng=jax.random.key(1), max_new_tokens=7,
               temperature=0.0)
  assert out.tokens.shape == (1, 7) and out.prompt_tokens.shape == (1, 57)
  with pytest.raises(ValueError, match="top_k must be >= 0"):
    sample(params, [[5]], config=CONFIG, rng=jax.random.key(1), max_new_tokens=2, top_k=-3)


def test_exported_char_tokenizer_reads_back_identically(hf_folder):
  char = CharTokenizer()
  raw = tokenizers.Tokenizer.from_file(os.path.join(hf_folder, "tokenizer.json"))
  loaded = load_tokenizer(hf_folder)
  assert loaded.vocab_size == char.vocab_size
  assert (loaded.pad_id, loaded.bos_id, loaded.eos_token_ids) == (0, 1, [2])
  for text in [CHARS, "12+7=", " 3 - 4 = -1\n", "", "(8*9)/2?"]:
    ids = char.encode(text)
    assert raw.encode(text).ids == ids and loaded.encode(text) == ids
    assert loaded.encode(text, add_special_tokens=False) == char.encode(text, False)
    assert loaded.decode(ids) == char.decode(ids)
    assert loaded.decode(ids + [2], skip_special_tokens=True) == char.decode(ids + [2], True)


def test_export_writes_the_tokenizer_and_sample_reads_it(trained, tmp_path, capsys):
  workdir, _ = trained
  out = str(tmp_path / "export")
  _cli("export", f"--workdir={workdir}", f"--out={out}")
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))
  capsys.readouterr()
  _cli("sample", f"--model={out}", "--prompt=1+1=", "--max_new_tokens=3")
  from_export = capsys.readouterr().out
  _cli("sample", f"--model={workdir}", "--prompt=1+1=", "--max_new_tokens=3")
  from_workdir = capsys.readouterr().out
  assert from_export == from_workdir and from_export.startswith("[0.0] 1+1=")


def test_sample_workdir_max_new_tokens_zero_is_not_the_default(trained):
  workdir, _ = trained
  with pytest.raises(app.UsageError, match="--max_new_tokens must be >= 1, got 0"):
    _cli("sample", f"--model={workdir}", "--prompt=1+1=", "--max_new_tokens=0")


def test_plan_with_a_mesh_that_cannot_split_the_batch_exits_1(capsys):
  with pytest.raises(SystemExit) as e:
    _cli("plan", f"--config={ROOT}/configs/quickstart.py", "--devices=v5e-3")
  assert e.value.code == 1
  out = capsys.readouterr().out
  assert "not divisible by data·fsdp = 3" in out
  assert "cannot run: 2 problems listed above" in out and "\nfits (" not in out


def test_plan_that_runs_exits_0(capsys):
  _cli("plan", f"--config={ROOT}/configs/quickstart.py", "--devices=v5e-4")
  assert "\nfits (" in capsys.readouterr().out


def test_export_keeps_the_hf_tokenizer_files(tmp_path):
  src = str(tmp_path / "src")
  models.save_hf(src, CONFIG, models.init_params(CONFIG, jax.random.key(0)),
                 tokenizer=CharTokenizer())
  with open(os.path.join(src, "chat_template.jinja"), "w") as f:
    f.write("{{ messages[0]['content'] }}")
  tok = load_tokenizer(src)
  dst = str(tmp_path / "dst")
  models.save_hf(dst, CONFIG, models.init_params(CONFIG, jax.random.key(0)), tokenizer=tok)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    assert open(os.path.join(src, name)).read() == open(os.path.join(dst, name)).read()
  np.testing.assert_array_equal(load_tokenizer(dst).encode("1+1="), tok.encode("1+1="))


def test_sample_speculative_prints_the_same_greedy_text_and_its_acceptance(hf_folder, capsys):
  # Greedy speculative decoding is greedy decoding token for token, whatever the draft.
  _cli("sample", f"--model={hf_folder}", "--prompt=12+7=", "--max_new_tokens=6")
  plain = capsys.readouterr().out
  _cli("sample", f"--model={hf_folder}", "--prompt=12+7=", "--max_new_tokens=6",
       "--speculative=exact", "--draft=layers", "--draft_layers=1", "--num_draft_tokens=3")
  got = capsys.readouterr()
  assert got.out == plain
  assert "[exact] spec_acceptance=" in got.err


def test_sample_speculative_bad_draft_names_the_flag(hf_folder):
  with pytest.raises(app.UsageError, match=r"--draft='layers': LayerDraft num_layers must be an "
                                           r"int in \[1, \d+\]"):
    _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", "--speculative=exact",
         "--draft=layers", "--draft_layers=99")


def test_sample_with_a_control(hf_folder, capsys):
  # CyclicReflex with the section's defaults ('?' reflection, '#' end, A = 3, T = 100) samples
  # from an HF folder; a budget control without a head and control + speculative are named.
  _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", "--max_new_tokens=4")
  plain = capsys.readouterr().out
  _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", "--max_new_tokens=4",
       "--control=cyclic_reflex")
  assert capsys.readouterr().out.count("[0.0] 1+1=") == 1
  with pytest.raises(app.UsageError, match=r"sampler.control.head: budget guidance needs"):
    _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", "--control=budget", "--budget=8")
  with pytest.raises(app.UsageError, match=r"--control and --speculative cannot be combined"):
    _cli("sample", f"--model={hf_folder}", "--prompt=1+1=", "--control=cyclic_reflex",
         "--speculative=exact", "--draft=ngram")
  assert plain.startswith("[0.0] 1+1=")
