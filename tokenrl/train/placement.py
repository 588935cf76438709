"""Where the train loop's arrays live: one mesh for the run, rows split over its batch axes.

The same code runs on one CPU, one accelerator, 8 fake CPU devices, or every worker of a pod
(multi-controller: each process runs this script and holds the same host-side data):

  place = Placement(make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
  rollout = place.sample(params, prompts, num_samples=G, ...)   # host numpy, every process
  state, m = place.step(step_fn, shardings)(state, place.put(batch))

* Rows. Batches [N,...] are split over the (data, fsdp) axes (`batch_sharding`); each process
  copies only the rows its devices hold (`put_batch`). Host-side work (decoding, rewards,
  advantages) sees the whole batch on every process: rollouts are gathered back with
  `process_allgather`, rewards are deterministic, so every process computes the same numbers
  and only process 0 writes logs and metrics.
* Odd row counts. The sampler and the log-prob functions pad rows up to a multiple of the
  number of row shards (copies of the last row; row i's sample uses fold_in(rng, i), so the real
  rows are unchanged) and drop the padding afterwards.
* Decode layout. The sampler reads params in `decode_param_shardings` (no fsdp: every weight is
  read once per token, gathering fsdp shards each step would dominate); the reshard is one
  explicit `jax.device_put`, skipped when the layouts are equal (fsdp = 1).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from tokenrl.models.config import ModelConfig
from tokenrl.rollout import sample as sample_lib
from tokenrl.rollout.controls import compose_with_states
from tokenrl.train import mesh as mesh_lib
from tokenrl.train import sharded


class Placement:
  """A run's mesh, its batch sharding, and the host <-> device moves of the train loop."""

  def __init__(self, mesh: Mesh, model: ModelConfig, sampler: Callable[..., Any] | None = None,
               control: tuple[Any, Any] = (None, None)):
    self.mesh = mesh
    self.model = model
    # `tokenrl.rollout.sample` or a drop-in with its signature (tokenrl.train.decoding).
    self.sampler = sample_lib if sampler is None else sampler
    # (logit processor, its processor_state) of sampler.control, applied to every sample() after
    # a caller's own processor (tokenrl.eval.control_build); (None, None) = none.
    self.control = control
    self.batch = mesh_lib.batch_sharding(mesh)
    spec = self.batch.spec[0] if len(self.batch.spec) else None
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    self.row_shards = int(math.prod(mesh.shape[a] for a in axes))  # data·fsdp
    self._decode_layout = mesh.shape.get("fsdp", 1) > 1

  # ---- host views ------------------------------------------------------------------------
  @staticmethod
  def host(x: Any) -> np.ndarray:
    """numpy value of a (possibly multi-process) array, the same on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  def check_rows(self, n: int, what: str) -> None:
    if n % self.row_shards:
      raise ValueError(f"{what}: {n} rows do not split over the mesh's {self.row_shards} row "
                       f"shards (mesh.data x mesh.fsdp = {dict(self.mesh.shape)}); make it a "
                       f"multiple of {self.row_shards}")

  def _pad_to(self, n: int, per_row: int = 1) -> int:
    """Smallest m >= n with m·per_row divisible by the row shards."""
    m = n
    while (m * per_row) % self.row_shards:
      m += 1
    return m

  def gather_examples(self, local: Sequence[Any]) -> list[Any]:
    """The global batch from every process's slice of the input pipeline, in global order.

    `make_dataset` shards one global stream by stride (element j -> process j mod P), so the
    global batch interleaves the processes' local batches; examples travel as JSON bytes.
    """
    count = jax.process_count()
    if count == 1:
      return list(local)
    blob = np.frombuffer(json.dumps(list(local), default=_json_default).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:blob.size] = blob
    every = np.asarray(multihost_utils.process_allgather(padded))  # [P, max bytes]
    parts = [json.loads(every[i, :int(np.ravel(sizes)[i])].tobytes()) for i in range(count)]
    if len({len(p) for p in parts}) != 1:
      raise ValueError(f"processes hold different local batch sizes {[len(p) for p in parts]}")
    return [parts[j % count][j // count] for j in range(count * len(parts[0]))]

  # ---- batches and steps --------------------------------------------------------------------
  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays of a host batch (every leaf [N,...], N a multiple of the row shards)."""
    return sharded.put_batch(batch, self.batch)

  def step(self, step_fn: Callable, state_shardings: Any) -> Callable:
    """jit(step_fn) with the state pinned to `state_shardings` and the batch to its rows."""
    return sharded.shard_step(step_fn, state_shardings, self.batch)

  def state(self, params: Any, tx: Any) -> tuple[Any, Any]:
    """(TrainState, its shardings) around `params`, optimizer state created in place."""
    return sharded.state_from_params(params, tx, self.model, self.mesh)

  def rows_fn(self, fn: Callable) -> Callable:
    """(params, *row_arrays [N,...]) -> host numpy outputs [N,...], any N (rows padded)."""

    def call(params, *arrays):
      n = np.shape(arrays[0])[0]
      m = self._pad_to(n)
      padded = [np.concatenate([a, np.repeat(a[-1:], m - n, axis=0)]) if m > n else np.asarray(a)
                for a in arrays]
      out = fn(params, *(sharded.put_batch(a, self.batch) for a in padded))
      return jax.tree.map(lambda x: self.host(x)[:n], out)

    return call

  # ---- sampling ---------------------------------------------------------------------------
  def decode_params(self, params: Any) -> Any:
    """params in the sampler's layout (one explicit reshard when fsdp > 1)."""
    if not self._decode_layout:
      return params
    target = mesh_lib.with_extra_params(
        mesh_lib.decode_param_shardings(self.model, self.mesh), params, self.mesh)
    return jax.device_put(params, target)

  def sample(self, params: Any, prompts: Sequence[Sequence[int]], *, num_samples: int = 1,
             decode_params: Any = None, **kwargs) -> Any:
    """`tokenrl.rollout.sample` on the mesh; returns a Rollout of host numpy arrays [B·G,...].

    `decode_params`: params already in the decode layout (saves the reshard when sampling
    several times from the same params).
    """
    prompts = [list(p) for p in prompts]
    b = len(prompts)
    m = self._pad_to(b, num_samples)
    prompts = prompts + [prompts[-1]] * (m - b)
    p = self.decode_params(params) if decode_params is None else decode_params
    if self.control[0] is not None:
      kwargs["logit_processor"], kwargs["processor_state"] = compose_with_states(
          (kwargs.get("logit_processor"), kwargs.get("processor_state")), self.control)
    out = self.sampler(p, prompts, config=self.model, num_samples=num_samples,
                       prompt_sharding=self.batch, **kwargs)
    return jax.tree.map(lambda x: self.host(x)[:b * num_samples], out)


def _json_default(x: Any) -> Any:
  """Example fields JSON lacks: bytes (TFDS text) as str, numpy scalars/arrays as lists."""
  if isinstance(x, bytes):
    return x.decode()
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f"example field of type {type(x).__name__} cannot cross processes")
