"""Exact speculative sampling: the pure rule, the SpecDec++ stop rule and the decode engine.

Lossless = the emitted tokens follow the processed target law whatever the draft: checked by
chi-square against laws computed exactly (tables, or the target's teacher-forced conditionals
enumerated over the vocabulary), with >= 1e5 samples per check, vectorised. Greedy speculative
decoding is plain greedy decoding token for token, and K = 0 is `sample` bit for bit.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from tokenrl import models
from tokenrl.models import accept_head
from tokenrl.rollout import sample
from tokenrl.rollout.drafts import LayerDraft, ModelDraft, NGramDraft, ngram_propose
from tokenrl.rollout import speculative as speculative_lib
from tokenrl.rollout.sampling import process_logits
from tokenrl.rollout.speculative import (specdec_draft_length, specdec_stop, speculative_accept,
                                         speculative_sample)

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
# A different (random) model as the draft: its laws are far from the target's, so rounds both
# accept and reject.
DRAFT_CONFIG = models.tiny("qwen2", vocab_size=16, dim=16, num_layers=1, num_heads=2,
                           num_kv_heads=1, mlp_dim=24, eos_ids=(1,), pad_id=0)
DRAFT = ModelDraft(models.init_params(DRAFT_CONFIG, jax.random.key(7)), DRAFT_CONFIG)
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]
DRAFTS = {"model": DRAFT, "layers": LayerDraft(1), "ngram": NGramDraft(3),
          "ngram_loop": NGramDraft(3, span=False)}


def _chi_square_pvalue(counts: np.ndarray, law: np.ndarray) -> float:
  """Chi-square p-value of counts against law (same shape), cells with expected < 5 pooled."""
  counts, law = counts.reshape(-1).astype(np.float64), law.reshape(-1).astype(np.float64)
  expected = law / law.sum() * counts.sum()
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  if exp[-1] == 0:
    obs, exp = obs[:-1], exp[:-1]
  assert counts[law == 0].sum() == 0, "a token of probability 0 was emitted"
  return float(scipy_stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


# ----------------------------------------------------------------------------- the pure rule


def _dirichlet(rng, *shape):
  x = rng.gamma(1.0, size=shape)
  return (x / x.sum(-1, keepdims=True)).astype(np.float32)


def test_first_token_law_is_p_and_acceptance_is_sum_min():
  rng = np.random.default_rng(0)
  v, draws = 5, 200_000
  p1, q1 = _dirichlet(rng, v), _dirichlet(rng, v)
  p = np.broadcast_to(np.stack([p1, _dirichlet(rng, v)]), (draws, 2, v))  # p_1, p_2 [B,2,V]
  q = np.broadcast_to(q1, (draws, 1, v))
  x = jax.random.categorical(jax.random.key(1), jnp.log(q1), shape=(draws, 1)).astype(jnp.int32)
  n, y = jax.jit(speculative_accept)(jnp.asarray(p), jnp.asarray(q), x,
                                      jnp.ones((draws,), jnp.int32), jax.random.key(2))
  n, y, x = np.asarray(n), np.asarray(y), np.asarray(x)
  first = np.where(n >= 1, x[:, 0], y)
  counts = np.bincount(first, minlength=v)
  assert _chi_square_pvalue(counts, p1) > 1e-3
  assert 0.5 * np.abs(counts / draws - p1).sum() < 5e-3
  alpha = np.minimum(p1, q1).sum()
  assert abs(n.mean() - alpha) < 4 * np.sqrt(alpha * (1 - alpha) / draws)


def test_sequence_law_with_table_models_equals_target_joint():
  """Target and draft are fixed conditional tables over V = 4 given the last two tokens;
  speculative rounds with K = 2 until 3 tokens are out: their joint law is the target's."""
  rng = np.random.default_rng(1)
  v, k, rows = 4, 2, 150_000
  target, draft = _dirichlet(rng, v, v, v), _dirichlet(rng, v, v, v)  # [a,b] -> law of next
  start = (2, 3)
  seq = np.zeros((rows, 2 + 3 + k + 1), np.int32)  # the context then emitted tokens
  seq[:, 0], seq[:, 1] = start
  length = np.full(rows, 2)
  key = jax.random.key(3)
  accept = jax.jit(speculative_accept)
  while (length < 5).any():
    key, kd, ka = jax.random.split(key, 3)
    ctx = np.stack([seq[np.arange(rows), length - 2], seq[np.arange(rows), length - 1]], 1)
    xs, qs, ps = [], [], []
    for i in range(k + 1):
      ps.append(target[ctx[:, -2], ctx[:, -1]])
      if i == k:
        break
      q_i = draft[ctx[:, -2], ctx[:, -1]]
      x_i = np.asarray(jax.random.categorical(jax.random.fold_in(kd, i), jnp.log(q_i)))
      xs.append(x_i)
      qs.append(q_i)
      ctx = np.concatenate([ctx, x_i[:, None]], 1)
    n, y = accept(jnp.asarray(np.stack(ps, 1)), jnp.asarray(np.stack(qs, 1)),
                  jnp.asarray(np.stack(xs, 1), jnp.int32), jnp.full((rows,), k, jnp.int32), ka)
    n, y = np.asarray(n), np.asarray(y)
    emit = np.concatenate([np.stack(xs, 1), np.zeros((rows, 1), np.int32)], 1)
    emit[np.arange(rows), n] = y
    for j in range(k + 1):
      write = (j <= n) & (length + j < seq.shape[1])
      seq[np.flatnonzero(write), (length + j)[write]] = emit[write, j]
    length = length + n + 1
  first3 = seq[:, 2:5]
  counts = np.zeros((v, v, v))
  np.add.at(counts, (first3[:, 0], first3[:, 1], first3[:, 2]), 1)
  a, b = start
  law = (target[a, b][:, None, None] * target[b][:, :, None] * target)  # p(t1) p(t2|t1) p(t3|t1,t2)
  assert _chi_square_pvalue(counts, law) > 1e-3


