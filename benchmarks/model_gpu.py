"""Accelerator benchmark of the model: ceilings, train-step MFU, decode vs the memory floor.

  python benchmarks/model_gpu.py --budget-s 240 --json out.json   # one GPU (bf16, qwen2.5-0.5b)
  python benchmarks/model_gpu.py --cpu-smoke                        # tiny sizes, < 60 s on a CPU

Sections (each guarded: a failure prints its traceback, the others still run, exit code 1):

ceilings  R_mm = 2·M·K·N / t of a bf16 [M,K]@[K,N] product (f32 accumulation, bf16 out),
          M=K=N=8192, plus the GEMM shapes of the train step (M = N_seq·S tokens);
          B_copy = 2·bytes / t of y = −x over a 2 GiB bf16 array (one read + one write).
          Medians after one warm-up.
train     make_sft_step / make_pg_step (bf16 params, f32 logits, adamw) on N_seq×S = 16×1024
          tokens, remat off (micro-batches of 8 sequences: the whole batch needs ~128 GiB) and
          on (whole batch). Model FLOPs per step (PaLM appendix B, non-causal attention):
            F = 6·M·W + 6·M_u·V·D + 12·L·Q·H·S·M
          M = N_seq·S tokens through the layers, W = L·(D·Q·H + 2·D·K·H + Q·H·D + 3·D·F)
          matmul weights of the layers (biases and norms left out), M_u = tokens through the
          unembedding (M for SFT, N_seq·T for the PG step), V vocab, D model dim, L layers,
          Q query heads, K KV heads, H head dim, F MLP dim. MFU = F / t / R with R the measured
          R_mm ("mfu_measured") or the 989 TFLOP/s bf16 dense datasheet peak of an H200 SXM
          ("mfu_peak"). Remat recomputes the forward (hardware FLOPs ≈ 4/3 F), still counted as F.
decode    per-step time of the sampler's decode step (transformer.forward on [N,1] with the KV
          cache + choose_tokens, in a jitted fori_loop of `steps` steps) on a cache holding
          `ctx` random keys/values. Memory floor per step:
            t_floor = (bytes(params) + 2·L·N·C̄·K·H·b) / B_copy
          C̄ = ctx + (steps+1)/2 slots filled on average, b = 2 bytes (bf16 cache). Reported:
          tokens/s = N / t_step and floor_fraction = t_floor / t_step (1.0 = at the floor).
sample    tokenrl.rollout.sample end to end (prefill + T new tokens, temperature 1, no stop
          token): tokens/s = N·T / wall. Configs whose predicted memory exceeds the device are
          skipped with the estimate (the prefill materialises f32 logits [N,P,V]).

Compile times are reported apart from run times. Results print as they are measured; a summary
table prints last; --json writes every number (rewritten after each section).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl import models
from tokenrl.models import transformer
from tokenrl.rollout import sample
from tokenrl.rollout.sampling import choose_tokens

PEAK_BF16 = 989e12  # FLOP/s, H200 SXM dense bf16 (datasheet; same as H100 SXM)
KINDS_COPY_BW = 4.3e12  # B/s, device-to-device copy read on an H200 here (KINDS.md), a fallback
_T0 = time.time()


def _print(*args: Any) -> None:
  print(*args, flush=True)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Everything that differs between the GPU run and the CPU smoke run."""

  model: models.ModelConfig
  matmul: int  # square bf16 GEMM edge
  copy_elems: int  # bf16 elements of the copy array
  train_batch: int  # N_seq
  train_len: int  # S positions through the model (tokens arrays hold S+1)
  pg_prompt: int  # P of the PG step (T = S + 1 − P)
  train_cfgs: tuple[tuple[str, bool, int], ...]  # (step kind, remat, micro_batch_size)
  decode_batches: tuple[int, ...]
  decode_ctx: tuple[int, ...]
  decode_steps: int
  sample_new: int  # T of the end-to-end sampler runs
  sample_cfgs: tuple[tuple[int, int], ...]  # (N, P), most wanted first
  spec_cfgs: tuple[tuple[int, int], ...]  # (N, P) of the speculative-decoding comparison
  reps: int
  inner: int  # back-to-back calls per timed repetition of the small ceilings kernels
  est: dict  # seconds a section is expected to take, to skip it when the budget is short


