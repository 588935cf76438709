"""A long-context retrieval task: a key planted in random filler, copied back at the end.

    prompt = <filler> "key:" <d1..dk> "." <filler> "?key:"      answer = <d1..dk>

The filler is random lowercase letters and spaces (never a digit, ':' or '?'), so the key's
digits are the only digits of the prompt and "key:" occurs exactly twice (the plant and the
question). The plant starts at a uniform depth in [min_depth, length − tail) characters.
Sized for the `CharTokenizer` (one token per character): a prompt of `length` characters is
`length` + 1 tokens with <bos>. Used by benchmarks/tokenselect.py to compare full attention with
TokenSelect (the key must be selected for the copy to succeed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

FILLER_CHARS = "abcdefghijklmnopqrstuvwxyz     "  # spaces weighted 5/31 so "words" form
PLANT = "key:"
QUESTION = "?key:"


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
  """prompt (length characters), answer (the key digits), key_start (index of the first digit)."""

  prompt: str
  answer: str
  key_start: int


def make_example(rng: np.random.Generator, *, length: int, key_digits: int = 4,
                 min_depth: int = 0) -> RetrievalExample:
  """One example of exactly `length` prompt characters.

  Args:
    rng: numpy Generator (the only source of randomness).
    length: prompt characters, >= len('key:') + key_digits + 1 + len('?key:') + min_depth.
    key_digits: digits of the key (the answer), >= 1.
    min_depth: smallest character index at which the plant "key:" may start.
  """
  plant_len = len(PLANT) + key_digits + 1  # "key:" digits "."
  room = length - len(QUESTION) - plant_len
  if key_digits < 1:
    raise ValueError(f"key_digits must be >= 1, got {key_digits}")
  if min_depth < 0 or room < min_depth:
    raise ValueError(f"length={length} leaves {room} filler characters, fewer than "
                     f"min_depth={min_depth} (need length >= {len(QUESTION) + plant_len + min_depth})")
  depth = int(rng.integers(min_depth, room + 1))
  chars = np.asarray(list(FILLER_CHARS))
  filler = "".join(rng.choice(chars, size=room))
  key = "".join(str(d) for d in rng.integers(0, 10, size=key_digits))
  prompt = filler[:depth] + PLANT + key + "." + filler[depth:] + QUESTION
  return RetrievalExample(prompt=prompt, answer=key, key_start=depth + len(PLANT))


def make_examples(count: int, seed: int, *, length: int, key_digits: int = 4,
                  min_depth: int = 0) -> list[RetrievalExample]:
  """`count` examples drawn from np.random.default_rng(seed) (deterministic)."""
  rng = np.random.default_rng(seed)
  return [make_example(rng, length=length, key_digits=key_digits, min_depth=min_depth)
          for _ in range(count)]


def training_batch(tokenizer: Any, examples: Sequence[RetrievalExample]):
  """(tokens int32 [B,S+1], loss mask f32 [B,S]) for next-token training on the answer.

  Row = [bos] prompt answer [eos]; all rows have the same length (same prompt length and key
  digits required). mask[b, i] = 1 where target tokens[b, i+1] is an answer digit or the eos.
  """
  rows = [tokenizer.encode(e.prompt) + tokenizer.encode(e.answer, add_special_tokens=False)
          + [tokenizer.eos_token_ids[0]] for e in examples]
  if len({len(r) for r in rows}) != 1:
    raise ValueError(f"examples must share prompt length and key digits, got row lengths "
                     f"{sorted({len(r) for r in rows})}")
  tokens = np.asarray(rows, np.int32)
  answer_len = len(examples[0].answer) + 1
  mask = np.zeros((tokens.shape[0], tokens.shape[1] - 1), np.float32)
  mask[:, -answer_len:] = 1.0
  return tokens, mask


def exact_match(completions: Sequence[str], examples: Sequence[RetrievalExample]) -> float:
  """Fraction of completions whose first len(answer) characters equal the answer."""
  if len(completions) != len(examples):
    raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
  hits = [c[:len(e.answer)] == e.answer for c, e in zip(completions, examples)]
  return float(np.mean(hits)) if hits else 0.0
