"""Train state and steps on a device mesh: created in place, shardings pinned at jit boundaries.

    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    state, shardings = init_state(model, tx, rng, mesh)            # never whole on one device
    step = shard_step(make_pg_step(tx, ..., jit=False), shardings, batch_sharding(mesh))
    state, metrics = step(state, put_batch(batch, batch_sharding(mesh)))

The same script runs on every process of a multi-host job (after `jax.distributed.initialize`);
`put_batch` / `put_local_batch` turn host numpy batches into global arrays.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.train.mesh import param_shardings, process_rows, replicated, state_shardings
from tokenrl.train.mesh import with_extra_params
from tokenrl.train.steps import TrainState, create_state


def init_state(config: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
               *, dtype: Any = jnp.float32,
               rules: dict[str, Any] | None = None) -> tuple[TrainState, TrainState]:
  """(state, shardings): fresh params + optimizer state, each leaf created in its sharding.

  `jit(create, out_shardings=...)` makes every device compute only its own shard, so no
  device ever holds the whole model. Values equal the unsharded `init_params` (JAX's
  partitionable threefry gives the same random bits whatever the sharding).
  """
  def create(key):
    return create_state(transformer.init_params(config, key, dtype), tx)

  shardings = state_shardings(jax.eval_shape(create, rng), config, mesh, rules)
  rng = _replicate_key(rng, mesh)
  return jax.jit(create, out_shardings=shardings)(rng), shardings


def state_from_params(params: Any, tx: optax.GradientTransformation, config: ModelConfig,
                      mesh: Mesh, *,
                      rules: dict[str, Any] | None = None) -> tuple[TrainState, TrainState]:
  """(state, shardings) around existing params (e.g. `load_hf(..., mesh=mesh)` or the SFT
  warm-up's params when the RL optimizer takes over).

  Params already in their target shardings are used as they are (no copy); global arrays are
  resharded; host or single-device values (identical on every process) are read shard by
  shard. The optimizer state is created in its shardings.
  """
  p_shardings = with_extra_params(param_shardings(config, mesh, rules), params, mesh)
  params = jax.tree.map(_put, params, p_shardings)
  abstract = jax.eval_shape(lambda p: create_state(p, tx), params)
  shardings = state_shardings(abstract, config, mesh, rules)
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  # Two distinct buffers: the state is donated, and one buffer cannot be donated twice.
  zero = lambda: _put(np.zeros((), np.int32), shardings.step)
  return TrainState(step=zero(), params=params, opt_state=opt_state, skipped=zero()), shardings


def shard_step(step_fn: Callable, state_shardings: TrainState,
               batch_sharding: NamedSharding) -> Callable:
  """jit(step_fn) with state and batch shardings pinned and the state donated.

  step_fn(state, batch) -> (state, metrics) is an unjitted step (`make_sft_step(...,
  jit=False)`, `make_pg_step(..., jit=False)`). Every batch leaf [N,...] is split over the
  batch axes; metrics come back replicated. Host numpy batches are placed by jit on a single
  process; with several processes pass global arrays from `put_batch` / `put_local_batch`.
  """
  rep = replicated(batch_sharding.mesh)
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, rep), donate_argnums=0)


def shard_logprob_fn(fn: Callable, params_shardings: Any, batch_sharding: NamedSharding) -> Callable:
  """jit of an unjitted `make_logprob_fn(..., jit=False)`: (params, tokens, segment_ids) ->
  (logp, entropy) [N,T], with params in `params_shardings` and rows split like the batch."""
  return jax.jit(fn, in_shardings=(params_shardings, batch_sharding, batch_sharding),
                 out_shardings=(batch_sharding, batch_sharding))


def put_batch(batch: Any, sharding: NamedSharding) -> Any:
  """Global arrays from a host batch (tree of [N,...] numpy) that every process holds whole.

  Each process copies only the rows its devices hold (`process_rows`).
  """
  n = _rows(batch)
  rows = process_rows(sharding, n)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)[rows], np.shape(x)),
      batch)


def put_local_batch(local_batch: Any, sharding: NamedSharding, num_rows: int) -> Any:
  """Global arrays of `num_rows` rows from each process's own rows (tree of [n_local,...]).

  The local rows must be `process_rows(sharding, num_rows)` of the global batch, in order
  (e.g. each host loads its slice of the data); the global batch is never on one host.
  """
  want = len(process_rows(sharding, num_rows))
  if _rows(local_batch) != want:
    raise ValueError(f"local_batch has {_rows(local_batch)} rows; this process holds {want} of "
                     f"the {num_rows} global rows under {sharding.spec}")
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), (num_rows,) + np.shape(x)[1:]), local_batch)


def abstract_state(state_abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for `Checkpointer.restore`: orbax then
  reads each shard straight onto its device, whatever mesh wrote the checkpoint."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      state_abstract, shardings)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
  """x in `sharding`: a no-op when it already is; works for meshes spanning several processes."""
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  # A process-local value (numpy, or on this host's devices) is the same on every process.
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def _rows(batch: Any) -> int:
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every batch leaf must be [N,...] with one N, got leading sizes {sizes}")
  return sizes.pop()


def _replicate_key(rng: jax.Array, mesh: Mesh) -> jax.Array:
  """The PRNG key as a replicated global array (a process-local key cannot enter a jit that
  spans other processes' devices)."""
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  data = np.asarray(jax.random.key_data(rng) if typed else rng)
  put = jax.make_array_from_callback(data.shape, replicated(mesh), lambda idx: data[idx])
  return jax.random.wrap_key_data(put, impl=jax.random.key_impl(rng)) if typed else put
