"""Reopen a finished or interrupted run: its config, built pieces and latest params."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from tokenrl.config import base_config
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.setup import Run, build_run


def load_workdir(workdir: str) -> tuple[ml_collections.ConfigDict, Run, Any]:
  """(config, run, params) of the latest checkpoint in a tokenrl workdir, any trainer.

  The checkpoint's metadata names where the model params sit in its state (`params_path`, set
  by the run skeleton for the phase it was saved in), so no optimizer or method has to be
  rebuilt to read them. params include method-owned entries (e.g. params['value_head']) when
  the run had them; `model_params` drops them. The config is WORKDIR/config.json laid over the
  current base config (`saved_config`): keys added since the run was written take their defaults.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir!r} is not a tokenrl workdir (no config.json)")
  with open(path) as f:
    cfg = saved_config(json.load(f), source=path)
  run = build_run(cfg)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    # On this process's first device, whatever topology saved it (a run trained on 8 devices
    # or a pod is reopened by `tokenrl eval` on one).
    state, meta = ckpt.restore_raw()
  finally:
    ckpt.close()
  params = state
  for key in meta["params_path"]:
    params = params[key]
  return cfg, run, params


def saved_config(saved: dict[str, Any], *, source: str = "config.json"
                 ) -> ml_collections.ConfigDict:
  """The current `tokenrl.config.base_config()` with a saved run config laid over it.

  A workdir written before a config key existed (e.g. rewards.fns) lacks that key: it gets the
  current default, so the run rebuilds as it was (a new key's default is the old behaviour).
  A saved key the current config does not have (renamed or removed since) cannot be honoured
  silently: ValueError naming every such key and `source`. A saved value of the wrong kind
  (a section where a field is, or a type the field does not take) is a ValueError naming it.
  """
  cfg = base_config()
  unknown: list[str] = []
  _overlay(cfg, saved, "", unknown, source)
  if unknown:
    raise ValueError(f"{source}: saved config keys unknown to this version of tokenrl: "
                     f"{', '.join(unknown)}; they were renamed or removed since the run was "
                     "written; edit them out of (or rename them in) its config.json")
  return cfg


def _overlay(node: ml_collections.ConfigDict, saved: dict[str, Any], prefix: str,
             unknown: list[str], source: str) -> None:
  """Set every saved leaf on `node` (in place), collecting the keys `node` lacks."""
  for k, v in saved.items():
    key = prefix + k
    if k not in node:
      unknown.append(key)
      continue
    cur = node[k]
    if isinstance(cur, ml_collections.ConfigDict) != isinstance(v, dict):
      raise ValueError(f"{source}: {key} is a {'section' if isinstance(v, dict) else 'value'} "
                       f"in the saved config but a "
                       f"{'section' if isinstance(cur, ml_collections.ConfigDict) else 'value'} "
                       f"in this version of tokenrl")
    if isinstance(v, dict):
      _overlay(cur, v, key + ".", unknown, source)
      continue
    try:
      node[k] = v  # a JSON list onto a tuple field becomes a tuple; int onto float is allowed
    except TypeError as e:
      raise ValueError(f"{source}: {key}={v!r} does not fit the current field (default "
                       f"{cur!r}): {e}") from None


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


def check_init_model(path: str, saved: Any, model: Any) -> None:
  """ValueError unless the model of `path` (model.init_workdir) can start this run's `model`.

  Every field must match except max_seq_len: all families use RoPE, so no param depends on the
  context length, and a warm-up trained at a shorter context may start a run that needs a longer
  one (e.g. a method whose extra rows are longer). The error names the fields that differ.
  """
  if saved.replace(max_seq_len=model.max_seq_len) == model:
    return
  import dataclasses  # pylint: disable=g-import-not-at-top
  diff = [f"{f.name}: {getattr(saved, f.name)!r} vs {getattr(model, f.name)!r}"
          for f in dataclasses.fields(model) if f.name != "max_seq_len"
          and getattr(saved, f.name) != getattr(model, f.name)]
  raise ValueError(f"model.init_workdir={path!r} holds a different model (its value vs this "
                   f"config's): {'; '.join(diff)}; use a warm-up of the same model.* settings")
