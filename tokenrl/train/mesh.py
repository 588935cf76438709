"""The device mesh and the shardings of the train state, batches and decode params.

Mesh axes are ("data", "fsdp", "tensor") (tokenrl.models.sharding.MESH_AXES):

  data    replicas of the params; the batch N is split over it.
  fsdp    the batch N is split over it too, and params / optimizer state are split on their
          "embed" (D) dimension, gathered layer by layer inside the step.
  tensor  heads (Q, K), MLP (F) and vocabulary (V) dimensions are split over it.

Batches [N,...] are split over data × fsdp; params follow the logical-axis rules; optimizer
state leaves mirror the param they belong to; scalars are replicated.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.models.sharding import MESH_AXES, RULES, tree_shardings
from tokenrl.train.steps import TrainState

_FIELDS = ("mesh.data", "mesh.fsdp", "mesh.tensor")


def mesh_sizes(data: int, fsdp: int, tensor: int, n: int, *,
               available: str = "there are") -> tuple[int, int, int]:
  """(data, fsdp, tensor) for n devices; one size may be -1 (the rest). ValueError naming the
  config fields otherwise. `available` words the device count in the mismatch error."""
  sizes = [data, fsdp, tensor]
  for name, size in zip(_FIELDS, sizes):
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"{name} must be a positive int or -1 (fill), got {size!r}")
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"only one of {'/'.join(_FIELDS)} may be -1, got {tuple(sizes)}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if fill:
    if n % known:
      raise ValueError(f"{'/'.join(_FIELDS)} = {tuple(sizes)}: the fixed sizes (product {known}) "
                       f"do not divide the {n} devices")
    sizes[fill[0]] = n // known
  elif known != n:
    raise ValueError(f"{'/'.join(_FIELDS)} = {tuple(sizes)} has {known} devices, but {available} "
                     f"{n}; set one of them to -1 to fill")
  return int(sizes[0]), int(sizes[1]), int(sizes[2])


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: every device of every process).

  Sizes are the config's mesh.data / mesh.fsdp / mesh.tensor; one of them may be -1, which
  takes all remaining devices. The axes are `AxisType.Auto`: shardings are pinned with
  NamedSharding at jit boundaries and XLA's partitioner propagates them inside.
  """
  n = len(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(data, fsdp, tensor, n)
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types,
                       devices=None if devices is None else list(devices))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (scalars, metrics, RNG keys)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules: dict[str, Any] | None = None) -> NamedSharding:
  """Leading dim N of [N,...] split over the rules' "batch" axes (data × fsdp); the rest whole.

  N must be divisible by data·fsdp (jit raises on the first call otherwise).
  """
  axes = (RULES if rules is None else rules)["batch"]
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  axes = tuple(a for a in axes if a in mesh.shape)
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def param_shardings(config: ModelConfig, mesh: Mesh, rules: dict[str, Any] | None = None) -> Any:
  """NamedSharding per param leaf from the logical axes of `transformer.param_specs`.

  A dimension that its mesh axes do not divide is replicated (tokenrl.models.sharding).
  """
  return tree_shardings(transformer.param_logical_axes(config), transformer.param_shapes(config),
                        mesh, rules)


def with_extra_params(p_shardings: dict[str, Any], params: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """`p_shardings` plus a replicated sharding for every top-level key of `params` outside the
  model's table: method-owned params such as a value head ([D] vectors) are small."""
  rep = replicated(mesh)
  extra = {k: jax.tree.map(lambda _: rep, v) for k, v in params.items() if k not in p_shardings}
  return {**p_shardings, **extra}


def decode_rules(rules: dict[str, Any] | None = None) -> dict[str, Any]:
  """`rules` without the fsdp axis: params whole on every data/fsdp replica, split on tensor.

  Decoding reads every weight once per token for a few rows, so gathering FSDP shards at each
  step would dominate; the sampler keeps a tensor-only layout instead.
  """
  out = {}
  for name, axes in (RULES if rules is None else rules).items():
    flat = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in flat if a != "fsdp")
    if kept:
      out[name] = kept[0] if len(kept) == 1 else kept
  return out


