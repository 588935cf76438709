"""`arith_chain`: a multi-turn arithmetic environment whose actions are several tokens (POAD).

An episode starts from an `arith` task example and lasts up to K turns:

  observation 0   the example's prompt                 '12+7='
  action 1        a number, then the delimiter         '19;'   reward 1 if 19 is the result
  observation 1   the next query on the true result    '19+5='
  action 2                                             '24;'   reward 1 ...
  ...             after K actions the episode ends.

Each action's reward is local (1.0 if its number is the result of the query it answers, else
0.0), so a token-level critic has something to learn per action. The observation restates the
true running result (not the agent's answer), so numbers stay bounded and a wrong action does
not change the difficulty of the next one. The episode also ends early when an action is not a
number or is not closed by the delimiter (the agent stopped, or ran out of its token budget).
Plain Python: no JAX, no tokenizer (texts in, texts out); every character is in CharTokenizer.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

NAME = "arith_chain"
_NUMBER = re.compile(r"^-?[0-9]+$")


@dataclasses.dataclass
class ChainState:
  """One episode: `target` = the result the next action must give; `turn` = actions taken."""

  target: int
  turn: int
  rng: np.random.Generator
  done: bool = False


@dataclasses.dataclass(frozen=True)
class StepResult:
  """reward of the action; observation (text of the next query) or None when `done`."""

  reward: float
  observation: str | None
  done: bool
  correct: bool


@dataclasses.dataclass(frozen=True)
class ArithChainEnv:
  """K-turn running arithmetic. turns = K >= 1; ops ⊆ '+-*'; operands of later queries are
  uniform in [1, max_operand]; a '-' whose operand exceeds the running result becomes '+'
  (results stay >= 0)."""

  turns: int = 3
  ops: str = "+-"
  max_operand: int = 9

  def __post_init__(self):
    if not isinstance(self.turns, int) or self.turns < 1:
      raise ValueError(f"turns: expected an int >= 1, got {self.turns!r}")
    if not self.ops or set(self.ops) - set("+-*"):
      raise ValueError(f"ops: expected a non-empty subset of '+-*', got {self.ops!r}")
    if not isinstance(self.max_operand, int) or self.max_operand < 1:
      raise ValueError(f"max_operand: expected an int >= 1, got {self.max_operand!r}")

  def reset(self, example: Mapping[str, Any], seed: int | Sequence[int]) -> tuple[ChainState, str]:
    """(state, first observation) of an episode on `example` ({"prompt": "a+b=", "answer": "c"});
    `seed` (an int or ints) seeds the follow-up queries."""
    prompt, answer = example.get("prompt"), str(example.get("answer", ""))
    if not isinstance(prompt, str) or not prompt.endswith("=") or not _NUMBER.match(answer):
      raise ValueError(f"example: expected an arithmetic example with 'prompt' ending in '=' and "
                       f"an integer 'answer' (data.task='arith'), got {dict(example)!r}")
    return ChainState(target=int(answer), turn=0, rng=np.random.default_rng(seed)), prompt

  def step(self, state: ChainState, action: str, *, closed: bool) -> StepResult:
    """Score `action` (its text without the delimiter) and advance `state` in place.

    closed: the action ended with the delimiter. An unclosed action (stop token, token budget)
    or one that is not an integer ends the episode after it is scored.
    """
    if state.done:
      raise ValueError("state: the episode is already done")
    valid = bool(_NUMBER.match(action))
    correct = valid and int(action) == state.target
    state.turn += 1
    state.done = state.turn >= self.turns or not closed or not valid
    if state.done:
      return StepResult(float(correct), None, True, correct)
    op = self.ops[int(state.rng.integers(len(self.ops)))]
    b = int(state.rng.integers(1, self.max_operand + 1))
    if op == "-" and b > state.target:
      op = "+"
    observation = f"{state.target}{op}{b}="
    state.target = (state.target + b if op == "+" else state.target - b if op == "-"
                    else state.target * b)
    return StepResult(float(correct), observation, False, correct)


ENVS = {NAME: ArithChainEnv}
