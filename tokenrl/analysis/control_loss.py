"""The controllability search loss, its one-hot gradient, and the batched scoring they share.

Spec: shared/specs/analysis-and-auditing.md §3 ("magic words", 2310.04444). A control prompt
u [k] is prepended to an imposed state x0 [P0]; the loss of u is the mean cross-entropy of the
target tokens y [T] given u ⊕ x0 (teacher-forced, masked to y) [code: compute_score.py], and u
"controls" the model when the greedy continuation is y, i.e. argmax at every target position
equals y_t (for T = 1: the greedy next token is y).

Rows are laid out right-padded so one compiled shape serves pairs of different lengths:

    row = u [k] ⊕ x0_b [P0_b] ⊕ y_b[:-1] [T_b - 1] ⊕ filler ...      (width k + W)

The prediction of y_t sits at position k + P0_b - 1 + t. Attention is causal, so the filler
after a row's last needed position never reaches a position that is read, and rows need no
segment ids; positions are 0..S-1 with no BOS added [code: scripts/backoff_hack.py].

A model enters as `apply_fn(params, tokens [N,S], embeddings [N,S,D] | None, positions [N,T])
-> logits [N,T,V] f32`: the logits at the requested positions only (a search scores hundreds
of rows; unembedding every position would hold N·S·V floats). `ModelLogits(config)` is that
function for tokenrl.models.forward. apply_fn is a static jit argument: it must be hashable,
and an equal one (a frozen dataclass) reuses the compiled search.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig

ApplyFn = Callable[[Any, jax.Array, "jax.Array | None", jax.Array], jax.Array]

# Python-side trace counts of the jitted searches, by name (tests check each search compiles
# once per shape: a second call with new values must not add to these).
TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class ModelLogits:
  """tokenrl.models.forward as an apply_fn: logits [N,T,V] f32 at positions [N,T].

  Runs the decoder for hidden states and unembeds only the requested positions.
  """
  config: ModelConfig

  def __call__(self, params: Any, tokens: jax.Array, embeddings: jax.Array | None,
               positions: jax.Array) -> jax.Array:
    hidden, _ = transformer.forward(params, tokens, config=self.config, return_hidden=True,
                                    input_embeddings=embeddings)  # [N,S,D]
    hidden = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)  # [N,T,D]
    return transformer.unembed(params, hidden, config=self.config)


def resolve_apply(config: ModelConfig | None, apply_fn: ApplyFn | None) -> ApplyFn:
  if (config is None) == (apply_fn is None):
    raise ValueError("give exactly one of config= (a tokenrl ModelConfig) and apply_fn= (a "
                     "hashable (params, tokens, embeddings, positions) -> logits function)")
  return ModelLogits(config) if apply_fn is None else apply_fn


def vocab_size(params: Any) -> int:
  if not isinstance(params, dict) or "embed" not in params:
    raise ValueError("params must be a dict with the embedding table params['embed'] [V,D] "
                     "(the one-hot gradient and the vocabulary size come from it)")
  return int(params["embed"].shape[0])


@dataclasses.dataclass(frozen=True)
class Pairs:
  """B (x0, y) pairs packed for the searches (host numpy, int32).

  body: [B,W] x0_b ⊕ y_b[:-1], right-filled with 0 (never read: attention is causal);
  end: [B] P0_b, so y_t is predicted at position k + end_b - 1 + t;
  y: [B,T] right-filled with 0; y_mask: [B,T] bool, True on the T_b real target tokens.
  """
  body: np.ndarray
  end: np.ndarray
  y: np.ndarray
  y_mask: np.ndarray

  def __len__(self) -> int:
    return self.body.shape[0]

  def take(self, idx: Sequence[int]) -> "Pairs":
    idx = np.asarray(idx, np.int64)
    return Pairs(self.body[idx], self.end[idx], self.y[idx], self.y_mask[idx])

  def arrays(self) -> tuple[jax.Array, ...]:
    return (jnp.asarray(self.body), jnp.asarray(self.end), jnp.asarray(self.y),
            jnp.asarray(self.y_mask))


def as_ids(value: Any, name: str, vocab: int, *, allow_empty: bool = False) -> np.ndarray:
  """int32 [n] token ids from a sequence of ints, or ValueError naming `name`."""
  arr = np.asarray(value)
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape} "
                     f"dtype {arr.dtype}")
  if arr.size == 0 and not allow_empty:
    raise ValueError(f"{name} is empty; give at least one token id")
  if arr.size and (arr.min() < 0 or arr.max() >= vocab):
    raise ValueError(f"{name} holds ids outside [0, {vocab}): min {arr.min()}, max {arr.max()}")
  return arr.astype(np.int32)


def pack_pairs(x0s: Sequence[Any], ys: Sequence[Any], vocab: int, *, max_prompt: int = 0,
               max_seq_len: int | None = None) -> Pairs:
  """Pack B pairs; ValueError names the pair and the argument at fault.

  max_prompt: the longest control prompt the caller will prepend, checked against max_seq_len.
  """
  if len(x0s) != len(ys):
    raise ValueError(f"x0s has {len(x0s)} states but ys has {len(ys)} targets; give one "
                     "target per state")
  if not len(x0s):
    raise ValueError("x0s is empty; give at least one (x0, y) pair")
  x0s = [as_ids(x, f"x0s[{i}]", vocab) for i, x in enumerate(x0s)]
  ys = [as_ids(y, f"ys[{i}]", vocab) for i, y in enumerate(ys)]
  width = max(len(x) + len(y) - 1 for x, y in zip(x0s, ys))
  t = max(len(y) for y in ys)
  if max_seq_len is not None and max_prompt + width > max_seq_len:
    i = max(range(len(x0s)), key=lambda j: len(x0s[j]) + len(ys[j]))
    raise ValueError(f"pair {i}: control prompt ({max_prompt}) + x0 ({len(x0s[i])}) + y "
                     f"({len(ys[i])}) - 1 = {max_prompt + width} tokens exceed the model's "
                     f"max_seq_len {max_seq_len}; shorten x0 or the prompt lengths")
  body = np.zeros((len(x0s), width), np.int32)
  y_arr = np.zeros((len(x0s), t), np.int32)
  mask = np.zeros((len(x0s), t), bool)
  for i, (x, y) in enumerate(zip(x0s, ys)):
    seq = np.concatenate([x, y[:-1]])
    body[i, :len(seq)] = seq
    y_arr[i, :len(y)] = y
    mask[i, :len(y)] = True
  return Pairs(body, np.array([len(x) for x in x0s], np.int32), y_arr, mask)


def _rows(u: jax.Array, body: jax.Array, end: jax.Array, t: int):
  """tokens [B·M, k+W] and target positions [B·M, T] of prompts u [B,M,k] over body [B,W]."""
  b, m, k = u.shape
  rows = jnp.concatenate([u, jnp.broadcast_to(body[:, None, :], (b, m, body.shape[1]))], axis=2)
  pos = (k + end - 1)[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]  # [B,T]
  pos = jnp.broadcast_to(pos[:, None, :], (b, m, t))
  return rows.reshape(b * m, -1), pos.reshape(b * m, t)


def loss_and_hit(logits: jax.Array, y: jax.Array, y_mask: jax.Array):
  """Mean CE over the real target tokens and "greedy continuation is y", per row.

  logits [R,T,V] f32, y [R,T], y_mask [R,T] -> (loss [R] f32, hit [R] bool).
  """
  lse = jax.nn.logsumexp(logits, axis=-1)  # [R,T]
  tgt = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
  mask = y_mask.astype(jnp.float32)
  loss = jnp.sum((lse - tgt) * mask, axis=-1) / jnp.sum(mask, axis=-1)
  hit = jnp.all((jnp.argmax(logits, axis=-1) == y) | ~y_mask, axis=-1)
  return loss, hit


def score(apply: ApplyFn, params: Any, u: jax.Array, body: jax.Array, end: jax.Array,
          y: jax.Array, y_mask: jax.Array, chunk: int | None):
  """Loss and hit of every candidate prompt u [B,M,k] for its pair -> ([B,M], [B,M]).

  chunk: rows per model call (candidates × pairs), the memory knob; None = all M at once.
  Chunks run under one lax.map, so the model is traced once whatever M is. Trace-time only
  (call inside jit).
  """
  b, m, k = u.shape
  t = y.shape[1]
  c = m if chunk is None else max(1, min(m, chunk // b))
  n = -(-m // c)
  if n * c > m:  # pad with copies of candidate 0; their scores are sliced off below
    u = jnp.concatenate([u, jnp.broadcast_to(u[:, :1], (b, n * c - m, k))], axis=1)

  def one(uc):  # [B,c,k] -> ([B,c], [B,c])
    rows, pos = _rows(uc, body, end, t)
    logits = apply(params, rows, None, pos)  # [B·c,T,V]
    rep = lambda a: jnp.repeat(a, c, axis=0)
    loss, hit = loss_and_hit(logits, rep(y), rep(y_mask))
    return loss.reshape(b, c), hit.reshape(b, c)

  if n == 1:
    loss, hit = one(u)
  else:
    xs = u.reshape(b, n, c, k).transpose(1, 0, 2, 3)  # [n,B,c,k]
    loss, hit = jax.lax.map(one, xs)  # [n,B,c]
    loss = loss.transpose(1, 0, 2).reshape(b, n * c)
    hit = hit.transpose(1, 0, 2).reshape(b, n * c)
  return loss[:, :m], hit[:, :m]


def loss_and_onehot_grad(apply: ApplyFn, params: Any, cur: jax.Array, body: jax.Array,
                         end: jax.Array, y: jax.Array, y_mask: jax.Array,
                         method: str = "embedding"):
  """Loss [B] of prompts cur [B,k] and its gradient w.r.t. the one-hot prompt -> [B,k,V].

  method='onehot': jax.grad through onehot [B,k,V] @ E [V,D] fed as input embeddings.
  method='embedding': the gradient w.r.t. the prompt's embeddings [B,k,D] times Eᵀ: equal by
  the chain rule (the embeddings are linear in the one-hot) and cheaper (no [B,k,V] input).
  Pairs are independent, so the gradient of the summed loss is each pair's own gradient.
  With tied embeddings only the input side sees the one-hot (E is a constant here).
  """
  if method not in ("embedding", "onehot"):
    raise ValueError(f"method must be 'embedding' or 'onehot', got {method!r}")
  table = params["embed"].astype(jnp.float32)  # [V,D]
  b, k = cur.shape
  rows, pos = _rows(cur[:, None, :], body, end, y.shape[1])  # [B,k+W], [B,T]
  body_emb = table[body]  # [B,W,D]

  def loss_of(emb_u):  # [B,k,D] -> (sum of losses, losses [B])
    logits = apply(params, rows, jnp.concatenate([emb_u, body_emb], axis=1), pos)
    loss, _ = loss_and_hit(logits, y, y_mask)
    return jnp.sum(loss), loss

  if method == "embedding":
    (_, loss), g_emb = jax.value_and_grad(loss_of, has_aux=True)(table[cur])
    grad = jnp.einsum("bkd,vd->bkv", g_emb, table)
  else:
    onehot = jax.nn.one_hot(cur, table.shape[0], dtype=jnp.float32)
    (_, loss), grad = jax.value_and_grad(lambda oh: loss_of(oh @ table), has_aux=True)(onehot)
  return loss, grad


@functools.partial(jax.jit, static_argnames=("apply", "chunk"))
def score_jit(apply, params, u, body, end, y, y_mask, chunk=None):
  TRACES["score"] += 1
  return score(apply, params, u, body, end, y, y_mask, chunk)


@functools.partial(jax.jit, static_argnames=("apply", "method"))
def onehot_grad_jit(apply, params, cur, body, end, y, y_mask, method="embedding"):
  TRACES["onehot_grad"] += 1
  return loss_and_onehot_grad(apply, params, cur, body, end, y, y_mask, method)


def target_loss(params: Any, prompts: Any, x0: Any, y: Any, *, config: ModelConfig | None = None,
                apply_fn: ApplyFn | None = None, chunk: int | None = None) -> jax.Array:
  """Mean cross-entropy of y [T] given each prompt ⊕ x0 -> f32 [N].

  prompts: int [N,k] control prompts (k = 0 scores x0 alone); x0: int [P0]; y: int [T].
  loss_n = (1/T) Σ_t −log p(y_t | prompts_n ⊕ x0 ⊕ y_<t)  [code: compute_score.py].
  """
  apply = resolve_apply(config, apply_fn)
  vocab = vocab_size(params)
  u = np.asarray(prompts)
  if u.ndim != 2 or (u.size and not np.issubdtype(u.dtype, np.integer)):
    raise ValueError(f"prompts must be int [N,k] (one control prompt per row), got shape "
                     f"{u.shape} dtype {u.dtype}")
  if u.size and (u.min() < 0 or u.max() >= vocab):
    raise ValueError(f"prompts hold ids outside [0, {vocab})")
  pairs = pack_pairs([x0], [y], vocab, max_prompt=u.shape[1],
                     max_seq_len=config.max_seq_len if config is not None else None)
  loss, _ = score_jit(apply, params, jnp.asarray(u, jnp.int32)[None], *pairs.arrays(), chunk=chunk)
  return loss[0]


def onehot_grad(params: Any, prompt: Any, x0: Any, y: Any, *, config: ModelConfig | None = None,
                apply_fn: ApplyFn | None = None, method: str = "embedding") -> jax.Array:
  """Gradient of `target_loss` w.r.t. the one-hot encoding of prompt [k] -> f32 [k,V].

  GCG's ranking signal: a very negative G[i,v] says swapping position i to token v should lower
  the loss (to first order). See `loss_and_onehot_grad` for the two equal methods.
  """
  apply = resolve_apply(config, apply_fn)
  vocab = vocab_size(params)
  cur = as_ids(prompt, "prompt", vocab)
  pairs = pack_pairs([x0], [y], vocab, max_prompt=len(cur),
                     max_seq_len=config.max_seq_len if config is not None else None)
  _, grad = onehot_grad_jit(apply, params, jnp.asarray(cur)[None], *pairs.arrays(), method=method)
  return grad[0]