def test_residual_guard_samples_p_when_the_residual_is_empty():
  """p <= q everywhere (a sub-normalized processed law): a rejection leaves max(0, p - q) = 0,
  and y must then come from p itself (never a zero-probability or arbitrary token)."""
  draws = 100_000
  p = jnp.broadcast_to(jnp.asarray([[0.2, 0.3, 0.0], [0.0, 0.0, 1.0]]), (draws, 2, 3))
  q = jnp.broadcast_to(jnp.asarray([[0.4, 0.6, 0.0]]), (draws, 1, 3))
  n, y = speculative_accept(p, q, jnp.zeros((draws, 1), jnp.int32), jnp.ones((draws,), jnp.int32),
                            jax.random.key(4))
  n, y = np.asarray(n), np.asarray(y)
  rejected = y[n == 0]
  assert 0.45 < rejected.size / draws < 0.55  # accept w.p. p(0)/q(0) = 0.5
  counts = np.bincount(rejected, minlength=3)
  assert counts[2] == 0 and _chi_square_pvalue(counts, np.asarray([0.2, 0.3, 0.0])) > 1e-3
  np.testing.assert_array_equal(y[n == 1], 2)  # bonus from p_2, a point mass


def test_greedy_rule_hand_case():
  # argmax of p at positions 1, 2, 3: tokens 2, 1, 3.
  p = np.zeros((4, 3, 4), np.float32)
  for i, t in enumerate([2, 1, 3]):
    p[:, i] = 0.1
    p[:, i, t] = 0.7
  q = np.full((4, 2, 4), 0.25, np.float32)
  drafts = jnp.asarray([[2, 0], [2, 1], [2, 1], [0, 1]], jnp.int32)
  draft_len = jnp.asarray([2, 2, 1, 2], jnp.int32)
  n, y = speculative_accept(jnp.asarray(p), jnp.asarray(q), drafts, draft_len, jax.random.key(0),
                            greedy=True)
  np.testing.assert_array_equal(np.asarray(n), [1, 2, 1, 0])
  np.testing.assert_array_equal(np.asarray(y), [1, 3, 1, 2])


def test_positions_past_draft_len_are_rejected_and_get_the_bonus():
  # draft_len 0: n = 0 and y ~ p_1 (q := 0 there), even though q_1 would match p_1 exactly.
  p = jnp.asarray([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]] * 3)
  q = jnp.asarray([[[0.0, 1.0, 0.0]]] * 3)
  n, y = speculative_accept(p, q, jnp.ones((3, 1), jnp.int32), jnp.asarray([0, 1, 0], jnp.int32),
                            jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(n), [0, 1, 0])
  np.testing.assert_array_equal(np.asarray(y), [1, 0, 1])


