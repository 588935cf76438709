"""Preference pairs: JSONL files, chat-format rendering, the embedded synthetic task, batches.

A pair is a dict {'prompt', 'chosen', 'rejected', **extra}:

  {"prompt": "12+7=", "chosen": "19", "rejected": "18", "answer": "19"}
  {"prompt": [{"role": "user", "content": "2+3?"}],
   "chosen": [{"role": "assistant", "content": "5"}],
   "rejected": [{"role": "assistant", "content": "6"}]}

'prompt' is a string or a list of chat messages; 'chosen'/'rejected' are strings (encoded as
they are, then the tokenizer's eos) or message lists (the assistant turn(s) continuing the
prompt, rendered with the tokenizer's chat template: the completion is the text the full
conversation adds after the prompt rendered with its generation header, as TRL does). An
optional 'answer' makes the pair verifiable (held-out greedy accuracy).

The embedded task (`make_preference_pairs`) turns the verifiable tasks of tokenrl/data/tasks.py
into pairs offline: chosen = the reference answer, rejected = a plausible wrong answer (numeric
off-by-one, one digit ±1, two adjacent characters swapped, one operator changed) that the task's
verifier rejects.

Batches (`preference_batch`) are pair-major so a micro-batch split never separates a pair:
tokens/segment_ids int32 [N,2,P+T] (index 0 chosen, 1 rejected; prompt left-padded to P,
completion right-padded to T) and mask int32 [N,2,T] (1 on completion tokens incl. the end).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tokenrl.data.jsonl import _check_messages, iter_json_objects
from tokenrl.data.prompts import bucket_length, tokenize_prompts

# Completion lengths are bucketed to powers of two from 8 (few compiled shapes, little padding).
COMPLETION_MIN_BUCKET = 8


def _check_completion(value: Any, key: str) -> str | None:
  if isinstance(value, str):
    return None
  if isinstance(value, list):
    problem = _check_messages(value)
    return problem.replace("'prompt'", f"'{key}'") if problem else None
  return f"'{key}' must be a string or a list of messages, got {type(value).__name__}"


def check_pair(pair: Mapping[str, Any], where: str = "pair") -> None:
  """Raises ValueError '<where>: ...' unless `pair` is a valid preference pair (module doc)."""
  missing = [k for k in ("prompt", "chosen", "rejected") if k not in pair]
  if missing:
    raise ValueError(f"{where}: missing key(s) {missing} (have {sorted(pair)})")
  prompt = pair["prompt"]
  if isinstance(prompt, list):
    problem = _check_messages(prompt)
    if problem:
      raise ValueError(f"{where}: {problem}")
  elif not isinstance(prompt, str):
    raise ValueError(f"{where}: 'prompt' must be a string or a list of messages, got "
                     f"{type(prompt).__name__}")
  for key in ("chosen", "rejected"):
    problem = _check_completion(pair[key], key)
    if problem:
      raise ValueError(f"{where}: {problem}")
  if isinstance(pair["chosen"], list) != isinstance(pair["rejected"], list):
    raise ValueError(f"{where}: 'chosen' and 'rejected' must both be strings or both messages")


def read_preference_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Every pair of a JSONL file, in file order (blank lines skipped, extra keys kept).

  Raises:
    FileNotFoundError: no such file.
    ValueError: '<path>:<line>: ...' for malformed JSON or an invalid pair (`check_pair`).
  """
  out = []
  for where, obj in iter_json_objects(path, "read_preference_jsonl"):
    check_pair(obj, where)
    if "answer" in obj and not isinstance(obj["answer"], str):
      obj["answer"] = str(obj["answer"])
    out.append(obj)
  return out


# ------------------------------------------------------------------------------------------
# The embedded synthetic preference task.


