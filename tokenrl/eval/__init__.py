"""Evaluation: greedy accuracy, unbiased pass@k, majority vote."""

from tokenrl.eval.evaluate import evaluate
from tokenrl.eval.passk import majority_correct, pass_at_k

__all__ = ["evaluate", "majority_correct", "pass_at_k"]