def test_accept_shapes_are_named():
  with pytest.raises(ValueError, match=r"q must be \[B,K,V\]"):
    speculative_accept(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.ones((2, 2), jnp.int32),
                       jnp.ones((2,), jnp.int32), jax.random.key(0))


def test_specdec_stop_rule_scripted_case():
  """Spec §3(e): ĥ = 0.9, 0.9, 0.5, h = 0.3, bounds (2, 20) -> stop with K = 4."""
  rule = functools.partial(specdec_stop, threshold=0.3, min_tokens=2, max_tokens=20)
  assert not rule(jnp.float32(1.0), 1)  # s = 1: P = 1
  assert not rule(jnp.float32(0.9), 2)  # s = 2: P = 0.9
  assert not rule(jnp.float32(0.81), 3)  # rejection 0.19 <= 0.3
  assert rule(jnp.float32(0.405), 4)  # rejection 0.595 > 0.3
  assert specdec_draft_length([0.9, 0.9, 0.5], threshold=0.3, min_tokens=2, max_tokens=20) == 4
  # Never before K_min, always at K_max.
  assert specdec_draft_length([0.0] * 5, threshold=0.3, min_tokens=2, max_tokens=20) == 2
  assert specdec_draft_length([1.0] * 20, threshold=0.3, min_tokens=2, max_tokens=6) == 6


def test_ngram_proposes_the_most_recent_continuation():
  hist = jnp.asarray([[4, 5, 6, 9, 4, 5, 7, 4, 5, 0, 0],   # "4 5" -> most recent follower 7
                      [1, 2, 3, 8, 3, 0, 0, 0, 0, 0, 0],   # no "8 3" before; "3" -> 8
                      [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0]])  # no earlier "4": no proposal
  end = jnp.asarray([9, 5, 4])
  mask = jnp.arange(11)[None, :] < end[:, None]
  token, found = ngram_propose(hist, mask, end, n=3)
  np.testing.assert_array_equal(np.asarray(found), [True, True, False])
  np.testing.assert_array_equal(np.asarray(token)[:2], [7, 8])


def test_ngram_span_is_the_continuation_of_the_earliest_match_cut_at_the_end():
  # transformers' prompt lookup: the earliest occurrence of the last 2 (else 1) tokens that has
  # a continuation, and the K tokens after it, cut at the sequence's end.
  hist = jnp.asarray([[4, 5, 6, 9, 4, 5, 7, 4, 5, 0, 0],   # "4 5" first at slots 0-1: 6 9 4 5
                      [1, 2, 3, 8, 3, 0, 0, 0, 0, 0, 0],   # no earlier "8 3"; "3" at 2: 8 3, end
                      [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0],   # no earlier "4": nothing
                      [7, 1, 2, 3, 9, 9, 1, 2, 0, 0, 0],   # "1 2" at slots 1-2: 3 9 9 (end)
                      [3, 1, 3, 5, 0, 0, 0, 0, 0, 0, 0]])  # "3" at slot 0: 1 3, then end
  end = jnp.asarray([9, 5, 4, 8, 3])
  mask = jnp.arange(11)[None, :] < end[:, None]
  tokens, count = NGramDraft(3).propose_span(hist, mask, end, 4)
  np.testing.assert_array_equal(np.asarray(count), [4, 2, 0, 4, 2])
  np.testing.assert_array_equal(np.asarray(tokens)[0], [6, 9, 4, 5])
  np.testing.assert_array_equal(np.asarray(tokens)[1, :2], [8, 3])
  np.testing.assert_array_equal(np.asarray(tokens)[3], [3, 9, 9, 1])
  np.testing.assert_array_equal(np.asarray(tokens)[4, :2], [1, 3])
  # The per-step rule takes the most recent occurrence instead.
  first, found = ngram_propose(hist, mask, end, n=3)
  np.testing.assert_array_equal(np.asarray(found), np.asarray(count) > 0)
  np.testing.assert_array_equal(np.asarray(first)[[0, 1, 3, 4]], [7, 8, 3, 1])


# ----------------------------------------------------------------------------- the engine


_FORWARD = jax.jit(models.forward, static_argnames="config")


def _processed(logits, temperature, top_k, top_p):
  _, filtered = process_logits(jnp.asarray(logits), temperature=jnp.float32(temperature),
                               top_k=top_k, top_p=top_p)
  return np.asarray(jax.nn.softmax(filtered, axis=-1), np.float64)


