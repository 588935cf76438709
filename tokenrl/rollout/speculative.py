"""Exact speculative sampling (Leviathan et al. 2023; Chen et al. 2023) and SpecDec++ drafting.

    rollout, stats = speculative_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                                        draft=NGramDraft(3), num_draft_tokens=4)

Lossless: the completions are distributed exactly as `sample`'s (same temperature / top-k /
top-p), whatever the draft; only the speed depends on it (spec decoding-and-test-time §2).

One jitted function with static shapes: prefill of the target (and the draft), the first token
exactly as `sample` draws it, then a `lax.while_loop` of rounds. A round

  1. drafts up to K tokens x̃_1..x̃_K with their processed draft laws q_1..q_K (an inner
     while_loop; a row stops drafting at K, at a stop token, when the draft has no proposal,
     when the completion has no room left, or by the SpecDec++ rule; a span draft, prompt
     lookup, gives all K at once with one-hot q and no loop);
  2. runs ONE target forward on [last, x̃_1..x̃_K] (K+1 positions at each row's cache index),
     giving the processed target laws p_1..p_{K+1};
  3. accepts the leading n drafts with u_i·q_i(x̃_i) <= p_i(x̃_i) and emits x̃_1..x̃_n, y with
     y ~ normalize(max(0, p_{n+1} - q_{n+1})) (q := 0 past the row's draft: the bonus token);
  4. rolls both caches back by setting each row's index to its new logical length.

RNG, per row r and completion column t (a column may be drafted in several rounds until it is
emitted, but each key is used by the one decision that emits the column): col(t) =
fold_in(fold_in(rng, r), t) draws the emitted correction / bonus token y at column t, exactly
the key `sample` uses there (so K = 0 reproduces `sample` token for token);
fold_in(col(t), 1) draws the draft token proposed for column t and fold_in(col(t), 2) its
acceptance uniform, independent of the draft sample.

The stored log-probs and entropies are the TARGET's processed distribution at the verify pass
(spec §0.1.5), never the draft's: what `sample` would have stored for the same tokens.

CPU cost (2-core Xeon, shared; runs/spec_models target L=8 D=128 V=58, draft L=2, T=26,
temperature 1; `sample` time / this time, interleaved in one process, min of 5):

                 batch 1 before -> after      batch 8 before -> after
  K=0            0.99x -> 0.97x               1.06x -> 1.10x
  NGram K=4      0.86x -> 0.95x               0.56x -> 0.61x
  ModelDraft K=4 1.15x -> 1.21x               0.75x -> 0.85x
  LayerDraft 2   0.81x -> 0.90x               0.73x -> 0.87x

At these shapes a round costs its XLA:CPU op count, not its FLOPs. On CPU each threefry hash
(fold_in, uniform, categorical's Gumbel noise) lowers to a rolled 5-trip while_loop, and a round
ran ~3 per draft step and ~4 in the verify (`sample`: 2 per token); each scatter is its own serial
loop thunk, and a round ran five. Now the keys, acceptance uniforms and (N·(T+K)·V <= 2^20) the
Gumbel noise are drawn once before the rounds and gathered, y takes one draw from the selected
logits, and the [N,T] / [N,C] writes are fused selects: the same bits (tests/rollout/
test_speculative.py; tokens and log-probs compared before/after). Tried and dropped: the per-row
KV write as selects instead of the vmapped dynamic_update_slice (scatter) in transformer.py:
~5-8% at batch 8, but XLA then fuses the attention differently and the log-probs change in the
last bits (K = 0 is no longer `sample` bit for bit).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import accept_head as accept_head_lib
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.drafts import Draft, DraftInput
from tokenrl.rollout.sampler import place_rows, prepare_rows
from tokenrl.rollout.sampling import choose_tokens, log_probs_and_entropy, process_logits
from tokenrl.types import Rollout


# ----------------------------------------------------------------------------- pure rules


def _check_accept_shapes(p: jax.Array, q: jax.Array, draft_tokens: jax.Array,
                         draft_len: jax.Array) -> None:
  if p.ndim != 3 or q.ndim != 3:
    raise ValueError(f"p must be [B,K+1,V] and q [B,K,V], got p {p.shape}, q {q.shape}")
  b, k1, v = p.shape
  if q.shape != (b, k1 - 1, v):
    raise ValueError(f"q must be [B,K,V] = {[b, k1 - 1, v]} for p {list(p.shape)}, got {list(q.shape)}")
  if draft_tokens.shape != (b, k1 - 1):
    raise ValueError(f"draft_tokens must be [B,K] = {[b, k1 - 1]}, got {list(draft_tokens.shape)}")
  if draft_len.shape != (b,):
    raise ValueError(f"draft_len must be [B] = {[b]}, got {list(draft_len.shape)}")


def _num_accepted(accept: jax.Array, draft_len: jax.Array) -> jax.Array:
  """n int32 [B] = Σ_i Π_{j<=i} accept_j over accept bool [B,K], positions >= draft_len rejected."""
  in_draft = jnp.arange(accept.shape[1])[None, :] < draft_len[:, None]
  return jnp.sum(jnp.cumprod((accept & in_draft).astype(jnp.int32), axis=1), axis=1)


def _residual(p: jax.Array, q: jax.Array, n: jax.Array, draft_len: jax.Array) -> jax.Array:
  """normalize-free residual r [B,V] = max(0, p_{n+1} − q_{n+1}), q := 0 at positions >= draft_len
  (so r = p_{n+1} for the bonus token), and r = p_{n+1} where it sums to 0 (p_{n+1} == q_{n+1})."""
  b, k, v = q.shape
  in_draft = jnp.arange(k)[None, :] < draft_len[:, None]
  q_pad = jnp.concatenate([jnp.where(in_draft[..., None], q, 0.0), jnp.zeros((b, 1, v), q.dtype)],
                          axis=1)  # [B,K+1,V]; q_{K+1} = 0
  p_n = jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0]
  q_n = jnp.take_along_axis(q_pad, n[:, None, None], axis=1)[:, 0]
  resid = jnp.maximum(p_n - q_n, 0.0)
  return jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, p_n)


def _log(x: jax.Array) -> jax.Array:
  """log x with exact -inf at 0 (categorical logits of an unnormalized law)."""
  return jnp.where(x > 0, jnp.log(jnp.where(x > 0, x, 1.0)), -jnp.inf)


def speculative_accept(p: jax.Array, q: jax.Array, draft_tokens: jax.Array, draft_len: jax.Array,
                       key: jax.Array, *, greedy: bool = False) -> tuple[jax.Array, jax.Array]:
  """The exact speculative-sampling rule (spec §2(b) steps 3-4), batched over B rows.

    accept_i = u_i · q_i(x̃_i) <= p_i(x̃_i)  and  i <= draft_len     (u_i ~ U[0,1), i = 1..K)
    n = Σ_i Π_{j<=i} accept_j                                      (leading accepts)
    y ~ normalize(max(0, p_{n+1} − q_{n+1})),  q_i := 0 for i > draft_len (q_{K+1} = 0)
    (y ~ p_{n+1} when that residual sums to 0, i.e. p_{n+1} == q_{n+1})

  Emitting x̃_1..x̃_n, y gives a sample of the target law p whatever q is. greedy=True:
  accept_i = (x̃_i == argmax p_i), y = argmax p_{n+1} (target greedy decoding, token for token).

  Args:
    p: f32 [B,K+1,V] processed target laws p_1..p_{K+1} (p_i given x̃_<i).
    q: f32 [B,K,V] processed draft laws the draft tokens were sampled from.
    draft_tokens: int32 [B,K] x̃_1..x̃_K.
    draft_len: int32 [B] drafted tokens per row; drafts i > draft_len (1-based) are rejected and
      their q is taken as 0 (so a fully accepted short draft gets its bonus token from p).
    key: a PRNG key (row b uses fold_in(key, b)) or [B] keys, one per row. A row's uniforms
      (from fold_in(row_key, 0)) are independent of its residual draw (fold_in(row_key, 1)) and
      of whatever drew the draft tokens.

  Returns:
    (n int32 [B] accepted drafts in [0, draft_len], y int32 [B] the token emitted after them).
  """
  _check_accept_shapes(p, q, draft_tokens, draft_len)
  b, k1, _ = p.shape
  p, q = p.astype(jnp.float32), q.astype(jnp.float32)
  draft_tokens, draft_len = draft_tokens.astype(jnp.int32), draft_len.astype(jnp.int32)
  if key.shape == (b,) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    row_keys = key
  else:
    row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
  if greedy:
    target_tok = jnp.argmax(p, axis=-1).astype(jnp.int32)  # [B,K+1]
    n = _num_accepted(draft_tokens == target_tok[:, :-1], draft_len)
    return n, jnp.take_along_axis(target_tok, n[:, None], axis=1)[:, 0]
  u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (k1 - 1,)))(row_keys)
  p_x = jnp.take_along_axis(p[:, :-1], draft_tokens[..., None], axis=-1)[..., 0]
  q_x = jnp.take_along_axis(q, draft_tokens[..., None], axis=-1)[..., 0]
  n = _num_accepted(u * q_x <= p_x, draft_len)  # division-free u <= p/q
  resid = _residual(p, q, n, draft_len)
  y_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(row_keys)
  y = jax.vmap(jax.random.categorical)(y_keys, _log(resid)).astype(jnp.int32)
  return n, y


def specdec_stop(p_accept: jax.Array, s: int | jax.Array, *, threshold: float, min_tokens: int,
                 max_tokens: int) -> jax.Array:
  """SpecDec++ stop rule (spec §3(b)) after drafting candidate s (1-based).

  p_accept: f32 [...] the running product P_acc = Π ĥ over candidates 1..s-1 (ĥ of candidate
  s is one step late: its hidden state comes out of the next draft forward; factor 1 at s = 1).
  Stop iff s >= max_tokens, or s >= min_tokens and the predicted probability that some
  candidate is rejected, 1 − P_acc, exceeds `threshold`. Returns bool [...].
  """
  s = jnp.asarray(s)
  return (s >= max_tokens) | ((s >= min_tokens) & (1.0 - p_accept > threshold))


def specdec_draft_length(head_probs: Any, *, threshold: float, min_tokens: int,
                         max_tokens: int) -> int:
  """K drafted by the SpecDec++ rule for a scripted ĥ sequence (host, for tests and docs).

  head_probs[i] = ĥ of candidate i+1. After candidate s the rule sees P_acc = Π_{i<s} ĥ_i.
  Example (spec §3(e)): ĥ = 0.9, 0.9, 0.5, h = 0.3, bounds (2, 20) -> 4.
  """
  probs = [float(h) for h in head_probs]
  p_acc = 1.0
  for s in range(1, max_tokens + 1):
    if s > 1:
      if s - 2 >= len(probs):
        raise ValueError(f"head_probs has {len(probs)} entries; the rule needs ĥ of candidate {s - 1}")
      p_acc *= probs[s - 2]
    if bool(specdec_stop(jnp.float32(p_acc), s, threshold=threshold, min_tokens=min_tokens,
                         max_tokens=max_tokens)):
      return s
  return max_tokens


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
  """Counters of one `speculative_sample` call (host floats; a row counts while it is live).

  rounds           verify passes (while_loop trips).
  row_rounds       Σ over rows of the rounds the row took part in.
  drafted          Σ draft lengths K_row (tokens the target verified as drafts).
  accepted         Σ accepted drafts n.
  emitted          tokens written by rounds (the first token, drawn at the prefill, excluded).
  acceptance_rate  accepted / drafted (nan when nothing was drafted).
  mean_accepted    accepted / row_rounds: accepted drafts per round and row.
  tokens_per_round emitted / row_rounds: tokens per verify pass and row (at most K+1).
  """

  rounds: int
  row_rounds: int
  drafted: int
  accepted: int
  emitted: int
  acceptance_rate: float
  mean_accepted: float
  tokens_per_round: float


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpeculativeState:
  """Carry of the rounds' while_loop (N rows, T = max_new_tokens, C = P + T + K cache slots)."""

  rounds: jax.Array  # int32 []
  cache: dict[str, Any]  # target KV cache, index int32 [N]
  draft: Any  # the draft's state (see tokenrl.rollout.drafts)
  history: jax.Array  # int32 [N,C] token by cache slot: prompt, then emitted tokens
  tokens: jax.Array  # int32 [N,T]
  mask: jax.Array  # int32 [N,T]
  logprobs: jax.Array  # f32 [N,T]
  entropy: jax.Array  # f32 [N,T]
  length: jax.Array  # int32 [N] tokens emitted so far
  done: jax.Array  # bool [N] a stop token was emitted
  counts: jax.Array  # int32 [4,N] row_rounds, drafted, accepted, emitted


