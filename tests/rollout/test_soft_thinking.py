"""Soft Thinking (spec §13e): max_topk = 1 is greedy decoding, the concept weights follow the
spec's filter chain and the mixed embedding is the weighted sum, Cold Stop fires at step k_len
and resets, rows decode discretely after the think-end, rows are independent, bad args named."""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout import sample, soft_think_sample
from tokenrl.rollout.soft_thinking import cold_stop_update, concept_embedding, concept_weights

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]
T = 8
# Every engine run shares these static settings (3 rows, one bucket): two compiles in all
# (max_topk 1 and the default 10); think_end_id, τ and k_len are traced.
KW = dict(config=CONFIG, max_new_tokens=T, stop_tokens=())


def _numpy_concept(logits, temperature, top_k, top_p, min_p, max_topk):
  """The spec's steps 1-3 literally, in the probability domain (float64)."""
  x = np.asarray(logits, np.float64) / temperature
  pi = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  entropy = -(pi * np.log(pi)).sum()
  order = np.argsort(-pi, kind="stable")
  q = np.zeros_like(pi)
  q[order[:top_k]] = pi[order[:top_k]]  # top-k, renormalised
  q /= q.sum()
  mass_before = np.cumsum(q[order]) - q[order]
  keep = order[mass_before < top_p]  # top-p of the renormalised law
  r = np.zeros_like(q)
  r[keep] = q[keep]
  r /= r.sum()
  r[r < min_p * r.max()] = 0.0  # min-p, renormalised
  r /= r.sum()
  ids = order[:max_topk]
  w = r[ids] / r[ids].sum()
  return w, ids, entropy


_CONCEPT_WEIGHTS = jax.jit(concept_weights, static_argnames=("top_k", "top_p", "max_topk"))


# No filter; the defaults; every filter cutting (fewer than max_topk survive: zero weights).
@pytest.mark.parametrize("top_k,top_p,min_p,max_topk",
                         [(0, 1.0, 0.0, 5), (30, 0.95, 0.001, 10), (6, 0.7, 0.2, 4)])
def test_concept_weights_follow_the_spec_filter_chain(top_k, top_p, min_p, max_topk):
  logits = np.asarray(jax.random.normal(jax.random.key(1), (4, 16))) * 2.0
  w, ids, ent = _CONCEPT_WEIGHTS(logits, temperature=np.float32(0.6), top_k=top_k, top_p=top_p,
                                 min_p=np.float32(min_p), max_topk=max_topk)
  for row in range(logits.shape[0]):
    ew, eids, eent = _numpy_concept(logits[row], 0.6, top_k or 16, top_p, min_p, max_topk)
    kept = ew > 0
    np.testing.assert_array_equal(np.asarray(ids[row])[kept], eids[kept])
    np.testing.assert_allclose(np.asarray(w[row]), ew, atol=1e-6)
    np.testing.assert_allclose(float(ent[row]), eent, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)


def test_mixed_embedding_is_the_weighted_sum():
  table = np.asarray(jax.random.normal(jax.random.key(2), (16, 8)))
  weights = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]], np.float32)
  ids = np.array([[3, 7, 11], [9, 2, 0]], np.int32)
  got = np.asarray(concept_embedding(weights, ids, table))
  manual = np.stack([sum(weights[n, k] * table[ids[n, k]] for k in range(3)) for n in range(2)])
  np.testing.assert_allclose(got, manual, atol=1e-6)
  np.testing.assert_array_equal(got[1], table[9])  # one-hot weights: exactly the token's row


def test_cold_stop_fires_at_step_k_len_and_resets():
  def run(entropies, threshold=0.5, length=3):
    count, fired = np.zeros(1, np.int32), []
    for h in entropies:
      count, fire = cold_stop_update(count, np.array([h], np.float32),
                                     threshold=np.float32(threshold), length=np.int32(length))
      fired.append(bool(fire[0]))
    return fired
  assert run([0.1, 0.1, 0.1, 0.1]) == [False, False, True, True]
  # A high-entropy step resets the count: k_len more low steps are needed after it.
  assert run([0.1, 0.1, 0.9, 0.1, 0.1, 0.1]) == [False] * 5 + [True]
  assert run([0.1, 0.5, 0.1]) == [False] * 3  # H = τ is not low
  assert run([0.0] * 5, threshold=0.0) == [False] * 5  # τ = 0 disables
  assert run([0.1], length=1) == [True]


def test_max_topk_1_is_greedy_decoding_across_the_think_end():
  greedy = np.asarray(sample(PARAMS, PROMPTS, rng=jax.random.key(3), temperature=0.0,
                             **KW).tokens)
  think_end = int(greedy[1, 3])  # row 1 closes its thought at step <= 3, then answers
  out, info = soft_think_sample(PARAMS, PROMPTS, rng=jax.random.key(4), think_end_id=think_end,
                                max_topk=1, early_stopping_entropy_threshold=0.0,
                                after_thinking_temperature=0.0, **KW)
  np.testing.assert_array_equal(np.asarray(out.tokens), greedy)
  soft, steps = np.asarray(info.soft), np.asarray(info.thinking_steps)
  for row in range(len(PROMPTS)):
    hits = np.flatnonzero(greedy[row] == think_end)
    close = hits[0] if hits.size else T
    assert steps[row] == close and soft[row, :close].all() and not soft[row, close:].any()
    assert bool(info.closed[row]) == bool(hits.size)
  assert 0 < steps[1] <= 3 and not np.asarray(info.cold_stopped).any()


