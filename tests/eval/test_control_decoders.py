"""The evaluation-only decoders as sampler.control methods (tokenrl/eval/control_build.py):
'cntp' with h_lo above every entropy is `sample` through the suite's `collect`; 'soft_thinking'
greedy is greedy `sample` and it also samples; bad keys are named; training refuses both;
`tokenrl eval` / `tokenrl sample --control cntp|soft_thinking` run end to end.

Shapes are shared (2 prompts, n = 2, 5 new tokens) so each engine compiles once per row count.
"""

import os

import jax
import numpy as np
import pytest

from tests.eval.test_cli_eval import _cli, hf_folder, workdir  # noqa: F401 (fixtures)
from tests.eval.test_suite import TINY, TOK, has_digit, tiny_params
from tests.robustness.conftest import tiny_config
from tokenrl.config import CONTROL_METHODS, EVAL_ONLY_CONTROLS, base_config, control_config
from tokenrl.data.reward_runner import RewardRunner
from tokenrl.eval import report, suite
from tokenrl.eval.control_build import (ControlDecoder, build_control, build_decoder, describe,
                                        parse_punctuation)
from tokenrl.rollout import CNTP_PUNCTUATION, CNTPStats, SoftThinkInfo, sample
from tokenrl.train.validate import validate_config

EXAMPLES = [{"prompt": p, "answer": "0"} for p in ("1+2=", "17-3=")]
IDS = [TOK.encode(e["prompt"]) for e in EXAMPLES]
T, N = 5, 2


def _control(**kw):
  c = control_config()
  for k, v in kw.items():
    c[k] = v
  return c


def _recording(fn, calls):
  """fn with every call's (temperature, tokens, mask) appended to `calls`."""
  def draw(params, ids, **kw):
    out = fn(params, ids, **kw)
    calls.append((kw["temperature"], np.asarray(out.tokens), np.asarray(out.mask)))
    return out
  return draw


def _collect(sampler, runner):
  samples, _ = suite.collect(
      tiny_params(), config=TINY, tokenizer=TOK, examples=EXAMPLES, prompt_ids=IDS,
      reward_fn=None, scorer=runner, answer_fn=suite.answer_fn_for("arith"), n=N,
      max_new_tokens=T, temperature=1.0, top_p=0.95, rng=jax.random.key(3), sampler=sampler)
  return samples


@pytest.fixture(scope="module")
def runner():
  # Thread workers: a process worker would import this test module (jax and all) to unpickle it.
  with RewardRunner({"verifier": has_digit}, timeout_s=5.0, max_workers=1,
                    backend="thread") as r:
    yield r


def test_config_lists_the_decoders():
  assert set(EVAL_ONLY_CONTROLS) == {"cntp", "soft_thinking"}
  assert set(EVAL_ONLY_CONTROLS) < set(CONTROL_METHODS)
  c = control_config()
  # The reference's set, less what the char vocabulary lacks; one token each there.
  assert parse_punctuation(c.punctuation) == tuple(
      p for p in CNTP_PUNCTUATION if p not in ("]", "}"))
  assert len(set(TOK.encode(p, add_special_tokens=False)[0] for p in CNTP_PUNCTUATION[:-2])) == 8
  assert (c.max_trials, c.h_lo, c.h_hi, c.max_trial_tokens) == (10, 0.01, 1.5, 16)
  assert (c.max_topk, c.min_p, c.cold_stop_entropy, c.cold_stop_length) == (10, 0.001, 0.01, 256)


def test_parse_punctuation_escapes():
  assert parse_punctuation("") == ()
  assert parse_punctuation(r".,\,,\n,\t,\\") == (".", ",", "\n", "\t", "\\")
  assert parse_punctuation(".,\n") == (".", "\n")  # a real newline is taken as it is
  assert parse_punctuation("ab,c") == ("ab", "c")


@pytest.mark.slow  # ~30 s on 2 shared cores: two CNTP and two `sample` compiles
def test_cntp_with_h_lo_above_every_entropy_is_sample_through_collect(runner):
  # (Small max_trials / max_trial_tokens: the branch path is compiled even when never taken.)
  decoder = build_decoder(_control(method="cntp", h_lo=1e9, h_hi=2e9, max_trials=2,
                                   max_trial_tokens=2), TOK, config=TINY)
  assert isinstance(decoder, ControlDecoder) and decoder.last_info is None
  got, want = [], []
  s_cntp = _collect(_recording(decoder, got), runner)
  s_plain = _collect(_recording(lambda p, ids, **kw: sample(p, ids, config=TINY, **kw), want),
                     runner)
  assert [c[0] for c in got] == [0.0, 1.0]  # one greedy call, one sampled call (n = 2)
  for (_, tok_a, mask_a), (_, tok_b, mask_b) in zip(got, want, strict=True):
    np.testing.assert_array_equal(tok_a, tok_b)
    np.testing.assert_array_equal(mask_a, mask_b)
  np.testing.assert_array_equal(s_cntp.correct, s_plain.correct)
  np.testing.assert_array_equal(s_cntp.lengths, s_plain.lengths)
  np.testing.assert_array_equal(s_cntp.greedy_correct, s_plain.greedy_correct)
  stats = decoder.last_info
  assert isinstance(stats, CNTPStats) and len(decoder.infos) == 2
  assert stats.branch_points == 0 and stats.sampled_tokens == stats.emitted


