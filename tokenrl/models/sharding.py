"""Logical-axis sharding: one rules table maps parameter/activation axis names to mesh axes.

Mesh axes are ("data", "fsdp", "tensor"). A dimension whose size the mesh axes do not divide
is replicated instead (tiny test models have e.g. 2 KV heads on a 4-way tensor axis).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes); absent = replicated.
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
}


def _axis_size(mesh: Mesh, axes: Any) -> int:
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: dict[str, Any] | None = None) -> PartitionSpec:
  """PartitionSpec for an array of `shape` whose dims carry logical `names`."""
  rules = RULES if rules is None else rules
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    axes = rules.get(name) if name else None
    if axes is not None:
      flat = (axes,) if isinstance(axes, str) else tuple(axes)
      flat = tuple(a for a in flat if a in mesh.shape and a not in used)
      if flat and size % _axis_size(mesh, flat) == 0:
        used.update(flat)
        spec.append(flat[0] if len(flat) == 1 else flat)
        continue
    spec.append(None)
  return PartitionSpec(*spec)


def tree_shardings(logical_axes: Any, shapes: Any, mesh: Mesh, rules: dict[str, Any] | None = None) -> Any:
  """NamedSharding for every leaf; `logical_axes` and `shapes` are trees of tuples."""
  is_leaf = lambda x: isinstance(x, tuple)
  return jax.tree.map(
      lambda names, shape: NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules)),
      logical_axes, shapes, is_leaf=is_leaf)
