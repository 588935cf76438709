"""Multi-host start-up: `jax.distributed.initialize` when (and only when) the job has several
processes, plus the two cross-process helpers the train loop needs.

The same command runs on every worker (TPU pod workers, SLURM tasks, hand-started processes).
`initialize()` picks the process layout from, in order:

  1. explicit arguments (the CLI's --coordinator / --num_processes / --process_id);
  2. the environment: TOKENRL_COORDINATOR, TOKENRL_NUM_PROCESSES, TOKENRL_PROCESS_ID;
  3. SLURM, inside an `srun` step with SLURM_NTASKS > 1: with one task per node, coordinator =
     the first node of SLURM_STEP_NODELIST, process id = SLURM_PROCID, and each task drives all
     of its node's GPUs; with several tasks per node, JAX's own SLURM detection (one GPU per
     task, SLURM_LOCALID);
  4. a Cloud TPU VM (libtpu installed and /dev/accel* or /dev/vfio/* present): JAX's own TPU
     detection (worker list from the VM metadata; one process per worker, a single-worker VM
     is a 1-process job);

and otherwise does nothing: a single-process CPU or GPU run never starts a coordinator.
It must run before anything touches a device (jax.devices(), an array, a jit call).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
from typing import Mapping, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Launch:
  """How to call jax.distributed.initialize: `mode` is 'none' (single process), 'explicit'
  (the fields below), or 'auto' (no arguments: JAX's cluster detection); `source` says why."""
  mode: str
  source: str
  coordinator: str = ""
  num_processes: int = 0
  process_id: int = -1
  local_device_ids: tuple[int, ...] | None = None


def _on_tpu_vm() -> bool:
  """A Cloud TPU VM: libtpu is importable and TPU chips are visible to the OS."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
  value = env.get(name, "")
  if value == "":
    return default
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def slurm_coordinator(env: Mapping[str, str]) -> str:
  """HOST:PORT of the first node of SLURM_STEP_NODELIST ('node[001-004,9]' -> 'node001').

  Port: TOKENRL_COORDINATOR_PORT, else JAX_COORDINATOR_PORT, else derived from SLURM_JOB_ID in
  [61440, 65535] as JAX does (so concurrent jobs on a node do not collide).
  """
  nodes = env["SLURM_STEP_NODELIST"].strip()
  match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodes)
  if not match:
    raise ValueError(f"SLURM_STEP_NODELIST: cannot read a host name from {nodes!r}")
  host = match.group(1)
  if match.group(2):
    host += re.split(r"[,-]", match.group(2))[0]
  port = env.get("TOKENRL_COORDINATOR_PORT") or env.get("JAX_COORDINATOR_PORT")
  if not port:
    port = str(_int(env, "SLURM_JOB_ID", 0) % 2 ** 12 + (65535 - 2 ** 12 + 1))
  return f"{host}:{port}"


def detect(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
           local_device_ids: Sequence[int] | None = None, *,
           env: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> Launch:
  """The Launch `initialize` would perform (pure: reads `env`, default os.environ).

  Raises:
    ValueError: an explicit or TOKENRL_* layout that is incomplete or inconsistent, naming the
      flag or variable.
  """
  env = os.environ if env is None else env
  ids = None if local_device_ids is None else tuple(int(i) for i in local_device_ids)
  for source, (coord, num, pid) in (
      ("flags", (coordinator, num_processes, process_id)),
      ("env", (env.get("TOKENRL_COORDINATOR", ""), _int(env, "TOKENRL_NUM_PROCESSES", 0),
               _int(env, "TOKENRL_PROCESS_ID", -1)))):
    names = (("--coordinator", "--num_processes", "--process_id") if source == "flags" else
             ("TOKENRL_COORDINATOR", "TOKENRL_NUM_PROCESSES", "TOKENRL_PROCESS_ID"))
    if not coord and num <= 0 and pid < 0:
      continue  # nothing given here: fall through to the next source
    if num == 1 and not coord:
      return Launch("none", f"{names[1]}=1")
    missing = [n for n, given in zip(names, (bool(coord), num > 0, pid >= 0)) if not given]
    if missing:
      raise ValueError(f"multi-process start-up from {source}: {', '.join(missing)} missing "
                       f"(got {names[0]}={coord!r}, {names[1]}={num}, {names[2]}={pid})")
    if pid >= num:
      raise ValueError(f"{names[2]}={pid} must be < {names[1]}={num}")
    if ":" not in coord:
      raise ValueError(f"{names[0]} must be HOST:PORT, got {coord!r}")
    return Launch("explicit", source, coord, num, pid, ids)
  slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID")
  if all(v in env for v in slurm_vars) and _int(env, "SLURM_NTASKS", 1) > 1:
    tasks = _int(env, "SLURM_NTASKS", 1)
    if tasks == _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", 0)):
      # One task per node, each driving all of its node's GPUs: JAX's SLURM detection would
      # pin each task to GPU SLURM_LOCALID, so the layout is passed explicitly instead.
      return Launch("explicit", "slurm", slurm_coordinator(env), tasks,
                    _int(env, "SLURM_PROCID", 0), ids)
    return Launch("auto", "slurm", local_device_ids=ids)  # one task per GPU: JAX's own
  if _on_tpu_vm() if tpu_vm is None else tpu_vm:
    return Launch("auto", "tpu-vm", local_device_ids=ids)
  return Launch("none", "single process")


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               local_device_ids: Sequence[int] | None = None) -> bool:
  """jax.distributed.initialize() when this is one process of a multi-process job.

  Args:
    coordinator: HOST:PORT of process 0's coordinator service ("" = from env / auto-detect).
    num_processes: processes in the job (0 = from env / auto-detect).
    process_id: this process's index (-1 = from env / auto-detect).
    local_device_ids: device ids this process drives (None = all it sees).

  Returns:
    True if it initialized the distributed runtime (now, or earlier in this process), False for
    a single-process run.
  """
  if jax.distributed.is_initialized():
    return True
  launch = detect(coordinator, num_processes, process_id, local_device_ids)
  if launch.mode == "none":
    return False
  if launch.mode == "explicit":
    # "deactivate": no cluster detection fills in local_device_ids behind the explicit layout.
    jax.distributed.initialize(coordinator_address=launch.coordinator,
                               num_processes=launch.num_processes, process_id=launch.process_id,
                               local_device_ids=launch.local_device_ids,
                               cluster_detection_method="deactivate")
  else:
    jax.distributed.initialize(local_device_ids=launch.local_device_ids)
  return True


def is_main() -> bool:
  """True on process 0 (the one that writes summaries, logs and plots)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True if `flag` is set on any process; every process must call it at the same point.

  A preemption notice (SIGTERM) reaches one worker of a pod; the train loop calls this once per
  step so that all workers agree to checkpoint at the end of the same step and exit together.
  One process: `flag` itself, no communication.
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))  # [processes]
  return bool(np.asarray(flags).any())
