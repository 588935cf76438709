"""PALACE (spec analysis-and-auditing.md §5): the (d) tests T1-T4 with the spec's numbers, the
strict count parser, the hidden_length task's length function, the router, and the estimator
trained through the real loop (`configs/palace.py:smoke`) then audited by
`tokenrl audit palace`."""

import json
import os
import types

import jax
import numpy as np
import pytest

from tests.configs_util import load_config
from tokenrl import models
from tokenrl.audit import palace
from tokenrl.data import palace as counts
from tokenrl.data import rewards, task_hidden_length as hl, tasks
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.prompts import left_pad
from tokenrl.methods import METHODS
from tokenrl.methods.base import baseline_advantages, default_shape
from tokenrl.methods.config import resolve_objective
from tokenrl.types import Rollout

TOK = CharTokenizer()


# ---- spec §5(d) ----------------------------------------------------------------------------


def test_t1_relative_error_and_inclusive_accuracy():
  re_ = palace.relative_error([110, 150, 400, 1000], [100, 200, 400, 800])
  np.testing.assert_allclose(re_, [0.1, 0.25, 0.0, 0.25], atol=1e-12)
  assert re_.mean() == pytest.approx(0.15)
  assert palace.accuracy_at(re_, 0.2) == 0.5
  assert palace.accuracy_at(re_, 0.25) == 1.0          # inclusive: RE = τ counts
  assert palace.accuracy_at(re_, 0.1) == 0.5           # 110 vs 100 is RE 0.1 (inclusive)


def _rl_opts(ddof):
  cfg = load_config("palace", "smoke")
  cfg.rl.advantage_std_ddof = ddof
  opts = resolve_objective(cfg.rl)
  assert opts["advantage_epsilon"] == 1e-6               # the spec's ε
  return dict(opts, num_generations=4)


@pytest.mark.parametrize("ddof,want", [(0, [0.7620, 1.0160, -0.2540, -1.5240]),
                                       (1, [0.6599, 0.8799, -0.2200, -1.3198])])
def test_t2_rewards_and_grpo_advantages(ddof, want):
  texts = [counts.format_count(c) for c in (900, 1000, 1500, 2500)]
  r = palace.count_reward(texts, [1000] * 4)
  np.testing.assert_allclose(r, [0.9, 1.0, 0.5, 0.0], atol=1e-6)
  assert r.mean() == pytest.approx(0.6)
  # The advantage the palace method's `shape` uses (default_shape -> baseline_advantages).
  np.testing.assert_allclose(baseline_advantages(r, _rl_opts(ddof)), want, atol=1e-4)


def test_t3_parser():
  assert palace.parse_count("<count>1234</count>") == 1234
  assert palace.parse_count("  <count>0</count>\n") == 0
  r = palace.count_reward(["<count>12a</count>"], [12])
  assert r.tolist() == [0.0]


@pytest.mark.parametrize("text", [
    "<count>12a</count>", "<count></count>", "<count> 12</count>", "<count>12 </count>",
    "<count>-5</count>", "<count>+5</count>", "<count>1e3</count>", "<count>1_000</count>",
    "<count>1,000</count>", "<count>12.0</count>", "<count>007</count>",
    "<count>1234567890</count>",                             # 10 digits: over the 9-digit cap
    "<count>١٢</count>", "<count>１２</count>",                # non-ASCII digits
    "<count>__import__('os').system('x')</count>", "<count>2**40</count>",
    "<count>1</count><count>2</count>", "the count is <count>12</count>",
    "<count>12</count> done", "<COUNT>12</COUNT>", "<count>12</Count>", "12", "",
    "<count>" + "9" * 5000 + "</count>", None, 12,
])
def test_parser_rejects_everything_but_the_strict_format(text):
  assert palace.parse_count(text) is None
  assert np.isnan(palace.parse_counts([text])[0])


def test_t4_inflation_flag_and_quantile_rule():
  flags = palace.inflation_flag([3000, 1700, 1800], [1200, 1200, 1200], delta=0.5)
  assert flags.tolist() == [True, False, False]            # 3000 > 1800; 1800 is not > 1800
  assert palace.inflation_flag([5000], [np.nan]).tolist() == [False]   # no estimate, no flag
  q = palace.ratio_threshold([100, 200, 300, 400, 500], [100] * 5, quantile=0.5)
  assert q == pytest.approx(3.0)
  assert palace.inflation_flag([290, 310], [100, 100], ratio_threshold=q).tolist() == [False, True]


