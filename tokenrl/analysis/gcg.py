"""Greedy Coordinate Gradient (GCG) search for control prompts of a fixed length k.

Spec §3(b) step 3 [code: amanb2000/Magic_Words easy_gcg.py]. Per iteration, for each pair:
  1. G [k,V] = gradient of the loss w.r.t. the one-hot prompt; blacklisted columns set to +∞;
  2. top [k,top_k] = the top_k tokens of −G at each position (`top_candidates`);
  3. batch_size candidates, each the current prompt with one uniform position set to a uniform
     pick among that position's top_k;
  4. the best candidate replaces the current prompt, even if it is worse [code]; the prompt
     returned is the last iterate (keep_best=False, the authors' rule) or the lowest-loss iterate
     seen (keep_best=True) [recon]. The trajectory is the same either way.
Success = the greedy continuation of the returned prompt ⊕ x0 is y, checked once at the end.

The whole search is one jitted call: a lax.fori_loop over num_iters on fixed shapes
(B pairs × batch_size candidates), candidates drawn with jax.random, so one compile serves every
call with the same (B, k, W, T, top_k, batch_size, num_iters).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.analysis import control_loss as CL
from tokenrl.models.config import ModelConfig

NOT_FOUND = -1  # ℓ = ∞: no control prompt found within the lengths tried


@dataclasses.dataclass(frozen=True)
class ControlResult:
  """The outcome of a control search for one (x0, y) pair.

  length: ℓ, the length of the returned control prompt when it makes the greedy continuation
    y (0 = x0 alone already does), NOT_FOUND (-1) when no prompt tried does (ℓ = ∞).
  prompt: the control prompt (ids, left to right): the successful one, else the prompt of the
    last length tried.
  loss: target loss of prompt ⊕ x0 (mean CE of y). base_loss: the loss of x0 alone.
  losses: length tried -> loss of the prompt that length ended with (0 = x0 alone).
  history: GCG only, f32 [num_iters+1]: loss of the iterate before each iteration and at the end.
  best_history: GCG only, f32 [num_iters+1]: the lowest of history[:i+1].
  """
  length: int
  prompt: tuple[int, ...]
  loss: float
  base_loss: float
  losses: dict[int, float]
  history: np.ndarray | None = None
  best_history: np.ndarray | None = None

  @property
  def found(self) -> bool:
    return self.length != NOT_FOUND


def top_candidates(grad: jax.Array, top_k: int, allowed: jax.Array | None = None) -> jax.Array:
  """The top_k tokens of −grad per position -> int32 [..., k, top_k] (best first).

  grad: f32 [..., k, V] one-hot gradient; allowed: bool [V] (False = blacklisted: its column
  is +∞, so it is never picked while top_k <= the number of allowed tokens).
  """
  if allowed is not None:
    grad = jnp.where(allowed, grad, jnp.inf)
  return jax.lax.top_k(-grad, top_k)[1].astype(jnp.int32)


def gcg_candidates(rng: jax.Array, cur: jax.Array, top: jax.Array, batch_size: int) -> jax.Array:
  """batch_size single-token edits of each prompt -> int32 [B,M,k].

  cur: int [B,k] current prompts; top: int [B,k,top_k]. Candidate m of pair b is cur[b] with
  position pos ~ U{0..k-1} set to top[b, pos, pick], pick ~ U{0..top_k-1}.
  """
  b, k, top_k = top.shape
  k_pos, k_pick = jax.random.split(rng)
  pos = jax.random.randint(k_pos, (b, batch_size), 0, k)
  pick = jax.random.randint(k_pick, (b, batch_size), 0, top_k)
  new = top[jnp.arange(b)[:, None], pos, pick]  # [B,M]
  at = jnp.arange(k)[None, None, :] == pos[:, :, None]  # [B,M,k]
  return jnp.where(at, new[:, :, None], cur[:, None, :])


@functools.partial(jax.jit, static_argnames=("apply", "top_k", "batch_size", "num_iters",
                                             "chunk"))
def _gcg_run(apply, params, init, allowed, body, end, y, y_mask, rng, keep_best, *, top_k,
             batch_size, num_iters, chunk):
  """init [B,k] -> (prompt [B,k], loss [B], hit [B], history [I+1,B], best_history [I+1,B])."""
  CL.TRACES["gcg"] += 1
  b = init.shape[0]
  rows = jnp.arange(b)

  def step(i, state):
    cur, best, best_loss, hist, best_hist = state
    loss, grad = CL.loss_and_onehot_grad(apply, params, cur, body, end, y, y_mask)
    better = loss < best_loss
    best = jnp.where(better[:, None], cur, best)
    best_loss = jnp.minimum(loss, best_loss)
    hist, best_hist = hist.at[i].set(loss), best_hist.at[i].set(best_loss)
    top = top_candidates(grad, top_k, allowed)  # [B,k,top_k]
    cand = gcg_candidates(jax.random.fold_in(rng, i), cur, top, batch_size)  # [B,M,k]
    cand_loss, _ = CL.score(apply, params, cand, body, end, y, y_mask, chunk)  # [B,M]
    # The best candidate replaces the current prompt even when it is worse [code].
    cur = cand[rows, jnp.argmin(cand_loss, axis=1)]
    return cur, best, best_loss, hist, best_hist

  hist = jnp.zeros((num_iters + 1, b), jnp.float32)
  state = (init, init, jnp.full((b,), jnp.inf, jnp.float32), hist, hist)
  cur, best, best_loss, hist, best_hist = jax.lax.fori_loop(0, num_iters, step, state)
  # The last iterate and the best one before it, scored in one model call (a second call would
  # be a second copy of the model in the compiled program).
  loss, hit = CL.score(apply, params, jnp.stack([cur, best], axis=1), body, end, y, y_mask, None)
  better = loss[:, 0] < best_loss
  best_loss = jnp.minimum(loss[:, 0], best_loss)
  hist, best_hist = hist.at[num_iters].set(loss[:, 0]), best_hist.at[num_iters].set(best_loss)
  # keep_best is traced (one compile serves both rules).
  pick_best = keep_best & ~better  # the last iterate is the best when it improved
  out = jnp.where(pick_best[:, None], best, cur)
  return (out, jnp.where(pick_best, loss[:, 1], loss[:, 0]),
          jnp.where(pick_best, hit[:, 1], hit[:, 0]), hist, best_hist)


def allowed_ids(vocab: int, blacklist: Sequence[int]) -> np.ndarray:
  """int32 [Va] the ids not blacklisted, or ValueError when none is left."""
  black = np.asarray(list(blacklist), np.int64)
  if black.size and (black.min() < 0 or black.max() >= vocab):
    raise ValueError(f"blacklist holds ids outside [0, {vocab}): {sorted(set(black.tolist()))}")
  keep = np.ones(vocab, bool)
  keep[black] = False
  if not keep.any():
    raise ValueError(f"blacklist removes all {vocab} tokens; nothing is left to search over")
  return np.flatnonzero(keep).astype(np.int32)


def check_search_args(num_tokens: int, top_k: int, batch_size: int, num_iters: int,
                      num_allowed: int) -> None:
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1 (the control prompt length), got {num_tokens}")
  if not 1 <= top_k <= num_allowed:
    raise ValueError(f"top_k must be in [1, {num_allowed}] (the tokens not blacklisted), got "
                     f"{top_k}; lower top_k or shorten the blacklist")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1 (candidates per iteration), got {batch_size}")
  if num_iters < 0:
    raise ValueError(f"num_iters must be >= 0, got {num_iters}")


def gcg_batch(params: Any, pairs: CL.Pairs, *, apply: CL.ApplyFn, rng: jax.Array, init: Any,
              allowed: np.ndarray, top_k: int = 128, batch_size: int = 768, num_iters: int = 34,
              chunk: int | None = None, keep_best: bool = False):
  """GCG on B packed pairs at once (the engine of `gcg` and `backoff_control_batch`).

  init: int [B,k] starting prompts; allowed: int32 [Va] ids allowed in a prompt.
  Returns numpy (prompt [B,k], loss [B], hit [B], history [I+1,B], best_history [I+1,B]).
  """
  vocab = CL.vocab_size(params)
  init = np.asarray(init, np.int32)
  if init.ndim != 2 or init.shape[0] != len(pairs):
    raise ValueError(f"init must be int [B={len(pairs)}, k], got shape {init.shape}")
  check_search_args(init.shape[1], top_k, batch_size, num_iters, len(allowed))
  mask = np.zeros(vocab, bool)
  mask[allowed] = True
  if not mask[init].all():
    raise ValueError("init holds blacklisted ids; start from allowed tokens only")
  out = _gcg_run(apply, params, jnp.asarray(init), jnp.asarray(mask), *pairs.arrays(), rng,
                 jnp.asarray(bool(keep_best)), top_k=top_k, batch_size=batch_size,
                 num_iters=num_iters, chunk=chunk)
  return tuple(np.asarray(a) for a in out)


def random_prompts(rng: jax.Array, allowed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Uniform prompts over the allowed ids, every allowed id included (authors' randint(1, …)
  skipped the first one, spec C3)."""
  idx = jax.random.randint(rng, shape, 0, len(allowed))
  return np.asarray(allowed)[np.asarray(idx)]


