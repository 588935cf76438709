"""MRT (spec §11): the hand-worked progress bonus, repository variant, α = 0 = GRPO, and the
forced-answer estimator of J on a fake step context."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.objectives.test_guide import EXAMPLES, TOK, FakePolicy, fake_ctx
from tokenrl.data.prompts import left_pad
from tokenrl.methods import METHODS
from tokenrl.methods.base import default_rollout
from tokenrl.methods.mrt import forced_success
from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives.mrt import (budget_boundaries, episode_index, episode_progress,
                                    progress_advantages, termination_baseline_advantages)
from tokenrl.types import Rollout

J = jnp.array([[0.2, 0.5, 0.4]])                  # J(x), after episode 0, after episode 1
B2 = jnp.array([[0, 2, 4]])                       # two episodes of 2 tokens
M4 = jnp.ones((1, 4), jnp.int32)


def test_spec_progress_and_token_advantages():
  np.testing.assert_allclose(episode_progress(J), [[0.3, -0.1]], atol=1e-6)
  a = progress_advantages(jnp.array([0.5]), J, B2, M4, alpha=1.0)
  np.testing.assert_allclose(a, [[0.8, 0.8, 0.4, 0.4]], atol=1e-6)


def test_spec_repository_variant():
  a = termination_baseline_advantages(jnp.array([1.0]), J, B2, M4)
  np.testing.assert_allclose(a[0, 2:], [0.5, 0.5], atol=1e-6)       # J(c) = 0.5, outcome 1
  np.testing.assert_allclose(a[0, :2], [0.8, 0.8], atol=1e-6)       # from J(x) = 0.2


def test_alpha_zero_equals_grpo():
  rng = np.random.default_rng(0)
  r = jnp.asarray(rng.integers(0, 2, 8), jnp.float32)
  mask = jnp.asarray(np.arange(6)[None] < rng.integers(1, 7, 8)[:, None], jnp.int32)
  b = budget_boundaries(mask.sum(axis=1), 3, 6)
  grpo = group_relative_advantages(r, 4)
  a = progress_advantages(grpo, jnp.asarray(rng.random((8, 4)), jnp.float32), b, mask, alpha=0.0)
  np.testing.assert_allclose(a, np.where(np.asarray(mask) > 0, np.asarray(grpo)[:, None], 0.0))


def test_budget_boundaries_and_episode_index():
  b = budget_boundaries(jnp.array([6, 3, 1]), 3, 6)
  np.testing.assert_array_equal(b, [[0, 2, 4, 6], [0, 2, 3, 3], [0, 1, 1, 1]])
  np.testing.assert_array_equal(episode_index(b, 6), [[0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 2],
                                                      [0, 2, 2, 2, 2, 2]])
  # The per-episode progress telescopes to J(end) − J(x) along a completion.
  j = jnp.array([[0.1, 0.4, 0.2, 0.9]])
  np.testing.assert_allclose(episode_progress(j).sum(), 0.8, atol=1e-6)


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_episodes"):
    budget_boundaries(jnp.array([3]), 0, 6)
  with pytest.raises(ValueError, match="success"):
    progress_advantages(jnp.array([0.5]), J[:, :2], B2, M4)
  with pytest.raises(ValueError, match="outcome_advantages"):
    progress_advantages(jnp.array([0.5, 1.0]), J, B2, M4)
  with pytest.raises(ValueError, match="boundaries"):
    termination_baseline_advantages(jnp.array([1.0]), J, B2[:, :1], M4)


def forced_sample(prompts, *, num_samples=1, max_new_tokens=4, **unused):
  """Forced answers: after a prefix of b completion characters, b + 1 of 4 samples are right."""
  del unused
  answers = {ex["prompt"]: ex["answer"] for ex in EXAMPLES}
  rows, masks = [], []
  for p in prompts:
    text = TOK.decode(p, skip_special_tokens=True)
    prompt = text[:text.index("=") + 1]
    prefix = text[len(prompt):]
    answer = answers[prompt]
    for s in range(num_samples):
      good = s < len(prefix) + 1 and answer.startswith(prefix)
      ids = TOK.encode(answer[len(prefix):] if good else "5", add_special_tokens=False) + [2]
      rows.append(ids + [0] * (max_new_tokens - len(ids)))
      masks.append([1] * len(ids) + [0] * (max_new_tokens - len(ids)))
  n = len(rows)
  ptok, _ = left_pad(prompts, 0)
  ptok = np.repeat(ptok, num_samples, axis=0)
  return Rollout(tokens=np.asarray(rows, np.int32), mask=np.asarray(masks, np.int32),
                 logprobs=np.zeros((n, max_new_tokens), np.float32),
                 entropy=np.zeros((n, max_new_tokens), np.float32), prompt_tokens=ptok,
                 prompt_mask=(ptok != 0).astype(np.int32), truncated=np.zeros(n, bool))


def test_forced_answer_estimator_and_method_advantages():
  policy = FakePolicy(EXAMPLES, solved=["12+7="])      # group 0: '19' (right), group 1: '0'
  ctx = fake_ctx("mrt", policy, overrides={"num_episodes": 2})
  data = default_rollout(ctx)
  ctx.sample = forced_sample
  b = np.asarray(budget_boundaries(jnp.asarray(data.lengths), 2, 4))
  np.testing.assert_array_equal(b[[0, 4]], [[0, 2, 3], [0, 2, 2]])
  J, contexts = forced_success(ctx, data, b, ctx.section)
  assert contexts == 3                                 # '12+7=', '12+7=19', '3+4=' (shared)
  np.testing.assert_allclose(J[:4], [[0.25, 0.75, 1.0]] * 4)  # finished at 3: own correctness
  np.testing.assert_allclose(J[4:], [[0.25, 0.0, 0.0]] * 4)   # finished at 2: wrong answer
  data = METHODS["mrt"].shape(ctx, data)               # GRPO A = 0 in both (uniform) groups
  np.testing.assert_allclose(data.advantages[0], [0.5, 0.5, 0.25, 0.0], atol=1e-6)
  np.testing.assert_allclose(data.advantages[4], [-0.25, -0.25, 0.0, 0.0], atol=1e-6)
  assert data.metrics["forced_contexts"] == 3.0
  np.testing.assert_allclose(data.metrics["j_prompt_mean"], 0.25)