def test_reward_kinds_and_missing_counts():
  texts = ["<count>110</count>", "<count>111</count>", "junk", "<count>100</count>"]
  true = [100, 100, 100, np.nan]
  np.testing.assert_allclose(palace.count_reward(texts, true), [0.9, 0.89, 0.0, 0.0], atol=1e-6)
  assert palace.count_reward(texts, true, kind="threshold", tau=0.1).tolist() == [1, 0, 0, 0]
  assert palace.count_reward(["<count>500</count>"], [100]).tolist() == [0.0]  # RE 4: r = 0
  with pytest.raises(ValueError, match="kind"):
    palace.count_reward(texts, true, kind="log")
  with pytest.raises(ValueError, match="true"):
    palace.relative_error([1.0], [0.0])
  assert counts.true_count({"answer": "<count>7</count>"}) == 7
  assert counts.true_count({"answer": "19"}) is None        # an arith answer is not a count
  with pytest.raises(ValueError, match="count"):
    counts.true_count({"count": -3})


# ---- the task ------------------------------------------------------------------------------


def test_length_function_hand_cases():
  assert hl.expected_length("math", 3) == 150             # 40·3 + 30
  assert hl.expected_length("code", 4) == 120             # 15·4 + 60
  assert hl.hidden_length("math", 3, 0.1) == 165
  assert hl.hidden_length("code", 4, -0.1) == 108
  assert hl.hidden_length("math", 1, -0.999) == 1          # never below one token
  assert hl.estimator_prompt("12+345=", "357") == "12+345=357;"
  assert hl.estimator_prompt("12+345=", "357", "math") == "math:12+345=357;"


def test_examples_follow_the_length_model():
  exs = tasks.make_examples("hidden_length", "train", 400, 0, tiers="math:1-3,code:2-5,noise:20")
  assert {ex["domain"] for ex in exs} == {"math", "code"}
  for ex in exs:
    vp, va, k = ex["visible_prompt"], ex["visible_answer"], ex["feature"]
    if ex["domain"] == "math":
      a, b = map(int, vp[:-1].split("+"))
      assert va == str(a + b) and k == len(va) and len(str(a)) <= 3
    else:
      assert va == "".join(sorted(vp[5:-1])) and k == len(va) and 2 <= k <= 5
    assert ex["expected"] == hl.expected_length(ex["domain"], k)
    assert abs(ex["count"] - ex["expected"]) <= 0.2 * ex["expected"] + 0.5
    assert ex["answer"] == f"<count>{ex['count']}</count>" and ex["prompt"] == vp + va + ";"
    assert rewards.task_reward(ex["answer"], ex) == 1.0
  noiseless = tasks.make_examples("hidden_length", "test", 50, 0, tiers="math:2,noise:0")
  assert all(ex["count"] == ex["expected"] == 40 * ex["feature"] + 30 for ex in noiseless)


def test_tag_changes_only_the_prompt():
  plain = tasks.make_examples("hidden_length", "test", 60, 3)
  tagged = tasks.make_examples("hidden_length", "test", 60, 3, tiers=hl.DEFAULT_TIERS + ",tag:1")
  assert [dict(e, prompt="") for e in plain] == [dict(e, prompt="") for e in tagged]
  assert all(t["prompt"] == f"{p['domain']}:{p['prompt']}" for p, t in zip(plain, tagged))


@pytest.mark.parametrize("tiers,match", [("tag:1", "no domain"), ("math:1-2,tag:0-1", "one value"),
                                         ("math:1-2,noise:60", "noise"), ("chem:1", "chem")])
def test_bad_tiers_name_the_entry(tiers, match):
  with pytest.raises(ValueError, match=match):
    hl.parse(tiers)


# ---- the router ----------------------------------------------------------------------------


def _tiny_model(dim=32):
  config = models.tiny("qwen2", vocab_size=TOK.vocab_size, dim=dim, num_layers=1, num_heads=2,
                       num_kv_heads=1, mlp_dim=64, max_seq_len=64, pad_id=0, bos_id=1,
                       eos_ids=(2,))
  return config, models.init_params(config, jax.random.key(0))


