"""SkipDecode (Del Corro et al. 2023, spec §7): batched early exit with a KV cache, where
generated position t runs the warm-up layer(s) and the top n(t) layers only.

    rollout, info = skip_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                                max_layers=cfg.num_layers, min_layers=cfg.num_layers // 2)

Schedule (one value per generated position t = 0..T−1, the same for every row):

    n(t) = n_min + ceil((n_max − n_min) · (t_end − 1 − t) / (t_end − 1))   for t < t_end
    n(t) = n_min                                                           for t ≥ t_end

(linear decay from n_max at the first generated token to n_min at t_end − 1, default
t_end = T; the rounding is a reconstruction [recon]). Token t ≥ 1 is predicted by running
token t−1 through layers {0..w−1} ∪ {L−n(t)..L−1} (w warm-up layers, default 1; a layer in
both sets runs once), then the final norm and the unembedding; token 0 comes from the prefill,
which runs every layer. Because n is non-increasing, a layer skipped at t is skipped at every
later position, so no later query ever reads a KV entry that was never written: that is what
makes it batchable with one KV cache. A non-increasing schedule is required (ValueError).

Lossy: the upper layers see shallow inputs; a model must be trained under the schedule. For
evaluation only. The Rollout's log-probs/entropy are those of the distribution each token was
actually sampled from (the truncated model's, processed as in `sampler.sample`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.dynamic_exit import run_layer_subset
from tokenrl.rollout.sampler import prepare_rows
from tokenrl.rollout.sampling import choose_tokens
from tokenrl.types import Rollout


def linear_schedule(max_new_tokens: int, *, max_layers: int, min_layers: int,
                    end: int | None = None) -> tuple[int, ...]:
  """n(t) for t = 0..T−1: linear decay from max_layers (t = 0) to min_layers (t = end − 1),
  then constant; values rounded up (see the module docstring). end defaults to T."""
  if not 0 <= min_layers <= max_layers:
    raise ValueError(f"need 0 <= min_layers <= max_layers, got min_layers={min_layers}, "
                     f"max_layers={max_layers}")
  end = max_new_tokens if end is None else int(end)
  if end < 1:
    raise ValueError(f"end must be >= 1, got {end}")
  span = max_layers - min_layers
  out = []
  for t in range(max_new_tokens):
    if t >= end - 1:
      out.append(min_layers)
    else:
      # Integer ceil of span·(end−1−t)/(end−1): exact, no float rounding at the grid points.
      out.append(min_layers + -(-span * (end - 1 - t) // (end - 1)))
  return tuple(out)


def active_layers(num_layers: int, top_layers: int, warmup_layers: int) -> tuple[int, ...]:
  """Layer indices run for a position with n = top_layers: {0..w−1} ∪ {L−n..L−1}, increasing."""
  return tuple(sorted(set(range(min(warmup_layers, num_layers))) |
                      set(range(num_layers - top_layers, num_layers))))


def check_schedule(schedule: Sequence[int], *, num_layers: int,
                   max_new_tokens: int) -> tuple[int, ...]:
  """The schedule as a tuple of T ints in [0, L], after checking it is non-increasing.

  Raises:
    ValueError: wrong length, a value outside [0, L], or an increase (a later position would
      attend to KV entries of layers that earlier positions skipped, which were never written).
  """
  s = tuple(int(x) for x in schedule)
  if len(s) != max_new_tokens:
    raise ValueError(f"schedule has {len(s)} entries, expected one per generated token "
                     f"(max_new_tokens={max_new_tokens})")
  bad = [i for i, x in enumerate(s) if not 0 <= x <= num_layers]
  if bad:
    raise ValueError(f"schedule values must be in [0, num_layers={num_layers}]; positions "
                     f"{bad[:8]} are {[s[i] for i in bad[:8]]}")
  ups = [i for i in range(1, len(s)) if s[i] > s[i - 1]]
  if ups:
    i = ups[0]
    raise ValueError(f"schedule must be non-increasing (SkipDecode: a position may not run a "
                     f"layer an earlier position skipped, its KV entries would be missing): "
                     f"n({i - 1})={s[i - 1]} < n({i})={s[i]}")
  return s


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SkipInfo:
  """layers_run int32 [T]: layers actually run to produce token t (the prefill's L at t = 0);
  cache: the final per-layer KV cache when `return_cache` (else None), for inspection."""

  layers_run: jax.Array
  cache: Any = None


def skip_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                max_new_tokens: int, prompt_mask: Any = None, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
                stop_tokens: Sequence[int] | None = None, max_layers: int | None = None,
                min_layers: int | None = None, end: int | None = None,
                schedule: Sequence[int] | None = None, warmup_layers: int = 1,
                cache_dtype: Any = None, return_cache: bool = False) -> tuple[Rollout, SkipInfo]:
  """Sample with the SkipDecode schedule (lossy; evaluation only).

  Args (as `sampler.sample`, plus):
    max_layers, min_layers, end: the linear schedule (defaults L, ceil(L/2), T); or
    schedule: T explicit values n(t) (non-increasing), instead of the three above.
    warmup_layers: w, lowest layers always run (1, the paper's warm-up layer; 0 = none).
    return_cache: also return the final KV cache (tests inspect which slots were written).

  Returns:
    (Rollout [N,T], SkipInfo). Row i uses fold_in(rng, i) and step t fold_in(row key, t), as
    `sample`: with n(t) = L the tokens equal `sample`'s.
  """
  num_layers = config.num_layers
  if config.attention != "full":
    raise ValueError(f"skip_sample needs config.attention='full', got {config.attention!r}")
  if max_new_tokens < 1 or num_samples < 1 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f"bad settings: max_new_tokens={max_new_tokens}, num_samples={num_samples}, "
                     f"temperature={temperature}, top_k={top_k}, top_p={top_p}")
  if not 0 <= warmup_layers <= num_layers:
    raise ValueError(f"warmup_layers must be in [0, {num_layers}], got {warmup_layers}")
  if schedule is None:
    schedule = linear_schedule(
        max_new_tokens, max_layers=num_layers if max_layers is None else max_layers,
        min_layers=math.ceil(num_layers / 2) if min_layers is None else min_layers, end=end)
  elif (max_layers, min_layers, end) != (None, None, None):
    raise ValueError("pass either schedule or max_layers/min_layers/end, not both")
  schedule = check_schedule(schedule, num_layers=num_layers, max_new_tokens=max_new_tokens)
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  return _skip_generate(params, jnp.asarray(tokens), jnp.asarray(mask), rng,
                        jnp.asarray(temperature, jnp.float32), config=config,
                        top_k=int(top_k), top_p=float(top_p), stop_tokens=stops,
                        schedule=schedule, warmup_layers=int(warmup_layers), cache_dtype=dtype,
                        return_cache=bool(return_cache))


@functools.partial(jax.jit, static_argnames=("config", "top_k", "top_p", "stop_tokens",
                                             "schedule", "warmup_layers", "cache_dtype",
                                             "return_cache"))
def _skip_generate(params, prompt_tokens, prompt_mask, rng, temperature, *, config, top_k, top_p,
                   stop_tokens, schedule, warmup_layers, cache_dtype, return_cache):
  n, p = prompt_tokens.shape
  steps, num_layers = len(schedule), config.num_layers
  # The per-layer cache and split weights on every backend: a step then runs any subset of the
  # layers on their own cache arrays, with no gather of weights or cache.
  cache = transformer.init_cache(config, n, p + steps, cache_dtype, per_layer=True)
  params = transformer.split_layers(params)
  hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  logits = transformer.unembed(params, hidden[:, -1:], config=config)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  # One lax.switch branch per distinct depth; step t takes branch index[t] (static table).
  depths = sorted(set(schedule), reverse=True)
  subsets = [active_layers(num_layers, d, warmup_layers) for d in depths]
  branch_of_step = jnp.asarray([depths.index(d) for d in schedule], jnp.int32)
  runs = jnp.asarray([num_layers] + [len(active_layers(num_layers, d, warmup_layers))
                                     for d in schedule[1:]], jnp.int32)

  def branch(ids):
    def run(cache, last):
      logits, cache = run_layer_subset(params, last, config=config, cache=cache, layer_ids=ids,
                                       segment_ids=jnp.ones_like(last))
      return logits[:, -1], cache
    return run

  branches = [branch(ids) for ids in subsets]

  def choose(state, logits):
    t, cache, tokens, mask, logprobs, entropy, done = state
    scaled = logits.astype(jnp.float32) / jnp.where(greedy, 1.0, temperature)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
    token, logp, ent = choose_tokens(scaled, keys, greedy=greedy, top_k=top_k, top_p=top_p)
    live = ~done
    token = jnp.where(live, token, config.pad_id)
    put = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val.astype(buf.dtype), t, 1)
    return (t + 1, cache, put(tokens, token), put(mask, live),
            put(logprobs, jnp.where(live, logp, 0.0)), put(entropy, jnp.where(live, ent, 0.0)),
            done | (live & jnp.isin(token, stops)))

  state = (jnp.zeros((), jnp.int32), cache, jnp.full((n, steps), config.pad_id, jnp.int32),
           jnp.zeros((n, steps), jnp.int32), jnp.zeros((n, steps), jnp.float32),
           jnp.zeros((n, steps), jnp.float32), jnp.zeros((n,), bool))
  state = choose(state, logits[:, -1])

  def cond(state):
    return (state[0] < steps) & ~jnp.all(state[-1])

  def body(state):
    t, cache, tokens = state[0], state[1], state[2]
    last = jax.lax.dynamic_index_in_dim(tokens, t - 1, axis=1)  # [N,1]
    logits, cache = jax.lax.switch(branch_of_step[t], branches, cache, last)
    return choose((t,) + (cache,) + tuple(state[2:]), logits)

  t, cache, tokens, mask, logprobs, entropy, done = jax.lax.while_loop(cond, body, state)
  rollout = Rollout(tokens=tokens, mask=mask, logprobs=logprobs, entropy=entropy,
                    prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, truncated=~done)
  layers_run = jnp.where(jnp.arange(steps) < t, runs, 0)
  return rollout, SkipInfo(layers_run=layers_run, cache=cache if return_cache else None)
