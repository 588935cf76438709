"""Every trainer resumes: SIGKILL mid-run, rerun = the uninterrupted run (final checkpoint state
bitwise equal on CPU, metrics.jsonl equal except timings). The RL main job's version (with
SIGTERM too) is tests/train/test_main_job.py."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QUICK = os.path.join(ROOT, "configs", "quickstart.py")
PREF = os.path.join(ROOT, "configs", "preference_quickstart.py")
TINY = ["--config.model.dim=32", "--config.model.mlp_dim=64", "--config.model.num_layers=1",
        "--config.train.checkpoint_every=2", "--config.train.async_checkpoint=false",
        "--config.train.keep_checkpoints=10"]

# trainer -> (config flags, metrics lines to wait for before SIGKILL: past the step-2 save)
TRAINERS = {
    "dpo": ([f"--config={PREF}:smoke", "--config.train.sft_steps=3", "--config.train.max_steps=3",
             "--config.data.eval_size=8"], 5),
    "meet": ([f"--config={PREF}:smoke", "--config.rl.objective=meet", "--config.train.sft_steps=2",
              "--config.rl.meet.stage1_steps=2", "--config.rl.meet.stage2_steps=2",
              "--config.data.eval_size=8"], 3),
    "refusal_tokens": ([f"--config={QUICK}:smoke", "--config.rl.objective=refusal_tokens",
                        "--config.train.sft_steps=5", "--config.data.eval_size=8"], 3),
    "rectification": ([f"--config={QUICK}:smoke", "--config.rl.objective=rectification",
                       "--config.train.sft_steps=2", "--config.rl.rectification.q_steps=3",
                       "--config.rl.rectification.samples_per_prompt=2",
                       "--config.data.eval_size=8"], 3),
}


def _cmd(flags, workdir):
  return [sys.executable, "-m", "tokenrl.cli", "train", f"--workdir={workdir}", *flags, *TINY]


def _lines(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def _final(workdir):
  from tokenrl.train.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  meta = ckpt.restore_meta(step)
  ckpt.close()
  return step, state, meta


@pytest.mark.slow
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_sigkill_then_rerun_equals_uninterrupted(trainer, tmp_path):
  flags, kill_after = TRAINERS[trainer]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
  subprocess.run(_cmd(flags, straight), check=True, env=env, capture_output=True)

  proc = subprocess.Popen(_cmd(flags, broken), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  start = time.time()
  while len(_lines(broken)) < kill_after:
    assert proc.poll() is None, f"ended early with {proc.returncode}"
    assert time.time() - start < 300, "timed out waiting for metrics"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(broken, "summary.json"))  # really interrupted
  subprocess.run(_cmd(flags, broken), check=True, env=env, capture_output=True)

  step_a, state_a, meta_a = _final(straight)
  step_b, state_b, meta_b = _final(broken)
  assert step_a == step_b == len(_lines(straight))
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a["evals"] == meta_b["evals"]
  drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  assert [drop(r) for r in _lines(straight)] == [drop(r) for r in _lines(broken)]
  with open(os.path.join(straight, "summary.json")) as f:
    sa = json.load(f)
  with open(os.path.join(broken, "summary.json")) as f:
    sb = json.load(f)
  assert {k: v for k, v in sa.items() if k != "wall_seconds"} == \
      {k: v for k, v in sb.items() if k != "wall_seconds"}