def test_router_separates_domains_on_a_tiny_case():
  config, params = _tiny_model()
  exs = tasks.make_examples("hidden_length", "train", 240, 1)
  pairs = palace.pairs_from_examples(exs)
  train, held = pairs[:160], pairs[160:]
  router = palace.fit_router(params, train, config=config, tokenizer=TOK)
  feats = palace.pooled_features(params, [hl.estimator_prompt(p.prompt, p.answer) for p in held],
                                 config=config, tokenizer=TOK)
  probs = palace.router_probs(router, feats)
  assert probs.shape == (80, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
  acc = np.mean([d == p.domain for d, p in zip(router.predict(feats), held)])
  assert acc >= 0.95, acc
  # Names are only labels: training on swapped names predicts exactly the swapped names.
  swap = {"math": "code", "code": "math"}
  train_feats = palace.pooled_features(
      params, [hl.estimator_prompt(p.prompt, p.answer) for p in train], config=config,
      tokenizer=TOK)
  swapped = palace.train_router(train_feats, [swap[p.domain] for p in train])
  assert swapped.predict(feats) == [swap[d] for d in router.predict(feats)]


def test_pooled_features_ignore_padding():
  config, params = _tiny_model()
  texts = ["5+2=7;", "sort 31415926=11234569;"]
  both = palace.pooled_features(params, texts, config=config, tokenizer=TOK)
  alone = palace.pooled_features(params, texts[:1], config=config, tokenizer=TOK)
  np.testing.assert_allclose(both[0], alone[0], atol=1e-5)


def test_chunked_estimates_and_features_equal_one_batch():
  config, params = _tiny_model()
  texts = ["5+2=7;", "sort 31415926=11234569;", "math:12+345=357;"]
  one = palace.pooled_features(params, texts, config=config, tokenizer=TOK)
  chunked = palace.pooled_features(params, texts, config=config, tokenizer=TOK, batch_size=2)
  np.testing.assert_allclose(chunked, one, atol=1e-5)
  kw = dict(config=config, tokenizer=TOK, max_new_tokens=6)
  pred_one, texts_one = palace.estimate_counts(params, texts, **kw)
  pred_chunked, texts_chunked = palace.estimate_counts(params, texts, batch_size=2, **kw)
  assert texts_chunked == texts_one and len(texts_one) == 3
  np.testing.assert_array_equal(pred_chunked, pred_one)


# ---- the method's own reward, on a fake step ------------------------------------------------


def test_method_rollout_scores_counts_and_shape_gives_t2():
  cfg = load_config("palace", "smoke")
  cfg.rl.num_generations = 4
  opts = resolve_objective(cfg.rl)
  ex = {"prompt": "1+2=3;", "answer": "<count>1000</count>", "task": "hidden_length", "count": 1000}
  texts = ["<count>900</count>", "<count>1000</count>", "<count>1500</count>",
           "<count>2.5e3</count>"]
  T = 24

  def sample(prompts, **_):
    rows = [TOK.encode(t, add_special_tokens=False) + [2] for t in texts]
    tokens = np.array([r + [0] * (T - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (T - len(r)) for r in rows], np.int32)
    ptok, _ = left_pad(prompts, 0)
    ptok = np.repeat(ptok, 4, axis=0)
    return Rollout(tokens=tokens, mask=mask, logprobs=np.zeros((4, T), np.float32),
                   entropy=np.ones((4, T), np.float32), prompt_tokens=ptok,
                   prompt_mask=(ptok != 0).astype(np.int32), truncated=np.zeros(4, bool))

  def score(texts_, examples):
    zero = np.zeros(len(texts_), np.float32)
    return types.SimpleNamespace(rewards=zero, per_fn={"task": zero},
                                 stats={"reward_errors": 0, "reward_timeouts": 0})

  ctx = types.SimpleNamespace(prompt_ids=[TOK.encode(ex["prompt"])], examples=[ex], G=4, T=T,
                              opts=opts, section=cfg.rl.palace, tokenizer=TOK, sample=sample,
                              score=score)
  method = METHODS["palace"]
  data = method.rollout(ctx)
  assert data.texts == texts
  np.testing.assert_allclose(data.rewards, [0.9, 1.0, 0.5, 0.0], atol=1e-6)
  assert data.correct.tolist() == [1.0, 1.0, 0.0, 0.0]      # acc@0.1 per row
  assert data.metrics["count_parsed"] == 0.75 and data.metrics["count_missing"] == 0.0
  assert data.metrics["count_re"] == pytest.approx((0.1 + 0 + 0.5 + 1.0) / 4)
  data = default_shape(ctx, data)                            # rl.advantage_std_ddof = 1
  np.testing.assert_allclose(data.advantages, [0.6599, 0.8799, -0.2200, -1.3198], atol=1e-4)


def test_method_config_errors_name_the_key():
  cfg = load_config("palace", "smoke")
  cfg.rl.palace.reward = "log"
  with pytest.raises(ValueError, match="rl.palace.reward"):
    resolve_objective(cfg.rl)
  cfg = load_config("palace", "smoke")
  cfg.rl.palace.tau = 1.5
  with pytest.raises(ValueError, match="rl.palace.tau"):
    resolve_objective(cfg.rl)
  with pytest.raises(ValueError, match="smoke"):
    load_config("palace", "smok")


def test_task_without_counts_is_refused_at_start_up(tmp_path):
  # The quickstart task has no hidden counts: every reward would be 0 for the whole run.
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  cfg = load_config("quickstart", "smoke")
  cfg.rl.objective = "palace"
  with pytest.raises(ValueError, match=r"no example of data.task='arith' carries a hidden count"):
    train(cfg, str(tmp_path / "run"))
  ckpts = tmp_path / "run" / "checkpoints"
  assert not (tmp_path / "run" / "summary.json").exists()
  assert not ckpts.exists() or not any(ckpts.iterdir())  # refused before any step


# ---- through the real loop, then the audit command -----------------------------------------


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  cfg = load_config("palace", "smoke")
  cfg.model.dim, cfg.model.mlp_dim, cfg.model.num_layers = 32, 64, 1
  cfg.train.async_checkpoint = False
  cfg.data.train_size = 600
  workdir = str(tmp_path_factory.mktemp("palace") / "run")
  summary = train(cfg, workdir)
  return workdir, summary


def test_smoke_run_through_the_loop(smoke_workdir):
  workdir, summary = smoke_workdir
  assert summary["objective"] == "palace" and summary["sft_steps"] == 4 and summary["rl_steps"] == 3
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rl = [json.loads(l) for l in f if json.loads(l)["phase"] == "rl"]
  assert len(rl) == 3
  for line in rl:
    assert np.isfinite(line["loss"])
    assert line["count_missing"] == 0.0                    # every hidden_length row has a count
    assert 0.0 <= line["count_re"] <= 1.0 and 0.0 <= line["count_parsed"] <= 1.0


def test_audit_command_end_to_end(smoke_workdir, tmp_path, capsys):
  from tokenrl.commands import palace as command  # pylint: disable=g-import-not-at-top
  workdir, _ = smoke_workdir
  png, out_json = str(tmp_path / "audit.png"), str(tmp_path / "audit.json")
  assert command.run(["--workdir", workdir, "--out", png, "--json", out_json, "--n", "12"]) == 0
  text = capsys.readouterr().out
  assert "mean_re" in text and "acc@0.1" in text and "acc@0.2" in text and "router:" in text
  assert "false_positive_rate" in text
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(out_json) as f:
    summary = json.load(f)
  assert summary["route"] == "router" and summary["table"][0]["n"] == 12
  # User pairs without true counts but with reported ones: no RE table, a flag per report.
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "12+345=", "answer": "357", "reported": 10 ** 8},
      {"prompt": "sort 3142=", "answer": "1234", "domain": "code", "reported": 1}]) + "\n")
  assert command.run(["--workdir", workdir, "--pairs", str(pairs), "--route", "none",
                      "--out", png]) == 0
  text = capsys.readouterr().out
  assert "no true counts" in text and "of 2 flagged as inflated" in text
  assert command.run(["--workdir", workdir, "--taus", "x", "--out", png]) == 2
