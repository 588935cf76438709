"""CoIn's commitment: a SHA-256 Merkle tree over fingerprint leaves, with the count bound to it.

Spec: shared/specs/analysis-and-auditing.md §4 (CoIn, arXiv 2505.13778). Host-side only: hashing
runs on bytes outside jit.

- leaf i = H(fp_i serialized as float32 little-endian) [recon: D2]; fp_i is one row [2E] of
  `coin.fingerprints`.
- The leaves are padded to a power of two by repeating the last leaf; parent = H(left ‖ right);
  the root is levels[-1][0]. With one leaf the root is that leaf.
- Count binding [recon: D5]: the tree alone does not certify the billed count m (a padded tree
  of 5 leaves answers for indices 5..7 with copies of leaf 4), so the provider commits
  bound_root = H(root ‖ uint64 m, little-endian), and the verifier refuses any index >= m and
  any proof whose length is not ceil(log2 m). Padding leaves are therefore never sampled.

H is SHA-256 throughout; digests are 32 raw bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import numpy as np

DIGEST_BYTES = 32


def sha256(data: bytes) -> bytes:
  return hashlib.sha256(data).digest()


def fingerprint_bytes(fp: Any) -> bytes:
  """The serialization that is hashed: fp [2E] (or any shape) as float32 little-endian, C order.

  Float32 only: rounding a float64 here would hide a mismatch between the provider's and the
  auditor's encoders, and recomputation has to be bit-exact.
  """
  arr = np.asarray(fp)
  if arr.dtype != np.float32:
    raise ValueError(f"fingerprint must be float32 (its bytes are hashed), got dtype {arr.dtype} "
                     f"of shape {arr.shape}; cast with .astype(np.float32) where it is computed")
  return np.ascontiguousarray(arr, dtype="<f4").tobytes()


def leaf_hash(fp: Any) -> bytes:
  """H(fp as float32 LE): the leaf of one fingerprint."""
  return sha256(fingerprint_bytes(fp))


def _check_digest(name: str, d: Any) -> None:
  if not isinstance(d, (bytes, bytearray)) or len(d) != DIGEST_BYTES:
    got = f"{type(d).__name__} of length {len(d)}" if hasattr(d, "__len__") else type(d).__name__
    raise ValueError(f"{name} must be a {DIGEST_BYTES}-byte SHA-256 digest, got {got}; "
                     "hash raw data with merkle.sha256 or merkle.leaf_hash first")


def merkle_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
  """Every level of the tree, leaves first: levels[0] = the leaves padded to a power of two (the
  last leaf repeated), levels[k+1][j] = H(levels[k][2j] ‖ levels[k][2j+1]), levels[-1] = [root].
  """
  if len(leaves) == 0:
    raise ValueError("leaves is empty: a commitment needs at least one hidden token")
  for i, leaf in enumerate(leaves):
    _check_digest(f"leaves[{i}]", leaf)
  width = 1 << (len(leaves) - 1).bit_length()
  level = [bytes(x) for x in leaves] + [bytes(leaves[-1])] * (width - len(leaves))
  levels = [level]
  while len(level) > 1:
    level = [sha256(level[j] + level[j + 1]) for j in range(0, len(level), 2)]
    levels.append(level)
  return levels


def merkle_proof(levels: list[list[bytes]], i: int) -> list[bytes]:
  """The sibling path of leaf i, bottom-up. Which side each sibling sits on is read from the
  bits of i (bit k = 1: the sibling at level k is on the left), so a proof is tied to its index.
  """
  width = len(levels[0])
  if not 0 <= i < width:
    raise ValueError(f"i must be in [0, {width}) (the padded leaf count), got {i}")
  path = []
  for level in levels[:-1]:
    path.append(level[i ^ 1])
    i >>= 1
  return path


def merkle_verify(leaf: bytes, i: int, proof: Sequence[bytes], root: bytes) -> bool:
  """Does leaf sit at index i under root? The raw tree check: it knows nothing of the count
  (use `opening_error` for an audit, which also binds the count)."""
  if not isinstance(i, (int, np.integer)) or i < 0 or i >= 1 << len(proof):
    return False
  node = bytes(leaf)
  for sibling in proof:
    node = sha256(bytes(sibling) + node) if i & 1 else sha256(node + bytes(sibling))
    i >>= 1
  return node == bytes(root)


def tree_depth(count: int) -> int:
  """ceil(log2 count): the proof length of a tree over `count` leaves (0 for one leaf)."""
  return (count - 1).bit_length()


def bind_count(root: bytes, count: int) -> bytes:
  """H(root ‖ uint64 count, little-endian)."""
  if not 0 < count < 1 << 64:
    raise ValueError(f"count must be in [1, 2**64), got {count}")
  return sha256(bytes(root) + int(count).to_bytes(8, "little"))


@dataclasses.dataclass(frozen=True)
class Commitment:
  """What the provider publishes with its bill: root, billed count m, bound_root = H(root ‖ m)."""
  root: bytes
  count: int
  bound_root: bytes


@dataclasses.dataclass(frozen=True)
class Opening:
  """The provider's answer for one sampled leaf: its index, fingerprint [2E] f32, sibling path."""
  index: int
  fingerprint: np.ndarray
  proof: tuple[bytes, ...]


