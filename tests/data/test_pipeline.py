"""Grain pipeline: resumable state, sharded = unsharded, one clean pass without repeat."""
import pytest

from tokenrl.data.pipeline import make_dataset

EXAMPLES = [{"prompt": f"{i}+0=", "answer": str(i)} for i in range(23)]


def _ids(batch):
  return [int(ex["answer"]) for ex in batch]


def test_state_restores_the_same_batches():
  it = make_dataset(EXAMPLES, batch_size=4, seed=7, shard_index=0, shard_count=1)
  for _ in range(3):
    next(it)
  state = it.get_state()
  after = [_ids(next(it)) for _ in range(9)]  # crosses an epoch boundary (23 examples)
  fresh = make_dataset(EXAMPLES, batch_size=4, seed=7, shard_index=0, shard_count=1)
  fresh.set_state(state)
  assert [_ids(next(fresh)) for _ in range(9)] == after


def test_shards_partition_the_global_batches():
  global_it = make_dataset(EXAMPLES, batch_size=6, seed=3, shard_index=0, shard_count=1)
  shards = [make_dataset(EXAMPLES, batch_size=2, seed=3, shard_index=i, shard_count=3)
            for i in range(3)]
  for _ in range(8):
    parts = [_ids(next(s)) for s in shards]
    assert sorted(sum(parts, [])) == sorted(_ids(next(global_it)))
    if len(set(sum(parts, []))) == 6:  # within one epoch: pairwise disjoint
      assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])


def test_one_pass_sees_every_example_once():
  seen = []
  for i in range(2):
    for batch in make_dataset(EXAMPLES, batch_size=5, seed=0, repeat=False, shard_index=i,
                              shard_count=2):
      seen += _ids(batch)
  assert sorted(seen) == list(range(23))
  ordered = make_dataset(EXAMPLES, batch_size=10, seed=0, shuffle=False, repeat=False,
                         shard_index=0, shard_count=1)
  assert [_ids(b) for b in ordered] == [list(range(10)), list(range(10, 20)), [20, 21, 22]]


def test_map_fn_and_defaults():
  it = make_dataset(list(range(4)), batch_size=2, seed=0, shuffle=False,
                    map_fn=lambda i: {"prompt": str(i)})  # default shard: jax process 0 of 1
  assert next(it) == [{"prompt": "0"}, {"prompt": "1"}]


@pytest.mark.parametrize("kwargs,msg", [
    (dict(batch_size=0), "batch_size"), (dict(shard_index=2, shard_count=2), "shard_index"),
])
def test_validation(kwargs, msg):
  args = dict(batch_size=2, seed=0, shard_index=0, shard_count=1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=msg):
    make_dataset(EXAMPLES, **args)
  with pytest.raises(ValueError, match="empty"):
    make_dataset([], batch_size=1, seed=0, shard_index=0, shard_count=1)
