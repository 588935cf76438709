"""The compiled (non-interpret) kernels lower for GPU (Pallas Triton) and TPU (Pallas Mosaic).

jax.export lowers for a platform without its device, so this CPU test runs the Pallas Triton and
Mosaic lowering rules over every kernel: unsupported primitives, non-power-of-2 Triton tensors and
Mosaic block shapes that break the (8, 128) tiling fail here. It does not run the kernels (the
Triton-to-PTX and Mosaic compilers run on the device), so TestOnAccelerator in the other files
remains the end-to-end check.
"""
import jax
from jax import export
import jax.numpy as jnp
import pytest

from tokenrl.kernels import _common as C
from tokenrl.kernels import logprobs as L
from tokenrl.kernels import paged as PA
from tokenrl.kernels import softmax as S

_TRITON_CALL = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


def _functions(cfg):
  return {
      "softmax": lambda x, t: S._softmax_2d(x, cfg, False, x.dtype),
      "log_softmax_grad": lambda x, t: jax.grad(
          lambda x: jnp.sum(S._softmax_2d(x, cfg, True, jnp.float32)))(x),
      "logprobs_entropy": lambda x, t: L._logprobs_entropy(x, t, 0.7, cfg),
      "logprobs_entropy_grad": lambda x, t: jax.grad(
          lambda x: sum(map(jnp.sum, L._logprobs_entropy(x, t, 0.7, cfg))))(x),
  }


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("platform, cfg", [
    ("cuda", C.KernelConfig("pallas", "triton", 1024, 1, False, 4)),
    ("tpu", C.KernelConfig("pallas", "mosaic", 512, 32, False)),
])
def test_kernels_lower(platform, cfg, dtype):
  m, v = 40, 4097  # neither divisible by its block
  x = jax.ShapeDtypeStruct((m, v), dtype)
  t = jax.ShapeDtypeStruct((m,), jnp.int32)
  for name, f in _functions(cfg).items():
    exp = export.export(jax.jit(f), platforms=[platform], disabled_checks=[_TRITON_CALL])(x, t)
    text = exp.mlir_module()
    assert ("triton" in text) if platform == "cuda" else ("tpu_custom_call" in text), name


def test_non_power_of_two_triton_block_fails_to_lower():
  cfg = C.KernelConfig("pallas", "triton", 1000, 1, False, 4)
  x = jax.ShapeDtypeStruct((8, 4097), jnp.float32)
  with pytest.raises(ValueError, match="power of 2"):
    export.export(jax.jit(lambda x: C.row_stats(x, cfg)), platforms=["cuda"],
                  disabled_checks=[_TRITON_CALL])(x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("platform, backend, block_m", [("cuda", "triton", 64),
                                                        ("tpu", "mosaic", 128)])
def test_paged_attention_lowers(platform, backend, block_m, dtype):
  # Chunked prefill (T=5) with G=7 query heads per KV head: T·G = 35 rows, padded to the block.
  q = jax.ShapeDtypeStruct((3, 5, 14, 128), dtype)
  pool = jax.ShapeDtypeStruct((2, 40, 16, 128), dtype)  # [K, P_pages, S_page, H]
  table = jax.ShapeDtypeStruct((3, 7), jnp.int32)
  lens = jax.ShapeDtypeStruct((3,), jnp.int32)
  f = lambda q, k, v, t, kl, ql: PA._paged_pallas(q, k, v, t, kl, ql, backend=backend,
                                                  block_m=block_m, scale=0.1, softcap=30.0,
                                                  interpret=False)
  exp = export.export(jax.jit(f), platforms=[platform], disabled_checks=[_TRITON_CALL])(
      q, pool, pool, table, lens, lens)
  text = exp.mlir_module()
  assert ("triton" in text) if platform == "cuda" else ("tpu_custom_call" in text)