def near_miss_candidates(answer: str) -> list[str]:
  """Plausible wrong answers of `answer`, in a fixed order, without duplicates or `answer`.

  Numeric off-by-one (answers that are plain integers), each digit ±1 (no new leading zero of a
  multi-digit integer), each pair of adjacent different characters swapped, each operator among
  + - * replaced by another.
  """
  out: list[str] = []

  def add(c: str) -> None:
    if c and c != answer and c not in out:
      out.append(c)

  if answer.isdigit() and (answer == "0" or answer[0] != "0"):
    add(str(int(answer) + 1))
    if int(answer) > 0:
      add(str(int(answer) - 1))
  for i, ch in enumerate(answer):
    if ch.isdigit():
      for d in (1, -1):
        c = answer[:i] + str((int(ch) + d) % 10) + answer[i + 1:]
        if not (answer.isdigit() and len(c) > 1 and c[0] == "0" and answer[0] != "0"):
          add(c)
    if ch in "+-*":
      for op in "+-*":
        add(answer[:i] + op + answer[i + 1:])
  for i in range(len(answer) - 1):
    if answer[i] != answer[i + 1]:
      add(answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:])
  return out


def near_miss(example: Mapping[str, Any], verifier: Callable[[str, Mapping[str, Any]], float],
              seed: int) -> str:
  """A wrong answer for `example` drawn from `near_miss_candidates` (verifier(c, ex) < 1).

  Deterministic in (seed, prompt), independent of the example's position in a list.
  Raises ValueError if no candidate is wrong (e.g. an empty answer).
  """
  answer = str(example["answer"])
  wrong = [c for c in near_miss_candidates(answer) if verifier(c, example) < 1.0]
  if not wrong:
    raise ValueError(f"near_miss: no wrong near-miss answer for {example['prompt']!r} -> "
                     f"{answer!r}")
  h = int.from_bytes(hashlib.blake2b(str(example["prompt"]).encode(), digest_size=8).digest(), "big")
  rng = np.random.default_rng([int(seed), h])
  return wrong[int(rng.integers(len(wrong)))]


def make_preference_pairs(examples: Sequence[Mapping[str, Any]],
                          verifier: Callable[[str, Mapping[str, Any]], float],
                          seed: int) -> list[dict[str, Any]]:
  """Pairs of verifiable examples: chosen = the reference answer, rejected = `near_miss`.

  Each returned pair keeps the example's keys ('prompt', 'answer', task fields) and adds
  'chosen' and 'rejected'.
  """
  return [{**ex, "chosen": str(ex["answer"]), "rejected": near_miss(ex, verifier, seed)}
          for ex in examples]


# ------------------------------------------------------------------------------------------
# Tokenization and batches.


def _as_messages(prompt: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def encode_pair(tokenizer: Any, pair: Mapping[str, Any], *,
                use_chat_template: bool = False) -> tuple[list[int], list[int], list[int]]:
  """(prompt ids, chosen ids, rejected ids) of one pair.

  String completions: encode(text, add_special_tokens=False) + [eos] (as SFT targets). Message
  completions: render(prompt + completion) minus render(prompt, add_generation_prompt=True),
  tokenized without special tokens (the template's end-of-turn token is part of it). Raises
  ValueError if the full rendering does not start with the prompt rendering.
  """
  prompt = pair["prompt"]
  prompt_ids = tokenize_prompts(tokenizer, [prompt], use_chat_template=bool(use_chat_template)
                                or not isinstance(prompt, str))[0]
  eos = tokenizer.eos_token_ids[0]
  out = []
  for key in ("chosen", "rejected"):
    completion = pair[key]
    if isinstance(completion, str):
      out.append(tokenizer.encode(completion, add_special_tokens=False) + [eos])
      continue
    messages = _as_messages(prompt)
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + list(completion), add_generation_prompt=False,
                                         tokenize=False)
    if not full.startswith(head):
      raise ValueError(f"encode_pair: the chat template renders prompt + '{key}' with a "
                       f"different prefix than the prompt alone: {head[-40:]!r} vs "
                       f"{full[:len(head)][-40:]!r}")
    out.append(tokenizer.encode(full[len(head):], add_special_tokens=False))
  return prompt_ids, out[0], out[1]


