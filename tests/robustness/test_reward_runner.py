"""Misbehaving reward functions in real worker processes: each scores 0, is counted, and the
runner stays healthy (no leaked memory, no surviving child processes)."""
import os
import time

import numpy as np
import pytest

from tests.data import faulty_rewards as fr
from tokenrl.data.reward_runner import RewardRunner, as_reward


def _alive(pid: int) -> bool:
  """True while `pid` runs (a zombie nobody reaped counts as dead)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return "\nState:\tZ" not in f.read()
  except FileNotFoundError:
    return False


def test_non_numbers_are_counted_errors_and_numpy_scalars_are_rewards():
  with RewardRunner({"str": fr.returns_string, "none": fr.returns_none},
                    timeout_s=10.0, max_workers=1) as r:
    out = r(["a", "b"], [{}, {}])
  assert out.per_fn["str"].tolist() == [0.0, 0.0] and out.failed["str"].all()
  assert out.failed["none"].all()
  assert out.stats == {"reward_errors": 4, "reward_timeouts": 0}
  with RewardRunner({"np": fr.returns_numpy}, timeout_s=10.0, max_workers=1) as r:
    out = r(["f32", "i64", "bool"], [{}] * 3)
  assert out.rewards.tolist() == [0.5, 2.0, 1.0] and out.stats["reward_errors"] == 0


def test_huge_values_are_errors():
  with RewardRunner({"huge": fr.returns_huge}, timeout_s=10.0, max_workers=1) as r:
    out = r(["big", "f64", "ok"], [{}] * 3)
  # 10**400 overflows float64; 1e300 overflows the float32 rewards; 10**6 is fine.
  assert out.failed["huge"].tolist() == [True, True, False]
  assert out.rewards.tolist() == [0.0, 0.0, 1e6] and np.isfinite(out.rewards).all()


def test_as_reward():
  assert as_reward(True) == 1.0 and as_reward(np.float16(0.5)) == 0.5 and as_reward(3) == 3.0
  for bad in ("1.0", None, [1.0], np.asarray(1.0), b"1"):
    with pytest.raises(TypeError, match="not a real number"):
      as_reward(bad)


def test_busy_loop_and_segfault_score_zero():
  with RewardRunner({"spin": fr.busy_loop, "crash": fr.segfaults}, timeout_s=0.5,
                    max_workers=1) as r:
    out = r(["ok", "spin", "crash", "ok2"], [{}] * 4)
  assert out.per_fn["spin"].tolist() == [1, 0, 1, 1]
  assert out.per_fn["crash"].tolist() == [1, 1, 0, 1]
  assert out.stats == {"reward_errors": 1, "reward_timeouts": 1}


def test_hung_reward_child_process_is_killed(tmp_path):
  pid_file = tmp_path / "child.pid"
  with RewardRunner({"hang": fr.hangs_with_child}, timeout_s=1.0, max_workers=1) as r:
    out = r(["x"], [{"pid_file": str(pid_file)}])
    assert out.stats["reward_timeouts"] == 1
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not _alive(child), "the hung reward's child process survived the timeout"


def test_leaking_worker_is_recycled_by_rss():
  # 20 MiB per call; limit 100 MiB: the worker is replaced instead of growing without bound.
  with RewardRunner({"leak": fr.leaks_memory, "pid": fr.pid}, timeout_s=30.0, max_workers=1,
                    chunk_size=1, max_worker_rss_mb=100) as r:
    pids = set()
    for _ in range(6):
      out = r(["a", "b"], [{}, {}])
      assert out.stats == {"reward_errors": 0, "reward_timeouts": 0}
      pids.update(out.per_fn["pid"].astype(int).tolist())
      assert all(w.rss < 100 * 2**20 for w in r._workers), "an idle worker kept its leak"
    assert r.recycled >= 2 and len(pids) >= 3


def test_worker_recycled_after_max_tasks():
  with RewardRunner({"pid": fr.pid}, timeout_s=30.0, max_workers=1, chunk_size=1,
                    max_tasks_per_worker=3) as r:
    got = [int(p) for _ in range(3) for p in r(["a", "b", "c"], [{}] * 3).per_fn["pid"]]
  assert got[0] == got[1] == got[2] and len(set(got)) == 3 and r.recycled >= 2
  assert os.getpid() not in got


def test_recycling_validation():
  with pytest.raises(ValueError, match="max_tasks_per_worker"):
    RewardRunner({"pid": fr.pid}, max_tasks_per_worker=0)
  with pytest.raises(ValueError, match="max_worker_rss_mb"):
    RewardRunner({"pid": fr.pid}, max_worker_rss_mb=0)
