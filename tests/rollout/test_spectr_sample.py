"""SpecTr multi-draft decode loop: lossless, greedy-exact; k = 1 is speculative_sample.

Lossless = the emitted tokens follow the processed target law whatever the drafts: chi-square of
joint laws of completion tokens against laws computed exactly by enumerating the target's
teacher-forced conditionals (>= 1e5 rows in all). Compiles are the cost on CPU (~20 s each), so
the sampled runs are shared between tests (temperature is traced: one compile for all of them).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.rollout.test_speculative import (CONFIG, DRAFT, PARAMS, PROMPTS, _FORWARD,
                                            _check_logprobs, _chi_square_pvalue, _processed)
from tokenrl import models
from tokenrl.rollout import sample
from tokenrl.rollout.drafts import LayerDraft, NGramDraft
from tokenrl.rollout.speculative import speculative_sample
from tokenrl.rollout import spectr as spectr_lib
from tokenrl.rollout.spectr import _take_rows, spectr_sample

LAW_PROMPT, LAW_ROWS, LAW_DRAFTS, LAW_DEPTH = [5, 6, 7], 50_000, 3, 2


@functools.cache
def _law_run(temperature):
  """k = 3 drafts of L = 2 tokens, 4 completion tokens, for LAW_ROWS samples of one prompt."""
  return spectr_sample(PARAMS, [LAW_PROMPT], config=CONFIG, rng=jax.random.key(11),
                       max_new_tokens=4, draft=DRAFT, num_drafts=LAW_DRAFTS,
                       num_draft_tokens=LAW_DEPTH, temperature=temperature,
                       num_samples=LAW_ROWS, stop_tokens=())


@functools.cache
def _law_of_first_four(temperature):
  """Exact P(t0..t3) [V,V,V,V] of plain sampling: every conditional is the target's processed
  law from one teacher-forced forward over prompt + [a, b, c] (V³ sequences)."""
  v, m = CONFIG.vocab_size, len(LAW_PROMPT)
  abc = np.stack(np.meshgrid(*[np.arange(v)] * 3, indexing="ij"), -1).reshape(-1, 3)
  seqs = np.concatenate([np.tile(LAW_PROMPT, (v ** 3, 1)), abc], 1)
  logits, _ = _FORWARD(PARAMS, jnp.asarray(seqs, jnp.int32), config=CONFIG)
  law = functools.partial(_processed, temperature=temperature, top_k=0, top_p=1.0)
  p0 = law(logits[0, m - 1])  # [a]
  p1 = law(logits[:, m]).reshape(v, v, v, v)[:, 0, 0]  # [a, b]
  p2 = law(logits[:, m + 1]).reshape(v, v, v, v)[:, :, 0]  # [a, b, c]
  p3 = law(logits[:, m + 2]).reshape(v, v, v, v)  # [a, b, c, d]
  return np.einsum("a,ab,abc,abcd->abcd", p0, p1, p2, p3)


@pytest.mark.slow  # 1e5 rows x 3 drafts through the engine (~25 s a temperature on 2 CPUs)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_law_of_tokens_equals_plain_sampling(temperature):
  """50,000 rows x 2 temperatures x 2 token pairs: (t1, t2) and (t2, t3), both emitted by rounds
  (t0 comes from the prefill). t3 is reached by a depth-2 acceptance plus the bonus token, or
  by a second round that started from caches gathered from the surviving replica."""
  out, st = _law_run(temperature)
  tokens = np.asarray(out.tokens)
  assert np.asarray(out.mask).all()
  joint = _law_of_first_four(temperature)
  v = CONFIG.vocab_size
  for cols, law in (((1, 2), joint.sum(axis=(0, 3))), ((2, 3), joint.sum(axis=(0, 1)))):
    counts = np.zeros((v, v))
    np.add.at(counts, (tokens[:, cols[0]], tokens[:, cols[1]]), 1)
    assert _chi_square_pvalue(counts, law) > 1e-3, cols
  assert 0.0 < st.acceptance_rate < 1.0  # both the accept and the residual paths ran
  assert st.tokens_per_round > 1.0


@pytest.mark.slow  # shares the runs of test_law_of_tokens_equals_plain_sampling
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_depth1_acceptance_is_kseq_below_the_optimum_above_single_draft(temperature):
  """Achieved depth-1 acceptance (Bernoulli mean over ~1e5 positions) = the mean of K-SEQ's exact
  acceptance within 4σ, <= Hu et al.'s optimum α* (within 4σ), and well above one draft's
  Σ min(p, q) at the same positions."""
  _, st = _law_run(temperature)
  a = st.depth1_acceptance
  sigma = np.sqrt(a * (1 - a) / st.depth1_positions)
  assert st.depth1_positions >= LAW_ROWS
  assert abs(a - st.kseq_acceptance) < 4 * sigma
  assert a <= st.optimal_acceptance + 4 * sigma
  assert st.kseq_acceptance <= st.optimal_acceptance + 1e-5
  assert a > st.single_draft_acceptance + 10 * sigma


@functools.cache
def _prompts_run(temperature):
  return spectr_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(2), max_new_tokens=10,
                       temperature=temperature, stop_tokens=(1,), draft=LayerDraft(1),
                       num_drafts=3, num_draft_tokens=3)


def test_greedy_equals_plain_greedy_sample():
  out, st = _prompts_run(0.0)
  plain = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(2), max_new_tokens=10,
                 temperature=0.0, stop_tokens=(1,))
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(out, field)),
                                  np.asarray(getattr(plain, field)))
  truncated = np.asarray(out.truncated)
  assert truncated.any() and not truncated.all()  # a stop-token ending and a T ending
  _check_logprobs(out, PROMPTS, 0.0)
  assert st.accepted > 0 and np.isnan(st.optimal_acceptance)


def test_stacked_cache_layout_greedy_and_logprobs(monkeypatch):
  """The accelerator layout (stacked [L,N,C,K,H] caches under the layer scan, gathered on axis 1)
  on CPU: greedy is still plain greedy, log-probs the teacher-forced target's. k = 2, L = 2 are
  static arguments no other call uses, so this traces anew with the patched layout."""
  monkeypatch.setattr(spectr_lib, "_per_layer_cache", lambda config: False)
  kw = dict(config=CONFIG, rng=jax.random.key(2), max_new_tokens=10, temperature=0.0,
            stop_tokens=(1,))
  out, _ = spectr_sample(PARAMS, PROMPTS, draft=LayerDraft(1), num_drafts=2, num_draft_tokens=2,
                         **kw)
  plain = sample(PARAMS, PROMPTS, **kw)
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(out, field)),
                                  np.asarray(getattr(plain, field)))
  _check_logprobs(out, PROMPTS, 0.0)


def test_sampled_logprobs_and_entropy_are_the_target_teacher_forced():
  out, st = _prompts_run(0.7)
  _check_logprobs(out, PROMPTS, 0.7)
  assert st.accepted > 0


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_one_draft_is_speculative_sample_token_for_token(temperature):
  """k = 1: K-SEQ with one candidate is the single-draft rule, and the keys line up: the same
  tokens, log-probs and acceptance counts as speculative_sample."""
  kw = dict(config=CONFIG, rng=jax.random.key(5), max_new_tokens=10, stop_tokens=(1,),
            draft=DRAFT, num_draft_tokens=3, temperature=temperature)
  spec, spec_st = speculative_sample(PARAMS, PROMPTS, **kw)
  one, one_st = spectr_sample(PARAMS, PROMPTS, num_drafts=1, **kw)
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(one, field)), np.asarray(getattr(spec, field)))
  np.testing.assert_allclose(np.asarray(one.logprobs), np.asarray(spec.logprobs), atol=1e-6)
  for field in ("rounds", "row_rounds", "drafted", "accepted", "emitted"):
    assert getattr(one_st, field) == getattr(spec_st, field), field


def test_take_rows_gathers_both_cache_layouts():
  """The stacked layout (k, v [L,N,C,K,H], accelerators) and the per-layer one (CPU) copy the
  same rows; pos / index and other leading-row leaves follow."""
  rows, src = 4, jnp.asarray([2, 2, 0, 3, 1, 1])
  stacked = models.init_cache(CONFIG, rows, 5, jnp.float32, per_layer=False, row_index=True)
  gen = np.random.default_rng(0)
  stacked["k"] = jnp.asarray(gen.normal(size=stacked["k"].shape), jnp.float32)
  stacked["v"] = jnp.asarray(gen.normal(size=stacked["v"].shape), jnp.float32)
  stacked["pos"] = jnp.arange(rows * 5).reshape(rows, 5)
  stacked["index"] = jnp.arange(rows)
  out = _take_rows({"cache": stacked, "extra": jnp.arange(rows) * 10, "scalar": jnp.int32(7)},
                   src, rows)
  np.testing.assert_array_equal(out["cache"]["k"], np.asarray(stacked["k"])[:, src])
  np.testing.assert_array_equal(out["cache"]["v"], np.asarray(stacked["v"])[:, src])
  np.testing.assert_array_equal(out["cache"]["pos"], np.asarray(stacked["pos"])[src])
  np.testing.assert_array_equal(out["cache"]["index"], src)
  np.testing.assert_array_equal(out["extra"], np.asarray(src) * 10)
  assert int(out["scalar"]) == 7
  # Per layer: k [N,K,H,C], v [N,K,C,H] per layer, from the same contents.
  per_layer = {**stacked, "k": tuple(jnp.moveaxis(kk, 1, -1) for kk in stacked["k"]),
               "v": tuple(jnp.moveaxis(vv, 1, 2) for vv in stacked["v"])}
  got = _take_rows(per_layer, src, rows)
  for layer in range(CONFIG.num_layers):
    np.testing.assert_array_equal(got["k"][layer], np.moveaxis(out["cache"]["k"][layer], 1, -1))
    np.testing.assert_array_equal(got["v"][layer], np.moveaxis(out["cache"]["v"][layer], 1, 2))


def test_bad_arguments_are_named():
  kw = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=4, num_drafts=2,
            num_draft_tokens=2)
  with pytest.raises(ValueError, match="SpecTr needs a stochastic draft: NGramDraft"):
    spectr_sample(PARAMS, PROMPTS, draft=NGramDraft(3), **kw)
  with pytest.raises(ValueError, match="num_drafts must be an int >= 1"):
    spectr_sample(PARAMS, PROMPTS, draft=DRAFT, **{**kw, "num_drafts": 0})
  with pytest.raises(ValueError, match="num_draft_tokens must be an int >= 1"):
    spectr_sample(PARAMS, PROMPTS, draft=DRAFT, **{**kw, "num_draft_tokens": 0})
  with pytest.raises(ValueError, match=r"LayerDraft num_layers must be an int in \[1, 2\]"):
    spectr_sample(PARAMS, PROMPTS, draft=LayerDraft(3), **kw)
