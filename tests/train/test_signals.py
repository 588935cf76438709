"""One SIGINT/SIGTERM always stops the run the same way, wherever it lands: during start-up (the
build), a step, an evaluation at a phase start, or the final evaluation — never ignored, never
a completed run. A pure-Python two-phase RunSpec (no model) drives the real skeleton."""

import json
import os
import signal

import jax.numpy as jnp
import pytest

from tokenrl import models
from tokenrl.config import base_config
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.skeleton import Phase, RunSpec, run_job

STEPS = 3  # per phase


def _cfg():
  c = base_config()
  c.train.checkpoint_every = 0
  c.train.async_checkpoint = False
  c.train.sft_steps = STEPS
  c.train.max_steps = STEPS
  return c


def _build(when: str, sig=signal.SIGINT):
  """A RunSpec whose `when` point ('build', 'step:<g>', 'eval:<phase>:<when>') sends `sig`."""
  def kill(point):
    if point == when:
      os.kill(os.getpid(), sig)

  def build(cfg, workdir):
    del cfg, workdir
    kill("build")

    def step(state, g, s):
      del s
      kill(f"step:{g}")
      return {"x": state["x"] + 1}, {"loss": 0.0}

    def evaluate(name):
      def ev(state, g, w):
        del state, g
        kill(f"eval:{name}:{w}")
        return {"accuracy": 0.5}
      return ev

    phases = [Phase(name=n, steps=STEPS, step=step, evaluate=evaluate(n), eval_at_start=True,
                    eval_at_end=True,
                    init=(lambda prev: prev if prev is not None else {"x": jnp.zeros(())}))
              for n in ("sft", "rl")]
    return RunSpec(phases=phases, model=models.tiny("qwen2"), prompt_len=4, plot=False,
                   summarize=lambda state, meta, g: {"x": float(state["x"])})
  return build


def _latest(workdir):
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


@pytest.mark.parametrize("when,saved_step", [
    ("build", None),             # start-up: nothing trained, nothing to save
    ("step:1", 2),               # the step under way finishes, then save
    ("eval:rl:start", STEPS),    # evaluation at a phase boundary
    ("eval:rl:end", 2 * STEPS),  # the final evaluation: still a stop, not a completed run
])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_always_stops_and_saves(tmp_path, when, saved_step, sig):
  before = signal.getsignal(sig)
  result = run_job(_cfg(), str(tmp_path), _build(when, sig))
  assert result["preempted"] is True
  assert result["steps"] == (0 if saved_step is None else saved_step)
  assert _latest(str(tmp_path)) == saved_step
  assert not os.path.exists(tmp_path / "summary.json")  # not a completed run
  assert signal.getsignal(sig) == before  # handlers restored


def test_rerun_after_a_stop_completes_the_run(tmp_path):
  run_job(_cfg(), str(tmp_path), _build("step:4"))
  result = run_job(_cfg(), str(tmp_path), _build("never"))
  assert result["x"] == 2 * STEPS and result["steps"] == 2 * STEPS
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(l)["step"] for l in f] == list(range(2 * STEPS))


def test_without_a_signal_the_run_completes(tmp_path):
  result = run_job(_cfg(), str(tmp_path), _build("never"))
  assert "preempted" not in result and result["x"] == 2 * STEPS
  assert _latest(str(tmp_path)) == 2 * STEPS
