"""The main job end to end: outputs, resume after SIGKILL and SIGTERM bitwise = uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tokenrl.train.rl_loop import train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")


def _smoke_config():
  sys.path.insert(0, os.path.dirname(CONFIG))
  import importlib.util
  spec = importlib.util.spec_from_file_location("quickstart", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  summary = train(_smoke_config(), workdir)
  return workdir, summary


def test_outputs_of_the_main_job(smoke_run):
  workdir, summary = smoke_run
  for name in ("metrics.jsonl", "summary.json", "curve.png", "config.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tb"))
  with open(os.path.join(workdir, "summary.json")) as f:
    saved = json.load(f)
  for key in ("baseline_accuracy", "final_accuracy", "wall_seconds", "steps"):
    assert key in saved
  assert saved["steps"] == 7 and saved["sft_steps"] == 4
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  assert [l["step"] for l in lines] == list(range(7))
  assert [l["phase"] for l in lines] == ["sft"] * 4 + ["rl"] * 3
  rl = lines[-1]
  for key in ("loss", "reward", "accuracy", "grad_norm", "reward_errors", "reward_timeouts",
              "completion_length", "clipfrac", "ratio_mean"):
    assert key in rl, key
  assert np.isfinite(rl["loss"])
  assert rl["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # one update per rollout


def _cmd(workdir):
  return [sys.executable, "-m", "tokenrl.cli", "train", f"--config={CONFIG}:smoke",
          f"--workdir={workdir}", "--config.train.sft_steps=6", "--config.train.max_steps=6",
          "--config.train.checkpoint_every=2", "--config.train.async_checkpoint=false"]


def _wait_for_lines(workdir, n, proc, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  start = time.time()
  while time.time() - start < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"process ended early with {proc.returncode}")
    if os.path.exists(path):
      with open(path) as f:
        if sum(1 for _ in f) >= n:
          return
    time.sleep(0.2)
  raise AssertionError("timed out waiting for metrics")


def _final_params(workdir):
  from tokenrl.train.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, async_save=False)
  step = ckpt.latest_step()
  meta = ckpt.restore_meta(step)
  item = ckpt.manager.restore(step, args=__import__("orbax.checkpoint").checkpoint.args.Composite(
      state=__import__("orbax.checkpoint").checkpoint.args.StandardRestore()))
  ckpt.close()
  return step, item.state, meta


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_is_bitwise_identical(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  straight = str(tmp_path / "straight")
  subprocess.run(_cmd(straight), check=True, env=env, capture_output=True)

  broken = str(tmp_path / "broken")
  proc = subprocess.Popen(_cmd(broken), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_lines(broken, 4, proc)  # past the checkpoint at step 2, inside the SFT phase
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = subprocess.Popen(_cmd(broken), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_lines(broken, 9, proc)  # inside the RL phase
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0  # SIGTERM: checkpoint, then a clean exit
  subprocess.run(_cmd(broken), check=True, env=env, capture_output=True)

  step_a, state_a, meta_a = _final_params(straight)
  step_b, state_b, meta_b = _final_params(broken)
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a["evals"] == meta_b["evals"]
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    a = [json.loads(l) for l in f]
  with open(os.path.join(broken, "metrics.jsonl")) as f:
    b = [json.loads(l) for l in f]
  drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k and k != "tokens_per_second"}
  assert [drop(r) for r in a] == [drop(r) for r in b]


@pytest.mark.slow
def test_cli_eval_sample_export(smoke_run, tmp_path):
  workdir, summary = smoke_run
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  cli = [sys.executable, "-m", "tokenrl.cli"]
  report_dir = str(tmp_path / "eval")
  out = subprocess.run(cli + ["eval", f"--workdir={workdir}", "--strategies=greedy",
                              f"--out={report_dir}"], check=True, env=env, capture_output=True,
                       text=True).stdout
  assert "| greedy |" in out  # the markdown table on stdout
  with open(os.path.join(report_dir, "results.json")) as f:
    (result,) = json.load(f)["results"]
  (greedy,) = result["strategies"]
  # The suite's greedy accuracy on the held-out split = the run's own final evaluation.
  assert greedy["name"] == "greedy"
  assert greedy["accuracy"] == pytest.approx(summary["final_accuracy"])
  out = subprocess.run(cli + ["sample", f"--model={workdir}", "--prompt=12+7=", "--prompt=3-1=",
                              "--num_samples=2"], check=True, env=env, capture_output=True,
                       text=True).stdout
  assert [l.split(" ")[0] for l in out.strip().splitlines()] == ["[0.0]", "[0.1]", "[1.0]", "[1.1]"]
  hf_dir = str(tmp_path / "hf")
  subprocess.run(cli + ["export", f"--workdir={workdir}", f"--out={hf_dir}"], check=True, env=env,
                 capture_output=True)
  from tokenrl import models
  from tokenrl.train.workdir import load_workdir
  _, _, params = load_workdir(workdir)
  _, exported = models.load_hf(hf_dir)
  jax.tree.map(np.testing.assert_array_equal, exported, params)


def test_load_workdir_written_before_a_config_key_existed(smoke_run, tmp_path):
  """A workdir whose config.json predates rewards.fns / rewards.weights still reopens (those
  keys take the current defaults: the task verifier), with the same params; a saved key this
  version does not know is an error naming it."""
  import shutil
  from tokenrl.train.workdir import load_workdir
  workdir, _ = smoke_run
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old, ignore=shutil.ignore_patterns("*.lock", "tb"))
  path = os.path.join(old, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["rewards"]["fns"], saved["rewards"]["weights"]
  with open(path, "w") as f:
    json.dump(saved, f)
  cfg, run, params = load_workdir(old)
  assert cfg.rewards.fns == "" and cfg.rewards.weights == ""
  assert list(run.reward_fns) == ["task"]
  _, _, expected = load_workdir(workdir)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  saved["rewards"]["retired_knob"] = 1.0
  with open(path, "w") as f:
    json.dump(saved, f)
  with pytest.raises(ValueError, match=r"rewards\.retired_knob"):
    load_workdir(old)
