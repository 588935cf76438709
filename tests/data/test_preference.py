"""Preference pairs: JSONL reading, chat rendering, the embedded near-miss task, batch layout."""

import json

import numpy as np
import pytest

from tests.data import tokenizer_fixtures as fx
from tokenrl.data import rewards, tasks
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.pipeline import make_dataset
from tokenrl.data.preference import (completion_sft_batch, encode_pair, make_preference_pairs,
                                     near_miss, near_miss_candidates, preference_batch,
                                     read_preference_jsonl)

TOK = CharTokenizer()


def _write(path, lines):
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return path


def test_read_jsonl_string_and_chat_pairs(tmp_path):
  chat = {"prompt": [{"role": "user", "content": "2+3?"}],
          "chosen": [{"role": "assistant", "content": "5"}],
          "rejected": [{"role": "assistant", "content": "6"}]}
  path = _write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3",
                                        "answer": 2, "src": "x"}, "", chat])
  pairs = read_preference_jsonl(path)
  assert len(pairs) == 2 and pairs[0]["answer"] == "2" and pairs[0]["src"] == "x"
  assert pairs[1] == chat


@pytest.mark.parametrize("line, msg", [
    ("{bad", "malformed JSON"),
    ('{"prompt": "a", "chosen": "b"}', "missing key"),
    ('{"prompt": 3, "chosen": "b", "rejected": "c"}', "'prompt' must be"),
    ('{"prompt": "a", "chosen": 1, "rejected": "c"}', "'chosen' must be"),
    ('{"prompt": "a", "chosen": [{"role": "assistant"}], "rejected": [{"role": "a", "content": "c"}]}',
     "'chosen'\\[0\\]\\['content'\\]"),
    ('{"prompt": "a", "chosen": "b", "rejected": [{"role": "a", "content": "c"}]}', "both"),
])
def test_read_jsonl_errors_name_the_line(tmp_path, line, msg):
  path = _write(tmp_path / "p.jsonl", ['{"prompt": "a", "chosen": "b", "rejected": "c"}', line])
  with pytest.raises(ValueError, match=f"p.jsonl:2: .*{msg}"):
    read_preference_jsonl(path)


def test_near_miss_candidates():
  c = near_miss_candidates("19")
  assert c[:2] == ["20", "18"]                       # numeric off-by-one first
  assert {"29", "10", "91"} <= set(c) and "19" not in c and "09" not in c   # no new leading 0
  assert near_miss_candidates("0") == ["1", "9"]
  assert "0012" not in near_miss_candidates("0012") and "0102" in near_miss_candidates("0012")
  assert "3-5+7" in near_miss_candidates("3*5+7")


def test_embedded_pairs_are_verified_and_deterministic():
  for name in ("arith", "sort", "countdown"):
    task = tasks.get_task(name)
    exs = task.make_examples("train", 50, 0, tiers=task.default_tiers)
    pairs = make_preference_pairs(exs, task.reward_fn, seed=3)
    for p in pairs:
      assert task.reward_fn(p["chosen"], p) == 1.0 and task.reward_fn(p["rejected"], p) < 1.0
    assert pairs == make_preference_pairs(exs, task.reward_fn, seed=3)
    assert make_preference_pairs(exs[::-1], task.reward_fn, seed=3) == pairs[::-1]
  with pytest.raises(ValueError, match="no wrong"):
    near_miss({"prompt": "x", "answer": ""}, rewards.exact_answer_reward, 0)


def test_batch_layout_char_tokenizer():
  pairs = [{"prompt": "12+7=", "chosen": "19", "rejected": "18"},
           {"prompt": "1+1=", "chosen": "2", "rejected": "12"}]
  batch, P = preference_batch(TOK, pairs)
  assert P == 16 and batch["tokens"].shape == (2, 2, 24) and batch["mask"].shape == (2, 2, 8)
  enc = lambda s: TOK.encode(s, add_special_tokens=False)
  eos = TOK.eos_token_ids[0]
  np.testing.assert_array_equal(batch["tokens"][0, 0, P - 6:P], TOK.encode("12+7="))
  np.testing.assert_array_equal(batch["tokens"][0, 1, P:P + 3], enc("18") + [eos])
  np.testing.assert_array_equal(batch["tokens"][1, 1, P:P + 4], enc("12") + [eos] + [TOK.pad_id])
  np.testing.assert_array_equal(batch["mask"][1], [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["segment_ids"][1, 0], [0] * 11 + [1] * 13)
  sft = completion_sft_batch(batch, P, 0)
  assert sft["tokens"].shape == (2, 24)
  np.testing.assert_array_equal(sft["loss_mask"][0], [0] * 16 + [1, 1, 1] + [0] * 5)
  with pytest.raises(ValueError, match="max_prompt_len"):
    preference_batch(TOK, pairs, max_prompt_len=4)
  with pytest.raises(ValueError, match="pairs is empty"):
    preference_batch(TOK, [])


def test_chat_pairs_render_with_template(tmp_path):
  from tokenrl.data.hf_tokenizer import HFTokenizer
  tok = HFTokenizer(fx.build_qwen_style(tmp_path / "qwen"))
  prompt = [{"role": "user", "content": "what is 12+7?"}]
  pair = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "19"}],
          "rejected": [{"role": "assistant", "content": "18"}]}
  p_ids, c_ids, r_ids = encode_pair(tok, pair)
  full = tok.apply_chat_template(prompt + pair["chosen"], add_generation_prompt=False,
                                 tokenize=False)
  assert tok.decode(p_ids + c_ids) == full
  assert tok.decode(c_ids) == "19<|im_end|>\n"
  assert tok.decode(r_ids) == "18<|im_end|>\n"
  # A string prompt with use_chat_template renders as one user turn; string answers get eos.
  p2, c2, _ = encode_pair(tok, {"prompt": "what is 12+7?", "chosen": "19", "rejected": "18"},
                          use_chat_template=True)
  assert p2 == p_ids and c2[-1] == tok.eos_token_ids[0]


def test_grain_pipeline_over_pairs_resumes():
  pairs = [{"prompt": f"{i}+0=", "chosen": str(i), "rejected": str(i + 1)} for i in range(10)]
  it = make_dataset(pairs, batch_size=3, seed=0)
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = make_dataset(pairs, batch_size=3, seed=0)
  it2.set_state(state)
  assert [next(it2) for _ in range(3)] == want
