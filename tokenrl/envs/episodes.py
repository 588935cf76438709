"""Multi-turn episodes as one training row: action and observation segments -> [N,T] arrays.

A row's completion region is its segments in order (action 1, observation 1, action 2, ...),
right-padded to T. Only action tokens are in the loss mask; observation tokens are context (they
get attention and positions, never a loss or an advantage).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Segment:
  """ids of one action (is_action) or observation; for an action also the sampler's logp and
  entropy per token and the environment reward (placed on its last token)."""

  ids: list[int]
  is_action: bool
  logp: list[float] | None = None
  entropy: list[float] | None = None
  reward: float = 0.0


@dataclasses.dataclass
class EpisodeArrays:
  """completion int32 [N,T] (pad_id after the row); real int32 [N,T] 1 on every token of the
  row; mask int32 [N,T] 1 on action tokens; action_end int32 [N,T] 1 on each action's last
  token; rewards f32 [N,T] the action reward on its last token; logp, entropy f32 [N,T] (0
  off the actions)."""

  completion: np.ndarray
  real: np.ndarray
  mask: np.ndarray
  action_end: np.ndarray
  rewards: np.ndarray
  logp: np.ndarray
  entropy: np.ndarray


def assemble_episodes(episodes: list[list[Segment]], length: int, pad_id: int) -> EpisodeArrays:
  """Stack N episodes (lists of segments) into [N,T] arrays, T = `length`.

  Raises:
    ValueError: an episode is longer than `length`, or an action segment is empty or its
      logp / entropy length differs from its ids.
  """
  n = len(episodes)
  completion = np.full((n, length), pad_id, np.int32)
  real, mask, end = (np.zeros((n, length), np.int32) for _ in range(3))
  rewards, logp, entropy = (np.zeros((n, length), np.float32) for _ in range(3))
  for i, segments in enumerate(episodes):
    t = 0
    for s in segments:
      k = len(s.ids)
      if t + k > length:
        total = sum(len(x.ids) for x in segments)
        raise ValueError(f"episodes[{i}]: {total} tokens do not fit length {length}")
      completion[i, t:t + k] = s.ids
      real[i, t:t + k] = 1
      if s.is_action:
        if k == 0 or len(s.logp) != k or len(s.entropy) != k:
          raise ValueError(f"episodes[{i}]: action segment with {k} ids needs as many logp and "
                           f"entropy values (got {len(s.logp or [])}, {len(s.entropy or [])})")
        mask[i, t:t + k] = 1
        end[i, t + k - 1] = 1
        rewards[i, t + k - 1] = s.reward
        logp[i, t:t + k] = s.logp
        entropy[i, t:t + k] = s.entropy
      t += k
  return EpisodeArrays(completion, real, mask, end, rewards, logp, entropy)
