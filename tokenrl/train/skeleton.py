"""The one run skeleton every trainer uses: a run is a list of phases (DESIGN §4).

A trainer (RL, preference, MEET, refusal tokens, rectification, ...) only builds a `RunSpec`:
its phases (SFT warm-up, RL, pairwise, a method's own stage), each with its step function,
start state and evaluation, plus the checkpointed data iterators and a summary function.
`run_job(cfg, workdir, build)` owns everything else, identically for all of them:

  - validating the whole config before any work (`validate_config`: every plain field's range;
    `resolve_objective` + the method's own checks,
    then `check_budgets` once the model config is known, before any step);
  - the exclusive workdir lock (WORKDIR/.lock, `workdir_lock`) and checking a rerun's config
    against the one saved next to its checkpoints (`check_rerun_config`) before config.json is
    rewritten;
  - checkpoint/restore of the state pytree, the iterator states, the current phase, the
    evaluations and the trainer's `aux` dict, so a run killed at any point and rerun continues
    exactly as if uninterrupted (bitwise on CPU: every random draw is a function of the seed and
    the global step, or a checkpointed generator);
  - SIGTERM/SIGINT (handled from start-up on, so a single one is never lost): finish the
    step or evaluation under way, save, exit cleanly (`{"preempted": True}`); only a signal
    after the final checkpoint lets the run complete (nothing is left to interrupt);
  - checkpoint integrity: a resume uses the newest checkpoint that passes its digest check
    (`Checkpointer.latest_step`), falling back past corrupted ones with a warning;
  - the evaluation schedule (phase start, every train.eval_every global steps, phase end);
  - metrics.jsonl + tb/ + the progress bar (MetricsWriter), config.json, summary.json, curve.png.

Global step g counts the steps of all phases in order; checkpoints are taken every
train.checkpoint_every global steps and at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from tokenrl.methods.budgets import check_budgets
from tokenrl.methods.config import resolve_objective
from tokenrl.train import distributed
from tokenrl.train.checkpoint import Checkpointer
from tokenrl.train.metrics import MetricsWriter, plot_curves
from tokenrl.train.runtime import Preemption, check_rerun_config, jsonable, print_summary, workdir_lock
from tokenrl.train.validate import validate_config


@dataclasses.dataclass
class Phase:
  """One stage of a run.

  name        the `phase` of its metrics lines (sft, rl, pref, stage1, q, ...).
  steps       number of steps (0 is allowed: the phase then only starts and evaluates).
  init        previous phase's final state (None for the first phase) -> this phase's start
              state. Pure: the skeleton also chains it from the first phase to build the
              template a checkpoint of this phase is restored into.
  step        (state, g, s) -> (state, metrics); g global step, s step within the phase.
  start       side effects on entering the phase, fresh or resumed (a frozen reference, ...).
  evaluate    (state, g, when) -> record (when: 'start' | 'every' | 'end'); stored in
              meta['evals'] with 'step' = g.
  eval_at_start / eval_at_end / eval_every: when to evaluate (eval_every in global steps).
  show        metrics shown on the progress bar during this phase.
  params_path keys from the state pytree to the model params (reopened by `load_workdir`).
  done        optional early end: (state, g, s) -> (finished, metrics), called after every
              `done_every` steps of the phase (s counts steps done); its metrics join that
              step's metrics line. `steps` is then the most the phase may take, and later phases
              start at the global step where it ended (recorded in the checkpoint, so a resumed
              run ends the phase at the same step). Must be deterministic in (state, g, s).
  """
  name: str
  steps: int
  init: Callable[[Any], Any]
  step: Callable[[Any, int, int], tuple[Any, dict[str, Any]]]
  start: Callable[[Any], None] | None = None
  evaluate: Callable[[Any, int, str], dict[str, Any]] | None = None
  eval_at_start: bool = False
  eval_at_end: bool = False
  eval_every: int = 0
  show: tuple[str, ...] = ("loss",)
  params_path: tuple[str, ...] = ("params",)
  done: Callable[[Any, int, int], tuple[bool, dict[str, Any]]] | None = None
  done_every: int = 0


@dataclasses.dataclass
class RunSpec:
  """What a trainer builds; `run_job` runs it.

  model/prompt_len   for the start-up `check_budgets(cfg, model, prompt_len)`.
  iterators          name -> object with get_state()/set_state() (grain iterators, NumpyRng).
  summarize          (state, meta, g) -> summary dict (meta['evals'], meta['aux'] available).
  aux                trainer-owned JSON-able dict, checkpointed (e.g. method state).
  plot               write curve.png (reward / held-out accuracy) at the end.
  close              called once the run ends (reward workers, ...).
  """
  phases: list[Phase]
  model: Any
  prompt_len: int
  summarize: Callable[[Any, dict[str, Any], int], dict[str, Any]]
  iterators: dict[str, Any] = dataclasses.field(default_factory=dict)
  aux: dict[str, Any] = dataclasses.field(default_factory=dict)
  plot: bool = True
  close: Callable[[], None] | None = None


def validate(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved `rl` options; raises ValueError naming the key before any work is done."""
  validate_config(cfg)  # every plain field's range, all problems in one error
  return resolve_objective(cfg.rl)  # also runs the selected method's validate()


