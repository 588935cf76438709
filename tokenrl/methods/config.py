"""The locked `rl` config section and its resolution to explicit options (presets ∪ set fields).

Fields that an objective preset sets are `placeholder`s (None = "take the objective's value");
setting one on the command line overrides the preset, so
`--config.rl.objective=dapo --config.rl.epsilon_high=0.3` is DAPO with ε_h = 0.3. `resolve_objective`
turns the section into a flat dict of effective options, whose names are the keyword names of
`policy_loss`, the advantage estimators and the shaping functions, so the train loop passes them
explicitly. On/off numbers use 0 = off in the config (`clip_ratio_c`, `tis_imp_ratio_cap`,
`loss_scale_factor`, `cliprange_value`) and None = off in the resolved options, as the loss
functions take them. The presets themselves are pure data in tokenrl/objectives/presets.py;
this module sits in the methods layer because the section holds one sub-section per registered
method and an objective may name a method.
"""

from typing import Any

import ml_collections
from ml_collections import config_dict

from tokenrl.methods.registry import METHODS
from tokenrl.objectives.presets import GRPO_DEFAULTS, OBJECTIVES, OPTION_CHOICES


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
  c.kl_estimator = "k3"                 # k1|kl, k2|mse, k3|low_var_kl, abs, k1+, k3+ (verl)
  c.kl_clamp = 10.0                     # k3 family clamped to ±kl_clamp (verl 10); 0 = off (TRL)
  c.use_bias_correction_kl = False      # KL × importance ratio π_θ/π_old (TRL name, DeepSeek-V3.2)
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
  """The registered methods. Reading tokenrl.methods.config imports the package tokenrl.methods
  first, whose __init__ imports every method module, so the registry is complete here."""
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
  unknown = set(method_preset) - set(GRPO_DEFAULTS)
  if unknown:
    raise ValueError(f"preset of rl.objective={rl_cfg.objective!r} sets unknown options "
                     f"{sorted(unknown)}; known: {sorted(GRPO_DEFAULTS)}")
  preset = {**GRPO_DEFAULTS, **method_preset}
  for key, default in preset.items():
    value = rl_cfg[key]
    opts[key] = default if value is None else value
  for key in ("num_generations", "num_iterations", "temperature", "kl_estimator", "kl_clamp",
              "use_bias_correction_kl",
              "entropy_coeff", "top_entropy_quantile", "mask_truncated_completions",
              "overlong_penalty_factor", "tis_imp_ratio_cap", "advantage_epsilon",
              "advantage_std_ddof", "gamma", "lam", "whiten_advantages", "cliprange_value",
              "vf_coef"):
    opts[key] = rl_cfg[key]

  for key, choices in OPTION_CHOICES.items():
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
      "kl_clamp": opts["kl_clamp"] >= 0,
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
  # G = 1 is fine for 'grpo' (verl's singleton convention: A = r/(1 + ε), see
  # group_relative_advantages), but a leave-one-out baseline and DAPO's filter need a group.
  if opts["advantage_estimator"] == "rloo" and opts["num_generations"] < 2:
    raise ValueError(f"rl.num_generations: expected >= 2 for rl.advantage_estimator='rloo' (the "
                     f"leave-one-out baseline averages the other G−1 samples), got "
                     f"{opts['num_generations']}; use advantage_estimator='grpo' for G = 1")
  if opts["dynamic_sampling"] and opts["num_generations"] < 2:
    raise ValueError(f"rl.num_generations: expected >= 2 with rl.dynamic_sampling=True (a group "
                     f"of one has equal rewards and would always be dropped), got "
                     f"{opts['num_generations']}; set --config.rl.dynamic_sampling=False")
  for key in ("clip_ratio_c", "loss_scale_factor", "tis_imp_ratio_cap", "cliprange_value",
              "kl_clamp"):
    opts[key] = opts[key] or None   # 0 = off / default → None, as the functions take it
  if rl_cfg.objective in methods:
    method = methods[rl_cfg.objective]
    method.validate(rl_cfg[rl_cfg.objective] if rl_cfg.objective in rl_cfg else None, opts)
  return opts
