"""LaSeR test-time self-rewards: the score is β_v·(log π(z_c | x, y) − c_ref) read right after
EOS (equal to appending z_c and taking its teacher-forced log-prob), truncated rows score 0,
best-of-N keeps the argmax, weighted majority vote."""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.eval import self_reward as sr
from tokenrl.train.steps import completion_logprobs

CONFIG = models.tiny("qwen2", vocab_size=12, dim=16, num_heads=2, num_kv_heads=1, mlp_dim=24,
                     eos_ids=(2,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
Z = 11


def test_scores_equal_appended_token_logprob():
  prompt = np.array([[0, 1, 5, 6], [1, 7, 8, 9]], np.int32)
  pmask = (prompt != 0).astype(np.int32)
  pmask[1] = 1
  comp = np.array([[4, 2, 0, 0], [3, 5, 6, 7]], np.int32)          # row 1: no EOS (truncated)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
  raw = sr.self_reward_scores(PARAMS, prompt, pmask, comp, mask, config=CONFIG, token_id=Z,
                              beta_v=0.1, c_ref=-5.0, clip=False)
  # Reference: write z_c right after row 0's EOS and read its teacher-forced log-prob.
  ext = np.concatenate([prompt, comp], 1)[:1].copy()
  ext[0, 4 + 2] = Z
  lp, _ = completion_logprobs(PARAMS, ext, np.ones_like(ext) * np.r_[pmask[0], [1] * 4], 4,
                              config=CONFIG)
  np.testing.assert_allclose(raw[0], 0.1 * (float(lp[0, 2]) + 5.0), rtol=1e-5)
  assert raw[1] == 0.0
  clipped = sr.self_reward_scores(PARAMS, prompt, pmask, comp, mask, config=CONFIG, token_id=Z,
                                  beta_v=0.1, c_ref=-5.0)
  np.testing.assert_allclose(clipped, np.clip(raw, 0, 1), rtol=1e-6)


def test_best_of_n_returns_the_top_scored_sample():
  out = sr.laser_best_of_n(PARAMS, [[1, 5, 6], [1, 7]], config=CONFIG, rng=jax.random.key(1),
                           n=4, max_new_tokens=3, token_id=Z, beta_v=0.1, c_ref=-5.0)
  assert out.scores.shape == (2, 4) and out.tokens.shape == (2, 3)
  for b in range(2):
    i = int(np.argmax(out.scores[b]))
    assert out.index[b] == i
    np.testing.assert_array_equal(out.tokens[b], out.all_tokens[b * 4 + i])


def test_weighted_majority_vote():
  assert sr.weighted_majority_vote(["3", "4", "4"], [0.9, 0.3, 0.4]) == "3"
  assert sr.weighted_majority_vote(["3", "4", "4"], [0.5, 0.3, 0.4]) == "4"
  assert sr.weighted_majority_vote(["3", "4"], [2.0, 0.9]) == "3"      # scores clipped to 1
  with pytest.raises(ValueError, match="answers"):
    sr.weighted_majority_vote([], [])


def test_bad_inputs():
  with pytest.raises(ValueError, match="token_id"):
    sr.self_reward_scores(PARAMS, np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 2)),
                          np.ones((1, 2)), config=CONFIG, token_id=12)
  with pytest.raises(ValueError, match="mask"):
    sr.self_reward_scores(PARAMS, np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 2)),
                          np.ones((1, 3)), config=CONFIG, token_id=3)
  with pytest.raises(ValueError, match="n"):
    sr.laser_best_of_n(PARAMS, [[1]], config=CONFIG, rng=jax.random.key(0), n=0,
                       max_new_tokens=2, token_id=3)
