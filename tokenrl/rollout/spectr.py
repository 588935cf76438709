"""SpecTr multi-draft speculative decoding (Sun et al. 2023) as a batched, jitted decode loop.

    rollout, stats = spectr_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                                   draft=LayerDraft(1), num_drafts=4, num_draft_tokens=4)

Lossless: the completions are distributed exactly as `sample`'s (same temperature / top-k /
top-p), whatever the draft (spec decoding-and-test-time §4 "Multi-step SpecTr"). The contract is
`speculative_sample`'s (same prompts handling, Rollout, per-row RNG, target log-probs).

Each prompt row keeps k draft replicas: rows r·k .. r·k+k-1 of the draft and target caches
(R = N·k rows, replicas of a row contiguous). One jitted function with static shapes: prefill
of the N prompt rows (target and draft), copied to the k replicas, the first token exactly as
`sample` draws it, then a `lax.while_loop` of rounds. A round

  1. drafts L tokens in every replica (L draft forwards over R rows), each replica with its own
     keys, so the k sequences are i.i.d. given the row's context (what K-SEQ needs, §4(b) 4);
  2. runs ONE target forward over the R rows × [last, x̃_1..x̃_L] (L+1 positions at the row's
     cache index): the processed target laws p [N,k,L+1,V];
  3. verifies with `multidraft.spectr_verify` (K-SEQ depth by depth; `spectr_verify_greedy` at
     temperature 0) and emits the accepted draft's first n tokens, then the residual or bonus y;
  4. makes every replica of the row take the accepted draft's state: the target and draft caches
     are gathered along the row axis from the surviving replica (its slots past the accepted
     prefix are stale and masked by the per-row index, exactly as after a single-draft round).

k = 1 is verified by `speculative_sample`'s rule with its keys and draft lengths (K-SEQ with one
candidate is that rule, ρ* = 1), so k = 1 reproduces `speculative_sample` token for token.

RNG, per row r and completion column t, col(t) = fold_in(fold_in(rng, r), t) as in
`speculative_sample`: replica i drafts column t with fold_in(col(t), 1) (i = 0, the single-draft
key) or fold_in(col(t), 2 + i) (i >= 1). k >= 2: a round starting at column t verifies with
fold_in(col(t), 2) (split per depth by spectr_verify; a row starts one round per column at most).
k = 1: speculative_sample's keys (uniform of column t: fold_in(col(t), 2); y: col(t + n)). A
draft key is reused when its column is drafted again in a later round, but only for draws the
earlier round never consulted (the verifier stops at the first residual, and depths past it are
never read), so every emitted decision uses fresh randomness.

Drafting always runs L tokens per replica (k >= 2): `spectr_verify` has no per-row draft
length, and emitting past a stop token or past max_new_tokens is cut afterwards, which keeps the
law (a cut prefix of an exact sample is an exact sample of the prefix). A DraftStep.ok = False
is ignored: the replica's tokens are still drawn from the q that verification reads, which is
all that losslessness needs.
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
from tokenrl.rollout.drafts import Draft, DraftInput, NGramDraft
from tokenrl.rollout.multidraft import (kseq_acceptance, optimal_multidraft_acceptance,
                                        spectr_verify, spectr_verify_greedy)
from tokenrl.rollout.sampler import place_rows, prepare_rows
from tokenrl.rollout.sampling import choose_tokens, log_probs_and_entropy, process_logits
# The shared rules of the single-draft engine (the name _per_layer_cache is bound here so a test
# can patch this module's layout choice alone).
from tokenrl.rollout.speculative import SpeculativeStats, _log, _num_accepted, _per_layer_cache
from tokenrl.types import Rollout


@dataclasses.dataclass(frozen=True)
class SpectrStats(SpeculativeStats):
  """Counters of one `spectr_sample` call (host numbers; a row counts while it is live): the
  fields of `SpeculativeStats`, read for L-deep drafts, plus the depth-1 diagnostics.

  rounds           verify passes (while_loop trips).
  row_rounds       Σ over rows of the rounds the row took part in.
  drafted          Σ draft depths verified per row-round (L; k = 1: speculative's K_row).
  accepted         Σ accepted depths n (the accepted prefix length).
  emitted          tokens written by rounds (the first token, drawn at the prefill, excluded).
  acceptance_rate  accepted / drafted.
  mean_accepted    accepted / row_rounds.
  tokens_per_round emitted / row_rounds (at most L+1).
  depth1_positions row-rounds with a depth-1 candidate (the positions the three below average).
  depth1_acceptance achieved: fraction of those where depth 1 was accepted (n >= 1).
  optimal_acceptance mean of Hu et al.'s α*(p, q, k) for k i.i.d. drafts at depth 1: no lossless
                   verifier of these drafts accepts more (spec §5(b)).
  kseq_acceptance  mean of K-SEQ's exact acceptance 1 − (1 − β(ρ*))^k at depth 1: what the
                   achieved depth-1 acceptance estimates.
  single_draft_acceptance mean of Σ min(p, q) at depth 1: one draft's acceptance (spec §2).
  The last three describe the sampling rule (nan at temperature 0, where any lossless rule is
  exact match).
  """

  depth1_positions: int
  depth1_acceptance: float
  optimal_acceptance: float
  kseq_acceptance: float
  single_draft_acceptance: float


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectrState:
  """Carry of the rounds' while_loop (N rows, R = N·k replica rows, T = max_new_tokens,
  C = P + T + L cache slots)."""

  rounds: jax.Array  # int32 []
  cache: dict[str, Any]  # target KV cache over R rows, index int32 [R]
  draft: Any  # the draft's state over R rows
  history: jax.Array  # int32 [N,C] token by cache slot: prompt, then emitted tokens
  tokens: jax.Array  # int32 [N,T]
  mask: jax.Array  # int32 [N,T]
  logprobs: jax.Array  # f32 [N,T]
  entropy: jax.Array  # f32 [N,T]
  length: jax.Array  # int32 [N] tokens emitted so far
  done: jax.Array  # bool [N] a stop token was emitted
  counts: jax.Array  # int32 [6,N] row_rounds, drafted, accepted, emitted, depth-1 positions, hits
  diag: jax.Array  # f32 [3,N] Σ depth-1 α*, K-SEQ acceptance, Σ min(p, q)


def spectr_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                  max_new_tokens: int, draft: Draft, num_drafts: int, num_draft_tokens: int,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
                  prompt_mask: Any = None, cache_dtype: Any = None,
                  prompt_sharding: jax.sharding.NamedSharding | None = None,
                  ) -> tuple[Rollout, SpectrStats]:
  """`sample`'s completions (same law, same contract), drafted as k i.i.d. sequences of L tokens.

  Args:
    params, prompts, config, rng, max_new_tokens, temperature, top_k, top_p, num_samples,
    stop_tokens, prompt_mask, cache_dtype, prompt_sharding: as `tokenrl.rollout.sample` (row r
      uses fold_in(rng, r), so a row's output does not depend on the other rows; N = B·G rows).
    draft: a stochastic `tokenrl.rollout.drafts` draft (ModelDraft, LayerDraft). NGramDraft is
      refused: its proposal is deterministic, so the k drafts would be identical.
    num_drafts: k >= 1 draft sequences per row (k = 1 is `speculative_sample`).
    num_draft_tokens: L >= 1 tokens per draft sequence and round.

  Returns:
    (Rollout [N,T] with the target's processed log-probs / entropies, SpectrStats).
  """
  if not isinstance(num_drafts, int) or num_drafts < 1:
    raise ValueError(f"num_drafts must be an int >= 1, got {num_drafts!r}")
  if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
    raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
  if isinstance(draft, NGramDraft):
    raise ValueError("SpecTr needs a stochastic draft: NGramDraft proposes one deterministic "
                     "token, so its k drafts would be identical; use ModelDraft or LayerDraft "
                     "(or speculative_sample for prompt lookup)")
  if config.attention != "full":
    raise ValueError(f"SpecTr needs a per-row cache index; attention={config.attention!r} keeps "
                     "one write column for all rows: use 'full'")
  draft.check(config)
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  tokens, mask, rng, temp = place_rows(prompt_sharding, tokens, mask, rng, temperature)
  rollout, counts, diag, rounds = _generate(
      params, draft.weights(), tokens, mask, rng, temp, config=config,
      max_new_tokens=max_new_tokens, num_drafts=num_drafts, num_draft=num_draft_tokens,
      top_k=int(top_k), top_p=float(top_p),
      stop_tokens=stops, draft=draft, cache_dtype=dtype)
  row_rounds, drafted, accepted, emitted, positions, hits = (
      int(x) for x in np.asarray(counts).sum(axis=1))
  diag = np.asarray(diag, np.float64).sum(axis=1)
  ratio = lambda a, b: a / b if b else float("nan")
  sampled = temperature > 0 and positions > 0
  optimal, kseq, single = (float(d / positions) if sampled else float("nan") for d in diag)
  stats = SpectrStats(
      rounds=int(rounds), row_rounds=row_rounds, drafted=drafted, accepted=accepted,
      emitted=emitted, acceptance_rate=ratio(accepted, drafted),
      mean_accepted=ratio(accepted, row_rounds), tokens_per_round=ratio(emitted, row_rounds),
      depth1_positions=positions, depth1_acceptance=ratio(hits, positions),
      optimal_acceptance=optimal, kseq_acceptance=kseq, single_draft_acceptance=single)
  return rollout, stats


def _take_rows(tree: Any, src: jax.Array, rows: int) -> Any:
  """tree with its row axis gathered: row j of the result is row src[j] (src int32 [R']).

  KV caches (dicts with k, v, pos, index) know their layout: per-layer k [N,K,H,C] / v [N,K,C,H]
  tuples and pos / index carry rows on axis 0, stacked k, v [L,N,C,K,H] on axis 1. Any other
  leaf whose leading axis has `rows` entries is gathered on axis 0; the rest (scalars, shared
  arrays) is kept as is.
  """
  if isinstance(tree, dict) and {"k", "v", "pos", "index"} <= tree.keys():
    out = {key: _take_rows(val, src, rows) for key, val in tree.items() if key not in ("k", "v")}
    for key in ("k", "v"):
      if isinstance(tree[key], (tuple, list)):
        out[key] = tuple(jnp.take(a, src, axis=0) for a in tree[key])
      else:
        out[key] = jnp.take(tree[key], src, axis=1)
    return out
  if isinstance(tree, dict):
    return {key: _take_rows(val, src, rows) for key, val in tree.items()}
  if isinstance(tree, (tuple, list)):
    return type(tree)(_take_rows(val, src, rows) for val in tree)
  if hasattr(tree, "shape") and tree.ndim >= 1 and tree.shape[0] == rows:
    return jnp.take(tree, src, axis=0)
  return tree


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "num_drafts",
                                             "num_draft", "top_k", "top_p", "stop_tokens",
                                             "draft", "cache_dtype"))
def _generate(params, draft_weights, prompt_tokens, prompt_mask, rng, temperature, *, config,
              max_new_tokens, num_drafts, num_draft, top_k, top_p, stop_tokens, draft,
              cache_dtype):
  n, p = prompt_tokens.shape
  steps, k, depth = max_new_tokens, num_drafts, num_draft
  r_rows = n * k
  v = config.vocab_size
  # C = P + T + L: a verify pass writes L+1 slots from P + length - 1 (length <= T, even for
  # finished rows, which keep running frozen), the draft L from P + length - 2.
  c = p + steps + depth
  per_layer = _per_layer_cache(config)
  target_params = transformer.split_layers(params) if per_layer else params
  cache = transformer.init_cache(config, n, c, cache_dtype, per_layer=per_layer, row_index=True)
  hidden, cache = transformer.forward(target_params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  first_logits = transformer.unembed(target_params, hidden[:, -1], config=config)
  # Prefill N rows once, then copy each to its k replicas (k× cheaper than prefilling R rows).
  rep = jnp.repeat(jnp.arange(n), k)  # [R] replica row -> prompt row
  replica = jnp.tile(jnp.arange(k), n)  # [R] replica id i
  cache = _take_rows(cache, rep, n)
  dparams = draft.prepare(draft_weights, target_params, config=config, per_layer=per_layer)
  dstate = draft.init(dparams, prompt_tokens, prompt_mask, config=config, cache_len=c,
                      cache_dtype=cache_dtype, per_layer=per_layer)
  dstate = _take_rows(dstate, rep, n)

  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  col_key = lambda t: jax.vmap(jax.random.fold_in)(row_keys, t)  # t int32 [N] -> [N] keys
  r_row_keys = row_keys[rep]
  # Replica i's draft key for column t: fold 1 for i = 0 (speculative_sample's), 2 + i after.
  draft_fold = jnp.where(replica == 0, 1, 2 + replica)
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  rows = jnp.arange(n)
  process = lambda logits: process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)

  # The first token: `sample`'s first step exactly (same logits, key col(0) and choose_tokens).
  scaled0, _ = process(first_logits)
  first, logp0, ent0 = choose_tokens(scaled0, col_key(jnp.zeros((n,), jnp.int32)), greedy=greedy,
                                     top_k=top_k, top_p=top_p)
  history = jnp.concatenate([prompt_tokens.astype(jnp.int32),
                             jnp.full((n, steps + depth), config.pad_id, jnp.int32)], axis=1)
  history = history.at[:, p].set(first)
  real = jnp.concatenate([prompt_mask != 0, jnp.ones((n, steps + depth), bool)], axis=1)[rep]
  col = lambda buf, val: buf.at[:, 0].set(val.astype(buf.dtype))
  state = SpectrState(
      rounds=jnp.zeros((), jnp.int32), cache=cache, draft=dstate, history=history,
      tokens=col(jnp.full((n, steps), config.pad_id, jnp.int32), first),
      mask=col(jnp.zeros((n, steps), jnp.int32), jnp.ones((n,), jnp.int32)),
      logprobs=col(jnp.zeros((n, steps), jnp.float32), logp0),
      entropy=col(jnp.zeros((n, steps), jnp.float32), ent0),
      length=jnp.ones((n,), jnp.int32), done=jnp.isin(first, stops),
      counts=jnp.zeros((6, n), jnp.int32), diag=jnp.zeros((3, n), jnp.float32))

  def draft_tokens(dstate, history, length):
    """x̃ int32 [R,L] and their laws q f32 [R,L,V]: L tokens per replica, the draft's state."""
    r_length = length[rep]
    r_history = history[rep]  # [R,C]: the replicas' own drafted tokens are written in below
    r_rows_ix = jnp.arange(r_rows)

    def propose(dstate, r_history, tokens, index, s):
      """One draft step for depth s (1-based): feed `tokens` at `index`, draw x̃_s per replica."""
      seen = jnp.arange(c)[None, :] < (index + tokens.shape[1])[:, None]
      inp = DraftInput(tokens=tokens, index=index, history=r_history, history_mask=real & seen)
      out, dstate = draft.step(dparams, dstate, inp, config=config)
      d_scaled, d_filtered = process(out.logits)  # [R,V]
      column = r_length - 1 + s
      keys = jax.vmap(jax.random.fold_in)(jax.vmap(jax.random.fold_in)(r_row_keys, column),
                                          draft_fold)
      sampled = jax.vmap(jax.random.categorical)(keys, d_filtered)
      # Greedy: replica 0 drafts the draft's argmax (speculative_sample's greedy draft), the
      # others sample the draft's law, so the longest exact match over k drafts is never shorter
      # than the single greedy draft's.
      x = jnp.where(greedy & (replica == 0), jnp.argmax(d_scaled, axis=-1), sampled)
      x = x.astype(jnp.int32)
      r_history = r_history.at[r_rows_ix, p + r_length - 1 + s].set(x, mode="drop")
      return dstate, r_history, x, jax.nn.softmax(d_filtered, axis=-1)

    # s = 1: the sequence's last two tokens (slots P+length-2, P+length-1), see drafts.py.
    index = p + r_length - 2
    pair = jnp.take_along_axis(r_history, index[:, None] + jnp.arange(2)[None, :], axis=1)
    dstate, r_history, x1, q1 = propose(dstate, r_history, pair, index, 1)
    xs = jnp.zeros((r_rows, depth), jnp.int32).at[:, 0].set(x1)
    qs = jnp.zeros((r_rows, depth, v), jnp.float32).at[:, 0].set(q1)

    def body(s, carry):
      dstate, r_history, xs, qs = carry
      prev = jax.lax.dynamic_index_in_dim(xs, s - 2, axis=1)  # [R,1] the token of depth s-1
      dstate, r_history, x, q = propose(dstate, r_history, prev, p + r_length + s - 2, s)
      xs = jax.lax.dynamic_update_index_in_dim(xs, x, s - 1, axis=1)
      qs = jax.lax.dynamic_update_index_in_dim(qs, q, s - 1, axis=1)
      return dstate, r_history, xs, qs

    dstate, _, xs, qs = jax.lax.fori_loop(2, depth + 1, body, (dstate, r_history, xs, qs))
    return xs, qs, dstate

  def verify_single(scaled, filtered, probs, xs, qs, length, live):
    """k = 1: speculative_sample's rule, keys and draft lengths (n, y int32 [N], K_row [N])."""
    xs, qs = xs[:, 0], qs[:, 0]  # [N,L], [N,L,V]
    scaled, filtered, probs = scaled[:, 0], filtered[:, 0], probs[:, 0]  # [N,L+1,V]
    # speculative_sample drafts up to a stop token and only what fits before T; the tokens this
    # engine drafted past that are ignored, so the decisions (and keys) are the same.
    room = jnp.clip(steps - length - 1, 0, depth)
    is_stop = jnp.isin(xs, stops)
    upto_stop = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, depth)
    dlen = jnp.where(live, jnp.minimum(room, upto_stop), 0)
    cols = length[:, None] + jnp.arange(depth)[None, :]  # [N,L]
    u = jax.vmap(lambda rk, ts: jax.vmap(
        lambda t: jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rk, t), 2), ()))(ts))(
            row_keys, cols)
    p_x = jnp.take_along_axis(probs[:, :-1], xs[..., None], axis=-1)[..., 0]
    q_x = jnp.take_along_axis(qs, xs[..., None], axis=-1)[..., 0]
    target_tok = jnp.argmax(scaled[:, :-1], axis=-1)
    n_acc = _num_accepted(jnp.where(greedy, xs == target_tok, u * q_x <= p_x), dlen)
    y_key = col_key(length + n_acc)
    at_n = lambda a: jnp.take_along_axis(a, n_acc[:, None, None], axis=1)[:, 0]
    bonus = jax.vmap(jax.random.categorical)(y_key, at_n(filtered))
    in_draft = jnp.arange(depth)[None, :] < dlen[:, None]
    q_pad = jnp.concatenate([jnp.where(in_draft[..., None], qs, 0.0),
                             jnp.zeros((n, 1, v), jnp.float32)], axis=1)
    resid = jnp.maximum(at_n(probs) - at_n(q_pad), 0.0)
    resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, at_n(probs))
    fixed = jax.vmap(jax.random.categorical)(y_key, _log(resid))
    y = jnp.where(greedy, jnp.argmax(at_n(scaled), axis=-1),
                  jnp.where(n_acc == dlen, bonus, fixed))
    return n_acc, y.astype(jnp.int32), dlen

  def cond(state: SpectrState) -> jax.Array:
    return jnp.any(~state.done & (state.length < steps))

  def body(state: SpectrState) -> SpectrState:
    length = state.length
    live = ~state.done & (length < steps)
    xs, qs, dstate = draft_tokens(state.draft, state.history, length)
    last = jnp.take_along_axis(state.history, (p + length - 1)[:, None], axis=1)[rep]  # [R,1]
    verify = jnp.concatenate([last, xs], axis=1)  # [R,L+1]
    cache = {**state.cache, "index": (p + length - 1)[rep]}  # rollback: the row's logical length
    logits, cache = transformer.forward(target_params, verify, config=config, cache=cache,
                                        segment_ids=jnp.ones_like(verify))
    scaled, filtered = process(logits)  # [R,L+1,V]
    probs = jax.nn.softmax(filtered, axis=-1)
    by_row = lambda a: a.reshape((n, k) + a.shape[1:])
    scaled, filtered, probs = by_row(scaled), by_row(filtered), by_row(probs)  # [N,k,L+1,V]
    xs, qs = by_row(xs), by_row(qs)  # [N,k,L], [N,k,L,V]
    if k == 1:
      n_acc, y, dlen = verify_single(scaled, filtered, probs, xs, qs, length, live)
      chosen = jnp.zeros((n,), jnp.int32)
    else:
      key = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(col_key(length))
      # cond, not where: only one rule runs (K-SEQ's bisections are wasted work at greedy).
      n_acc, chosen, y = jax.lax.cond(greedy, lambda: spectr_verify_greedy(scaled, xs),
                                      lambda: spectr_verify(probs, qs, xs, key))
      dlen = jnp.where(live, depth, 0)
    # Depth-1 diagnostics: every replica shares the context there, so p, q of replica 0 serve.
    # Skipped at greedy, where the host reports nan anyway.
    p1, q1 = probs[:, 0, 0], qs[:, 0, 0]  # [N,V]
    at_depth1 = live & (dlen >= 1)
    diag1 = jax.lax.cond(greedy, lambda: jnp.zeros((3, n), jnp.float32), lambda: jnp.stack([
        optimal_multidraft_acceptance(p1, q1, k), kseq_acceptance(p1, q1, k),
        jnp.sum(jnp.minimum(p1, q1), axis=-1)]).astype(jnp.float32))
    # Emit the chosen draft's x̃_1..x̃_n, then y: cut after the first stop token and at T.
    take = lambda a: jnp.take_along_axis(a, chosen.reshape((n, 1) + (1,) * (a.ndim - 2)),
                                         axis=1)[:, 0]
    jj = jnp.arange(depth + 1)[None, :]
    emit = jnp.concatenate([take(xs), jnp.zeros((n, 1), jnp.int32)], axis=1)
    emit = jnp.where(jj == n_acc[:, None], y[:, None], emit).astype(jnp.int32)
    is_stop = jnp.isin(emit, stops) & (jj <= n_acc[:, None])
    count = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, n_acc + 1)
    count = jnp.where(live, jnp.minimum(count, steps - length), 0)
    write = jj < count[:, None]
    dist = jnp.where(greedy, take(scaled), take(filtered))  # `sample`'s greedy: plain softmax
    logp, ent = log_probs_and_entropy(dist)  # [N,L+1,V] of the chosen draft's path only
    logp = jnp.take_along_axis(logp, emit[..., None], axis=-1)[..., 0]
    cols = jnp.where(write, length[:, None] + jj, steps)  # column T is dropped
    put = lambda buf, val: buf.at[rows[:, None], cols].set(val.astype(buf.dtype), mode="drop")
    slots = jnp.where(write, p + length[:, None] + jj, c)
    history = state.history.at[rows[:, None], slots].set(emit, mode="drop")
    # Every replica continues from the chosen draft's caches. Full-row copies: the rows differ
    # only in this round's L+1 slots, but a per-row slot window would be a scatter of the same
    # order as the attention read each forward does anyway.
    src = jnp.repeat(rows * k + chosen, k)
    cache = _take_rows(cache, src, r_rows)
    dstate = _take_rows(dstate, src, r_rows)
    counts = state.counts + jnp.stack([
        live.astype(jnp.int32), dlen, jnp.where(live, n_acc, 0), count,
        at_depth1.astype(jnp.int32), (at_depth1 & (n_acc >= 1)).astype(jnp.int32)])
    diag = state.diag + jnp.where(at_depth1[None, :], diag1, 0.0)
    return dataclasses.replace(
        state, rounds=state.rounds + 1, cache=cache, draft=dstate, history=history,
        tokens=put(state.tokens, emit), mask=put(state.mask, jnp.ones_like(emit)),
        logprobs=put(state.logprobs, logp), entropy=put(state.entropy, ent),
        length=length + count, done=state.done | jnp.any(is_stop & write, axis=1),
        counts=counts, diag=diag)

  state = jax.lax.while_loop(cond, body, state)
  rollout = Rollout(tokens=state.tokens, mask=state.mask, logprobs=state.logprobs,
                    entropy=state.entropy, prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                    truncated=~state.done)
  return rollout, state.counts, state.diag, state.rounds
