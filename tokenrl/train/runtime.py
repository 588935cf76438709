"""Process-level pieces of the run skeleton: signals, the workdir lock, the rerun-config check,
JSON conversion of checkpoint metadata and the printed summary."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from typing import Any, Iterator

import ml_collections
import numpy as np

# Keys whose change makes a checkpoint unusable or silently changes the run it continues:
# the model (shapes, dtype), the tokenizer (vocab), the method (state layout) and the phase
# boundaries / data order. Prefixes end with '.'.
RERUN_KEYS = ("model.", "data.tokenizer", "data.task", "data.chat_template", "rl.objective",
              "seed", "train.sft_steps", "train.sft_target_accuracy", "train.sft_check_every",
              "data.dev_size", "optimizer.name")


class Preemption:
  """SIGTERM / SIGINT set a flag; the skeleton saves a checkpoint at the end of the step and
  exits cleanly. A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once."""

  def __init__(self):
    self.requested = False
    self.signal_name = ""
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name  # named before the flag is seen set
    self.requested = True

  def restore(self):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True) -> Iterator[None]:
  """Exclusive flock on WORKDIR/.lock for the run's lifetime.

  A second run on the same workdir would interleave checkpoints and metrics, so it is refused.
  The lock belongs to the open file: it vanishes with the process (even on SIGKILL), so a stale
  .lock file never blocks a rerun. Only process 0 of a multi-process job takes it.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, ".lock")
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "unknown"
    f.close()
    raise RuntimeError(f"workdir {workdir!r} is in use by another live run (pid {holder}); "
                       "wait for it, stop it, or choose another --workdir") from None
  try:
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: d}


def check_rerun_config(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """Raise ValueError when `cfg` differs from WORKDIR/config.json on a RERUN_KEYS key.

  Called before config.json is rewritten, only when the workdir holds a checkpoint.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    saved = _flat(json.load(f))
  new = _flat(json.loads(cfg.to_json_best_effort()))
  watched = lambda key: any(key == p or (p.endswith(".") and key.startswith(p)) for p in RERUN_KEYS)
  diff = sorted(k for k in set(saved) | set(new) if watched(k) and saved.get(k) != new.get(k))
  if diff:
    lines = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {new.get(k)!r}" for k in diff)
    raise ValueError(f"workdir {workdir!r} holds a checkpoint of a different run ({lines}); "
                     "rerun with the saved values (see its config.json) or use a new --workdir")


def jsonable(x: Any) -> Any:
  if isinstance(x, (np.integer, np.floating)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, bytes):
    return x.decode()
  raise TypeError(f"cannot store {type(x).__name__} in checkpoint metadata")


def print_summary(summary: dict[str, Any]) -> None:
  rows = [(k, v) for k, v in summary.items() if not isinstance(v, (list, dict))]
  if not rows:
    return
  width = max(len(k) for k, _ in rows)
  print("\n" + "=" * (width + 16))
  for k, v in rows:
    print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  print("=" * (width + 16))
