"""A phase that ends early (Phase.done): later phases start where it ended, resume agrees, and the
SFT warm-up's dev split never shares a problem with the training data."""

import json
import os

import jax.numpy as jnp
import pytest

from tokenrl.config import base_config
from tokenrl.models import tiny
from tokenrl.train.rl_loop import split_dev
from tokenrl.train.skeleton import Phase, RunSpec, run_job

from tests.configs_util import load_config


def _cfg():
  c = base_config()
  c.train.checkpoint_every = 2
  c.train.async_checkpoint = False
  return c


def _build(log, crash_at=None):
  """Phase 'a' adds 1 per step and is done once the state reaches 5 (checked every 2 steps, so
  at its 6th step), at most 10 steps; phase 'b' adds 10 per step for 3 steps."""

  def build(cfg, workdir):
    del cfg, workdir

    def step(add):
      def fn(state, g, s):
        if crash_at is not None and g == crash_at:
          raise KeyboardInterrupt("simulated crash")  # like SIGKILL: nothing saved at this step
        log.append((g, s))
        return {"x": state["x"] + add}, {"loss": float(state["x"])}
      return fn

    def done(state, g, s):
      return bool(state["x"] >= 5), {"check": float(state["x"]), "check_step": float(s)}

    phases = [
        Phase("a", 10, lambda prev: {"x": jnp.zeros((), jnp.float32)}, step(1.0), done=done, done_every=2),
        Phase("b", 3, lambda prev: prev, step(10.0)),
    ]
    return RunSpec(phases=phases, model=tiny(), prompt_len=8, plot=False,
                   summarize=lambda state, meta, g: {"state": float(state["x"]),
                                                     "starts": meta["starts"]})
  return build


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_a_done_phase_hands_over_at_the_step_it_ended(tmp_path):
  log = []
  summary = run_job(_cfg(), str(tmp_path), _build(log))
  # Phase a: steps 0..5 (state 6 >= 5 seen at the check after 6 steps), then b: 6, 7, 8.
  assert log == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 0), (7, 1), (8, 2)]
  assert summary["state"] == 6 + 30
  assert summary["starts"] == [0, 6] and summary["steps"] == 9
  lines = _lines(tmp_path)
  assert [l["phase"] for l in lines] == ["a"] * 6 + ["b"] * 3
  # The check's metrics join the line of the step after which it ran (every 2nd step of a).
  assert [l.get("check") for l in lines[:6]] == [None, 2.0, None, 4.0, None, 6.0]


def test_resume_after_a_crash_ends_the_phase_at_the_same_step(tmp_path):
  whole = str(tmp_path / "whole")
  run_job(_cfg(), whole, _build([]))
  crashed = str(tmp_path / "crashed")
  with pytest.raises(KeyboardInterrupt):  # in phase b; the last checkpoint is at step 6, the
    run_job(_cfg(), crashed, _build([], crash_at=7))  # step phase a ended at
  log = []
  summary = run_job(_cfg(), crashed, _build(log))
  # Resumed from the checkpoint at step 6 (phase a, ended): straight into phase b at step 6.
  assert log == [(6, 0), (7, 1), (8, 2)]
  assert summary["state"] == 36 and summary["starts"] == [0, 6]
  strip = lambda ls: [{k: v for k, v in l.items() if k != "step_seconds"} for l in ls]
  assert strip(_lines(crashed)) == strip(_lines(whole))


def test_resume_inside_the_early_ending_phase(tmp_path):
  crashed = str(tmp_path / "crashed")
  with pytest.raises(KeyboardInterrupt):  # in phase a after the checkpoint at step 4
    run_job(_cfg(), crashed, _build([], crash_at=5))
  log = []
  summary = run_job(_cfg(), crashed, _build(log))
  assert log == [(4, 4), (5, 5), (6, 0), (7, 1), (8, 2)]
  assert summary["starts"] == [0, 6] and summary["state"] == 36


def test_dev_split_is_disjoint_from_training_problems():
  ex = [{"prompt": p} for p in ["1+1=", "2+2=", "1+1=", "3+3=", "2+2=", "4+4="]]
  dev, train = split_dev(ex, 2)
  assert [e["prompt"] for e in dev] == ["1+1=", "2+2="]
  assert [e["prompt"] for e in train] == ["3+3=", "4+4="]  # repeats of dev problems removed
  assert split_dev(ex, 0) == ([], ex)
  with pytest.raises(ValueError, match="data.dev_size"):
    split_dev(ex, 6)


def test_target_accuracy_without_a_dev_split_fails_at_start_up(tmp_path):
  from tokenrl.train.rl_loop import train
  cfg = load_config("quickstart", "smoke")
  cfg.data.dev_size = 0
  cfg.train.sft_target_accuracy = 0.5
  with pytest.raises(ValueError, match="data.dev_size"):
    train(cfg, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))  # no step was taken
