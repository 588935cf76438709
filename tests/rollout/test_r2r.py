"""R2R (spec §15): scripted labels, the router's loss falls under training, τ = 0 / τ > 1 give
the LLM / SLM alone exactly, a mixed run emits each model's token where it was routed (the
LLM's cache holds every emitted token), and the routed fraction is what was routed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout import prepare_prompts, r2r, r2r_train, sample

SMALL_CFG = models.tiny("qwen2", vocab_size=16, dim=16, num_layers=2, num_heads=2,
                        num_kv_heads=1, mlp_dim=32, eos_ids=(1,), pad_id=0)
LARGE_CFG = models.tiny("qwen2", vocab_size=16, dim=32, num_layers=3, num_heads=4,
                        num_kv_heads=2, mlp_dim=48, eos_ids=(1,), pad_id=0)
SMALL = models.init_params(SMALL_CFG, jax.random.key(10))
LARGE = models.init_params(LARGE_CFG, jax.random.key(11))
ROUTER = r2r.init_router(jax.random.key(12), dim=16, logits_size=8, hidden_dims=(32, 16))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]


def test_labels_scripted_hand_case():
  y = np.array([[3, 4, 5, 6, 2]])
  s = np.array([[3, 7, 5, 2, 9]])  # differs at t = 1, 3, 4
  h = 4
  b_llm = np.zeros((1, 5, h), np.int32)
  b_slm = np.zeros((1, 5, h), np.int32)
  b_llm[0, 1], b_slm[0, 1] = [4, 5, 6, 9], [7, 5, 6, 9]  # re-joins at once: neutral
  b_llm[0, 3], b_slm[0, 3] = [6, 9, 1, 1], [2, 8, 8, 8]  # never re-joins: divergent
  b_llm[0, 4], b_slm[0, 4] = [2, 5, 6, 1], [9, 9, 5, 6]  # re-joins one token later: neutral
  labels = r2r.label_positions(y, s, b_slm, b_llm, sync=2)
  np.testing.assert_array_equal(labels, [[r2r.IDENTICAL, r2r.NEUTRAL, r2r.IDENTICAL,
                                          r2r.DIVERGENT, r2r.NEUTRAL]])
  # A stricter judge (any difference in the branch is divergent) flips the neutral ones.
  strict = r2r.label_positions(y, s, b_slm, b_llm, judge=lambda a, b: (a[:, 1:] != b[:, 1:]).any(1))
  np.testing.assert_array_equal(strict, [[0, 1, 0, 2, 2]])


def test_divergence_labels_pipeline():
  # SLM = LLM: every token identical.
  same = r2r.divergence_labels(LARGE, LARGE_CFG, LARGE, LARGE_CFG, PROMPTS, max_new_tokens=6,
                               horizon=3)
  assert np.all(same.labels_grid == r2r.IDENTICAL)
  data = r2r.divergence_labels(SMALL, SMALL_CFG, LARGE, LARGE_CFG, PROMPTS, max_new_tokens=6,
                               horizon=3)
  # Step 0: the LLM's greedy answer (a prefix of a longer greedy answer).
  longer = np.asarray(sample(LARGE, PROMPTS, config=LARGE_CFG, rng=jax.random.key(0),
                             max_new_tokens=9, temperature=0.0, stop_tokens=()).tokens)
  np.testing.assert_array_equal(data.llm_tokens, longer[:, :6])
  np.testing.assert_array_equal(data.labels_grid != r2r.IDENTICAL,
                                data.slm_tokens != data.llm_tokens)
  assert (data.labels_grid != r2r.IDENTICAL).any()
  # Step 1: the SLM's teacher-forced greedy token, recomputed for one row.
  seq = jnp.asarray([PROMPTS[0] + data.llm_tokens[0].tolist()])
  logits, _ = models.forward(SMALL, seq, config=SMALL_CFG)
  np.testing.assert_array_equal(data.slm_tokens[0],
                                np.argmax(np.asarray(logits[0, 2:2 + 6]), -1))
  # Steps 2-3 by hand at every differing position: the LLM's 2 greedy tokens after
  # (y_<t, ŝ_t) vs its own (y_t, y_t+1, y_t+2); neutral iff the SLM branch's last 2 tokens
  # occur in the LLM branch.
  rows, cols = np.nonzero(data.labels_grid)
  conts = np.asarray(sample(
      LARGE, [PROMPTS[r] + data.llm_tokens[r, :c].tolist() + [int(data.slm_tokens[r, c])]
              for r, c in zip(rows, cols)], config=LARGE_CFG, rng=jax.random.key(0),
      max_new_tokens=2, temperature=0.0, stop_tokens=()).tokens)
  for (r, c), cont in zip(zip(rows, cols), conts):
    b_slm = [int(data.slm_tokens[r, c])] + cont.tolist()
    b_llm = longer[r, c:c + 3].tolist()
    joined = any(b_llm[i:i + 2] == b_slm[1:] for i in range(2))
    assert data.labels_grid[r, c] == (r2r.NEUTRAL if joined else r2r.DIVERGENT)
  assert data.hidden.shape == (18, 16) and data.logits.shape == (18, 16)


def test_weighted_bce_and_threshold_hand_values():
  # s = 0: each term is log 2; w₊ = 3: mean(3·log 2, log 2) = 2·log 2.
  loss = r2r_train.weighted_bce(jnp.zeros(2), jnp.asarray([1.0, 0.0]), 3.0)
  assert float(loss) == pytest.approx(2 * np.log(2), rel=1e-6)
  assert r2r_train.positive_weight([1, 0, 0, 0], recall_factor=2.0) == 6.0
  # Positives scored 0.9, 0.8, 0.3, 0.2: recall ≥ 0.75 needs 3 of them → τ = 0.3.
  scores, labels = [0.9, 0.1, 0.8, 0.3, 0.5, 0.2], [1, 0, 1, 1, 0, 1]
  assert r2r_train.recall_threshold(scores, labels, min_recall=0.75) == 0.3
  assert r2r_train.recall_threshold(scores, labels, min_recall=1.0) == 0.2
  assert r2r_train.recall_threshold(scores, [0] * 6) == 0.0


def test_router_training_reduces_loss():
  # Synthetic: 512 rows, divergent (~20%) iff the first hidden unit is large.
  key = jax.random.key(3)
  hidden = jax.random.normal(key, (512, 16))
  token = jax.random.randint(jax.random.key(4), (512,), 0, 16)
  logits = jax.random.normal(jax.random.key(5), (512, 16))
  inputs = r2r.router_features(SMALL, hidden, token, logits, logits_size=8)
  targets = (hidden[:, 0] > 0.85).astype(jnp.float32)
  w = r2r_train.positive_weight(np.asarray(targets))
  before = r2r_train.eval_loss(ROUTER, inputs, targets, w)
  params, losses = r2r_train.train_router(ROUTER, inputs, targets, rng=jax.random.key(6),
                                          steps=60, batch_size=128, learning_rate=3e-3)
  after = r2r_train.eval_loss(params, inputs, targets, w)
  assert after < 0.5 * before
  assert losses[-10:].mean() < losses[:10].mean()
  # The frozen SLM embedding is an input, not a parameter: training leaves SMALL untouched
  # and the router's params keep their structure.
  assert jax.tree.structure(params) == jax.tree.structure(ROUTER)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_threshold_extremes_equal_single_models(temperature):
  kw = dict(rng=jax.random.key(7), max_new_tokens=8, temperature=temperature, stop_tokens=(14,),
            num_samples=2)
  out, info = r2r.r2r_sample(SMALL, SMALL_CFG, LARGE, LARGE_CFG, ROUTER, PROMPTS, threshold=0.0,
                             **kw)
  ref = sample(LARGE, PROMPTS, config=LARGE_CFG, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  assert float(info.routed_fraction) == 1.0
  np.testing.assert_array_equal(info.routed, np.asarray(out.mask) == 1)
  out, info = r2r.r2r_sample(SMALL, SMALL_CFG, LARGE, LARGE_CFG, ROUTER, PROMPTS, threshold=1.5,
                             **kw)
  ref = sample(SMALL, PROMPTS, config=SMALL_CFG, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  assert float(info.routed_fraction) == 0.0 and not np.asarray(info.routed).any()


def test_mixed_routing_tokens_and_fraction():
  # num_samples=2 as above: the same compiled decode loop.
  kw = dict(rng=jax.random.key(8), max_new_tokens=8, temperature=0.0, stop_tokens=(14,),
            num_samples=2)
  _, probe = r2r.r2r_sample(SMALL, SMALL_CFG, LARGE, LARGE_CFG, ROUTER, PROMPTS, threshold=0.0,
                            **kw)
  tau = float(np.median(np.asarray(probe.score)))  # some tokens routed, some not
  out, info = r2r.r2r_sample(SMALL, SMALL_CFG, LARGE, LARGE_CFG, ROUTER, PROMPTS, threshold=tau,
                             **kw)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  routed, score = np.asarray(info.routed), np.asarray(info.score)
  np.testing.assert_array_equal(routed, (score >= tau) & (mask == 1))
  assert float(info.routed_fraction) == pytest.approx(routed.sum() / mask.sum())
  assert 0 < routed.sum() < mask.sum()
  # Teacher-forced check: a routed token is the LLM's greedy choice given everything emitted
  # before it (so the LLM did process every emitted token), an unrouted one the SLM's.
  rows = [p for p in PROMPTS for _ in range(2)]
  seqs, seg = prepare_prompts([p + tokens[i].tolist() for i, p in enumerate(rows)], 0,
                              bucket=False)
  at = slice(seqs.shape[1] - 9, seqs.shape[1] - 1)  # the states predicting the 8 tokens
  pick = lambda params, cfg: np.argmax(np.asarray(models.forward(
      params, jnp.asarray(seqs), config=cfg, segment_ids=jnp.asarray(seg))[0][:, at]), -1)
  expect = np.where(routed, pick(LARGE, LARGE_CFG), pick(SMALL, SMALL_CFG))
  np.testing.assert_array_equal(tokens[mask == 1], expect[mask == 1])
