"""Completion forwards: the log-probs / hidden states of a completion under given params.

Pure functions of `tokenrl.models` and `tokenrl.objectives`, used by the jitted train steps
(tokenrl/train/steps.py re-exports them) and by methods that score with frozen models (cDPO's
positive / negative models, RTO's DPO model). They live here, below the train layer, so a
method never imports tokenrl.train (DESIGN §1: layers import downward only).

tokens / segment_ids [N,P+T]: left-padded prompt then completion (P = prompt_len); the outputs
cover the T completion positions.
"""

from __future__ import annotations

from typing import Any

import jax

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import token_logprobs


def completion_logprobs(params: Any, tokens: jax.Array, segment_ids: jax.Array, prompt_len: int,
                        *, config: ModelConfig, temperature: float = 1.0,
                        remat: bool = False) -> tuple[jax.Array, jax.Array]:
  """logp, entropy [N,T] of tokens[:, P:] given tokens[:, :P+T-1] (P = prompt_len).

  tokens/segment_ids [N,P+T]: left-padded prompt then completion.
  """
  hidden, _ = transformer.forward(params, tokens[:, :-1], config=config,
                                  segment_ids=segment_ids[:, :-1], return_hidden=True, remat=remat)
  logits = transformer.unembed(params, hidden[:, prompt_len - 1:], config=config)  # [N,T,V]
  return token_logprobs(logits, tokens[:, prompt_len:], temperature=temperature)


def make_logprob_fn(*, config: ModelConfig, prompt_len: int, temperature: float, jit: bool = True):
  """jitted (params, tokens, segment_ids) -> (logp, entropy) [N,T] (old / reference log-probs)."""

  def fn(params, tokens, segment_ids):
    return completion_logprobs(params, tokens, segment_ids, prompt_len, config=config,
                               temperature=temperature)

  return jax.jit(fn) if jit else fn


def make_hidden_fn(*, config: ModelConfig, prompt_len: int, jit: bool = True):
  """jitted (params, tokens, segment_ids) -> (hidden [N,T,D], logits [N,T,V] f32) of the
  completion positions: hidden[:, t] is the unembedding input that predicts token P + t."""

  def fn(params, tokens, segment_ids):
    hidden, _ = transformer.forward(params, tokens[:, :-1], config=config,
                                    segment_ids=segment_ids[:, :-1], return_hidden=True)
    hidden = hidden[:, prompt_len - 1:]
    return hidden, transformer.unembed(params, hidden, config=config)

  return jax.jit(fn) if jit else fn
