"""Test-wide setup: CPU only, 8 fake devices for sharding tests, f32 matmuls at full precision.

The environment must be set before jax is imported anywhere, hence at conftest import time.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402

# Every XLA:CPU executable keeps a few memory mappings for its JIT-compiled code, and jit caches
# keep every executable alive, so one pytest process that compiles the whole suite's programs
# reached Linux's vm.max_map_count (65530): the next compile's mmap failed inside LLVM and the
# process died with SIGSEGV (seen at ~90% of the suite: 65237 mappings in the core). Dropping
# the caches between test modules once the count is high frees them (tests/objectives alone: 16.7k
# mappings kept vs 0.7k after clearing); below the threshold nothing is recompiled.
_MAX_MAPPINGS = 20_000


def _num_mappings() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux: no such limit to guard
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code_when_mappings_pile_up():
  yield
  if _num_mappings() > _MAX_MAPPINGS:
    jax.clear_caches()
    gc.collect()
