"""Sharded = unsharded on 8 CPU devices: train steps, in-place init, sampling, checkpoints.

Each mesh shape compiles its own steps, so the file shares one tiny model, one optimizer and
one single-device reference run across tests.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from tokenrl import models
from tokenrl.methods.config import resolve_objective, rl_config
from tokenrl.objectives import POLICY_LOSS_OPTIONS
from tokenrl.optim.builder import build_optimizer, optimizer_config
from tokenrl.rollout.sampler import sample
from tokenrl.train import mesh as mesh_lib
from tokenrl.train import sharded
from tokenrl.train import steps as steps_lib
from tokenrl.train.checkpoint import Checkpointer

# D=64, F=128, V=64 split 8 ways; Q=4 heads split by tensor ≤ 4; K=2 KV heads are replicated
# on a 4-way tensor axis (the rules' fallback) and split on a 2-way one.
CONFIG = models.tiny("qwen2", vocab_size=64, dim=64, num_heads=4, num_kv_heads=2, mlp_dim=128)
# SGD with momentum: a param-shaped optimizer state to shard, and an update linear in the
# gradient, so reduction-order rounding stays at f32 epsilon (Adam's g/√v amplifies it where
# g ≈ 0).
TX = optax.sgd(0.1, momentum=0.9)
P_LEN, T_LEN, N, STEPS = 4, 6, 8, 3
# Each shape compiles its own two steps (~6 s of CPU each); the 1-D meshes are also covered
# axis by axis by (2,2,2), so they run with the slow tests.
MESHES = [pytest.param((8, 1, 1), marks=pytest.mark.slow),
          pytest.param((1, 8, 1), marks=pytest.mark.slow), (1, 2, 4), (2, 2, 2)]


def _loss_options():
  opts = resolve_objective(rl_config())
  return {k: opts[k] for k in POLICY_LOSS_OPTIONS}


def _sft_batch(i):
  rng = np.random.default_rng(100 + i)
  tokens = rng.integers(1, 64, size=(N, P_LEN + T_LEN)).astype(np.int32)
  seg = np.ones_like(tokens)
  tokens[1, :3], seg[1, :3] = 0, 0  # a left-padded row
  return {"tokens": tokens, "segment_ids": seg, "loss_mask": seg.copy()}


def _pg_batch(i):
  rng = np.random.default_rng(200 + i)
  batch = _sft_batch(i)
  del batch["loss_mask"]
  mask = np.ones((N, T_LEN), np.int32)
  mask[2, 4:] = 0
  return {**batch, "mask": mask, "advantages": rng.normal(size=(N,)).astype(np.float32),
          "sampler_logp": -rng.uniform(1, 5, size=(N, T_LEN)).astype(np.float32),
          "token_weights": np.ones((N, T_LEN), np.float32)}


BATCHES = {"sft": _sft_batch, "pg": _pg_batch}


def _step_fn(kind, micro=0, jit=True):
  if kind == "sft":
    return steps_lib.make_sft_step(TX, config=CONFIG, micro_batch_size=micro, jit=jit)
  return steps_lib.make_pg_step(TX, config=CONFIG, prompt_len=P_LEN, loss_options=_loss_options(),
                                temperature=1.0, micro_batch_size=micro, jit=jit)


@functools.cache
def _host_params():
  init = jax.jit(models.init_params, static_argnums=0)  # one compile, not one per eager op
  return jax.tree.map(np.asarray, init(CONFIG, jax.random.key(0)))


@functools.cache
def _reference(kind):
  """(losses, host params) of STEPS single-device steps."""
  step = _step_fn(kind)
  state = steps_lib.create_state(jax.tree.map(jnp.asarray, _host_params()), TX)
  losses = []
  for i in range(STEPS):
    state, metrics = step(state, BATCHES[kind](i))
    losses.append(float(metrics["loss"]))
  return losses, jax.tree.map(np.asarray, state.params)


def _assert_tree_close(actual, expected, **tol):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, **tol), actual, expected)


def _specs(tree):
  return jax.tree.map(lambda x: x.sharding.spec, tree)


def test_make_mesh_fills_and_validates():
  mesh = mesh_lib.make_mesh(-1, 2, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert dict(mesh_lib.make_mesh(1, -1, 1).shape)["fsdp"] == 8
  with pytest.raises(ValueError, match="mesh.data/mesh.fsdp/mesh.tensor"):
    mesh_lib.make_mesh(2, 2, 1)
  with pytest.raises(ValueError, match="do not divide the 8 devices"):
    mesh_lib.make_mesh(-1, 3, 1)
  with pytest.raises(ValueError, match="only one"):
    mesh_lib.make_mesh(-1, -1, 1)
  with pytest.raises(ValueError, match="mesh.tensor"):
    mesh_lib.make_mesh(1, 8, 0)


def test_state_shardings_follow_rules_and_mirror_params():
  mesh = mesh_lib.make_mesh(1, 2, 4)
  opt_cfg = optimizer_config()
  opt_cfg.name = "lion_kappa"
  for tx in (TX, optax.adamw(1e-3), build_optimizer(opt_cfg, 10)):
    abstract = jax.eval_shape(lambda p, tx=tx: steps_lib.create_state(p, tx), _host_params())
    sh = mesh_lib.state_shardings(abstract, CONFIG, mesh)
    layers = sh.params["layers"]
    assert layers["q"].spec == P(None, "fsdp", "tensor", None)
    assert layers["k"].spec == P(None, "fsdp", None, None)  # K=2 heads: not split 4 ways
    assert layers["down"].spec == P(None, "tensor", "fsdp")
    assert sh.params["embed"].spec == P("tensor", "fsdp")
    assert sh.step.spec == P() and sh.skipped.spec == P()
    # Every optimizer leaf shaped like a param sits under that param's path with its sharding.
    by_path = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(sh.params)[0]}
    mirrored = 0
    for (path, leaf), s in zip(jax.tree_util.tree_flatten_with_path(abstract.opt_state)[0],
                               jax.tree.leaves(sh.opt_state)):
      key = jax.tree_util.keystr(path)
      hits = [v for k, v in by_path.items() if key.endswith(k)]
      if leaf.ndim == 0:
        assert s.spec == P()
      elif hits:
        assert s == hits[0]
        mirrored += 1
    assert mirrored >= len(by_path)
  with pytest.raises(ValueError, match="shapes"):
    mesh_lib.state_shardings(abstract, CONFIG.replace(dim=32, head_dim=8), mesh)
  with pytest.raises(ValueError, match="TrainState"):
    mesh_lib.state_shardings(abstract.params, CONFIG, mesh)


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_steps_equal_one_device(shape):
  mesh = mesh_lib.make_mesh(*shape)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  # Micro-batches of 4 rows stay split over the data×fsdp axes when those divide 4.
  micro = 4 if 4 % (shape[0] * shape[1]) == 0 else 0
  for kind in ("sft", "pg"):
    state, shardings = sharded.state_from_params(_host_params(), TX, CONFIG, mesh)
    step = sharded.shard_step(_step_fn(kind, micro if kind == "pg" else 0, jit=False), shardings,
                              batch_sharding)
    losses = []
    for i in range(STEPS):
      state, metrics = step(state, sharded.put_batch(BATCHES[kind](i), batch_sharding))
      losses.append(float(metrics["loss"]))
    ref_losses, ref_params = _reference(kind)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-6)
    _assert_tree_close(state.params, ref_params, rtol=1e-5, atol=1e-6)
    assert _specs(state) == jax.tree.map(lambda s: s.spec, shardings)
    assert int(state.step) == STEPS


def _prompts():
  rng = np.random.default_rng(7)
  return [list(rng.integers(1, 64, size=n)) for n in (3, 5, 2, 6)]


def _greedy(params, **kw):
  return sample(params, _prompts(), config=CONFIG, rng=jax.random.key(1), max_new_tokens=6,
                temperature=0.0, num_samples=2, stop_tokens=(), **kw)


def _assert_same_rollout(actual, expected):
  np.testing.assert_array_equal(np.asarray(actual.tokens), np.asarray(expected.tokens))
  np.testing.assert_array_equal(np.asarray(actual.mask), np.asarray(expected.mask))
  np.testing.assert_allclose(np.asarray(actual.logprobs), np.asarray(expected.logprobs),
                             rtol=1e-5, atol=1e-5)


def test_init_in_place_then_sample_with_fsdp_params():
  mesh = mesh_lib.make_mesh(1, 2, 4)
  state, shardings = sharded.init_state(CONFIG, TX, jax.random.key(0), mesh)
  assert _specs(state) == jax.tree.map(lambda s: s.spec, shardings)
  assert state.params["layers"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)
  # Each device holds 1/8 of the embedding (V split 4 ways, D split 2 ways).
  assert state.params["embed"].addressable_shards[0].data.shape == (16, 32)
  _assert_tree_close(state.params, _host_params(), rtol=1e-6, atol=1e-7)
  host = jax.tree.map(np.asarray, state.params)
  out = _greedy(state.params, prompt_sharding=mesh_lib.batch_sharding(mesh))
  _assert_same_rollout(out, _greedy(jax.tree.map(jnp.asarray, host)))


def test_sample_after_reshard_to_decode_layout():
  mesh = mesh_lib.make_mesh(2, 2, 2)
  state, _ = sharded.state_from_params(_host_params(), TX, CONFIG, mesh)
  decode = jax.device_put(state.params, mesh_lib.decode_param_shardings(CONFIG, mesh))
  specs = jax.tree.leaves(_specs(decode), is_leaf=lambda x: isinstance(x, P))
  assert all("fsdp" not in jax.tree.leaves(tuple(s)) for s in specs)
  assert decode["layers"]["k"].sharding.spec == P(None, None, "tensor", None)
  out = _greedy(decode, prompt_sharding=mesh_lib.batch_sharding(mesh))
  assert out.tokens.sharding.spec[0] == ("data", "fsdp")  # rows stayed split
  _assert_same_rollout(out, _greedy(jax.tree.map(jnp.asarray, _host_params())))
  with pytest.raises(ValueError, match="prompt rows"):
    sample(decode, _prompts()[:3], config=CONFIG, rng=jax.random.key(1), max_new_tokens=2,
           prompt_sharding=mesh_lib.batch_sharding(mesh))


def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
  source = mesh_lib.make_mesh(1, 8, 1)
  state, _ = sharded.state_from_params(_host_params(), optax.adamw(1e-3), CONFIG, source)
  expected = jax.tree.map(np.asarray, state)
  ckpt = Checkpointer(str(tmp_path), keep=1)
  ckpt.save(5, state, {"note": "fsdp"})
  ckpt.wait()
  target = mesh_lib.make_mesh(2, 2, 2)
  abstract = jax.eval_shape(lambda p: steps_lib.create_state(p, optax.adamw(1e-3)), _host_params())
  shardings = mesh_lib.state_shardings(abstract, CONFIG, target)
  restored, meta = ckpt.restore(sharded.abstract_state(abstract, shardings))
  ckpt.close()
  assert meta == {"note": "fsdp"}
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored, expected)
  assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding == s, restored, shardings)) == \
      [True] * len(jax.tree.leaves(restored))


def test_batch_placement():
  mesh = mesh_lib.make_mesh(2, 2, 2)
  bs = mesh_lib.batch_sharding(mesh)
  assert bs.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(mesh_lib.process_rows(bs, 8), np.arange(8))  # one process
  batch = _sft_batch(0)
  placed = sharded.put_batch(batch, bs)
  assert placed["tokens"].addressable_shards[0].data.shape == (2, P_LEN + T_LEN)
  np.testing.assert_array_equal(np.asarray(placed["tokens"]), batch["tokens"])
  local = sharded.put_local_batch(batch, bs, 8)
  np.testing.assert_array_equal(np.asarray(local["loss_mask"]), batch["loss_mask"])
  with pytest.raises(ValueError, match="has 8 rows; this process holds 16 of the 16"):
    sharded.put_local_batch(batch, bs, 16)
  with pytest.raises(ValueError, match="one N"):
    sharded.put_batch({"a": np.zeros((8, 2)), "b": np.zeros((4,))}, bs)


def test_sharded_logprob_fn_equals_one_device():
  mesh = mesh_lib.make_mesh(2, 2, 2)
  bs = mesh_lib.batch_sharding(mesh)
  p_shardings = mesh_lib.param_shardings(CONFIG, mesh)
  make = lambda jit: steps_lib.make_logprob_fn(config=CONFIG, prompt_len=P_LEN, temperature=1.0,
                                               jit=jit)
  fn = sharded.shard_logprob_fn(make(False), p_shardings, bs)
  batch = sharded.put_batch(_sft_batch(0), bs)
  logp, entropy = fn(jax.device_put(_host_params(), p_shardings), batch["tokens"],
                     batch["segment_ids"])
  assert logp.shape == (N, T_LEN) and logp.sharding.spec == bs.spec
  ref = make(True)(jax.tree.map(jnp.asarray, _host_params()), _sft_batch(0)["tokens"],
                   _sft_batch(0)["segment_ids"])
  np.testing.assert_allclose(np.asarray(logp), np.asarray(ref[0]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(entropy), np.asarray(ref[1]), rtol=1e-5, atol=1e-6)
