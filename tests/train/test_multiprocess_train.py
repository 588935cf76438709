"""The main job on two processes x 4 CPU devices (jax.distributed on 127.0.0.1) = one process x
8 devices: same metrics at every step; SIGTERM on one worker stops both at the same step with a
checkpoint, and rerunning the command finishes with the uninterrupted run's metrics."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARED = ("loss", "reward", "accuracy", "grad_norm", "completion_length", "token_accuracy",
            "kept_groups")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, num_processes, devices, log_dir, tag):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
             # Same flags for the reference and the workers: the comparison is exact-ish.
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  port = _free_port()
  procs = []
  for i in range(num_processes):
    log = open(os.path.join(log_dir, f"{tag}{i}.log"), "w")
    cmd = [sys.executable, "-m", "tests.train.mp_train_worker", "--process_id", str(i),
           "--num_processes", str(num_processes), "--port", str(port), "--workdir", str(workdir)]
    procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                  log))
  return procs


def _wait(procs, log_dir, tag, timeout=900):
  deadline = time.time() + timeout
  codes = []
  for p, log in procs:
    try:
      codes.append(p.wait(timeout=max(1, deadline - time.time())))
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()
  if codes != [0] * len(procs):
    tails = [open(os.path.join(log_dir, f"{tag}{i}.log")).read()[-3000:] for i in range(len(procs))]
    raise AssertionError(f"exit codes {codes}\n" + "\n---\n".join(tails))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _assert_same(got, want):
  assert [m["step"] for m in got] == [m["step"] for m in want]
  for g, w in zip(got, want):
    for key in COMPARED:
      if key in w:
        np.testing.assert_allclose(g[key], w[key], rtol=2e-4, atol=1e-6, err_msg=f"{key} @ {w['step']}")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_like_one_and_resume_after_sigterm(tmp_path):
  ref, two, pre = tmp_path / "ref", tmp_path / "two", tmp_path / "pre"
  logs = str(tmp_path)
  # Reference (1 process x 8 devices) and the 2 x 4 run side by side.
  r = _start(ref, 1, 8, logs, "ref")
  t = _start(two, 2, 4, logs, "two")
  _wait(r, logs, "ref")
  _wait(t, logs, "two")
  want = _metrics(ref)
  assert len(want) == 8
  _assert_same(_metrics(two), want)
  assert not os.path.exists(two / "metrics1.jsonl")  # only process 0 writes
  s_ref = json.load(open(ref / "summary.json"))
  s_two = json.load(open(two / "summary.json"))
  assert s_two["final_accuracy"] == s_ref["final_accuracy"]

  # SIGTERM to worker 1 only, once step 5 is logged: both stop at the same step and save.
  procs = _start(pre, 2, 4, logs, "pre")
  deadline = time.time() + 600
  while time.time() < deadline:
    if os.path.exists(pre / "metrics.jsonl") and len(_metrics(pre)) >= 5:
      break
    if any(p.poll() is not None for p, _ in procs):
      break
    time.sleep(0.2)
  procs[1][0].send_signal(signal.SIGTERM)
  _wait(procs, logs, "pre")
  done = [json.load(open(pre / f"done{i}.json")) for i in range(2)]
  assert done[0] == done[1], done  # the same step on both workers
  if done[0]["preempted"]:
    assert done[0]["steps"] < 8
  # Rerunning the same command resumes and ends where the uninterrupted run ended.
  _wait(_start(pre, 2, 4, logs, "res"), logs, "res")
  got = {m["step"]: m for m in _metrics(pre)}  # a resumed step is logged again: keep the last
  _assert_same([got[s] for s in sorted(got)], want)