def _law_of_tokens_1_and_2(prompt, temperature, top_k, top_p):
  """Exact P(t1 = b, t2 = c) [V,V] of plain sampling, summing over t0 = a: every conditional
  is the target's processed law from a teacher-forced forward over prompt + [a, b]."""
  v = CONFIG.vocab_size
  a, b = np.meshgrid(np.arange(v), np.arange(v), indexing="ij")
  seqs = np.concatenate([np.tile(prompt, (v * v, 1)), a.reshape(-1, 1), b.reshape(-1, 1)], 1)
  logits, _ = _FORWARD(PARAMS, jnp.asarray(seqs, jnp.int32), config=CONFIG)
  law = functools.partial(_processed, temperature=temperature, top_k=top_k, top_p=top_p)
  p0 = law(logits[0, len(prompt) - 1])  # [V] law of t0
  p1 = law(logits[:, len(prompt)]).reshape(v, v, v)[:, 0]  # [a, b] law of t1 given a
  p2 = law(logits[:, len(prompt) + 1]).reshape(v, v, v)  # [a, b, c] law of t2 given a, b
  return np.einsum("a,ab,abc->bc", p0, p1, p2)


@pytest.mark.parametrize("draft,temperature,top_k,top_p,head", [
    ("model", 1.0, 0, 1.0, False), ("model", 0.7, 0, 1.0, False), ("ngram", 1.0, 5, 1.0, False),
    ("model", 1.0, 0, 0.8, True)], ids=["T1", "T0.7", "top_k", "top_p_specdec"])
def test_engine_law_of_tokens_equals_plain_sampling(draft, temperature, top_k, top_p, head):
  """25,000 rows x 4 settings (1e5 samples): the joint law of completion tokens 1 and 2 (both
  emitted by speculative rounds; token 0 comes from the prefill) is plain sampling's."""
  prompt, rows = [5, 6, 7], 25_000
  kwargs = {}
  if head:  # SpecDec++ with a random head (lossless whatever the head predicts)
    params = accept_head.init_accept_head(jax.random.key(3), DRAFT_CONFIG.dim)
    params["out"]["w"] = jax.random.normal(jax.random.key(4), (DRAFT_CONFIG.dim, 2))
    kwargs = dict(accept_head=(params, 3), stop_threshold=0.3, min_draft_tokens=1)
  out, st = speculative_sample(PARAMS, [prompt], config=CONFIG, rng=jax.random.key(11),
                               max_new_tokens=3, draft=DRAFTS[draft], num_draft_tokens=2,
                               temperature=temperature, top_k=top_k, top_p=top_p,
                               num_samples=rows, stop_tokens=(), **kwargs)
  tokens = np.asarray(out.tokens)
  assert np.asarray(out.mask).all()
  counts = np.zeros((CONFIG.vocab_size,) * 2)
  np.add.at(counts, (tokens[:, 1], tokens[:, 2]), 1)
  law = _law_of_tokens_1_and_2(prompt, temperature, top_k, top_p)
  assert _chi_square_pvalue(counts, law) > 1e-3
  assert 0.0 < st.acceptance_rate < 1.0  # both the accept and the residual paths ran
  assert st.drafted > 0


def _check_logprobs(out, prompts, temperature):
  """Rollout log-probs / entropies = the processed target law of one teacher-forced forward
  over prompt + completion (rows left-padded to one width: one compile for every call)."""
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  t = tokens.shape[1]
  width = max(map(len, prompts)) + t - 1
  seqs = np.zeros((len(prompts), width), np.int32)
  seg = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    seq = list(prompt) + list(tokens[row, :-1])
    seqs[row, width - len(seq):], seg[row, width - len(seq):] = seq, 1
  logits, _ = _FORWARD(PARAMS, jnp.asarray(seqs), config=CONFIG, segment_ids=jnp.asarray(seg))
  scaled, filtered = process_logits(logits[:, -t:], temperature=jnp.float32(temperature), top_k=0,
                                    top_p=1.0)
  logp = np.asarray(jax.nn.log_softmax(scaled if temperature <= 0 else filtered, axis=-1))
  ent = -np.sum(np.exp(logp) * logp, axis=-1)
  want = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(out.logprobs), np.where(mask == 1, want, 0.0), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.entropy), np.where(mask == 1, ent, 0.0), atol=1e-5)


