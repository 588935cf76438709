"""Load an experiment config of the repo's configs/ folder by path (they are never imported)."""

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def load_config(name: str, arg=None):
  """get_config(arg) of configs/<name>.py, e.g. load_config('quickstart', 'smoke')."""
  spec = importlib.util.spec_from_file_location(f"tokenrl_config_{name}",
                                                os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def set_fields(cfg, fields):
  """cfg with each dotted key of `fields` set, e.g. {'rl.brpo.max_thinking_tokens': 22}."""
  for key, value in fields.items():
    *path, leaf = key.split(".")
    node = cfg
    for p in path:
      node = node[p]
    node[leaf] = value
  return cfg