GPU = Sizes(
    model=models.PRESETS["qwen2.5-0.5b"], matmul=8192, copy_elems=1 << 30, train_batch=16,
    train_len=1024, pg_prompt=256,
    train_cfgs=(("sft", False, 8), ("pg", False, 8), ("sft", True, 0)),
    decode_batches=(1, 64, 256), decode_ctx=(1024, 4096),
    decode_steps=32, sample_new=128,
    sample_cfgs=((1, 1024), (64, 1024), (1, 4096), (256, 1024), (64, 4096), (256, 4096)),
    spec_cfgs=((1, 1024), (8, 1024)),
    reps=3, inner=10, est={"ceilings": 20, "train": 45, "decode": 12, "sample": 25, "spec": 60})

SMOKE = Sizes(
    model=models.tiny("qwen2", vocab_size=512, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=128, max_seq_len=512),
    matmul=256, copy_elems=1 << 20, train_batch=2, train_len=64, pg_prompt=16,
    train_cfgs=(("sft", True, 0), ("pg", False, 1)), decode_batches=(1, 4), decode_ctx=(32,),
    decode_steps=4, sample_new=8, sample_cfgs=((4, 32),), spec_cfgs=((1, 32),), reps=2, inner=2,
    est={"ceilings": 1, "train": 1, "decode": 1, "sample": 1, "spec": 1})


class Recorder:
  """Holds the numbers, the errors and the skipped sections; rewrites the JSON after each."""

  def __init__(self, path: str | None, budget_s: float):
    self.path = path
    self.deadline = time.time() + budget_s
    self.data: dict[str, Any] = {"meta": {}, "ceilings": {}, "train": {}, "decode": {},
                                 "sample": {}, "speculative": {}, "errors": {},
                                 "skipped": {}}
    self.summary: list[str] = []

  def left(self) -> float:
    return self.deadline - time.time()

  def dump(self) -> None:
    if not self.path:
      return
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1, default=float)
    os.replace(tmp, self.path)

  def run(self, name: str, est_s: float, fn: Callable[[], None]) -> None:
    """Run one guarded section unless fewer than est_s seconds of budget are left."""
    if self.left() < est_s:
      _print(f"\n--- {name}: SKIPPED (budget: {self.left():.0f} s left, needs ~{est_s:.0f} s)")
      self.data["skipped"][name] = f"budget ({self.left():.0f} s left)"
      self.summary.append(f"| {name} | skipped (budget) |")
      self.dump()
      return
    _print(f"\n--- {name} (t = {time.time() - _T0:.0f} s, {self.left():.0f} s of budget left)")
    t0 = time.time()
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      sys.stdout.flush()
      self.data["errors"][name] = f"{type(e).__name__}: {str(e)[:500]}"
      self.summary.append(f"| {name} | ERROR {type(e).__name__} |")
    finally:
      _print(f"--- {name}: {time.time() - t0:.1f} s")
      gc.collect()
      self.dump()


# ------------------------------------------------------------------------------------------------
# Timing helpers.