@pytest.mark.parametrize("name", list(DRAFTS))
def test_greedy_equals_plain_greedy_sample(name):
  kw = dict(config=CONFIG, rng=jax.random.key(1), max_new_tokens=10, temperature=0.0,
            stop_tokens=(1,))
  plain = sample(PARAMS, PROMPTS, **kw)
  spec, st = speculative_sample(PARAMS, PROMPTS, draft=DRAFTS[name], num_draft_tokens=3, **kw)
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(spec, field)), np.asarray(getattr(plain, field)))
  # Both endings are covered: a row ended by the stop token, a row clipped at max_new_tokens.
  truncated = np.asarray(spec.truncated)
  assert truncated.any() and not truncated.all()
  _check_logprobs(spec, PROMPTS, 0.0)
  assert st.accepted > 0  # drafts were accepted (multi-token rounds ran)


def test_stacked_cache_layout_greedy_and_logprobs(monkeypatch):
  """The GPU/TPU layout (stacked [L,N,C,K,H] caches under the layer scan) on CPU: greedy is
  still plain greedy, log-probs the teacher-forced target's. num_draft_tokens=2 is a static
  argument no other LayerDraft call uses, so this traces anew with the patched layout."""
  monkeypatch.setattr(speculative_lib, "_per_layer_cache", lambda config: False)
  kw = dict(config=CONFIG, rng=jax.random.key(1), max_new_tokens=10, temperature=0.0,
            stop_tokens=(1,))
  spec, _ = speculative_sample(PARAMS, PROMPTS, draft=LayerDraft(1), num_draft_tokens=2, **kw)
  plain = sample(PARAMS, PROMPTS, **kw)
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(spec, field)), np.asarray(getattr(plain, field)))
  _check_logprobs(spec, PROMPTS, 0.0)


def test_sampled_logprobs_and_entropy_are_the_target_teacher_forced():
  out, _ = speculative_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(2),
                              max_new_tokens=10, temperature=0.7, stop_tokens=(1,), draft=DRAFT,
                              num_draft_tokens=3)
  _check_logprobs(out, PROMPTS, 0.7)


def test_row_does_not_depend_on_other_rows():
  kw = dict(config=CONFIG, rng=jax.random.key(5), max_new_tokens=10, stop_tokens=(1,),
            draft=DRAFT, num_draft_tokens=3)
  a, _ = speculative_sample(PARAMS, PROMPTS, **kw)
  b, _ = speculative_sample(PARAMS, [PROMPTS[0], [11, 12, 13], [2]], **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens[0]), np.asarray(b.tokens[0]))
  np.testing.assert_allclose(np.asarray(a.logprobs[0]), np.asarray(b.logprobs[0]), atol=1e-6)


def test_zero_draft_tokens_is_sample_bit_for_bit():
  kw = dict(config=CONFIG, rng=jax.random.key(9), max_new_tokens=10, temperature=1.0,
            stop_tokens=(1,))
  plain = sample(PARAMS, PROMPTS, **kw)
  spec, st = speculative_sample(PARAMS, PROMPTS, draft=NGramDraft(), num_draft_tokens=0, **kw)
  for field in ("tokens", "mask", "logprobs", "entropy", "truncated", "prompt_tokens"):
    np.testing.assert_array_equal(np.asarray(getattr(spec, field)), np.asarray(getattr(plain, field)))
  assert st.drafted == 0 and st.tokens_per_round == 1.0


@pytest.mark.parametrize("draft", ["ngram", "model"])
def test_verify_widths_change_the_cost_not_the_tokens(draft):
  # 'auto' widths (2, 3, 5) at K = 4: rounds whose longest live draft is short run a narrower
  # verify pass; the default (5,) always runs K+1 positions. Same keys -> the same tokens; the
  # log-probs are the same target conditionals (different matmul shapes: f32 rounding only).
  assert speculative_lib._verify_widths(4, "auto") == (2, 3, 5)
  assert speculative_lib._verify_widths(4, None) == (5,)
  kw = dict(config=CONFIG, rng=jax.random.key(4), max_new_tokens=12, temperature=1.0,
            stop_tokens=(1,), draft=DRAFTS[draft], num_draft_tokens=4)
  narrow, st = speculative_sample(PARAMS, PROMPTS, verify_widths="auto", **kw)
  wide, st_wide = speculative_sample(PARAMS, PROMPTS, **kw)
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(narrow, field)), np.asarray(getattr(wide, field)))
  np.testing.assert_allclose(np.asarray(narrow.logprobs), np.asarray(wide.logprobs), atol=1e-5)
  assert (st.drafted, st.accepted, st.rounds) == (st_wide.drafted, st_wide.accepted, st_wide.rounds)
  # Some round drafted fewer than K tokens, so a narrow width ran.
  assert st.drafted < 4 * st.row_rounds
  with pytest.raises(ValueError, match="include K\\+1 = 5"):
    speculative_sample(PARAMS, PROMPTS, verify_widths=(2, 3), **kw)