def decode_param_shardings(config: ModelConfig, mesh: Mesh,
                           rules: dict[str, Any] | None = None) -> Any:
  """Param shardings for the sampler: `param_shardings` with the fsdp axis dropped.

  Reshard with `jax.device_put(params, decode_param_shardings(...))` before `sample`.
  """
  return param_shardings(config, mesh, decode_rules(rules))


def _mirror(opt_state: Any, params: Any, p_shardings: Any, mesh: Mesh) -> Any:
  """Sharding of each optimizer-state leaf: its param's when the path and shape match.

  An optax state embeds param-shaped trees (Adam's mu, nu; Lion's momentum) under extra keys,
  so a leaf whose key path *ends with* a param's path and has that param's shape takes that
  param's sharding. Otherwise a leaf whose shape belongs to params of one single sharding takes
  it; anything else (counts, factored statistics, schedules' state) is replicated.
  """
  by_path: dict[tuple, tuple[tuple[int, ...], NamedSharding]] = {}
  by_shape: dict[tuple[int, ...], set] = defaultdict(set)
  flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_s = jax.tree.leaves(p_shardings)
  for (path, leaf), sharding in zip(flat_p, flat_s):
    by_path[tuple(path)] = (tuple(leaf.shape), sharding)
    by_shape[tuple(leaf.shape)].add(sharding.spec)
  rep = replicated(mesh)

  def pick(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    if not shape:
      return rep
    path = tuple(path)
    for i in range(len(path)):
      hit = by_path.get(path[i:])
      if hit is not None and hit[0] == shape:
        return hit[1]
    specs = by_shape.get(shape, set())
    if len(specs) == 1:
      return NamedSharding(mesh, next(iter(specs)))
    return rep

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def state_shardings(state_abstract: Any, config: ModelConfig, mesh: Mesh,
                    rules: dict[str, Any] | None = None) -> Any:
  """A TrainState of NamedShardings for `state_abstract` (a TrainState of arrays or of
  jax.ShapeDtypeStruct, e.g. from `jax.eval_shape(create, ...)`).

  params: the logical-axis rules; opt_state: mirrors params (see `_mirror`); step, skipped:
  replicated.
  """
  if not isinstance(state_abstract, TrainState):
    raise ValueError(f"state_abstract must be a TrainState, got {type(state_abstract).__name__}")
  expected = transformer.param_shapes(config)
  shapes = jax.tree.map(lambda x: tuple(x.shape),
                        {k: v for k, v in state_abstract.params.items() if k in expected})
  if shapes != expected:
    raise ValueError(f"state_abstract.params has shapes {shapes}, the model config expects "
                     f"{expected}")
  p_shardings = with_extra_params(param_shardings(config, mesh, rules), state_abstract.params, mesh)
  rep = replicated(mesh)
  return TrainState(step=rep, params=p_shardings,
                    opt_state=_mirror(state_abstract.opt_state, state_abstract.params, p_shardings,
                                      mesh),
                    skipped=rep)


def process_rows(sharding: NamedSharding, num_rows: int) -> np.ndarray:
  """Global row indices (dim 0 of an [N,...] array) that this process's devices hold, ascending.

  This is the slice of the global batch a process feeds to
  `jax.make_array_from_process_local_data` (rows of replicated shards counted once).
  """
  starts = set()
  stops = {}
  for index in sharding.addressable_devices_indices_map((num_rows,)).values():
    sl = index[0]
    start, stop, _ = sl.indices(num_rows)
    starts.add(start)
    stops[start] = stop
  return np.concatenate([np.arange(s, stops[s]) for s in sorted(starts)]).astype(np.int64)