def _median_time(fn: Callable[[], Any], reps: int) -> float:
  """Median seconds of fn() (blocked) over reps, after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _median_time_async(fn: Callable[[], Any], reps: int, inner: int) -> float:
  """Median per-call seconds of `inner` back-to-back calls (dispatch overlaps the device work).

  Only the last output is kept: the device runs the calls in order, so blocking on it waits for
  all of them, and each earlier output is freed once written (no inner × output memory).
  """
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    out = None
    for _ in range(inner):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / inner)
    del out
  return statistics.median(times)


def _reps(sz: Sizes, warm_s: float, limit_s: float = 15.0) -> int:
  """sz.reps, or 1 when the warm-up call says sz.reps calls would take over limit_s."""
  return sz.reps if warm_s * sz.reps <= limit_s else 1


def _compile(fn: Callable, *args: Any) -> tuple[Any, float]:
  """(compiled executable, compile seconds) of a jitted fn at these arguments."""
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t


def _temp_gib(compiled: Any) -> float:
  stats = compiled.memory_analysis()
  return float("nan") if stats is None else stats.temp_size_in_bytes / 2**30


def _device_bytes_limit() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  return float(stats.get("bytes_limit", math.inf))


def _peak_gib() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", float("nan")) / 2**30


# ------------------------------------------------------------------------------------------------
# FLOP and byte counts.


def layer_matmul_weights(cfg: models.ModelConfig) -> int:
  """W = L·(D·Q·H + 2·D·K·H + Q·H·D + 3·D·F): the weights each token is multiplied by."""
  d, q, k, h, f = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return cfg.num_layers * (d * q * h + 2 * d * k * h + q * h * d + 3 * d * f)


def train_flops(cfg: models.ModelConfig, n_seq: int, s: int, unembed_tokens: int) -> float:
  """F = 6·M·W + 6·M_u·V·D + 12·L·Q·H·S·M (forward + backward), M = n_seq·s."""
  m = n_seq * s
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * s * m
  unembed = 6.0 * unembed_tokens * cfg.vocab_size * cfg.dim
  return 6.0 * m * layer_matmul_weights(cfg) + unembed + attn


def tree_bytes(tree: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def kv_bytes(cfg: models.ModelConfig, n: int, slots: float, itemsize: int = 2) -> float:
  """2·L·N·slots·K·H·b: keys + values of `slots` cache slots of every row and layer."""
  return 2.0 * cfg.num_layers * n * slots * cfg.num_kv_heads * cfg.head_dim * itemsize


# ------------------------------------------------------------------------------------------------
# Sections.


def ceilings(sz: Sizes, rec: Recorder) -> None:
  """Measured bf16 matmul rate and device-to-device copy bandwidth."""
  out = rec.data["ceilings"]
  key = jax.random.key(0)
  matmul = jax.jit(lambda a, b: a @ b)
  cfg = sz.model
  m_tok = sz.train_batch * sz.train_len
  shapes = [("square", sz.matmul, sz.matmul, sz.matmul),
            ("mlp up/gate [M,D]@[D,F]", m_tok, cfg.dim, cfg.mlp_dim),
            ("mlp down [M,F]@[F,D]", m_tok, cfg.mlp_dim, cfg.dim),
            ("q proj [M,D]@[D,QH]", m_tok, cfg.dim, cfg.num_heads * cfg.head_dim),
            ("unembed [M,D]@[D,V]", m_tok, cfg.dim, cfg.vocab_size)]
  _print("| GEMM (bf16, f32 acc) | M | K | N | ms | TFLOP/s | compile s |")
  _print("|---|---|---|---|---|---|---|")
  for i, (name, m, k, n) in enumerate(shapes):
    ka, kb = jax.random.split(jax.random.fold_in(key, i))
    a = jax.random.normal(ka, (m, k), jnp.bfloat16)
    b = (jax.random.normal(kb, (k, n), jnp.float32) * k**-0.5).astype(jnp.bfloat16)
    c, c_s = _compile(matmul, a, b)
    t = _median_time_async(lambda: c(a, b), sz.reps + 2, sz.inner)
    rate = 2.0 * m * k * n / t
    _print(f"| {name} | {m} | {k} | {n} | {t * 1e3:.3f} | {rate / 1e12:.1f} | {c_s:.1f} |")
    out["matmul_square_tflops" if i == 0 else f"gemm {name}"] = rate / 1e12
    del a, b, c

  x = jax.random.normal(key, (sz.copy_elems,), jnp.bfloat16)
  neg = jax.jit(jnp.negative)
  c, _ = _compile(neg, x)
  t = _median_time_async(lambda: c(x), sz.reps + 2, max(2, sz.inner // 2))
  bw = 2.0 * x.size * x.dtype.itemsize / t
  out["copy_gbps"] = bw / 1e9
  out["copy_gib"] = x.size * x.dtype.itemsize / 2**30
  _print(f"device-to-device copy y = −x, {out['copy_gib']:.2f} GiB bf16: {t * 1e3:.3f} ms, "
         f"{bw / 1e9:.0f} GB/s (read + write)")
  rec.summary.append(f"| ceilings | matmul {out['matmul_square_tflops']:.0f} TFLOP/s "
                     f"({100 * out['matmul_square_tflops'] * 1e12 / PEAK_BF16:.0f}% of 989), copy "
                     f"{out['copy_gbps']:.0f} GB/s |")


def _logprob_path() -> str:
  lp = importlib.import_module("tokenrl.objectives.logprobs")
  available = lp._pallas_available()  # pylint: disable=protected-access
  use = jax.default_backend() in ("gpu", "tpu") and available
  return "pallas" if use else "xla"


def _rate_ref(rec: Recorder) -> float | None:
  r = rec.data["ceilings"].get("matmul_square_tflops")
  return None if r is None else r * 1e12


def train(sz: Sizes, rec: Recorder, kind: str, remat: bool, micro: int) -> None:
  """One train step kind ('sft' | 'pg') at remat on/off: compile, time, MFU.

  micro = micro_batch_size (0 = whole batch): the gradient is summed over N_seq/micro
  micro-batches under a lax.scan, same tokens and FLOPs per step, less activation memory. When
  the compiled step (temp + arguments) would not fit the device, micro is halved and the step
  recompiled (reported).
  """
  # Imported here: they need ml_collections (a carried wheel on the GPU machine); without it
  # only the train sections fail and decode/sample still run.
  # pylint: disable=g-import-not-at-top
  from tokenrl.methods.config import resolve_objective, rl_config
  from tokenrl.objectives import POLICY_LOSS_OPTIONS
  from tokenrl.train import steps as steps_lib
  # pylint: enable=g-import-not-at-top

  cfg = sz.model
  n, s = sz.train_batch, sz.train_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, cfg.vocab_size, size=(n, s + 1)).astype(np.int32)
  tokens[tokens == cfg.pad_id] = 1
  ones = np.ones_like(tokens)
  tx = optax.adamw(1e-6)
  params = models.init_params(cfg, jax.random.key(1), jnp.bfloat16)
  state = steps_lib.create_state(params, tx)
  del params
  if kind == "sft":
    batch = {"tokens": tokens, "segment_ids": ones, "loss_mask": ones}
    make = lambda mb: steps_lib.make_sft_step(tx, config=cfg, remat=remat, micro_batch_size=mb)
    unembed_tokens = n * s
  else:
    p = sz.pg_prompt
    t_len = s + 1 - p
    opts = {k: v for k, v in resolve_objective(rl_config()).items() if k in POLICY_LOSS_OPTIONS}
    batch = {"tokens": tokens, "segment_ids": ones, "mask": np.ones((n, t_len), np.int32),
             "advantages": rng.standard_normal(n).astype(np.float32),
             "sampler_logp": np.full((n, t_len), -math.log(cfg.vocab_size), np.float32),
             "token_weights": np.ones((n, t_len), np.float32)}
    make = lambda mb: steps_lib.make_pg_step(tx, config=cfg, prompt_len=p, loss_options=opts,
                                             temperature=1.0, remat=remat, micro_batch_size=mb)
    unembed_tokens = n * t_len
  batch = jax.device_put(batch)
  limit = 0.95 * _device_bytes_limit()
  compile_s = 0.0
  while True:
    compiled, c_s = _compile(make(micro), state, batch)
    compile_s += c_s
    stats = compiled.memory_analysis()
    need = math.nan if stats is None else stats.temp_size_in_bytes + stats.argument_size_in_bytes
    if not need > limit or micro == 1:
      break
    new = max(1, (micro or n) // 2)
    _print(f"  micro={micro}: compiled step needs {need / 2**30:.1f} GiB > 95% of the device "
           f"({limit / 0.95 / 2**30:.1f} GiB): recompiling with micro={new}")
    micro = new
  temp = _temp_gib(compiled)
  t = time.perf_counter()
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_reps(sz, time.perf_counter() - t)):
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  flops = train_flops(cfg, n, s, unembed_tokens)
  achieved = flops / step_s
  ref = _rate_ref(rec)
  name = f"{kind} remat={'on' if remat else 'off'}"
  res = {"batch": [n, s], "micro_batch": micro, "logprob_path": _logprob_path(),
         "compile_s": compile_s,
         "step_s": step_s, "step_s_all": times, "model_tflop_per_step": flops / 1e12,
         "tflops": achieved / 1e12, "mfu_peak": achieved / PEAK_BF16,
         "mfu_measured": None if ref is None else achieved / ref,
         "tokens_per_s": n * s / step_s, "temp_gib": temp, "peak_gib": _peak_gib(),
         "loss": float(metrics["loss"]), "skipped_updates": int(metrics["skipped_updates"])}
  rec.data["train"][name] = res
  mm = "n/a" if ref is None else f"{100 * res['mfu_measured']:.1f}%"
  _print(f"{name}: N×S = {n}×{s}, micro-batch {micro or n}, log-probs via {res['logprob_path']}, "
         f"compile {compile_s:.1f} s, "
         f"step {step_s * 1e3:.1f} ms (all {[round(x * 1e3, 1) for x in times]}), "
         f"{flops / 1e12:.2f} TFLOP/step, {achieved / 1e12:.1f} TFLOP/s, MFU {mm} of measured "
         f"matmul, {100 * res['mfu_peak']:.1f}% of 989 peak, {res['tokens_per_s']:.0f} tok/s, "
         f"temp {temp:.1f} GiB, loss {res['loss']:.3f}, skipped {res['skipped_updates']}")
  rec.summary.append(f"| train {name} N×S={n}×{s} micro={micro or n} | {step_s * 1e3:.1f} ms, "
                     f"{achieved / 1e12:.0f} TFLOP/s, MFU {mm} (meas.) / "
                     f"{100 * res['mfu_peak']:.1f}% (peak), compile {compile_s:.0f} s |")


def train_guarded(sz: Sizes, rec: Recorder, kind: str, remat: bool, micro: int) -> None:
  """train(); if the Pallas log-prob path fails, retry once on the XLA path and say so."""
  try:
    train(sz, rec, kind, remat, micro)
  except Exception:  # pylint: disable=broad-except
    if _logprob_path() != "pallas":
      raise
    traceback.print_exc()
    _print("!! retrying with the XLA log-prob path (Pallas kernels disabled for this step)")
    lp = importlib.import_module("tokenrl.objectives.logprobs")
    original = lp._pallas_available  # pylint: disable=protected-access
    lp._pallas_available = lambda: False  # pylint: disable=protected-access
    try:
      gc.collect()
      train(sz, rec, kind, remat, micro)
    finally:
      lp._pallas_available = original  # pylint: disable=protected-access
    rec.data["errors"][f"train {kind} remat={remat} (pallas)"] = "failed; XLA path measured"


@functools.lru_cache(maxsize=None)
def _decode_fn(cfg: models.ModelConfig, steps: int) -> Callable:
  """jitted (params, k, v, pos, index, tok, key) -> (k, v, tok) after `steps` decode steps."""

  @functools.partial(jax.jit, donate_argnums=(1, 2))
  def run(params, k, v, pos, index, tok, key):
    def body(i, carry):
      k, v, pos, index, tok = carry
      cache = {"k": k, "v": v, "pos": pos, "index": index}
      logits, cache = transformer.forward(params, tok[:, None], config=cfg, cache=cache,
                                          segment_ids=jnp.ones_like(tok)[:, None])
      keys = jax.random.split(jax.random.fold_in(key, i), tok.shape[0])
      tok, _, _ = choose_tokens(logits[:, -1], keys, greedy=jnp.asarray(False), top_k=0, top_p=1.0)
      return cache["k"], cache["v"], cache["pos"], cache["index"], tok

    k, v, _, _, tok = jax.lax.fori_loop(0, steps, body, (k, v, pos, index, tok))
    return k, v, tok

  return run


def _copy_bw(rec: Recorder) -> tuple[float, str]:
  bw = rec.data["ceilings"].get("copy_gbps")
  return (bw * 1e9, "measured") if bw else (KINDS_COPY_BW, "KINDS.md 4.3 TB/s")


def decode(sz: Sizes, rec: Recorder, params: Any, n: int, ctx: int) -> None:
  """Per-step decode time at batch n with ctx filled cache slots, vs the memory floor."""
  cfg, steps = sz.model, sz.decode_steps
  c_len = ctx + steps + 1
  key = jax.random.key(2)
  shape = (cfg.num_layers, n, c_len, cfg.num_kv_heads, cfg.head_dim)
  # One random [N,C,K,H] block per tensor repeated over L (the values do not change the time; a
  # single draw of all 3·10⁹ elements at N=256, ctx=4k would pass 2³¹).
  tile = jax.jit(lambda b: jnp.broadcast_to(b[None], shape))
  k = tile(jax.random.normal(jax.random.fold_in(key, 0), shape[1:], jnp.bfloat16))
  v = tile(jax.random.normal(jax.random.fold_in(key, 1), shape[1:], jnp.bfloat16))
  slots = jnp.arange(c_len, dtype=jnp.int32)
  pos = jnp.broadcast_to(jnp.where(slots < ctx, slots, -1), (n, c_len))
  index = jnp.asarray(ctx, jnp.int32)
  tok = jax.random.randint(jax.random.fold_in(key, 2), (n,), 1, cfg.vocab_size, jnp.int32)
  fn = _decode_fn(cfg, steps)
  compiled, compile_s = _compile(fn, params, k, v, pos, index, tok, key)
  t = time.perf_counter()
  k, v, out = compiled(params, k, v, pos, index, tok, key)
  jax.block_until_ready(out)
  times = []
  for _ in range(_reps(sz, time.perf_counter() - t)):
    t = time.perf_counter()
    k, v, out = compiled(params, k, v, pos, index, tok, key)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / steps)
  step_s = statistics.median(times)
  bw, bw_src = _copy_bw(rec)
  p_bytes = tree_bytes(params)
  kv = kv_bytes(cfg, n, ctx + (steps + 1) / 2)
  floor_s = (p_bytes + kv) / bw
  res = {"batch": n, "ctx": ctx, "steps": steps, "compile_s": compile_s, "step_ms": step_s * 1e3,
         "tokens_per_s": n / step_s, "param_gb": p_bytes / 1e9, "kv_gb": kv / 1e9,
         "floor_ms": floor_s * 1e3, "floor_fraction": floor_s / step_s, "bw_source": bw_src,
         "kv_cache_slots": c_len}
  rec.data["decode"][f"N={n} ctx={ctx}"] = res
  _print(f"| {n} | {ctx} | {step_s * 1e3:.3f} | {n / step_s:.0f} | {p_bytes / 1e9:.2f} | "
         f"{kv / 1e9:.2f} | {floor_s * 1e3:.3f} | {100 * floor_s / step_s:.0f}% | "
         f"{compile_s:.1f} |")
  rec.summary.append(f"| decode N={n} ctx={ctx} | {step_s * 1e3:.2f} ms/step, "
                     f"{n / step_s:.0f} tok/s, "
                     f"{100 * floor_s / step_s:.0f}% of the memory floor |")


def _sample_bytes(cfg: models.ModelConfig, n: int, p: int, t_new: int, p_bytes: int) -> float:
  """Predicted device bytes of sample(): prefill f32 logits N·P·V·4, one layer's f32 scores +
  bf16 probs N·Q·P·C·6, the KV cache, the params (a lower bound: other temporaries left out)."""
  c = p + t_new
  return (n * p * cfg.vocab_size * 4.0 + n * cfg.num_heads * p * c * 6.0
          + kv_bytes(cfg, n, c) + p_bytes)


def sample_e2e(sz: Sizes, rec: Recorder, params: Any, n: int, p: int) -> None:
  """tokens/s of tokenrl.rollout.sample (prefill + T new tokens), compile time apart."""
  cfg, t_new = sz.model, sz.sample_new
  name = f"N={n} P={p}"
  need = _sample_bytes(cfg, n, p, t_new, tree_bytes(params))
  limit = _device_bytes_limit()
  if need > 0.9 * limit:
    msg = (f"predicted {need / 2**30:.0f} GiB > 90% of {limit / 2**30:.0f} GiB (prefill f32 logits "
           f"[N,P,V] = {n * p * cfg.vocab_size * 4 / 2**30:.0f} GiB)")
    _print(f"| {n} | {p} | {t_new} | skipped: {msg} |")
    rec.data["sample"][name] = {"skipped": msg}
    rec.summary.append(f"| sample {name} | skipped: {msg} |")
    return
  rng = np.random.default_rng(3)
  prompts = rng.integers(1, cfg.vocab_size, size=(n, p)).astype(np.int32)
  prompts[prompts == cfg.pad_id] = 1
  call = lambda: sample(params, prompts, config=cfg, rng=jax.random.key(4), max_new_tokens=t_new,
                        temperature=1.0, stop_tokens=())
  t = time.perf_counter()
  out = jax.block_until_ready(call())
  first_s = time.perf_counter() - t
  times = []
  for _ in range(max(1, _reps(sz, first_s) - 1)):
    t = time.perf_counter()
    out = jax.block_until_ready(call())
    times.append(time.perf_counter() - t)
  wall = statistics.median(times)
  generated = int(np.asarray(out.mask).sum())
  dec = rec.data["decode"].get(f"N={n} ctx={p}")
  est_prefill = None if dec is None else wall - t_new * dec["step_ms"] / 1e3
  res = {"batch": n, "prompt": p, "new_tokens": t_new, "wall_s": wall, "first_call_s": first_s,
         "compile_s_est": first_s - wall, "tokens_per_s": n * t_new / wall,
         "generated_tokens": generated, "prefill_and_overhead_s_est": est_prefill,
         "predicted_gib": need / 2**30}
  rec.data["sample"][name] = res
  extra = "" if est_prefill is None else f"{est_prefill * 1e3:.0f}"
  _print(f"| {n} | {p} | {t_new} | {wall * 1e3:.1f} | {n * t_new / wall:.0f} | "
         f"{first_s - wall:.1f} | {extra} |")
  rec.summary.append(f"| sample {name} T={t_new} | {wall * 1e3:.0f} ms, "
                     f"{n * t_new / wall:.0f} tok/s |")


def speculative_e2e(sz: Sizes, rec: Recorder, params: Any, n: int, p: int) -> None:
  """Greedy decode of T tokens: `sample` vs speculative_sample (K=0, 2-layer self-draft K=4,
  n-gram K=4). Greedy, so every method emits the same tokens (asserted): the ratio of wall
  times is the speedup at the same output. Random weights: the acceptance is what a random
  model's early exit agrees with, not a trained model's; K=0 measures the engine's overhead."""
  from tokenrl.rollout.drafts import LayerDraft, NGramDraft
  from tokenrl.rollout.speculative import speculative_sample
  cfg, t_new = sz.model, sz.sample_new
  rng = np.random.default_rng(3)
  prompts = rng.integers(1, cfg.vocab_size, size=(n, p)).astype(np.int32)
  kw = dict(config=cfg, rng=jax.random.key(4), max_new_tokens=t_new, temperature=0.0,
            stop_tokens=())
  cases = [("sample", None, 0), ("K=0", NGramDraft(3), 0), ("layers2 K=4", LayerDraft(2), 4),
           ("ngram K=4", NGramDraft(3), 4)]
  base_tokens, base_wall = None, None
  for label, draft, k in cases:
    if draft is None:
      call = lambda: (sample(params, prompts, **kw), None)
    else:
      call = functools.partial(lambda d, k: speculative_sample(params, prompts, draft=d,
                                                               num_draft_tokens=k, **kw), draft, k)
    t = time.perf_counter()
    out, stats = call()
    jax.block_until_ready(out)
    first_s = time.perf_counter() - t
    times = []
    for _ in range(max(1, _reps(sz, first_s) - 1)):
      t = time.perf_counter()
      out, stats = call()
      jax.block_until_ready(out)
      times.append(time.perf_counter() - t)
    wall = statistics.median(times)
    tokens = np.asarray(out.tokens)
    if base_tokens is None:
      base_tokens, base_wall = tokens, wall
    same = bool(np.array_equal(tokens, base_tokens))
    acc = None if stats is None else stats.acceptance_rate
    tpr = None if stats is None else stats.tokens_per_round
    rec.data["speculative"][f"N={n} P={p} {label}"] = {
        "wall_s": wall, "speedup": base_wall / wall, "same_tokens": same, "acceptance": acc,
        "tokens_per_round": tpr, "compile_s_est": first_s - wall}
    _print(f"| {n} | {p} | {label} | {wall * 1e3:.1f} | {base_wall / wall:.2f}x | "
           f"{'-' if acc is None else f'{acc:.2f}'} | {'-' if tpr is None else f'{tpr:.2f}'} | "
           f"{same} |")
    rec.summary.append(f"| speculative N={n} P={p} {label} | {base_wall / wall:.2f}x sample, "
                       f"acceptance {acc} |")
    if not same:
      raise AssertionError(f"greedy {label} differs from greedy sample (N={n}, P={p})")


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes (checks the logic)")
  parser.add_argument("--budget-s", type=float, default=300.0,
                      help="skip sections that would start after this many seconds")
  parser.add_argument("--json", default=None, help="write every number to this JSON file")
  parser.add_argument("--sections", default="ceilings,train,decode,sample,speculative",
                      help="comma-separated subset of ceilings,train,decode,sample,speculative")
  args = parser.parse_args(argv)
  sz = SMOKE if args.cpu_smoke else GPU
  wanted = set(args.sections.split(","))
  rec = Recorder(args.json, args.budget_s)
  dev = jax.devices()[0]
  rec.data["meta"] = {"device": dev.device_kind, "backend": jax.default_backend(),
                      "jax": jax.__version__, "optax": optax.__version__,
                      "model": "tiny" if args.cpu_smoke else "qwen2.5-0.5b (random bf16 weights)",
                      "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                      "memory_limit_gib": _device_bytes_limit() / 2**30,
                      "peak_bf16_tflops": PEAK_BF16 / 1e12}
  _print(f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
         f"optax {optax.__version__}, memory limit {_device_bytes_limit() / 2**30:.1f} GiB, "
         f"budget {args.budget_s:.0f} s, sizes {'SMOKE' if args.cpu_smoke else 'GPU'}")
  if not args.cpu_smoke and jax.default_backend() != "gpu":
    _print("!! no GPU backend: the numbers below are not GPU numbers")
  est = sz.est
  made: dict[str, Any] = {}

  def params() -> Any:  # the decode/sample model (random bf16 weights), made once
    if "params" not in made:
      made["params"] = models.init_params(sz.model, jax.random.key(5), jnp.bfloat16)
    return made["params"]

  def note(text: str) -> Callable[[], None]:
    return lambda: _print(text)

  # (name or None for a printed note, estimated seconds, fn), then run in priority order so that
  # a short budget loses the least wanted numbers: train and decode groups alternate.
  trains = [(f"train {k} remat={'on' if r else 'off'}", est["train"],
             functools.partial(train_guarded, sz, rec, k, r, mb)) for k, r, mb in sz.train_cfgs]
  decodes = []
  for ctx in sz.decode_ctx:
    group = [(None, 0, note(
        f"\nDecode step at ctx={ctx} (forward [N,1] + KV cache + sampling, fori_loop of "
        f"{sz.decode_steps} steps), floor = (params + KV read) / copy bandwidth:\n"
        "| N | ctx | ms/step | tok/s | params GB | KV GB | floor ms | % of floor | compile s |\n"
        "|---|---|---|---|---|---|---|---|---|"))]
    group += [(f"decode N={n} ctx={ctx}", est["decode"],
               functools.partial(lambda n, ctx: decode(sz, rec, params(), n, ctx), n, ctx))
              for n in sz.decode_batches]
    decodes.append(group)
  plan: list[tuple[str | None, float, Callable[[], None]]] = []
  if "ceilings" in wanted:
    plan.append(("ceilings", est["ceilings"], lambda: ceilings(sz, rec)))
  if "train" in wanted:
    plan.append((None, 0, note(
        f"\nModel FLOPs per step F = 6·M·W + 6·M_u·V·D + 12·L·Q·H·S·M, W = "
        f"{layer_matmul_weights(sz.model) / 1e6:.1f} M layer matmul weights, V·D = "
        f"{sz.model.vocab_size * sz.model.dim / 1e6:.1f} M unembedding")))
  trains = trains if "train" in wanted else []
  decodes = decodes if "decode" in wanted else []
  for i in range(max(len(trains), len(decodes))):
    plan += trains[i:i + 1] + (decodes[i] if i < len(decodes) else [])
  if "sample" in wanted:
    plan.append((None, 0, note(
        f"\ntokenrl.rollout.sample end to end (prefill P + {sz.sample_new} new tokens, "
        "temperature 1, no stop token); prefill est. = wall − T·decode step:\n"
        "| N | P | T | wall ms | tok/s | compile s (est.) | prefill+overhead ms (est.) |\n"
        "|---|---|---|---|---|---|---|")))
    p_bytes = tree_bytes(jax.eval_shape(
        lambda: models.init_params(sz.model, jax.random.key(5), jnp.bfloat16)))
    for n, p in sz.sample_cfgs:
      # A config predicted not to fit is skipped at once (with its estimate), so costs no budget.
      fits = _sample_bytes(sz.model, n, p, sz.sample_new, p_bytes) <= 0.9 * _device_bytes_limit()
      plan.append((f"sample N={n} P={p}", est["sample"] if fits else 0,
                   functools.partial(lambda n, p: sample_e2e(sz, rec, params(), n, p), n, p)))
  if "speculative" in wanted:
    plan.append((None, 0, note(
        f"\nSpeculative decoding, greedy, {sz.sample_new} new tokens (random weights; same tokens "
        "asserted):\n| N | P | method | wall ms | vs sample | acceptance | tokens/pass | same |\n"
        "|---|---|---|---|---|---|---|---|")))
    for n, p in sz.spec_cfgs:
      plan.append((f"speculative N={n} P={p}", est["spec"],
                   functools.partial(lambda n, p: speculative_e2e(sz, rec, params(), n, p), n, p)))
  for name, seconds, fn in plan:
    if name is None:
      fn()
    else:
      rec.run(name, seconds, fn)
  made.clear()

  rec.data["meta"]["elapsed_s"] = time.time() - _T0
  rec.dump()
  _print(f"\n=== model_gpu summary ({rec.data['meta']['device']}, jax {jax.__version__}, "
         f"{time.time() - _T0:.0f} s)")
  _print("| section | result |")
  _print("|---|---|")
  for line in rec.summary:
    _print(line)
  if rec.data["errors"]:
    _print(f"ERRORS in: {', '.join(rec.data['errors'])}")
  return 1 if rec.data["errors"] else 0


if __name__ == "__main__":
  sys.exit(main())
