"""RewardRunner: errors, NaN, hangs and worker deaths score 0 and are counted; training goes on.

One process-backed runner is shared by the module (starting workers costs ~0.2 s each).
"""
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.data import faulty_rewards as fr
from tokenrl.data.reward_runner import RewardRunner

COMPLETIONS = ["a", "b", "c", "d", "e", "ff"]


@pytest.fixture(scope="module")
def runner():
  with RewardRunner({"len": fr.length_reward, "raise": fr.raises_on_b,
                     "sleep": fr.sleeps_on_c, "nan": fr.nan_on_d, "exit": fr.exits_on_e},
                    weights={"len": 0.5, "nan": 2.0}, timeout_s=0.2, max_workers=2,
                    chunk_size=2) as r:
    yield r


def test_faults_score_zero_and_are_counted(runner):
  out = runner(COMPLETIONS, [{}] * len(COMPLETIONS))
  per = {k: v.tolist() for k, v in out.per_fn.items()}
  assert per == {"len": [1, 1, 1, 1, 1, 2],
                 "raise": [1, 0, 1, 1, 1, 1],   # raised on 'b'
                 "sleep": [2, 2, 0, 2, 2, 2],   # timed out on 'c', worker replaced
                 "nan": [3, 3, 3, 0, 3, 3],     # NaN on 'd' is an error
                 "exit": [4, 4, 4, 4, 0, 4]}    # killed its worker on 'e'
  assert out.stats == {"reward_errors": 3, "reward_timeouts": 1}
  assert out.failed["sleep"].tolist() == [False, False, True, False, False, False]
  # rewards = 0.5*len + raise + sleep + 2*nan + exit
  want = 0.5 * np.asarray(per["len"]) + np.asarray(per["raise"]) + np.asarray(
      per["sleep"]) + 2 * np.asarray(per["nan"]) + np.asarray(per["exit"])
  np.testing.assert_allclose(out.rewards, want)
  assert out.rewards.dtype == np.float32 and out.rewards.shape == (6,)


def test_runner_keeps_working_and_broadcasts_groups(runner):
  # B = 2 examples, G = 3 completions each: completion n uses example n // 3.
  out = runner(["x", "yy", "zzz", "a", "b", "a"], [{}, {}])
  assert out.per_fn["len"].tolist() == [1, 2, 3, 1, 1, 1]
  assert out.per_fn["raise"].tolist() == [1, 1, 1, 1, 0, 1]  # only 'raise' fails, on 'b'
  assert out.stats == {"reward_errors": 1, "reward_timeouts": 0}


def test_examples_reach_the_functions():
  with RewardRunner({"answer": fr.answer_reward}, timeout_s=5.0, max_workers=1) as r:
    fut = r.submit(["1", "2", "2", "2"], [{"answer": "1"}, {"answer": "2"}])
    out = fut.result(timeout=60)
  assert out.rewards.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_thread_backend_accepts_closures_and_abandons_hangs():
  seen = []
  with RewardRunner({"closure": lambda c, e: seen.append(c) or 1.0, "sleep": fr.sleeps_on_c},
                    backend="thread", timeout_s=0.2, max_workers=2) as r:
    out = r(["a", "c", "b"], [{}] * 3)
  assert out.per_fn["closure"].tolist() == [1, 1, 1]
  assert out.per_fn["sleep"].tolist() == [2, 0, 2]
  assert out.stats == {"reward_errors": 0, "reward_timeouts": 1}
  assert sorted(seen) == ["a", "b", "c"]


def test_validation():
  with pytest.raises(ValueError, match="cannot be pickled"):
    RewardRunner({"f": lambda c, e: 1.0})
  with pytest.raises(ValueError, match="unknown functions"):
    RewardRunner({"f": fr.length_reward}, weights={"g": 1.0})
  with pytest.raises(ValueError, match="multiple"):
    RewardRunner({"f": fr.length_reward}, backend="thread")(["a", "b", "c"], [{}, {}])


def test_recovers_from_bad_input_and_dead_idle_workers():
  with RewardRunner({"len": fr.length_reward}, timeout_s=5.0, max_workers=1) as r:
    with pytest.raises(TypeError, match="pickle"):  # A lock cannot be sent to the worker.
      r(["a"], [{"lock": threading.Lock()}])
    assert r(["abc"], [{}]).rewards.tolist() == [3.0]
    r._workers[0].proc.kill()  # Dies while idle: replaced on the next call.
    r._workers[0].proc.wait()
    assert r(["ab"], [{}]).rewards.tolist() == [2.0]


def test_unloadable_function_is_a_clear_error():
  with RewardRunner({"bad": fr.FailsToUnpickle()}, timeout_s=1.0, max_workers=1) as r:
    with pytest.raises(RuntimeError, match="cannot load me"):
      r(["a"], [{}])


def test_worker_imports_stay_light():
  # Reward workers import tokenrl.data: it must not pull in jax, grain or tfds.
  code = ("import sys, tokenrl.data, tokenrl.data.rewards, tokenrl.data.reward_runner;"
          "print(sorted(m for m in ('jax', 'grain', 'tensorflow_datasets', 'transformers')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
