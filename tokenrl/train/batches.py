"""Host-side batch assembly: SFT sequences and the policy-gradient batch from a rollout."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tokenrl.rollout.sampler import bucket_length


def sft_batch(prompt_ids: Sequence[Sequence[int]], examples: Sequence[Mapping[str, Any]],
              tokenizer: Any) -> dict[str, np.ndarray]:
  """Left-padded prompt+answer+eos sequences [N,S] with the loss on answer and eos tokens.

  Returns tokens, segment_ids (1 on real tokens) and loss_mask (1 on answer/eos), int32 [N,S].
  """
  eos = tokenizer.eos_token_ids[0]
  seqs, starts = [], []
  for p, ex in zip(prompt_ids, examples):
    answer = tokenizer.encode(str(ex["answer"]), add_special_tokens=False) + [eos]
    seqs.append(list(p) + answer)
    starts.append(len(p))
  width = bucket_length(max(map(len, seqs)))
  n = len(seqs)
  tokens = np.full((n, width), tokenizer.pad_id, np.int32)
  segment_ids = np.zeros((n, width), np.int32)
  loss_mask = np.zeros((n, width), np.int32)
  for i, (seq, start) in enumerate(zip(seqs, starts)):
    off = width - len(seq)
    tokens[i, off:] = seq
    segment_ids[i, off:] = 1
    loss_mask[i, off + start:] = 1
  return {"tokens": tokens, "segment_ids": segment_ids, "loss_mask": loss_mask}


def pg_batch(rollout: Any, *, advantages: np.ndarray, mask: np.ndarray,
             token_weights: np.ndarray) -> dict[str, np.ndarray]:
  """Arrays of one policy-gradient minibatch from a Rollout (prompt [N,P] + completion [N,T])."""
  completion = np.asarray(rollout.tokens)
  return {
      "tokens": np.concatenate([np.asarray(rollout.prompt_tokens), completion], axis=1),
      "segment_ids": np.concatenate([np.asarray(rollout.prompt_mask), np.ones_like(completion)], axis=1),
      "mask": mask.astype(np.int32),
      "advantages": advantages.astype(np.float32),
      "sampler_logp": np.asarray(rollout.logprobs, np.float32),
      "token_weights": token_weights.astype(np.float32),
  }
