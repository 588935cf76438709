"""TVM: Token-supervised Value Models (spec §6).

"Token-Supervised Value Models for Enhancing Mathematical Reasoning Capabilities of LLMs"
(Lee et al., arXiv 2407.12863). The labels are exact (per-token empirical success probability of
the continuation); the loss type, the LM auxiliary loss and the search sizes are
[reconstructed]/unverified and exposed as knobs (defaults follow the OVM predecessor's code:
MSE on a scalar head at every token).

Host side (numpy): `token_value_labels` (prefix trie). Device side (jnp): `token_value_loss` of
the logits x = w·h + b of the shared scalar head `tokenrl.models.value_head` (f = σ(x)).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

LOSS_TYPES = ("mse", "bce")


# ---- labels (host) ---------------------------------------------------------------------------


def token_value_labels(paths: Sequence[Sequence[int]], correct: Sequence[float], *,
                       dedup: bool = False) -> list[np.ndarray]:
  """v^(n)_t = Σ_{n'} 1[s^(n')_{1:t} = s^(n)_{1:t}]·c_{n'} / Σ_{n'} 1[s^(n')_{1:t} = s^(n)_{1:t}].

  The empirical probability that a path sharing the first t tokens of path n ends correct
  (spec §6(b)), for the N sampled paths `paths` (token-id lists, EOS included) of ONE problem
  and their correctness `correct` c_n ∈ {0,1} (or [0,1]). Built with a prefix trie whose nodes
  hold (count, correct_count). `dedup` counts identical paths once (OVM de-duplicates its
  samples; spec default False). Returns one f32 array [T_n] per path (t = 1..T_n).
  """
  if len(paths) != len(correct):
    raise ValueError(f"correct: expected {len(paths)} entries (one per path), got {len(correct)}")
  items = [(tuple(int(x) for x in p), float(c)) for p, c in zip(paths, correct)]
  counted = list(dict.fromkeys(items)) if dedup else items
  trie: dict[tuple[int, ...], list[float]] = {}
  for path, c in counted:
    for t in range(1, len(path) + 1):
      node = trie.setdefault(path[:t], [0.0, 0.0])
      node[0] += 1.0
      node[1] += c
  out = []
  for path, _ in items:
    out.append(np.array([trie[path[:t]][1] / trie[path[:t]][0] for t in range(1, len(path) + 1)],
                        np.float32))
  return out


def grouped_token_value_labels(completions: np.ndarray, mask: np.ndarray, correct: np.ndarray,
                               group_size: int, *, dedup: bool = False) -> np.ndarray:
  """`token_value_labels` per prompt group of a rollout batch: labels f32 [N,T] (0 on padding).

  completions int [N,T], mask [N,T] (1 up to and including EOS), correct [N]; groups of
  `group_size` contiguous rows share a problem.
  """
  completions, mask, correct = np.asarray(completions), np.asarray(mask), np.asarray(correct)
  if completions.ndim != 2 or mask.shape != completions.shape:
    raise ValueError(f"mask: expected shape {completions.shape}, got {mask.shape}")
  n, t = completions.shape
  if correct.shape != (n,):
    raise ValueError(f"correct: expected shape ({n},), got {correct.shape}")
  if group_size < 1 or n % group_size:
    raise ValueError(f"group_size: expected an int >= 1 dividing N={n}, got {group_size!r}")
  labels = np.zeros((n, t), np.float32)
  for g in range(0, n, group_size):
    rows = range(g, g + group_size)
    paths = [completions[i, :int(mask[i].sum())] for i in rows]
    for i, v in zip(rows, token_value_labels(paths, correct[g:g + group_size], dedup=dedup)):
      labels[i, :len(v)] = v
  return labels


# ---- loss ------------------------------------------------------------------------------------


def token_value_loss(value_logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                     loss_type: str = "mse", denominator: jax.Array | float | None = None):
  """TVM value regression: per-path token mean, then mean over paths (spec §6(b)).

      f_t = σ(x_t)
      'mse':  ℓ_t = (f_t − v_t)²                              (OVM lineage, default)
      'bce':  ℓ_t = −[v_t·log f_t + (1−v_t)·log(1−f_t)] = softplus(x_t) − v_t·x_t
      L = Σ_n [ Σ_t m·ℓ / Σ_t m ] / D

  value_logits x [N,T] (differentiable), labels v [N,T] ∈ [0,1], mask m [N,T]; D =
  `denominator` (default N, the number of paths; pass the minibatch's when accumulating).
  Returns (loss f32 scalar, metrics: `value_mae` = mean |f − v| over valid tokens).
  """
  if value_logits.ndim != 2:
    raise ValueError(f"value_logits: expected shape [N,T], got {value_logits.shape}")
  for name, x in (("labels", labels), ("mask", mask)):
    if x.shape != value_logits.shape:
      raise ValueError(f"{name}: expected shape {value_logits.shape}, got {x.shape}")
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
  x = value_logits.astype(jnp.float32)
  v = jax.lax.stop_gradient(labels.astype(jnp.float32))
  m = mask.astype(jnp.float32)
  f = jax.nn.sigmoid(x)
  per_tok = jnp.square(f - v) if loss_type == "mse" else jax.nn.softplus(x) - v * x
  per_tok = jnp.where(m > 0, per_tok, 0.0)
  per_path = per_tok.sum(1) / jnp.maximum(m.sum(1), 1.0)
  d = float(x.shape[0]) if denominator is None else jnp.asarray(denominator, jnp.float32)
  loss = per_path.sum() / jnp.where(d > 0, d, 1.0)
  mae = jnp.where(m > 0, jnp.abs(jax.lax.stop_gradient(f) - v), 0.0).sum() / jnp.maximum(m.sum(), 1.0)
  return loss, {"value_mae": mae}


LOSSES = {"tvm": token_value_loss}