def run_job(cfg: ml_collections.ConfigDict, workdir: str,
            build: Callable[[ml_collections.ConfigDict, str], RunSpec]) -> dict[str, Any]:
  """Run (or resume) the job `build(cfg, workdir)` describes in `workdir`; the summary."""
  start_time = time.time()
  validate(cfg)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  # From here on SIGTERM/SIGINT only set a flag, checked at fixed points of `_loop` (after the
  # build, after every step and evaluation): one signal always ends the run the same way.
  preempt = Preemption()
  try:
    with workdir_lock(workdir, enabled=is_main):
      ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints,
                          async_save=cfg.train.async_checkpoint)
      try:
        if ckpt.all_steps():  # any step folder, usable or not: its config.json must stay
          check_rerun_config(cfg, workdir)
        spec = build(cfg, workdir)
        check_budgets(cfg, spec.model, spec.prompt_len)
        if is_main:
          with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
        return _loop(cfg, workdir, spec, ckpt, start_time, is_main, preempt)
      finally:
        ckpt.close()
  finally:
    preempt.restore()


def _offsets(phases: list[Phase]) -> list[int]:
  return [sum(p.steps for p in phases[:k]) for k in range(len(phases))]


def _template(phases: list[Phase], k: int) -> Any:
  state = None
  for phase in phases[:k + 1]:
    state = phase.init(state)
  return state


