"""Two local processes × 4 CPU devices under jax.distributed = one process × 8 devices.

Each worker (tests/train/mp_worker.py) feeds only its own rows of the global batch; losses,
final params and greedy tokens must equal the same code run here on 8 local devices.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train import mp_worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path, shape, num_processes=2, timeout=420):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
             # 4 devices per process; less LLVM optimization: these workers are compile-bound.
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  port = _free_port()
  procs, logs = [], []
  for i in range(num_processes):
    log = open(tmp_path / f"worker{i}.log", "w+")
    cmd = [sys.executable, "-m", "tests.train.mp_worker", "--process_id", str(i),
           "--num_processes", str(num_processes), "--port", str(port),
           "--mesh", ",".join(map(str, shape)), "--out", str(tmp_path / f"out{i}.npz")]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    logs.append(log)
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = []
  for log in logs:
    log.seek(0)
    tails.append(log.read()[-3000:])
    log.close()
  assert codes == [0] * num_processes, "\n---\n".join(tails)
  return [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(num_processes)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_equal_one_process(tmp_path):
  shape = (2, 2, 2)
  results = _launch(tmp_path, shape)
  # The processes fed disjoint halves of the batch rows.
  rows = [r.pop("rows") for r in results]
  assert sorted(np.concatenate(rows).tolist()) == list(range(mp_worker.N))
  expected = mp_worker.run(shape)  # here: one process, 8 devices (tests/conftest.py)
  expected.pop("rows")
  for result in results:
    assert result.keys() == expected.keys()
    for key in expected:
      if key == "tokens":
        np.testing.assert_array_equal(result[key], expected[key])
      else:
        np.testing.assert_allclose(result[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
