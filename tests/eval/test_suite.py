"""The evaluation suite (tokenrl/eval/suite.py, report.py, control_build.py): every strategy's
numbers on scripted samples, worked by hand; the same numbers through a scripted sampler and the
timed verifier; greedy and pass@n equal to `evaluate` on a tiny model; argument and control
errors naming what to fix; report files; the frontier over two result sets."""

import functools
import json
import math
import os
import types

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.config import control_config
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.reward_runner import RewardRunner
from tokenrl.data.rewards import exact_answer_reward
from tokenrl.eval import evaluate, report, suite
from tokenrl.eval.control_build import build_control
from tokenrl.eval.cost import PriceTable
from tokenrl.models.budget_head import init_budget_head, save_budget_head
from tokenrl.rollout.budget_guidance import BudgetGuidance
from tokenrl.rollout.controls import CyclicReflex

TOK = CharTokenizer()
EOS = TOK.eos_token_ids[0]
# One prompt token costs 1, one generated token 2: every cost below is an integer sum.
PRICES = PriceTable(1e6, 2e6)
INF = math.inf

# Two problems, n = 4 samples each (gold '5' and '3'). Lengths count EOS; p0's last sample is
# truncated (6 tokens, no EOS) with no answer.
ANSWERS = [["5", "7", "5", None], ["1", "2", "2", "3"]]
CORRECT = [[1, 0, 1, 0], [0, 0, 0, 1]]
LENGTHS = [[3, 2, 4, 6], [5, 5, 3, 2]]
FINISHED = [[1, 1, 1, 0], [1, 1, 1, 1]]
SCORES = [[-0.5, -0.1, -0.9, -0.2], [-0.3, -0.2, -0.4, -0.6]]
PROMPT_TOKENS = [3, 5]
GREEDY_CORRECT, GREEDY_LENGTHS = [1, 0], [2, 3]


def _samples():
  return suite.SuiteSamples(
      prompts=["p0", "p1"], prompt_tokens=np.asarray(PROMPT_TOKENS), answers=ANSWERS,
      correct=np.asarray(CORRECT, bool), lengths=np.asarray(LENGTHS),
      finished=np.asarray(FINISHED, bool), scores=np.asarray(SCORES),
      greedy_correct=np.asarray(GREEDY_CORRECT, bool), greedy_lengths=np.asarray(GREEDY_LENGTHS))


def _rows(samples=None, **kw):
  kw = {"ks": (1, 2, 4), "alpha": 0.5, "prices": PRICES, **kw}
  return {r["name"]: r for r in suite.score_strategies(samples or _samples(), **kw)}


def test_strategies_by_hand():
  rows = _rows()
  acc = {name: r["accuracy"] for name, r in rows.items()}
  assert acc == pytest.approx({
      "greedy": 0.5,
      # unbiased pass@k: p0 c=2, p1 c=1 of n=4. k=2: 1 - C(2,2)/C(4,2) = 5/6, 1 - C(3,2)/C(4,2) = 1/2.
      "pass@1": (0.5 + 0.25) / 2, "pass@2": (5 / 6 + 0.5) / 2, "pass@4": 1.0,
      # k=1: every strategy is the sample itself (a None answer submits it, incorrect).
      "maj@1": 0.375, "bon@1": 0.375, "bom@1": 0.375, "ffs@1": 0.375,
      # blocks (0,1), (2,3). maj: ties go to the answer seen first. p0: '5', '5' -> 1; p1: '1',
      # '2' -> 0. At k=4: '5' (2 votes) right, '2' (2 votes) wrong.
      "maj@2": 0.5, "maj@4": 0.5,
      # bon: top score with an answer. p0: '7' (-0.1) wrong; '5' (None skipped) right. p1: '2',
      # '2' wrong. k=4: '7' (-0.1) and '2' (-0.2), both wrong.
      "bon@2": 0.25, "bon@4": 0.0,
      # bom (alpha 0.5): k=2 every answer of a block has frequency >= 0.5, so it is bon there;
      # k=4 keeps only '5' (2/4) and '2' (2/4): p0 right, p1 wrong.
      "bom@2": 0.25, "bom@4": 0.5,
      # ffs: p0 blocks -> '7' (len 2) wrong, '5' (len 4, the len-6 one is truncated) right;
      # p1 -> '1' (tie at 5, lowest index) wrong, '3' (len 2) right. k=4: '7' and '3'.
      "ffs@2": 0.5, "ffs@4": 0.5,
  })
  assert [r["runs"] for r in (rows["greedy"], rows["pass@2"], rows["maj@1"], rows["maj@2"],
                              rows["ffs@4"])] == [1, 1, 4, 2, 1]


