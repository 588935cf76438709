"""The `rl` config section, objective presets and their resolution to explicit options."""
import inspect

import jax.numpy as jnp
import pytest

from tokenrl.objectives import OBJECTIVES
from tokenrl.objectives import POLICY_LOSS_OPTIONS
from tokenrl.objectives import policy_loss
from tokenrl.methods.config import resolve_objective
from tokenrl.methods.config import rl_config


def test_section_is_locked():
  cfg = rl_config()
  with pytest.raises(AttributeError):
    cfg.epsilon_hgih = 0.3
  with pytest.raises(TypeError):
    cfg.epsilon = "wide"


def test_grpo_defaults():
  opts = resolve_objective(rl_config())
  expected = dict(
      objective="grpo", advantage_estimator="grpo", scale_rewards="group", epsilon=0.2,
      epsilon_high=0.2, clip_ratio_c=None, importance_sampling_level="token",
      loss_agg_mode="seq-mean-token-mean", loss_scale_factor=None, beta=0.0,
      dynamic_sampling=False, overlong_buffer_len=0, num_generations=8, num_iterations=1,
      temperature=1.0, kl_estimator="k3", kl_clamp=10.0, use_bias_correction_kl=False,
      entropy_coeff=0.0, top_entropy_quantile=1.0,
      mask_truncated_completions=False, overlong_penalty_factor=1.0, tis_imp_ratio_cap=None,
      advantage_epsilon=1e-6, advantage_std_ddof=1, gamma=1.0, lam=1.0,
      whiten_advantages=True, cliprange_value=0.2, vf_coef=0.1)
  assert opts == expected
  # Every scalar field is resolved; the sub-sections are the methods' own (cfg.rl.<name>).
  from tokenrl.methods import METHODS
  c = rl_config()
  sections = {k for k in c.keys() if hasattr(c[k], "keys")}
  assert set(c.keys()) - sections == set(expected)
  assert sections == {n for n, m in METHODS.items() if m.config() is not None}


@pytest.mark.parametrize("name,subset", [
    ("dapo", dict(epsilon=0.2, epsilon_high=0.28, loss_agg_mode="token-mean",
                  dynamic_sampling=True, overlong_buffer_len=4096, beta=0.0)),
    ("dr_grpo", dict(scale_rewards="none", loss_agg_mode="seq-mean-token-sum-norm", beta=0.0)),
    ("gspo", dict(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
                  loss_agg_mode="seq-mean-token-mean")),
    ("ppo", dict(advantage_estimator="gae", clip_ratio_c=3.0, loss_agg_mode="token-mean")),
    ("rloo", dict(advantage_estimator="rloo", loss_agg_mode="seq-mean-token-sum")),
])
def test_presets(name, subset):
  cfg = rl_config()
  cfg.objective = name
  opts = resolve_objective(cfg)
  assert {k: opts[k] for k in subset} == subset


def test_explicit_fields_override_the_preset():
  cfg = rl_config()
  cfg.objective = "dapo"
  cfg.epsilon_high = 0.3
  cfg.overlong_buffer_len = 0
  cfg.tis_imp_ratio_cap = 2.0
  opts = resolve_objective(cfg)
  assert (opts["epsilon_high"], opts["overlong_buffer_len"], opts["tis_imp_ratio_cap"]) == (
      0.3, 0, 2.0)
  assert opts["loss_agg_mode"] == "token-mean"              # the rest of the preset stays


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_resolved_options_drive_policy_loss(name):
  assert set(POLICY_LOSS_OPTIONS) <= set(inspect.signature(policy_loss).parameters)
  cfg = rl_config()
  cfg.objective = name
  opts = resolve_objective(cfg)
  x = jnp.zeros((2, 3))
  loss, metrics = policy_loss(x, x, jnp.array([1.0, -1.0]), jnp.ones((2, 3)),
                              ref_logp=x, **{k: opts[k] for k in POLICY_LOSS_OPTIONS})
  assert loss.shape == () and float(metrics["clipfrac"]) == 0.0


@pytest.mark.parametrize("field,value", [
    ("objective", "grpo2"), ("loss_agg_mode", "sum"), ("scale_rewards", "std"),
    ("kl_estimator", "k4"), ("top_entropy_quantile", 0.0), ("clip_ratio_c", 0.5),
    ("epsilon", 1.0), ("num_generations", 0), ("gamma", 1.5), ("kl_clamp", -1.0),
])
def test_bad_values_name_the_field(field, value):
  cfg = rl_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=f"rl.{field}"):
    resolve_objective(cfg)


def test_one_generation_per_prompt():
  # GRPO with G = 1 resolves (verl's singleton convention); RLOO and DAPO's filter need G >= 2.
  cfg = rl_config()
  cfg.num_generations = 1
  assert resolve_objective(cfg)["num_generations"] == 1
  for objective in ("rloo", "dapo"):
    cfg.objective = objective
    with pytest.raises(ValueError, match="rl.num_generations"):
      resolve_objective(cfg)


def test_kl_options_resolve():
  cfg = rl_config()
  cfg.kl_clamp = 0.0
  cfg.use_bias_correction_kl = True
  opts = resolve_objective(cfg)
  assert opts["kl_clamp"] is None and opts["use_bias_correction_kl"] is True
