"""k-ε controllability of a language model ("magic words", 2310.04444): spec §3.

The model is a control system: x0 is the imposed state, a control prompt u [k] is prepended,
and the output is the greedy continuation of u ⊕ x0. For pairs D = {(x0_i, y_i)}, ℓ_i is the
shortest control prompt found that makes the output y_i (0 when x0 alone does, ∞ = NOT_FOUND
when none), and ε̂(k) = 1 − (1/N) Σ_i 1[ℓ_i <= k] bounds from above the share of pairs the model
cannot be steered to with k tokens (the search is heuristic: ε̂ >= the true ε).

Search (`backoff_control`) [code: backoff_hack_qa.py, prompt_hack_qa.py, easy_gcg.py]:
  0. ℓ = 0 if argmax p(·|x0) is already y;
  1. greedy back-generation for lengths 1, 2, 3: score every allowed token v by the loss of
     [v] ⊕ cur ⊕ x0 (exhaustively, in fixed-size chunks), prepend the argmin to cur (the prompt
     grows to the left), stop with ℓ = len when the output is now y;
  2. GCG (tokenrl.analysis.gcg) for lengths 4, 6, 8, 10, each from a fresh uniform prompt;
  3. otherwise ℓ = ∞.
Every stage runs on batches of pairs (`pair_batch` of them padded to one shape), so a stage
compiles once per prompt length whatever the number of pairs or their lengths.

Flags [recon]: keep_best (GCG returns its best iterate, not its last) and warm_start (GCG at
length k starts from the previous stage's prompt, left-extended with random tokens).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.analysis import control_loss as CL
from tokenrl.analysis import gcg as G
from tokenrl.analysis.control_bound import attention_control_bound
from tokenrl.analysis.control_loss import ModelLogits, onehot_grad, target_loss
from tokenrl.analysis.gcg import (NOT_FOUND, ControlResult, gcg, gcg_candidates,
                                  top_candidates)
from tokenrl.models.config import ModelConfig

__all__ = [
    "NOT_FOUND", "ControlResult", "ModelLogits", "target_loss", "onehot_grad",
    "greedy_back_generation", "gcg", "top_candidates", "gcg_candidates", "backoff_control",
    "backoff_control_batch", "k_epsilon_curve", "attention_control_bound",
]


@functools.partial(jax.jit, static_argnames=("apply", "chunk"))
def _greedy_step(apply, params, cur, allowed, body, end, y, y_mask, chunk):
  """One back-generation step: the best token to prepend to cur [B,j].

  Every id of the vocabulary is scored and the blacklisted ones (allowed [V] False) get +∞, so
  the compiled shape does not depend on the blacklist. Returns (token [B], loss [B] of
  token ⊕ cur, hit [B]: the output is now y).
  """
  CL.TRACES["greedy"] += 1
  b, j = cur.shape
  v = allowed.shape[0]
  ids = jnp.arange(v, dtype=jnp.int32)
  u = jnp.concatenate([jnp.broadcast_to(ids[None, :, None], (b, v, 1)),
                       jnp.broadcast_to(cur[:, None, :], (b, v, j))], axis=2)  # [B,V,j+1]
  loss, hit = CL.score(apply, params, u, body, end, y, y_mask, chunk)  # [B,V]
  loss = jnp.where(allowed[None, :], loss, jnp.inf)
  best = jnp.argmin(loss, axis=1)
  rows = jnp.arange(b)
  return ids[best], loss[rows, best], hit[rows, best]


def _greedy_batch(params, pairs: CL.Pairs, apply, allowed: np.ndarray, max_len: int,
                  chunk: int | None):
  """Greedy back-generation on B packed pairs up to max_len tokens; allowed: bool [V].

  Returns per length j = 1..max_len (prompt [B,j], loss [B], hit [B]) as numpy.
  """
  arrays = pairs.arrays()
  cur = jnp.zeros((len(pairs), 0), jnp.int32)
  out = []
  for _ in range(max_len):
    tok, loss, hit = _greedy_step(apply, params, cur, jnp.asarray(allowed), *arrays, chunk=chunk)
    cur = jnp.concatenate([tok[:, None], cur], axis=1)
    out.append((np.asarray(cur), np.asarray(loss), np.asarray(hit)))
  return out


def _batches(idx: np.ndarray, size: int):
  """Consecutive groups of `size` indices; the last is padded with its first index (so every
  call has one shape); yields (group [size], number of real entries)."""
  for s in range(0, len(idx), size):
    group = idx[s:s + size]
    real = len(group)
    yield np.concatenate([group, np.full(size - real, group[0])]), real


def _check_lengths(greedy_lengths: Sequence[int], gcg_lengths: Sequence[int]) -> None:
  g = tuple(greedy_lengths)
  if g != tuple(range(1, len(g) + 1)):
    raise ValueError(f"greedy_lengths must be 1, 2, ..., n (back-generation grows the prompt one "
                     f"token at a time), got {g}")
  c = tuple(gcg_lengths)
  if any(k < 1 for k in c) or any(b <= a for a, b in zip(c, c[1:])):
    raise ValueError(f"gcg_lengths must be positive and increasing, got {c}")


def backoff_control_batch(params: Any, x0s: Sequence[Any], ys: Sequence[Any], *,
                          config: ModelConfig | None = None, apply_fn: CL.ApplyFn | None = None,
                          rng: jax.Array, greedy_lengths: Sequence[int] = (1, 2, 3),
                          gcg_lengths: Sequence[int] = (4, 6, 8, 10),
                          blacklist: Sequence[int] = (), top_k: int = 128,
                          batch_size: int = 768, num_iters: int = 34, chunk: int | None = 301,
                          pair_batch: int = 8, keep_best: bool = False,
                          warm_start: bool = False,
                          on_stage: Callable[[str, int, float], None] | None = None
                          ) -> list[ControlResult]:
  """The backoff search (module docstring) for N pairs; one ControlResult per pair.

  x0s: N imposed states, each a sequence of ids [P0_i]; ys: N targets [T_i] (usually one
  token). Pairs of any lengths share compiled shapes. rng: jax PRNG key.
  blacklist: ids never placed in a control prompt. top_k, batch_size, num_iters: GCG's
  settings (spec defaults 128, 768, 34). chunk: model rows per call (memory). pair_batch: pairs
  searched together. keep_best, warm_start: the [recon] flags of the module docstring.
  on_stage(name, pairs searched, seconds) is called after each stage.
  Returns one ControlResult per pair, in order (ℓ = NOT_FOUND when no length tried works).
  Raises ValueError naming the argument (ids outside the vocabulary, empty states, lengths not
  1..n / not increasing, top_k above the allowed tokens, rows longer than max_seq_len).
  """
  apply = CL.resolve_apply(config, apply_fn)
  vocab = CL.vocab_size(params)
  allowed = G.allowed_ids(vocab, blacklist)
  allowed_mask = np.zeros(vocab, bool)
  allowed_mask[allowed] = True
  _check_lengths(greedy_lengths, gcg_lengths)
  if gcg_lengths:
    G.check_search_args(min(gcg_lengths), top_k, batch_size, num_iters, len(allowed))
  if pair_batch < 1:
    raise ValueError(f"pair_batch must be >= 1, got {pair_batch}")
  max_prompt = max((*greedy_lengths, *gcg_lengths), default=0)
  pairs = CL.pack_pairs(x0s, ys, vocab, max_prompt=max_prompt,
                        max_seq_len=config.max_seq_len if config is not None else None)
  n = len(pairs)
  size = min(pair_batch, n)
  length = np.full(n, NOT_FOUND, np.int64)
  prompt: list[tuple[int, ...]] = [()] * n
  loss = np.zeros(n)
  losses: list[dict[int, float]] = [{} for _ in range(n)]

  def stage(name, fn, todo):
    start = time.perf_counter()
    for group, real in _batches(todo, size):
      fn(group, real)
    if on_stage is not None:
      on_stage(name, len(todo), time.perf_counter() - start)

  def base(group, real):
    l, h = CL.score_jit(apply, params, jnp.zeros((size, 1, 0), jnp.int32),
                        *pairs.take(group).arrays())
    for r, i in enumerate(group[:real]):
      loss[i] = losses[i][0] = float(l[r, 0])
      if h[r, 0]:
        length[i] = 0

  stage("base", base, np.arange(n))
  base_loss = loss.copy()

  def greedy(group, real):
    steps = _greedy_batch(params, pairs.take(group), apply, allowed_mask, len(greedy_lengths),
                          chunk)
    for r, i in enumerate(group[:real]):
      for j, (p, l, h) in enumerate(steps, start=1):
        if length[i] != NOT_FOUND:  # found at a shorter length: the search stopped there
          break
        losses[i][j] = float(l[r])
        prompt[i], loss[i] = tuple(int(v) for v in p[r]), float(l[r])
        if h[r]:
          length[i] = j

  todo = np.flatnonzero(length == NOT_FOUND)
  if greedy_lengths and len(todo):
    stage("greedy", greedy, todo)

  for k in gcg_lengths:
    rng_k = jax.random.fold_in(rng, k)
    calls = iter(range(n + 1))

    def search(group, real, k=k, rng_k=rng_k):
      rng_b = jax.random.fold_in(rng_k, next(calls))
      rng_init, rng_run = jax.random.split(rng_b)
      init = G.random_prompts(rng_init, allowed, (size, k))
      if warm_start:  # the previous stage's prompt, nearest x0, random tokens to its left
        for r, i in enumerate(group):
          prev = prompt[i][-k:]
          if prev:
            init[r, k - len(prev):] = prev
      p, l, h, _, _ = G.gcg_batch(params, pairs.take(group), apply=apply, rng=rng_run, init=init,
                                  allowed=allowed, top_k=top_k, batch_size=batch_size,
                                  num_iters=num_iters, chunk=chunk, keep_best=keep_best)
      for r, i in enumerate(group[:real]):
        losses[i][k] = float(l[r])
        prompt[i], loss[i] = tuple(int(v) for v in p[r]), float(l[r])
        if h[r]:
          length[i] = k

    todo = np.flatnonzero(length == NOT_FOUND)
    if not len(todo):
      break
    stage(f"gcg{k}", search, todo)

  return [ControlResult(length=int(length[i]), prompt=prompt[i], loss=float(loss[i]),
                        base_loss=float(base_loss[i]), losses=losses[i]) for i in range(n)]


def backoff_control(params: Any, x0: Any, y: Any, *, config: ModelConfig | None = None,
                    apply_fn: CL.ApplyFn | None = None, rng: jax.Array,
                    greedy_lengths: Sequence[int] = (1, 2, 3),
                    gcg_lengths: Sequence[int] = (4, 6, 8, 10), **kwargs) -> ControlResult:
  """`backoff_control_batch` for one pair x0 [P0], y [T] (same keyword settings)."""
  return backoff_control_batch(params, [x0], [y], config=config, apply_fn=apply_fn, rng=rng,
                               greedy_lengths=greedy_lengths, gcg_lengths=gcg_lengths,
                               **kwargs)[0]


def greedy_back_generation(params: Any, x0: Any, y: Any, *, config: ModelConfig | None = None,
                           apply_fn: CL.ApplyFn | None = None, max_len: int = 3,
                           blacklist: Sequence[int] = (), chunk: int | None = 301
                           ) -> ControlResult:
  """Greedy back-generation for one pair x0 [P0], y [T] (module docstring, step 1).

  Each step scores all allowed tokens exhaustively, `chunk` model rows per call under one
  lax.map (one compile per prompt length). Stops at the first length whose output is y.
  Returns ℓ = that length (or 0 when x0 alone gives y, NOT_FOUND when max_len is not enough),
  the prompt, and the loss at every length tried.
  """
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  results = backoff_control_batch(
      params, [x0], [y], config=config, apply_fn=apply_fn, rng=jax.random.key(0),
      greedy_lengths=tuple(range(1, max_len + 1)), gcg_lengths=(), blacklist=blacklist,
      chunk=chunk, pair_batch=1)
  return results[0]


def k_epsilon_curve(lengths: Any, k_max: int) -> np.ndarray:
  """ε̂(k) = 1 − (1/N) Σ_i 1[0 <= ℓ_i <= k] for k = 0..k_max -> f32 [k_max+1].

  lengths: int [N] shortest control prompt found per pair, NOT_FOUND (-1) for ℓ = ∞.
  Non-increasing in k by construction [code: results/Final Results.ipynb].
  """
  ell = np.asarray(lengths)
  if ell.ndim != 1 or ell.size == 0 or not np.issubdtype(ell.dtype, np.integer):
    raise ValueError(f"lengths must be a non-empty int [N] array (-1 = not found), got shape "
                     f"{ell.shape} dtype {ell.dtype}")
  if (ell < NOT_FOUND).any():
    raise ValueError(f"lengths must be >= 0 or {NOT_FOUND} (not found), got {ell.min()}")
  if k_max < 0:
    raise ValueError(f"k_max must be >= 0, got {k_max}")
  ks = np.arange(k_max + 1)
  reached = (ell[None, :] >= 0) & (ell[None, :] <= ks[:, None])  # [k_max+1, N]
  return (1.0 - reached.mean(axis=1)).astype(np.float32)
