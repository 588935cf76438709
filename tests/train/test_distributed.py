"""Multi-host start-up: which layout `initialize` picks from flags / env / SLURM / TPU VM (pure,
no runtime started), and a real 2-process `any_process` over loopback."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from tokenrl.train import distributed
from tokenrl.train.distributed import Launch, detect, slurm_coordinator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM = {"SLURM_JOB_ID": "12345", "SLURM_STEP_NODELIST": "gpu[003-004]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "2"}


def test_laptop_is_single_process():
  assert detect(env={}, tpu_vm=False) == Launch("none", "single process")


def test_flags_win_over_env():
  env = {"TOKENRL_COORDINATOR": "b:2", "TOKENRL_NUM_PROCESSES": "8", "TOKENRL_PROCESS_ID": "7",
         **SLURM}
  got = detect("a:1", 4, 3, local_device_ids=[0, 1], env=env, tpu_vm=True)
  assert got == Launch("explicit", "flags", "a:1", 4, 3, (0, 1))


def test_env_wins_over_slurm_and_tpu():
  env = {"TOKENRL_COORDINATOR": "b:2", "TOKENRL_NUM_PROCESSES": "8", "TOKENRL_PROCESS_ID": "7",
         **SLURM}
  assert detect(env=env, tpu_vm=True) == Launch("explicit", "env", "b:2", 8, 7)


def test_one_process_given_explicitly_is_single_process():
  assert detect(num_processes=1, env={}, tpu_vm=True).mode == "none"
  assert detect(env={"TOKENRL_NUM_PROCESSES": "1"}, tpu_vm=True).mode == "none"


@pytest.mark.parametrize("kwargs,env,match", [
    (dict(coordinator="a:1"), {}, "--num_processes, --process_id missing"),
    (dict(num_processes=2, process_id=0), {}, "--coordinator missing"),
    (dict(coordinator="a:1", num_processes=2, process_id=2), {}, "--process_id=2 must be <"),
    (dict(coordinator="a", num_processes=2, process_id=0), {}, "HOST:PORT"),
    ({}, {"TOKENRL_NUM_PROCESSES": "2", "TOKENRL_PROCESS_ID": "0"}, "TOKENRL_COORDINATOR missing"),
    ({}, {"TOKENRL_PROCESS_ID": "x"}, "TOKENRL_PROCESS_ID must be an integer"),
])
def test_incomplete_layout_names_what_is_missing(kwargs, env, match):
  with pytest.raises(ValueError, match=match):
    detect(**kwargs, env=env, tpu_vm=False)


def test_slurm_one_task_per_node_is_explicit_with_all_gpus():
  got = detect(env=SLURM, tpu_vm=False)
  # port = job id mod 4096 + 61440, as JAX derives it
  assert got == Launch("explicit", "slurm", f"gpu003:{12345 % 4096 + 61440}", 2, 1, None)


def test_slurm_several_tasks_per_node_uses_jax_detection():
  env = {**SLURM, "SLURM_NTASKS": "16"}
  assert detect(env=env, tpu_vm=False) == Launch("auto", "slurm")


def test_slurm_single_task_and_batch_step_are_single_process():
  assert detect(env={**SLURM, "SLURM_NTASKS": "1"}, tpu_vm=False).mode == "none"
  outside_srun = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
  assert detect(env=outside_srun, tpu_vm=False).mode == "none"


def test_tpu_vm_uses_jax_detection():
  assert detect(env={}, tpu_vm=True) == Launch("auto", "tpu-vm")


@pytest.mark.parametrize("nodes,host", [("node001", "node001"), ("node001,host2", "node001"),
                                        ("node[001-015],host2", "node001"),
                                        ("node[007,009-015]", "node007")])
def test_slurm_coordinator_is_first_host(nodes, host):
  env = {"SLURM_STEP_NODELIST": nodes, "SLURM_JOB_ID": "0", "TOKENRL_COORDINATOR_PORT": "1234"}
  assert slurm_coordinator(env) == f"{host}:1234"


def test_initialize_calls_jax_only_when_multi_process(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for var in ("TOKENRL_COORDINATOR", "TOKENRL_NUM_PROCESSES", "TOKENRL_PROCESS_ID",
              "SLURM_NTASKS"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: False)
  assert distributed.initialize() is False and calls == []
  assert distributed.initialize("h:9", 2, 1) is True
  assert calls == [dict(coordinator_address="h:9", num_processes=2, process_id=1,
                        local_device_ids=None, cluster_detection_method="deactivate")]
  monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: True)
  assert distributed.initialize() is True
  assert calls[-1] == dict(local_device_ids=None)


def test_single_process_helpers():
  assert distributed.any_process(True) is True
  assert distributed.any_process(False) is False
  assert distributed.is_main()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_agree_on_preemption(tmp_path):
  """Only process 1 sets its flag; both see any_process == True (and False when none does)."""
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENRL_COORDINATOR=f"127.0.0.1:{port}", TOKENRL_NUM_PROCESSES="2",
               TOKENRL_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.train.dist_worker", "--out", str(tmp_path / f"{i}.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outs)
  results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
  for i, r in enumerate(results):
    assert r == {"initialized": True, "process_index": i, "process_count": 2, "is_main": i == 0,
                 "any_one_set": True, "any_none_set": False, "any_all_set": True}
