"""DEL: context-aware dynamic exit layer for self-speculative decoding (spec §6).

    rollout, info = del_sample(params, prompts, config=cfg, rng=key, max_new_tokens=64,
                               temperature=1.0, exit_layers=(1, 2, 3), max_draft=8)

The draft is the target's first E layers + final norm + unembedding; the full model verifies
with the standard accept/reject rule (spec §2), so the output law is exactly the target's
(greedy: token for token). E and the draft length come from statistics of "shadow tokens":
after each round, every candidate exit layer ℓ is unembedded at the round's positions and its
greedy token compared with the full model's greedy token.

Pure rules (batched over any leading axes; C = number of candidate exit layers):

  stats   M_ℓ ← ω·M_ℓ + matches,  U_ℓ ← ω·U_ℓ + mismatches,  C⁺_ℓ, C⁻_ℓ alike with the
          shadow confidences (softmax prob of the shadow token) summed over matches/mismatches.
  α_ℓ     = M_ℓ / (M_ℓ + U_ℓ)   (no statistics yet: only d = 0 is allowed for ℓ)
  TPL     (E, d) = n_d / ((L − E) + (d + 1)·E),   n_0 = 1, n_d = 1 + α_E·n_{d−1}
          (= (1 − α^{d+1}) / (1 − α) / (d·E + L)), d ∈ {0..d_max−1}; argmax, first in
          row-major order (lower E, then lower d).
  stop    while drafting at E, stop after a drafted token whose probability is below
          τ_E = (C⁺_E/M_E + C⁻_E/U_E) / 2 (never when M_E or U_E is 0), at a stop token, or
          after d_max tokens. The TPL d only picks E and enables the clip below.
  clip    if d > 0, positions after the first shadow mismatch at the current E are dropped
          from the round's counts (the mismatch position is kept).

Read in `self_speculation/DEL.py` and `DEL_speculation_generator.py` of the public fork
`359171110/DEL` (the original `hoenza/DEL` is not reachable here): first round E = first
candidate, one drafted token, no confidence rule, and the last 32 prompt positions (of all but
the last prompt token) join the first update.

Batching: statistics are per row; the exit layer is one per round for the whole batch (chosen
from the statistics summed over live rows), so the draft is one `lax.switch` branch; each row
has its own draft length (confidence rule) and its own accepted count. The KV cache has a
per-row index (`init_cache(row_index=True)`): a round writes K+1 = max_draft+1 slots at each
row's index and the row keeps 1 + n of them by setting its index there (rejected slots are
masked and later overwritten); the cache holds (P−1) + T + 2·(K+1) slots. The layer subsets
run through `transformer.forward` on a sub-model that shares the per-layer cache arrays (see
`run_layer_subset`), so the draft is the target's own code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from tokenrl.models import layers as model_layers
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.models.hooks import Hooks
from tokenrl.rollout import speculative as spec_lib
from tokenrl.rollout.sampler import place_rows, prepare_rows
from tokenrl.rollout.sampling import filter_top_k, filter_top_p, log_probs_and_entropy
from tokenrl.types import Rollout


# --------------------------------------------------------------------------------------------
# Pure DEL rules.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExitStats:
  """Recency-weighted shadow-token statistics, f32 [..., C] over the candidate exit layers.

  matches M, mismatches U: (weighted) counts of shadow tokens equal / not equal to the full
  model's greedy token; conf_matches C⁺, conf_mismatches C⁻: their summed confidences.
  """

  matches: jax.Array
  mismatches: jax.Array
  conf_matches: jax.Array
  conf_mismatches: jax.Array


def init_exit_stats(batch_shape: Sequence[int], num_candidates: int) -> ExitStats:
  """All-zero statistics [*batch_shape, C] (no layer has statistics yet)."""
  z = jnp.zeros((*batch_shape, num_candidates), jnp.float32)
  return ExitStats(z, z, z, z)


def round_counts(match: jax.Array, confidence: jax.Array, valid: jax.Array) -> ExitStats:
  """One round's (unweighted) counts from shadow tokens.

  match bool [..., S, C] (shadow token == full greedy token at position s, candidate c);
  confidence f32 [..., S, C] (softmax prob of the shadow token); valid bool [..., S]
  (positions that count). Returns ExitStats [..., C].
  """
  v = valid[..., None].astype(jnp.float32)
  m = match.astype(jnp.float32) * v
  u = (1.0 - match.astype(jnp.float32)) * v
  conf = confidence.astype(jnp.float32)
  return ExitStats(m.sum(-2), u.sum(-2), (m * conf).sum(-2), (u * conf).sum(-2))


def update_exit_stats(stats: ExitStats, counts: ExitStats, *, omega: float) -> ExitStats:
  """x ← ω·x + new for each of M, U, C⁺, C⁻ (ω = 0.95 in the DEL generator)."""
  return jax.tree.map(lambda old, new: omega * old + new, stats, counts)


def acceptance_rates(stats: ExitStats) -> jax.Array:
  """α [..., C] = M / (M + U); -inf where a layer has no statistics (M + U = 0)."""
  total = stats.matches + stats.mismatches
  return jnp.where(total > 0, stats.matches / jnp.where(total > 0, total, 1.0), -jnp.inf)


def confidence_thresholds(stats: ExitStats) -> jax.Array:
  """τ [..., C] = (C⁺/M + C⁻/U) / 2; -inf (never stop early) where M or U is 0.

  The reference divides 0/0 into NaN there, and `conf < NaN` is False: the same outcome.
  """
  ok = (stats.matches > 0) & (stats.mismatches > 0)
  tau_m = stats.conf_matches / jnp.where(ok, stats.matches, 1.0)
  tau_u = stats.conf_mismatches / jnp.where(ok, stats.mismatches, 1.0)
  return jnp.where(ok, 0.5 * (tau_m + tau_u), -jnp.inf)


def tokens_per_layer(alpha: jax.Array, exit_layers: Sequence[int], num_layers: int, d_max: int,
                     d_min: int = 0) -> jax.Array:
  """TPL table [..., C, d_max]: expected tokens per loaded layer of (exit layer E_c, length d).

  alpha [..., C]: acceptance rates (-inf = no statistics: only d = 0 stays finite, where TPL is
  1/L for every layer). exit_layers: E_c in layers (1-based count of layers run by the draft).
  d < d_min is masked to -inf.
  """
  e = jnp.asarray(exit_layers, jnp.float32)
  known = jnp.isfinite(alpha)
  a = jnp.where(known, alpha, 0.0)
  # n_d = 1 + α·n_{d−1}: finite at α = 1, unlike the closed form.
  n = [jnp.ones_like(a)]
  for _ in range(1, d_max):
    n.append(1.0 + a * n[-1])
  num = jnp.stack(n, axis=-1)  # [..., C, d_max]
  d = jnp.arange(d_max, dtype=jnp.float32)
  cost = (num_layers - e)[:, None] + (d[None, :] + 1.0) * e[:, None]  # [C, d_max] layers
  tpl = num / cost
  tpl = jnp.where(known[..., None] | (d == 0), tpl, -jnp.inf)
  return jnp.where(d >= d_min, tpl, -jnp.inf)


def select_exit(alpha: jax.Array, exit_layers: Sequence[int], num_layers: int, d_max: int,
                d_min: int = 0) -> tuple[jax.Array, jax.Array]:
  """(candidate index int32 [...], d int32 [...]) = argmax TPL, first maximum in row-major order."""
  tpl = tokens_per_layer(alpha, exit_layers, num_layers, d_max, d_min)
  flat = tpl.reshape(*tpl.shape[:-2], -1)
  best = jnp.argmax(flat, axis=-1).astype(jnp.int32)
  return best // d_max, best % d_max


def clip_after_first_mismatch(match: jax.Array, valid: jax.Array, exit_index: jax.Array,
                              enabled: jax.Array) -> jax.Array:
  """valid [..., S] with the positions after the first valid mismatch at the current exit
  layer removed (the mismatch itself kept), when `enabled` (d > 0); match bool [..., S, C],
  exit_index int [...] or [] (the candidate index of E)."""
  at_exit = jnp.take_along_axis(
      match, jnp.broadcast_to(jnp.asarray(exit_index)[..., None, None], (*match.shape[:-1], 1)),
      axis=-1)[..., 0]
  bad = valid & ~at_exit
  s = match.shape[-2]
  first = jnp.where(bad.any(-1), jnp.argmax(bad, axis=-1), s)
  keep = jnp.arange(s) <= first[..., None]
  return jnp.where(enabled, valid & keep, valid)


def draft_continues(confidence: jax.Array, tau: jax.Array) -> jax.Array:
  """bool: keep drafting after a token of probability `confidence` at threshold τ (the DEL
  stop rule stops when confidence < τ)."""
  return ~(confidence < tau)


# --------------------------------------------------------------------------------------------
# Shared machinery: a layer subset of the target; the §2 rule is speculative.py's.


def sub_config(config: ModelConfig, layer_ids: Sequence[int]) -> ModelConfig:
  """The config of a model made of layers `layer_ids` (in that order) of `config`."""
  local = tuple(config.local_layers[i] for i in layer_ids) if config.local_layers else ()
  return config.replace(num_layers=len(layer_ids), local_layers=local)


def run_layer_subset(params: Any, tokens: jax.Array, *, config: ModelConfig,
                     cache: dict[str, Any], layer_ids: Sequence[int],
                     segment_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
  """`transformer.forward` through layers `layer_ids` only (static, increasing), then the
  final norm and the unembedding: logits f32 [N,S,V] and the cache.

  params: `transformer.split_layers` params (layers a tuple); cache: a per-layer cache
  (`init_cache(per_layer=True)`). The sub-model reads and writes exactly those layers' cache
  arrays; the others pass through untouched. Positions continue after the cache's last one, and
  "pos"/"index" advance as for the full model.
  """
  ids = tuple(int(i) for i in layer_ids)
  sub = {**params, "layers": tuple(params["layers"][i] for i in ids)}
  sub_cache = {**cache, "k": tuple(cache["k"][i] for i in ids),
               "v": tuple(cache["v"][i] for i in ids)}
  logits, new = transformer.forward(sub, tokens, config=sub_config(config, ids), cache=sub_cache,
                                    segment_ids=segment_ids)
  k, v = list(cache["k"]), list(cache["v"])
  for j, i in enumerate(ids):
    k[i], v[i] = new["k"][j], new["v"][j]
  return logits, {**new, "k": tuple(k), "v": tuple(v)}


def processed_logits(logits: jax.Array, temperature: jax.Array, greedy: jax.Array, *, top_k: int,
                     top_p: float) -> jax.Array:
  """The sampling distribution as logits [..., V] (f32): temperature → top-k → top-p, or the
  raw logits when greedy (as `choose_tokens`: the point mass carries no information)."""
  shape = logits.shape
  flat = logits.reshape(-1, shape[-1]).astype(jnp.float32)
  scaled = flat / jnp.where(greedy, 1.0, temperature)
  filtered = filter_top_p(filter_top_k(scaled, top_k), top_p)
  return jnp.where(greedy, scaled, filtered).reshape(shape)


def speculative_accept(p: jax.Array, q: jax.Array, draft_tokens: jax.Array, draft_len: jax.Array,
                       keys: jax.Array, greedy: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`speculative.speculative_accept` (spec §2) with a traced `greedy` (temperature <= 0 is a
  traced value here, as in `sampler.sample`): both rules run, the flag picks one.

  p f32 [N,K+1,V] target probs; q f32 [N,K,V] draft probs; draft_tokens int [N,K];
  draft_len int [N]; keys [N] row keys. Returns (n int32 [N] accepted, y int32 [N]).
  """
  n_g, y_g = spec_lib.speculative_accept(p, q, draft_tokens, draft_len, keys, greedy=True)
  n_s, y_s = spec_lib.speculative_accept(p, q, draft_tokens, draft_len, keys, greedy=False)
  return jnp.where(greedy, n_g, n_s), jnp.where(greedy, y_g, y_s)


