"""R2R: small-large token routing (Roads to Rome, Fu et al. 2025; spec §15).

    labels = divergence_labels(slm, slm_cfg, llm, llm_cfg, prompts, max_new_tokens=32, horizon=8)
    router = r2r_train.train_router(init_router(key, dim=slm_cfg.dim, logits_size=100), ...)
    rollout, info = r2r_sample(slm, slm_cfg, llm, llm_cfg, router, prompts, rng=key,
                               max_new_tokens=64, threshold=tau)
    info.routed_fraction    # share of emitted tokens the large model produced

Routing: at every step the small model (SLM) proposes x̂ from its logits; a router scores
s = MLP(features) and, iff σ(s) ≥ τ, the large model (LLM) produces the token instead. Both
models consume every emitted token, so their KV caches stay in sync (one decode step each per
token; the reference instead lets the LLM lag and catches it up with a prefill of the SLM's
segment when it is called, a serving optimisation not done here). τ = 0 routes everything
(LLM-only decoding), τ > 1 nothing (SLM-only). Lossy: a mixture of two models; evaluation
only. Log-probs are of the distribution each token was drawn from (the SLM's or the LLM's).

Router (`thu-nics/R2R r2r/models/router.py`, HiddenStatesTokenLMHeadLogitsClassifier):
  features  h = SLM final-normed last hidden state [D]; e = E_slm[x̂] (the SLM's input
            embedding of its own token, frozen: read from the SLM params, never trained);
            f = the SLM's top-k logits, sorted descending (k = logits_size, 100 in the
            reference), plus here the SLM entropy (an extra input, not in the reference).
  network   x = W_in·[h, e, W_f·f]  →  blocks  →  LayerNorm → Linear → 1 logit
            block: x ← P(x) + W₂·dropout(GELU(W₁·LN(x)))  (W₁: d → 4d, W₂: 4d → d'; P is a
            Linear when d ≠ d' else the identity), hidden dims [1024]×6 in the reference.

Labels (`script/data_labeling/step_0..4`, at CPU scale): the LLM answers greedily; the SLM
teacher-forced on that answer predicts each token: IDENTICAL where the SLM's greedy token is
the LLM's. Where it differs, the LLM continues greedily `horizon` tokens from the SLM's token
and from its own; the reference asks a verifier LLM whether the SLM branch changes the
meaning. Here the verifier is a rule [recon]: NEUTRAL iff the two branches re-join (the last
`sync` tokens of the SLM branch occur contiguously in the LLM branch), else DIVERGENT; a
different `judge` can be passed. The router's target is DIVERGENT.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout.sampler import prepare_prompts, sample
from tokenrl.rollout.sampling import choose_tokens
from tokenrl.types import Rollout

IDENTICAL, NEUTRAL, DIVERGENT = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Router network.


def _linear(rng: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
  """Kaiming-normal weights (std sqrt(2 / fan_in), the reference's init), zero bias."""
  return {"w": jax.random.normal(rng, (fan_in, fan_out), jnp.float32) * (2.0 / fan_in) ** 0.5,
          "b": jnp.zeros((fan_out,), jnp.float32)}


def _layer_norm_params(dim: int) -> dict[str, jax.Array]:
  return {"scale": jnp.ones((dim,), jnp.float32), "bias": jnp.zeros((dim,), jnp.float32)}


def init_router(rng: jax.Array, *, dim: int, logits_size: int = 100,
                hidden_dims: Sequence[int] = (1024,) * 6, expansion: int = 4) -> dict[str, Any]:
  """Router params (a plain pytree of f32 arrays).

  dim: D, the SLM hidden size (= its embedding size); logits_size: k top logits (the feature
  vector is k + 1 long: the entropy is appended); hidden_dims: the backbone widths.
  """
  hidden_dims = tuple(int(h) for h in hidden_dims)
  if dim < 1 or logits_size < 1 or not hidden_dims or min(hidden_dims) < 1 or expansion < 1:
    raise ValueError(f"bad router sizes: dim={dim}, logits_size={logits_size}, "
                     f"hidden_dims={hidden_dims}, expansion={expansion}")
  keys = iter(jax.random.split(rng, 4 + 3 * len(hidden_dims)))
  dims = hidden_dims + (hidden_dims[-1],)  # the last block keeps its width (reference)
  blocks = []
  for d_in, d_out in zip(dims[:-1], dims[1:]):
    block = {"norm": _layer_norm_params(d_in), "up": _linear(next(keys), d_in, d_in * expansion),
             "down": _linear(next(keys), d_in * expansion, d_out)}
    if d_in != d_out:
      block["proj"] = _linear(next(keys), d_in, d_out)
    blocks.append(block)
  return {"feat": _linear(next(keys), logits_size + 1, dim),
          "inp": _linear(next(keys), 3 * dim, hidden_dims[0]), "blocks": tuple(blocks),
          "out_norm": _layer_norm_params(hidden_dims[-1]),
          "out": _linear(next(keys), hidden_dims[-1], 1)}


def router_features(small_params: Any, hidden: jax.Array, token: jax.Array, logits: jax.Array, *,
                    logits_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(h [...,D], E_slm[x̂] [...,D], f [...,k+1]) from the SLM's final-normed hidden [...,D],
  its token x̂ int [...] and its raw logits [...,V]; f = top-k logits (descending) + entropy.
  When V < k the top logits are padded with the smallest one (repeats of the tail)."""
  logits = logits.astype(jnp.float32)
  k = min(logits_size, logits.shape[-1])
  top = jax.lax.top_k(logits, k)[0]
  if k < logits_size:
    top = jnp.concatenate([top, jnp.repeat(top[..., -1:], logits_size - k, axis=-1)], axis=-1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1, keepdims=True)
  embed = jax.lax.stop_gradient(small_params["embed"])[token].astype(jnp.float32)
  return hidden.astype(jnp.float32), embed, jnp.concatenate([top, entropy], axis=-1)


def _layer_norm(x: jax.Array, p: dict[str, jax.Array], eps: float = 1e-5) -> jax.Array:
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def router_logit(params: dict[str, Any], hidden: jax.Array, token_embed: jax.Array,
                 feats: jax.Array, *, dropout: float = 0.0,
                 rng: jax.Array | None = None) -> jax.Array:
  """Router logit s [...] (σ(s) = P(divergent)) from `router_features`'s three arrays.

  dropout > 0 needs `rng` (training); evaluation uses dropout = 0.
  """
  dim = params["feat"]["w"].shape[1]
  if hidden.shape[-1] != dim or token_embed.shape[-1] != dim:
    raise ValueError(f"router expects hidden and token embedding of size {dim}, got "
                     f"{hidden.shape[-1]} and {token_embed.shape[-1]}")
  if feats.shape[-1] != params["feat"]["w"].shape[0]:
    raise ValueError(f"router expects {params['feat']['w'].shape[0]} logit features (top-k + "
                     f"entropy), got {feats.shape[-1]}")
  dense = lambda x, p: x @ p["w"] + p["b"]
  x = dense(jnp.concatenate([hidden, token_embed, dense(feats, params["feat"])], -1),
            params["inp"])
  keys = (jax.random.split(rng, 2 * len(params["blocks"])) if dropout > 0 else None)

  def drop(y, i):
    if dropout <= 0:
      return y
    keep = jax.random.bernoulli(keys[i], 1.0 - dropout, y.shape)
    return jnp.where(keep, y / (1.0 - dropout), 0.0)

  for i, b in enumerate(params["blocks"]):
    residual = dense(x, b["proj"]) if "proj" in b else x
    h = drop(jax.nn.gelu(dense(_layer_norm(x, b["norm"]), b["up"]), approximate=False), 2 * i)
    x = residual + drop(dense(h, b["down"]), 2 * i + 1)
  return dense(_layer_norm(x, params["out_norm"]), params["out"])[..., 0]


def logits_size_of(router_params: dict[str, Any]) -> int:
  """k of the router (its feature vector is k top logits + the entropy)."""
  return int(router_params["feat"]["w"].shape[0]) - 1


# --------------------------------------------------------------------------------------------
# Divergence labels.


def reconverges(branch_slm: np.ndarray, branch_llm: np.ndarray, sync: int) -> np.ndarray:
  """bool [M]: the last `sync` tokens of each SLM branch [M,h] occur contiguously somewhere in
  the matching LLM branch [M,h] (the paths re-joined, possibly shifted)."""
  a, b = np.asarray(branch_slm), np.asarray(branch_llm)
  m, h = a.shape
  sync = min(sync, h)
  tail = a[:, h - sync:]
  windows = np.lib.stride_tricks.sliding_window_view(b, sync, axis=1)  # [M, h−sync+1, sync]
  return (windows == tail[:, None, :]).all(-1).any(-1)


def label_positions(llm_tokens: np.ndarray, slm_tokens: np.ndarray, branch_slm: np.ndarray,
                    branch_llm: np.ndarray, *, sync: int = 2,
                    judge: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                    ) -> np.ndarray:
  """Labels int [N,T] ∈ {IDENTICAL, NEUTRAL, DIVERGENT} from token arrays (the pure part).

  llm_tokens [N,T]: the LLM's answer y; slm_tokens [N,T]: the SLM's teacher-forced greedy
  prediction of each y_t; branch_slm, branch_llm [N,T,h]: for each t, the sequence starting
  with the SLM's (resp. the LLM's) token at t followed by the LLM's greedy continuation (only
  read where the tokens differ). judge(branch_slm [M,h], branch_llm [M,h]) -> bool [M]
  divergent; default: not `reconverges(..., sync)`.
  """
  y, s = np.asarray(llm_tokens), np.asarray(slm_tokens)
  labels = np.full(y.shape, IDENTICAL, np.int32)
  diff = y != s
  if diff.any():
    judge = judge or (lambda a, b: ~reconverges(a, b, sync))
    divergent = np.asarray(judge(np.asarray(branch_slm)[diff], np.asarray(branch_llm)[diff]))
    labels[diff] = np.where(divergent, DIVERGENT, NEUTRAL)
  return labels


@dataclasses.dataclass(frozen=True)
class LabelData:
  """Router training data at every answer position (N·T rows where mask is 1, flattened).

  hidden [M,D] f32, token [M] int32 (the SLM's greedy token x̂), logits [M,V] f32 (SLM raw),
  label [M] int32 (IDENTICAL / NEUTRAL / DIVERGENT); llm_tokens / slm_tokens / labels_grid
  [N,T] for inspection.
  """

  hidden: np.ndarray
  token: np.ndarray
  logits: np.ndarray
  label: np.ndarray
  llm_tokens: np.ndarray
  slm_tokens: np.ndarray
  labels_grid: np.ndarray


_FORWARD = jax.jit(transformer.forward, static_argnames=("config", "return_hidden"))


def divergence_labels(small_params: Any, small_config: ModelConfig, large_params: Any,
                      large_config: ModelConfig, prompts: Sequence[Sequence[int]], *,
                      max_new_tokens: int, horizon: int = 8, sync: int = 2,
                      judge: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                      ) -> LabelData:
  """Label every token of the LLM's greedy answers to `prompts` (a list of id lists).

  Step 0: y = LLM greedy answer (T = max_new_tokens, no stop tokens). Step 1: the SLM
  teacher-forced on prompt + y gives, at each position, its hidden state, logits and greedy
  token ŝ_t. Step 2: where ŝ_t ≠ y_t, the LLM continues greedily `horizon − 1` tokens after
  (y_<t, ŝ_t); its own branch is (y_t, y_{t+1}..) (the answer is generated `horizon` tokens
  longer for it). Step 3: `label_positions`.
  """
  if small_config.vocab_size != large_config.vocab_size:
    raise ValueError(f"the SLM and LLM must share a vocabulary: {small_config.vocab_size} vs "
                     f"{large_config.vocab_size}")
  if horizon < 1:
    raise ValueError(f"horizon must be >= 1, got {horizon}")
  prompts = [list(map(int, p)) for p in prompts]
  t = max_new_tokens
  full = sample(large_params, prompts, config=large_config, rng=jax.random.key(0),
                max_new_tokens=t + horizon, temperature=0.0, stop_tokens=())
  answer = np.asarray(full.tokens)  # [N,T+h]
  y = answer[:, :t]
  # One teacher-forced SLM pass over all rows, left-padded: the answer fills the last T
  # columns, so the state predicting y_t sits at column W − T − 1 + t of every row.
  seqs, seg = prepare_prompts([prompt + y[i].tolist() for i, prompt in enumerate(prompts)],
                              small_config.pad_id)
  hidden, _ = _FORWARD(small_params, jnp.asarray(seqs), config=small_config,
                       segment_ids=jnp.asarray(seg), return_hidden=True)
  width = seqs.shape[1]
  h = hidden[:, width - t - 1:width - 1]  # [N,T,D]
  logits = transformer.unembed(small_params, h, config=small_config)
  s = np.asarray(jnp.argmax(logits, -1)).astype(np.int32)
  hid = np.asarray(h, np.float32).reshape(-1, h.shape[-1])
  lgt = np.asarray(logits, np.float32).reshape(-1, logits.shape[-1])
  branch_llm = np.stack([answer[:, j:j + horizon] for j in range(t)], axis=1)  # [N,T,h]
  branch_slm = branch_llm.copy()
  rows, cols = np.nonzero(s != y)
  if rows.size:
    cont_prompts = [prompts[r] + y[r, :c].tolist() + [int(s[r, c])] for r, c in zip(rows, cols)]
    cont = np.zeros((rows.size, horizon - 1), np.int32)
    if horizon > 1:
      cont = np.asarray(sample(large_params, cont_prompts, config=large_config,
                               rng=jax.random.key(0), max_new_tokens=horizon - 1,
                               temperature=0.0, stop_tokens=()).tokens)
    branch_slm[rows, cols] = np.concatenate([s[rows, cols][:, None], cont], axis=1)
  labels = label_positions(y, s, branch_slm, branch_llm, sync=sync, judge=judge)
  return LabelData(hidden=hid, token=s.reshape(-1), logits=lgt, label=labels.reshape(-1),
                   llm_tokens=y,
                   slm_tokens=s, labels_grid=labels)


# --------------------------------------------------------------------------------------------
# Routed decoding.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class R2RInfo:
  """routed bool [N,T]: token t of row n was produced by the LLM; score f32 [N,T]: σ(router);
  routed_fraction f32 []: routed tokens / emitted tokens (mask)."""

  routed: jax.Array
  score: jax.Array
  routed_fraction: jax.Array


def r2r_sample(small_params: Any, small_config: ModelConfig, large_params: Any,
               large_config: ModelConfig, router_params: dict[str, Any], prompts: Any, *,
               rng: jax.Array, max_new_tokens: int, threshold: float, prompt_mask: Any = None,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               num_samples: int = 1, stop_tokens: Sequence[int] | None = None
               ) -> tuple[Rollout, R2RInfo]:
  """Routed decoding (lossy; evaluation only). Arguments as `sampler.sample`, plus the two
  models, the router and `threshold` τ (route iff σ(score) ≥ τ). Row i uses fold_in(rng, i)
  and step t fold_in(row key, t) for whichever model draws the token, as `sample`: τ = 0
  reproduces `sample(large)`, τ > 1 `sample(small)`, with the same keys.
  """
  if small_config.vocab_size != large_config.vocab_size:
    raise ValueError(f"the SLM and LLM must share a vocabulary: {small_config.vocab_size} vs "
                     f"{large_config.vocab_size}")
  if router_params["feat"]["w"].shape[1] != small_config.dim:
    raise ValueError(f"router built for hidden size {router_params['feat']['w'].shape[1]}, the "
                     f"SLM has dim {small_config.dim}")
  if max_new_tokens < 1 or num_samples < 1 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f"bad settings: max_new_tokens={max_new_tokens}, num_samples={num_samples}, "
                     f"temperature={temperature}, top_k={top_k}, top_p={top_p}")
  width_cap = min(small_config.max_seq_len, large_config.max_seq_len) - max_new_tokens
  tokens, mask = prepare_prompts(prompts, large_config.pad_id, prompt_mask=prompt_mask,
                                 max_width=width_cap)
  if tokens.shape[1] > width_cap:
    raise ValueError(f"prompt bucket {tokens.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                     "a model's max_seq_len")
  if num_samples > 1:
    tokens, mask = np.repeat(tokens, num_samples, axis=0), np.repeat(mask, num_samples, axis=0)
  stops = tuple(int(t) for t in (large_config.eos_ids if stop_tokens is None else stop_tokens))
  return _r2r_generate(small_params, large_params, router_params, jnp.asarray(tokens),
                       jnp.asarray(mask), rng, jnp.asarray(temperature, jnp.float32),
                       jnp.asarray(threshold, jnp.float32), small_config=small_config,
                       large_config=large_config, max_new_tokens=int(max_new_tokens),
                       top_k=int(top_k), top_p=float(top_p), stop_tokens=stops)


@functools.partial(jax.jit, static_argnames=("small_config", "large_config", "max_new_tokens",
                                             "top_k", "top_p", "stop_tokens"))
def _r2r_generate(small_params, large_params, router_params, prompt_tokens, prompt_mask, rng,
                  temperature, threshold, *, small_config, large_config, max_new_tokens, top_k,
                  top_p, stop_tokens):
  n, p = prompt_tokens.shape
  steps = max_new_tokens
  k = logits_size_of(router_params)
  models = []
  for params, config in ((small_params, small_config), (large_params, large_config)):
    # The sampler's layout choice, so each model's logits match `sample`'s bit for bit.
    per_layer = jax.default_backend() == "cpu" and config.attention == "full"
    cache = transformer.init_cache(config, n, p + steps, params["embed"].dtype,
                                   per_layer=per_layer)
    models.append((transformer.split_layers(params) if per_layer else params, config, cache))
  (sp, sc, s_cache), (lp, lc, l_cache) = models
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)

  def prefill(params, config, cache):
    hidden, cache = transformer.forward(params, prompt_tokens, config=config,
                                        segment_ids=prompt_mask, cache=cache, return_hidden=True)
    h = hidden[:, -1:]
    return h[:, 0], transformer.unembed(params, h, config=config)[:, 0], cache

  def step(params, config, cache, last):
    hidden, cache = transformer.forward(params, last, config=config, cache=cache,
                                        segment_ids=jnp.ones_like(last), return_hidden=True)
    return hidden[:, -1], transformer.unembed(params, hidden, config=config)[:, -1], cache

  def choose(carry, s_hidden, s_logits, l_logits):
    t, s_cache, l_cache, tokens, mask, logprobs, entropy, routed, score, done = carry
    keys = jax.vmap(lambda kk: jax.random.fold_in(kk, t))(row_keys)
    scale = jnp.where(greedy, 1.0, temperature)
    pick = lambda logits: choose_tokens(logits.astype(jnp.float32) / scale, keys, greedy=greedy,
                                        top_k=top_k, top_p=top_p)
    s_tok, s_logp, s_ent = pick(s_logits)
    l_tok, l_logp, l_ent = pick(l_logits)
    feats = router_features(small_params, s_hidden, s_tok, s_logits, logits_size=k)
    sc_ = jax.nn.sigmoid(router_logit(router_params, *feats))
    route = sc_ >= threshold
    live = ~done
    token = jnp.where(live, jnp.where(route, l_tok, s_tok), small_config.pad_id)
    put = lambda buf, val: jax.lax.dynamic_update_index_in_dim(buf, val.astype(buf.dtype), t, 1)
    return (t + 1, s_cache, l_cache, put(tokens, token), put(mask, live),
            put(logprobs, jnp.where(live, jnp.where(route, l_logp, s_logp), 0.0)),
            put(entropy, jnp.where(live, jnp.where(route, l_ent, s_ent), 0.0)),
            put(routed, live & route), put(score, jnp.where(live, sc_, 0.0)),
            done | (live & jnp.isin(token, stops)))

  s_h, s_logits, s_cache = prefill(sp, sc, s_cache)
  _, l_logits, l_cache = prefill(lp, lc, l_cache)
  zeros = lambda dtype: jnp.zeros((n, steps), dtype)
  carry = (jnp.zeros((), jnp.int32), s_cache, l_cache,
           jnp.full((n, steps), small_config.pad_id, jnp.int32), zeros(jnp.int32),
           zeros(jnp.float32), zeros(jnp.float32), zeros(bool), zeros(jnp.float32),
           jnp.zeros((n,), bool))
  carry = choose(carry, s_h, s_logits, l_logits)

  def cond(carry):
    return (carry[0] < steps) & ~jnp.all(carry[-1])

  def body(carry):
    t, s_cache, l_cache, tokens = carry[:4]
    last = jax.lax.dynamic_index_in_dim(tokens, t - 1, axis=1)  # [N,1]
    # Both models consume every emitted token: their caches stay in sync.
    s_h, s_logits, s_cache = step(sp, sc, s_cache, last)
    _, l_logits, l_cache = step(lp, lc, l_cache, last)
    return choose((t, s_cache, l_cache) + tuple(carry[3:]), s_h, s_logits, l_logits)

  _, _, _, tokens, mask, logprobs, entropy, routed, score, done = jax.lax.while_loop(
      cond, body, carry)
  rollout = Rollout(tokens=tokens, mask=mask, logprobs=logprobs, entropy=entropy,
                    prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, truncated=~done)
  frac = routed.sum() / jnp.maximum(mask.sum(), 1)
  return rollout, R2RInfo(routed=routed, score=score, routed_fraction=frac.astype(jnp.float32))
