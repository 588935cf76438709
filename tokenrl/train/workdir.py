"""Reopen a finished or interrupted run: its config, built pieces and latest params."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.setup import Run, build_run


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, Run, Any]:
  """(config, run, params) of the latest checkpoint in a tokenrl workdir, any trainer.

  The checkpoint's metadata names where the model params sit in its state (`params_path`, set
  by the run skeleton for the phase it was saved in), so no optimizer or method has to be
  rebuilt to read them. params include method-owned entries (e.g. params['value_head']) when
  the run had them; `model_params` drops them.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} is not a tokenrl workdir (no config.json)")
  with open(path) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  run = build_run(cfg)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    meta = ckpt.restore_meta(step)
    state = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state
  finally:
    ckpt.close()
  params = state
  for key in meta["params_path"]:
    params = params[key]
  return cfg, run, params


def load_params(workdir: str) -> tuple[Any, Any]:
  """(ModelConfig, params) of a workdir's latest checkpoint: what a method's frozen model needs.

  Passed to the methods layer as StepContext.load_params / PrefContext.load_params (RTO's DPO
  model, TGDPO's guidance model, cDPO's positive / negative models), which must not import
  tokenrl.train itself.
  """
  _, run, params = load_workdir(workdir)
  return run.model, params


def model_params(params: dict[str, Any], config: Any) -> dict[str, Any]:
  """The decoder's own params (the keys of `transformer.param_shapes`), e.g. for save_hf."""
  from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
  known = transformer.param_shapes(config)
  return {k: v for k, v in params.items() if k in known}
