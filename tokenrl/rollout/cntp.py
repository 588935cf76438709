"""Cautious Next Token Prediction (CNTP; Wang et al., Findings of ACL 2025; spec §10).

    ids = punctuation_ids(tokenizer)                 # '.', ',', '\\n', ... -> token ids
    rollout, stats = cntp_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                                 punctuation=ids, temperature=0.8, top_p=0.95)
    stats.sampled_tokens / stats.emitted             # tokens drawn per token kept

Per row and step: π = the processed distribution (temperature, top-k, top-p, as `sample` applies
them in `choose_tokens`), H = its entropy (nats; exact, where the reference adds 1e-10 inside the
log), N = `cntp_num_trials(H)`. N <= 1: one ordinary token from π (the key
`sample` uses for that column). N >= 2: N independent trials from the same state, each drawing
tokens from π (then from the processed distribution after each drawn token) until it draws a
token of P (punctuation), a stop token, `max_trial_tokens` tokens or the last column; the
trial with the lowest PPL_j = exp(−mean log π(token)) over its tokens (the closing one
included) is appended, and decoding goes on from its KV state. The first token of every trial
reuses π (the reference re-runs the forward for it: same distribution).

Evaluation only: the selection favours low-perplexity trials, so the law of the output is not
π. The returned log-probs/entropies are those of π at each emitted token (what each token was
drawn from), not of the trajectory law: the RL loop must not use them as behaviour log-probs.

Engine (one jitted prefill + one `lax.while_loop` over decision steps, as `sample`):
  cache      one row per sequence, per-row write index (`init_cache(row_index=True)`), C = P + T
             + 1 slots: index[n] = P + length[n] always (every emitted token is in the cache,
             and `logits` [N,V] are the next-token logits after it). The spare slot takes the
             throwaway write of a row that is not decoding (a batched forward writes every
             row; its index is then set back), so no write is clamped onto a live slot.
  a step     `lax.cond` on "some live row has N >= 2":
    plain    every live row draws one token (`choose_tokens`, key fold_in(fold_in(rng, row),
             column), `sample`'s scheme) and forwards it: `sample`'s decode step on N rows.
    branch   fork: each row's cache is copied to M = max_trials sub-rows (row n·M + j), a
             while_loop over trial positions draws and forwards one token per open sub-row
             (sub-rows j >= N_row are masked; a row with N_row <= 1 runs its ordinary token as
             sub-row 0, with the plain key, so its output does not depend on other rows), then
             `select_trial` (argmin PPL, ties to the lowest j) and a gather of the winner's
             tokens, logits and cache rows back to N rows.
  keys       column c's key s = fold_in(fold_in(rng, row), c); trial j's k-th token uses
             fold_in(fold_in(s, j), k), with c the column the trial starts at (each decision
             step starts at a new column, so no key is ever used twice by a row).
Cost: a plain step is `sample`'s (plus the conditional). A branch step holds M copies of the
KV cache (transient; M× the sequence's KV memory) and runs L·N·M row-forwards, L the longest
trial among the batch's branching rows (<= max_trial_tokens): sub-rows that are masked or
finished still ride in the batch. `CNTPStats.row_forwards` counts what ran; `sampled_tokens`
is the algorithm's own cost (every trial token, losers included: one forward each).
Measured (tiny qwen2 at init, V = 58 char vocabulary, P = 8 punctuation chars, 8 prompts, T = 64,
M = 10, K = 16, temperature 0.8, top-p 0.95, 2 CPU cores; its entropies ~2.9 nats): the default
band branches at every step: 19x sampled tokens per emitted token, 118x row-forwards, 28x
`sample`'s wall time; band (2.6, 3.4): 6.7x, 69x, 16x. With N = 1 everywhere: `sample`'s
tokens and time. A trained model branches far less (low entropy outside decision points).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.controls import cntp_num_trials
from tokenrl.rollout.sampler import place_rows, prepare_rows
from tokenrl.rollout.sampling import choose_tokens
from tokenrl.rollout.speculative import _per_layer_cache, _put_columns
from tokenrl.types import Rollout

# The reference's punctuation strings (wyzjack/CNTP README snippet).
CNTP_PUNCTUATION = (".", ",", "\n", "?", "!", ":", ";", ")", "]", "}")


def punctuation_ids(tokenizer: Any, strings: Sequence[str] = CNTP_PUNCTUATION, *,
                    ends_with: bool = False) -> tuple[int, ...]:
  """The punctuation set P as token ids.

  ends_with=False (the reference): the first token of each string's encoding (no special
    tokens). With BPE tokenizers, merged tokens such as " ." or ".\\n" are then not in P.
  ends_with=True: every id whose decoded text ends in one of `strings` (scans the vocabulary
    once, `tokenizer.vocab_size` decodes), the merged variants included.
  """
  if not strings or any(not isinstance(s, str) or not s for s in strings):
    raise ValueError(f"strings must be non-empty strings, got {strings!r}")
  if ends_with:
    suffixes = tuple(strings)
    ids = [i for i in range(int(tokenizer.vocab_size))
           if tokenizer.decode([i]).endswith(suffixes)]
  else:
    ids = []
    for s in strings:
      enc = list(tokenizer.encode(s, add_special_tokens=False))
      if not enc:
        raise ValueError(f"punctuation {s!r} encodes to no token under this tokenizer")
      ids.append(int(enc[0]))
  return tuple(dict.fromkeys(ids))


def select_trial(logprobs: jax.Array, counts: jax.Array, num_trials: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """The winning trial of each row: argmin PPL over its first num_trials trials.

  logprobs f32 [N,M,K]: log π of each trial's tokens (entries at k >= counts ignored).
  counts   int32 [N,M]: tokens in each trial (0 = no trial).
  num_trials int32 [N]: trials j < num_trials[n] compete (the rest are masked sub-rows).
  Returns (winner int32 [N], ppl f32 [N,M] = exp(−mean log π), inf where not competing).
  Compares the mean log-prob (argmin PPL = argmax mean log π, monotone, no exp overflow);
  ties go to the lowest j (jnp.argmin's first minimum). A row with no competing trial gets 0.
  """
  k = logprobs.shape[-1]
  valid = jnp.arange(k) < counts[..., None]
  mean = jnp.sum(jnp.where(valid, logprobs, 0.0), axis=-1) / jnp.maximum(counts, 1)
  competing = (jnp.arange(counts.shape[1])[None, :] < num_trials[:, None]) & (counts > 0)
  neg_mean = jnp.where(competing, -mean, jnp.inf)
  winner = jnp.argmin(neg_mean, axis=-1).astype(jnp.int32)
  return winner, jnp.exp(neg_mean)


@dataclasses.dataclass(frozen=True)
class CNTPStats:
  """Counters of one `cntp_sample` call (host ints; the prefill excluded).

  steps          decision steps (outer while_loop trips).
  branch_steps   steps that took the branch path (some live row had N >= 2).
  branch_points  Σ over rows of the steps at which the row branched (N >= 2).
  trial_tokens   tokens drawn inside trials of branch points, losing trials included.
  emitted        tokens emitted (Σ mask).
  sampled_tokens all tokens drawn: ordinary ones + trial_tokens (one forward each: the
                 algorithm's compute, what an ideal engine would pay).
  row_forwards   row·position forwards this engine ran: N per plain step, N·M per trial
                 position of a branch step (idle and finished sub-rows included).
  trials         int32 [N,T] (numpy): at the first token each decision step emitted, its trial
                 count N (1: an ordinary token); 0 on the tokens after it (the rest of the
                 winning trial) and on padding. Marks where and how widely each row branched.
  """

  steps: int
  branch_steps: int
  branch_points: int
  trial_tokens: int
  emitted: int
  sampled_tokens: int
  row_forwards: int
  trials: np.ndarray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CNTPState:
  """Carry of the decision-step while_loop (N rows, T = max_new_tokens, C = P + T + 1)."""

  cache: dict[str, Any]  # KV cache, index int32 [N] = P + length: every emitted token
  logits: jax.Array  # f32 [N,V] next-token logits after the last emitted token
  tokens: jax.Array  # int32 [N,T]
  mask: jax.Array  # int32 [N,T]
  logprobs: jax.Array  # f32 [N,T] log π of each emitted token
  entropy: jax.Array  # f32 [N,T] entropy of π at each emitted token
  length: jax.Array  # int32 [N] tokens emitted so far
  done: jax.Array  # bool [N] a stop token was emitted
  counts: jax.Array  # int32 [3] steps, branch steps, row_forwards
  row_counts: jax.Array  # int32 [3,N] branch points, trial tokens, winning trials' tokens
  trials: jax.Array  # int32 [N,T] see CNTPStats.trials


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrialState:
  """Carry of a branch step's trial while_loop (R = N·M sub-rows, K = max_trial_tokens)."""

  cache: dict[str, Any]  # the forked KV cache, R rows
  logits: jax.Array  # f32 [R,V] next-token logits after the sub-row's last forwarded token
  tokens: jax.Array  # int32 [R,K] the trial's tokens
  logprobs: jax.Array  # f32 [R,K]
  entropy: jax.Array  # f32 [R,K]
  count: jax.Array  # int32 [R] tokens drawn
  pending: jax.Array  # bool [R] the last drawn token is not forwarded yet
  closed: jax.Array  # bool [R] the trial ended (P, stop, cap): no more draws
  trips: jax.Array  # int32 [] forwards run


def _take_rows(cache: dict[str, Any], rows: jax.Array) -> dict[str, Any]:
  """The cache of rows `rows` (int [R]) of `cache`: fork (repeated rows) or gather (winners).

  Row axis: 0 of the per-layer k/v tuples ([N,K,H,C] / [N,K,C,H]), 1 of the stacked [L,N,C,K,H],
  0 of pos [N,C] and index [N].
  """
  kv_axis = 0 if isinstance(cache["k"], (tuple, list)) else 1
  take_kv = lambda x: jnp.take(x, rows, axis=kv_axis)
  return {"k": jax.tree.map(take_kv, cache["k"]), "v": jax.tree.map(take_kv, cache["v"]),
          "pos": jnp.take(cache["pos"], rows, axis=0),
          "index": jnp.take(cache["index"], rows, axis=0)}


def cntp_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                max_new_tokens: int, punctuation: Sequence[int], max_trials: int = 10,
                h_lo: float = 0.01, h_hi: float = 1.5, max_trial_tokens: int = 16,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
                prompt_mask: Any = None, cache_dtype: Any = None) -> tuple[Rollout, CNTPStats]:
  """CNTP decoding (lossy; evaluation only: see the module docstring).

  Args:
    params, prompts, config, rng, max_new_tokens, temperature, top_k, top_p, num_samples,
    stop_tokens, prompt_mask, cache_dtype: as `tokenrl.rollout.sample` (row i uses
      fold_in(rng, i): its output does not depend on the other rows). With N = 1 at every
      step (e.g. h_lo above any entropy) the output is `sample`'s with the same arguments.
      temperature 0 (greedy) is allowed but makes all trials of a branch point identical.
    punctuation: P, the token ids that close a trial (`punctuation_ids(tokenizer)` gives the
      reference's set). Empty: trials end only at a stop token or a cap.
    max_trials: N_max (M sub-rows per row at a branch point); 1 never branches.
    h_lo, h_hi: the entropy band (nats) over which N rises from 1 to N_max (`cntp_num_trials`);
      traced, so a sweep over the band reuses one compile.
    max_trial_tokens: K, the most tokens per trial (static shapes need a cap; the reference has
      none, and 16 suits short-sentence tiny models; raise it for long sentences).

  Returns:
    (Rollout [N,T]: tokens, mask, log π / entropy of π at each emitted token, truncated;
     CNTPStats).
  """
  rollout, stats, _ = _decode(
      params, prompts, config=config, rng=rng, max_new_tokens=max_new_tokens,
      punctuation=punctuation, max_trials=max_trials, h_lo=h_lo, h_hi=h_hi,
      max_trial_tokens=max_trial_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      num_samples=num_samples, stop_tokens=stop_tokens, prompt_mask=prompt_mask,
      cache_dtype=cache_dtype)
  return rollout, stats


def _decode(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
            max_new_tokens: int, punctuation: Sequence[int], max_trials: int, h_lo: float,
            h_hi: float, max_trial_tokens: int, temperature: float, top_k: int, top_p: float,
            num_samples: int, stop_tokens: Sequence[int] | None, prompt_mask: Any,
            cache_dtype: Any) -> tuple[Rollout, CNTPStats, tuple[dict[str, Any], jax.Array]]:
  """`cntp_sample`, plus the final (KV cache, next-token logits f32 [N,V]) for tests: they
  must equal a fresh prefill of prompt + emitted tokens."""
  if not isinstance(max_trials, (int, np.integer)) or max_trials < 1:
    raise ValueError(f"max_trials (N_max) must be an int >= 1, got {max_trials!r}")
  if not isinstance(max_trial_tokens, (int, np.integer)) or max_trial_tokens < 1:
    raise ValueError(f"max_trial_tokens must be an int >= 1, got {max_trial_tokens!r}")
  if not float(h_hi) > float(h_lo):  # also refuses NaN
    raise ValueError(f"CNTP needs h_hi > h_lo (nats), got h_lo={h_lo}, h_hi={h_hi}")
  if config.attention != "full":
    raise ValueError(f"cntp_sample forks rows with a per-row cache index; attention="
                     f"{config.attention!r} keeps one write column for all rows: use 'full'")
  punct = tuple(dict.fromkeys(int(t) for t in punctuation))
  bad = [t for t in punct if not 0 <= t < config.vocab_size]
  if bad:
    raise ValueError(f"punctuation ids {bad} are outside the vocabulary [0, {config.vocab_size})")
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  tokens, mask, rng, temp = place_rows(None, tokens, mask, rng, temperature)
  h_band = jnp.asarray([h_lo, h_hi], jnp.float32)
  rollout, counts, row_counts, trials, state = _generate(
      params, tokens, mask, rng, temp, h_band, config=config, max_new_tokens=int(max_new_tokens),
      top_k=int(top_k), top_p=float(top_p), stop_tokens=stops, punctuation=punct,
      max_trials=int(max_trials), max_trial_tokens=int(max_trial_tokens), cache_dtype=dtype)
  steps, branch_steps, row_forwards = (int(x) for x in np.asarray(counts))
  branch_points, trial_tokens, won = (int(x) for x in np.asarray(row_counts).sum(axis=1))
  emitted = int(np.asarray(rollout.mask).sum())
  # Every token drawn: the ordinary ones (emitted, not by a trial) + all trial tokens.
  stats = CNTPStats(steps=steps, branch_steps=branch_steps, branch_points=branch_points,
                    trial_tokens=trial_tokens, emitted=emitted,
                    sampled_tokens=emitted - won + trial_tokens, row_forwards=row_forwards,
                    trials=np.asarray(trials))
  return rollout, stats, state


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "top_p",
                                             "stop_tokens", "punctuation", "max_trials",
                                             "max_trial_tokens", "cache_dtype"))
