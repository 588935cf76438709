"""Evaluation: greedy accuracy, pass@k, majority vote, selection strategies, cost-of-pass, and the
suite behind `tokenrl eval` (suite.py: every strategy from one set of samples; report.py: markdown,
JSON, plots; control_build.py: the sampler.control section as a logit processor)."""

from tokenrl.eval.control_build import build_control
from tokenrl.eval.cost import (PriceTable, attempt_cost, cost_of_pass, frontier_cost_of_pass,
                               frontier_per_problem, marginal_gain, parse_price_table,
                               task_cost_of_pass, tokens_of_pass)
from tokenrl.eval.evaluate import evaluate
from tokenrl.eval.passk import majority_correct, pass_at_k
from tokenrl.eval.report import load_results, markdown, write_report
from tokenrl.eval.selection import (best_of_majority, best_of_n, ffs_token_cost, first_finish,
                                    majority_vote, strategy_pass_at_k)
from tokenrl.eval.suite import (STRATEGIES, SuiteSamples, answer_fn_for, collect, frontier,
                                make_score_fn, run_suite, score_strategies)

__all__ = ["PriceTable", "STRATEGIES", "SuiteSamples", "answer_fn_for", "attempt_cost",
           "best_of_majority", "best_of_n", "build_control", "collect", "cost_of_pass",
           "evaluate", "ffs_token_cost", "first_finish", "frontier", "frontier_cost_of_pass",
           "frontier_per_problem", "load_results", "majority_correct", "majority_vote",
           "make_score_fn", "marginal_gain", "markdown", "parse_price_table", "pass_at_k",
           "run_suite", "score_strategies", "strategy_pass_at_k", "task_cost_of_pass",
           "tokens_of_pass", "write_report"]
