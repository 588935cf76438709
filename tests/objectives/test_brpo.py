"""AnytimeReasoner / BRPO (spec §9): the 2-budget hand-worked case, invariants, host helpers."""

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.methods import brpo as m
from tokenrl.objectives import brpo


def test_spec_two_budget_case():
  # G = 2, S = 2, A = 1, linear prior over budgets (2000, 4000): p = [1/3, 2/3].
  p = brpo.budget_prior(jnp.array([2000, 4000]), "linear")
  np.testing.assert_allclose(p, [1 / 3, 2 / 3], rtol=1e-6)
  r = jnp.array([[[[0.0], [1.0]], [[1.0], [1.0]]]])            # [B=1,G=2,S=2,A=1]
  R = brpo.budget_scores(r)
  np.testing.assert_allclose(R[0], [[0, 1], [1, 1]])
  a = brpo.thinking_advantages(R, p)
  np.testing.assert_allclose(a[0], [[-1 / 6, 1 / 3], [1 / 6, 0.0]], atol=1e-6)
  s = brpo.summary_advantages(r)
  np.testing.assert_allclose(s[0, :, :, 0], [[-0.5, 0.0], [0.5, 0.0]], atol=1e-6)


def test_baseline_components_of_the_spec_case():
  # RT = [[2/3, 2/3], [1, 2/3]], V2 = [5/6, 2/3]; 'v2only' gives RT − V2.
  p = jnp.array([1 / 3, 2 / 3])
  R = jnp.array([[[0.0, 1.0], [1.0, 1.0]]])
  v2 = brpo.thinking_advantages(R, p, variance_reduction="v2only")
  np.testing.assert_allclose(v2[0], [[2 / 3 - 5 / 6, 0.0], [1 - 5 / 6, 0.0]], atol=1e-6)


def test_priors():
  b = jnp.array([1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(brpo.budget_prior(b, "uniform"), [0.25] * 4)
  np.testing.assert_allclose(brpo.budget_prior(b, "linear"), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  np.testing.assert_allclose(brpo.budget_prior(b, "base"), [0, 0, 0, 1])


def test_single_budget_v2only_is_grpo_without_std():
  # The GRPO baseline run: S = 1, A = 1, 'v2only' ⇒ A = r − mean_g r.
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]).reshape(2, 3, 1, 1)
  R = brpo.budget_scores(r)
  a = brpo.thinking_advantages(R, brpo.budget_prior(jnp.array([8]), "base"),
                               variance_reduction="v2only")
  np.testing.assert_allclose(a.reshape(-1), [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], atol=1e-6)
  # With S = 1 the BRPO mix is V2 alone (s = 0 has no V1 term).
  np.testing.assert_allclose(brpo.thinking_advantages(R, jnp.array([1.0])), a, atol=1e-6)


def test_equal_scores_give_zero_thinking_advantage_at_first_segment():
  R = jnp.ones((1, 4, 3))
  a = brpo.thinking_advantages(R, brpo.budget_prior(jnp.array([1, 2, 3]), "uniform"))
  np.testing.assert_allclose(a[..., 0], 0.0, atol=1e-6)


def test_summary_methods():
  r = jnp.array([1.0, 0.0, 1.0, 1.0]).reshape(1, 1, 2, 2)     # A = 2: mean over summaries
  np.testing.assert_allclose(brpo.summary_advantages(r)[0, 0], [[0.5, -0.5], [0, 0]])
  r = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 2, 2)
  g = brpo.summary_advantages(r, summary_method="grpo")[0, 0]
  np.testing.assert_allclose(g, [[0, 0], [-0.5, 0.5]])


def test_segment_token_advantages():
  a = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  out = brpo.segment_token_advantages(a, (2, 4), 5)
  np.testing.assert_allclose(out, [[1, 1, 2, 2, 0], [3, 3, 4, 4, 0]])


def test_bad_inputs():
  with pytest.raises(ValueError, match="scores"):
    brpo.thinking_advantages(jnp.zeros((2, 2)), jnp.ones(2))
  with pytest.raises(ValueError, match="prior"):
    brpo.thinking_advantages(jnp.zeros((1, 2, 2)), jnp.ones(3))
  with pytest.raises(ValueError, match="variance_reduction"):
    brpo.thinking_advantages(jnp.zeros((1, 2, 2)), jnp.ones(2), variance_reduction="x")
  with pytest.raises(ValueError, match="summary_rewards"):
    brpo.summary_advantages(jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="kind"):
    brpo.budget_prior(jnp.ones(2), "cubic")
  with pytest.raises(ValueError, match="budgets"):
    brpo.segment_token_advantages(jnp.zeros((1, 2)), (3, 2), 4)


# ---- host side -------------------------------------------------------------------------------


def test_budget_schedule():
  assert m.budget_schedule(8000, 4) == (2000, 4000, 6000, 8000)
  assert m.budget_schedule(8, 3) == (2, 5, 8)
  with pytest.raises(ValueError):
    m.budget_schedule(2, 3)


def test_split_trace():
  assert m.split_trace([5, 6, 2], close_id=9, eos_ids=[2]) == ([5, 6], False, True)
  assert m.split_trace([5, 6, 9], close_id=9, eos_ids=[2]) == ([5, 6, 9], True, False)
  assert m.split_trace([5, 6], close_id=9, eos_ids=[2]) == ([5, 6], False, False)


def test_summary_continuation_cut_full_and_unclosed():
  kw = dict(cut_ids=[7, 7], close_id=9, header_ids=[8])
  # Closed trace of 3 tokens (incl. close) within budget 4: reused whole + header.
  assert m.summary_continuation([1, 2, 9], 4, closed=True, **kw) == ([1, 2, 9, 8], 1, False)
  # Longer than the budget: cut, marker, forced close, header; 4 inserted ids.
  assert m.summary_continuation([1, 2, 3, 9], 2, closed=True, **kw) == ([1, 2, 7, 7, 9, 8], 4, True)
  # Never closed (hit the cap or EOS) but within the budget: still gets the forced close.
  assert m.summary_continuation([1, 2], 4, closed=False, **kw) == ([1, 2, 7, 7, 9, 8], 4, True)


def test_dense_rewards():
  correct = np.array([[[1, 1]], [[1, 0]]], bool)               # [N=2,S=1,A=2]
  extra = np.array([[[0, 1]], [[0, 0]]], bool)
  r = m.dense_summary_rewards(correct, extra, np.array([False, True]))
  np.testing.assert_array_equal(r, [[[1, 0]], [[0, 0]]])
  r = m.dense_summary_rewards(correct, extra, np.array([False, True]), eos_scores_zero=False)
  np.testing.assert_array_equal(r, [[[1, 0]], [[1, 0]]])
  with pytest.raises(ValueError, match="hit_eos"):
    m.dense_summary_rewards(correct, extra, np.zeros(3, bool))


def test_char_tokenizer_delimiters_are_single_tokens():
  from tokenrl.data.char_tokenizer import CharTokenizer
  c = m.Brpo().config()
  tok = CharTokenizer()
  assert len(tok.encode(c.think_end, add_special_tokens=False)) == 1
  # The arithmetic answers never contain the delimiter characters.
  assert not set(c.think_end + c.cut_marker) & set("0123456789-")
