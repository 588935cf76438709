"""What the embedded tasks share: tier strings, the train/test partition, seeded sampling.

Train/test disjointness does not depend on seeds: a problem belongs to 'test' iff

  blake2b(prompt) mod 10^6 < test_fraction * 10^6,

a fixed hash of its prompt text. So any train set and any test set (any seeds, any n) never
share a prompt, as long as both use the same `test_fraction`. Within a split, examples are drawn
i.i.d. from the task's generator by a numpy PCG64 stream seeded with (seed, split, task), and
rejected if they fall in the other split.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

SPLITS = ("train", "test")
DEFAULT_TEST_FRACTION = 0.1
_HASH_BUCKETS = 1_000_000


def parse_tiers(spec: str, *, allowed: dict[str, tuple[int, int]],
                arg_name: str = "tiers") -> list[tuple[str, int, int]]:
  """'add:1-2,sub:1-2,mul:1' -> [('add', 1, 2), ('sub', 1, 2), ('mul', 1, 1)].

  Args:
    spec: comma-separated `key:lo-hi` or `key:v` (= v-v) entries.
    allowed: key -> (min, max) admissible values.

  Raises:
    ValueError: empty spec, unknown key, malformed or out-of-range numbers (entry named).
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"{arg_name}: expected e.g. 'key:1-2,other:3', got {spec!r}")
  out = []
  for entry in spec.split(","):
    entry = entry.strip()
    key, sep, rng = entry.partition(":")
    if not sep or key not in allowed:
      raise ValueError(f"{arg_name}: entry {entry!r} must be '<key>:<lo>-<hi>' with key in "
                       f"{sorted(allowed)}")
    lo_s, _, hi_s = rng.partition("-")
    try:
      lo, hi = int(lo_s), int(hi_s or lo_s)
    except ValueError:
      raise ValueError(f"{arg_name}: entry {entry!r}: bounds must be integers") from None
    amin, amax = allowed[key]
    if not amin <= lo <= hi <= amax:
      raise ValueError(f"{arg_name}: entry {entry!r}: need {amin} <= lo <= hi <= {amax}")
    out.append((key, lo, hi))
  return out


def in_test_split(prompt: str, test_fraction: float) -> bool:
  """Whether `prompt` belongs to the held-out split (a fixed hash, independent of seeds)."""
  h = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big")
  return (h % _HASH_BUCKETS) < round(test_fraction * _HASH_BUCKETS)


def check_split_args(split: str, n: int, test_fraction: float) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"n must be an int >= 0, got {n!r}")
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def sample_split(draw: Callable[[np.random.Generator], dict[str, Any]], *, task: str, split: str,
                 n: int, seed: int, test_fraction: float, unique: bool,
                 max_tries_per_example: int = 1000) -> list[dict[str, Any]]:
  """n examples of `split` from `draw(rng)`, deterministic in (task, split, n, seed).

  With `unique`, prompts do not repeat; raises ValueError if the split's problem space looks
  too small (no new prompt after `max_tries_per_example` draws).
  """
  check_split_args(split, n, test_fraction)
  task_code = int.from_bytes(hashlib.blake2b(task.encode(), digest_size=4).digest(), "big")
  rng = np.random.default_rng([int(seed), SPLITS.index(split), task_code])
  want_test = split == "test"
  out: list[dict[str, Any]] = []
  seen: set[str] = set()
  misses = 0
  while len(out) < n:
    ex = draw(rng)
    if in_test_split(ex["prompt"], test_fraction) != want_test or (
        unique and ex["prompt"] in seen):
      misses += 1
      if misses > max_tries_per_example:
        raise ValueError(
            f"{task}: could not draw example {len(out)} of {n} for split {split!r} after "
            f"{misses} tries: the problem space of this tier is too small "
            f"({'use unique=False, ' if unique else ''}widen the tiers or lower n)")
      continue
    misses = 0
    seen.add(ex["prompt"])
    out.append(ex)
  return out


def uniform_int_with_digits(rng: np.random.Generator, digits: int) -> int:
  """Uniform over integers with exactly `digits` decimal digits (0 counts as 1 digit)."""
  lo = 0 if digits == 1 else 10 ** (digits - 1)
  return int(rng.integers(lo, 10 ** digits))
