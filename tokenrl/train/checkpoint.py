"""Orbax checkpoints of the whole run state: params, optimizer state, step counters, the RNG key
and the data-iterator positions, so a resumed run continues bitwise identically (CPU).

Layout: WORKDIR/checkpoints/<step>/{state, meta, digest.json}. `state` is the TrainState pytree
(orbax StandardSave, written collectively by every process); `meta` is JSON (RNG key data,
grain iterator states, loop phase, baseline accuracy); `digest.json` records the size and
SHA-256 of every other file of the step folder.

Integrity. Orbax restores whatever bytes it finds: one flipped byte in a data file restores a
different training state without a word. So once a save has committed, process 0 hashes the
step folder and writes digest.json (atomically, from a background thread when saves are async:
the training loop does not wait for it). `latest_step()` returns the newest step whose files
all match their digest; a newer step that does not (a flipped byte, truncated data, a missing
manifest or metadata file, an empty folder, a save killed before its digest was written) is
skipped with a warning that names the step and what is wrong, and the previous good step is
used. Nothing is ever deleted for being unusable: the first save of a resumed run moves the
unusable steps NEWER than the one it resumed from to WORKDIR/checkpoints_unusable/<step> (orbax
only saves steps above the newest folder it sees), older ones are left where they are.

Cost: one sequential read of the checkpoint per save (SHA-256 runs at ~1 GB/s per core, in the
background) and one per restore, per candidate step.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

DIGEST_FILE = "digest.json"
UNUSABLE_DIR = "checkpoints_unusable"


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def folder_digest(folder: str) -> dict[str, dict[str, Any]]:
  """{relative path: {"size": bytes, "sha256": hex}} of every file under `folder` (DIGEST_FILE
  excluded), sorted by path."""
  out = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel == DIGEST_FILE:
        continue
      out[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
  return out


def write_digest(folder: str) -> None:
  """Write folder/DIGEST_FILE for the files now in `folder` (atomic: a reader sees the old file,
  no file, or the complete new one)."""
  record = {"algorithm": "sha256", "files": folder_digest(folder)}
  tmp = os.path.join(folder, f".{DIGEST_FILE}.tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(folder, DIGEST_FILE))


def check_digest(folder: str) -> str | None:
  """None when every file recorded in folder/DIGEST_FILE is present with its size and SHA-256;
  otherwise what is wrong, in words (the first problem found, naming the file)."""
  if not os.path.isdir(folder):
    return "the step folder is missing"
  if not os.listdir(folder):
    return "the step folder is empty"
  path = os.path.join(folder, DIGEST_FILE)
  if not os.path.isfile(path):
    return (f"it has no {DIGEST_FILE} (its save did not finish, or it was written by a tokenrl "
            "without checkpoint digests)")
  try:
    with open(path) as f:
      recorded = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its {DIGEST_FILE} is unreadable ({type(e).__name__}: {e})"
  for rel, want in sorted(recorded.items()):
    file = os.path.join(folder, rel)
    if not os.path.isfile(file):
      return f"file {rel} is missing"
    size = os.path.getsize(file)
    if size != want["size"]:
      return f"file {rel} has {size} bytes, {want['size']} were saved (truncated or altered)"
    if _sha256(file) != want["sha256"]:
      return f"file {rel} differs from what was saved (SHA-256 mismatch: corrupted)"
  return None


class Checkpointer:
  """Async, keep-N, digest-verified checkpoints of (TrainState, meta dict)."""

  def __init__(self, workdir: str, *, keep: int = 2, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep (train.keep_checkpoints) must be >= 1, got {keep}: the newest "
                       "checkpoint is the trained model")
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._async = async_save
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))
    self._problems: dict[int, str | None] = {}  # step -> check_digest result (cached)
    self._warned: set[int] = set()
    self._digest_thread: threading.Thread | None = None
    self._saved = False  # this Checkpointer saved already (unusable steps were moved aside)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    """Every step folder, usable or not, oldest first."""
    return sorted(self.manager.all_steps())

  def problem(self, step: int) -> str | None:
    """Why `step` cannot be restored (None: it can). Cached: each step is hashed once."""
    if step not in self._problems:
      self._problems[step] = check_digest(self.step_dir(step))
    return self._problems[step]

  def latest_step(self) -> int | None:
    """The newest step that passes its digest check (None if there is none); each newer step
    is skipped with a warning naming it and what is wrong."""
    self._join_digest()
    steps = self.all_steps()
    if not any(os.path.isfile(os.path.join(self.step_dir(s), DIGEST_FILE)) for s in steps):
      return self._legacy_latest(steps)
    for step in reversed(steps):
      problem = self.problem(step)
      if problem is None:
        return step
      self._warn(step, problem)
    return None

  def _legacy_latest(self, steps: list[int]) -> int | None:
    """A workdir without any digest (written before digests existed): the newest step whose
    meta reads, unverified."""
    for step in reversed(steps):
      if not os.listdir(self.step_dir(step)):
        self._warn(step, "the step folder is empty")
        continue
      try:
        self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
        self._warn(step, f"its metadata is unreadable ({type(e).__name__}: {e})")
        continue
      logging.warning("checkpoint %s has no %s (written before checkpoint digests): restored "
                      "without verification", self.step_dir(step), DIGEST_FILE)
      return step
    return None

  def _warn(self, step: int, problem: str) -> None:
    msg = (f"checkpoint step {step} in {self.directory} is unusable: {problem}; falling back to "
           "the previous good checkpoint (nothing is deleted)")
    if step not in self._warned:  # once per step
      self._warned.add(step)
      logging.warning(msg)
      print(f"warning: {msg}", flush=True)

  def _set_aside_unusable(self) -> None:
    """Move every step newer than the latest good one to WORKDIR/checkpoints_unusable/ (process
    0; all processes then reread the step list)."""
    good = self.latest_step()
    newer = [s for s in self.all_steps() if good is None or s > good]
    if newer and jax.process_index() == 0:
      for step in newer:
        dest = os.path.join(self.workdir, UNUSABLE_DIR, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(self.step_dir(step), dest)
        logging.warning("moved unusable checkpoint step %d to %s", step, dest)
        print(f"warning: moved unusable checkpoint step {step} to {dest}", flush=True)
    if newer:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices("tokenrl_checkpoint_set_aside")
      self.manager.reload()
      for step in newer:
        self._problems.pop(step, None)

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> None:
    """Save `step`, replacing a checkpoint of the same step (a rerun of a finished or preempted
    run re-saves its last step with the final evaluation added to `meta`); its digest is
    written once the save has committed."""
    self._join_digest()
    if not self._saved:
      self._set_aside_unusable()
      self._saved = True
    if step in self.manager.all_steps():
      self.manager.wait_until_finished()
      self.manager.delete(step)
    self._problems.pop(step, None)
    saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)),
                              force=force)
    if not saved:
      return
    if self._async:
      self._digest_thread = threading.Thread(target=self._digest_after_commit, args=(step,),
                                             name=f"tokenrl-digest-{step}", daemon=True)
      self._digest_thread.start()
    else:
      self._digest_after_commit(step)

  def _digest_after_commit(self, step: int) -> None:
    # wait_until_finished only joins orbax's finalize thread: safe from this thread.
    self.manager.wait_until_finished()
    if jax.process_index() != 0:
      return
    try:
      write_digest(self.step_dir(step))
    except OSError as e:  # the step stays unverified: a restore falls back past it
      logging.error("could not write the digest of checkpoint step %d: %s", step, e)

  def _join_digest(self) -> None:
    if self._digest_thread is not None:
      self._digest_thread.join()
      self._digest_thread = None

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (default: the latest good one); `abstract_state` gives
    shapes/shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(self._nothing_to_restore())
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def restore_raw(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(state, meta) of `step` (default: the latest good one) as saved, without a template
    (arrays on the default device): for reading params out of any trainer's checkpoint.

    The target is the saved tree's shapes and dtypes on this process's first device, not the
    saved shardings: a checkpoint written on another topology (8 devices, a pod) is read on
    this one (orbax refuses a template-less restore across topologies).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(self._nothing_to_restore())
    saved = ocp.StandardCheckpointHandler().metadata(
        epath.Path(os.path.join(self.step_dir(step), "state"))).tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
        if hasattr(m, "shape") else m, saved)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def _nothing_to_restore(self) -> str:
    steps = self.all_steps()
    if not steps:
      return f"no checkpoint in {self.directory}"
    return (f"no usable checkpoint in {self.directory}: "
            + "; ".join(f"step {s}: {self.problem(s)}" for s in steps))

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    """Block until the last save has committed and its digest is written."""
    self.manager.wait_until_finished()
    self._join_digest()

  def close(self) -> None:
    self.wait()
    self.manager.close()
