"""Test-wide setup: CPU only, 8 fake devices for sharding tests, f32 matmuls at full precision.

The environment must be set before jax is imported anywhere, hence at conftest import time.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in flags:
  # Tests are compile-bound: cheaper LLVM passes roughly halve CPU compile time. Numerics are
  # unchanged (the same HLO); only the generated machine code is less optimized.
  flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = flags.strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
