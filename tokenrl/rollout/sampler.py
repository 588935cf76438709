"""The rollout sampler: one jitted prefill + one `lax.while_loop` decode over the KV cache.

    rollout = sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                     temperature=1.0, top_k=0, top_p=1.0, num_samples=8)

Prompts are left-padded and their length rounded up to a bucket, so the number of compiles
is bounded by the number of buckets, not by the number of distinct prompt lengths.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.data.prompts import bucket_length as data_bucket_length
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.sampling import choose_tokens
from tokenrl.types import Rollout


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeContext:
  """What a logit processor sees at each decode step.

  step   int32 []     index (0-based) of the completion token being chosen.
  tokens int32 [N,T]  completion tokens chosen so far (filled with pad_id beyond `step`).
  done   bool  [N]    rows that already emitted a stop token.
  aux    pytree       `sample(..., processor_state=...)`: traced values the processor reads
                      (e.g. statistics that change every RL step), so changing them does not
                      recompile the decode loop; None when not given.
  temperature f32 []  the divisor already applied to the logits (1 when greedy), so a control
                      defined on raw logits adds bias / temperature.
  hidden f32 [N,D]    the final-normed hidden state the logits were unembedded from (inputs
                      of predictor heads, e.g. budget guidance's length predictor).
  """

  step: jax.Array
  tokens: jax.Array
  done: jax.Array
  aux: Any = None
  temperature: Any = None
  hidden: Any = None


# (logits f32 [N,V] after temperature, context) -> logits f32 [N,V]. Must be a pure, hashable
# function (it is a static argument of the jitted sampler).
LogitProcessor = Callable[[jax.Array, DecodeContext], jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplerState:
  """Carry of the decode while_loop (all arrays; N rows, T = max_new_tokens)."""

  step: jax.Array  # int32 [] next column of `tokens` to fill
  cache: dict[str, jax.Array]  # KV cache, see tokenrl.models.transformer
  tokens: jax.Array  # int32 [N,T]
  mask: jax.Array  # int32 [N,T]
  logprobs: jax.Array  # f32 [N,T]
  entropy: jax.Array  # f32 [N,T]
  done: jax.Array  # bool [N]


def bucket_length(length: int, *, minimum: int = 16) -> int:
  """Padded prompt length: powers of two (at least `minimum`) up to 512, then multiples of 256."""
  if length <= 512:
    return data_bucket_length(length, min_bucket=minimum)
  return data_bucket_length(length, multiple=256)


def prepare_prompts(prompts: Any, pad_id: int, *, prompt_mask: Any = None,
                    bucket: bool = True, max_width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [B,P'], mask int32 [B,P']) left-padded to a bucketed length P'.

  P' = bucket_length(longest prompt), capped at `max_width` when given and the longest prompt
  fits it: bucketing saves compiles, it must never make a prompt that fits the context refuse
  to (a 57-token prompt + 2 new tokens in a 64-token context pads to 62, not 64).

  `prompts` is one of:
    - a list of B token-id lists: the lengths are explicit (the one obvious form);
    - an int array [B,P] and `prompt_mask` int/bool [B,P], 1 = real token, 0 = left padding
      (each row 0…0 1…1, at least one 1), e.g. a Rollout's prompt_tokens / prompt_mask;
    - an int array [B,P] alone: every slot is a real token (no padding).
  No token value is ever taken to mean padding: a pad id can be a real token (a config.json
  without pad_token_id loads with pad_id 0, a real vocabulary entry). `pad_id` only fills the
  padded slots, which the returned mask keeps out of attention, so its value is harmless.

  Raises:
    ValueError: an empty list, a row with no real token, `prompt_mask` with a list, or a
      `prompt_mask` of another shape, with values other than 0/1, or not left padding.
  """
  if isinstance(prompts, (list, tuple)):
    if not prompts:
      raise ValueError("prompts is empty")
    if prompt_mask is not None:
      raise ValueError("prompt_mask is only for an int array of prompts; a list of id lists "
                       "already gives each prompt's length: drop prompt_mask")
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
  else:
    arr = np.asarray(prompts)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"prompts must be an int array [B,P] or a list of id lists, got "
                       f"{arr.dtype} array of shape {arr.shape}")
    if prompt_mask is None:
      valid = np.ones(arr.shape, bool)  # no mask: no padding (never inferred from pad_id)
    else:
      valid = _check_prompt_mask(prompt_mask, arr.shape)
    rows = [row[v] for row, v in zip(arr, valid)]
  empty = [i for i, r in enumerate(rows) if r.size == 0]
  if empty:
    raise ValueError(f"prompts {empty} are empty (all padding)")
  longest = max(r.size for r in rows)
  width = bucket_length(longest) if bucket else longest
  if max_width is not None and longest <= max_width:
    width = min(width, max_width)
  # pad_id fills the padded slots only; mask 0 keeps them out of attention and positions.
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, width - r.size:] = r
    mask[i, width - r.size:] = 1
  return tokens, mask


