"""Analysis tools over any tokenrl model (spec: shared/specs/analysis-and-auditing.md §1-§3).

  shapley   Shapley attribution of prompt parts (exact for n <= 12, antithetic permutations)
  af1       All-for-One: CAMA tables, AF1 / ABP masks, the restricted last-token forward
  af1_eval  AF1 grid sweeps, ablation baselines, necessity check, head pruning
  control   k-ε controllability: greedy back-generation, GCG, backoff search, ε̂(k), bound

Each is a pure function of params, tokens and the ModelConfig, built on `tokenrl.models.forward`
and its hooks (`tokenrl.models.Hooks`). `tokenrl analyze shapley|af1|control` wraps them.
"""

from tokenrl.analysis.af1 import (CamaTable, af1_forward, af1_masks, cama_from_residuals,
                                  cama_table, cama_tables, context_cut_masks, restricted_forward)
from tokenrl.analysis.af1_eval import AF1Eval, PruneStep, Score, pick_cell
# `gcg` the function stays in tokenrl.analysis.control: tokenrl.analysis.gcg is its module.
from tokenrl.analysis.control import (NOT_FOUND, ControlResult, attention_control_bound,
                                      backoff_control, backoff_control_batch,
                                      greedy_back_generation, k_epsilon_curve, onehot_grad,
                                      target_loss)
from tokenrl.analysis.shapley import (ShapleyResult, blackbox_attribution, coalition_tokens,
                                      exact_shapley, option_value_fn, permutation_shapley,
                                      shapley_attribution, shapley_weights, token_noise_share)

__all__ = [
    "CamaTable", "af1_forward", "af1_masks", "cama_from_residuals", "cama_table", "cama_tables",
    "context_cut_masks", "restricted_forward", "AF1Eval", "PruneStep", "Score", "pick_cell", "NOT_FOUND",
    "ControlResult", "attention_control_bound", "backoff_control", "backoff_control_batch",
    "greedy_back_generation", "k_epsilon_curve", "onehot_grad", "target_loss", "ShapleyResult",
    "blackbox_attribution", "coalition_tokens", "exact_shapley", "option_value_fn",
    "permutation_shapley", "shapley_attribution", "shapley_weights", "token_noise_share",
]