def test_cntp_branches_inside_the_band():
  decoder = build_decoder(_control(method="cntp", h_lo=0.0, h_hi=0.5, max_trials=3,
                                   max_trial_tokens=2), TOK, config=TINY)
  out = decoder(tiny_params(), IDS, rng=jax.random.key(0), max_new_tokens=T, temperature=1.0,
                stop_tokens=tuple(TOK.eos_token_ids))
  stats = decoder.last_info
  assert np.asarray(out.tokens).shape == (len(IDS), T)
  # An untrained model's entropy (~ log 58 nats) is above the band: every step branches.
  assert stats.branch_points > 0 and stats.sampled_tokens > stats.emitted


def test_soft_thinking_greedy_is_greedy_sample_and_it_samples(runner):
  decoder = build_decoder(_control(method="soft_thinking"), TOK, config=TINY)
  calls, plain = [], []
  _collect(_recording(decoder, calls), runner)
  _collect(_recording(lambda p, ids, **kw: sample(p, ids, config=TINY, **kw), plain), runner)
  (t0, tok_g, mask_g), (t1, tok_s, mask_s) = calls
  assert (t0, t1) == (0.0, 1.0)
  # Greedy: max_topk 1 (argmax embeddings) and a greedy answer = greedy `sample`.
  np.testing.assert_array_equal(tok_g, plain[0][1])
  np.testing.assert_array_equal(mask_g, plain[0][2])
  assert tok_s.shape == (len(IDS) * N, T) and mask_s[:, 0].all()
  info = decoder.last_info
  assert isinstance(info, SoftThinkInfo) and len(decoder.infos) == 2
  soft = np.asarray(info.soft)
  assert soft.shape == (len(IDS) * N, T)
  np.testing.assert_array_equal(np.asarray(info.thinking_steps), soft.sum(-1))


def test_build_decoder_none_for_logit_processors_and_build_control_none_for_decoders():
  for method in ("none", "cyclic_reflex", "budget"):
    assert build_decoder(_control(method=method), TOK, config=TINY) is None
  for method in EVAL_ONLY_CONTROLS:
    assert build_control(_control(method=method, think_end="</think>"), TOK, dim=32,
                         vocab_size=58) == (None, None)
  assert describe(_control(method="cntp")) == {
      "method": "cntp", "punctuation": control_config().punctuation, "max_trials": 10,
      "h_lo": 0.01, "h_hi": 1.5, "max_trial_tokens": 16}
  assert describe(_control(method="soft_thinking")) == {
      "method": "soft_thinking", "think_end": "#", "max_topk": 10, "min_p": 0.001,
      "cold_stop_entropy": 0.01, "cold_stop_length": 256}


@pytest.mark.parametrize("kw,message", [
    ({"punctuation": ".,wait"}, r"sampler.control.punctuation: 'wait' is 4 tokens"),
    ({"punctuation": ".,,?"}, r"sampler.control.punctuation: empty item"),
    ({"punctuation": r"\x"}, r"sampler.control.punctuation: unknown escape"),
    ({"punctuation": ".,]"}, r"sampler.control.punctuation: CharTokenizer.encode: character '\]'"),
    ({"max_trials": 0}, r"sampler.control.max_trials: expected an integer >= 1"),
    ({"max_trial_tokens": 0}, r"sampler.control.max_trial_tokens: expected"),
    ({"h_hi": 0.01}, r"sampler.control.h_hi: expected more nats than"),
    ({"h_lo": float("nan")}, r"sampler.control.h_lo: expected a finite"),
    ({"method": "soft_thinking", "think_end": ""}, r"sampler.control.think_end: soft_thinking"),
    ({"method": "soft_thinking", "think_end": "</think>"}, r"sampler.control.think_end: '</t"),
    ({"method": "soft_thinking", "max_topk": 0}, r"sampler.control.max_topk: expected an integer"),
    ({"method": "soft_thinking", "max_topk": 59}, r"sampler.control.max_topk: .*\[1, 58\]"),
    ({"method": "soft_thinking", "min_p": 1.0}, r"sampler.control.min_p: expected a number in"),
    ({"method": "soft_thinking", "cold_stop_entropy": -1.0}, r"sampler.control.cold_stop_entropy"),
    ({"method": "soft_thinking", "cold_stop_length": 0}, r"sampler.control.cold_stop_length"),
])
def test_build_decoder_errors_name_the_key(kw, message):
  with pytest.raises(ValueError, match=message):
    build_decoder(_control(**{"method": "cntp", **kw}), TOK, config=TINY)


