"""Run outputs: per-step metrics (JSONL + TensorBoard), a progress bar, the summary and plot.

Only process 0 writes; other processes get a writer whose methods do nothing.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np


def _plain(value: Any) -> Any:
  value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def progress_fields(record: Mapping[str, Any], show: Sequence[str]) -> dict[str, str]:
  """The progress-bar postfix: the phase, then each `show` metric the record holds (3 digits)."""
  out = {"phase": str(record["phase"])}
  for k in show:
    v = record.get(k)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      out[k] = f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
  return out


class MetricsWriter:
  """metrics.jsonl (one line per step, appended so resumes continue it), tb/ event files, tqdm."""

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self.start = time.time()
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if initial_step == 0 and os.path.exists(self.path):
      os.remove(self.path)  # a fresh run must not append to an older run's metrics
    elif os.path.exists(self.path):
      self._truncate_after(initial_step)
    self._file = open(self.path, "a")
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    from tqdm import tqdm
    self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True, unit="step",
                     mininterval=1.0)

  def _truncate_after(self, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed (they will be logged again)."""
    with open(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l)["step"] < step]
    with open(self.path, "w") as f:
      f.writelines(lines)

  def write(self, step: int, metrics: Mapping[str, Any], *, phase: str,
            show: Sequence[str] = ("loss",)) -> None:
    """Append one line; the bar shows the `show` metrics the step reported (the phase's own:
    loss for SFT, reward/accuracy/kl/clipfrac/entropy/grad_norm for RL, ...)."""
    if not self.enabled:
      return
    record = {"step": step, "phase": phase, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for k, v in record.items():
      if isinstance(v, (int, float)) and k != "step":
        self._tb.add_scalar(f"{phase}/{k}", v, step)
    self._bar.update(1)
    self._bar.set_postfix(progress_fields(record, show), refresh=False)

  def set_total(self, total_steps: int) -> None:
    """A phase ended early: the bar's length is the steps the run can still take."""
    if self.enabled and self._bar.total != total_steps:
      self._bar.total = total_steps
      self._bar.refresh()

  def log(self, message: str) -> None:
    if self.enabled:
      self._bar.write(message)

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._tb.close()
      self._file.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if l.strip()]


def plot_curves(workdir: str, evals: list[dict[str, Any]]) -> str:
  """reward (RL steps) and held-out accuracy (eval points) vs step -> WORKDIR/curve.png."""
  # A Figure without pyplot: no global backend switch (notebooks keep inline plots).
  from matplotlib.figure import Figure
  records = [r for r in read_metrics(workdir) if r["phase"] == "rl" and r.get("reward") is not None]
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  if records:
    steps = np.array([r["step"] for r in records])
    reward = np.array([r["reward"] for r in records])
    window = max(1, len(reward) // 20)
    smooth = np.convolve(reward, np.ones(window) / window, mode="valid")
    ax.plot(steps, reward, alpha=0.3, color="C0")
    ax.plot(steps[window - 1:], smooth, color="C0", label="train reward (mean over rollouts)")
  if evals:
    ax.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-", color="C1",
            label="held-out greedy accuracy")
  ax.set_xlabel("step")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  path = os.path.join(workdir, "curve.png")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
