"""`RewardRunner`: reward functions off the training thread, with a per-call timeout.

Why worker *processes* by default: a reward function that hangs in pure Python (a regex with
catastrophic backtracking, an endless loop in a user verifier) cannot be stopped inside a
thread; it would hold a pool slot and the GIL for ever. A process can be killed. So each call
gets `timeout_s` seconds; on timeout the worker process is killed (SIGKILL), replaced, and the
rest of its queue re-sent to the new worker. Workers are fresh `python` subprocesses (not
multiprocessing: no fork of the training process, whose JAX threads make fork unsafe, and no
re-import of the user's __main__ script), started once and reused across steps; they receive
the functions pickled once at start-up, so these must be importable by reference: functions of
a module (not of __main__), `functools.partial` of them, instances of module-level classes.

`backend='thread'` accepts unpicklable callables (lambdas, closures in a notebook): same
protocol, daemon threads; a hung thread is abandoned (it keeps its CPU time until it returns)
and a fresh one takes its place.

Scoring: a call that raises, times out, kills its worker, or returns something that is not a
finite real number scores 0; it is counted in the stats ('reward_errors', 'reward_timeouts') and
logged with absl.logging (function name, completion index n and example index b).
Training continues. A reward is a real number: bool, int, float or a numpy scalar (np.float32,
np.int64, np.bool_, ...); anything else (the string '1.0', None, a list, a 0-d array) is an
error, as is an int too large for a float64.

Worker hygiene: each worker process runs in its own session (process group), and a timeout
kills the whole group (os.killpg), so the children a hung reward started die with it. A worker
is recycled (stopped and replaced between chunks) after `max_tasks_per_worker` calls or when
its resident memory exceeds `max_worker_rss_mb`, so a reward that leaks cannot grow a worker
without bound.

  rewards[n] = sum_k w_k * r_k[n]      (r_k: function k's float32 [N] scores, w_k its weight)
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import multiprocessing.connection
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

_STARTUP_TIMEOUT_S = 120.0  # A fresh worker imports the reward modules; generous on a busy host.
_MAX_LOGGED_PER_FN = 5
_F32_MAX = float(np.finfo(np.float32).max)  # Per call: log the first few failures of each function, then a count.
# The folder holding the `tokenrl` package, put on the worker's PYTHONPATH.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class RewardOutput:
  """Result of one `RewardRunner` call over N completions.

  rewards: float32 [N], sum_k w_k * per_fn[k].
  per_fn: name -> float32 [N], each function's score (0 where it failed).
  failed: name -> bool [N], True where the call raised, timed out or returned a non-finite value.
  stats: {'reward_errors': int, 'reward_timeouts': int} (errors exclude timeouts).
  """
  rewards: np.ndarray
  per_fn: dict[str, np.ndarray]
  failed: dict[str, np.ndarray]
  stats: dict[str, int]


class _Channel:
  """Length-prefixed pickle messages over one end of a socketpair (process or thread peer)."""

  def __init__(self, sock: socket.socket):
    self.sock = sock

  def fileno(self) -> int:  # For multiprocessing.connection.wait.
    return self.sock.fileno()

  def send(self, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    self.sock.sendall(struct.pack("<Q", len(data)) + data)

  def _read(self, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
      part = self.sock.recv(n - len(buf))
      if not part:
        raise EOFError("peer closed the channel")
      buf += part
    return bytes(buf)

  def recv(self) -> Any:
    (n,) = struct.unpack("<Q", self._read(8))
    return pickle.loads(self._read(n))

  def close(self) -> None:
    try:
      self.sock.close()
    except OSError:
      pass


_REAL_TYPES = (bool, int, float, np.bool_, np.integer, np.floating)


def as_reward(value: Any) -> float:
  """float(value) for a real number (bool, int, float, numpy scalar), else TypeError.

  Why not float(value): float('1.0') is 1.0, so a reward returning a string would score and
  go uncounted. An int beyond float64 raises OverflowError.
  """
  if not isinstance(value, _REAL_TYPES):
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise TypeError(f"returned {type(value).__name__} {shown}, not a real number (bool, int, "
                    "float or numpy scalar)")
  return float(value)


def _rss_bytes() -> int:
  """This process's resident set size now (Linux /proc), else its peak (getrusage), in bytes."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    import resource  # pylint: disable=import-outside-toplevel
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _serve(chan: _Channel, fns: Mapping[str, Callable[..., Any]], measure_rss: bool) -> None:
  """Worker loop: for each (task_id, name, completion, example) send (task_id, ok, payload,
  rss_bytes); rss_bytes is 0 in a thread worker (the memory is the trainer's)."""
  while True:
    try:
      msg = chan.recv()
    except (EOFError, OSError):
      return
    if msg is None:
      return
    for task_id, name, completion, example in msg:
      try:
        payload, ok = as_reward(fns[name](completion, example)), True
      except Exception as e:  # pylint: disable=broad-except
        payload, ok = f"{type(e).__name__}: {e}", False
      try:
        chan.send((task_id, ok, payload, _rss_bytes() if measure_rss else 0))
      except OSError:  # The parent gave up on us (timeout): stop quietly.
        return


