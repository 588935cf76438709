"""Pure sampling functions over one step of logits [N,V] (f32).

Order as in transformers: temperature -> logit processor -> top-k -> top-p. The returned
log-prob and entropy are those of the final (filtered, renormalized) distribution, i.e. the
one the token was actually drawn from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
  """Keep exactly the k largest logits per row (ties broken by index), -inf elsewhere."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  _, idx = jax.lax.top_k(logits, k)
  keep = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], idx].set(True)
  return jnp.where(keep, logits, NEG_INF)


def filter_top_p(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keep the smallest prefix of tokens (by descending probability) whose mass
  reaches p; a token is kept iff the mass strictly before it is < p (the top token always)."""
  if p >= 1.0:
    return logits
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < p
  rows = jnp.arange(logits.shape[0])[:, None]
  keep = jnp.zeros(logits.shape, bool).at[rows, order].set(keep_sorted)
  return jnp.where(keep, logits, NEG_INF)


def log_probs_and_entropy(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log_softmax [N,V] and entropy [N] of rows that may hold -inf (filtered) entries."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
  return logp, entropy


def choose_tokens(logits: jax.Array, keys: jax.Array, *, greedy: jax.Array, top_k: int,
                  top_p: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draw one token per row.

  logits: f32 [N,V], already divided by the temperature and processed.
  keys: [N] PRNG keys, one per row (so a row's draw never depends on other rows).
  greedy: bool [] — argmax instead of sampling; log-prob/entropy are then of the unfiltered
    distribution (the point mass actually used carries no information).
  Returns (token int32 [N], logprob f32 [N], entropy f32 [N]).
  """
  filtered = filter_top_p(filter_top_k(logits, top_k), top_p)
  sampled = jax.vmap(jax.random.categorical)(keys, filtered)
  token = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)
  dist = jnp.where(greedy, logits, filtered)
  logp, entropy = log_probs_and_entropy(dist)
  token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
  return token, token_logp, entropy


def process_logits(logits: jax.Array, *, temperature: jax.Array, top_k: int,
                   top_p: float) -> tuple[jax.Array, jax.Array]:
  """(scaled, filtered) logits [..., V] f32: the processing every sampled token goes through.

  scaled = logits / temperature (divided by 1 when temperature <= 0, i.e. greedy), then
  filtered = top-p(top-k(scaled)) with -inf outside the kept set: the exact steps `sample`
  applies before `choose_tokens` draws. Speculative decoding applies this one function to the
  draft and to the target, as exactness requires (both laws processed the same way).
  temperature: f32 [] (traced: one compile for every temperature).
  """
  v = logits.shape[-1]
  scaled = logits.astype(jnp.float32) / jnp.where(temperature <= 0, 1.0, temperature)
  flat = scaled.reshape(-1, v)  # the filters work on rows [M,V]
  filtered = filter_top_p(filter_top_k(flat, top_k), top_p).reshape(scaled.shape)
  return scaled, filtered
