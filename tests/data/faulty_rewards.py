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