def _loop(cfg, workdir, spec: RunSpec, ckpt: Checkpointer, start_time: float,
          is_main: bool, preempt: Preemption) -> dict[str, Any]:
  phases = spec.phases
  # starts[k]: the global step at which phase k started (a phase with `done` may end early).
  # ended: phases that ended early through `done` (a checkpoint taken after that, e.g. on a
  # signal, must not resume their steps).
  meta: dict[str, Any] = {"evals": [], "marks": [], "aux": spec.aux, "starts": [0], "ended": []}
  g, k = 0, 0
  g = ckpt.latest_step()  # the newest checkpoint that passes its digest check
  if g is not None:
    k = ckpt.restore_meta(g)["phase"]
    state, meta = ckpt.restore(_template(phases, k), g)
    spec.aux.clear()
    spec.aux.update(meta["aux"])
    meta["aux"] = spec.aux
    meta.setdefault("starts", _offsets(phases)[:k + 1])  # checkpoints written before `starts`
    meta.setdefault("ended", [])
    for name, it in spec.iterators.items():
      it.set_state(meta["iterators"][name])
    logging.info("resumed from %s at step %d (phase %s)", ckpt.directory, g, phases[k].name)
  else:
    g = 0
    state = phases[0].init(None)

  # The most steps the run can take from here (the bar's length; no periodic save at the end).
  total = lambda: meta["starts"][k] + sum(p.steps for p in phases[k:])
  writer = MetricsWriter(workdir, total_steps=total(), initial_step=g, enabled=is_main)

  def evaluate(phase: Phase, when: str) -> None:
    mark = f"{phase.name}:{when}:{g}"
    if phase.evaluate is None or mark in meta["marks"]:
      return
    result = {**phase.evaluate(state, g, when), "step": g}
    meta["evals"].append(result)
    meta["marks"].append(mark)
    writer.log(f"eval @ step {g} ({phase.name}): " + ", ".join(
        f"{key}={v:.3f}" for key, v in result.items() if isinstance(v, float)))

  def save(force: bool = False) -> None:
    meta.update(phase=k, iterators={n: it.get_state() for n, it in spec.iterators.items()},
                params_path=list(phases[k].params_path))
    ckpt.save(g, state, json.loads(json.dumps(meta, default=jsonable)), force=force)

  def stop() -> bool:
    """A signal arrived (on any worker: every worker stops at the same point): save, exit."""
    if not distributed.any_process(preempt.requested):
      return False
    writer.log(f"{preempt.signal_name}: saving checkpoint at step {g} and exiting")
    save(force=True)
    ckpt.wait()
    return True

  try:
    if distributed.any_process(preempt.requested):  # during start-up: nothing new to save
      writer.log(f"{preempt.signal_name} during start-up: exiting at step {g}")
      return {"preempted": True, "steps": g}
    while True:
      phase, s = phases[k], g - meta["starts"][k]
      if phase.start is not None:
        phase.start(state)
      if s == 0 and phase.eval_at_start:
        evaluate(phase, "start")
        if stop():
          return {"preempted": True, "steps": g}
      while s < phase.steps and k not in meta["ended"]:
        t0 = time.time()
        state, metrics = phase.step(state, g, s)
        metrics = dict(metrics, step_seconds=time.time() - t0)
        finished = False
        if phase.done is not None and phase.done_every and (s + 1) % phase.done_every == 0:
          finished, extra = phase.done(state, g + 1, s + 1)
          metrics.update(extra)
        writer.write(g, metrics, phase=phase.name, show=phase.show)
        g, s = g + 1, s + 1
        if finished and s < phase.steps:
          meta["ended"].append(k)  # saved from here on: a resumed run takes no more steps of it
          writer.log(f"phase {phase.name} done after {s} of at most {phase.steps} steps: "
                     + ", ".join(f"{key}={v:.3f}" for key, v in extra.items()))
        if (phase.eval_every and g % phase.eval_every == 0 and s < phase.steps
            and k not in meta["ended"]):
          evaluate(phase, "every")
        # Any worker's signal stops every worker at the same step (a collective checkpoint).
        if stop():
          return {"preempted": True, "steps": g}
        every = cfg.train.checkpoint_every
        if every and g % every == 0 and g < total():
          save()
      if phase.eval_at_end:
        evaluate(phase, "end")
      if stop():  # also after the last phase: a signal before the final save always stops
        return {"preempted": True, "steps": g}
      if k + 1 == len(phases):
        break
      k += 1
      meta["starts"] = meta["starts"][:k] + [g]
      writer.set_total(total())
      state = phases[k].init(state)
    save(force=True)
    ckpt.wait()
  finally:
    writer.close()
    if spec.close is not None:
      spec.close()

  summary = spec.summarize(state, meta, g)
  summary.setdefault("steps", g)
  summary["wall_seconds"] = time.time() - start_time
  summary.setdefault("evals", meta["evals"])
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=jsonable)
    if spec.plot:
      plot_curves(workdir, [e for e in meta["evals"] if "accuracy" in e])
    print_summary(summary)
  return summary


class NumpyRng:
  """A numpy Generator whose position is checkpointed (get_state/set_state, JSON-able)."""

  def __init__(self, seed: int):
    self.rng = np.random.default_rng(seed)

  def get_state(self) -> dict[str, Any]:
    state = self.rng.bit_generator.state
    return json.loads(json.dumps(state, default=str), parse_int=str)  # 128-bit ints as text

  def set_state(self, state: dict[str, Any]) -> None:
    def ints(x):
      if isinstance(x, dict):
        return {k: ints(v) for k, v in x.items()}
      return int(x) if isinstance(x, str) and x.lstrip("-").isdigit() else x
    self.rng.bit_generator.state = ints(state)
