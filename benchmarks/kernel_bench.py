"""Benchmark of the vocabulary kernels (two-pass softmax, fused log-prob + entropy) against XLA.

  python benchmarks/kernel_bench.py            # GPU/TPU: V in 32k/128k/152k/256k, M in 4k/16k
  python benchmarks/kernel_bench.py --quick    # GPU/TPU: V in 32k/152k, M = 4k
  python benchmarks/kernel_bench.py --cpu      # CPU (also the default without an accelerator)

Accelerator mode prints, per (M, V) in bf16: the measured device-to-device copy bandwidth (y = −x,
one read + one write), then for each kernel its time, its achieved bandwidth (bytes it must move /
time) as a fraction of the copy bandwidth, the XLA time, the speedup and the compiled temp memory.
Bytes moved: softmax 2 reads + 1 write of [M, V]; log-prob+entropy forward 1 read; forward+backward
1 read (forward) + 1 read + 1 write (backward). Goals on one H200: two-pass softmax >= 1.2x
jax.nn.softmax at V >= 128k; log-prob+entropy >= 80% of copy bandwidth, >= 1.5x the XLA
composition (log_softmax on the f32 upcast + gather + entropy), and no f32 [M, V] temp.

CPU mode prints the compiled temp memory of the blocked path vs the naive composition at M = 8k,
V = 152k (compile only, nothing runs; goal <= 1/8) and a small timing table.

Times are medians over a few repetitions after one warm-up (block_until_ready). Rows are printed as
they are measured. Any exception exits non-zero.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp

from tokenrl.kernels import _common
from tokenrl.kernels import logprobs as L
from tokenrl.kernels import softmax as S

_T0 = time.time()


def _print(*args):
  print(*args, flush=True)


def _compile(f, *args):
  return jax.jit(f).lower(*args).compile()


def _time(compiled, *args, reps: int) -> float:
  """Median seconds per call of a compiled function (after one warm-up call)."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _temp(compiled) -> int:
  stats = compiled.memory_analysis()
  return -1 if stats is None else int(stats.temp_size_in_bytes)


def _gib(b: float) -> str:
  return f"{b / 2**30:.2f}"


# ------------------------------------------------------------------------------------------------
# The functions compared (bf16 logits in every case).


def _xla_logprobs(x, t):
  return L.token_logprobs_entropy_reference(x, t)


def _ours_logprobs(x, t):
  return L.token_logprobs_entropy(x, t, impl="pallas")


def _loss(fn):
  def loss(x, t):
    logp, ent = fn(x, t)
    return jnp.sum(logp) + jnp.sum(ent)
  return jax.value_and_grad(loss)


def _xla_fusion_summary(x) -> str:
  """What XLA made of jax.nn.softmax on this device (spec §1.7 open item): fusions, Triton?"""
  txt = _compile(jax.nn.softmax, x).as_text()
  fusions = txt.count(" fusion(")
  triton = "triton" in txt.lower()
  return f"{fusions} fusions, triton fusion: {'yes' if triton else 'no'}"