def test_tokens_and_costs_by_hand():
  rows = _rows()
  g = rows["greedy"]  # p0: 3 + 2·2 = 7 (right); p1: 5 + 2·3 = 11 (wrong, never solved)
  assert (g["prompt_tokens"], g["completion_tokens"], g["cost"]) == (4.0, 2.5, 9.0)
  assert g["cost_of_pass"] == INF and g["cost_per_correct"] == 18.0
  assert g["tokens_of_pass"] == INF and g["tokens_per_correct"] == 5.0
  assert g["per_problem"]["cost_of_pass"] == [7.0, INF] and g["solved"] == 0.5
  # pass@4: k × prompt, k × mean length: p0 12 + 2·15 = 42, p1 20 + 2·15 = 50, both solved.
  p4 = rows["pass@4"]
  assert (p4["prompt_tokens"], p4["completion_tokens"]) == (16.0, 15.0)
  assert p4["cost_of_pass"] == 46.0 and p4["tokens_of_pass"] == 15.0
  # pass@1: p0 (3 + 2·3.75)/0.5 = 21, p1 (5 + 2·3.75)/0.25 = 50.
  assert rows["pass@1"]["cost_of_pass"] == pytest.approx(35.5)
  # maj@1 blocks are single samples: the same ratio of means per problem.
  assert rows["maj@1"]["cost_of_pass"] == pytest.approx(35.5)
  # maj@2: n_in 6 / 10; n_out p0 5, 10, p1 10, 5; costs 16, 26, 30, 20 = 92 for 2 right.
  m2 = rows["maj@2"]
  assert (m2["prompt_tokens"], m2["completion_tokens"]) == (8.0, 7.5)
  assert m2["cost_of_pass"] == INF and m2["per_problem"]["cost_of_pass"] == [21.0, INF]
  assert m2["cost_per_correct"] == 46.0 and m2["tokens_per_correct"] == 15.0
  # ffs@4: Σ min(len, L*): p0 4·2 = 8, p1 4·2 = 8; costs 12 + 16, 20 + 16.
  f4 = rows["ffs@4"]
  assert f4["completion_tokens"] == 8.0 and f4["cost"] == 32.0
  assert f4["cost_per_correct"] == 64.0 and f4["tokens_per_correct"] == 16.0
  # ffs@2 blocks: p0 [3, 2] -> 2 + 2, [4, 6] -> 4 + 4 (truncated row cut at L*); p1 [5, 5] ->
  # 10, [3, 2] -> 2 + 2.
  assert rows["ffs@2"]["per_problem"]["accuracy"] == [0.5, 0.5]
  assert rows["ffs@2"]["completion_tokens"] == (4 + 8 + 10 + 4) / 4


def test_bom_alpha_and_strategy_subset():
  # alpha 0.25 at k=4 keeps '7' (1/4) too, and it scores best: p0 turns wrong.
  rows = _rows(alpha=0.25, strategies=("bom", "maj"), ks=(4,))
  assert list(rows) == ["maj@4", "bom@4"] and rows["bom@4"]["accuracy"] == 0.0


@pytest.mark.parametrize("kw,message", [
    ({"ks": (8,)}, r"k: every k must be in \[1, n=4\].*got \[8\]"),
    ({"ks": (0, 2)}, r"got \[0\]"),
    ({"strategies": ("maj", "oracle")}, "strategies: expected a non-empty subset"),
    ({"alpha": 1.5}, r"alpha: expected a frequency in \[0, 1\]"),
])
def test_bad_arguments_are_named(kw, message):
  with pytest.raises(ValueError, match=message):
    _rows(**kw)


