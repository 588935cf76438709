"""rl.objective=palace resumes like every method of the RL loop: SIGKILL inside the GRPO phase,
rerun = the uninterrupted run (final checkpoint state bitwise equal on CPU, evaluations equal,
metrics.jsonl equal except timings). The pattern of tests/train/test_resume_all.py, whose
metric comparison does not drop the RL loop's `tokens_per_second` (a timing)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.train.test_resume_all import TINY, _final, _lines

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FLAGS = [f"--config={os.path.join(ROOT, 'configs', 'palace.py')}:smoke",
         "--config.data.eval_size=8", "--config.data.train_size=600"]


def _cmd(workdir):
  return [sys.executable, "-m", "tokenrl.cli", "train", f"--workdir={workdir}", *FLAGS, *TINY]


@pytest.mark.slow
def test_sigkill_in_grpo_then_rerun_equals_uninterrupted(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  subprocess.run(_cmd(straight), check=True, env=env, capture_output=True)
  proc = subprocess.Popen(_cmd(broken), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  start = time.time()
  # 4 SFT steps then GRPO: the 5th line is GRPO's first step, after the checkpoint at step 4.
  while len(_lines(broken)) < 5:
    assert proc.poll() is None, f"ended early with {proc.returncode}"
    assert time.time() - start < 300, "timed out waiting for metrics"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(broken, "summary.json"))  # really interrupted
  subprocess.run(_cmd(broken), check=True, env=env, capture_output=True)

  step_a, state_a, meta_a = _final(straight)
  step_b, state_b, meta_b = _final(broken)
  assert step_a == step_b == len(_lines(straight)) == 7
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a["evals"] == meta_b["evals"]
  drop = lambda r: {k: v for k, v in r.items()
                    if "seconds" not in k and k != "tokens_per_second"}
  a, b = [drop(r) for r in _lines(straight)], [drop(r) for r in _lines(broken)]
  assert a == b
  assert all("count_re" in r for r in a if r["phase"] == "rl")
  with open(os.path.join(straight, "summary.json")) as f:
    assert json.load(f)["objective"] == "palace"
