"""Reopen a finished or interrupted run: its config, built pieces and latest params."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from tokenrl.optim import build_optimizer
from tokenrl.train import steps as steps_lib
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.setup import Run, build_run


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, Run, Any]:
  """(config, run, params) of the latest checkpoint in a tokenrl workdir."""
  from tokenrl.train.rl_loop import sft_optimizer
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} is not a tokenrl workdir (no config.json)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  run = build_run(cfg)
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
  kind = ckpt.restore_meta(step)["state_kind"]
  tx = sft_optimizer(cfg) if kind == "sft" else build_optimizer(cfg.optimizer, max(cfg.train.max_steps, 1))
  state, _ = ckpt.restore(steps_lib.create_state(run.params, tx))
  ckpt.close()
  return cfg, run, state.params