def _check_prompt_mask(prompt_mask: Any, shape: tuple[int, ...]) -> np.ndarray:
  """prompt_mask [B,P] as bool, after checking its shape, 0/1 values and left padding."""
  m = np.asarray(prompt_mask)
  if m.shape != shape:
    raise ValueError(f"prompt_mask has shape {m.shape}, prompts {shape}: pass one 0/1 entry "
                     "per prompt slot (1 = real token, 0 = left padding)")
  if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool) or not np.isin(m, (0, 1)).all():
    raise ValueError(f"prompt_mask must hold 0/1 (1 = real token, 0 = left padding), got "
                     f"{m.dtype} values {np.unique(m)[:8].tolist()}")
  m = m.astype(bool)
  # Left padding: once a row turns real it stays real (a 0 after a 1 would be a hole).
  holes = np.flatnonzero((m[:, :-1] & ~m[:, 1:]).any(axis=1)).tolist()
  if holes:
    raise ValueError(f"prompt_mask rows {holes} are not left-padded (a 0 after a 1): the "
                     "sampler takes left padding (0…0 1…1); pass right-padded or packed prompts "
                     "as a list of id lists")
  return m


def prepare_rows(params: Any, prompts: Any, *, config: ModelConfig, max_new_tokens: int,
                 prompt_mask: Any, temperature: float, top_k: int, top_p: float,
                 num_samples: int, stop_tokens: Sequence[int] | None, cache_dtype: Any
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], Any]:
  """The host-side start of every decoder (sample and the speculative / early-exit ones).

  Checks the sampling arguments, left-pads and buckets the prompts (`prepare_prompts`, the
  bucket capped at the room the completion leaves: up to the context, never past), checks the
  ids and the length, and repeats each prompt num_samples times (groups contiguous).

  Returns:
    (tokens int32 [N,P], mask int32 [N,P], stop ids, KV cache dtype), N = B·num_samples.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}")
  if top_k < 0:
    raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
  tokens, mask = prepare_prompts(prompts, config.pad_id, prompt_mask=prompt_mask,
                                 max_width=config.max_seq_len - max_new_tokens)
  if tokens.max() >= config.vocab_size or tokens.min() < 0:
    raise ValueError(f"prompts hold token ids in [{tokens.min()}, {tokens.max()}], outside the "
                     f"vocabulary [0, {config.vocab_size})")
  if tokens.shape[1] + max_new_tokens > config.max_seq_len:
    longest = int(mask.sum(axis=1).max())
    raise ValueError(f"prompt of {longest} tokens (bucket {tokens.shape[1]}) + max_new_tokens "
                     f"{max_new_tokens} = {longest + max_new_tokens} exceeds the model's "
                     f"max_seq_len {config.max_seq_len}: shorten the prompt or lower max_new_tokens")
  if num_samples > 1:
    tokens = np.repeat(tokens, num_samples, axis=0)
    mask = np.repeat(mask, num_samples, axis=0)
  stops = tuple(int(t) for t in (config.eos_ids if stop_tokens is None else stop_tokens))
  dtype = jnp.dtype(cache_dtype) if cache_dtype is not None else params["embed"].dtype
  return tokens, mask, stops, dtype


def sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array, max_new_tokens: int,
           prompt_mask: Any = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           num_samples: int = 1,
           stop_tokens: Sequence[int] | None = None, logit_processor: LogitProcessor | None = None,
           cache_dtype: Any = None,
           prompt_sharding: jax.sharding.NamedSharding | None = None,
           processor_state: Any = None) -> Rollout:
  """Sample `num_samples` completions per prompt.

  Args:
    params: model params (see tokenrl.models).
    prompts: a list of B token-id lists, or an int array [B,P] (with `prompt_mask` when it
      is left-padded; see `prepare_prompts`). No token value is ever taken as padding.
    config: ModelConfig of the params.
    rng: PRNG key. Row i of the output uses fold_in(rng, i), so its samples do not depend
      on the other rows.
    max_new_tokens: T, completion tokens per row.
    prompt_mask: int/bool [B,P] for an array of prompts: 1 = real token, 0 = left padding.
      None: every slot of the array is real.
    temperature: 0 = greedy; > 0 divides the logits.
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass (1.0 = off).
    num_samples: G, completions per prompt; rows g·B..: groups are contiguous (row b·G + g).
    stop_tokens: ids that end a completion (default config.eos_ids); included in the mask.
    logit_processor: optional pure function (logits [N,V], DecodeContext) -> logits.
    processor_state: optional pytree of arrays handed to the processor as DecodeContext.aux
      (traced: new values reuse the compiled decode loop; the processor itself is static).
    cache_dtype: KV cache dtype (default: the embedding dtype).
    prompt_sharding: sharding of the [N,P] prompt rows on a mesh, e.g.
      `tokenrl.train.mesh.batch_sharding(mesh)` (N must divide evenly); the KV cache and the
      outputs follow it. Every process passes the same prompts (multi-host safe). None: one
      device, or wherever jit places them next to the params.

  Returns:
    Rollout with tokens/mask/logprobs/entropy [N,T], N = B·G.
  """
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  tokens, mask, rng, temp = place_rows(prompt_sharding, tokens, mask, rng, temperature)
  aux = jax.tree.map(lambda x: np.asarray(x), processor_state)
  if prompt_sharding is None:
    aux = jax.tree.map(jnp.asarray, aux)
  else:
    rep_sharding = jax.sharding.NamedSharding(prompt_sharding.mesh, jax.sharding.PartitionSpec())
    aux = jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, rep_sharding, lambda idx: x[idx]), aux)
  return _generate(params, tokens, mask, rng, temp, aux, config=config,
                   max_new_tokens=max_new_tokens, top_k=int(top_k), top_p=float(top_p),
                   stop_tokens=stops, logit_processor=logit_processor, cache_dtype=dtype)


def place_rows(sharding: jax.sharding.NamedSharding | None, tokens: np.ndarray, mask: np.ndarray,
               rng: jax.Array, temperature: float):
  """(tokens, mask, rng, temperature) as a decode loop's jit arguments.

  sharding None: plain device arrays (jit puts them next to the params). Otherwise the [N,P]
  prompt rows split by `sharding` (the KV cache and the outputs follow them under jit), the key
  and the f32 temperature replicated on its devices. make_array_from_callback reads each shard
  from the host copy every process holds, so this works when the mesh spans several processes
  (device_put of a local array may not).
  """
  temperature = np.asarray(temperature, np.float32)
  if sharding is None:
    return jnp.asarray(tokens), jnp.asarray(mask), rng, jnp.asarray(temperature)
  try:
    sharding.shard_shape(tokens.shape)
  except ValueError as e:
    raise ValueError(f"prompt_sharding does not divide the {tokens.shape[0]} prompt rows "
                     f"(N = B*G): {e}") from None
  put = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(put(np.asarray(jax.random.key_data(rng)), replicated),
                                   impl=jax.random.key_impl(rng))
  else:
    key = put(np.asarray(rng), replicated)
  return put(tokens, sharding), put(mask, sharding), key, put(temperature, replicated)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "top_p",
                                             "stop_tokens", "logit_processor", "cache_dtype"))
def _generate(params, prompt_tokens, prompt_mask, rng, temperature, aux, *, config, max_new_tokens,
              top_k, top_p, stop_tokens, logit_processor, cache_dtype) -> Rollout:
  n, p = prompt_tokens.shape
  steps = max_new_tokens
  # On CPU, XLA copies every dynamic slice it feeds to a matmul: under the layer scan that is
  # cache[l] and each layer's weights, on every decode step. The per-layer cache (layers
  # unrolled) and weights split once before the loop avoid both: 1.2-1.3x decode tokens/s on
  # 2 CPU cores (benchmarks/sampler.py model, N=64/256), for ~+1 s compile at L=4 and ~+10 s
  # at L=24. GPU/TPU keep the stacked layout under the scan (compile time flat in depth).
  # TokenSelect gathers rows of the stacked [N,C,K,H] layer cache: it keeps the stacked layout.
  per_layer = jax.default_backend() == "cpu" and config.attention == "full"
  cache = transformer.init_cache(config, n, p + steps, cache_dtype, per_layer=per_layer)
  if per_layer:
    params = transformer.split_layers(params)
  # Prefill: only the last position's logits are needed; unembedding all P positions would
  # materialize an f32 [N,P,V] buffer (GBs for real vocabularies).
  hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  hidden = hidden[:, -1]  # [N,D]
  logits = transformer.unembed(params, hidden[:, None], config=config)[:, 0]
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

  def choose(state: SamplerState, logits: jax.Array, hidden: jax.Array) -> SamplerState:
    t = state.step
    divisor = jnp.where(greedy, 1.0, temperature).astype(jnp.float32)
    scaled = logits.astype(jnp.float32) / divisor
    if logit_processor is not None:
      scaled = logit_processor(scaled, DecodeContext(t, state.tokens, state.done, aux, divisor,
                                                     hidden.astype(jnp.float32)))
    keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
    token, logp, ent = choose_tokens(scaled, keys, greedy=greedy, top_k=top_k, top_p=top_p)
    live = ~state.done
    token = jnp.where(live, token, config.pad_id)  # a fill value; mask 0 marks these slots
    put = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val.astype(buf.dtype), t, axis=1)
    return dataclasses.replace(
        state, step=t + 1,
        tokens=put(state.tokens, token), mask=put(state.mask, live),
        logprobs=put(state.logprobs, jnp.where(live, logp, 0.0)),
        entropy=put(state.entropy, jnp.where(live, ent, 0.0)),
        done=state.done | (live & jnp.isin(token, stops)))

  state = SamplerState(
      step=jnp.zeros((), jnp.int32), cache=cache,
      tokens=jnp.full((n, steps), config.pad_id, jnp.int32), mask=jnp.zeros((n, steps), jnp.int32),
      logprobs=jnp.zeros((n, steps), jnp.float32), entropy=jnp.zeros((n, steps), jnp.float32),
      done=jnp.zeros((n,), bool))
  state = choose(state, logits, hidden)

  def cond(state: SamplerState) -> jax.Array:
    return (state.step < steps) & ~jnp.all(state.done)

  def body(state: SamplerState) -> SamplerState:
    last = jax.lax.dynamic_index_in_dim(state.tokens, state.step - 1, axis=1)  # [N,1]
    hidden, cache = transformer.forward(params, last, config=config, cache=state.cache,
                                        segment_ids=jnp.ones_like(last), return_hidden=True)
    logits = transformer.unembed(params, hidden, config=config)
    return choose(dataclasses.replace(state, cache=cache), logits[:, -1], hidden[:, -1])

  state = jax.lax.while_loop(cond, body, state)
  return Rollout(tokens=state.tokens, mask=state.mask, logprobs=state.logprobs,
                 entropy=state.entropy, prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                 truncated=~state.done)
