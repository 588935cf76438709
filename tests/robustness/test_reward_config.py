"""rewards.fns / rewards.weights: user reward functions from the config, with errors naming
the key, the module, the function and why."""
import sys
import textwrap

import pytest

from tokenrl.config import base_config
from tokenrl.data import rewards
from tokenrl.data.reward_runner import RewardRunner

USER_MODULE = '''
def length_penalty(completion, example):
    return -len(completion) / 100

def keyword(completion, example, bonus=1.0):
    return bonus * ("please" in completion)

def two_args_only(completion):
    return 1.0

NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
  """A my_rewards_<id>.py in a fresh working directory (not yet on sys.path), as a user has."""
  name = f"my_rewards_{tmp_path.name.replace('-', '_')}"
  (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
  yield name
  sys.modules.pop(name, None)


def test_config_has_the_keys():
  c = base_config()
  assert c.rewards.fns == "" and c.rewards.weights == ""


def test_user_functions_and_builtins_with_weights(user_dir):
  fns, weights = rewards.load_reward_fns(f"{user_dir}:length_penalty,{user_dir}:keyword,math",
                                         "0.5,2,1")
  assert list(fns) == [f"{user_dir}:length_penalty", f"{user_dir}:keyword", "math"]
  assert fns["math"] is rewards.math_answer_reward
  assert weights == {f"{user_dir}:length_penalty": 0.5, f"{user_dir}:keyword": 2.0, "math": 1.0}
  assert fns[f"{user_dir}:length_penalty"]("x" * 10, {}) == -0.1
  # Default weights: all 1.0; 'task' resolved through the caller's builtins.
  verifier = rewards.exact_answer_reward
  fns, weights = rewards.load_reward_fns("task", "", builtins={**rewards.REWARD_FNS,
                                                               "task": verifier})
  assert fns == {"task": verifier} and weights == {"task": 1.0}


def test_user_functions_run_in_worker_processes(user_dir):
  fns, weights = rewards.load_reward_fns(f"{user_dir}:length_penalty,{user_dir}:keyword",
                                         "1,0.5")
  with RewardRunner(fns, weights, timeout_s=30.0, max_workers=1) as r:
    out = r(["please" + "x" * 94, "no"], [{}, {}])
  assert out.stats == {"reward_errors": 0, "reward_timeouts": 0}
  # rewards = 1 * (-len/100) + 0.5 * [please in text]
  assert out.rewards.tolist() == pytest.approx([-1.0 + 0.5, -0.02])


@pytest.mark.parametrize("spec,weights,msg", [
    ("", "", r"rewards\.fns=''"),
    ("math,,exact", "", r"rewards\.fns="),
    ("math,math", "", r"listed more than once"),
    ("nosuch", "", r"'nosuch' is neither a built-in reward"),
    ("no_such_module_xyz:fn", "", r"rewards\.fns: cannot import module 'no_such_module_xyz'.*"
                                  r"working directory"),
    ("{m}:missing", "", r"rewards\.fns: module '{m}' .* has no attribute 'missing'"),
    ("{m}:NOT_A_FUNCTION", "", r"is a int, not callable"),
    ("{m}:two_args_only", "", r"wrong signature \(completion\)"),
    (":fn", "", r"must be 'module:function'"),
    ("math,exact", "1", r"rewards\.weights='1' has 1 weights but rewards\.fns has 2"),
    ("math", "nan", r"weight 'nan' of 'math' is not a finite number"),
    ("math", "heavy", r"weight 'heavy'"),
])
def test_errors_name_key_module_function_and_why(user_dir, spec, weights, msg):
  with pytest.raises(ValueError, match=msg.replace("{m}", user_dir)):
    rewards.load_reward_fns(spec.replace("{m}", user_dir), weights)


def test_build_run_resolves_rewards_fns(user_dir):
  from tokenrl.train import setup
  from tests.configs_util import load_config
  cfg = load_config("quickstart", "smoke")
  cfg.rewards.fns = f"task,{user_dir}:length_penalty"
  cfg.rewards.weights = "1,0.5"
  run = setup.build_run(cfg)
  assert list(run.reward_fns) == ["task", f"{user_dir}:length_penalty"]
  assert run.reward_fns["task"] is run.verifier
  assert run.reward_weights == {"task": 1.0, f"{user_dir}:length_penalty": 0.5}
  cfg.rewards.fns = f"task,{user_dir}:missing"
  with pytest.raises(ValueError, match=rf"rewards\.fns: module '{user_dir}' .* no attribute"):
    setup.build_run(cfg)
