"""The run skeleton's process-level pieces: workdir lock, rerun-config check, signals, the
progress-bar fields and the checkpointed numpy Generator."""

import json
import os
import signal

import numpy as np
import pytest

from tokenrl.config import base_config
from tokenrl.train.metrics import progress_fields
from tokenrl.train.runtime import Preemption, check_rerun_config, workdir_lock
from tokenrl.train.skeleton import NumpyRng


def test_workdir_lock_refuses_a_second_run_and_is_released(tmp_path):
  with workdir_lock(str(tmp_path)):
    with pytest.raises(RuntimeError, match=f"in use by another live run \\(pid {os.getpid()}\\)"):
      with workdir_lock(str(tmp_path)):
        pass
  with workdir_lock(str(tmp_path)):  # released on exit: a rerun takes it again
    pass


def test_workdir_lock_is_not_taken_by_other_processes_of_a_job(tmp_path):
  with workdir_lock(str(tmp_path)):
    with workdir_lock(str(tmp_path), enabled=False):
      pass


def _save(tmp_path, cfg):
  with open(tmp_path / "config.json", "w") as f:
    f.write(cfg.to_json_best_effort())


def test_rerun_config_check_names_the_changed_keys(tmp_path):
  cfg = base_config()
  _save(tmp_path, cfg)
  check_rerun_config(cfg, str(tmp_path))        # same config: fine
  cfg.train.max_steps += 5                      # extending a run is allowed
  cfg.train.eval_every = 7
  check_rerun_config(cfg, str(tmp_path))
  cfg.model.dim = 64
  cfg.rl.objective = "dapo"
  with pytest.raises(ValueError, match=r"model.dim: checkpoint 128 vs now 64.*rl.objective"):
    check_rerun_config(cfg, str(tmp_path))


def test_rerun_config_check_without_saved_config_passes(tmp_path):
  check_rerun_config(base_config(), str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_preemption_flags_sigterm_and_sigint(sig):
  before = signal.getsignal(sig)
  p = Preemption()
  try:
    os.kill(os.getpid(), sig)
    assert p.requested and p.signal_name == signal.Signals(sig).name
  finally:
    p.restore()
  assert signal.getsignal(sig) == before


def test_progress_fields_show_what_the_step_reports():
  record = {"phase": "rl", "loss": 0.0, "reward": 0.25, "accuracy": 0.5, "clipfrac": 0.0,
            "grad_norm": 1.5, "entropy": 2.0}
  shown = progress_fields(record, ("reward", "accuracy", "kl", "clipfrac", "entropy", "grad_norm"))
  # kl is absent (beta = 0) so not shown; loss is not asked for during RL.
  assert list(shown) == ["phase", "reward", "accuracy", "clipfrac", "entropy", "grad_norm"]
  assert shown["reward"] == "0.250" and shown["grad_norm"] == "1.500"


def test_numpy_rng_state_round_trips_through_json():
  a = NumpyRng(3)
  a.rng.integers(10, size=5)
  state = json.loads(json.dumps(a.get_state()))
  expected = a.rng.integers(1000, size=8)
  b = NumpyRng(99)
  b.set_state(state)
  np.testing.assert_array_equal(b.rng.integers(1000, size=8), expected)