def accelerator(quick: bool, *, ms=None, vs=None, sweep=(4096, 151936),
                proj=(4096, 4096, 151936)) -> None:
  """The accelerator tables. The keyword sizes exist so a CPU smoke run can shrink them."""
  dev = jax.devices()[0]
  _print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  vs = vs or ([32768, 151936] if quick else [32768, 131072, 151936, 262144])
  ms = ms or ([4096] if quick else [4096, 16384])
  reps = 3 if quick else 5
  key = jax.random.key(0)
  header = ("| M | V | kernel | ours ms | GB/s | % copy | XLA ms | speedup | temp GiB ours / XLA "
            "| no f32 [M,V] |")
  _print(header)
  _print("|---" * (header.count("|") - 1) + "|")
  for m in ms:
    for v in vs:
      kx, kt = jax.random.split(jax.random.fold_in(key, m * v))
      x = (3.0 * jax.random.normal(kx, (m, v), jnp.float32)).astype(jnp.bfloat16)
      t = jax.random.randint(kt, (m,), 0, v, jnp.int32)
      jax.block_until_ready((x, t))
      nbytes = m * v * x.dtype.itemsize
      f32_mv = m * v * 4

      copy = _compile(jnp.negative, x)
      t_copy = _time(copy, x, reps=reps)
      bw_copy = 2 * nbytes / t_copy
      _print(f"| {m} | {v} | copy (−x) | {t_copy * 1e3:.3f} | {bw_copy / 1e9:.0f} | 100 | | | | |")
      del copy

      cases = [
          ("softmax", lambda x, t: S.two_pass_softmax(x, impl="pallas"),
           lambda x, t: jax.nn.softmax(x), 3 * nbytes),
          ("logp+H fwd", _ours_logprobs, _xla_logprobs, nbytes),
          ("logp+H fwd+bwd", _loss(_ours_logprobs), _loss(_xla_logprobs), 3 * nbytes),
      ]
      for name, ours, xla, moved in cases:
        c_ours = _compile(ours, x, t)
        t_ours = _time(c_ours, x, t, reps=reps)
        temp_ours = _temp(c_ours)
        del c_ours
        c_xla = _compile(xla, x, t)
        t_xla = _time(c_xla, x, t, reps=reps)
        temp_xla = _temp(c_xla)
        del c_xla
        bw = moved / t_ours
        # Softmax writes an [M, V] output by definition; the check is for log-prob + entropy.
        no_buf = "-" if name == "softmax" else ("yes" if 0 <= temp_ours < f32_mv else "NO")
        _print(f"| {m} | {v} | {name} | {t_ours * 1e3:.3f} | {bw / 1e9:.0f} | "
               f"{100 * bw / bw_copy:.0f} | {t_xla * 1e3:.3f} | {t_xla / t_ours:.2f}x | "
               f"{_gib(temp_ours)} / {_gib(temp_xla)} | {no_buf} |")
      if v == vs[-1] and m == ms[0]:
        _print(f"XLA jax.nn.softmax at M={m}, V={v}: {_xla_fusion_summary(x)}")
      del x, t
  _print(f"elapsed {time.time() - _T0:.0f} s")
  _block_sweep(key, reps, *sweep)
  _print(f"elapsed {time.time() - _T0:.0f} s")
  _fused_projection(key, reps, *proj)
  _print(f"total {time.time() - _T0:.0f} s")


def _block_sweep(key, reps: int, m: int, v: int) -> None:
  """Time vs block_v (bf16), to pick the defaults on this device."""
  kx, kt = jax.random.split(jax.random.fold_in(key, 1))
  x = (3.0 * jax.random.normal(kx, (m, v), jnp.float32)).astype(jnp.bfloat16)
  t = jax.random.randint(kt, (m,), 0, v, jnp.int32)
  _print(f"\nblock_v sweep, M={m}, V={v}, bf16 (ms; default block_v marked *):")
  _print("| block_v | softmax | logp+H fwd | logp+H fwd+bwd |")
  _print("|---|---|---|---|")
  default = _common.resolve_config(shape=(m, v), dtype=x.dtype, impl="pallas", block_v=None,
                               block_m=None, interpret=None, pallas_backend=None).block_v
  for bv in (1024, 2048, 4096, 8192, 16384):
    fns = [lambda x, t: S.two_pass_softmax(x, impl="pallas", block_v=bv),
           lambda x, t: L.token_logprobs_entropy(x, t, impl="pallas", block_v=bv),
           _loss(lambda x, t: L.token_logprobs_entropy(x, t, impl="pallas", block_v=bv))]
    row = [f"{_time(_compile(f, x, t), x, t, reps=reps) * 1e3:.3f}" for f in fns]
    _print(f"| {bv}{'*' if bv == default else ''} | " + " | ".join(row) + " |")