def shadow_tokens(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(greedy token int32 [...], its softmax probability f32 [...]) of raw logits [..., V]."""
  return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
          jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1))


# --------------------------------------------------------------------------------------------
# The DEL decode loop.


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DELInfo:
  """Diagnostics of `del_sample` (R ≤ T rounds).

  exit_layer int32 [T]  E used in round r (-1 after the last round).
  num_rounds int32 []   rounds run.
  drafted    int32 [N]  draft tokens proposed per row; accepted int32 [N]: of them accepted.
  stats      ExitStats [N,C]  final per-row statistics.
  """

  exit_layer: jax.Array
  num_rounds: jax.Array
  drafted: jax.Array
  accepted: jax.Array
  stats: ExitStats


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DELState:
  """Carry of the round loop (N rows, T = max_new_tokens, K = max_draft, C candidates)."""

  round: jax.Array  # int32 []
  cache: dict[str, Any]  # per-layer KV cache; `last` is not in it yet
  last: jax.Array  # int32 [N] last emitted token (or the last prompt token)
  out_len: jax.Array  # int32 [N] tokens emitted so far
  tokens: jax.Array  # int32 [N,T+K+1] (the extra columns absorb the masked writes)
  mask: jax.Array  # int32 [N,T+K+1]
  logprobs: jax.Array  # f32 [N,T+K+1]
  entropy: jax.Array  # f32 [N,T+K+1]
  stopped: jax.Array  # bool [N] emitted a stop token
  stats: ExitStats  # [N,C]
  pending: ExitStats  # [N,C] prompt counts, added by the first update then zero
  exit_index: jax.Array  # int32 [] candidate index of this round's E
  tpl_d: jax.Array  # int32 [] the TPL d that chose it (enables the clip when > 0)
  exit_hist: jax.Array  # int32 [T]
  drafted: jax.Array  # int32 [N]
  accepted: jax.Array  # int32 [N]


def del_sample(params: Any, prompts: Any, *, config: ModelConfig, rng: jax.Array,
               max_new_tokens: int, prompt_mask: Any = None, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
               stop_tokens: Sequence[int] | None = None,
               exit_layers: Sequence[int] | None = None, max_draft: int = 18, min_draft: int = 0,
               omega: float = 0.95, prompt_positions: int = 32,
               cache_dtype: Any = None,
               prompt_sharding: jax.sharding.NamedSharding | None = None,
               ) -> tuple[Rollout, DELInfo]:
  """Sample with DEL self-speculation; the output law is the target's (lossless).

  Args (as `sampler.sample`, plus):
    exit_layers: candidate draft depths E (layers run by the draft), increasing, in
      [1, L−1]; default every layer but the last (the reference). Each candidate costs one
      truncated forward over the round's K+1 positions for its shadow tokens.
    max_draft: d_max, the most tokens drafted per round and the TPL table width (18).
    min_draft: d_min, TPL entries with d < d_min are masked (0).
    omega: recency weight ω of the statistics (0.95).
    prompt_positions: how many prompt positions seed the first update (32).

  Returns:
    (Rollout [N,T] with the target's processed log-probs of the emitted tokens, DELInfo).
  """
  if config.attention != "full":
    raise ValueError(f"del_sample needs config.attention='full' (per-layer cache), got "
                     f"{config.attention!r}")
  num_layers = config.num_layers
  if exit_layers is None:
    exit_layers = tuple(range(1, num_layers))
  exit_layers = tuple(int(e) for e in exit_layers)
  if not exit_layers or any(not 1 <= e < num_layers for e in exit_layers) or \
      list(exit_layers) != sorted(set(exit_layers)):
    raise ValueError(f"exit_layers must be increasing layer counts in [1, {num_layers - 1}], "
                     f"got {exit_layers}")
  if max_draft < 1 or not 0 <= min_draft < max_draft:
    raise ValueError(f"need max_draft >= 1 and 0 <= min_draft < max_draft, got {max_draft}, "
                     f"{min_draft}")
  tokens, mask, stops, dtype = prepare_rows(
      params, prompts, config=config, max_new_tokens=max_new_tokens, prompt_mask=prompt_mask,
      temperature=temperature, top_k=top_k, top_p=top_p, num_samples=num_samples,
      stop_tokens=stop_tokens, cache_dtype=cache_dtype)
  tokens, mask, rng, temp = place_rows(prompt_sharding, tokens, mask, rng, temperature)
  return _del_generate(params, tokens, mask, rng, temp, config=config,
                       max_new_tokens=int(max_new_tokens), top_k=int(top_k), top_p=float(top_p),
                       stop_tokens=stops, exit_layers=exit_layers, max_draft=int(max_draft),
                       min_draft=int(min_draft), omega=float(omega),
                       prompt_positions=int(prompt_positions), cache_dtype=dtype)


def _prompt_counts(params, prompt_tokens, prompt_mask, *, config, exit_layers, ctx):
  """ExitStats [N,C] of the last `ctx` positions before the last prompt token: shadow tokens of
  every candidate layer (final norm + unembedding of its residual) vs the full greedy token."""
  n, p = prompt_tokens.shape
  c = len(exit_layers)
  lo = max(0, p - 1 - ctx)
  if ctx <= 0 or lo >= p - 1:
    return init_exit_stats((n,), c)
  out = transformer.run_with_hooks(params, prompt_tokens, config=config,
                                   hooks=Hooks(record_residuals=True), segment_ids=prompt_mask)
  res = out.residuals[:, :, lo:p - 1]  # [L+1,N,S,D]: S = the counted positions
  norm = lambda x: model_layers.rms_norm(x, params["final_norm"], eps=config.norm_eps,
                                         plus_one=config.norm_plus_one)
  full, _ = shadow_tokens(transformer.unembed(params, norm(res[-1]), config=config))  # [N,S]
  shadow = [shadow_tokens(transformer.unembed(params, norm(res[e]), config=config))
            for e in exit_layers]
  tok = jnp.stack([s[0] for s in shadow], axis=-1)  # [N,S,C]
  conf = jnp.stack([s[1] for s in shadow], axis=-1)
  return round_counts(tok == full[..., None], conf, prompt_mask[:, lo:p - 1] != 0)


@functools.partial(jax.jit, static_argnames=(
    "config", "max_new_tokens", "top_k", "top_p", "stop_tokens", "exit_layers", "max_draft",
    "min_draft", "omega", "prompt_positions", "cache_dtype"))
def _del_generate(params, prompt_tokens, prompt_mask, rng, temperature, *, config, max_new_tokens,
                  top_k, top_p, stop_tokens, exit_layers, max_draft, min_draft, omega,
                  prompt_positions, cache_dtype):
  n, p = prompt_tokens.shape
  steps, k, c = max_new_tokens, max_draft, len(exit_layers)
  num_layers = config.num_layers
  greedy = temperature <= 0
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  pending = _prompt_counts(params, prompt_tokens, prompt_mask, config=config,
                           exit_layers=exit_layers, ctx=prompt_positions)
  # Row n's index is (P−1) + its kept tokens ≤ (P−1) + T − 1 + K + 1 while it lives (a stop
  # token may end it K slots ahead of its output), and every round writes K+1 slots from it.
  cache = transformer.init_cache(config, n, (p - 1) + steps + 2 * (k + 1), cache_dtype,
                                 per_layer=True, row_index=True)
  params = transformer.split_layers(params)
  # Prefill all but the last prompt token: round 1 drafts from it, as every round drafts
  # from the last emitted token (not yet in the cache).
  # Positions given explicitly: derived from the (constant) empty cache, XLA would constant-fold
  # a max over an [N,C] array (seconds at N = 1e5).
  _, cache = transformer.forward(params, prompt_tokens[:, :-1], config=config, cache=cache,
                                 segment_ids=prompt_mask[:, :-1],
                                 positions=transformer.positions_from_segments(prompt_mask[:, :-1]))
  dist = lambda logits: processed_logits(logits, temperature, greedy, top_k=top_k, top_p=top_p)

  def draft_branch(e):
    ids = tuple(range(e))

    def run(cache, last, limit, tau, first, keys):
      def cond(carry):
        j, _, _, _, _, drafting, _ = carry
        return (j < k) & jnp.any(drafting)

      def body(carry):
        j, tok, cache, drafts, q, drafting, dlen = carry
        logits, cache = run_layer_subset(params, tok[:, None], config=config, cache=cache,
                                         layer_ids=ids)
        d = dist(logits[:, -1])  # [N,V]
        step_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, j))(keys)
        x = jnp.where(greedy, jnp.argmax(d, axis=-1),
                      jax.vmap(jax.random.categorical)(step_keys, d)).astype(jnp.int32)
        probs = jax.nn.softmax(d, axis=-1)
        conf = jnp.take_along_axis(probs, x[:, None], axis=-1)[:, 0]
        drafts = jax.lax.dynamic_update_index_in_dim(drafts, x, j, axis=1)
        q = jax.lax.dynamic_update_index_in_dim(q, probs, j, axis=1)
        dlen = dlen + drafting
        # The confidence rule is off in the first round (statistics are being seeded).
        keep = ~jnp.isin(x, stops) & (first | draft_continues(conf, tau)) & (dlen < limit)
        return j + 1, x, cache, drafts, q, drafting & keep, dlen

      init = (jnp.zeros((), jnp.int32), last, cache,
              jnp.full((n, k), config.pad_id, jnp.int32),
              jnp.zeros((n, k, config.vocab_size), jnp.float32), limit > 0,
              jnp.zeros((n,), jnp.int32))
      _, _, cache, drafts, q, _, dlen = jax.lax.while_loop(cond, body, init)
      return cache, drafts, q, dlen

    return run

  branches = [draft_branch(e) for e in exit_layers]

  def cond(s: DELState) -> jax.Array:
    return (s.round < steps) & jnp.any(~s.stopped & (s.out_len < steps))

  def body(s: DELState) -> DELState:
    live = ~s.stopped & (s.out_len < steps)
    first = s.round == 0
    keys = jax.vmap(lambda kk: jax.random.fold_in(kk, s.round))(row_keys)
    draft_keys = jax.vmap(lambda kk: jax.random.fold_in(kk, 2))(keys)
    # Draft at most remaining − 1 tokens so the n + 1 emitted ones fit in T; 1 in round 1.
    limit = jnp.where(live, jnp.minimum(jnp.where(first, 1, k), steps - s.out_len - 1), 0)
    tau = confidence_thresholds(s.stats)[:, s.exit_index]  # [N] per-row stop threshold
    draft_cache, drafts, q, dlen = jax.lax.switch(
        s.exit_index, branches, s.cache, s.last, limit, tau, first, draft_keys)
    # Verify [last, x̃_1..x̃_K] with the full model at the round's start (the draft's k/v
    # writes at these slots are overwritten; its pos/index are discarded).
    start = {**draft_cache, "pos": s.cache["pos"], "index": s.cache["index"]}
    window = jnp.concatenate([s.last[:, None], drafts], axis=1)  # [N,K+1]
    logits, cache = transformer.forward(params, window, config=config, cache=start,
                                        segment_ids=jnp.ones_like(window))
    d_p = dist(logits)  # [N,K+1,V]
    logp_all, ent_all = log_probs_and_entropy(d_p.reshape(-1, d_p.shape[-1]))
    logp_all, ent_all = logp_all.reshape(d_p.shape), ent_all.reshape(d_p.shape[:-1])
    n_acc, y = speculative_accept(jnp.exp(logp_all), q, drafts, dlen, keys, greedy)
    # Emitted e_0..e_n = x̃_1..x̃_n, y; cut after the first stop token.
    j = jnp.arange(k + 1)
    emit = jnp.where(j[None] < n_acc[:, None],
                     jnp.concatenate([drafts, jnp.full((n, 1), config.pad_id, jnp.int32)], 1),
                     y[:, None])
    is_stop = jnp.isin(emit, stops) & (j[None] <= n_acc[:, None])
    first_stop = jnp.where(is_stop.any(1), jnp.argmax(is_stop, axis=1), k + 1)
    n_eff = jnp.minimum(n_acc, first_stop)
    valid = live[:, None] & (j[None] <= n_eff[:, None])  # [N,K+1]
    logp = jnp.take_along_axis(logp_all, emit[..., None], axis=-1)[..., 0]
    cols = jnp.where(valid, s.out_len[:, None] + j[None], steps + k)  # masked → dump column
    rows = jnp.arange(n)[:, None]
    put = lambda buf, val: buf.at[rows, cols].set(jnp.where(valid, val, 0).astype(buf.dtype))
    tokens = s.tokens.at[rows, cols].set(jnp.where(valid, emit, config.pad_id))
    # Each live row keeps [last, x̃_1..x̃_n]: its index moves past them; the rejected slots
    # beyond are masked and overwritten next round. y is not cached yet.
    cache = {**cache, "index": jnp.where(live, s.cache["index"] + 1 + n_acc, s.cache["index"])}

    # Shadow tokens of every candidate at the round's positions [last, x̃_1..x̃_dlen].
    full_tok, _ = shadow_tokens(logits)
    shadows = [shadow_tokens(run_layer_subset(params, window, config=config, cache=start,
                                              layer_ids=tuple(range(e)),
                                              segment_ids=jnp.ones_like(window))[0])
               for e in exit_layers]
    match = jnp.stack([t for t, _ in shadows], -1) == full_tok[..., None]  # [N,K+1,C]
    conf = jnp.stack([cf for _, cf in shadows], -1)
    counted = live[:, None] & (j[None] <= dlen[:, None])
    counted = clip_after_first_mismatch(match, counted, s.exit_index, s.tpl_d > 0)
    counts = round_counts(match, conf, counted)
    counts = jax.tree.map(lambda a, b: a + b, counts, s.pending)
    new_stats = update_exit_stats(s.stats, counts, omega=omega)
    stats = jax.tree.map(lambda new, old: jnp.where(live[:, None], new, old), new_stats, s.stats)
    # One E for the batch: from the statistics summed over the live rows.
    summed = jax.tree.map(lambda x: jnp.sum(jnp.where(live[:, None], x, 0.0), axis=0), stats)
    exit_index, tpl_d = select_exit(acceptance_rates(summed), exit_layers, num_layers, k,
                                    min_draft)
    emitted = jnp.where(live, n_eff + 1, 0)
    return DELState(
        round=s.round + 1, cache=cache, last=jnp.where(live, y, s.last),
        out_len=s.out_len + emitted, tokens=tokens, mask=put(s.mask, jnp.ones_like(emit)),
        logprobs=put(s.logprobs, logp), entropy=put(s.entropy, ent_all),
        stopped=s.stopped | (live & is_stop.any(1) & (first_stop <= n_acc)),
        stats=stats, pending=init_exit_stats((n,), c), exit_index=exit_index, tpl_d=tpl_d,
        exit_hist=s.exit_hist.at[s.round].set(jnp.asarray(exit_layers, jnp.int32)[s.exit_index]),
        drafted=s.drafted + jnp.where(live, dlen, 0),
        accepted=s.accepted + jnp.where(live, jnp.minimum(n_acc, dlen), 0))

  width = steps + k + 1
  state = DELState(
      round=jnp.zeros((), jnp.int32), cache=cache, last=prompt_tokens[:, -1],
      out_len=jnp.zeros((n,), jnp.int32), tokens=jnp.full((n, width), config.pad_id, jnp.int32),
      mask=jnp.zeros((n, width), jnp.int32), logprobs=jnp.zeros((n, width), jnp.float32),
      entropy=jnp.zeros((n, width), jnp.float32), stopped=jnp.zeros((n,), bool),
      stats=init_exit_stats((n,), c), pending=pending, exit_index=jnp.zeros((), jnp.int32),
      tpl_d=jnp.ones((), jnp.int32), exit_hist=jnp.full((steps,), -1, jnp.int32),
      drafted=jnp.zeros((n,), jnp.int32), accepted=jnp.zeros((n,), jnp.int32))
  s = jax.lax.while_loop(cond, body, state)
  rollout = Rollout(tokens=s.tokens[:, :steps], mask=s.mask[:, :steps],
                    logprobs=s.logprobs[:, :steps], entropy=s.entropy[:, :steps],
                    prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, truncated=~s.stopped)
  info = DELInfo(exit_layer=s.exit_hist, num_rounds=s.round, drafted=s.drafted,
                 accepted=s.accepted, stats=s.stats)
  return rollout, info
