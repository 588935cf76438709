"""NuRL (spec §8): the hand-worked mixed group, reduction to GRPO, and the nudging glue."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.objectives.test_guide import EXAMPLES, FakePolicy, fake_ctx
from tokenrl.methods import METHODS
from tokenrl.methods.base import default_shape
from tokenrl.objectives import group_relative_advantages
from tokenrl.objectives.nurl import nudged_rows, nurl_advantages


def test_spec_mixed_group():
  first = jnp.zeros(4)                                  # pass rate 0 -> nudged
  hinted = jnp.array([0.0, 1.0, 1.0, 0.0])              # rows 1..3 hinted: [1, 1, 0]
  trig = jnp.array([True])
  assert nudged_rows(trig, 4).tolist() == [False, True, True, True]
  a = nurl_advantages(first, hinted, trig, 4, epsilon=0.0)
  np.testing.assert_allclose(a, [-0.866, 0.866, 0.866, -0.866], atol=1e-3)
  dr = nurl_advantages(first, hinted, trig, 4, scale_rewards="none")
  np.testing.assert_allclose(dr, [-0.5, 0.5, 0.5, -0.5], atol=1e-6)


def test_no_triggered_group_equals_grpo():
  r = jnp.array([1.0, 0, 0, 1, 0, 1, 1, 1])
  got = nurl_advantages(r, jnp.full(8, 5.0), jnp.array([False, False]), 4)
  np.testing.assert_allclose(got, group_relative_advantages(r, 4), atol=1e-7)


def test_bad_inputs():
  with pytest.raises(ValueError, match="keep_unhinted"):
    nudged_rows(jnp.array([True]), 4, keep_unhinted=4)
  with pytest.raises(ValueError, match="triggered"):
    nurl_advantages(jnp.zeros(8), jnp.zeros(8), jnp.array([True]), 4)
  with pytest.raises(ValueError, match="hinted_rewards"):
    nurl_advantages(jnp.zeros(8), jnp.zeros(4), jnp.array([True, False]), 4)


def test_rollout_without_failing_groups_is_grpo():
  policy = FakePolicy(EXAMPLES, solved=["12+7=", "3+4="])
  ctx = fake_ctx("nurl", policy, overrides={"hint_source": "example"})
  data = METHODS["nurl"].rollout(ctx)
  assert len(policy.sampled) == 1 and data.metrics["hint_rate"] == 0.0
  assert data.extra == {}                                # context='hinted': on-policy, no extras


def test_hinted_context_keeps_one_failure_and_trains_on_hinted_prompt():
  policy = FakePolicy(EXAMPLES, solved=["3+4="])
  ctx = fake_ctx("nurl", policy, overrides={"hint_source": "example"})
  data = METHODS["nurl"].rollout(ctx)
  assert policy.sampled[1] == ["hint: 2 chars\n12+7="]   # abstract 'length' hint
  assert data.texts[:4] == ["0", "19", "19", "19"]        # row 0 = the kept original failure
  P = data.prompt_len
  decode = lambda row: ctx.tokenizer.decode(data.tokens[row, :P], skip_special_tokens=True)
  assert decode(0) == "12+7=" and decode(1) == "hint: 2 chars\n12+7=" and decode(4) == "3+4="
  assert data.segment_ids[0, :P].sum() == 6 and data.segment_ids[1, :P].sum() == 20
  data = default_shape(ctx, data)
  np.testing.assert_allclose(data.advantages[:4], [-1.5, 0.5, 0.5, 0.5], atol=1e-5)
  assert data.metrics["hinted_accuracy"] == 1.0


def test_unhinted_is_context_uses_guide_arrays():
  policy = FakePolicy(EXAMPLES, solved=["3+4="])
  ctx = fake_ctx("nurl", policy, overrides={"hint_source": "example", "context": "unhinted_is"})
  data = METHODS["nurl"].rollout(ctx)
  P = data.prompt_len
  assert ctx.tokenizer.decode(data.tokens[1, :P], skip_special_tokens=True) == "12+7="
  np.testing.assert_array_equal(data.extra["guide_offpolicy"], [0, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(data.extra["guide_behav_logp"][1], -0.1 * 20, atol=1e-6)


def test_self_hints_are_generated_once_and_never_reveal_the_answer():
  policy = FakePolicy(EXAMPLES, solved=["3+4="])
  ctx = fake_ctx("nurl", policy, overrides={"rationale_max_tokens": 3, "hint_max_tokens": 3})
  METHODS["nurl"].rollout(ctx)
  # The fake policy's "hint" is its answer '0' for an unsolved prompt: accepted (not the answer).
  assert policy.sampled[1] == ["12+7=19\nwhy:"]
  assert policy.sampled[2] == ["12+7=19\nwhy:0\nhint:"]
  assert ctx.state["nurl_hints"] == {"12+7=": "0"}
  n_calls = len(policy.sampled)
  METHODS["nurl"].rollout(ctx)                           # cached: no new hint generation
  assert len(policy.sampled) == n_calls + 2
