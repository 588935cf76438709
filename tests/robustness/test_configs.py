"""Hostile configs: each bad value fails at start-up (before the workdir is even created) with
the key, the allowed range and a fix named; a rerun with a changed model keeps its workdir usable."""

import json
import os
import subprocess
import sys

import pytest

from tokenrl.config import base_config
from tokenrl.train.validate import validate_config

from tests.robustness.conftest import tiny_config


_tiny = tiny_config


BAD = [
    ("train.max_steps", -1, r"an integer >= 0"),
    ("train.sft_steps", -2, r"an integer >= 0"),
    ("data.batch_size", 0, r"an integer >= 1"),
    ("train.sft_batch_size", 0, r"an integer >= 1"),
    ("model.dim", 0, r"an integer >= 1"),
    ("model.num_heads", 256, r"a divisor of model.dim=32"),
    ("model.num_kv_heads", 3, r"a divisor of model.num_heads=4"),
    ("rewards.timeout_s", 0.0, r"a finite number of seconds > 0"),
    ("data.task", "nope", r"one of \['arith', 'arith_cot', 'copy', 'countdown', 'hidden_length', 'sort', 'gsm8k', 'jsonl'\]"),
    ("sampler.max_new_tokens", 0, r"an integer >= 1"),
    ("sampler.top_k", -3, r"an integer >= 0"),
    ("data.eval_size", 0, r"an integer >= 1"),
    ("train.keep_checkpoints", 0, r"an integer >= 1"),
    ("model.max_seq_len", 1, r"an integer >= 2"),
    ("mesh.data", 0, r"-1 or an integer >= 1"),
]


@pytest.mark.parametrize("key,value,allowed", BAD, ids=[k for k, _, _ in BAD])
def test_each_bad_value_names_key_range_and_fix(key, value, allowed):
  cfg = _tiny()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ValueError, match=rf"{key} = {value!r}: must be {allowed}.*; fix: "
                                       rf"--config\.{key}="):
    validate_config(cfg)


def test_all_problems_are_reported_at_once():
  cfg = _tiny()
  cfg.train.max_steps, cfg.data.batch_size, cfg.model.dim = -1, 0, 0
  with pytest.raises(ValueError, match=r"3 problems") as e:
    validate_config(cfg)
  assert all(k in str(e.value) for k in ("train.max_steps", "data.batch_size", "model.dim"))


@pytest.mark.parametrize("method", ["skipdecode", "r2r"])
def test_lossy_speculative_methods_are_refused_for_training(method):
  cfg = _tiny()
  cfg.sampler.speculative.method = method
  with pytest.raises(ValueError, match=rf"sampler.speculative.method = '{method}'.*lossy.*"
                                       r"tokenrl eval.*fix: --config.sampler.speculative.method="):
    validate_config(cfg)


@pytest.mark.parametrize("method,key,value,allowed", [
    ("nope", "method", "nope", r"one of \['none', 'cyclic_reflex', 'budget'\]"),
    ("cyclic_reflex", "period", 0, r"a number of tokens > 0"),
    ("cyclic_reflex", "reflection", ",", r"comma-separated reflection strings"),
    ("budget", "head", "", r"the budget head file when method='budget'"),
    ("budget", "min_rate", -1.0, r"a finite number >= 0 \(0: that part of the validity mask"),
])
def test_control_options_name_key_and_fix(method, key, value, allowed):
  cfg = _tiny()
  cfg.sampler.control.period = 0  # ignored unless method='cyclic_reflex'
  validate_config(cfg)
  cfg.sampler.control.method = method
  cfg.sampler.control[key] = value
  with pytest.raises(ValueError, match=rf"sampler.control.{key} = {value!r}: must be {allowed}.*"
                                       rf"fix: --config.sampler.control.{key}="):
    validate_config(cfg)


def test_speculative_options_are_checked_only_when_on():
  cfg = _tiny()
  cfg.sampler.speculative.num_draft_tokens = -1  # ignored: method 'none'
  validate_config(cfg)
  cfg.sampler.speculative.method = "specdec_pp"
  cfg.sampler.speculative.draft = "model"
  with pytest.raises(ValueError, match=r"3 problems") as e:
    validate_config(cfg)
  for key in ("num_draft_tokens", "draft_model", "head"):
    assert f"sampler.speculative.{key} = " in str(e.value)


def test_the_base_config_and_every_shipped_config_validate():
  validate_config(base_config())
  validate_config(_tiny())


def test_hf_model_shape_fields_are_not_checked():
  cfg = _tiny()
  cfg.model.hf_path, cfg.model.num_heads = "/some/folder", 256  # ignored with hf_path
  validate_config(cfg)


@pytest.mark.parametrize("key,value", [("train.max_steps", -1), ("model.dim", 0),
                                       ("train.keep_checkpoints", 0), ("data.eval_size", 0)])
def test_train_refuses_before_touching_the_workdir(tmp_path, key, value):
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  cfg = _tiny()
  section, name = key.split(".")
  cfg[section][name] = value
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=key):
    train(cfg, str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("key,value,match", [
    ("model.max_seq_len", 8, r"max_seq_len"),
])
def test_sequence_budget_fails_before_any_step(tmp_path, key, value, match):
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  cfg = _tiny()
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(ValueError, match=match):
    train(cfg, str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists()  # no step ran
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_summary_is_finite(trained):
  _, summary = trained
  for key in ("baseline_accuracy", "final_accuracy"):
    assert summary[key] == summary[key]  # not NaN (data.eval_size >= 1 is enforced)


def test_rerun_with_another_model_keeps_the_workdir_usable(trained):
  from tokenrl.train.rl_loop import train  # pylint: disable=g-import-not-at-top
  from tokenrl.train.workdir import load_workdir  # pylint: disable=g-import-not-at-top
  workdir, _ = trained
  before = open(os.path.join(workdir, "config.json")).read()
  cfg = _tiny()
  cfg.model.dim = 64
  with pytest.raises(ValueError, match=r"model.dim: checkpoint 32 vs now 64"):
    train(cfg, workdir)
  assert open(os.path.join(workdir, "config.json")).read() == before
  saved_cfg, run, _ = load_workdir(workdir)  # what eval / sample / export open
  assert saved_cfg.model.dim == 32 and run.model.dim == 32


def test_a_second_process_on_the_workdir_is_refused_and_a_stale_lock_is_not(tmp_path):
  from tokenrl.train.runtime import workdir_lock  # pylint: disable=g-import-not-at-top
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from tokenrl.train.runtime import workdir_lock\n"
       "with workdir_lock(sys.argv[1]):\n  print('locked', flush=True); time.sleep(60)",
       str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=rf"in use by another live run \(pid {holder.pid}\)"):
      with workdir_lock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  # The holder died without cleaning up: its .lock file (with its pid) remains, harmlessly.
  assert (tmp_path / ".lock").read_text().strip() == str(holder.pid)
  with workdir_lock(str(tmp_path)):
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_config_json_is_what_eval_reads(trained):
  workdir, _ = trained
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["dim"] == 32