def speculative_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                       max_new_tokens: int, draft: Draft, num_draft_tokens: int,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
                       prompt_mask: Any = None, cache_dtype: Any = None,
                       accept_head: tuple[Any, int] | None = None, stop_threshold: float = 0.3,
                       min_draft_tokens: int = 2,
                       prompt_sharding: jax.sharding.NamedSharding | None = None,
                       verify_widths: Sequence[int] | str | None = None,
                       ) -> tuple[Rollout, SpeculativeStats]:
  """`sample`'s completions (same law, same contract), drafted by `draft` and verified K+1 at a time.

  Args:
    params, prompts, config, rng, max_new_tokens, temperature, top_k, top_p, num_samples,
    stop_tokens, prompt_mask, cache_dtype, prompt_sharding: as `tokenrl.rollout.sample` (row r
      uses fold_in(rng, r), so a row's output does not depend on the other rows; N = B·G rows,
      groups contiguous; with prompt_sharding the rows, both KV caches and the outputs are split
      over the mesh and a draft's weights must be on that mesh too).
    draft: a `tokenrl.rollout.drafts` draft (ModelDraft, LayerDraft, NGramDraft).
    num_draft_tokens: K, the most tokens drafted per round (SpecDec++: K_max). 0 = no draft:
      every round is one `sample` decode step, with the same tokens for the same rng.
    accept_head: (head_params, num_blocks) of `tokenrl.models.accept_head` on the draft's
      hidden states: SpecDec++ adaptive draft length (spec §3(b)); needs a draft with hidden
      states (not NGramDraft).
    stop_threshold: SpecDec++ h: stop drafting once 1 − Π ĥ > h.
    min_draft_tokens: SpecDec++ K_min: never stop before this many drafted tokens.
    verify_widths: the verify pass's compiled widths (positions), one of which runs per round:
      the smallest >= 1 + the longest live draft of the round, so short rounds (an adaptive
      SpecDec++ draft stopped early, an n-gram draft with no match) need not pay for K+1
      positions. Default (None): (K+1,), one width. "auto": 1 + ceil(K/2^j), j = 0, 1, 2
      (K=8: 3, 5, 9). The law is unchanged (positions past a row's draft are never read); each
      width is one more compiled forward of the target, and the lax.switch between them passes
      both KV caches through an XLA conditional, which on CPU costs more than it saves at K=4
      (runs/spec_models copy, 2 cores: n-gram 1.67x vs 1.54x at batch 1 but 1.08x vs 1.45x at
      batch 8, model draft 1.06x vs 1.43x at batch 1): keep the default unless K_max is large.

  Returns:
    (Rollout [N,T] with the target's processed log-probs / entropies, SpeculativeStats).
  """
  if not isinstance(num_draft_tokens, int) or num_draft_tokens < 0:
    raise ValueError(f"num_draft_tokens must be an int >= 0, got {num_draft_tokens!r}")
  if config.attention != "full":
    raise ValueError(f"speculative decoding needs a per-row cache index; attention="
                     f"{config.attention!r} keeps one write column for all rows: use 'full'")
  draft.check(config)
  head = None
  if accept_head is not None:
    head_params, num_blocks = accept_head
    if not draft.exposes_hidden:
      raise ValueError(f"accept_head (SpecDec++) scores the draft's hidden states; "
                       f"{type(draft).__name__} has none: use ModelDraft or LayerDraft")
    if not 1 <= min_draft_tokens <= max(num_draft_tokens, 1):
      raise ValueError(f"min_draft_tokens (K_min) must be in [1, num_draft_tokens={num_draft_tokens}]"
                       f", got {min_draft_tokens}")
    if not 0.0 <= stop_threshold <= 1.0:
      raise ValueError(f"stop_threshold must be in [0, 1], got {stop_threshold}")
    head = (int(num_blocks), float(stop_threshold), int(min_draft_tokens))
  else:
    head_params = None
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  widths = _verify_widths(num_draft_tokens, verify_widths)
  tokens, mask, rng, temp = place_rows(prompt_sharding, tokens, mask, rng, temperature)
  rollout, counts, rounds = _generate(
      params, draft.weights(), head_params, tokens, mask, rng, temp, config=config,
      max_new_tokens=max_new_tokens, num_draft=num_draft_tokens, top_k=int(top_k),
      top_p=float(top_p), stop_tokens=stops,
      draft=draft, head=head, cache_dtype=dtype, widths=widths)
  row_rounds, drafted, accepted, emitted = (int(x) for x in np.asarray(counts).sum(axis=1))
  stats = SpeculativeStats(
      rounds=int(rounds), row_rounds=row_rounds, drafted=drafted, accepted=accepted,
      emitted=emitted, acceptance_rate=accepted / drafted if drafted else float("nan"),
      mean_accepted=accepted / row_rounds if row_rounds else float("nan"),
      tokens_per_round=emitted / row_rounds if row_rounds else float("nan"))
  return rollout, stats


