"""Token-level objectives as RL-loop methods: `get_method(name)`, `METHODS`.

Every module in this package that defines a `Method` subclass decorated with `@register` is
imported here (pkgutil), so adding a method is adding one file. The baselines of
tokenrl.objectives.presets.OBJECTIVES (grpo, dapo, dr_grpo, gspo, rloo) are the plain `Method`
with their preset; see tokenrl/methods/base.py for the hooks. The locked `rl` config section (one sub-section
per method) and `resolve_objective` are in tokenrl/methods/config.py.
"""

from __future__ import annotations

import importlib
import pkgutil

from tokenrl.methods.base import LossContext
from tokenrl.methods.base import Method
from tokenrl.methods.base import StepContext
from tokenrl.methods.base import StepData
from tokenrl.methods.registry import METHODS
from tokenrl.methods.registry import register
from tokenrl.objectives.presets import OBJECTIVES

for _info in pkgutil.iter_modules(__path__):
  if _info.name not in ("base", "registry", "config"):
    importlib.import_module(f"{__name__}.{_info.name}")


def get_method(name: str) -> Method:
  """The Method registered as `name`, or the plain (GRPO-family) Method for a baseline."""
  if name in METHODS:
    return METHODS[name]
  if name in OBJECTIVES:
    m = Method()
    m.name = name
    return m
  raise ValueError(f"rl.objective: expected one of {tuple(OBJECTIVES) + tuple(METHODS)}, got {name!r}")


# After the loop: the config section reads the complete registry.
from tokenrl.methods.config import objective_names  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tokenrl.methods.config import resolve_objective  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tokenrl.methods.config import rl_config  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
