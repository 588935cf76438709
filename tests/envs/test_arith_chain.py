"""arith_chain: rewards per action, observations restate the true result, episode ends."""

import re

import pytest

from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.envs import ArithChainEnv

EXAMPLE = {"prompt": "12+7=", "answer": "19", "task": "arith"}


def _apply(obs):
  a, op, b = re.fullmatch(r"([0-9]+)([-+*])([0-9]+)=", obs).groups()
  a, b = int(a), int(b)
  return a + b if op == "+" else a - b if op == "-" else a * b


def test_correct_episode():
  env = ArithChainEnv(turns=3, ops="+-*", max_operand=9)
  state, first = env.reset(EXAMPLE, seed=0)
  assert first == "12+7="
  res = env.step(state, "19", closed=True)
  assert res.reward == 1.0 and res.correct and not res.done
  assert res.observation.startswith("19")
  res2 = env.step(state, str(_apply(res.observation)), closed=True)
  assert res2.reward == 1.0 and not res2.done
  res3 = env.step(state, str(_apply(res2.observation)), closed=True)
  assert res3.reward == 1.0 and res3.done and res3.observation is None
  with pytest.raises(ValueError, match="already done"):
    env.step(state, "1", closed=True)


def test_wrong_answer_continues_on_the_true_result():
  env = ArithChainEnv(turns=2)
  state, _ = env.reset(EXAMPLE, seed=1)
  res = env.step(state, "18", closed=True)
  assert res.reward == 0.0 and not res.done and res.observation.startswith("19")


@pytest.mark.parametrize("action,closed", [("1a", True), ("", True), ("19", False)])
def test_invalid_or_unclosed_action_ends_the_episode(action, closed):
  env = ArithChainEnv(turns=3)
  state, _ = env.reset(EXAMPLE, seed=0)
  res = env.step(state, action, closed=closed)
  assert res.done and res.observation is None
  assert res.reward == (1.0 if action == "19" else 0.0)


def test_deterministic_nonnegative_and_in_vocabulary():
  env = ArithChainEnv(turns=4, ops="-", max_operand=9)
  tok = CharTokenizer()
  for seed in range(20):
    obs_a, obs_b = [], []
    for out in (obs_a, obs_b):
      state, _ = env.reset({"prompt": "1-1=", "answer": "0"}, seed=(3, seed))
      while not state.done:
        res = env.step(state, str(state.target), closed=True)
        if res.observation:
          out.append(res.observation)
          tok.encode(res.observation)                    # every character is in the vocabulary
          assert _apply(res.observation) >= 0
    assert obs_a == obs_b


def test_bad_arguments():
  with pytest.raises(ValueError, match="turns"):
    ArithChainEnv(turns=0)
  with pytest.raises(ValueError, match="ops"):
    ArithChainEnv(ops="/")
  with pytest.raises(ValueError, match="max_operand"):
    ArithChainEnv(max_operand=0)
  with pytest.raises(ValueError, match="example"):
    ArithChainEnv().reset({"prompt": "sort 312=", "answer": "123x"}, seed=0)