def test_stop_tokens_and_max_new_tokens_clip_rounds():
  """Sampled rows at temperature 1.5 (the stop token is frequent): the mask is 1 up to and
  including the first stop token and within max_new_tokens, pad after; truncated iff none."""
  stops = (1,)  # the compile of test_greedy_equals_plain_greedy_sample[layers]
  for seed in range(8):
    out, _ = speculative_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(seed),
                                max_new_tokens=10, stop_tokens=stops, draft=LayerDraft(1),
                                num_draft_tokens=3, temperature=1.5)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    for row in range(len(PROMPTS)):
      hit = np.flatnonzero(np.isin(tokens[row], stops))
      m = int(mask[row].sum())
      assert mask[row, :m].all() and not mask[row, m:].any()
      assert (tokens[row, m:] == CONFIG.pad_id).all()
      if bool(out.truncated[row]):
        assert m == 10 and not np.isin(tokens[row, :m], stops).any()
      else:
        assert hit.size and m == hit[0] + 1


def test_specdec_head_sets_the_draft_length():
  """A head predicting rejection (ĥ ≈ 0) stops every draft at K_min; one predicting acceptance
  (ĥ ≈ 1) drafts K_max; both give plain greedy's tokens."""
  kw = dict(config=CONFIG, rng=jax.random.key(1), max_new_tokens=10, temperature=0.0,
            stop_tokens=(1,), draft=LayerDraft(1), num_draft_tokens=4, min_draft_tokens=2,
            stop_threshold=0.3)
  plain = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(1), max_new_tokens=10,
                 temperature=0.0, stop_tokens=(1,))
  head = accept_head.init_accept_head(jax.random.key(0), CONFIG.dim)
  mean_draft = {}
  for bias in (10.0, -10.0):  # out bias [+b, -b]: ĥ = sigmoid(-2b), ~0 then ~1
    params = {**head, "out": {"w": head["out"]["w"], "b": jnp.asarray([bias, -bias])}}
    out, st = speculative_sample(PARAMS, PROMPTS, accept_head=(params, 3), **kw)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(plain.tokens))
    mean_draft[bias] = st.drafted / st.row_rounds
  # ĥ ~ 0: stop at K_min = 2 (or earlier: a drafted stop token, no room left); ĥ ~ 1: drafts
  # run to K_max = 4 unless cut the same ways, so on average well above K_min.
  assert mean_draft[10.0] <= 2.0 < mean_draft[-10.0]


def test_bad_drafts_are_named():
  other = models.tiny("qwen2", vocab_size=24, dim=16, num_layers=1, eos_ids=(1,), pad_id=0)
  kw = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=4, num_draft_tokens=2)
  with pytest.raises(ValueError, match="vocab_size 24 != target vocab_size 16"):
    speculative_sample(PARAMS, PROMPTS, draft=ModelDraft(None, other), **kw)
  eos = DRAFT_CONFIG.replace(eos_ids=(2,))
  with pytest.raises(ValueError, match=r"eos_ids \(2,\) != target eos_ids \(1,\)"):
    speculative_sample(PARAMS, PROMPTS, draft=ModelDraft(DRAFT.params, eos), **kw)
  head = accept_head.init_accept_head(jax.random.key(0), CONFIG.dim)
  with pytest.raises(ValueError, match="NGramDraft has none"):
    speculative_sample(PARAMS, PROMPTS, draft=NGramDraft(), accept_head=(head, 3), **kw)
  with pytest.raises(ValueError, match=r"LayerDraft num_layers must be an int in \[1, 2\]"):
    speculative_sample(PARAMS, PROMPTS, draft=LayerDraft(3), **kw)
  with pytest.raises(ValueError, match="num_draft_tokens must be an int >= 0"):
    speculative_sample(PARAMS, PROMPTS, draft=NGramDraft(), **{**kw, "num_draft_tokens": -1})
