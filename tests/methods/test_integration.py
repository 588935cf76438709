"""Every registered method runs a few real steps of the smoke quickstart: finite loss, its own
metrics logged, and the objective's config section selectable from the command-line names."""

import importlib.util
import json
import os

import numpy as np
import pytest

from tokenrl.methods import METHODS
from tokenrl.train.rl_loop import train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")


def smoke_config(objective: str):
  spec = importlib.util.spec_from_file_location("quickstart", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.objective = objective
  c.train.sft_steps = 2
  c.train.max_steps = 2
  c.train.checkpoint_every = 0
  c.train.async_checkpoint = False
  c.data.eval_size = 8
  c.train.eval_num_samples = 0
  return c


RL_METHODS = sorted(n for n, m in METHODS.items() if not getattr(m, "pairwise", False))


@pytest.mark.parametrize("name", RL_METHODS)
def test_method_runs_a_few_steps(name, tmp_path):
  method = METHODS[name]
  cfg = smoke_config(name)
  for key, value in method.quickstart_overrides.items():   # the README's quickstart overrides
    *path, leaf = key.split(".")
    node = cfg
    for p in path:
      node = node[p]
    node[leaf] = value
  summary = train(cfg, str(tmp_path))
  assert summary["steps"] == 4
  with open(tmp_path / "metrics.jsonl") as f:
    rl = [json.loads(l) for l in f if json.loads(l)["phase"] == "rl"]
  assert len(rl) == 2
  for line in rl:
    assert np.isfinite(line["loss"]), line
    for key in method.metrics:
      assert key in line, f"{name}: metric {key!r} not logged; got {sorted(line)}"
      assert np.isfinite(line[key]), (key, line[key])