def _subprocess_main(fd: int) -> None:
  """Entry point of a worker process: `python -c '...; _subprocess_main(fd)'`.

  First message: (parent sys.path, pickled fns). The parent's sys.path is merged before
  unpickling so functions from its modules (tests, user packages) import here too.
  """
  chan = _Channel(socket.socket(fileno=fd))
  sys_path, fns_blob = chan.recv()
  for p in reversed(sys_path):
    if p not in sys.path:
      sys.path.insert(0, p)
  try:
    fns = pickle.loads(fns_blob)
  except Exception as e:  # pylint: disable=broad-except
    chan.send(("init_error", f"{type(e).__name__}: {e}"))
    return
  chan.send(("ready", None))
  _serve(chan, fns, measure_rss=True)


def _thread_worker_main(chan: _Channel, fns) -> None:
  try:
    chan.send(("ready", None))
  except OSError:
    return
  _serve(chan, fns, measure_rss=False)
  chan.close()


class _Worker:
  """One worker (a fresh `python` subprocess or a daemon thread) and its in-flight tasks.

  Processes are started with subprocess (not multiprocessing): a clean interpreter that never
  re-imports the user's __main__ script and never forks the training process.
  """

  def __init__(self, backend: str, fns, fns_blob: bytes | None):
    parent, child = socket.socketpair()
    self.conn = _Channel(parent)
    self.ready = False
    self.inflight: collections.deque = collections.deque()
    self.deadline = math.inf
    self.started = time.monotonic()
    self.tasks_done = 0
    self.rss = 0  # bytes, as last reported by the worker
    self.proc = None
    if backend == "process":
      env = dict(os.environ)
      # So the child can import tokenrl even when it is not installed (run from a checkout).
      env["PYTHONPATH"] = os.pathsep.join(
          [_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
      code = ("from tokenrl.data.reward_runner import _subprocess_main; "
              f"_subprocess_main({child.fileno()})")
      # start_new_session: the worker leads its own process group, so killpg on timeout also
      # kills whatever it spawned (a hung reward's subprocesses must not outlive it).
      self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child.fileno(),),
                                   env=env, stdin=subprocess.DEVNULL, start_new_session=True)
      child.close()  # The child holds its own copy; ours must close so EOF is seen if it dies.
      self.conn.send((list(sys.path), fns_blob))
    else:
      threading.Thread(target=_thread_worker_main, args=(_Channel(child), fns),
                       daemon=True).start()

  def _kill_group(self) -> None:
    """SIGKILL to the worker's process group (itself and every process it started)."""
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass  # Group already empty.

  def kill(self) -> None:
    self.conn.close()
    if self.proc is not None:
      self._kill_group()
      self.proc.kill()
      self.proc.wait(timeout=10)
    # A thread cannot be killed: it is abandoned; it exits when it next tries to send.

  def stop(self) -> None:
    try:
      self.conn.send(None)
    except OSError:
      pass
    if self.proc is not None:
      try:
        self.proc.wait(timeout=2)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait(timeout=10)
      self._kill_group()  # Leftover children of a reward that returned.
    self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
  for w in workers:
    w.stop()
  workers.clear()


