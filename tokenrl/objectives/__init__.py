"""Pure-jnp RL objectives: log-probs, advantages, KL estimators, shaping, policy/value losses.

Every function takes arrays and explicit keyword options (no Module, no config object); the
registries are plain dicts in the module that defines the functions. The objective presets are
pure data (presets.py); the `rl` config section and `resolve_objective` are in tokenrl.methods.
"""

from tokenrl.objectives.advantages import ADVANTAGE_ESTIMATORS
from tokenrl.objectives.advantages import gae_advantages
from tokenrl.objectives.advantages import group_relative_advantages
from tokenrl.objectives.advantages import masked_whiten
from tokenrl.objectives.advantages import rloo_advantages
# presets before the `policy_loss` function below shadows the submodule name it reads.
from tokenrl.objectives.presets import GRPO_DEFAULTS
from tokenrl.objectives.presets import OBJECTIVES
from tokenrl.objectives.presets import POLICY_LOSS_OPTIONS
from tokenrl.objectives.kl import KL_ESTIMATORS
from tokenrl.objectives.kl import kl_penalty
from tokenrl.objectives.logprobs import token_logprobs
from tokenrl.objectives.policy_loss import LOSS_AGG_MODES
from tokenrl.objectives.policy_loss import LOSSES
from tokenrl.objectives.policy_loss import aggregate_loss
from tokenrl.objectives.policy_loss import loss_denominator
from tokenrl.objectives.policy_loss import policy_loss
from tokenrl.objectives.policy_loss import truncated_importance_weights
from tokenrl.objectives.policy_loss import value_loss
from tokenrl.objectives.shaping import SHAPING_FNS
from tokenrl.objectives.shaping import dynamic_sampling_groups
from tokenrl.objectives.shaping import mask_truncated_completions
from tokenrl.objectives.shaping import overlong_reward_penalty
from tokenrl.objectives.shaping import top_entropy_mask
