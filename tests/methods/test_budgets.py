"""Sequence budgets (tokenrl.methods.budgets): every method's lengths are checked against
model.max_seq_len at start-up, the message names the fixing override, and the README's quickstart
overrides are each method's `quickstart_overrides`."""

import os
import re

import pytest

from tokenrl.data.tokenizer import load_tokenizer
from tokenrl.methods import METHODS
from tokenrl.methods.budgets import check_budgets, longest_answer, longest_prompt, method_budgets
from tokenrl.methods.dpo import PairwiseMethod
from tokenrl.train.plan import model_config
from tokenrl.train.setup import build_examples

from tests.configs_util import load_config, set_fields

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


apply = set_fields


def quickstart(name: str, overrides=True):
  pairwise = isinstance(METHODS.get(name), PairwiseMethod)
  cfg = load_config("preference_quickstart" if pairwise else "quickstart")
  cfg.rl.objective = name
  if name == "tgdpo":
    cfg.rl.tgdpo.guidance_workdir = "runs/pref_quickstart"   # required (README); not read here
  if overrides and name in METHODS:
    apply(cfg, METHODS[name].quickstart_overrides)
  return cfg


def run_lengths(cfg):
  tok = load_tokenizer(cfg.data.tokenizer)
  train, test, _ = build_examples(cfg)
  examples = list(train) + list(test)
  return tok, examples, longest_prompt(cfg, tok, examples), longest_answer(tok, examples)


@pytest.mark.parametrize("name", sorted(METHODS) + ["grpo", "dapo", "dr_grpo", "gspo", "rloo"])
def test_quickstart_with_readme_overrides_fits(name):
  cfg = quickstart(name)
  tok, examples, p, a = run_lengths(cfg)
  mc = model_config(cfg)
  check_budgets(cfg, mc, p, answer_len=a, examples=examples, tokenizer=tok)
  check_budgets(cfg, mc, p)            # the three-argument call of the run skeleton


@pytest.mark.parametrize("name,knob", [("brpo", "rl.brpo.max_thinking_tokens"),
                                       ("soft_tokens", "rl.soft_tokens.cot_steps"),
                                       ("poad", "rl.poad.turns")])
def test_default_config_fails_with_the_fixing_override(name, knob):
  cfg = quickstart(name, overrides=False)
  mc = model_config(cfg)
  with pytest.raises(ValueError, match="exceed model.max_seq_len=64") as e:
    check_budgets(cfg, mc, 7)
  msg = str(e.value)
  assert knob in msg and "--config.model.max_seq_len=" in msg, msg
  tries = msg.split("try: ")[1].split(" or ")
  assert tries, msg
  for alternative in tries:   # each suggested alternative alone makes the check pass
    fixed = quickstart(name, overrides=False)
    for flag in alternative.split():
      key, value = flag[len("--config."):].split("=")
      apply(fixed, {key: int(value)})
    check_budgets(fixed, model_config(fixed), 7)


def test_brpo_and_soft_tokens_name_every_violation():
  cfg = quickstart("brpo", overrides=False)
  with pytest.raises(ValueError) as e:
    check_budgets(cfg, model_config(cfg), 7)
  # 16 + 8000 (thinking); bucket(7 + 8000 + 3) = 8192 + 128 (summary); 16 + 8000 + 3 + 128 (rows)
  for line in ("= 8016 > 64", "= 8320 > 64", "= 8147 > 64"):
    assert line in str(e.value)
  cfg = quickstart("soft_tokens", overrides=False)
  with pytest.raises(ValueError, match=r"= 150 > 64"):   # 16 + 128 + 6
    check_budgets(cfg, model_config(cfg), 7)


def _fits(cfg, prompt_len):
  try:
    check_budgets(cfg, model_config(cfg), prompt_len)
    return True
  except ValueError:
    return False


def test_default_rollout_boundary():
  cfg = quickstart("grpo")
  cfg.sampler.max_new_tokens = 64 - 16        # prompt bucket 16 (7 tokens) + 48 = 64: fits
  assert _fits(cfg, 7)
  cfg.sampler.max_new_tokens = 49             # one token over
  assert not _fits(cfg, 7)
  cfg.sampler.max_new_tokens = 32             # 17 tokens -> bucket 32; 32 + 32 = 64 fits
  assert _fits(cfg, 17) and not _fits(cfg, 33)   # 33 -> bucket 64


def test_soft_tokens_boundary():
  cfg = quickstart("soft_tokens")
  cfg.rl.soft_tokens.cot_steps = 64 - 16 - 6    # 16 + 42 + 6 = 64
  assert _fits(cfg, 7)
  cfg.rl.soft_tokens.cot_steps = 43
  assert not _fits(cfg, 7)


def test_brpo_boundary():
  cfg = quickstart("brpo")                      # '..' + '#' + '' = 3 inserted tokens
  cfg.rl.brpo.max_thinking_tokens = 22          # summary prompt 7 + 22 + 3 = 32 -> bucket 32
  cfg.rl.brpo.summary_max_tokens = 23           # rows 16 + 22 + 3 + 23 = 64; summary 32 + 23
  assert _fits(cfg, 7)
  cfg.rl.brpo.summary_max_tokens = 24           # rows 65
  assert not _fits(cfg, 7)
  cfg.rl.brpo.summary_max_tokens = 23
  cfg.rl.brpo.max_thinking_tokens = 23          # summary prompt 33 -> bucket 64: 64 + 23
  assert not _fits(cfg, 7)


def test_laser_extra_token_and_poad_turns():
  cfg = quickstart("laser")
  cfg.sampler.max_new_tokens = 47               # 16 + 47 + 1 = 64
  assert _fits(cfg, 7)
  cfg.sampler.max_new_tokens = 48               # the rollout fits (64) but the rows do not (65)
  assert not _fits(cfg, 7)
  budgets = {b.name: b.tokens for b in method_budgets(quickstart("poad"), model_config(
      quickstart("poad")), 7)}
  # turn 2: bucket(7 + 5 + 8) = 32, + 5; rows 16 + 2·5 + 8
  assert budgets["poad turn 2 rollout"] == 37 and budgets["poad training rows"] == 34


def test_guide_hinted_prompt_needs_examples():
  cfg = quickstart("guide_grpo")
  tok, examples, p, _ = run_lengths(cfg)
  names = [b.name for b in method_budgets(cfg, model_config(cfg), p)]
  assert "hinted rollout" not in names
  budgets = method_budgets(cfg, model_config(cfg), p, examples=examples, tokenizer=tok)
  hinted = [b for b in budgets if b.name == "hinted rollout"][0]
  texts = [f"hint: starts {str(ex['answer'])[:1]}\n{ex['prompt']}" for ex in examples]
  longest = max(len(tok.encode(t)) for t in texts)
  assert str(longest) in hinted.detail


def readme_overrides() -> dict[str, dict[str, str]]:
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  block = text.split("Quickstart overrides")[1].split("\n\n", 2)[1]
  out = {}
  for line in block.splitlines():
    m = re.match(r"- `(\w+)`: (.*)$", line)
    assert m, line
    out[m.group(1)] = dict(flag[len("--config."):].split("=", 1)
                           for flag in re.findall(r"`(--config\.[^`]+)`", m.group(2)))
  return out


def test_readme_names_exactly_the_quickstart_overrides():
  readme = readme_overrides()
  want = {name: {k: str(v) for k, v in m.quickstart_overrides.items()}
          for name, m in METHODS.items() if m.quickstart_overrides}
  assert readme == want