def _scripted_sampler(greedy, sampled, scores):
  """Fixed completions (CharTokenizer): greedy [B] texts, sampled [B·n] (group layout) given as
  (text, finished); logprobs constant per row so their mean is that row's score."""
  def draw(params, ids, *, temperature, num_samples=1, **kw):
    del params, kw
    rows = [(t, True) for t in greedy] if temperature == 0.0 else sampled
    assert len(rows) == len(ids) * num_samples
    enc = [TOK.encode(t, add_special_tokens=False) + ([EOS] if fin else []) for t, fin in rows]
    width = max(len(r) for r in enc)
    tokens, mask = np.zeros((len(enc), width), np.int32), np.zeros((len(enc), width), np.int32)
    for i, r in enumerate(enc):
      tokens[i, :len(r)], mask[i, :len(r)] = r, 1
    lp = np.asarray([0.0] * len(enc) if temperature == 0.0 else scores, np.float32)
    return types.SimpleNamespace(tokens=tokens, mask=mask, logprobs=lp[:, None] * mask)
  return draw


def test_scripted_sampler_through_the_verifier_gives_the_hand_numbers():
  """The same samples as text: lengths set by trailing spaces (stripped by the answer and by
  exact_answer_reward), the truncated one 6 spaces with no EOS; verified out of process."""
  sampled = [("5 ", True), ("7", True), ("5  ", True), ("      ", False),
             ("1   ", True), ("2   ", True), ("2 ", True), ("3", True)]
  draw = _scripted_sampler(["5", "2 "], sampled, [s for row in SCORES for s in row])
  examples = [{"prompt": "p0", "answer": "5"}, {"prompt": "p1", "answer": "3"}]
  res = suite.run_suite(None, config=None, tokenizer=TOK, examples=examples,
                        prompt_ids=[[3, 4, 5], [3, 4, 5, 6, 7]], reward_fn=exact_answer_reward,
                        task="arith", n=4, ks=(1, 2, 4), alpha=0.5, prices=PRICES,
                        max_new_tokens=6, sampler=draw, label="scripted")
  want = _rows()
  got = {r["name"]: r for r in res["strategies"]}
  assert list(got) == list(want)
  for name, row in want.items():
    flat = lambda r: {k: v for k, v in r.items() if k != "per_problem"}
    assert flat(got[name]) == pytest.approx(flat(row)), name
    for key, values in row["per_problem"].items():
      assert got[name]["per_problem"][key] == pytest.approx(values), (name, key)
  assert res["problems"] == ["p0", "p1"] and res["verifier_timeouts"] == 0


def test_no_verifier_and_k_above_n_fail_before_sampling():
  def never(*a, **k):
    raise AssertionError("sampled")
  kw = dict(config=None, tokenizer=TOK, examples=[{"prompt": "a", "answer": "1"}],
            prompt_ids=[[3]], task="mytask", sampler=never)
  with pytest.raises(ValueError, match="task 'mytask' has no verifier"):
    suite.run_suite(None, reward_fn=None, **kw)
  with pytest.raises(ValueError, match=r"every k must be in \[1, n=4\].*got \[16\]"):
    suite.run_suite(None, reward_fn=exact_answer_reward, n=4, ks=(1, 16), **kw)


def test_answer_normalisation_follows_the_task():
  cot = {"answer": "3*4=12\n#12"}
  assert suite.answer_fn_for("arith_cot")("3*4=12\n? 3*4=12\n# 12 ", cot) == "12"
  assert suite.answer_fn_for("arith_cot")("3*4=12", cot) is None  # no '#': no answer
  assert suite.answer_fn_for("arith")(" 19 ", {"answer": "19"}) == "19"
  assert suite.answer_fn_for("arith")("  ", {"answer": "19"}) is None
  assert suite.answer_fn_for("gsm8k")("so #### 72", {"answer": "72"}) == "72"


def has_digit(completion, example):
  """A lenient verifier, so a random tiny model gets some right."""
  del example
  return float(any(c.isdigit() for c in completion))


TINY = models.tiny("qwen2", vocab_size=58, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                   max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))


@functools.lru_cache(maxsize=1)
def tiny_params():
  """The tiny model's params, made once per process (test_cli_eval.py reuses them)."""
  return models.init_params(TINY, jax.random.key(0))


