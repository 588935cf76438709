"""One process of a multi-controller CPU job, for tests/train/test_multiprocess.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
      python -m tests.train.mp_worker --process_id 0 --num_processes 2 --port 12355 \
        --mesh 2,2,2 --out result.npz

Every process runs the same `run` on the global mesh (as a TPU pod's workers do); the test
calls `run` itself in one 8-device process and compares.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import numpy as np
import optax

from tokenrl import models
from tokenrl.methods.config import resolve_objective, rl_config
from tokenrl.objectives import POLICY_LOSS_OPTIONS
from tokenrl.rollout.sampler import sample
from tokenrl.train import mesh as mesh_lib
from tokenrl.train import sharded
from tokenrl.train import steps as steps_lib

CONFIG = models.tiny("llama", vocab_size=32, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=64)
P_LEN, T_LEN, N, STEPS = 4, 4, 8, 2


def _sft_batch(i: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(10 + i)
  tokens = rng.integers(1, 32, size=(N, P_LEN + T_LEN)).astype(np.int32)
  return {"tokens": tokens, "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}


def _pg_batch(i: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(20 + i)
  batch = _sft_batch(i)
  del batch["loss_mask"]
  return {**batch, "mask": np.ones((N, T_LEN), np.int32),
          "advantages": rng.normal(size=(N,)).astype(np.float32),
          "sampler_logp": -rng.uniform(1, 4, size=(N, T_LEN)).astype(np.float32),
          "token_weights": np.ones((N, T_LEN), np.float32)}


def _gather(tree: Any) -> Any:
  """Host numpy copies of global arrays (every process gets the whole value)."""
  from jax.experimental import multihost_utils
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def run(mesh_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
  """SFT steps from an in-place init, then policy-gradient steps after switching optimizer,
  then greedy sampling in the decode layout; returns losses, final params and tokens."""
  mesh = mesh_lib.make_mesh(*mesh_shape)
  bs = mesh_lib.batch_sharding(mesh)
  out: dict[str, Any] = {"sft_loss": [], "pg_loss": []}

  sft_tx = optax.adamw(1e-2, eps=1e-3)
  state, shardings = sharded.init_state(CONFIG, sft_tx, jax.random.key(0), mesh)
  step = sharded.shard_step(steps_lib.make_sft_step(sft_tx, config=CONFIG, jit=False), shardings, bs)
  rows = mesh_lib.process_rows(bs, N)
  for i in range(STEPS):  # each process feeds only the rows its devices hold
    local = {k: v[rows] for k, v in _sft_batch(i).items()}
    state, metrics = step(state, sharded.put_local_batch(local, bs, N))
    out["sft_loss"].append(float(metrics["loss"]))

  pg_tx = optax.sgd(0.1, momentum=0.9)
  state, shardings = sharded.state_from_params(state.params, pg_tx, CONFIG, mesh)
  opts = resolve_objective(rl_config())
  step = sharded.shard_step(steps_lib.make_pg_step(
      pg_tx, config=CONFIG, prompt_len=P_LEN, loss_options={k: opts[k] for k in POLICY_LOSS_OPTIONS},
      temperature=1.0, micro_batch_size=4, jit=False), shardings, bs)
  for i in range(STEPS):
    state, metrics = step(state, sharded.put_batch(_pg_batch(i), bs))
    out["pg_loss"].append(float(metrics["loss"]))

  decode = jax.device_put(state.params, mesh_lib.decode_param_shardings(CONFIG, mesh))
  prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
  rollout = sample(decode, prompts, config=CONFIG, rng=jax.random.key(1), max_new_tokens=4,
                   temperature=0.0, num_samples=2, stop_tokens=(), prompt_sharding=bs)
  out["tokens"] = _gather(rollout.tokens)
  out["rows"] = rows
  for path, leaf in jax.tree_util.tree_flatten_with_path(_gather(state.params))[0]:
    out["param" + jax.tree_util.keystr(path)] = leaf
  return {k: np.asarray(v) for k, v in out.items()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--mesh", default="2,2,2")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                             num_processes=args.num_processes, process_id=args.process_id)
  shape = tuple(int(s) for s in args.mesh.split(","))
  result = run(shape)
  np.savez(args.out, **result)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
