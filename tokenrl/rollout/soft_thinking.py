"""Soft Thinking (Zhang et al. 2025; spec decoding-and-test-time §13): the thinking phase is
decoded with concept tokens, probability-weighted mixtures of token embeddings, then the answer
with ordinary tokens. Evaluation only (see "Rollout conventions").

    rollout, info = soft_think_sample(params, prompts, config=cfg, rng=key, max_new_tokens=512,
                                      think_end_id=THINK_END)
    info.soft            # bool [N,T]: positions that hold a concept token
    info.thinking_steps  # int32 [N]: concept tokens of each row
    info.cold_stopped    # bool [N]: Cold Stop ended the row's thinking

Every row starts in thinking mode (its prompt ends inside the thought, e.g. after "<think>").
A thinking step, per row, from the logits l [V] of the previous position (`concept_weights`):
  1. π = softmax(l / temperature); H = −Σ π log π, taken BEFORE any filtering (Cold Stop reads H).
  2. π restricted to its top_k entries, then to the nucleus top_p of that renormalised law, then
     min-p (drop π_i < min_p · max π), renormalised.
  3. The K = max_topk largest entries (π_1..π_K, v_1..v_K), renormalised to sum 1.
  4. The next input is e = Σ_i π_i · E[v_i] [D] (`concept_embedding`; E = params['embed'],
     given before the family's embedding scale, as `forward(..., input_embeddings=)` wants). A
     concept token occupies one position; its KV entries are computed from e.
  5. v_1 (the argmax) is the step's representative token: it is written to `tokens` and it is
     what think-end detection reads.
Thinking ends at the step whose v_1 is think_end_id, or at the step where Cold Stop fires
(`cold_stop_update`: a per-row count of consecutive thinking steps with H < τ, reset by a step
with H ≥ τ; at the step where it reaches k_len the token is forced to think_end_id; τ = 0
disables it). Either way that position holds the ordinary token think_end_id (input
E[think_end_id], not a mixture: the reference records a one-hot there too) and the row decodes
discretely from the next step on: `sample`'s draw (`choose_tokens`) at the after_thinking_*
temperature / top_k / top_p, with row key fold_in(rng, row) and step key fold_in(row key, t), as
`sample`, until a stop token or max_new_tokens. One code path serves both modes: a discrete
step's next input is the mixture with one-hot weights on its token, which is exactly E[token].
max_topk = 1 is greedy thinking (the weight of v_1 is exactly 1, e = E[argmax]).

Rollout conventions. A concept token is not a token: it has no discrete log-prob, so neither
policy-gradient training nor an importance ratio applies to these rollouts (spec §13f). They are
for evaluation only; RL must not train on them.
  tokens    v_1 at concept positions, think_end_id at the closing position, the sampled tokens
            after it; pad_id after the stop token.
  mask      1 on every emitted position up to and including the stop token, concept positions
            included (each holds a KV slot and counts as generated length, i.e. cost).
  logprobs  0 on the thinking phase: a concept token is not drawn, and the closing think-end
            is an argmax or forced (a point mass, log 1 = 0). After it, the log-prob of each
            sampled token under the after-thinking law actually sampled from (as `sample`).
  entropy   H of the unfiltered thinking law π on the thinking phase (what Cold Stop reads);
            after it, the entropy of the law sampled from (as `sample`).
A stop token as a representative token ends its row too (the reference checks every output id).

Not done: the Dirichlet / Gumbel-softmax weight noise of later work (not in the paper), an
after-thinking min-p, and an explicit tensor-parallel gather of a vocab-sharded E (§13b.4): the
K-row gather is left to XLA's partitioner under jit, untested on a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.sampler import SamplerState, place_rows, prepare_rows
from tokenrl.rollout.sampling import (NEG_INF, choose_tokens, log_probs_and_entropy,
                                      process_logits)
from tokenrl.rollout.speculative import _per_layer_cache
from tokenrl.types import Rollout


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftThinkInfo:
  """What `soft_think_sample` returns next to the Rollout (N rows, T = max_new_tokens).

  soft           bool  [N,T]  position holds a concept token (a prefix of each row's positions).
  thinking_steps int32 [N]    concept tokens of the row (= soft.sum(-1)); when `closed`, the
                              closing think_end_id sits at this column.
  closed         bool  [N]    the thinking phase ended (think-end or Cold Stop) within T.
  cold_stopped   bool  [N]    Cold Stop forced the think-end.
  """

  soft: jax.Array
  thinking_steps: jax.Array
  closed: jax.Array
  cold_stopped: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftThinkState:
  """Carry of the decode while_loop: `sample`'s state plus the soft-thinking fields."""

  decode: SamplerState
  weights: jax.Array  # f32 [N,K] mixture weights of the next input (one-hot when discrete)
  ids: jax.Array  # int32 [N,K] token ids they weight
  thinking: jax.Array  # bool [N] row still in its thinking phase
  low_entropy: jax.Array  # int32 [N] Cold Stop count of consecutive steps with H < τ
  soft: jax.Array  # bool [N,T]
  cold_stopped: jax.Array  # bool [N]


def concept_weights(logits: jax.Array, *, temperature: jax.Array, top_k: int, top_p: float,
                    min_p: jax.Array, max_topk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The concept token of one thinking step (steps 1-3 of the module docstring).

  logits: f32 [N,V] raw; temperature: f32 [] > 0; top_k (0 = off), top_p (1 = off), min_p in
  [0, 1) (0 = off) as in the reference's order; max_topk: K, the mixture size.
  Returns (weights f32 [N,K] summing to 1, descending; ids int32 [N,K], ids[:, 0] = argmax;
  entropy f32 [N] of softmax(logits / temperature) before filtering). Entries past the kept
  support (fewer than K tokens survive the filters) have weight exactly 0.
  """
  scaled, filtered = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  _, entropy = log_probs_and_entropy(scaled)
  # min-p in the logit domain: π_i < min_p · max π ⇔ l_i − max l < log(min_p), a ratio that
  # renormalising leaves unchanged (log(0) = −inf keeps everything).
  top = jnp.max(filtered, axis=-1, keepdims=True)
  filtered = jnp.where(filtered - top >= jnp.log(min_p), filtered, NEG_INF)
  # Each filter only shrinks the support, so the chain of renormalisations is the softmax of
  # the surviving logits; the K largest of them, renormalised, are the mixture.
  vals, ids = jax.lax.top_k(filtered, max_topk)
  return jax.nn.softmax(vals, axis=-1), ids.astype(jnp.int32), entropy


def concept_embedding(weights: jax.Array, ids: jax.Array, table: jax.Array) -> jax.Array:
  """e = Σ_k weights[n,k] · table[ids[n,k]]: f32 [N,D] from weights f32 [N,K], ids int [N,K]
  and the input embedding table [V,D] (only the K rows are gathered, never [N,V]·E). One-hot
  weights give exactly table[id] (adding 0·E[·] changes nothing)."""
  rows = table[ids].astype(jnp.float32)  # [N,K,D]
  return jnp.einsum("nk,nkd->nd", weights.astype(jnp.float32), rows)


def cold_stop_update(count: jax.Array, entropy: jax.Array, *, threshold: jax.Array,
                     length: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One Cold Stop step: (count int32 [N], fire bool [N]).

  count' = count + 1 if H < τ else 0; fire = count' >= k_len, i.e. it fires at the k_len-th
  consecutive low-entropy step, whose token becomes think_end_id. τ = threshold <= 0 disables
  (the count stays 0). entropy f32 [N]; threshold f32 [], length int [] >= 1.
  """
  low = (threshold > 0) & (entropy < threshold)
  count = jnp.where(low, count + 1, 0).astype(jnp.int32)
  return count, count >= length


def soft_think_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                      max_new_tokens: int, think_end_id: int, prompt_mask: Any = None,
                      max_topk: int = 10, min_p: float = 0.001,
                      early_stopping_entropy_threshold: float = 0.01,
                      early_stopping_length_threshold: int = 256, temperature: float = 0.6,
                      top_p: float = 0.95, top_k: int = 30,
                      after_thinking_temperature: float = 0.6, after_thinking_top_p: float = 0.95,
                      after_thinking_top_k: int = 30, num_samples: int = 1,
                      stop_tokens: Sequence[int] | None = None, cache_dtype: Any = None
                      ) -> tuple[Rollout, SoftThinkInfo]:
  """Soft Thinking decode (evaluation only; conventions in the module docstring).

  Option names are the reference's (`eric-ai-lab/Soft-Thinking`, run_sglang_softthinking.py);
  defaults are its README's (spec §13c).

  Args:
    params, config: the model (tokenrl.models).
    prompts, prompt_mask: as `sampler.sample` (list of id lists, or a left-padded int array
      with its 0/1 mask; no token value is ever taken as padding).
    rng: PRNG key; row i uses fold_in(rng, i) (its output does not depend on other rows), step
      t of it fold_in(row key, t), as `sample`. The thinking phase draws nothing.
    max_new_tokens: T, positions per row, concept tokens included.
    think_end_id: the token that closes the thought ("</think>").
    max_topk: K >= 1, tokens per concept mixture (5-20; 1 = greedy thinking).
    min_p: in [0, 1), thinking min-p relative to the top probability (0-0.005; 0 = off).
    early_stopping_entropy_threshold: Cold Stop τ >= 0 (0-0.1; 0 = off).
    early_stopping_length_threshold: Cold Stop k_len >= 1 (256-1024).
    temperature: > 0, the thinking temperature; top_p in (0, 1], top_k >= 0 (0 = off): the
      thinking filters.
    after_thinking_temperature (>= 0, 0 = greedy), after_thinking_top_p, after_thinking_top_k:
      the discrete sampling after the thought.
    num_samples: G; rows b·G + g (groups contiguous).
    stop_tokens: ids that end a row (default config.eos_ids); included in the mask.
    cache_dtype: KV cache dtype (default: the embedding dtype).

  Returns:
    (Rollout [N,T], SoftThinkInfo), N = B·G.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0 (the concept weights are softmax(logits / "
                     f"temperature); max_topk=1 gives greedy thinking), got {temperature}")
  if not 1 <= max_topk <= config.vocab_size:
    raise ValueError(f"max_topk must be in [1, vocab_size={config.vocab_size}], got {max_topk}")
  if not 0.0 <= min_p < 1.0:
    raise ValueError(f"min_p must be in [0, 1), got {min_p}")
  if early_stopping_entropy_threshold < 0:
    raise ValueError(f"early_stopping_entropy_threshold must be >= 0 (0 = off), got "
                     f"{early_stopping_entropy_threshold}")
  if early_stopping_length_threshold < 1:
    raise ValueError(f"early_stopping_length_threshold must be >= 1, got "
                     f"{early_stopping_length_threshold}")
  if not 0 <= think_end_id < config.vocab_size:
    raise ValueError(f"think_end_id {think_end_id} is outside the vocabulary "
                     f"[0, {config.vocab_size})")
  if after_thinking_temperature < 0:
    raise ValueError(f"after_thinking_temperature must be >= 0, got {after_thinking_temperature}")
  if not 0.0 < after_thinking_top_p <= 1.0:
    raise ValueError(f"after_thinking_top_p must be in (0, 1], got {after_thinking_top_p}")
  if after_thinking_top_k < 0:
    raise ValueError(f"after_thinking_top_k must be >= 0 (0 = off), got {after_thinking_top_k}")
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  tokens, mask, rng, temp = place_rows(None, tokens, mask, rng, temperature)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return _soft_think_generate(
      params, tokens, mask, rng, temp, f32(after_thinking_temperature), f32(min_p),
      f32(early_stopping_entropy_threshold),
      jnp.asarray(early_stopping_length_threshold, jnp.int32),
      jnp.asarray(think_end_id, jnp.int32), config=config, max_new_tokens=int(max_new_tokens),
      max_topk=int(max_topk), top_k=int(top_k), top_p=float(top_p),
      after_top_k=int(after_thinking_top_k), after_top_p=float(after_thinking_top_p),
      stop_tokens=stops, cache_dtype=dtype)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "max_topk", "top_k",
                                             "top_p", "after_top_k", "after_top_p",
                                             "stop_tokens", "cache_dtype"))
def _soft_think_generate(params, prompt_tokens, prompt_mask, rng, temperature, after_temperature,
                         min_p, tau, k_len, think_end, *, config, max_new_tokens, max_topk, top_k,
                         top_p, after_top_k, after_top_p, stop_tokens, cache_dtype):
  n, p = prompt_tokens.shape
  steps = max_new_tokens
  # `sample`'s cache layout, so a discrete step computes the same logits as `sample`.
  per_layer = _per_layer_cache(config)
  cache = transformer.init_cache(config, n, p + steps, cache_dtype, per_layer=per_layer)
  if per_layer:
    params = transformer.split_layers(params)
  hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  logits = transformer.unembed(params, hidden[:, -1:], config=config)[:, 0]  # [N,V]
  table = params["embed"]  # E [V,D], the input table (also with untied embeddings)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  after_greedy = after_temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  first = jnp.arange(max_topk) == 0  # [K]: the slot a discrete step's one-hot weight sits in

  def choose(state: SoftThinkState, logits: jax.Array) -> SoftThinkState:
    d = state.decode
    t = d.step
    live = ~d.done
    weights, ids, h = concept_weights(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                      min_p=min_p, max_topk=max_topk)
    count, fire = cold_stop_update(state.low_entropy, h, threshold=tau, length=k_len)
    count = jnp.where(state.thinking, count, state.low_entropy)
    fire = fire & state.thinking & live
    closing = state.thinking & ((ids[:, 0] == think_end) | fire)
    soft = state.thinking & ~closing
    # The after-thinking draw, exactly `sample`'s (its keys, its processing); thinking rows
    # ignore it.
    keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
    scaled = logits.astype(jnp.float32) / jnp.where(after_greedy, 1.0, after_temperature)
    drawn, logp, ent = choose_tokens(scaled, keys, greedy=after_greedy, top_k=after_top_k,
                                     top_p=after_top_p)
    token = jnp.where(soft, ids[:, 0], jnp.where(closing, think_end, drawn))
    token = jnp.where(live, token, config.pad_id)  # a fill value; mask 0 marks these slots
    # Next input: the mixture on concept steps, one-hot on the emitted token otherwise.
    weights = jnp.where(soft[:, None], weights, first.astype(jnp.float32))
    ids = jnp.where(soft[:, None], ids, jnp.where(first, token[:, None], 0))
    logp = jnp.where(state.thinking, 0.0, logp)
    ent = jnp.where(state.thinking, h, ent)
    put = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val.astype(buf.dtype), t, axis=1)
    decode = dataclasses.replace(
        d, step=t + 1, tokens=put(d.tokens, token), mask=put(d.mask, live),
        logprobs=put(d.logprobs, jnp.where(live, logp, 0.0)),
        entropy=put(d.entropy, jnp.where(live, ent, 0.0)),
        done=d.done | (live & jnp.isin(token, stops)))
    return SoftThinkState(decode=decode, weights=weights, ids=ids,
                          thinking=state.thinking & ~(closing & live), low_entropy=count,
                          soft=put(state.soft, soft & live),
                          cold_stopped=state.cold_stopped | fire)

  state = SoftThinkState(
      decode=SamplerState(
          step=jnp.zeros((), jnp.int32), cache=cache,
          tokens=jnp.full((n, steps), config.pad_id, jnp.int32),
          mask=jnp.zeros((n, steps), jnp.int32), logprobs=jnp.zeros((n, steps), jnp.float32),
          entropy=jnp.zeros((n, steps), jnp.float32), done=jnp.zeros((n,), bool)),
      weights=jnp.zeros((n, max_topk), jnp.float32), ids=jnp.zeros((n, max_topk), jnp.int32),
      thinking=jnp.ones((n,), bool), low_entropy=jnp.zeros((n,), jnp.int32),
      soft=jnp.zeros((n, steps), bool), cold_stopped=jnp.zeros((n,), bool))
  state = choose(state, logits)

  def cond(state: SoftThinkState) -> jax.Array:
    return (state.decode.step < steps) & ~jnp.all(state.decode.done)

  def body(state: SoftThinkState) -> SoftThinkState:
    d = state.decode
    last = jax.lax.dynamic_index_in_dim(d.tokens, d.step - 1, axis=1)  # [N,1]: shape only
    inputs = concept_embedding(state.weights, state.ids, table)[:, None]  # [N,1,D]
    hidden, cache = transformer.forward(params, last, config=config, cache=d.cache,
                                        segment_ids=jnp.ones_like(last), return_hidden=True,
                                        input_embeddings=inputs)
    logits = transformer.unembed(params, hidden, config=config)[:, -1]
    return choose(dataclasses.replace(state, decode=dataclasses.replace(d, cache=cache)), logits)

  state = jax.lax.while_loop(cond, body, state)
  d = state.decode
  rollout = Rollout(tokens=d.tokens, mask=d.mask, logprobs=d.logprobs, entropy=d.entropy,
                    prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, truncated=~d.done)
  info = SoftThinkInfo(soft=state.soft, thinking_steps=state.soft.sum(-1).astype(jnp.int32),
                       closed=~state.thinking, cold_stopped=state.cold_stopped)
  return rollout, info