def _fused_projection(key, reps: int, m: int, d: int, v: int) -> None:
  """logp+H forward+backward from hidden [M, D] and w [D, V]: logits materialised (XLA
  composition, or our kernel) vs token_logprobs_entropy_from_hidden (logits never stored)."""
  kh, kw, kt = jax.random.split(jax.random.fold_in(key, 2), 3)
  h = jax.random.normal(kh, (m, d), jnp.bfloat16)
  w = (jax.random.normal(kw, (d, v), jnp.float32) * d ** -0.5).astype(jnp.bfloat16)
  t = jax.random.randint(kt, (m,), 0, v, jnp.int32)
  _print(f"\nFused projection, fwd+bwd wrt (hidden, w), M={m}, D={d}, V={v}, bf16 "
         f"(GEMM = {2 * m * d * v / 1e12:.1f} TFLOP per pass):")
  _print("| variant | ms | temp GiB |")
  _print("|---|---|---|")
  variants = [
      ("XLA: logits, log_softmax f32 + gather + entropy",
       lambda h, w, t: L.token_logprobs_entropy_reference(h @ w, t)),
      ("logits, then token_logprobs_entropy (pallas)",
       lambda h, w, t: L.token_logprobs_entropy(h @ w, t, impl="pallas")),
      ("token_logprobs_entropy_from_hidden",
       lambda h, w, t: L.token_logprobs_entropy_from_hidden(h, w, t)),
  ]
  for name, fn in variants:
    loss = lambda h, w, t, fn=fn: sum(map(jnp.sum, fn(h, w, t)))  # noqa: E731
    c = _compile(jax.value_and_grad(loss, argnums=(0, 1)), h, w, t)
    _print(f"| {name} | {_time(c, h, w, t, reps=reps) * 1e3:.2f} | {_gib(_temp(c))} |")
    del c


def cpu(quick: bool) -> None:
  _print(f"device: {jax.devices()[0].device_kind} (cpu), jax {jax.__version__}")
  m, v = 8192, 151936
  _print(f"\nCompiled temp memory, M={m}, V={v} (compile only). Naive = log_softmax of the f32 "
         "upcast + gather + entropy; blocked = token_logprobs_entropy(impl='jnp').")
  _print("| logits | pass | blocked MiB | naive MiB | ratio | goal <= 1/8 |")
  _print("|---|---|---|---|---|---|")
  t_spec = jax.ShapeDtypeStruct((m,), jnp.int32)
  ours = lambda x, t: L.token_logprobs_entropy(x, t, impl="jnp")  # noqa: E731
  for dtype in (jnp.bfloat16, jnp.float32):
    x_spec = jax.ShapeDtypeStruct((m, v), dtype)
    for name, f_ours, f_ref in [
        ("forward", ours, _xla_logprobs),
        ("forward+backward", _loss(ours), _loss(_xla_logprobs)),
    ]:
      a = _temp(_compile(f_ours, x_spec, t_spec))
      b = _temp(_compile(f_ref, x_spec, t_spec))
      _print(f"| {jnp.dtype(dtype).name} | {name} | {a / 2**20:.1f} | {b / 2**20:.0f} | "
             f"{a / b:.4f} | {'yes' if a * 8 <= b else 'no'} |")

  m, v = (64, 32768) if quick else (256, 32768)
  reps = 3 if quick else 5
  _print(f"\nCPU timing, M={m}, V={v}, bf16 logits (median of {reps}):")
  _print("| kernel | blocked jnp ms | XLA ms | XLA / blocked |")
  _print("|---|---|---|---|")
  kx, kt = jax.random.split(jax.random.key(0))
  x = (3.0 * jax.random.normal(kx, (m, v), jnp.float32)).astype(jnp.bfloat16)
  t = jax.random.randint(kt, (m,), 0, v, jnp.int32)
  cases = [
      ("softmax", lambda x, t: S.two_pass_softmax(x, impl="jnp"), lambda x, t: jax.nn.softmax(x)),
      ("logp+H fwd", ours, _xla_logprobs),
      ("logp+H fwd+bwd", _loss(ours), _loss(_xla_logprobs)),
  ]
  for name, f_ours, f_ref in cases:
    a = _time(_compile(f_ours, x, t), x, t, reps=reps)
    b = _time(_compile(f_ref, x, t), x, t, reps=reps)
    _print(f"| {name} | {a * 1e3:.2f} | {b * 1e3:.2f} | {b / a:.2f} |")
  _print(f"total {time.time() - _T0:.0f} s")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
  parser.add_argument("--cpu", action="store_true", help="CPU tables even if an accelerator exists")
  args = parser.parse_args(argv)
  try:
    if args.cpu or jax.default_backend() not in ("gpu", "tpu"):
      cpu(args.quick)
    else:
      accelerator(args.quick)
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.stdout.flush()
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