def gcg(params: Any, x0: Any, y: Any, *, config: ModelConfig | None = None,
        apply_fn: CL.ApplyFn | None = None, rng: jax.Array, num_tokens: int, top_k: int = 128,
        batch_size: int = 768, num_iters: int = 34, blacklist: Sequence[int] = (),
        keep_best: bool = False, init: Any = None, chunk: int | None = 301) -> ControlResult:
  """GCG for one pair: a control prompt of num_tokens tokens steering x0 [P0] to y [T].

  rng: jax PRNG key (the initial prompt and every candidate draw). init: optional int
  [num_tokens] starting prompt (a warm start); default uniform over the allowed ids.
  chunk: model rows per call when scoring candidates (memory), None = all at once.
  Returns a ControlResult with length = num_tokens on success, else NOT_FOUND, and the loss
  history of the iterates.
  """
  apply = CL.resolve_apply(config, apply_fn)
  vocab = CL.vocab_size(params)
  allowed = allowed_ids(vocab, blacklist)
  check_search_args(num_tokens, top_k, batch_size, num_iters, len(allowed))
  pairs = CL.pack_pairs([x0], [y], vocab, max_prompt=num_tokens,
                        max_seq_len=config.max_seq_len if config is not None else None)
  rng_init, rng_run = jax.random.split(rng)
  if init is None:
    init = random_prompts(rng_init, allowed, (1, num_tokens))
  else:
    init = CL.as_ids(init, "init", vocab)[None]
    if init.shape[1] != num_tokens:
      raise ValueError(f"init has {init.shape[1]} tokens, expected num_tokens={num_tokens}")
  base, _ = CL.score_jit(apply, params, jnp.zeros((1, 1, 0), jnp.int32), *pairs.arrays())
  prompt, loss, hit, hist, best_hist = gcg_batch(
      params, pairs, apply=apply, rng=rng_run, init=init, allowed=allowed, top_k=top_k,
      batch_size=batch_size, num_iters=num_iters, chunk=chunk, keep_best=keep_best)
  return ControlResult(
      length=num_tokens if hit[0] else NOT_FOUND, prompt=tuple(int(v) for v in prompt[0]),
      loss=float(loss[0]), base_loss=float(base[0, 0]), losses={0: float(base[0, 0]),
                                                                num_tokens: float(loss[0])},
      history=hist[:, 0], best_history=best_hist[:, 0])