class CommittedTrace:
  """The provider side: fingerprints fps [m,2E] float32, their tree, and openings on request."""

  def __init__(self, fps: Any, *, count: int | None = None):
    fps = np.asarray(fps)
    if fps.ndim != 2 or fps.shape[0] == 0:
      raise ValueError(f"fps must be [m, 2E] with m >= 1 (one fingerprint per hidden token), "
                       f"got shape {fps.shape}")
    m = fps.shape[0]
    if count is not None and count != m:
      raise ValueError(f"count ({count}) must equal the number of fingerprints fps.shape[0] "
                       f"({m}): a provider commits to exactly the tokens it bills")
    self.fps = fps
    self.levels = merkle_levels([leaf_hash(fp) for fp in fps])
    root = self.levels[-1][0]
    self.commitment = Commitment(root=root, count=m, bound_root=bind_count(root, m))

  def open(self, indices: Sequence[int]) -> list[Opening]:
    """Openings of the requested leaves (indices in [0, m))."""
    m = self.commitment.count
    out = []
    for i in indices:
      i = int(i)
      if not 0 <= i < m:
        raise ValueError(f"indices must be in [0, {m}) (the committed count), got {i}")
      out.append(Opening(i, self.fps[i], tuple(merkle_proof(self.levels, i))))
    return out


def commit(fps: Any, *, count: int) -> Commitment:
  """Commitment(root, count, bound_root) of fingerprints fps [m,2E] float32; count must be m."""
  return CommittedTrace(fps, count=count).commitment


def opening_error(commitment: Commitment, opening: Opening) -> str | None:
  """None when the opening verifies against the commitment, else why it does not.

  Checks, in order: the count is bound to the root, the index is a real leaf (< count, so no
  padding leaf is ever accepted), the proof has the length the count implies, and the path
  leads from H(fingerprint) at that index to the root.
  """
  c = commitment
  if not isinstance(c.count, (int, np.integer)) or c.count < 1:
    return f"count {c.count!r} is not a positive integer"
  if bind_count(c.root, c.count) != bytes(c.bound_root):
    return f"bound_root is not H(root || {c.count}): the count is not the committed one"
  i = opening.index
  if not isinstance(i, (int, np.integer)) or not 0 <= i < c.count:
    return f"index {i!r} is outside [0, {c.count})"
  if len(opening.proof) != tree_depth(c.count):
    return (f"proof of leaf {i} has {len(opening.proof)} siblings, a tree of {c.count} leaves "
            f"has depth {tree_depth(c.count)}")
  try:
    leaf = leaf_hash(opening.fingerprint)
  except ValueError as e:
    return f"leaf {i}: {e}"
  if not merkle_verify(leaf, int(i), opening.proof, c.root):
    return f"proof of leaf {i} does not lead to the root"
  return None


def verify_opening(commitment: Commitment, opening: Opening) -> bool:
  return opening_error(commitment, opening) is None
