"""The name -> Method instance table filled by `@register` (kept apart to avoid import cycles)."""

from __future__ import annotations

from typing import Any

METHODS: dict[str, Any] = {}


def register(cls: type) -> type:
  """Class decorator: instantiate `cls` and register it under `cls.name` (unique)."""
  name = cls.name
  if name in METHODS:
    raise ValueError(f"method {name!r} is registered twice ({type(METHODS[name]).__name__}, "
                     f"{cls.__name__})")
  METHODS[name] = cls()
  return cls