def test_tiny_model_matches_evaluate():
  """Same rng use, same batches: greedy accuracy and pass@n are evaluate()'s numbers."""
  config, params = TINY, tiny_params()
  examples = [{"prompt": p, "answer": "0"} for p in ("1+2=", "7-3=", "12+9=")]
  ids = [TOK.encode(e["prompt"]) for e in examples]
  common = dict(config=config, tokenizer=TOK, examples=examples, prompt_ids=ids,
                max_new_tokens=5, temperature=1.0, rng=jax.random.key(3))
  # Thread workers: a process worker would import this test module (jax and all) to unpickle it.
  with RewardRunner({"verifier": has_digit}, timeout_s=5.0, max_workers=1,
                    backend="thread") as runner:
    ref = evaluate(params, reward_fn=has_digit, num_samples=4, scorer=runner, **common)
    res = suite.run_suite(params, reward_fn=has_digit, task="arith", n=4, ks=(4,),
                          strategies=("greedy", "pass", "ffs"), scorer=runner, **common)
  got = {r["name"]: r for r in res["strategies"]}
  assert got["greedy"]["accuracy"] == ref["accuracy"]
  assert got["pass@4"]["accuracy"] == pytest.approx(ref["pass@4"])
  assert 0 < got["pass@4"]["completion_tokens"] <= 4 * 5
  assert got["ffs@4"]["completion_tokens"] <= got["pass@4"]["completion_tokens"]


# ---- controls ------------------------------------------------------------------------------------


def _control(**kw):
  c = control_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_build_control_none_and_cyclic_reflex():
  assert build_control(_control(), TOK, dim=32, vocab_size=58) == (None, None)
  proc, state = build_control(_control(method="cyclic_reflex", amplitude=5.0, period=40), TOK,
                              dim=32, vocab_size=58)
  assert state is None and isinstance(proc, CyclicReflex)
  assert proc.reflection_ids == tuple(TOK.encode("?", False))
  assert proc.think_end_id == TOK.encode("#", False)[0]
  assert (proc.amplitude, proc.period) == (5.0, 40.0)


@pytest.mark.parametrize("kw,message", [
    ({"method": "cyclic_reflex", "reflection": "?,wait"},
     "sampler.control.reflection: 'wait' is 4 tokens"),
    ({"method": "cyclic_reflex", "think_end": "</think>"}, "sampler.control.think_end: '</think>'"),
    ({"method": "cyclic_reflex", "period": 0}, "sampler.control.period: expected > 0"),
    ({"method": "budget"}, "sampler.control.head: budget guidance needs the remaining-length head"),
    ({"method": "budget", "head": "/nonexistent/head.safetensors"},
     "sampler.control.head: no such file '/nonexistent/head.safetensors'"),
    ({"method": "soft"}, "sampler.control.method: expected one of"),
])
def test_build_control_errors_name_the_key(kw, message):
  with pytest.raises(ValueError, match=message):
    build_control(_control(**kw), TOK, dim=32, vocab_size=58)


def test_build_control_budget_loads_the_head(tmp_path):
  path = str(tmp_path / "head.safetensors")
  save_budget_head(path, init_budget_head(32, 58))
  proc, state = build_control(_control(method="budget", head=path, budget=40), TOK, dim=32,
                              vocab_size=58)
  assert isinstance(proc, BudgetGuidance) and proc.newline_ids == tuple(TOK.encode("\n", False))
  assert float(state["budget"]) == 40.0 and state["head"]["w_alpha"].shape == (32, 58)
  with pytest.raises(ValueError, match=r"sampler.control.head: .*dim 64 and vocab_size 58"):
    build_control(_control(method="budget", head=path), TOK, dim=64, vocab_size=58)
  # The reference's validity mask by default; each threshold from its key; negative is named.
  assert (proc.min_rate, proc.min_alpha, proc.min_mode) == (10.0, 1.0, 0.9)
  proc, _ = build_control(_control(method="budget", head=path, min_rate=0, min_mode=0.5), TOK,
                          dim=32, vocab_size=58)
  assert (proc.min_rate, proc.min_alpha, proc.min_mode) == (0.0, 1.0, 0.5)
  with pytest.raises(ValueError, match=r"sampler.control.min_rate: expected >= 0"):
    build_control(_control(method="budget", head=path, min_rate=-1), TOK, dim=32, vocab_size=58)


# ---- reports and the frontier --------------------------------------------------------------------


