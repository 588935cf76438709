"""Grain input pipeline: examples -> shuffled, repeated, per-process sharded batches.

  source -> map(map_fn) -> shuffle(seed) -> repeat -> [shard_index::shard_count] -> batch

Sharding comes after shuffle + repeat and is a stride over one global stream, so with P
processes of batch b the union of the processes' k-th batches is exactly the k-th batch of size
b*P of the unsharded pipeline (sharded = unsharded), and within a step processes never see the
same stream element. Every process builds the same global order (same seed), no communication.

The returned iterator is grain's `DatasetIterator`: `get_state()` is a small JSON-able dict
(the stream position) to save with the checkpoint; `set_state(state)` on a freshly built
iterator (same arguments) resumes exactly where the saved one was.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import grain


def _as_map_dataset(source: Any) -> grain.MapDataset:
  if isinstance(source, grain.MapDataset):
    return source
  if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
    return grain.MapDataset.source(source)
  raise ValueError("make_dataset: source must be a sequence of examples, a random-access data "
                   f"source (__len__ + __getitem__) or a grain.MapDataset, got "
                   f"{type(source).__name__}")


def make_dataset(source: Sequence[Mapping[str, Any]] | Any, *, batch_size: int, seed: int,
                 shuffle: bool = True, repeat: bool = True, shard_index: int | None = None,
                 shard_count: int | None = None,
                 map_fn: Callable[[Any], Any] | None = None,
                 drop_remainder: bool = False, prefetch_batches: int = 4,
                 num_threads: int = 2) -> grain.DatasetIterator:
  """A checkpointable iterator of batches; each batch is a list of `batch_size` examples.

  Args:
    source: a list of example dicts, a random-access source (e.g. `tfds.data_source(...)`), or
      a `grain.MapDataset`.
    batch_size: examples per batch on this process (B).
    seed: shuffle seed (every process must use the same one). Epochs are reshuffled.
    shuffle: shuffle the examples (off: source order, e.g. for evaluation).
    repeat: cycle for ever (training); off: one pass, the last batch may be short.
    shard_index, shard_count: this process's slice; default jax.process_index() /
      jax.process_count().
    map_fn: applied to each record before batching (e.g. bytes -> example dict).
    drop_remainder: drop a final short batch (only matters when repeat=False).
    prefetch_batches, num_threads: grain's read-ahead (batches) and reader threads; small
      defaults because RL steps consume few batches per second (grain's own default reads 500
      ahead with 16 threads, which costs seconds of CPU per iterator).

  Returns:
    A grain DatasetIterator; `next(it)` -> list[example] of length B.

  Raises:
    ValueError: empty source, batch_size < 1, or shard_index outside [0, shard_count).
  """
  if shard_index is None or shard_count is None:
    import jax  # Only needed for the defaults; keeps this module importable without jax.
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if batch_size < 1:
    raise ValueError(f"make_dataset: batch_size must be >= 1, got {batch_size}")
  if prefetch_batches < 0 or num_threads < 0:
    raise ValueError(f"make_dataset: prefetch_batches and num_threads must be >= 0, got "
                     f"{prefetch_batches}, {num_threads}")
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"make_dataset: need 0 <= shard_index < shard_count, got shard_index="
                     f"{shard_index}, shard_count={shard_count}")
  ds = _as_map_dataset(source)
  if len(ds) == 0:
    raise ValueError("make_dataset: source is empty")
  if map_fn is not None:
    ds = ds.map(map_fn)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat()  # Reseeds the shuffle each epoch.
  ds = ds[shard_index::shard_count]
  ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch_batches)))
