"""The shape alphabet and the dataclasses that cross stage boundaries.

Shape alphabet (used in names, einsums, docstrings and shape comments):
  B prompts · G samples per prompt · N = B·G sequences · P prompt length · T completion length ·
  S total length · V vocab · D model dim · F MLP dim · Q query heads · K KV heads · H head dim ·
  C cache length · L layers.
"""

from __future__ import annotations

import dataclasses

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
  """What the sampler returns for N = B·G sequences (groups of G are contiguous rows).

  tokens    int32 [N,T]  completion tokens; pad_id after the stop token.
  mask      int32 [N,T]  1 up to and including the first stop token, 0 after.
  logprobs  f32   [N,T]  log-prob of each token under the distribution actually sampled from
                         (after temperature, logit processor, top-k and top-p).
  entropy   f32   [N,T]  entropy of that distribution.
  prompt_tokens int32 [N,P] the left-padded prompts (repeated G times).
  prompt_mask   int32 [N,P] 1 on real prompt tokens.
  truncated bool [N] no stop token within max_new_tokens.
  """

  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  entropy: jax.Array
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  truncated: jax.Array

  @property
  def lengths(self) -> jax.Array:
    """int32 [N]: completion lengths (tokens up to and including the stop token)."""
    return self.mask.sum(axis=-1)
