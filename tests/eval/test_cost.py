"""Cost-of-pass (spec §16): v = E[cost] / E[correct] (∞ when never correct), the frontier as the
per-problem minimum over models and the expert baseline, then the mean over problems."""

import numpy as np
import pytest

from tokenrl.eval.cost import (PriceTable, attempt_cost, cost_of_pass, frontier_cost_of_pass,
                               frontier_per_problem, marginal_gain, parse_price_table,
                               task_cost_of_pass, tokens_of_pass)


def test_cost_of_pass_hand_cases():
  # R = 0.5, C = $0.01 -> $0.02; R = 0 -> ∞.
  assert cost_of_pass([0.01, 0.01], [1, 0]) == pytest.approx(0.02)
  assert cost_of_pass([0.01, 0.01], [0, 0]) == np.inf
  # Ratio of means, not mean of ratios: (0.01 + 0.03)/2 / (1/2) = 0.04.
  assert cost_of_pass([0.01, 0.03], [1, 0]) == pytest.approx(0.04)
  per_problem = cost_of_pass([[0.01, 0.01], [0.02, 0.04]], [[1, 0], [1, 1]])
  np.testing.assert_allclose(per_problem, [0.02, 0.03])
  assert task_cost_of_pass([[0.01, 0.01], [0.02, 0.04]], [[1, 0], [1, 1]]) == pytest.approx(0.025)
  assert task_cost_of_pass([[1.0], [1.0]], [[1], [0]]) == np.inf
  assert tokens_of_pass([100, 300], [1, 1]) == pytest.approx(200.0)
  with pytest.raises(ValueError, match="costs, correct"):
    cost_of_pass([0.01, 0.02], [1])


def test_attempt_cost_and_price_parser():
  prices = parse_price_table("in=0.15, out=0.6")
  assert prices == PriceTable(0.15, 0.6)
  # 2000 prompt tokens at $0.15/1M + 1000 completion at $0.60/1M = 0.0003 + 0.0006.
  assert attempt_cost(2000, 1000, prices) == pytest.approx(0.0009)
  np.testing.assert_allclose(attempt_cost([0, 1e6], [1e6, 0], prices), [0.6, 0.15])
  for text, field in [("in=0.15,out=abc", "'out'"), ("in=0.15,outt=0.6", "'outt'"),
                      ("in=0.15", "'out'"), ("in=0.1,in=0.2,out=1", "'in'"),
                      ("in=-1,out=1", "'in'"), ("in=0.15,out", "'out'")]:
    with pytest.raises(ValueError, match=field):
      parse_price_table(text)
  with pytest.raises(ValueError, match="completion_price_per_1m"):
    PriceTable(0.1, float("nan"))


def test_frontier_is_elementwise_min_including_expert():
  # Three problems. v(A) = [0.02, ∞, 0.5], v(B) = [0.05, 0.10, 0.3], expert = 0.2 each.
  # V_p = [min(0.02, 0.05, 0.2), min(∞, 0.10, 0.2), min(0.5, 0.3, 0.2)] = [0.02, 0.10, 0.2].
  models = {"A": np.array([0.02, np.inf, 0.5]), "B": np.array([0.05, 0.10, 0.3])}
  np.testing.assert_allclose(frontier_per_problem(models, 0.2), [0.02, 0.10, 0.2])
  assert frontier_cost_of_pass(models, 0.2) == pytest.approx(0.32 / 3)
  # Without the expert problem 2's frontier is min(0.5, 0.3) = 0.3; a per-problem expert works.
  assert frontier_cost_of_pass(models) == pytest.approx(0.42 / 3)
  np.testing.assert_allclose(frontier_per_problem(models, [0.01, 1.0, 1.0]), [0.01, 0.10, 0.3])
  assert frontier_cost_of_pass({}, [1.0, 2.0]) == pytest.approx(1.5)


def test_infinite_frontier_raises_naming_the_problems():
  models = {"A": np.array([0.02, np.inf, np.inf]), "B": np.array([0.05, np.inf, 0.3])}
  with pytest.raises(ValueError, match=r"problems \[1\]"):
    frontier_cost_of_pass(models)
  with pytest.raises(ValueError, match=r"per_model\['B'\]"):
    frontier_cost_of_pass({"A": np.ones(3), "B": np.ones(2)})


def test_marginal_gain():
  # M = {A}: V = [0.02, ∞, 0.5]; adding m = [0.05, 0.1, 0.3] gives [0.02, 0.1, 0.3].
  models = {"A": np.array([0.02, np.inf, 0.5])}
  m = np.array([0.05, 0.1, 0.3])
  np.testing.assert_allclose(marginal_gain(models, m), [0.0, np.inf, 0.2])
  np.testing.assert_allclose(marginal_gain(models, m, expert_cop=0.4), [0.0, 0.3, 0.1])
  np.testing.assert_allclose(marginal_gain({}, np.array([np.inf, 1.0])), [0.0, np.inf])
