"""Reopen a finished or interrupted run: its config, built pieces and latest params."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from tokenrl.optim import build_optimizer
from tokenrl.train import steps as steps_lib
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.setup import Run, build_run


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, Run, Any]:
  """(config, run, params) of the latest checkpoint in a tokenrl workdir.

  params include method-owned entries (e.g. params['value_head']) when the run had them;
  `model_params` drops them.
  """
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
  params = run.params
  if kind == "rl":
    from tokenrl.methods import get_method  # pylint: disable=g-import-not-at-top
    from tokenrl.methods.config import resolve_objective  # pylint: disable=g-import-not-at-top
    method = get_method(resolve_objective(cfg.rl)["objective"])
    params = method.init_params(params, run.model, jax.random.key(0))  # shapes only
  state, _ = ckpt.restore(steps_lib.create_state(params, tx))
  ckpt.close()
  return cfg, run, state.params


def model_params(params: dict[str, Any], config: Any) -> dict[str, Any]:
  """The decoder's own params (the keys of `transformer.param_shapes`), e.g. for save_hf."""
  from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
  known = transformer.param_shapes(config)
  return {k: v for k, v in params.items() if k in known}
