"""Evaluation: greedy accuracy, pass@k, majority vote, selection strategies, cost-of-pass."""

from tokenrl.eval.cost import (PriceTable, attempt_cost, cost_of_pass, frontier_cost_of_pass,
                               frontier_per_problem, marginal_gain, parse_price_table,
                               task_cost_of_pass, tokens_of_pass)
from tokenrl.eval.evaluate import evaluate
from tokenrl.eval.passk import majority_correct, pass_at_k
from tokenrl.eval.selection import (best_of_majority, best_of_n, ffs_token_cost, first_finish,
                                    majority_vote, strategy_pass_at_k)

__all__ = ["PriceTable", "attempt_cost", "best_of_majority", "best_of_n", "cost_of_pass",
           "evaluate", "ffs_token_cost", "first_finish", "frontier_cost_of_pass",
           "frontier_per_problem", "majority_correct", "majority_vote", "marginal_gain",
           "parse_price_table", "pass_at_k", "strategy_pass_at_k", "task_cost_of_pass",
           "tokens_of_pass"]