def _closing_token():
  """(think_end_id, column j >= 2) such that row 0's thought ends at column j: the thinking
  phase draws nothing, so its representative tokens do not depend on think_end_id until it
  is hit; the first new representative token at a column >= 2 is such an id."""
  probe, info = soft_think_sample(PARAMS, PROMPTS, rng=jax.random.key(5), think_end_id=15,
                                  early_stopping_entropy_threshold=0.0, **KW)
  reps, soft = np.asarray(probe.tokens[0]), np.asarray(info.soft[0])
  for j in range(2, T - 2):
    if soft[j] and reps[j] not in reps[:j]:
      return int(reps[j]), j
  raise AssertionError(f"no fresh representative token in {reps}")


def test_rows_decode_discretely_after_the_think_end():
  think_end, j = _closing_token()
  out, info = soft_think_sample(PARAMS, PROMPTS, rng=jax.random.key(6), think_end_id=think_end,
                                early_stopping_entropy_threshold=0.0, **KW)
  tokens, soft = np.asarray(out.tokens[0]), np.asarray(info.soft[0])
  logp = np.asarray(out.logprobs[0])
  assert tokens[j] == think_end and soft[:j].all() and not soft[j:].any()
  assert int(info.thinking_steps[0]) == j and bool(info.closed[0])
  assert not bool(info.cold_stopped[0])
  # Thinking positions (concept tokens and the closing think-end) have no draw: log-prob 0;
  # the answer tokens are sampled, with the log-prob of the after-thinking law.
  assert (logp[:j + 1] == 0).all() and (logp[j + 1:] < 0).all()
  assert np.asarray(out.mask).all() and (np.asarray(out.entropy[0]) > 0).all()


def test_cold_stop_forces_the_think_end_in_the_engine():
  kw = dict(KW, rng=jax.random.key(7), think_end_id=15)
  plain, plain_info = soft_think_sample(PARAMS, PROMPTS, early_stopping_entropy_threshold=0.0,
                                        **kw)
  # τ above log V: every step is low-entropy, so Cold Stop fires at the 3rd thinking step.
  out, info = soft_think_sample(PARAMS, PROMPTS, early_stopping_entropy_threshold=100.0,
                                early_stopping_length_threshold=3, **kw)
  cold, steps = np.asarray(info.cold_stopped), np.asarray(info.thinking_steps)
  plain_steps = np.asarray(plain_info.thinking_steps)
  assert cold.any() and np.asarray(info.closed).all()
  for row in range(len(PROMPTS)):
    if cold[row]:
      assert steps[row] == 2 and out.tokens[row, 2] == 15 and plain_steps[row] >= 2
      # The concept tokens before the forced close are those of the uncontrolled run.
      np.testing.assert_array_equal(out.tokens[row, :2], plain.tokens[row, :2])
    else:
      assert steps[row] == plain_steps[row] < 2
  assert not np.asarray(plain_info.cold_stopped).any()


def test_rows_do_not_depend_on_other_rows():
  think_end, j = _closing_token()
  kw = dict(KW, rng=jax.random.key(8), think_end_id=think_end,
            early_stopping_entropy_threshold=0.0)
  a, ai = soft_think_sample(PARAMS, PROMPTS, **kw)
  b, bi = soft_think_sample(PARAMS, [PROMPTS[0], [11, 12, 13], [2, 3]], **kw)
  np.testing.assert_array_equal(np.asarray(a.tokens[0]), np.asarray(b.tokens[0]))
  np.testing.assert_array_equal(np.asarray(ai.soft[0]), np.asarray(bi.soft[0]))
  np.testing.assert_allclose(np.asarray(a.logprobs[0]), np.asarray(b.logprobs[0]), atol=1e-6)
  # The answer is really sampled (row keys fold_in(rng, row)): another key changes it.
  c, _ = soft_think_sample(PARAMS, PROMPTS, **dict(kw, rng=jax.random.key(9)))
  assert (np.asarray(c.tokens[0, :j + 1]) == np.asarray(a.tokens[0, :j + 1])).all()
  assert (np.asarray(c.tokens[0, j + 1:]) != np.asarray(a.tokens[0, j + 1:])).any()


@pytest.mark.parametrize("bad,match", [
    (dict(max_topk=0), "max_topk"), (dict(max_topk=17), "max_topk"),
    (dict(min_p=1.0), "min_p"), (dict(min_p=-0.1), "min_p"),
    (dict(early_stopping_entropy_threshold=-1.0), "early_stopping_entropy_threshold"),
    (dict(early_stopping_length_threshold=0), "early_stopping_length_threshold"),
    (dict(temperature=0.0), "temperature must be > 0"), (dict(think_end_id=16), "think_end_id"),
    (dict(after_thinking_temperature=-1.0), "after_thinking_temperature"),
    (dict(after_thinking_top_p=0.0), "after_thinking_top_p"),
    (dict(after_thinking_top_k=-1), "after_thinking_top_k"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=600), "max_seq_len")])
def test_bad_arguments_are_named(bad, match):
  kw = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=4, think_end_id=3)
  with pytest.raises(ValueError, match=match):
    soft_think_sample(PARAMS, PROMPTS, **{**kw, **bad})
