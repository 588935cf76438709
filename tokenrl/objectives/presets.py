"""The objective presets and option lists: pure data, no config object and no methods.

`GRPO_DEFAULTS` is the GRPO family's policy-loss/advantage options as the frameworks default
them; each entry of `OBJECTIVES` overrides some of them. `POLICY_LOSS_OPTIONS` names the resolved
options that are `policy_loss` keyword arguments; `OPTION_CHOICES` lists the valid values of the
string options. The locked `rl` config section and `resolve_objective`, which also need the
registered methods, live one layer up in tokenrl/methods/config.py.
"""

from typing import Any

from tokenrl.objectives import advantages as adv_lib
from tokenrl.objectives import kl as kl_lib
from tokenrl.objectives import policy_loss as pl_lib

# GRPO (DeepSeekMath, spec §1.1) as framework defaults have it; every other objective starts here.
# beta = 0: no KL term and no reference model (TRL's default since DAPO/Dr.GRPO found the KL
# unnecessary with verifiable rewards; spec §1.2–1.4 all use β = 0). DeepSeekMath used 0.04.
GRPO_DEFAULTS = dict(
    advantage_estimator="grpo",         # 'grpo' (group-relative) | 'rloo' | 'gae' (needs a value head)
    scale_rewards="group",              # 'group' | 'batch' | 'none' (TRL name; 'none' = Dr.GRPO)
    epsilon=0.2,                        # ε_l: ratio clipped below at 1 − ε_l
    epsilon_high=0.2,                   # ε_h: ratio clipped above at 1 + ε_h (DAPO clip-higher)
    clip_ratio_c=0.0,                   # dual clip c > 1 for A < 0 (verl name); 0 = off
    importance_sampling_level="token",  # 'token' | 'sequence' (GSPO, TRL name)
    loss_agg_mode="seq-mean-token-mean",  # verl name: original GRPO per-sequence normalisation
    loss_scale_factor=0.0,              # L_norm of 'seq-mean-token-sum-norm'; 0 = padded length T
    beta=0.0,                           # KL coefficient (see comment above)
    dynamic_sampling=False,             # DAPO: drop groups whose rewards are all equal, refill
    overlong_buffer_len=0,              # DAPO soft overlong buffer L_buf in tokens; 0 = off
)

# Each objective = GRPO_DEFAULTS updated with these overrides (spec §1 defaults).
OBJECTIVES: dict[str, dict[str, Any]] = {
    "grpo": {},
    "dapo": dict(epsilon_high=0.28, loss_agg_mode="token-mean", dynamic_sampling=True,
                 overlong_buffer_len=4096, beta=0.0),
    "dr_grpo": dict(scale_rewards="none", loss_agg_mode="seq-mean-token-sum-norm", beta=0.0),
    "gspo": dict(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
                 loss_agg_mode="seq-mean-token-mean", beta=0.0),
    "ppo": dict(advantage_estimator="gae", loss_agg_mode="token-mean", clip_ratio_c=3.0),
    # REINFORCE with the leave-one-out baseline on sequence log-probs (Ahmadian et al. 2024).
    "rloo": dict(advantage_estimator="rloo", loss_agg_mode="seq-mean-token-sum"),
}

# The resolved options that are `policy_loss` keyword arguments, so the train loop can write
# `policy_loss(..., **{k: opts[k] for k in POLICY_LOSS_OPTIONS})`.
POLICY_LOSS_OPTIONS = ("epsilon", "epsilon_high", "clip_ratio_c", "importance_sampling_level",
                       "loss_agg_mode", "loss_scale_factor", "beta", "kl_estimator",
                       "kl_clamp", "use_bias_correction_kl", "entropy_coeff", "tis_imp_ratio_cap")

OPTION_CHOICES = {
    "advantage_estimator": tuple(adv_lib.ADVANTAGE_ESTIMATORS),
    "scale_rewards": adv_lib.SCALE_REWARDS,
    "importance_sampling_level": pl_lib.IMPORTANCE_SAMPLING_LEVELS,
    "loss_agg_mode": pl_lib.LOSS_AGG_MODES,
    "kl_estimator": tuple(kl_lib.KL_ESTIMATORS),
}
