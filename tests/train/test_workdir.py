"""Reopening a workdir: the saved config is laid over the current base config
(`tokenrl.train.workdir.saved_config`), so a workdir written before a key existed still loads."""

import json

import pytest

from tokenrl.config import base_config
from tokenrl.train.workdir import saved_config


def _saved(cfg):
  return json.loads(cfg.to_json_best_effort())


def test_round_trip_of_a_changed_config_is_exact():
  cfg = base_config()
  cfg.seed = 7
  cfg.rewards.fns = "task,format"
  cfg.train.sft_learning_rate = 1e-3
  cfg.rl.rmt.tier_probs_end = (0.2, 0.3, 0.5)   # a tuple field: saved as a JSON list
  out = saved_config(_saved(cfg))
  assert out.to_dict() == cfg.to_dict()
  assert isinstance(out.rl.rmt.tier_probs_end, tuple)


def test_a_key_added_since_the_run_takes_the_current_default():
  saved = _saved(base_config())
  saved["seed"] = 3
  del saved["rewards"]["fns"], saved["rewards"]["weights"]   # written before rewards.fns existed
  out = saved_config(saved)
  assert out.rewards.fns == base_config().rewards.fns == ""
  assert out.rewards.weights == ""
  assert out.seed == 3
  with pytest.raises(AttributeError):   # still the locked base schema
    out.rewards.not_a_key = 1


def test_a_missing_section_takes_the_current_defaults():
  saved = _saved(base_config())
  del saved["mesh"]
  saved["train"]["max_steps"] = 5
  out = saved_config(saved)
  assert out.mesh.to_dict() == base_config().mesh.to_dict()
  assert out.train.max_steps == 5


def test_unknown_saved_keys_are_named():
  saved = _saved(base_config())
  saved["train"]["old_knob"] = 1
  saved["gone_section"] = {"x": 1}
  with pytest.raises(ValueError, match=r"wd/config.json: .*train\.old_knob, gone_section"):
    saved_config(saved, source="wd/config.json")


def test_a_value_of_the_wrong_kind_is_named():
  saved = _saved(base_config())
  saved["seed"] = "zero"
  with pytest.raises(ValueError, match=r"seed='zero' does not fit"):
    saved_config(saved)
  saved = _saved(base_config())
  saved["mesh"] = 8
  with pytest.raises(ValueError, match=r"mesh is a value in the saved config but a section"):
    saved_config(saved)


def test_init_model_check_ignores_only_the_context_length():
  from tokenrl import models
  from tokenrl.train.workdir import check_init_model
  saved = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                      max_seq_len=64)
  check_init_model("w", saved, saved)
  check_init_model("w", saved, saved.replace(max_seq_len=136))  # RoPE: no param depends on it
  with pytest.raises(ValueError, match=r"model.init_workdir='w' holds a different model .*"
                                       r"dim: 32 vs 64; use a warm-up of the same model"):
    check_init_model("w", saved, saved.replace(dim=64, max_seq_len=136))