def _verify_widths(k: int, widths: Sequence[int] | str | None) -> tuple[int, ...]:
  """The verify pass's widths (ascending, the last K+1); see speculative_sample."""
  if widths is None:
    return (k + 1,)
  if isinstance(widths, str):
    if widths != "auto":
      raise ValueError(f"verify_widths must be None, 'auto' or a tuple of widths, got {widths!r}")
    return tuple(sorted({1 + -(-k // 2 ** j) for j in range(3)})) if k else (1,)
  out = tuple(sorted({int(w) for w in widths}))
  if not out or out[0] < 1 or out[-1] != k + 1:
    raise ValueError(f"verify_widths must be positions in [1, K+1] that include K+1 = {k + 1}, "
                     f"got {tuple(widths)}")
  return out


_NOISE_TABLE_MAX = 1 << 20  # N·(T+K)·V f32 elements per Gumbel table (4 MiB) drawn up front


def _per_layer_cache(config: ModelConfig) -> bool:
  """The layout `sample` picks (see there): per-layer cache and split weights on CPU, the
  stacked cache under the layer scan elsewhere (read at trace time)."""
  return jax.default_backend() == "cpu" and config.attention == "full"


def _put_columns(buf: jax.Array, cols: jax.Array, val: jax.Array) -> jax.Array:
  """buf [N,W] with buf[r, cols[r, j]] = val[r, j] (cols >= W dropped; distinct cols per row).

  The scatter `buf.at[rows, cols].set(val, mode="drop")` as a chain of J selects: XLA:CPU runs
  each scatter as its own serial loop thunk, and a round wrote five [N,T|C] buffers; the
  selects fuse (tiny [N,W] buffers, J = K+1 <= a few). Same values: it only moves them.
  """
  ids = jnp.arange(buf.shape[1])[None, :]
  for j in range(cols.shape[1]):
    buf = jnp.where(ids == cols[:, j:j + 1], val[:, j:j + 1].astype(buf.dtype), buf)
  return buf


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "num_draft", "top_k",
                                             "top_p", "stop_tokens", "draft", "head",
                                             "cache_dtype", "widths"))
def _generate(params, draft_weights, head_params, prompt_tokens, prompt_mask, rng, temperature, *,
              config, max_new_tokens, num_draft, top_k, top_p, stop_tokens, draft, head,
              cache_dtype, widths=None):
  widths = widths or (num_draft + 1,)
  n, p = prompt_tokens.shape
  steps, k = max_new_tokens, num_draft
  v = config.vocab_size
  # C = P + T + K: a verify pass writes K+1 slots from P + length - 1 (length <= T, even for
  # finished rows, which keep running frozen), and the draft K+1 from P + length - 2; no write is
  # ever clamped onto live slots. With K = 0 this is `sample`'s cache, so K = 0 is `sample`.
  c = p + steps + k
  per_layer = _per_layer_cache(config)
  cache = transformer.init_cache(config, n, c, cache_dtype, per_layer=per_layer, row_index=True)
  target_params = transformer.split_layers(params) if per_layer else params
  hidden, cache = transformer.forward(target_params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  first_logits = transformer.unembed(target_params, hidden[:, -1], config=config)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  # Every key a round reads, hashed ONCE here for all W = T + K columns. On CPU each threefry
  # call (fold_in, uniform) lowers to a rolled 5-trip while_loop, so hashing in the loop cost
  # ~3 inner loops per draft step and ~4 per verify; a gather from these [N,W] tables is one
  # fusion. Same hashes of the same inputs: the same bits (columns are clipped to W-1; only
  # rows or candidates whose result is masked out ever read a clipped column).
  w = steps + k
  col_keys = jax.vmap(lambda rk: jax.vmap(lambda t: jax.random.fold_in(rk, t))(
      jnp.arange(w)))(row_keys)  # [N,W] col(t)
  draft_keys = jax.vmap(jax.vmap(lambda ck: jax.random.fold_in(ck, 1)))(col_keys)  # [N,W]
  u_table = jax.vmap(jax.vmap(lambda ck: jax.random.uniform(jax.random.fold_in(ck, 2), ())))(
      col_keys)  # f32 [N,W] acceptance uniform of column t
  take_col = lambda table, t: table[jnp.arange(n)[:, None] if t.ndim == 2 else jnp.arange(n),
                                    jnp.clip(t, 0, w - 1)]
  col_key = lambda t: take_col(col_keys, t)  # t int32 [N] -> [N] keys
  # categorical(key, l) = argmax(gumbel(key, [V]) + l): with a small vocabulary the Gumbel noise
  # of every column is drawn here too ([N,W,V] f32, two tables), so a round draws none (each draw
  # was one more rolled threefry loop over [N,V]). Large N·W·V keep drawing in the loop.
  noise = n * w * v <= _NOISE_TABLE_MAX
  if noise:
    gumbel = jax.vmap(jax.vmap(lambda ck: jax.random.gumbel(ck, (v,), jnp.float32)))
    y_noise, d_noise = gumbel(col_keys), gumbel(draft_keys)  # [N,W,V]
  def categorical(keys, noise_table, t, logits):
    if noise:
      return jnp.argmax(take_col(noise_table, t) + logits, axis=-1)
    return jax.vmap(jax.random.categorical)(keys, logits)
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  rows = jnp.arange(n)
  slot_ids = jnp.arange(c)[None, :]
  process = lambda logits: process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)

  # The first token: `sample`'s first step exactly (same logits, key col(0) and choose_tokens).
  scaled, _ = process(first_logits)
  first, logp0, ent0 = choose_tokens(scaled, col_key(jnp.zeros((n,), jnp.int32)), greedy=greedy,
                                     top_k=top_k, top_p=top_p)
  history = jnp.concatenate([prompt_tokens.astype(jnp.int32), jnp.full((n, steps + k), config.pad_id,
                                                                      jnp.int32)], axis=1)
  history = history.at[:, p].set(first)
  real = jnp.concatenate([prompt_mask != 0, jnp.ones((n, steps + k), bool)], axis=1)  # [N,C]
  col = lambda buf, val: buf.at[:, 0].set(val.astype(buf.dtype))
  done = jnp.isin(first, stops)
  if k > 0:
    dparams = draft.prepare(draft_weights, target_params, config=config, per_layer=per_layer)
    dstate = draft.init(dparams, prompt_tokens, prompt_mask, config=config, cache_len=c,
                        cache_dtype=cache_dtype, per_layer=per_layer)
  else:
    dparams, dstate = None, {}
  state = SpeculativeState(
      rounds=jnp.zeros((), jnp.int32), cache=cache, draft=dstate, history=history,
      tokens=col(jnp.full((n, steps), config.pad_id, jnp.int32), first),
      mask=col(jnp.zeros((n, steps), jnp.int32), jnp.ones((n,), jnp.int32)),
      logprobs=col(jnp.zeros((n, steps), jnp.float32), logp0),
      entropy=col(jnp.zeros((n, steps), jnp.float32), ent0),
      length=jnp.ones((n,), jnp.int32), done=done, counts=jnp.zeros((4, n), jnp.int32))

  def draft_tokens(state: SpeculativeState, live: jax.Array):
    """x̃ int32 [N,K], q f32 [N,K,V], K_row int32 [N], the draft's state, after this round's drafting."""
    length, history = state.length, state.history
    # All accepted drafts + the bonus must fit: at most T - length - 1 drafts are useful.
    room = jnp.clip(steps - length - 1, 0, k)
    if getattr(draft, "proposes_span", False):
      # A deterministic span draft (prompt lookup): all K tokens in one gather, no draft loop.
      # q is one-hot on each proposal (what the per-step path computes for it, exactly).
      end = p + length
      xs, count = draft.propose_span(history, real & (slot_ids < end[:, None]), end, k)
      jj = jnp.arange(k)[None, :]
      is_stop = jnp.isin(xs, stops) & (jj < count[:, None])
      count = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, count)
      dlen = jnp.where(live, jnp.minimum(count, room), 0)
      xs = jnp.where(jj < dlen[:, None], xs, config.pad_id)
      qs = jax.nn.one_hot(xs, v, dtype=jnp.float32) * (jj < dlen[:, None])[..., None]
      return xs, qs, dlen, state.draft

    def propose(dstate, history, tokens, index, s, cont, p_acc):
      """One draft step for candidate s (1-based): feed `tokens` at `index`, draw x̃_s."""
      inp = DraftInput(tokens=tokens, index=index, history=history,
                       history_mask=real & (jnp.arange(c)[None, :] < (index + tokens.shape[1])[:, None]))
      out, dstate = draft.step(dparams, dstate, inp, config=config)
      if head is not None and tokens.shape[1] == 1:  # s >= 2: ĥ of candidate s-1 (one-step lag)
        h = accept_head_lib.accept_prob(head_params, out.hidden, num_blocks=head[0])
        p_acc = jnp.where(cont, p_acc * h, p_acc)
      d_scaled, d_filtered = process(out.logits)
      column = length - 1 + s  # completion column candidate s would fill
      keys = take_col(draft_keys, column)  # fold_in(col(column), 1)
      sampled = categorical(keys, d_noise if noise else None, column, d_filtered)
      x = jnp.where(greedy, jnp.argmax(d_scaled, axis=-1), sampled).astype(jnp.int32)
      q = jax.nn.softmax(d_filtered, axis=-1)
      active = cont & out.ok & (s <= room)
      stop = jnp.isin(x, stops) | (s >= k)
      if head is not None:
        stop = stop | specdec_stop(p_acc, s, threshold=head[1], min_tokens=head[2], max_tokens=k)
      history = jnp.where(active[:, None] & (slot_ids == (p + length - 1 + s)[:, None]),
                          x[:, None], history)
      return dstate, history, x, q, active, active & ~stop, p_acc

    # s = 1: the sequence's last two tokens (slots P+length-2, P+length-1), see drafts.py.
    index = p + length - 2
    pair = jnp.take_along_axis(history, (index[:, None] + jnp.arange(2)[None, :]), axis=1)
    ones = jnp.ones((n,), jnp.float32)
    dstate, history, x1, q1, active, cont, p_acc = propose(state.draft, history, pair, index, 1,
                                                           live, ones)
    xs = jnp.zeros((n, k), jnp.int32).at[:, 0].set(jnp.where(active, x1, config.pad_id))
    qs = jnp.zeros((n, k, v), jnp.float32).at[:, 0].set(jnp.where(active[:, None], q1, 0.0))
    dlen = active.astype(jnp.int32)

    def cond(carry):
      s, _, _, _, _, _, cont, _ = carry
      return (s <= k) & jnp.any(cont)

    def body(carry):
      s, dstate, history, xs, qs, dlen, cont, p_acc = carry
      prev = jax.lax.dynamic_index_in_dim(xs, s - 2, axis=1)  # [N,1] candidate s-1
      dstate, history, x, q, active, cont, p_acc = propose(dstate, history, prev, p + length + s - 2,
                                                           s, cont, p_acc)
      xs = jax.lax.dynamic_update_index_in_dim(xs, jnp.where(active, x, config.pad_id), s - 1, axis=1)
      qs = jax.lax.dynamic_update_index_in_dim(qs, jnp.where(active[:, None], q, 0.0), s - 1, axis=1)
      return s + 1, dstate, history, xs, qs, jnp.where(active, s, dlen), cont, p_acc

    carry = (jnp.asarray(2, jnp.int32), dstate, history, xs, qs, dlen, cont, p_acc)
    _, dstate, _, xs, qs, dlen, _, _ = jax.lax.while_loop(cond, body, carry)
    return xs, qs, dlen, dstate

  def cond(state: SpeculativeState) -> jax.Array:
    return jnp.any(~state.done & (state.length < steps))

  def body(state: SpeculativeState) -> SpeculativeState:
    length = state.length
    live = ~state.done & (length < steps)
    if k > 0:
      xs, qs, dlen, dstate = draft_tokens(state, live)
    else:
      xs, qs = jnp.zeros((n, 0), jnp.int32), jnp.zeros((n, 0, v), jnp.float32)
      dlen, dstate = jnp.zeros((n,), jnp.int32), state.draft
    last = jnp.take_along_axis(state.history, (p + length - 1)[:, None], axis=1)  # [N,1]
    verify = jnp.concatenate([last, xs], axis=1)  # [N,K+1]
    cache = {**state.cache, "index": p + length - 1}  # rollback: the row's logical length

    def verify_pass(w: int):
      """Forward of the first w positions; logits padded to [N,K+1,V] (the padding is read only
      at positions past every row's draft: rejected, never the emitted y's law)."""
      def run(cache):
        x = verify[:, :w]
        logits, cache = transformer.forward(target_params, x, config=config, cache=cache,
                                            segment_ids=jnp.ones_like(x))
        return jnp.pad(logits, ((0, 0), (0, k + 1 - w), (0, 0))), cache
      return run

    if len(widths) == 1:
      logits, cache = verify_pass(widths[0])(cache)
    else:  # the narrowest width that holds every live row's draft and its bonus position
      need = jnp.max(jnp.where(live, dlen, 0)) + 1
      branch = jnp.sum(jnp.asarray(widths[:-1]) < need)
      logits, cache = jax.lax.switch(branch, [verify_pass(w) for w in widths], cache)
    scaled, filtered = process(logits)  # [N,K+1,V]
    probs = jax.nn.softmax(filtered, axis=-1)
    # Accept: exact rule (sampling) or argmax match (greedy), uniform of column length-1+i.
    if k:
      # u for candidate i (1-based) at column length + i - 1: fold_in(col(t), 2).
      u = take_col(u_table, length[:, None] + jnp.arange(k)[None, :])  # [N,K]
      p_x = jnp.take_along_axis(probs[:, :-1], xs[..., None], axis=-1)[..., 0]
      q_x = jnp.take_along_axis(qs, xs[..., None], axis=-1)[..., 0]
      target_tok = jnp.argmax(scaled[:, :-1], axis=-1)
      accept = jnp.where(greedy, xs == target_tok, u * q_x <= p_x)
      n_acc = _num_accepted(accept, dlen)
    else:
      n_acc = jnp.zeros((n,), jnp.int32)
    # y at column length + n: the bonus (n == K_row, q := 0) draws from the processed logits
    # exactly as `sample` does; a rejection draws from the residual (the same law when q = 0).
    y_key = col_key(length + n_acc)
    at_n = lambda a: jnp.take_along_axis(a, n_acc[:, None, None], axis=1)[:, 0]
    # categorical(key, l) = argmax(gumbel(key) + l): picking the logits before ONE draw gives the
    # bits of picking between two draws with the same key, at half the threefry loops and [N,V]
    # passes. With K = 0 every draw is the bonus (n == K_row == 0): no residual at all.
    y_logits = at_n(filtered)
    if k:
      y_logits = jnp.where((n_acc == dlen)[:, None], y_logits,
                           _log(_residual(probs, qs, n_acc, dlen)))
    sampled = categorical(y_key, y_noise if noise else None, length + n_acc, y_logits)
    y = jnp.where(greedy, jnp.argmax(at_n(scaled), axis=-1), sampled)
    # Emit x̃_1..x̃_n, y: cut after the first stop token and at T, nothing for finished rows.
    jj = jnp.arange(k + 1)[None, :]
    emit = jnp.concatenate([xs, jnp.zeros((n, 1), jnp.int32)], axis=1)
    emit = jnp.where(jj == n_acc[:, None], y[:, None], emit).astype(jnp.int32)
    is_stop = jnp.isin(emit, stops) & (jj <= n_acc[:, None])
    count = jnp.where(jnp.any(is_stop, axis=1), jnp.argmax(is_stop, axis=1) + 1, n_acc + 1)
    count = jnp.where(live, jnp.minimum(count, steps - length), 0)
    write = jj < count[:, None]
    dist = jnp.where(greedy, scaled, filtered)  # `sample` reports greedy under the plain softmax
    logp, ent = log_probs_and_entropy(dist)
    logp = jnp.take_along_axis(logp, emit[..., None], axis=-1)[..., 0]  # [N,K+1]
    cols = jnp.where(write, length[:, None] + jj, steps)  # column T is dropped
    put = lambda buf, val: _put_columns(buf, cols, val)
    history = _put_columns(state.history, jnp.where(write, p + length[:, None] + jj, c), emit)
    counts = state.counts + jnp.stack([live.astype(jnp.int32), jnp.where(live, dlen, 0),
                                       jnp.where(live, n_acc, 0), count])
    return dataclasses.replace(
        state, rounds=state.rounds + 1, cache=cache, draft=dstate, history=history,
        tokens=put(state.tokens, emit), mask=put(state.mask, jnp.ones_like(emit)),
        logprobs=put(state.logprobs, logp), entropy=put(state.entropy, ent),
        length=length + count, done=state.done | jnp.any(is_stop & write, axis=1), counts=counts)

  state = jax.lax.while_loop(cond, body, state)
  rollout = Rollout(tokens=state.tokens, mask=state.mask, logprobs=state.logprobs,
                    entropy=state.entropy, prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                    truncated=~state.done)
  return rollout, state.counts, state.rounds
