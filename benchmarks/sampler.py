"""Decode throughput of the tokenrl sampler vs `transformers` `generate`, side by side on CPU.

  python benchmarks/sampler.py            # batch 64 and 256, f32 and bf16, 2 rounds x 5 reps
  python benchmarks/sampler.py --quick    # 1 round x 3 reps, bf16 at batch 64 only

Both libraries load the same locally built tiny Qwen2 checkpoint (D=256, L=4, Q=4, K=2, H=64,
F=1024, V=70, tied; see common.py) and sample exactly 64 new tokens per row after a 16-token
prompt: multinomial sampling at temperature 1, top-k and top-p off, KV cache on, no stop token
(`stop_tokens=()` / `eos_token_id=None`). transformers runs its default attention (sdpa) and
default dynamic cache under `torch.inference_mode()`.

Each library runs in its own process pinned to the same `--threads` cores (torch.set_num_threads
= the affinity mask XLA sizes its pool from); the parent alternates the two `--rounds` times so
machine noise hits both alike. A row's time is the median over every timed call (after one
warm-up call, which for tokenrl includes tracing + XLA compile: reported separately as
compile = first call − median call). tokens/s = rows·64 / seconds per `generate` call (prefill
included). GFLOP/s counts the useful FLOPs of common.generate_flops (2·params per token for the
layers and the tied unembedding, attention over the visible keys only) and is given as a
fraction of this machine's f32 matmul rate, measured in the same run (median of a jitted
2048x2048 f32 matmul, before and after the workers). Goal: tokenrl >= 1.5x generate's tokens/s
at batch 64 and 256 in f32. Any error exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PROMPT_LEN = 16
NEW_TOKENS = 64
GOAL = 1.5


def _prompts(batch: int):
  import numpy as np
  # Token ids 2..69: never pad (0) or eos (1); the same prompts in both workers.
  return np.random.default_rng(batch).integers(2, 70, size=(batch, PROMPT_LEN), dtype=np.int32)


def _cases(args) -> list[tuple[str, int]]:
  cases = [("f32", b) for b in args.batches]
  cases += [("bf16", b) for b in (args.batches[:1] if args.quick else args.batches)]
  return cases


def worker_tokenrl(args) -> dict:
  import jax
  import jax.numpy as jnp
  from tokenrl.models import load_hf
  from tokenrl.rollout import sample
  out = {}
  for dtype, batch in _cases(args):
    config, params = load_hf(args.ckpt, dtype=jnp.float32 if dtype == "f32" else jnp.bfloat16)
    prompts = _prompts(batch)
    run = lambda i: jax.block_until_ready(sample(
        params, prompts, config=config, rng=jax.random.key(i), max_new_tokens=NEW_TOKENS,
        temperature=1.0, top_k=0, top_p=1.0, num_samples=1, stop_tokens=()).tokens)
    tokens, first = common.timed(lambda: run(0))
    if tokens.shape != (batch, NEW_TOKENS):
      raise RuntimeError(f"tokenrl returned {tokens.shape}, expected {(batch, NEW_TOKENS)}")
    times = [common.timed(lambda: run(i + 1))[1] for i in range(args.reps)]
    out[f"{dtype}/{batch}"] = {"first": first, "times": times}
  return out


def worker_hf(args) -> dict:
  import torch
  import transformers
  common.torch_threads(args.threads)
  out = {}
  for dtype, batch in _cases(args):
    torch_dtype = torch.float32 if dtype == "f32" else torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_pretrained(args.ckpt, dtype=torch_dtype).eval()
    ids = torch.from_numpy(_prompts(batch).astype("int64"))
    mask = torch.ones_like(ids)

    def run(i):
      torch.manual_seed(i)
      with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                              pad_token_id=0, use_cache=True)

    seqs, first = common.timed(lambda: run(0))
    if tuple(seqs.shape) != (batch, PROMPT_LEN + NEW_TOKENS):
      raise RuntimeError(f"generate returned {tuple(seqs.shape)}, expected "
                         f"{(batch, PROMPT_LEN + NEW_TOKENS)}")
    times = [common.timed(lambda: run(i + 1))[1] for i in range(args.reps)]
    out[f"{dtype}/{batch}"] = {"first": first, "times": times}
  return out


def parent(args) -> int:
  from tokenrl.models import load_hf
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = common.build_checkpoint(os.path.join(tmp, "tiny_qwen2"))
    config, _ = load_hf(ckpt)
    rates = [common.matmul_gflops()]
    worker_args = ["--ckpt", ckpt, "--threads", str(args.threads), "--reps", str(args.reps),
                   "--batches", *map(str, args.batches)] + (["--quick"] if args.quick else [])
    worker_args += ["--omp-passive"] if args.omp_passive else []
    results = {"tokenrl": [], "hf": []}
    for r in range(args.rounds):
      for lib in ("tokenrl", "hf"):
        print(f"[round {r + 1}/{args.rounds}] {lib} ...", file=sys.stderr, flush=True)
        results[lib].append(common.run_worker(__file__, ["--worker", lib, *worker_args]))
    rates.append(common.matmul_gflops())
  peak = common.median(rates)

  rows, ok = [], True
  for dtype, batch in _cases(args):
    key = f"{dtype}/{batch}"
    t = {lib: common.median([x for res in results[lib] for x in res[key]["times"]])
         for lib in results}
    compile_s = {lib: common.median([res[key]["first"] for res in results[lib]]) - t[lib]
                 for lib in results}
    tps = {lib: batch * NEW_TOKENS / t[lib] for lib in t}
    gflops = {lib: common.generate_flops(config, batch, PROMPT_LEN, NEW_TOKENS) / t[lib] / 1e9
              for lib in t}
    ratio = tps["tokenrl"] / tps["hf"]
    if dtype == "f32":
      ok &= ratio >= GOAL
    rows.append((dtype, batch, f"{tps['tokenrl']:.0f}", f"{tps['hf']:.0f}", f"**{ratio:.2f}x**",
                 f"{gflops['tokenrl']:.1f} ({gflops['tokenrl'] / peak:.0%})",
                 f"{gflops['hf']:.1f} ({gflops['hf'] / peak:.0%})",
                 f"{compile_s['tokenrl']:.2f}", f"{compile_s['hf']:.2f}"))

  print("## Sampler: tokenrl `sample` vs transformers `generate` (CPU)\n")
  header = common.env_rows(args.threads, load_before, args.omp_passive)
  print(common.table(("field", "value"), header + [
      ("workload", f"tiny Qwen2 (D=256, L=4, Q=4, K=2, F=1024, V=70, tied), prompt {PROMPT_LEN}, "
                   f"{NEW_TOKENS} new tokens, temperature 1, top-k/top-p off, no EOS stop"),
      ("method", f"{args.rounds} rounds x {args.reps} timed calls per library (alternating "
                 "processes), medians; compile = first call − median"),
      ("f32 matmul rate", f"{peak:.1f} GFLOP/s (jitted 2048² matmul, median; runs: "
                          + ", ".join(f"{r:.1f}" for r in rates) + ")"),
      ("FLOP count", "2·P_layers per position fed + 2·V·D per sampled token + 4·Q·H·visible "
                     f"keys per layer; P_layers = {common.layer_matmul_params(config):,}"),
  ]))
  print()
  print(common.table(("dtype", "batch", "tokenrl tok/s", "generate tok/s", "ratio",
                      "tokenrl GFLOP/s (of matmul)", "generate GFLOP/s (of matmul)",
                      "tokenrl compile s", "generate first-call extra s"), rows))
  print(f"\nGoal: tokenrl >= {GOAL}x generate tokens/s at f32, every batch: "
        f"{'MET' if ok else 'NOT MET'}")
  return 0


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="1 round x 3 reps, one bf16 row")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--reps", type=int, default=None)
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
  p.add_argument("--omp-passive", action="store_true",
                 help="OMP_WAIT_POLICY=PASSIVE for torch (see common.pin_threads; not for "
                      "headline numbers)")
  p.add_argument("--worker", choices=("tokenrl", "hf"), help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  args = p.parse_args()
  args.reps = args.reps or (3 if args.quick else 5)
  args.rounds = args.rounds or (1 if args.quick else 2)
  common.pin_threads(args.threads, omp_passive=args.omp_passive)
  if args.worker:
    common.emit((worker_tokenrl if args.worker == "tokenrl" else worker_hf)(args))
    return 0
  return parent(args)


if __name__ == "__main__":
  sys.exit(main())
