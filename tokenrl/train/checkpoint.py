"""Orbax checkpoints of the whole run state: params, optimizer state, step counters, the RNG key
and the data-iterator positions, so a resumed run continues bitwise identically (CPU).

Layout: WORKDIR/checkpoints/<step>/{state, meta}. `state` is the TrainState pytree (orbax
StandardSave, written collectively by every process); `meta` is JSON (RNG key data, grain
iterator states, loop phase, baseline accuracy).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Async, keep-N checkpoints of (TrainState, meta dict)."""

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> None:
    """Save `step`, replacing a checkpoint of the same step (a rerun of a finished or preempted
    run re-saves its last step with the final evaluation added to `meta`)."""
    if step in self.manager.all_steps():
      self.manager.wait_until_finished()
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (default the latest); `abstract_state` gives shapes/shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
