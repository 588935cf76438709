"""LayerSkip trainer (tokenrl/train/early_exit.py) through `tokenrl train`'s entry point: the
early-exit loss makes the first exit better than plain fine-tuning does from the same start, and
a run killed inside the early_exit phase and rerun ends exactly as the uninterrupted one."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tokenrl.train import early_exit as eet
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.rl_loop import train   # what `tokenrl train` calls

from tests.configs_util import load_config


def _cfg(**fields):
  c = load_config("early_exit", "smoke")
  c.train.sft_steps = 0
  c.train.max_steps = 6
  c.train.checkpoint_every = 3
  c.train.async_checkpoint = False
  c.optimizer.learning_rate = 3e-3
  c.data.train_size = 2000
  for k, v in fields.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "step_seconds"} for l in f if l.strip()]


def _final_state(workdir):
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  args = ocp.args.Composite(state=ocp.args.StandardRestore())
  state = ckpt.manager.restore(step, args=args).state
  ckpt.close()
  return step, state


@pytest.mark.slow
def test_early_exit_beats_plain_finetuning_on_the_first_exit_and_resumes(tmp_path, monkeypatch):
  ee_dir, plain_dir = str(tmp_path / "ee"), str(tmp_path / "plain")
  s = train(_cfg(), ee_dir)
  # e_scale = 0 and no dropout: only the last exit trains (plain SFT), same data and start.
  p = train(_cfg(**{"rl.early_exit.e_scale": 0.0, "rl.early_exit.layer_dropout": 0.0}), plain_dir)
  assert s["objective"] == "early_exit" and s["steps"] == 6
  assert s["ce_1_start"] == p["ce_1_start"]                      # same initial model
  assert s["ce_1"] < s["ce_1_start"] - 0.3, s
  assert s["ce_1"] < p["ce_1"] - 0.3, (s["ce_1"], p["ce_1"])
  lines = _lines(ee_dir)
  assert [l["phase"] for l in lines] == ["early_exit"] * 6
  assert all(np.isfinite(l["loss"]) and "agreement_1" in l for l in lines)

  # Killed at the 5th step (after the checkpoint at step 3), rerun: same metrics and state.
  make = eet.make_early_exit_step
  calls = []

  def crashing(*a, **kw):
    step = make(*a, **kw)

    def run(*args):
      calls.append(1)
      if len(calls) == 5:
        raise KeyboardInterrupt
      return step(*args)
    return run

  broken = str(tmp_path / "broken")
  monkeypatch.setattr(eet, "make_early_exit_step", crashing)
  with pytest.raises(KeyboardInterrupt):
    train(_cfg(), broken)
  monkeypatch.setattr(eet, "make_early_exit_step", make)
  s2 = train(_cfg(), broken)
  assert _lines(broken) == lines
  (g1, a), (g2, b) = _final_state(ee_dir), _final_state(broken)
  assert g1 == g2 == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert s2["ce_1"] == s["ce_1"]
