"""Soft-token rollouts (Soft Tokens, Hard Truths, spec §13): T_c continuous CoT steps, then a
hard answer, in one jitted prefill + `lax.scan` (CoT) + `lax.while_loop` (answer).

    out = soft_sample(params, prompts, config=cfg, rng=key, cot_steps=4, max_new_tokens=8,
                      mixture_temperature=0.5, sigma=0.3, num_samples=8)

CoT step t (no stop tokens: exactly T_c steps), from the logits l_{t−1} [N,V] of the previous
position:
  soft  (hard_cot=False)  p = softmax(l/τ), μ = pᵀE, h̃ = μ + σ·ε (ε ~ N(0, I_D)); h̃ [N,D] is
                          fed through `forward(..., input_embeddings=h̃)`; its log-density
                          log N(h̃; μ, σ²I) is the CoT log-prob. σ = 0 and τ → 0 is greedy hard.
  hard  (hard_cot=True)   an ordinary token y ~ softmax(l/temperature) (argmax at temperature 0),
                          input E[y], log-prob log p(y): the "infer hard" path.
Answer: ordinary tokens at `temperature` until a stop token or `max_new_tokens`.
E = params['embed'] (inputs are given before the family's embedding scale, as `forward` wants).
Row i uses fold_in(rng, i), so a row's sample does not depend on the other rows.
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
from tokenrl.objectives.soft_tokens import gaussian_logprob
from tokenrl.rollout.sampler import prepare_prompts
from tokenrl.rollout.sampling import choose_tokens, log_probs_and_entropy


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftRollout:
  """What `soft_sample` returns for N = B·G rows (groups of G contiguous).

  prompt_tokens int32 [N,P], prompt_mask int32 [N,P]  left-padded prompts.
  cot_inputs    f32   [N,T_c,D]  the inputs fed at the CoT positions (h̃, or E[y] when hard).
  cot_tokens    int32 [N,T_c]    argmax of the mixture distribution (soft) / the sampled token.
  cot_logp      f32   [N,T_c]    Gaussian log-density of h̃ (soft) / token log-prob (hard).
  cot_entropy   f32   [N,T_c]    entropy of the mixture distribution softmax(l/τ) (soft) or of
                                 the sampling distribution (hard).
  tokens, mask, logprobs, entropy [N,T]  the hard answer (as `Rollout`); truncated bool [N].
  """

  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  cot_inputs: jax.Array
  cot_tokens: jax.Array
  cot_logp: jax.Array
  cot_entropy: jax.Array
  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  entropy: jax.Array
  truncated: jax.Array


def soft_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
                cot_steps: int, max_new_tokens: int, prompt_mask: Any = None,
                mixture_temperature: float = 0.5, sigma: float | jax.Array = 0.0,
                temperature: float = 1.0, num_samples: int = 1,
                stop_tokens: Sequence[int] | None = None, hard_cot: bool = False) -> SoftRollout:
  """Sample `num_samples` soft-CoT + hard-answer completions per prompt.

  Args:
    params, config: the model (tokenrl.models).
    prompts: a list of B token-id lists, or an int array [B,P] (with `prompt_mask` when it
      is left-padded); no token value is ever taken as padding (see sampler.prepare_prompts).
    prompt_mask: int/bool [B,P] for an array of prompts: 1 = real token, 0 = left padding.
    rng: PRNG key; cot_steps: T_c >= 0; max_new_tokens: T >= 1 answer tokens.
    mixture_temperature: τ > 0 of the mixture (soft 0.5, fuzzy 1e-4).
    sigma: σ >= 0 of the input noise (scalar; see objectives.soft_tokens.noise_scale).
    temperature: answer (and hard-CoT) sampling temperature; 0 = greedy.
    num_samples: G; stop_tokens: answer stop ids (default config.eos_ids).
    hard_cot: sample hard CoT tokens instead (the "infer hard" path; no noise).
  """
  if cot_steps < 0:
    raise ValueError(f"cot_steps must be >= 0, got {cot_steps}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if mixture_temperature <= 0:
    raise ValueError(f"mixture_temperature must be > 0, got {mixture_temperature}")
  if temperature < 0 or num_samples < 1:
    raise ValueError(f"temperature must be >= 0 and num_samples >= 1, got {temperature}, "
                     f"{num_samples}")
  if np.ndim(sigma) != 0 or float(sigma) < 0:
    raise ValueError(f"sigma must be a scalar >= 0, got {sigma}")
  tokens, mask = prepare_prompts(prompts, config.pad_id, prompt_mask=prompt_mask)
  length = tokens.shape[1] + cot_steps + max_new_tokens
  if length > config.max_seq_len:
    raise ValueError(f"prompt bucket {tokens.shape[1]} + cot_steps {cot_steps} + max_new_tokens "
                     f"{max_new_tokens} = {length} exceeds the model's max_seq_len "
                     f"{config.max_seq_len}")
  tokens, mask = np.repeat(tokens, num_samples, axis=0), np.repeat(mask, num_samples, axis=0)
  stops = tuple(int(t) for t in (config.eos_ids if stop_tokens is None else stop_tokens))
  return _soft_generate(params, jnp.asarray(tokens), jnp.asarray(mask), rng,
                        jnp.asarray(temperature, jnp.float32),
                        jnp.asarray(mixture_temperature, jnp.float32),
                        jnp.asarray(sigma, jnp.float32), config=config, cot_steps=int(cot_steps),
                        max_new_tokens=int(max_new_tokens), stop_tokens=stops,
                        hard_cot=bool(hard_cot))


@functools.partial(jax.jit, static_argnames=("config", "cot_steps", "max_new_tokens",
                                             "stop_tokens", "hard_cot"))
def _soft_generate(params, prompt_tokens, prompt_mask, rng, temperature, tau, sigma, *, config,
                   cot_steps, max_new_tokens, stop_tokens, hard_cot) -> SoftRollout:
  n, p = prompt_tokens.shape
  cache = transformer.init_cache(config, n, p + cot_steps + max_new_tokens,
                                 params["embed"].dtype)
  hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                      segment_ids=prompt_mask, cache=cache, return_hidden=True)
  logits = transformer.unembed(params, hidden[:, -1], config=config)     # [N,V] f32
  table = params["embed"].astype(jnp.float32)                           # E [V,D]
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  greedy = temperature <= 0
  scale = jnp.where(greedy, 1.0, temperature)
  ones = jnp.ones((n, 1), jnp.int32)

  def step_keys(t):
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)

  def cot_step(carry, t):
    logits, cache = carry
    keys = step_keys(t)
    if hard_cot:
      token, lp, ent = choose_tokens(logits / scale, keys, greedy=greedy, top_k=0, top_p=1.0)
      x = table[token]
    else:
      logq, ent = log_probs_and_entropy(logits / tau)
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      mu = jnp.exp(logq) @ table                                          # [N,D]
      eps = jax.vmap(lambda k: jax.random.normal(k, (table.shape[1],)))(keys)
      x = mu + sigma * eps
      # sigma = 0 (a deterministic input) has no density; report 0 instead of ±inf.
      lp = jnp.where(sigma > 0, gaussian_logprob(x, mu, jnp.maximum(sigma, 1e-30)), 0.0)
    out, cache = transformer.forward(params, token[:, None], config=config, cache=cache,
                                     segment_ids=ones, input_embeddings=x[:, None])
    return (out[:, -1], cache), (x, token, lp, ent)

  if cot_steps:
    (logits, cache), (xs, toks, lps, ents) = jax.lax.scan(
        cot_step, (logits, cache), jnp.arange(cot_steps))
    cot = (xs.swapaxes(0, 1), toks.T, lps.T, ents.T)
  else:
    d = table.shape[1]
    cot = (jnp.zeros((n, 0, d), jnp.float32), jnp.zeros((n, 0), jnp.int32),
           jnp.zeros((n, 0), jnp.float32), jnp.zeros((n, 0), jnp.float32))

  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  T = max_new_tokens

  def choose(state, logits):
    t, _, toks, mask, lps, ents, done = state
    # Answer keys: a separate stream from the CoT keys (offset 2^20 steps).
    token, lp, ent = choose_tokens(logits / scale, step_keys(t + (1 << 20)), greedy=greedy,
                                   top_k=0, top_p=1.0)
    live = ~done
    token = jnp.where(live, token, config.pad_id)
    put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v.astype(buf.dtype), t, axis=1)
    return (t + 1, state[1], put(toks, token), put(mask, live), put(lps, jnp.where(live, lp, 0.0)),
            put(ents, jnp.where(live, ent, 0.0)), done | (live & jnp.isin(token, stops)))

  state = (jnp.zeros((), jnp.int32), cache, jnp.full((n, T), config.pad_id, jnp.int32),
           jnp.zeros((n, T), jnp.int32), jnp.zeros((n, T), jnp.float32),
           jnp.zeros((n, T), jnp.float32), jnp.zeros((n,), bool))
  state = choose(state, logits)

  def cond(state):
    return (state[0] < T) & ~jnp.all(state[6])

  def body(state):
    last = jax.lax.dynamic_index_in_dim(state[2], state[0] - 1, axis=1)   # [N,1]
    out, cache = transformer.forward(params, last, config=config, cache=state[1], segment_ids=ones)
    return choose((state[0], cache) + state[2:], out[:, -1])

  _, _, toks, mask, lps, ents, done = jax.lax.while_loop(cond, body, state)
  return SoftRollout(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, cot_inputs=cot[0],
                     cot_tokens=cot[1], cot_logp=cot[2], cot_entropy=cot[3], tokens=toks,
                     mask=mask, logprobs=lps, entropy=ents, truncated=~done)
