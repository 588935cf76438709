"""attention='tokenselect' in the model and the sampler.

* Full coverage (n_init + top_k + n_local ≥ tokens): chunked prefill and decode equal full
  attention (to float summation order), left padding included, and greedy sampling is unchanged.
* Cache disabled: each layer's selection equals the kernel reference selection.
* Selection Cache: the cached top-k is reused exactly when cos(q̄, anchor) ≥ θ (queries built with
  a known cosine), and recomputed below θ.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.kernels import tokenselect as K
from tokenrl.models import tokenselect as TS
from tokenrl.models import transformer as T
from tokenrl.models.config import ModelConfig, TokenSelectConfig
from tokenrl.rollout import sample

CFG = models.tiny("qwen2", vocab_size=64, dim=64, num_heads=4, num_kv_heads=2, pad_id=0)
PARAMS = T.init_params(CFG, jax.random.key(0))
N, P, C = 2, 40, 48  # rows, prompt tokens, cache slots
PAD = 5  # row 0 is left-padded by 5


def _ts(**kw):
  return CFG.replace(attention="tokenselect", tokenselect=TokenSelectConfig(**kw))


@functools.partial(jax.jit, static_argnames=("config",))
def _run(params, tokens, seg, cache, *, config):
  """Prefill on tokens [N,P] then 2 decode steps; returns (hidden of every call, cache)."""
  hidden, cache = T.forward(params, tokens, config=config, segment_ids=seg, cache=cache,
                            return_hidden=True)
  outs = [hidden]
  for i in range(2):
    h, cache = T.forward(params, tokens[:, i:i + 1], config=config, cache=cache,
                         segment_ids=jnp.ones((N, 1), jnp.int32), return_hidden=True)
    outs.append(h)
  return outs, cache


def _forward(config):
  tokens = jax.random.randint(jax.random.key(1), (N, P), 3, 64).at[0, :PAD].set(0)
  seg = (jnp.arange(P)[None] >= jnp.array([[PAD], [0]])).astype(jnp.int32)
  return _run(PARAMS, tokens, seg, T.init_cache(config, N, C), config=config)


def test_defaults_and_validation():
  assert ModelConfig.__dataclass_fields__["attention"].default == "full"
  ts = TokenSelectConfig()
  assert (ts.top_k, ts.n_init, ts.n_local, ts.chunk_size, ts.threshold, ts.cache) == (
      2048, 128, 512, 512, 0.9, True)
  assert ts.k_total == 2688 and hash(CFG) == hash(CFG.replace())
  with pytest.raises(ValueError, match="attention must be"):
    CFG.replace(attention="sparse")
  with pytest.raises(ValueError, match="gqa"):
    TokenSelectConfig(gqa="x")
  with pytest.raises(ValueError, match="top_k"):
    TokenSelectConfig(top_k=0)
  with pytest.raises(ValueError, match="sliding-window"):
    models.tiny("gemma3").replace(attention="tokenselect")
  with pytest.raises(ValueError, match="stacked"):
    T.init_cache(_ts(top_k=4), 1, 8, per_layer=True)
  assert "ts" not in T.init_cache(CFG, 1, 8)


def test_full_coverage_equals_full_attention():
  full, _ = _forward(CFG)
  # T = 4 + 30 + 10 = 44 ≥ every row's length (≤ 44) but < C = 48: selection runs, covers all.
  # chunk 16: the 40-token prefill runs as 8 + 16 + 16.
  sel, cache = _forward(_ts(top_k=30, n_init=4, n_local=10, chunk_size=16))
  np.testing.assert_allclose(sel[0][0, PAD:], full[0][0, PAD:], atol=2e-5)
  np.testing.assert_allclose(sel[0][1], full[0][1], atol=2e-5)
  for a, b in zip(sel[1:], full[1:]):
    np.testing.assert_allclose(a, b, atol=2e-5)
  assert int(cache["ts"]["calls"].sum()) == 0  # every step was a full fallback
  # A real selection (T = 16 < 44 tokens) changes the outputs and counts its selections.
  small, cache = _forward(_ts(top_k=6, n_init=2, n_local=8, chunk_size=16, cache=False))
  assert np.abs(np.asarray(small[-1]) - np.asarray(full[-1])).max() > 1e-3
  assert int(cache["ts"]["hits"].sum()) == 0 and int(cache["ts"]["calls"].sum()) > 0


def _layer_inputs(seed, n=3, s=4, c=96, q_heads=4, kv_heads=2, h=16):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((n, s, q_heads, h)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((n, c, kv_heads, h)), jnp.float32)
  first = np.array([0, 7, 30])
  kpos = np.full((n, c), -1, np.int32)
  for r in range(n):
    kpos[r, first[r]:] = np.arange(c - first[r])
  return q, k, jnp.asarray(kpos), jnp.asarray(first)


def _state(config, n, anchor=None, topk=None, has=False):
  st = jax.tree.map(lambda a: a[0], TS.init_state(config, n))
  if anchor is not None:
    st["anchor"] = anchor
  if topk is not None:
    st["topk"] = topk
  st["has"] = jnp.full((n,), has)
  return st


def test_selection_without_cache_equals_reference():
  config = _ts(top_k=12, n_init=3, n_local=5, cache=False)
  ts = config.tokenselect
  for seed in range(3):
    q, k, kpos, first = _layer_inputs(seed)
    valid_q = jnp.ones(q.shape[:2], bool)
    slots, valid, st = TS.select(q, q, valid_q, k, kpos, 96, _state(config, 3, has=True),
                                 config=config)
    want, want_valid = K.tokenselect_reference(q.mean(axis=1), k, first, jnp.full(3, 96),
                                               top_k=ts.top_k, n_init=ts.n_init,
                                               n_local=ts.n_local)
    np.testing.assert_array_equal(slots, want)
    np.testing.assert_array_equal(valid, want_valid)
    assert int(st["hits"]) == 0 and int(st["calls"]) == 3


def _with_cosine(a, cos, rng):
  """A vector b with cos(a, b) = cos exactly (up to f32 rounding)."""
  a = a / np.linalg.norm(a)
  r = rng.standard_normal(a.shape)
  r = r - (r @ a) * a
  r = r / np.linalg.norm(r)
  return 3.0 * (cos * a + np.sqrt(1 - cos**2) * r)


@pytest.mark.parametrize("cos, hit", [(0.95, True), (0.901, True), (0.899, False), (0.5, False)])
def test_selection_cache_reuse_follows_threshold(cos, hit):
  config = _ts(top_k=12, n_init=3, n_local=5, threshold=0.9)
  rng = np.random.default_rng(7)
  q, k, kpos, first = _layer_inputs(1, s=1)
  n, _, qh, h = q.shape
  anchor = rng.standard_normal((n, qh * h))
  # The pre-RoPE fingerprint (q_pre) has the chosen cosine with the anchor; row 2 is always far.
  cosines = [cos, cos, 0.1]
  q_pre = np.stack([_with_cosine(anchor[r], cosines[r], rng) for r in range(n)])
  q_pre = jnp.asarray(q_pre.reshape(n, 1, qh, h), jnp.float32)
  cached = jnp.asarray(np.sort(rng.choice(np.arange(40, 80), (n, 12), replace=True), axis=1)
                       .astype(np.int32))
  state = _state(config, n, jnp.asarray(anchor, jnp.float32), cached, has=True)
  slots, valid, st = TS.select(q, q_pre, jnp.ones((n, 1), bool), k, kpos, 96, state,
                               config=config)
  fresh, _ = K.tokenselect_reference(q[:, 0], k, first, jnp.full(n, 96), top_k=12, n_init=3,
                                     n_local=5)
  for r in range(n):
    reuse = hit and r < 2
    want_topk = cached[r] if reuse else fresh[r, 3:15]
    np.testing.assert_array_equal(slots[r, 3:15], want_topk)
    # The windows follow the current length either way.
    np.testing.assert_array_equal(slots[r, :3], first[r] + np.arange(3))
    np.testing.assert_array_equal(slots[r, 15:], 96 - 5 + np.arange(5))
    want_anchor = anchor[r] if reuse else np.asarray(q_pre[r]).reshape(-1)
    np.testing.assert_allclose(st["anchor"][r], want_anchor, rtol=1e-6)
  assert int(st["hits"]) == (2 if hit else 0) and int(st["calls"]) == 3
  # Without a cached selection (has=False) nothing is reused whatever the cosine.
  state["has"] = jnp.zeros((n,), bool)
  _, _, st = TS.select(q, q_pre, jnp.ones((n, 1), bool), k, kpos, 96, state, config=config)
  assert int(st["hits"]) == 0


@pytest.mark.slow  # two sampler compiles, ~15-35 s
def test_sampler_greedy_full_coverage_matches_full():
  prompts = [[5, 6, 7, 8, 9, 10, 11], list(range(3, 30))]
  kw = dict(rng=jax.random.key(0), max_new_tokens=6, temperature=0.0, stop_tokens=())
  full = sample(PARAMS, prompts, config=CFG, **kw)
  # Prompt bucket 32 + 6 new = 38 slots > T = 36 ≥ 33 tokens: selection runs and covers all.
  ts = sample(PARAMS, prompts, config=_ts(top_k=24, n_init=4, n_local=8, chunk_size=16), **kw)
  np.testing.assert_array_equal(ts.tokens, full.tokens)
  np.testing.assert_allclose(ts.logprobs, full.logprobs, atol=1e-4)
