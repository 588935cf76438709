"""LaSeR self-rewards at test time: self-verification, best-of-N, weighted majority (spec §5(b)).

    score = clip(β_v·(log π_θ(z_c | x, y) − c_ref), 0, 1)

read from the policy's next-token distribution right after the completion's EOS (one forward
over prompt + completion; appending z_c is unnecessary because only the distribution *at* the
slot after EOS is needed). Completions without EOS (truncated) score 0, as in training.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("config", "token_id"))
def _logp_after_eos(params, tokens, segment_ids, last, *, config, token_id):
  hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=segment_ids,
                                  return_hidden=True)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)                   # [N,1,D]
  logits = transformer.unembed(params, h, config=config)[:, 0]                   # [N,V]
  return jax.nn.log_softmax(logits, axis=-1)[:, token_id]


def self_reward_scores(params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                       completions: np.ndarray, mask: np.ndarray, *, config: ModelConfig,
                       token_id: int, beta_v: float = 0.1, c_ref: float = -23.0,
                       clip: bool = True) -> np.ndarray:
  """Self-rewards [N] of completions [N,T] (mask [N,T] 1 up to and including EOS).

  prompt_tokens/prompt_mask [N,P] left-padded (a Rollout's prompt_tokens/prompt_mask). Rows
  whose completion holds no EOS of config.eos_ids get 0. `clip`: clip to [0, 1] (test time);
  False returns the raw r_s.
  """
  prompt_tokens, completions = np.asarray(prompt_tokens), np.asarray(completions)
  mask = np.asarray(mask)
  if completions.ndim != 2 or mask.shape != completions.shape:
    raise ValueError(f"mask: expected shape {completions.shape}, got {mask.shape}")
  if prompt_tokens.ndim != 2 or prompt_tokens.shape[0] != completions.shape[0]:
    raise ValueError(f"prompt_tokens: expected shape ({completions.shape[0]}, P), "
                     f"got {prompt_tokens.shape}")
  if not 0 <= token_id < config.vocab_size:
    raise ValueError(f"token_id: expected an id in [0, {config.vocab_size}), got {token_id}")
  p = prompt_tokens.shape[1]
  lengths = mask.sum(1).astype(np.int32)
  last_tok = completions[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
  finished = (lengths > 0) & np.isin(last_tok, np.asarray(config.eos_ids))
  tokens = np.concatenate([prompt_tokens, completions], 1).astype(np.int32)
  seg = np.concatenate([np.asarray(prompt_mask), np.ones_like(completions)], 1).astype(np.int32)
  last = (p + np.maximum(lengths, 1) - 1).astype(np.int32)                         # EOS position
  lpz = np.asarray(_logp_after_eos(params, jnp.asarray(tokens), jnp.asarray(seg),
                                   jnp.asarray(last), config=config, token_id=int(token_id)))
  r = beta_v * (lpz.astype(np.float64) - c_ref)
  if clip:
    r = np.clip(r, 0.0, 1.0)
  return np.where(finished, r, 0.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BestOfN:
  """tokens/mask [B,T]: the chosen completion per prompt; index [B] its sample index;
  scores [B,n] every sample's clipped self-reward; all_tokens/all_mask [B·n,T] the samples."""

  tokens: np.ndarray
  mask: np.ndarray
  index: np.ndarray
  scores: np.ndarray
  all_tokens: np.ndarray
  all_mask: np.ndarray


def laser_best_of_n(params: Any, prompts: Sequence[Sequence[int]], *, config: ModelConfig,
                    rng: jax.Array, n: int, max_new_tokens: int, token_id: int,
                    beta_v: float = 0.1, c_ref: float = -23.0, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0,
                    stop_tokens: Sequence[int] | None = None) -> BestOfN:
  """Sample n completions per prompt, score each by its self-reward, keep the argmax (LaSeR).

  prompts: B token-id lists. Ties (e.g. all 0) keep the first sample.
  """
  from tokenrl.rollout import sample  # pylint: disable=g-import-not-at-top
  if n < 1:
    raise ValueError(f"n: expected >= 1, got {n}")
  ro = sample(params, [list(p) for p in prompts], config=config, rng=rng,
              max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
              num_samples=n, stop_tokens=stop_tokens)
  toks, mask = np.asarray(ro.tokens), np.asarray(ro.mask)
  scores = self_reward_scores(params, np.asarray(ro.prompt_tokens), np.asarray(ro.prompt_mask),
                              toks, mask, config=config, token_id=token_id, beta_v=beta_v,
                              c_ref=c_ref).reshape(-1, n)
  index = scores.argmax(axis=1)
  rows = np.arange(scores.shape[0]) * n + index
  return BestOfN(tokens=toks[rows], mask=mask[rows], index=index, scores=scores,
                 all_tokens=toks, all_mask=mask)


def weighted_majority_vote(answers: Sequence[str], scores: Sequence[float]) -> str:
  """a* = argmax_a Σ_{i: ans_i = a} clip(r_s^i, 0, 1) (first-seen answer wins ties)."""
  if len(answers) != len(scores) or not answers:
    raise ValueError(f"answers, scores: expected equal non-zero lengths, got {len(answers)}, "
                     f"{len(scores)}")
  total: dict[str, float] = collections.OrderedDict()
  for a, s in zip(answers, scores):
    total[a] = total.get(a, 0.0) + float(np.clip(s, 0.0, 1.0))
  return max(total, key=lambda a: total[a])