def preference_batch(tokenizer: Any, pairs: Sequence[Mapping[str, Any]], *,
                     use_chat_template: bool = False,
                     max_prompt_len: int | None = None) -> tuple[dict[str, np.ndarray], int]:
  """(batch, P): pair-major arrays of N pairs (module docstring) and the prompt length P.

  batch: tokens, segment_ids int32 [N,2,P+T]; mask int32 [N,2,T]. P and T are bucketed
  (`bucket_length`; T from 8). Raises ValueError for a prompt longer than `max_prompt_len` or an
  empty completion.
  """
  if not pairs:
    raise ValueError("preference_batch: pairs is empty (expected N >= 1)")
  enc = [encode_pair(tokenizer, p, use_chat_template=use_chat_template) for p in pairs]
  for i, (prompt, chosen, rejected) in enumerate(enc):
    if max_prompt_len is not None and len(prompt) > max_prompt_len:
      raise ValueError(f"preference_batch: prompt {i} has {len(prompt)} tokens > "
                       f"data.max_prompt_len={max_prompt_len}")
    if not chosen or not rejected:
      raise ValueError(f"preference_batch: pair {i} has an empty completion")
  P = bucket_length(max(len(e[0]) for e in enc))
  T = bucket_length(max(max(len(e[1]), len(e[2])) for e in enc), min_bucket=COMPLETION_MIN_BUCKET)
  n = len(enc)
  tokens = np.full((n, 2, P + T), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((n, 2, P + T), np.int32)
  mask = np.zeros((n, 2, T), np.int32)
  for i, (prompt, *completions) in enumerate(enc):
    for j, c in enumerate(completions):
      tokens[i, j, P - len(prompt):P] = prompt
      tokens[i, j, P:P + len(c)] = c
      # Right padding of the completion stays in segment 1: causal attention keeps it from
      # influencing real tokens, and its mask is 0 (as the RL batches).
      segment_ids[i, j, P - len(prompt):] = 1
      mask[i, j, :len(c)] = 1
  return {"tokens": tokens, "segment_ids": segment_ids, "mask": mask}, P


def completion_sft_batch(batch: Mapping[str, np.ndarray], prompt_len: int,
                         which: int = 0) -> dict[str, np.ndarray]:
  """SFT arrays [N,P+T] (tokens, segment_ids, loss_mask) of row `which` (0 chosen, 1 rejected)
  of every pair, the loss on that completion (`make_sft_step`'s layout)."""
  mask = np.asarray(batch["mask"])[:, which]
  n = mask.shape[0]
  return {"tokens": np.asarray(batch["tokens"])[:, which],
          "segment_ids": np.asarray(batch["segment_ids"])[:, which],
          "loss_mask": np.concatenate([np.zeros((n, prompt_len), np.int32), mask], axis=1)}


def build_preference_data(cfg: Any, run: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                       Callable | None]:
  """(train pairs, held-out pairs, verifier or None) for a run config.

  data.preference_jsonl_path set: the file's pairs; the first max(1, min(data.eval_size, n/10))
  are held out; the verifier is `math_answer_reward` when every held-out pair has an 'answer'.
  Otherwise the embedded pairs of data.task's train / held-out examples (`run.train_examples`,
  `run.eval_examples`) with the task's verifier.
  """
  d = cfg.data
  if d.preference_jsonl_path:
    from tokenrl.data.rewards import math_answer_reward  # pylint: disable=g-import-not-at-top
    pairs = read_preference_jsonl(d.preference_jsonl_path)
    split = max(1, min(d.eval_size, len(pairs) // 10))
    if len(pairs) <= split:
      raise ValueError(f"data.preference_jsonl_path: {len(pairs)} pairs leave none for training")
    held = pairs[:split]
    verifier = math_answer_reward if all("answer" in p for p in held) else None
    return pairs[split:], held, verifier
  train = make_preference_pairs(run.train_examples, run.verifier, cfg.seed)
  held = make_preference_pairs(run.eval_examples, run.verifier, cfg.seed)
  return train, held, run.verifier
