"""Draft sources for speculative decoding (`tokenrl.rollout.speculative`).

    ModelDraft(params, config)   a smaller model with the target's vocabulary and EOS ids
    LayerDraft(num_layers)       self-speculation: the target's first ℓ layers + final norm +
                                 the shared unembedding (its own KV cache for those ℓ layers)
    NGramDraft(n=3)              prompt lookup: the token that followed the most recent earlier
                                 occurrence of the last n-1 (then n-2, …, 1) tokens; no model

The draft protocol (`Draft`) is what the engine calls, all of it inside one jitted function with
static shapes. A draft is a frozen, hashable object (a static argument of the jit); the arrays it
reads travel separately so new weights never recompile:

  check(config)                    host, once: raise ValueError when the draft cannot serve this
                                   target (vocabulary or EOS mismatch, too many layers, ...).
  weights() -> pytree | None       host: the draft's own arrays (a jit argument; None if none).
  prepare(weights, target_params, *, config, per_layer) -> dparams
                                   traced, once before the decode loop: the arrays `step` reads
                                   (e.g. the target's first ℓ layers, split per layer on CPU).
                                   `target_params` are the target's params as the engine holds
                                   them (layers split by `split_layers` when per_layer).
  init(dparams, prompt_tokens [N,P], prompt_mask [N,P], *, config, cache_len, cache_dtype,
       per_layer) -> state         traced: prefill; `state` is any pytree of arrays (a KV cache
                                   with a per-row index, or {} for a model-free draft).
  step(dparams, state, inp: DraftInput, *, config) -> (DraftStep, state)
                                   traced, once per drafted token: consume inp.tokens [N,S] at
                                   per-row cache slots inp.index [N] and return the draft's raw
                                   logits for the NEXT token. The engine applies temperature /
                                   top-k / top-p itself (the same function as for the target).
  exposes_hidden: bool             True when DraftStep.hidden is the final-normed hidden state
                                   the SpecDec++ acceptance head reads.

Each round the engine calls `step` first with S = 2 (the sequence's last two tokens, at slots
index, index+1; re-feeding the older one rewrites the same key/value, and it covers the case
where the draft never consumed the last accepted draft token) and then with S = 1 (the previous
drafted token). Writes at and past a row's index overwrite whatever a rejected draft left there,
so a draft never rolls back by itself: its cache only needs a per-row index
(`init_cache(..., row_index=True)`) and forward's per-row masking.

A dynamic-exit draft (DEL, spec §6) fits the same protocol: `state` carries its exit-layer
statistics and cache, `step` picks the exit layer, and `DraftStep.ok` ends a row's draft early
(its confidence rule).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DraftInput:
  """What one draft step sees (N rows, C slots = the engine's cache length).

  tokens        int32 [N,S]  new tokens, at cache slots index..index+S-1 (S = 2 on a round's
                             first step, 1 after).
  index         int32 [N]    slot of tokens[:, 0]: the row's history is slots < index.
  history       int32 [N,C]  the token at every slot: left-padded prompt, emitted tokens, the
                             tokens drafted so far this round; slots >= index + S are stale.
  history_mask  bool  [N,C]  True on real tokens of slots < index + S (False on prompt padding
                             and stale slots).
  """

  tokens: jax.Array
  index: jax.Array
  history: jax.Array
  history_mask: jax.Array


class DraftStep(NamedTuple):
  """One draft step's output.

  logits  f32 [N,V]       raw next-token logits (before temperature / top-k / top-p).
  hidden  [N,D] | None    final-normed hidden state at the last input position (the token the
                          SpecDec++ head scores); None when the draft has none.
  ok      bool [N]        False: no proposal for this row (it stops drafting this round).
  """

  logits: jax.Array
  hidden: jax.Array | None
  ok: jax.Array


class Draft(Protocol):
  exposes_hidden: bool

  def check(self, config: ModelConfig) -> None: ...

  def weights(self) -> Any: ...

  def prepare(self, weights: Any, target_params: Any, *, config: ModelConfig,
              per_layer: bool) -> Any: ...

  def init(self, dparams: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array, *,
           config: ModelConfig, cache_len: int, cache_dtype: Any, per_layer: bool) -> Any: ...

  def step(self, dparams: Any, state: Any, inp: DraftInput, *,
           config: ModelConfig) -> tuple[DraftStep, Any]: ...


def _model_init(params: Any, draft_config: ModelConfig, prompt_tokens: jax.Array,
                prompt_mask: jax.Array, cache_len: int, cache_dtype: Any,
                per_layer: bool) -> dict[str, Any]:
  """Prefill a draft decoder's own per-row-index KV cache on the prompts [N,P]."""
  cache = transformer.init_cache(draft_config, prompt_tokens.shape[0], cache_len, cache_dtype,
                                 per_layer=per_layer, row_index=True)
  # Hidden states, not logits: the prefill output is unused (each round re-feeds the last
  # prompt token), and unembedding all P positions would materialize [N,P,V].
  _, cache = transformer.forward(params, prompt_tokens, config=draft_config,
                                 segment_ids=prompt_mask, cache=cache, return_hidden=True)
  return {"cache": cache}


def _model_step(params: Any, draft_config: ModelConfig, state: dict[str, Any],
                inp: DraftInput) -> tuple[DraftStep, dict[str, Any]]:
  cache = {**state["cache"], "index": inp.index}
  hidden, cache = transformer.forward(params, inp.tokens, config=draft_config, cache=cache,
                                      segment_ids=jnp.ones_like(inp.tokens), return_hidden=True)
  last = hidden[:, -1]  # [N,D]
  logits = transformer.unembed(params, last, config=draft_config)
  ok = jnp.ones(inp.tokens.shape[:1], bool)
  return DraftStep(logits, last, ok), {"cache": cache}


@dataclasses.dataclass(frozen=True)
class ModelDraft:
  """A separate (smaller) decoder as the draft. Same vocabulary and EOS ids as the target.

  params: its params (never read from this object inside jit: `weights()` passes them as an
  argument, so the object hashes by its config and new params reuse the compiled engine).
  """

  params: Any = dataclasses.field(compare=False, repr=False)
  config: ModelConfig
  exposes_hidden = True

  def check(self, config: ModelConfig) -> None:
    if self.config.vocab_size != config.vocab_size:
      raise ValueError(f"draft model vocab_size {self.config.vocab_size} != target vocab_size "
                       f"{config.vocab_size}: the draft must share the target's tokenizer")
    if tuple(self.config.eos_ids) != tuple(config.eos_ids):
      raise ValueError(f"draft model eos_ids {tuple(self.config.eos_ids)} != target eos_ids "
                       f"{tuple(config.eos_ids)}: the draft must share the target's tokenizer")
    if self.config.attention != "full":
      raise ValueError(f"draft model attention={self.config.attention!r}: speculative decoding "
                       "needs a per-row cache index, which only attention='full' has")

  def weights(self) -> Any:
    return self.params

  def prepare(self, weights, target_params, *, config, per_layer):
    return transformer.split_layers(weights) if per_layer else weights

  def init(self, dparams, prompt_tokens, prompt_mask, *, config, cache_len, cache_dtype,
           per_layer):
    return _model_init(dparams, self.config, prompt_tokens, prompt_mask, cache_len, cache_dtype,
                       per_layer)

  def step(self, dparams, state, inp, *, config):
    return _model_step(dparams, self.config, state, inp)


@dataclasses.dataclass(frozen=True)
class LayerDraft:
  """Self-speculation: the target's first `num_layers` layers, its final norm and its
  unembedding (LayerSkip-style early exit). Keeps its own KV cache for those layers."""

  num_layers: int
  exposes_hidden = True

  def check(self, config: ModelConfig) -> None:
    if not isinstance(self.num_layers, int) or not 1 <= self.num_layers <= config.num_layers:
      raise ValueError(f"LayerDraft num_layers must be an int in [1, {config.num_layers}] (the "
                       f"target's layers), got {self.num_layers!r}")

  def draft_config(self, config: ModelConfig) -> ModelConfig:
    local = config.local_layers[:self.num_layers] if config.local_layers else ()
    return config.replace(num_layers=self.num_layers, local_layers=local)

  def weights(self) -> Any:
    return None

  def prepare(self, weights, target_params, *, config, per_layer):
    layers = target_params["layers"]
    if isinstance(layers, (tuple, list)):  # already split per layer: a static slice, no copy
      layers = tuple(layers[:self.num_layers])
    else:
      layers = jax.tree.map(lambda w: w[:self.num_layers], layers)
    params = {**target_params, "layers": layers}
    return transformer.split_layers(params) if per_layer else params

  def init(self, dparams, prompt_tokens, prompt_mask, *, config, cache_len, cache_dtype,
           per_layer):
    return _model_init(dparams, self.draft_config(config), prompt_tokens, prompt_mask, cache_len,
                       cache_dtype, per_layer)

  def step(self, dparams, state, inp, *, config):
    return _model_step(dparams, self.draft_config(config), state, inp)


@dataclasses.dataclass(frozen=True)
class NGramDraft:
  """Prompt-lookup drafting (no second model).

  Finds an earlier occurrence of the sequence's last n-1 tokens (falling back to the last
  n-2, …, 1 tokens); a row with no occurrence drafts nothing this round.
  span=True (default; the rule of transformers' PromptLookupCandidateGenerator, whose
  max_matching_ngram_size is our n-1): the EARLIEST occurrence with a continuation, and the
  whole draft is the K tokens that followed it, cut where they reach the end of the sequence,
  taken in one gather (`propose_span`, no draft loop). span=False: the MOST RECENT occurrence,
  one token per draft step, each looked up again with the tokens drafted so far appended (the
  engine's per-step loop: it can continue a periodic pattern past the sequence's end, at K
  loop trips per round). Earliest suits text copied from the prompt (a completion's first
  token recurring later in the prompt does not derail it); most recent suits text repeating
  what was just generated.
  The draft law q is one-hot on each proposal, which temperature, top-k and top-p leave
  one-hot, so the exact acceptance rule stays lossless: a proposal is accepted with
  probability p(proposal).
  """

  n: int = 3
  span: bool = True
  exposes_hidden = False

  def check(self, config: ModelConfig) -> None:
    if not isinstance(self.n, int) or self.n < 2:
      raise ValueError(f"NGramDraft n must be an int >= 2 (match the last n-1 tokens), got {self.n!r}")

  @property
  def proposes_span(self) -> bool:
    return bool(self.span)

  def propose_span(self, history: jax.Array, mask: jax.Array, end: jax.Array,
                   k: int) -> tuple[jax.Array, jax.Array]:
    """(tokens int32 [N,K], count int32 [N]): the K tokens after the match, the first `count`
    of them real (count = 0 without a match; the rest of a row is padding)."""
    j, found = ngram_match(history, mask, end, n=self.n, earliest=True)
    cols = j[:, None] + 1 + jnp.arange(k)[None, :]  # [N,K] slots after the match
    tokens = jnp.take_along_axis(history, jnp.clip(cols, 0, history.shape[1] - 1), axis=1)
    count = jnp.where(found, jnp.clip(end - j - 1, 0, k), 0)
    return tokens.astype(jnp.int32), count.astype(jnp.int32)

  def weights(self) -> Any:
    return None

  def prepare(self, weights, target_params, *, config, per_layer):
    return None

  def init(self, dparams, prompt_tokens, prompt_mask, *, config, cache_len, cache_dtype,
           per_layer):
    return {}

  def step(self, dparams, state, inp, *, config):
    token, ok = ngram_propose(inp.history, inp.history_mask, inp.index + inp.tokens.shape[1],
                              n=self.n)
    logits = jnp.where(jnp.arange(config.vocab_size)[None, :] == token[:, None], 0.0, -jnp.inf)
    return DraftStep(logits.astype(jnp.float32), None, ok), state


def ngram_propose(history: jax.Array, mask: jax.Array, end: jax.Array, *,
                  n: int) -> tuple[jax.Array, jax.Array]:
  """(token int32 [N], found bool [N]): the prompt-lookup proposal for sequences history[:, :end].

  history int32 [N,C], mask bool [N,C] (real tokens), end int32 [N] (the sequence is the real
  slots < end). The proposal is history[j + 1] for the match j of `ngram_match`.
  """
  j, found = ngram_match(history, mask, end, n=n)
  token = jnp.take_along_axis(history, jnp.clip(j + 1, 0, history.shape[1] - 1)[:, None], axis=1)
  return jnp.where(found, token[:, 0], 0).astype(jnp.int32), found


def ngram_match(history: jax.Array, mask: jax.Array, end: jax.Array, *, n: int,
                earliest: bool = False) -> tuple[jax.Array, jax.Array]:
  """(j int32 [N], found bool [N]): where the sequence history[:, :end]'s suffix occurred before.

  For m = n-1 down to 1, the longest m with a match wins: a match is a j with j + 1 < end and
  history[j-m+1..j] == history[end-m..end-1], all real; j is the largest such (the most recent
  occurrence), or the smallest with earliest=True. O(n·C) per row.
  """
  rows, c = history.shape
  slots = jnp.arange(c)[None, :]
  best = jnp.zeros((rows,), jnp.int32)
  found = jnp.zeros((rows,), bool)
  take = lambda a, i: jnp.take_along_axis(a, jnp.clip(i, 0, c - 1)[:, None], axis=1)[:, 0]
  for m in range(n - 1, 0, -1):  # longest suffix first: the first found m wins
    match = (slots + 1 < end[:, None]) & (slots >= m - 1)
    suffix_ok = end >= m
    for k in range(m):
      # history[j - k] == history[end - 1 - k], both real.
      shifted = jnp.pad(history, ((0, 0), (k, 0)), constant_values=-1)[:, :c]
      shifted_mask = jnp.pad(mask, ((0, 0), (k, 0)), constant_values=False)[:, :c]
      want = take(history, end - 1 - k)
      suffix_ok = suffix_ok & take(mask, end - 1 - k)
      match = match & shifted_mask & (shifted == want[:, None])
    match = match & suffix_ok[:, None]
    has = jnp.any(match, axis=1)
    if earliest:
      j = jnp.min(jnp.where(match, slots, c), axis=1)
    else:
      j = jnp.max(jnp.where(match, slots, -1), axis=1)
    best = jnp.where(has & ~found, j, best)
    found = found | has
  return best.astype(jnp.int32), found
