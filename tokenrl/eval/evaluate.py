"""Held-out evaluation: greedy accuracy, pass@k and maj@k with the sampler and a verifier."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from tokenrl.data.prompts import decode_completions
from tokenrl.eval.passk import majority_correct, pass_at_k
from tokenrl.models.config import ModelConfig
from tokenrl.rollout import sample


def evaluate(params: Any, *, config: ModelConfig, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
             prompt_ids: Sequence[Sequence[int]], reward_fn: Callable[[str, Mapping[str, Any]], float],
             max_new_tokens: int, num_samples: int = 0, temperature: float = 1.0,
             batch_size: int = 256, rng: jax.Array | None = None,
             sampler: Callable[..., Any] | None = None) -> dict[str, float]:
  """{'accuracy': greedy accuracy, 'pass@k', 'maj@k' (k = num_samples, if > 0)}.

  A completion counts as correct when reward_fn(...) >= 1 (the exact-answer verifiers return
  0 or 1). The reward functions here run inline: they are the library's own verifiers.
  """
  stops = tuple(tokenizer.eos_token_ids)
  # `sampler(params, ids, **kw)`: e.g. the train loop's mesh-aware Placement.sample.
  draw = (lambda p, ids, **kw: sample(p, ids, config=config, **kw)) if sampler is None else sampler
  rng = jax.random.key(0) if rng is None else rng
  greedy_ok, pass_k, maj_k = [], [], []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    ids = list(prompt_ids[start:start + batch_size])
    out = draw(params, ids, rng=rng, max_new_tokens=max_new_tokens, temperature=0.0,
               stop_tokens=stops)
    texts = decode_completions(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
    greedy_ok += [reward_fn(t, ex) >= 1.0 for t, ex in zip(texts, chunk)]
    if num_samples > 0:
      rng, key = jax.random.split(rng)
      out = draw(params, ids, rng=key, max_new_tokens=max_new_tokens, temperature=temperature,
                 num_samples=num_samples, stop_tokens=stops)
      texts = decode_completions(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
      for i, ex in enumerate(chunk):
        group = texts[i * num_samples:(i + 1) * num_samples]
        ok = [reward_fn(t, ex) >= 1.0 for t in group]
        pass_k.append(pass_at_k(num_samples, sum(ok), num_samples))
        maj_k.append(majority_correct([t.strip() for t in group], ok))
  result = {"accuracy": float(np.mean(greedy_ok))}
  if num_samples > 0:
    result[f"pass@{num_samples}"] = float(np.mean(pass_k))
    result[f"maj@{num_samples}"] = float(np.mean(maj_k))
  return result