def _generate(params, prompt_tokens, prompt_mask, rng, temperature, h_band, *, config,
              max_new_tokens, top_k, top_p, stop_tokens, punctuation, max_trials,
              max_trial_tokens, cache_dtype):
  """(Rollout, counts int32 [3], row_counts int32 [3,N], trials int32 [N,T], (cache, logits
  f32 [N,V])); h_band f32 [2] = (h_lo, h_hi)."""
  n, p = prompt_tokens.shape
  steps, m, cap_k = max_new_tokens, max_trials, max_trial_tokens
  r = n * m
  per_layer = _per_layer_cache(config)
  cache = transformer.init_cache(config, n, p + steps + 1, cache_dtype, per_layer=per_layer,
                                 row_index=True)
  params = transformer.split_layers(params) if per_layer else params
  hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  logits = transformer.unembed(params, hidden[:, -1], config=config)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  # `sample`'s key of column t for every row and column, hashed once (not in the loop).
  col_keys = jax.vmap(lambda rk: jax.vmap(lambda t: jax.random.fold_in(rk, t))(
      jnp.arange(steps)))(row_keys)  # [N,T]
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  closers = jnp.asarray(tuple(stop_tokens) + tuple(punctuation) or (-1,), jnp.int32)
  rows = jnp.arange(n)
  scale = lambda x: x.astype(jnp.float32) / jnp.where(greedy, 1.0, temperature)
  choose = lambda scaled, keys: choose_tokens(scaled, keys, greedy=greedy, top_k=top_k,
                                              top_p=top_p)

  def forward(cache, token, live):
    """Feed token int32 [B] of the `live` rows at cache['index']: (logits f32 [B,V], cache).

    Other rows ride along as padding (segment 0: position -1 written at their index slot, past
    their history) and keep their index, so the slot is rewritten by their next real token."""
    hidden, new = transformer.forward(params, token[:, None], config=config, cache=cache,
                                      segment_ids=live.astype(jnp.int32)[:, None],
                                      return_hidden=True)
    logits = transformer.unembed(params, hidden[:, 0], config=config)
    return logits, {**new, "index": cache["index"] + live}

  def plain_step(st: CNTPState, scaled, plain, live, n_trials) -> CNTPState:
    del scaled, n_trials
    tok, lp, ent = plain
    logits, cache = forward(st.cache, tok, live)
    cols = jnp.where(live, st.length, steps)[:, None]  # column steps: dropped
    put = lambda buf, val: _put_columns(buf, cols, val[:, None])
    return dataclasses.replace(
        st, cache=cache, logits=jnp.where(live[:, None], logits, st.logits),
        tokens=put(st.tokens, tok), mask=put(st.mask, jnp.ones((n,), jnp.int32)),
        logprobs=put(st.logprobs, lp), entropy=put(st.entropy, ent),
        trials=put(st.trials, jnp.ones((n,), jnp.int32)), length=st.length + live,
        done=st.done | (live & jnp.isin(tok, stops)),
        counts=st.counts + jnp.asarray([1, 0, n], jnp.int32))

  def branch_step(st: CNTPState, scaled, plain, live, n_trials) -> CNTPState:
    branching = live & (n_trials > 1)
    # Trials that compete per row: N for a branching row, 1 (its ordinary token) for another
    # live row, 0 for a finished one.
    n_eff = jnp.where(branching, n_trials, live.astype(jnp.int32))
    cap = jnp.where(branching, jnp.minimum(cap_k, steps - st.length), 1)  # [N] tokens per trial
    jj = jnp.arange(m)
    active = (jj[None, :] < n_eff[:, None]).reshape(r)
    cap_r = jnp.repeat(cap, m)
    step_keys = col_keys[rows, jnp.clip(st.length, 0, steps - 1)]  # [N]
    trial_keys = jax.vmap(lambda s: jax.vmap(lambda j: jax.vmap(
        lambda k: jax.random.fold_in(jax.random.fold_in(s, j), k))(jnp.arange(cap_k)))(jj))(
            step_keys).reshape(r, cap_k)  # trial j, token k of row n at [n·M + j, k]
    # First tokens: all from π (no forward). Sub-row 0 of a non-branching row is its ordinary
    # token (the plain key), so it is what a plain step would draw.
    tok0, lp0, ent0 = choose(jnp.repeat(scaled, m, axis=0), trial_keys[:, 0])
    use_plain = ((~branching)[:, None] & (jj[None, :] == 0)).reshape(r)
    first = [jnp.where(use_plain, jnp.repeat(a, m), b) for a, b in zip(plain, (tok0, lp0, ent0))]
    col0 = lambda val, fill: jnp.full((r, cap_k), fill, val.dtype).at[:, 0].set(
        jnp.where(active, val, fill))
    ts = TrialState(
        cache=_take_rows(st.cache, jnp.repeat(rows, m)), logits=jnp.repeat(st.logits, m, axis=0),
        tokens=col0(first[0], config.pad_id), logprobs=col0(first[1], 0.0),
        entropy=col0(first[2], 0.0), count=active.astype(jnp.int32), pending=active,
        closed=jnp.isin(first[0], closers) | (cap_r <= 1), trips=jnp.zeros((), jnp.int32))

    def body(ts: TrialState) -> TrialState:
      last = jnp.take_along_axis(ts.tokens, jnp.maximum(ts.count - 1, 0)[:, None], axis=1)[:, 0]
      logits, cache = forward(ts.cache, last, ts.pending)
      logits = jnp.where(ts.pending[:, None], logits, ts.logits)
      draw = ts.pending & ~ts.closed
      keys = trial_keys[jnp.arange(r), jnp.clip(ts.count, 0, cap_k - 1)]
      tok, lp, ent = choose(scale(logits), keys)
      cols = jnp.where(draw, ts.count, cap_k)[:, None]
      put = lambda buf, val: _put_columns(buf, cols, val[:, None])
      count = ts.count + draw
      return TrialState(
          cache=cache, logits=logits, tokens=put(ts.tokens, tok), logprobs=put(ts.logprobs, lp),
          entropy=put(ts.entropy, ent), count=count, pending=draw,
          closed=ts.closed | (draw & (jnp.isin(tok, closers) | (count >= cap_r))),
          trips=ts.trips + 1)

    ts = jax.lax.while_loop(lambda ts: jnp.any(ts.pending), body, ts)
    count = ts.count.reshape(n, m)
    winner, _ = select_trial(ts.logprobs.reshape(n, m, cap_k), count, n_eff)
    pick = rows * m + winner
    won = ts.count[pick]  # [N] 0 for finished rows
    kk = jnp.arange(cap_k)[None, :]
    cols = jnp.where(kk < won[:, None], st.length[:, None] + kk, steps)
    put = lambda buf, val: _put_columns(buf, cols, val)
    win_tok = ts.tokens[pick]
    stopped = jnp.any(jnp.isin(win_tok, stops) & (kk < won[:, None]), axis=1)
    trial_tokens = jnp.sum(jnp.where(branching[:, None], count, 0), axis=1)
    return dataclasses.replace(
        st, cache=_take_rows(ts.cache, pick), logits=ts.logits[pick],
        tokens=put(st.tokens, win_tok), mask=put(st.mask, jnp.ones((n, cap_k), jnp.int32)),
        logprobs=put(st.logprobs, ts.logprobs[pick]), entropy=put(st.entropy, ts.entropy[pick]),
        trials=put(st.trials, jnp.where(kk == 0, n_eff[:, None], 0)),
        length=st.length + won, done=st.done | stopped,
        counts=st.counts + jnp.stack([1, 1, r * ts.trips]).astype(jnp.int32),
        row_counts=st.row_counts + jnp.stack(
            [branching, trial_tokens, jnp.where(branching, won, 0)]).astype(jnp.int32))

  def body(st: CNTPState) -> CNTPState:
    live = ~st.done & (st.length < steps)
    scaled = scale(st.logits)
    # The ordinary draw of every row: also gives H, the entropy of π (`choose_tokens`' own).
    plain = choose(scaled, col_keys[rows, jnp.clip(st.length, 0, steps - 1)])
    # cntp_num_trials on the entropy mapped onto the band [0, 1]: the same N, with h_lo / h_hi
    # traced (its own h_lo / h_hi are static floats it checks on the host).
    band = (plain[2] - h_band[0]) / (h_band[1] - h_band[0])
    n_trials = cntp_num_trials(band, max_trials=m, h_lo=0.0, h_hi=1.0)
    args = (st, scaled, plain, live, n_trials)
    return jax.lax.cond(jnp.any(live & (n_trials > 1)), branch_step, plain_step, *args)

  st = CNTPState(
      cache=cache, logits=logits.astype(jnp.float32),
      tokens=jnp.full((n, steps), config.pad_id, jnp.int32), mask=jnp.zeros((n, steps), jnp.int32),
      logprobs=jnp.zeros((n, steps), jnp.float32), entropy=jnp.zeros((n, steps), jnp.float32),
      length=jnp.zeros((n,), jnp.int32), done=jnp.zeros((n,), bool),
      counts=jnp.zeros((3,), jnp.int32), row_counts=jnp.zeros((3, n), jnp.int32),
      trials=jnp.zeros((n, steps), jnp.int32))
  st = jax.lax.while_loop(lambda st: jnp.any(~st.done & (st.length < steps)), body, st)
  rollout = Rollout(tokens=st.tokens, mask=st.mask, logprobs=st.logprobs, entropy=st.entropy,
                    prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, truncated=~st.done)
  return rollout, st.counts, st.row_counts, st.trials, (st.cache, st.logits)