class RewardRunner:
  """Runs named reward functions over completions in worker processes (or threads).

  Usage:
    runner = RewardRunner({'exact': rewards.exact_answer_reward, 'format': rewards.format_reward},
                          weights={'format': 0.1}, timeout_s=5.0, max_workers=2)
    out = runner(completions, examples)   # blocking; or runner.submit(...) -> Future
    out.rewards  # float32 [N]
    runner.close()  # or `with RewardRunner(...) as runner:`

  Args:
    fns: name -> callable(completion_text, example) -> float.
    weights: name -> w_k (default 1.0 for each function; unknown names raise).
    timeout_s: seconds one call may run before it scores 0 and its worker is replaced.
    max_workers: worker count (processes or threads); default min(4, CPUs - 1), at least 1.
    backend: 'process' (default; killable) or 'thread' (for unpicklable callables).
    chunk_size: calls sent to a worker per message (amortizes pickling; timeouts stay per call).
    max_tasks_per_worker: a process worker is replaced after this many calls (None = never).
    max_worker_rss_mb: a process worker whose resident memory exceeds this many MiB after a
      call is replaced once its chunk is done (None = no limit). A chunk still runs to its end,
      so the peak is about the limit + chunk_size x one call's leak.

  Attributes:
    recycled: how many workers were replaced by the two limits above (not by faults).
  """

  def __init__(self, fns: Mapping[str, Callable[[str, Mapping[str, Any]], float]],
               weights: Mapping[str, float] | None = None, *, timeout_s: float = 5.0,
               max_workers: int | None = None, backend: str = "process", chunk_size: int = 32,
               max_tasks_per_worker: int | None = 10_000,
               max_worker_rss_mb: float | None = 2048.0):
    if not fns:
      raise ValueError("RewardRunner: fns is empty; give at least one name -> callable")
    for name, fn in fns.items():
      if not isinstance(name, str) or not callable(fn):
        raise ValueError(f"RewardRunner: fns must map str -> callable, got {name!r} -> {fn!r}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(fns))
    if unknown:
      raise ValueError(f"RewardRunner: weights for unknown functions {unknown}; fns are "
                       f"{sorted(fns)}")
    if backend not in ("process", "thread"):
      raise ValueError(f"RewardRunner: backend must be 'process' or 'thread', got {backend!r}")
    if max_workers is None:
      max_workers = default_max_workers()
    if not timeout_s > 0 or max_workers < 1 or chunk_size < 1:
      raise ValueError(f"RewardRunner: need timeout_s > 0, max_workers >= 1, chunk_size >= 1; got "
                       f"{timeout_s}, {max_workers}, {chunk_size}")
    self.fns = dict(fns)
    self.weights = {k: float(weights.get(k, 1.0)) for k in self.fns}
    self.timeout_s = float(timeout_s)
    self.max_workers = int(max_workers)
    self.backend = backend
    self.chunk_size = int(chunk_size)
    if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
      raise ValueError(f"RewardRunner: max_tasks_per_worker must be >= 1 or None, got "
                       f"{max_tasks_per_worker}")
    if max_worker_rss_mb is not None and not max_worker_rss_mb > 0:
      raise ValueError(f"RewardRunner: max_worker_rss_mb must be > 0 or None, got "
                       f"{max_worker_rss_mb}")
    self.max_tasks_per_worker = max_tasks_per_worker
    self.max_worker_rss_mb = max_worker_rss_mb
    self.recycled = 0
    self._fns_blob = None
    if backend == "process":
      for name, fn in self.fns.items():
        try:
          pickle.dumps(fn)
        except Exception as e:  # pylint: disable=broad-except
          raise ValueError(
              f"RewardRunner: reward function {name!r} ({fn!r}) cannot be pickled into a worker "
              f"process ({type(e).__name__}: {e}); define it at module level, or use "
              "backend='thread'") from None
      self._fns_blob = pickle.dumps(self.fns)
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._finalizer = weakref.finalize(self, _shutdown, self._workers)

  def __enter__(self) -> "RewardRunner":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops the workers (idempotent)."""
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None
    with self._lock:
      _shutdown(self._workers)

  def submit(self, completions: Sequence[str],
             examples: Sequence[Mapping[str, Any]]) -> concurrent.futures.Future:
    """Like `__call__`, but returns at once; `.result()` gives the `RewardOutput`.

    Lets the host overlap reward computation with device work. Calls run one at a time.
    """
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rewards")
    return self._executor.submit(self.__call__, list(completions), list(examples))

  def __call__(self, completions: Sequence[str],
               examples: Sequence[Mapping[str, Any]]) -> RewardOutput:
    """Scores N completions.

    Args:
      completions: N strings.
      examples: N dicts (one per completion), or B dicts with N = B*G: completion n then uses
        examples[n // G] (the group layout [B, G] flattened, as `group_id = n // G`).

    Returns:
      RewardOutput (see its docstring).
    """
    n_total = len(completions)
    if len(examples) == 0 or n_total % len(examples) != 0:
      raise ValueError(f"RewardRunner: len(completions)={n_total} must be a multiple of "
                       f"len(examples)={len(examples)} (N = B*G)")
    group = n_total // len(examples)
    names = list(self.fns)
    tasks = [(k * n_total + n, name, completions[n], examples[n // group])
             for k, name in enumerate(names) for n in range(n_total)]
    scores = np.zeros((len(names), n_total), np.float32)
    failed = np.zeros((len(names), n_total), bool)
    counts = {"reward_errors": 0, "reward_timeouts": 0}
    logged = collections.Counter()

    def fail(task_id: int, kind: str, msg: str) -> None:
      k, n = divmod(task_id, n_total)
      failed[k, n] = True
      counts["reward_timeouts" if kind == "timed out" else "reward_errors"] += 1
      logged[names[k]] += 1
      if logged[names[k]] <= _MAX_LOGGED_PER_FN:
        logging.warning("reward fn %r %s on completion %d (example %d): %s", names[k], kind, n,
                        n // group, msg)

    def record(task_id: int, ok: bool, payload: Any) -> None:
      if not ok:
        fail(task_id, "raised", payload)
      elif not math.isfinite(payload) or abs(payload) > _F32_MAX:
        # Beyond float32 the [N] rewards would hold inf: as bad as NaN for the advantages.
        fail(task_id, "returned non-finite", repr(payload))
      else:
        k, n = divmod(task_id, n_total)
        scores[k, n] = payload

    with self._lock:
      try:
        self._run(tasks, record, fail)
      except BaseException:
        # Workers may still hold tasks of this call: never let them answer the next one.
        for w in self._workers:
          w.kill()
        self._workers.clear()
        raise
    for name, c in logged.items():
      if c > _MAX_LOGGED_PER_FN:
        logging.warning("reward fn %r failed %d times in this call (first %d logged)", name, c,
                        _MAX_LOGGED_PER_FN)
    w = np.asarray([self.weights[name] for name in names], np.float32)
    rewards = (w[:, None] * scores).sum(0).astype(np.float32)
    return RewardOutput(rewards=rewards,
                        per_fn={name: scores[k] for k, name in enumerate(names)},
                        failed={name: failed[k] for k, name in enumerate(names)},
                        stats=counts)

  def _new_worker(self) -> _Worker:
    return _Worker(self.backend, self.fns, self._fns_blob)

  def _run(self, tasks: list, record: Callable, fail: Callable) -> None:
    """Dispatches `tasks` to the workers until each one has a result, an error or a timeout."""
    chunk = max(1, min(self.chunk_size, -(-len(tasks) // (4 * self.max_workers))))
    pending = collections.deque(tasks[i:i + chunk] for i in range(0, len(tasks), chunk))
    while len(self._workers) < self.max_workers:
      self._workers.append(self._new_worker())

    def replace(w: _Worker) -> None:
      rest = list(w.inflight)
      w.kill()
      if rest:
        pending.appendleft(rest)
      self._workers[self._workers.index(w)] = self._new_worker()

    while pending or any(w.inflight for w in self._workers):
      now = time.monotonic()
      self._recycle_idle()
      for w in list(self._workers):
        if w.ready and not w.inflight and pending:
          try:
            w.conn.send(pending[0])  # Raises before writing if an example cannot be pickled.
          except OSError:  # The worker died while idle: replace it, retry next round.
            replace(w)
            continue
          w.inflight.extend(pending.popleft())
          w.deadline = now + self.timeout_s
      waiting = [w for w in self._workers if w.inflight or not w.ready]
      deadlines = [w.deadline if w.ready else w.started + _STARTUP_TIMEOUT_S for w in waiting]
      ready_conns = multiprocessing.connection.wait(
          [w.conn for w in waiting], timeout=max(0.0, min(deadlines) - time.monotonic()))
      for w in list(waiting):
        if w.conn not in ready_conns:
          continue
        try:
          msg = w.conn.recv()
        except (EOFError, OSError):
          if not w.ready:
            raise RuntimeError("RewardRunner: a worker process died while starting (its stderr "
                               "above says why)") from None
          task_id = w.inflight.popleft()[0]
          fail(task_id, "killed its worker", "the worker process exited")
          replace(w)
          continue
        if not w.ready:
          if msg[0] == "init_error":
            raise RuntimeError(f"RewardRunner: a worker could not load the functions: {msg[1]}")
          w.ready = True
          continue
        task_id, ok, payload, w.rss = msg
        w.inflight.popleft()
        w.tasks_done += 1
        record(task_id, ok, payload)
        w.deadline = time.monotonic() + self.timeout_s
      now = time.monotonic()
      for w in list(self._workers):
        if w.ready and w.inflight and now >= w.deadline and w.conn not in ready_conns:
          task_id = w.inflight.popleft()[0]
          fail(task_id, "timed out", f"no result after {self.timeout_s:.3g} s; worker replaced")
          replace(w)
        elif not w.ready and now >= w.started + _STARTUP_TIMEOUT_S:
          raise RuntimeError(f"RewardRunner: a worker did not start within {_STARTUP_TIMEOUT_S} s")
    self._recycle_idle()  # A leaky worker must not sit on its memory until the next call.

  def _recycle_idle(self) -> None:
    """Replaces idle process workers past max_tasks_per_worker or max_worker_rss_mb."""
    if self.backend != "process":
      return
    for i, w in enumerate(self._workers):
      if w.inflight or not w.ready:
        continue
      too_many = (self.max_tasks_per_worker is not None
                  and w.tasks_done >= self.max_tasks_per_worker)
      too_big = (self.max_worker_rss_mb is not None
                 and w.rss > self.max_worker_rss_mb * 2**20)
      if too_many or too_big:
        logging.info("reward worker pid %s recycled after %d calls at %.0f MiB resident",
                     w.proc.pid, w.tasks_done, w.rss / 2**20)
        w.stop()
        self._workers[i] = self._new_worker()
        self.recycled += 1


def default_max_workers() -> int:
  """min(4, CPUs - 1), at least 1: leave a core for the training loop."""
  return max(1, min(4, (os.cpu_count() or 2) - 1))
