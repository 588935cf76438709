"""Module-level reward functions for the RewardRunner tests (picklable into worker processes)."""
import os
import time


def length_reward(completion, example):
  """len(completion): a deterministic, hand-checkable score."""
  del example
  return float(len(completion))


def raises_on_b(completion, example):
  del example
  if completion == "b":
    raise RuntimeError("boom on b")
  return 1.0


def sleeps_on_c(completion, example):
  del example
  if completion == "c":
    time.sleep(30.0)  # Far past any test timeout: must be killed, not waited for.
  return 2.0


def nan_on_d(completion, example):
  del example
  return float("nan") if completion == "d" else 3.0


def exits_on_e(completion, example):
  del example
  if completion == "e":
    os._exit(3)  # Kills the worker process itself.
  return 4.0


def answer_reward(completion, example):
  return float(completion == example["answer"])


def _explode():
  raise RuntimeError("cannot load me")


class FailsToUnpickle:
  """Pickles in the parent, raises when a worker unpickles it."""

  def __call__(self, completion, example):
    return 1.0

  def __reduce__(self):
    return (_explode, ())


_LEAK = []


def leaks_memory(completion, example):
  """Keeps 20 MiB per call alive in a module global: the worker's RSS only grows."""
  del completion, example
  _LEAK.append(bytearray(20 * 2**20))
  for i in range(0, len(_LEAK[-1]), 4096):  # Touch every page so it is resident.
    _LEAK[-1][i] = 1
  return 1.0


def hangs_with_child(completion, example):
  """Starts a `sleep` child, writes its pid to example['pid_file'], then hangs."""
  import subprocess
  child = subprocess.Popen(["sleep", "120"])
  with open(example["pid_file"], "w") as f:
    f.write(str(child.pid))
  time.sleep(120.0)
  return 1.0


def busy_loop(completion, example):
  del example
  if completion == "spin":
    while True:
      pass
  return 1.0


def segfaults(completion, example):
  del example
  if completion == "crash":
    import ctypes
    ctypes.string_at(0)  # SIGSEGV in the worker.
  return 1.0


def returns_string(completion, example):
  del completion, example
  return "1.0"


def returns_none(completion, example):
  del completion, example
  return None


def returns_numpy(completion, example):
  """numpy scalars are real numbers: accepted."""
  import numpy as np
  del example
  return {"f32": np.float32(0.5), "i64": np.int64(2), "bool": np.bool_(True)}[completion]


def returns_huge(completion, example):
  del example
  return {"big": 10**400, "f64": 1e300, "ok": 10**6}[completion]


def pid(completion, example):
  del completion, example
  return float(os.getpid())
