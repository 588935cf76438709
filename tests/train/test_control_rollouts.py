"""sampler.control in the RL loop: the control reaches every rollout and evaluation, its knob
off is the plain run, and a bad control fails at start-up naming its key."""

import json
import os

import pytest

from tests.robustness.conftest import tiny_config
from tokenrl.train.rl_loop import train


def _cfg(**control):
  c = tiny_config()
  c.train.max_steps = 2
  for k, v in control.items():
    c.sampler.control[k] = v
  return c


def _rl_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [m for m in map(json.loads, f) if "reward" in m]


@pytest.mark.slow
def test_cyclic_reflex_with_amplitude_zero_is_the_plain_run_and_a_bias_changes_it(tmp_path):
  plain = train(_cfg(), str(tmp_path / "plain"))
  off = train(_cfg(method="cyclic_reflex", reflection="1,2", think_end="", amplitude=0.0),
              str(tmp_path / "off"))
  # +8 on the raw logits of '1' and '2' at the wave's peak (shift 1/4): rollouts and evals change.
  train(_cfg(method="cyclic_reflex", reflection="1,2", think_end="", amplitude=8.0, period=4,
                  shift=0.25), str(tmp_path / "on"))
  for key in ("baseline_accuracy", "final_accuracy"):
    assert plain[key] == off[key]
  for ra, rb in zip(_rl_rows(tmp_path / "plain"), _rl_rows(tmp_path / "off")):
    for key in ("reward", "completion_length", "accuracy"):
      assert ra[key] == rb[key], key
    assert abs(ra["loss"] - rb["loss"]) < 1e-6
  # (The tiny run's rewards are all 0: the sampled law shows in the sampler's entropy.)
  seen = lambda d: [(r["sampler_entropy"], r["completion_length"]) for r in _rl_rows(d)]
  assert seen(tmp_path / "plain") != seen(tmp_path / "on")


def test_a_multi_token_reflection_string_fails_at_start_up(tmp_path):
  with pytest.raises(ValueError, match=r"sampler.control.reflection: 'wait' is 4 tokens"):
    train(_cfg(method="cyclic_reflex", reflection="wait"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


def test_control_and_speculative_decoding_are_refused_together(tmp_path):
  c = _cfg(method="cyclic_reflex")
  c.sampler.speculative.method = "exact"
  with pytest.raises(ValueError, match=r"sampler.speculative.method = 'exact': must be 'none' "
                                       r"when sampler.control.method is set"):
    train(c, str(tmp_path / "s"))
