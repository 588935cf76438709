"""Hostile checkpoints: a flipped byte, truncated data, missing manifest / metadata, an empty step
folder. A restore never returns altered bytes: it falls back to the previous good step with a
warning naming what is wrong, and never deletes a checkpoint."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl.train.checkpoint import DIGEST_FILE, UNUSABLE_DIR, Checkpointer


def _state(step):
  # Distinct values per step: a restore of the wrong step, or of altered bytes, is visible.
  return {"w": jnp.arange(4096, dtype=jnp.float32) + 1000.0 * step, "n": jnp.asarray(step)}


def _saved(tmp_path, steps=(1, 2), keep=3, async_save=False):
  ckpt = Checkpointer(str(tmp_path), keep=keep, async_save=async_save)
  for s in steps:
    ckpt.save(s, _state(s), {"phase": 0, "step": s})
  ckpt.close()
  return str(tmp_path)


def _files(step_dir):
  out = []
  for root, _, files in os.walk(step_dir):
    out += [os.path.join(root, f) for f in files if f != DIGEST_FILE]
  return sorted(out)


def _data_files(step_dir):
  """The array data files of orbax's OCDBT store (not the manifests)."""
  return [f for f in _files(os.path.join(step_dir, "state")) if f"{os.sep}d{os.sep}" in f]


def _restore(workdir):
  ckpt = Checkpointer(workdir, keep=3, async_save=False)
  try:
    step = ckpt.latest_step()
    return step, (ckpt.restore(_state(0), step) if step is not None else None), ckpt
  finally:
    ckpt.close()


def test_a_save_records_a_digest_of_every_file(tmp_path):
  workdir = _saved(tmp_path, steps=(3,))
  step_dir = os.path.join(workdir, "checkpoints", "3")
  assert os.path.isfile(os.path.join(step_dir, DIGEST_FILE))
  step, (state, meta), _ = _restore(workdir)
  assert step == 3 and meta == {"phase": 0, "step": 3}
  np.testing.assert_array_equal(state["w"], _state(3)["w"])


def test_async_save_writes_the_digest_once_committed(tmp_path):
  workdir = _saved(tmp_path, steps=(1, 2), async_save=True)
  for s in (1, 2):
    assert os.path.isfile(os.path.join(workdir, "checkpoints", str(s), DIGEST_FILE))
  assert _restore(workdir)[0] == 2


@pytest.mark.parametrize("which", range(8))
def test_one_flipped_byte_in_any_data_file_falls_back(tmp_path, capsys, which):
  workdir = _saved(tmp_path)
  files = _data_files(os.path.join(workdir, "checkpoints", "2"))
  assert files
  path = files[which % len(files)]
  data = bytearray(open(path, "rb").read())
  pos = (which * 7919) % len(data)
  data[pos] ^= 0x01  # one bit of one byte
  open(path, "wb").write(bytes(data))
  step, (state, meta), _ = _restore(workdir)
  assert step == 1 and meta["step"] == 1  # the previous good state, exactly
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  out = capsys.readouterr().out
  assert "step 2" in out and "SHA-256 mismatch" in out and os.path.relpath(
      path, os.path.join(workdir, "checkpoints", "2")) in out
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # nothing deleted


def _truncate(step_dir):
  path = _data_files(step_dir)[0]
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return "truncated"


def _drop_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
  return "manifest.ocdbt is missing"


def _drop_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))
  return "_METADATA is missing"


def _drop_meta_item(step_dir):
  os.remove(os.path.join(step_dir, "meta", "metadata"))
  return "meta/metadata is missing"


def _empty_folder(step_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)
  return "empty"


def _drop_digest(step_dir):  # a save killed between its commit and its digest
  os.remove(os.path.join(step_dir, DIGEST_FILE))
  return f"no {DIGEST_FILE}"


@pytest.mark.parametrize("damage", [_truncate, _drop_manifest, _drop_metadata, _drop_meta_item,
                                    _empty_folder, _drop_digest])
def test_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path, capsys, damage):
  workdir = _saved(tmp_path)
  what = damage(os.path.join(workdir, "checkpoints", "2"))
  step, (state, _), _ = _restore(workdir)
  assert step == 1
  np.testing.assert_array_equal(state["w"], _state(1)["w"])
  out = capsys.readouterr().out
  assert "checkpoint step 2" in out and what in out and "falling back" in out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]  # none deleted


def test_no_usable_checkpoint_names_every_step(tmp_path):
  workdir = _saved(tmp_path)
  for s in ("1", "2"):
    _drop_manifest(os.path.join(workdir, "checkpoints", s))
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match=r"no usable checkpoint.*step 1: file "
                                                r"state/manifest.ocdbt is missing; step 2"):
      ckpt.restore(_state(0))
  finally:
    ckpt.close()


def test_a_resumed_run_moves_newer_unusable_steps_aside_and_keeps_older_ones(tmp_path):
  """Orbax only saves steps above the newest folder it sees: the resumed run's next save must
  not be skipped because of a corrupted newer step, and nothing may be deleted."""
  workdir = _saved(tmp_path, steps=(1, 2, 3))
  _drop_manifest(os.path.join(workdir, "checkpoints", "3"))
  ckpt = Checkpointer(workdir, keep=3, async_save=False)
  try:
    assert ckpt.latest_step() == 2
    ckpt.save(3, _state(30), {"phase": 0, "step": 3})  # the resumed run reaches step 3 again
  finally:
    ckpt.close()
  step, (state, meta), _ = _restore(workdir)
  assert step == 3 and meta["step"] == 3
  np.testing.assert_array_equal(state["w"], _state(30)["w"])
  aside = os.listdir(os.path.join(workdir, UNUSABLE_DIR))
  assert len(aside) == 1 and aside[0].startswith("3-")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2", "3"]


def test_keep_checkpoints_zero_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"train.keep_checkpoints.*>= 1"):
    Checkpointer(str(tmp_path), keep=0)


def test_a_workdir_without_digests_still_restores_unverified(tmp_path, capsys):
  workdir = _saved(tmp_path)
  for s in ("1", "2"):
    os.remove(os.path.join(workdir, "checkpoints", s, DIGEST_FILE))
  step, (state, _), _ = _restore(workdir)
  assert step == 2
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
