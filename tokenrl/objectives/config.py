"""The locked `rl` config section, the objective presets, and their resolution to explicit options.

Fields that an objective preset sets are `placeholder`s (None = "take the objective's value");
setting one on the command line overrides the preset, so
`--config.rl.objective=dapo --config.rl.epsilon_high=0.3` is DAPO with ε_h = 0.3. `resolve_objective`
turns the section into a flat dict of effective options, whose names are the keyword names of
`policy_loss`, the advantage estimators and the shaping functions, so the train loop passes them
explicitly. On/off numbers use 0 = off in the config (`clip_ratio_c`, `tis_imp_ratio_cap`,
`loss_scale_factor`, `cliprange_value`) and None = off in the resolved options, as the loss
functions take them.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

from tokenrl.objectives import advantages as adv_lib
from tokenrl.objectives import kl as kl_lib
from tokenrl.objectives import policy_loss as pl_lib

# GRPO (DeepSeekMath, spec §1.1) as framework defaults have it; every other objective starts here.
# beta = 0: no KL term and no reference model (TRL's default since DAPO/Dr.GRPO found the KL
# unnecessary with verifiable rewards; spec §1.2–1.4 all use β = 0). DeepSeekMath used 0.04.
_GRPO = dict(
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

# Each objective = _GRPO updated with these overrides (spec §1 defaults).
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
                       "entropy_coeff", "tis_imp_ratio_cap")

_CHOICES = {
    "advantage_estimator": tuple(adv_lib.ADVANTAGE_ESTIMATORS),
    "scale_rewards": adv_lib.SCALE_REWARDS,
    "importance_sampling_level": pl_lib.IMPORTANCE_SAMPLING_LEVELS,
    "loss_agg_mode": pl_lib.LOSS_AGG_MODES,
    "kl_estimator": tuple(kl_lib.KL_ESTIMATORS),
}


def rl_config() -> ml_collections.ConfigDict:
  """The locked `rl` section: every RL-objective option with its default and one comment."""
  c = ml_collections.ConfigDict()
  c.objective = "grpo"                  # baseline preset or a tokenrl.methods name (see README)
  # --- set by the objective preset unless given (None = preset; GRPO value in brackets) ---
  c.advantage_estimator = config_dict.placeholder(str)      # ['grpo'] | 'rloo' | 'gae'
  c.scale_rewards = config_dict.placeholder(str)            # ['group'] | 'batch' | 'none'
  c.epsilon = config_dict.placeholder(float)                # [0.2] lower clip ε_l
  c.epsilon_high = config_dict.placeholder(float)           # [0.2] upper clip ε_h (DAPO 0.28)
  c.clip_ratio_c = config_dict.placeholder(float)           # [0 = off] dual clip (ppo: 3.0)
  c.importance_sampling_level = config_dict.placeholder(str)  # ['token'] | 'sequence' (GSPO)
  c.loss_agg_mode = config_dict.placeholder(str)            # ['seq-mean-token-mean'] verl names
  c.loss_scale_factor = config_dict.placeholder(float)      # [0 = T] Dr.GRPO constant L_norm
  c.beta = config_dict.placeholder(float)                   # [0.0] KL coefficient; >0 loads a ref
  c.dynamic_sampling = config_dict.placeholder(bool)        # [False] DAPO zero-variance filter
  c.overlong_buffer_len = config_dict.placeholder(int)      # [0 = off] DAPO L_buf (dapo: 4096)
  # --- independent of the preset ---
  c.num_generations = 8                 # G: completions per prompt (N = B·G)
  c.num_iterations = 1                  # μ: policy updates per rollout batch (1 ⇒ ratio ≡ 1)
  c.temperature = 1.0                   # sampling temperature; log-probs use the same τ
  c.kl_estimator = "k3"                 # k1|kl, k2|mse, k3|low_var_kl (verl names); used if beta>0
  c.entropy_coeff = 0.0                 # entropy bonus c_H (verl name); loss −= c_H·H
  c.top_entropy_quantile = 1.0          # keep the top-ρ entropy tokens (80/20 paper: 0.2); 1 = all
  c.mask_truncated_completions = False  # zero the loss mask of rows without EOS (TRL name)
  c.overlong_penalty_factor = 1.0       # κ: scale of the DAPO overlong penalty (verl name)
  c.tis_imp_ratio_cap = 0.0             # TIS cap on exp(old − sampler logp) (verl name); 0 = off
  c.advantage_epsilon = 1e-6            # ε in (r − μ)/(σ + ε) (verl 1e-6, TRL 1e-4)
  c.advantage_std_ddof = 1              # std ddof of group/batch scaling (1 = unbiased, verl/TRL)
  c.gamma = 1.0                         # GAE discount γ (verl default 1.0)
  c.lam = 1.0                           # GAE λ (verl default 1.0)
  c.whiten_advantages = True            # GAE only: standardise advantages over valid tokens (verl)
  c.cliprange_value = 0.2               # value-loss clip ε_v (TRL/verl name); 0 = off
  c.vf_coef = 0.1                       # value-loss weight in the total loss (TRL PPO default)
  # --- one locked section per token-level method (cfg.rl.<name>), read only when selected ---
  for name, method in sorted(_methods().items()):
    section = method.config()
    if section is not None:
      section.lock()
      c[name] = section
  c.lock()
  return c


def _methods() -> dict[str, Any]:
  # Imported here: tokenrl.methods imports tokenrl.objectives (this package) at import time.
  from tokenrl.methods import METHODS  # pylint: disable=g-import-not-at-top
  return METHODS


def objective_names() -> tuple[str, ...]:
  """Every valid `rl.objective`: the baseline presets, then the registered methods."""
  return tuple(OBJECTIVES) + tuple(sorted(_methods()))


def resolve_objective(rl_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The effective options of an `rl` section: preset ∪ explicitly set fields, validated.

  Returns a flat dict keyed by the functions' keyword names (`policy_loss`, the advantage
  estimators, the shaping functions) plus the run-level fields (`num_generations`, ...).
  0-means-off numbers come back as None. Raises ValueError naming the field on a bad value.
  """
  methods = _methods()
  if rl_cfg.objective not in OBJECTIVES and rl_cfg.objective not in methods:
    raise ValueError(f"rl.objective: expected one of {objective_names()}, "
                     f"got {rl_cfg.objective!r}")
  opts: dict[str, Any] = {"objective": rl_cfg.objective}
  method_preset = (OBJECTIVES[rl_cfg.objective] if rl_cfg.objective in OBJECTIVES
                   else methods[rl_cfg.objective].preset)
  unknown = set(method_preset) - set(_GRPO)
  if unknown:
    raise ValueError(f"preset of rl.objective={rl_cfg.objective!r} sets unknown options "
                     f"{sorted(unknown)}; known: {sorted(_GRPO)}")
  preset = {**_GRPO, **method_preset}
  for key, default in preset.items():
    value = rl_cfg[key]
    opts[key] = default if value is None else value
  for key in ("num_generations", "num_iterations", "temperature", "kl_estimator",
              "entropy_coeff", "top_entropy_quantile", "mask_truncated_completions",
              "overlong_penalty_factor", "tis_imp_ratio_cap", "advantage_epsilon",
              "advantage_std_ddof", "gamma", "lam", "whiten_advantages", "cliprange_value",
              "vf_coef"):
    opts[key] = rl_cfg[key]

  for key, choices in _CHOICES.items():
    if opts[key] not in choices:
      raise ValueError(f"rl.{key}: expected one of {choices}, got {opts[key]!r}")
  checks = {
      "num_generations": opts["num_generations"] >= 1,
      "num_iterations": opts["num_iterations"] >= 1,
      "temperature": opts["temperature"] > 0,
      "epsilon": 0 <= opts["epsilon"] < 1,
      "epsilon_high": opts["epsilon_high"] >= 0,
      "clip_ratio_c": opts["clip_ratio_c"] == 0 or opts["clip_ratio_c"] > 1,
      "loss_scale_factor": opts["loss_scale_factor"] >= 0,
      "beta": opts["beta"] >= 0,
      "top_entropy_quantile": 0 < opts["top_entropy_quantile"] <= 1,
      "overlong_buffer_len": opts["overlong_buffer_len"] >= 0,
      "tis_imp_ratio_cap": opts["tis_imp_ratio_cap"] >= 0,
      "advantage_std_ddof": opts["advantage_std_ddof"] in (0, 1),
      "gamma": 0 <= opts["gamma"] <= 1,
      "lam": 0 <= opts["lam"] <= 1,
      "cliprange_value": opts["cliprange_value"] >= 0,
  }
  for key, ok in checks.items():
    if not ok:
      raise ValueError(f"rl.{key}: value {opts[key]!r} is out of range")
  if opts["advantage_estimator"] in ("grpo", "rloo") and opts["num_generations"] < 2:
    raise ValueError(f"rl.num_generations: expected >= 2 for a group baseline, "
                     f"got {opts['num_generations']}")
  for key in ("clip_ratio_c", "loss_scale_factor", "tis_imp_ratio_cap", "cliprange_value"):
    opts[key] = opts[key] or None   # 0 = off / default → None, as the functions take it
  if rl_cfg.objective in methods:
    method = methods[rl_cfg.objective]
    method.validate(rl_cfg[rl_cfg.objective] if rl_cfg.objective in rl_cfg else None, opts)
  return opts
