"""Token-level objectives as RL-loop methods: `get_method(name)`, `METHODS`.

Every module in this package that defines a `Method` subclass decorated with `@register` is
imported here (pkgutil), so adding a method is adding one file. The baselines of
tokenrl.objectives.config.OBJECTIVES (grpo, dapo, dr_grpo, gspo, rloo) are the plain `Method`
with their preset; see tokenrl/methods/base.py for the hooks.
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

for _info in pkgutil.iter_modules(__path__):
  if _info.name not in ("base", "registry"):
    importlib.import_module(f"{__name__}.{_info.name}")


def get_method(name: str) -> Method:
  """The Method registered as `name`, or the plain (GRPO-family) Method for a baseline."""
  from tokenrl.objectives.config import OBJECTIVES  # pylint: disable=g-import-not-at-top
  if name in METHODS:
    return METHODS[name]
  if name in OBJECTIVES:
    m = Method()
    m.name = name
    return m
  raise ValueError(f"rl.objective: expected one of {tuple(OBJECTIVES) + tuple(METHODS)}, got {name!r}")