def _result(label, per_problem, problems=("a", "b", "c")):
  """A result with one strategy row per entry of per_problem (name -> cost-of-pass [P])."""
  rows = [{"name": name, "family": name.split("@")[0], "k": 1, "runs": 1, "accuracy": 0.5,
           "prompt_tokens": 3.0, "completion_tokens": 4.0, "cost": 1.0,
           "cost_of_pass": float(np.mean(v)), "cost_per_correct": 2.0,
           "tokens_of_pass": float(np.mean(v)), "tokens_per_correct": 8.0, "solved": 1.0,
           "per_problem": {"accuracy": [0.5] * len(v), "cost": [1.0] * len(v),
                           "cost_of_pass": list(v), "tokens_of_pass": list(v)}}
          for name, v in per_problem.items()]
  return {"label": label, "task": "arith", "num_problems": len(problems), "n": 4, "ks": [1],
          "alpha": 0.2, "score": "logprob", "temperature": 1.0, "max_new_tokens": 4,
          "prices": {"in": 1.0, "out": 2.0}, "control": {"method": "none"}, "verifier_errors": 0,
          "verifier_timeouts": 0, "problems": list(problems), "strategies": rows}


def test_frontier_over_two_results():
  a = _result("A", {"greedy": [2.0, INF, 5.0], "pass@1": [0.1, 0.1, 0.1]})
  b = _result("B", {"maj@4": [3.0, 4.0, 6.0]})
  front = suite.frontier([a, b])
  # pass@k is an oracle, not a member; V_p = [2, 4, 5].
  assert front["members"] == ["A:greedy", "B:maj@4"]
  assert front["per_problem"] == [2.0, 4.0, 5.0] and front["cost_of_pass"] == pytest.approx(11 / 3)
  assert front["best"] == ["A:greedy", "B:maj@4", "A:greedy"] and front["unsolved"] == []
  # Without A:greedy V = [3, 4, 6] (gain [1, 0, 1]); without B:maj@4 problem 1 is unsolved.
  assert front["gain"] == {"A:greedy": pytest.approx(2 / 3), "B:maj@4": INF}
  # An expert at 3 caps problem 2 (and 1 unsolved by anyone would be capped too).
  capped = suite.frontier([a, _result("B", {"maj@4": [3.0, INF, 6.0]})], expert_cop=3.0)
  assert capped["per_problem"] == [2.0, 3.0, 3.0] and capped["best"][1:] == ["expert", "expert"]
  # Nobody solves problem 1: the frontier is ∞, the solved mean is reported beside it.
  open_ = suite.frontier([a, _result("B", {"maj@4": [3.0, INF, 6.0]})])
  assert open_["cost_of_pass"] == INF and open_["unsolved"] == [1]
  assert open_["cost_of_pass_solved"] == pytest.approx(3.5) and open_["best"][1] is None
  with pytest.raises(ValueError, match="'A' and 'C' evaluate different problems"):
    suite.frontier([a, _result("C", {"maj@4": [1.0, 1.0]}, problems=("a", "b"))])
  with pytest.raises(ValueError, match="two members named 'A:greedy'"):
    suite.frontier([a, a])


def test_report_files_round_trip(tmp_path):
  samples_rows = suite.score_strategies(_samples(), ks=(1, 2, 4), alpha=0.5, prices=PRICES)
  a = {**_result("A", {}, problems=("p0", "p1")), "strategies": samples_rows}
  b = _result("B", {"maj@4": [30.0, 60.0]}, problems=("p0", "p1"))
  b["prices"] = a["prices"] = {"in": 1.0, "out": 2.0}
  front = suite.frontier([a, b])
  paths = report.write_report(str(tmp_path / "out"), [a, b], front)
  assert all(os.path.getsize(p) > 0 for p in paths.values())
  with open(paths["results.json"]) as f:
    raw = f.read()
  assert "Infinity" not in raw and json.loads(raw)["frontier"]["members"] == front["members"]
  back = report.load_results(paths["results.json"])
  assert back[0]["strategies"][0]["cost_of_pass"] == INF  # greedy: null -> inf
  assert back[0]["strategies"] == a["strategies"] and suite.frontier(back) == front
  md = open(paths["results.md"]).read()
  assert "| greedy | 0.500 | 4.0 | 2.5 | 9 | ∞ | 18 | ∞ | 5 |" in md
  assert "| pass@4 (oracle) | 1.000 |" in md and "### Frontier cost-of-pass" in md
  with open(paths["accuracy_vs_tokens.png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
