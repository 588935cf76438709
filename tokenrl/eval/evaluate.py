"""Held-out evaluation: greedy accuracy, pass@k and maj@k with the sampler and a verifier."""

from __future__ import annotations

import pickle
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from tokenrl.data.prompts import decode_completions
from tokenrl.data.reward_runner import RewardOutput, RewardRunner
from tokenrl.eval.passk import majority_correct, pass_at_k
from tokenrl.models.config import ModelConfig
from tokenrl.rollout import sample


def evaluate(params: Any, *, config: ModelConfig, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
             prompt_ids: Sequence[Sequence[int]], reward_fn: Callable[[str, Mapping[str, Any]], float],
             max_new_tokens: int, num_samples: int = 0, temperature: float = 1.0,
             batch_size: int = 256, rng: jax.Array | None = None,
             sampler: Callable[..., Any] | None = None,
             scorer: Callable[[Sequence[str], Sequence[Mapping[str, Any]]], RewardOutput] | None = None,
             reward_timeout_s: float = 5.0) -> dict[str, float]:
  """{'accuracy': greedy accuracy, 'pass@k', 'maj@k' (k = num_samples, if > 0)}.

  A completion counts as correct when its verifier score is >= 1 (the exact-answer verifiers
  return 0 or 1). Verifiers never run inline: a hostile completion can make one hang, so every
  score goes through a timed runner, where a timeout or an error scores 0 (not correct).

  Args:
    reward_fn: the verifier, fn(completion, example) -> float.
    scorer: scorer(texts [M], examples [M or M/G]) -> RewardOutput, e.g. a long-lived
      `RewardRunner({'verifier': reward_fn}, timeout_s=..., max_workers=...)` owned by the
      caller (the train loop), whose `.rewards` are the verifier's scores. None: a runner over
      `reward_fn` is started for this call and closed at its end (process workers when
      reward_fn pickles, threads otherwise), each call limited to `reward_timeout_s` seconds.
  """
  stops = tuple(tokenizer.eos_token_ids)
  # `sampler(params, ids, **kw)`: e.g. the train loop's mesh-aware Placement.sample.
  draw = (lambda p, ids, **kw: sample(p, ids, config=config, **kw)) if sampler is None else sampler
  rng = jax.random.key(0) if rng is None else rng
  if scorer is not None:
    return _evaluate(params, draw, scorer, tokenizer, examples, prompt_ids, max_new_tokens,
                     num_samples, temperature, batch_size, rng, stops)
  with verifier_runner(reward_fn, reward_timeout_s) as runner:
    return _evaluate(params, draw, runner, tokenizer, examples, prompt_ids, max_new_tokens,
                     num_samples, temperature, batch_size, rng, stops)


def verifier_runner(reward_fn: Callable[[str, Mapping[str, Any]], float],
                    timeout_s: float) -> RewardRunner:
  """A one-worker timed RewardRunner over the verifier (use as a context manager): process
  workers when reward_fn pickles, threads otherwise (a notebook lambda: still timed, a hung
  thread is abandoned); its `.rewards` are the verifier's scores."""
  try:
    pickle.dumps(reward_fn)
    backend = "process"
  except Exception:  # pylint: disable=broad-except
    backend = "thread"
  return RewardRunner({"verifier": reward_fn}, timeout_s=timeout_s, max_workers=1,
                      backend=backend)


def _evaluate(params, draw, scorer, tokenizer, examples, prompt_ids, max_new_tokens,
              num_samples, temperature, batch_size, rng, stops) -> dict[str, float]:
  """The loop of `evaluate`; `scorer(texts, examples).rewards >= 1` marks correct texts."""
  greedy_ok, pass_k, maj_k = [], [], []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    ids = list(prompt_ids[start:start + batch_size])
    out = draw(params, ids, rng=rng, max_new_tokens=max_new_tokens, temperature=0.0,
               stop_tokens=stops)
    texts = decode_completions(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
    greedy_ok += (np.asarray(scorer(texts, list(chunk)).rewards) >= 1.0).tolist()
    if num_samples > 0:
      rng, key = jax.random.split(rng)
      out = draw(params, ids, rng=key, max_new_tokens=max_new_tokens, temperature=temperature,
                 num_samples=num_samples, stop_tokens=stops)
      texts = decode_completions(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
      # [B*G] in group layout: text n belongs to chunk[n // G].
      correct = (np.asarray(scorer(texts, list(chunk)).rewards) >= 1.0).tolist()
      for i in range(len(chunk)):
        group = texts[i * num_samples:(i + 1) * num_samples]
        ok = correct[i * num_samples:(i + 1) * num_samples]
        pass_k.append(pass_at_k(num_samples, sum(ok), num_samples))
        maj_k.append(majority_correct([t.strip() for t in group], ok))
  result = {"accuracy": float(np.mean(greedy_ok))}
  if num_samples > 0:
    result[f"pass@{num_samples}"] = float(np.mean(pass_k))
    result[f"maj@{num_samples}"] = float(np.mean(maj_k))
  return result