def test_a_decoder_takes_no_logit_processor():
  decoder = build_decoder(_control(method="cntp"), TOK, config=TINY)
  with pytest.raises(ValueError, match=r"sampler.control.method='cntp' is a decoder of its own"):
    decoder(tiny_params(), IDS, rng=jax.random.key(0), max_new_tokens=T,
            logit_processor=lambda *a: a)


@pytest.mark.parametrize("method", EVAL_ONLY_CONTROLS)
def test_training_refuses_the_decoders(method, tmp_path):
  cfg = tiny_config()
  cfg.sampler.control.method = method
  with pytest.raises(ValueError, match=rf"sampler.control.method = '{method}': must be one of "
                                       r"\['none', 'cyclic_reflex', 'budget'\] for training .*"
                                       r"`tokenrl eval` / `tokenrl sample`.*"
                                       r"fix: --config.sampler.control.method=none"):
    validate_config(cfg)
  from tokenrl.train.rl_loop import build_rl, train  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=rf"sampler.control.method = '{method}'"):
    train(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")
  # A direct caller of the phase builder (no start-up validation) is refused too.
  with pytest.raises(ValueError, match=rf"sampler.control.method='{method}' is an evaluation"):
    build_rl(cfg, str(tmp_path / "w2"))


def test_validate_checks_the_decoder_keys():
  cfg = base_config()
  cfg.sampler.control.method = "cntp"
  cfg.sampler.control.h_hi, cfg.sampler.control.max_trials = 0.0, 0
  with pytest.raises(ValueError, match=r"3 problems") as e:
    validate_config(cfg)
  assert "sampler.control.h_hi = 0.0" in str(e.value)
  assert "sampler.control.max_trials = 0" in str(e.value)
  cfg = base_config()
  cfg.sampler.control.method = "soft_thinking"
  cfg.sampler.control.min_p, cfg.sampler.control.cold_stop_length = 1.0, 0
  with pytest.raises(ValueError, match=r"3 problems") as e:
    validate_config(cfg)
  assert "sampler.control.min_p = 1.0" in str(e.value)
  assert "sampler.control.cold_stop_length = 0" in str(e.value)


@pytest.mark.parametrize("method", EVAL_ONLY_CONTROLS)
def test_tokenrl_eval_with_a_decoder(method, workdir, tmp_path, capsys):  # noqa: F811
  out = str(tmp_path / "report")
  _cli("eval", f"--workdir={workdir}", f"--control={method}", "--strategies=greedy,pass,maj",
       "--n=2", "--k=1,2", "--limit=2", f"--out={out}")
  text = capsys.readouterr().out
  assert f"control: {method} (" in text and "| pass@2 (oracle) |" in text
  (res,) = report.load_results(os.path.join(out, "results.json"))
  assert res["control"]["method"] == method and res["num_problems"] == 2
  key = "max_trials" if method == "cntp" else "max_topk"
  assert res["control"][key] == 10


@pytest.mark.parametrize("method,line", [("cntp", "[cntp] steps="),
                                         ("soft_thinking", "[soft_thinking] thinking steps")])
def test_tokenrl_sample_with_a_decoder(method, line, hf_folder, capsys):  # noqa: F811
  _cli("sample", f"--model={hf_folder}", "--prompt=1+2=", "--prompt=17-3=", f"--control={method}",
       f"--max_new_tokens={T}", "--num_samples=2", "--temperature=1.0")
  got = capsys.readouterr()
  assert line in got.err and "[0.0] 1+2=" in got.out and "[1.1] 17-3=" in got.out


def test_tokenrl_sample_refuses_a_decoder_with_speculative_decoding(hf_folder):  # noqa: F811
  from absl import app  # pylint: disable=g-import-not-at-top
  with pytest.raises(app.UsageError,
                     match=r"--control and --speculative cannot be combined \(control 'cntp'\)"):
    _cli("sample", f"--model={hf_folder}", "--prompt=1+2=", "--control=cntp",
         "--speculative=exact", "--max_new_tokens=4")
