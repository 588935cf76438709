"""evaluate(): verifiers run through a timed runner, so a completion that makes the verifier
hang costs timeout_s (and scores as not correct), never an unbounded stall."""
import time
import types

import numpy as np

from tests.data import faulty_rewards as fr
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.reward_runner import RewardRunner
from tokenrl.eval.evaluate import evaluate

TOK = CharTokenizer()


def _fake_sampler(greedy, sampled):
  """A sampler that returns fixed texts: greedy [B], sampled [B*G] (group layout)."""
  def draw(params, ids, *, temperature, num_samples=1, **kw):
    del params, ids, kw
    texts = greedy if temperature == 0.0 else sampled
    rows = [TOK.encode(t, add_special_tokens=False) + [TOK.eos_token_ids[0]] for t in texts]
    T = max(len(r) for r in rows)
    tokens = np.full((len(rows), T), TOK.pad_id, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for n, r in enumerate(rows):
      tokens[n, :len(r)], mask[n, :len(r)] = r, 1
    return types.SimpleNamespace(tokens=tokens, mask=mask)
  return draw


def _run(reward_fn, **kw):
  examples = [{"answer": "a"}, {"answer": "b"}]
  draw = _fake_sampler(["a", "c"], ["a", "a", "c", "b"])
  return evaluate(None, config=None, tokenizer=TOK, examples=examples, prompt_ids=[[3], [4]],
                  reward_fn=reward_fn, max_new_tokens=4, num_samples=2, sampler=draw, **kw)


def test_hanging_verifier_times_out_and_is_not_correct():
  t0 = time.monotonic()
  # sleeps_on_c sleeps 30 s on 'c' (else returns 2.0 >= 1: correct).
  got = _run(fr.sleeps_on_c, reward_timeout_s=0.5)
  assert time.monotonic() - t0 < 20
  # greedy: 'a' ok, 'c' timed out -> 1/2. Samples: [a, a] 2/2, [c, b] 1/2.
  assert got["accuracy"] == 0.5 and got["pass@2"] == 1.0


def test_caller_scorer_and_closures():
  with RewardRunner({"verifier": fr.answer_reward}, timeout_s=5.0, max_workers=1) as runner:
    got = _run(fr.answer_reward, scorer=runner)
  assert got["accuracy"] == 0.5 and got["pass@2"] == 1.0
  # An unpicklable verifier (a notebook lambda) still runs, on the thread backend.
  got = _run(lambda c, e: float(c == e["answer"]))
  assert got["accuracy"] == 0.5
