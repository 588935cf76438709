"""TokenSelect (arXiv 2411.02886) vs full attention: decode speed and long-context retrieval.

  python benchmarks/tokenselect.py --json out.json     # GPU: Qwen2.5-0.5B shape, bf16, 32k-128k
  python benchmarks/tokenselect.py --quick             # CPU: tiny model, 2k-8k context
  python benchmarks/tokenselect.py --cpu-smoke         # CPU: tiniest sizes (accelerator.sh smoke)
  python benchmarks/tokenselect.py --quality           # CPU: retrieval accuracy, full vs top_k

Speed (random weights, one row N = 1, a KV cache holding `ctx` random keys/values):
  attention  one layer's decode attention: full (the model's masked attention over all C slots)
             vs TokenSelect uncached (score S1 + votes S2 + top-k + gather + attention) vs a
             Selection-Cache hit (cos ≥ θ: gather + attention only). Memory floors per layer
             (spec §2.9, b bytes per K element, T = n_init + top_k + n_local, n = ctx):
               full   = 2·n·K·H·b
               miss   = n·K·H·b + (2·4·Q + 2·4)·n + 2·T·K·H·b   (keys once, f32 logits written
                        and read, votes written and read, selected K/V)
               hit    = 2·T·K·H·b
             floor time = bytes / B_copy (B_copy: measured y = −x copy, read + write bytes / t).
  decode     end-to-end decode tokens/s: `steps` greedy steps of transformer.forward in one
             jitted fori_loop (all layers, unembedding, argmax), for full attention, TokenSelect
             with θ = 2 (never reused: every step scores) and θ = −2 (every step after the first
             reuses the cached selection: ~100 % hits).
Every number is the median over `reps` calls after a warm-up (compile reported apart). The GPU
run uses the Qwen2.5-0.5B shape (D 896, Q 14, K 2, H 64, F 4864, V 151936) with `--layers`
layers (default 24 = the real depth) and the reference defaults top_k 2048, n_init 128,
n_local 512; the prefill is not timed (the cache is filled directly).

Quality (--quality): a 2-layer D=64 model is trained on CPU for `--train-steps` steps on the
retrieval task of tokenrl.data.retrieval (a 4-digit key planted at a random depth in random
filler, copied after "?key:"; loss on the answer only), then greedy-sampled through
tokenrl.rollout.sample (chunked prefill + decode) on held-out prompts with full attention and
with TokenSelect at several top_k (n_init 4, n_local max(8, chunk), chunk --chunk-size (32);
Selection Cache on, θ = 0.9;
and off for one top_k). Reported: exact-match accuracy of the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
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

from tokenrl import models
from tokenrl.kernels import tokenselect as K
from tokenrl.models import layers as L
from tokenrl.models import tokenselect as TS
from tokenrl.models import transformer as T
from tokenrl.models.config import TokenSelectConfig

_T0 = time.time()


def _print(*args: Any) -> None:
  print(f"[{time.time() - _T0:6.1f}s]", *args, flush=True)


@dataclasses.dataclass(frozen=True)
class Sizes:
  model: models.ModelConfig
  contexts: tuple[int, ...]
  ts: TokenSelectConfig
  steps: int  # decode steps per timed call
  reps: int
  copy_elems: int
  dtype: Any


def gpu_sizes(layers: int) -> Sizes:
  base = models.get_preset("qwen2.5-0.5b")
  cfg = base.replace(num_layers=layers, max_seq_len=140_000)
  # Longest first: the budget may stop the run before the shorter contexts.
  return Sizes(cfg, (131_072, 65_536, 32_768), TokenSelectConfig(), steps=32, reps=5,
               copy_elems=512 * 2**20, dtype=jnp.bfloat16)


def cpu_sizes(smoke: bool) -> Sizes:
  cfg = models.tiny("qwen2", vocab_size=256, dim=128, num_layers=2, num_heads=4, num_kv_heads=2,
                    mlp_dim=256, max_seq_len=20_000)
  if smoke:
    return Sizes(cfg, (1024,), TokenSelectConfig(top_k=64, n_init=8, n_local=32,
                                                      chunk_size=32), steps=4, reps=2,
                 copy_elems=2**22, dtype=jnp.float32)
  return Sizes(cfg, (2048, 4096, 8192), TokenSelectConfig(top_k=256, n_init=16, n_local=64,
                                                          chunk_size=64), steps=16, reps=5,
               copy_elems=2**24, dtype=jnp.float32)


def _median_time(fn: Callable[[], Any], reps: int) -> float:
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def copy_bandwidth(elems: int, dtype: Any, reps: int) -> float:
  """B_copy = 2·bytes / t of y = −x (one read + one write), bytes/s."""
  x = jnp.ones((elems,), dtype)
  f = jax.jit(lambda x: -x)
  jax.block_until_ready(f(x))
  t = _median_time(lambda: f(x), max(reps, 3))
  return 2 * x.nbytes / t


def floors(cfg: models.ModelConfig, ts: TokenSelectConfig, n: int, b: int) -> dict[str, float]:
  """Per-layer decode memory floors in bytes (see the module docstring)."""
  kv_row = cfg.num_kv_heads * cfg.head_dim * b
  return {"full": 2 * n * kv_row,
          "miss": n * kv_row + (2 * 4 * cfg.num_heads + 2 * 4) * n + 2 * ts.k_total * kv_row,
          "hit": 2 * ts.k_total * kv_row}


def filled_cache(cfg: models.ModelConfig, ctx: int, slots: int, dtype: Any, seed: int = 0):
  """A stacked cache of `slots` slots (N = 1) whose first ctx slots hold random K/V."""
  cache = T.init_cache(cfg, 1, slots, dtype)
  shape = (cfg.num_layers, 1, ctx, cfg.num_kv_heads, cfg.head_dim)
  kk, kv = jax.random.split(jax.random.key(seed))
  fill = jax.jit(lambda c, a: c.at[:, :, :ctx].set(a), donate_argnums=0)
  cache["k"] = fill(cache["k"], jax.random.normal(kk, shape, dtype))
  cache["v"] = fill(cache["v"], jax.random.normal(kv, shape, dtype))
  slots_idx = jnp.arange(slots, dtype=jnp.int32)
  cache["pos"] = jnp.where(slots_idx < ctx, slots_idx, -1)[None]
  cache["index"] = jnp.asarray(ctx, jnp.int32)
  return cache


def attention_bench(sz: Sizes, ctx: int, out: dict) -> None:
  """One layer's decode attention at context ctx: full vs TokenSelect miss / hit."""
  cfg = sz.model.replace(attention="tokenselect", tokenselect=sz.ts)
  q_heads, kv_heads, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  c = ctx + 1
  key = jax.random.key(1)
  ks = jax.random.split(key, 3)
  k_all = jax.random.normal(ks[0], (1, c, kv_heads, h), sz.dtype)
  v_all = jax.random.normal(ks[1], (1, c, kv_heads, h), sz.dtype)
  q = jax.random.normal(ks[2], (1, 1, q_heads, h), sz.dtype)
  kpos = jnp.arange(c, dtype=jnp.int32)[None]
  positions = jnp.full((1, 1), ctx, jnp.int32)
  valid = jnp.ones((1, 1), bool)

  @jax.jit
  def full(q, k_all, v_all):
    mask = (kpos[:, None, :] >= 0) & (kpos[:, None, :] <= positions[:, :, None])
    return L.attention(q, k_all, v_all, mask, scale=cfg.attn_scale)

  def ts_fn(threshold):
    tcfg = cfg.replace(tokenselect=dataclasses.replace(sz.ts, threshold=threshold))

    @jax.jit
    def run(q, k_all, v_all, state):
      o, _ = TS.attend(q, q, positions, valid, k_all, v_all, kpos, c, state, config=tcfg)
      return o
    return run

  fp = q.astype(jnp.float32).reshape(1, -1)
  base = jax.tree.map(lambda a: a[0], TS.init_state(cfg, 1))
  state = dict(base, anchor=fp, has=jnp.ones((1,), bool),
               topk=jnp.arange(sz.ts.n_init, sz.ts.n_init + sz.ts.top_k, dtype=jnp.int32)[None])

  @jax.jit
  def votes(q, k_all):
    return K.criticality_votes(q[:, 0].astype(jnp.float32), k_all, jnp.array([sz.ts.n_init]),
                               jnp.array([c - sz.ts.n_local]), impl=sz.ts.impl)

  cases = {"full": (full, (q, k_all, v_all)),
           "ts_miss": (ts_fn(2.0), (q, k_all, v_all, state)),
           "ts_hit": (ts_fn(-2.0), (q, k_all, v_all, state)),
           "votes_only": (votes, (q, k_all))}
  b = jnp.dtype(sz.dtype).itemsize
  fl = floors(cfg, sz.ts, ctx, b)
  res = {}
  for name, (fn, args) in cases.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    t = _median_time(lambda: fn(*args), sz.reps * 4)
    res[name] = {"ms": t * 1e3, "compile_s": round(compile_s, 2)}
  for name, floor_key in (("full", "full"), ("ts_miss", "miss"), ("ts_hit", "hit")):
    floor_s = fl[floor_key] / out["copy_bw"]
    res[name]["floor_ms"] = floor_s * 1e3
    res[name]["floor_fraction"] = floor_s / (res[name]["ms"] / 1e3)
  res["speedup_miss"] = res["full"]["ms"] / res["ts_miss"]["ms"]
  res["speedup_hit"] = res["full"]["ms"] / res["ts_hit"]["ms"]
  res["floor_speedup_miss"] = fl["full"] / fl["miss"]
  res["floor_speedup_hit"] = fl["full"] / fl["hit"]
  out["attention"][str(ctx)] = res
  _print(f"attention ctx={ctx}: " + ", ".join(
      f"{k} {v['ms']:.3f} ms" for k, v in res.items() if isinstance(v, dict))
         + f" | speedup miss {res['speedup_miss']:.2f}x (floor {res['floor_speedup_miss']:.2f}x),"
         f" hit {res['speedup_hit']:.2f}x (floor {res['floor_speedup_hit']:.1f}x)")


@functools.partial(jax.jit, static_argnames=("config", "steps"), donate_argnums=(1,))
def _decode(params, cache, tok, *, config, steps):
  def body(_, carry):
    cache, tok = carry
    logits, cache = T.forward(params, tok, config=config, cache=cache,
                              segment_ids=jnp.ones_like(tok))
    return cache, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)[:, None]
  return jax.lax.fori_loop(0, steps, body, (cache, tok))


def decode_bench(sz: Sizes, params: Any, ctx: int, out: dict) -> None:
  """End-to-end decode tokens/s at context ctx: full vs TokenSelect θ=2 (miss) / θ=−2 (hit)."""
  res = {}
  tok = jnp.ones((1, 1), jnp.int32)
  for name, attention, theta in (("full", "full", 0.0), ("ts_miss", "tokenselect", 2.0),
                                 ("ts_hit", "tokenselect", -2.0)):
    cfg = sz.model.replace(attention=attention,
                           tokenselect=dataclasses.replace(sz.ts, threshold=theta))
    cache = filled_cache(cfg, ctx, ctx + sz.steps, sz.dtype)
    fresh = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, cache))
    t0 = time.perf_counter()
    final, _ = jax.block_until_ready(_decode(params, fresh(), tok, config=cfg, steps=sz.steps))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(sz.reps):
      c = fresh()
      t0 = time.perf_counter()
      jax.block_until_ready(_decode(params, c, tok, config=cfg, steps=sz.steps))
      times.append(time.perf_counter() - t0)
    step_s = statistics.median(times) / sz.steps
    entry = {"ms_per_step": step_s * 1e3, "tokens_per_s": 1.0 / step_s,
             "compile_s": round(compile_s, 2)}
    if "ts" in final:
      entry["hit_rate"] = float(TS.skip_rate(final))
    res[name] = entry
    del cache, final
  res["speedup_miss"] = res["full"]["ms_per_step"] / res["ts_miss"]["ms_per_step"]
  res["speedup_hit"] = res["full"]["ms_per_step"] / res["ts_hit"]["ms_per_step"]
  out["decode"][str(ctx)] = res
  _print(f"decode ctx={ctx}: " + ", ".join(
      f"{k} {v['tokens_per_s']:.1f} tok/s" + (f" (hits {v['hit_rate']:.2f})" if "hit_rate" in v
                                              else "")
      for k, v in res.items() if isinstance(v, dict))
         + f" | speedup miss {res['speedup_miss']:.2f}x, hit {res['speedup_hit']:.2f}x")


def speed(sz: Sizes, out: dict, budget_s: float, json_path: str | None) -> int:
  failures = 0
  out.update(backend=jax.default_backend(), devices=[str(d) for d in jax.devices()],
             model=dict(dim=sz.model.dim, layers=sz.model.num_layers, heads=sz.model.num_heads,
                        kv_heads=sz.model.num_kv_heads, head_dim=sz.model.head_dim,
                        vocab=sz.model.vocab_size),
             tokenselect=dataclasses.asdict(sz.ts), dtype=jnp.dtype(sz.dtype).name,
             steps=sz.steps, attention={}, decode={})
  out["copy_bw"] = copy_bandwidth(sz.copy_elems, sz.dtype, sz.reps)
  _print(f"B_copy {out['copy_bw'] / 1e9:.1f} GB/s on {out['devices']}")
  params = T.init_params(sz.model, jax.random.key(0), dtype=sz.dtype)
  for ctx in sz.contexts:
    for section in (attention_bench, lambda s, c, o: decode_bench(s, params, c, o)):
      if time.time() - _T0 > budget_s:
        _print(f"budget {budget_s:.0f} s spent: skipping the rest at ctx={ctx}")
        out.setdefault("skipped", []).append(ctx)
        break
      try:
        section(sz, ctx, out)
      except Exception:  # noqa: BLE001 - report and keep going
        failures += 1
        traceback.print_exc()
      if json_path:
        with open(json_path, "w") as f:
          json.dump(out, f, indent=1)
  _summary(out)
  return failures


def _summary(out: dict) -> None:
  print("\n| ctx | full attn ms | TS miss ms | TS hit ms | miss x (floor) | hit x (floor) | "
        "full tok/s | TS miss tok/s | TS hit tok/s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for ctx, a in out["attention"].items():
    d = out["decode"].get(ctx)
    dec = ("| {:.1f} | {:.1f} | {:.1f} |".format(d["full"]["tokens_per_s"],
                                                  d["ts_miss"]["tokens_per_s"],
                                                  d["ts_hit"]["tokens_per_s"]) if d else "| - | - | - |")
    print(f"| {ctx} | {a['full']['ms']:.3f} | {a['ts_miss']['ms']:.3f} | {a['ts_hit']['ms']:.3f} "
          f"| {a['speedup_miss']:.2f} ({a['floor_speedup_miss']:.2f}) "
          f"| {a['speedup_hit']:.2f} ({a['floor_speedup_hit']:.1f}) {dec}")


# ------------------------------------------------------------------------------------------------
# Quality: retrieval accuracy of a tiny model trained on CPU.


def quality(args, out: dict) -> int:
  import optax
  from tokenrl.data import retrieval as R
  from tokenrl.data.char_tokenizer import CharTokenizer
  from tokenrl.rollout import sample

  tok = CharTokenizer()
  length, digits = args.length, 4
  cfg = models.tiny("qwen2", vocab_size=tok.vocab_size, dim=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, mlp_dim=128, max_seq_len=1024, pad_id=tok.pad_id,
                    bos_id=tok.bos_id, eos_ids=tuple(tok.eos_token_ids))
  params = T.init_params(cfg, jax.random.key(args.seed))
  steps, batch = args.train_steps, args.batch
  sched = optax.warmup_cosine_decay_schedule(0.0, 3e-3, min(100, steps // 10 + 1), steps, 3e-4)
  opt = optax.adamw(sched, weight_decay=0.01)
  opt_state = opt.init(params)
  tail = digits + 2  # logits needed: "?key:"'s ':' predicts digit 1 ... last digit predicts eos

  @jax.jit
  def train_step(params, opt_state, tokens, mask):
    def loss_fn(p):
      hidden, _ = T.forward(p, tokens[:, :-1], config=cfg, return_hidden=True)
      logits = T.unembed(p, hidden[:, -tail:], config=cfg)
      targets, m = tokens[:, -tail:], mask[:, -tail:]
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
      return jnp.sum(nll * m) / jnp.sum(m)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(args.seed)
  t0 = time.time()
  losses = []
  for i in range(steps):
    tokens, mask = R.training_batch(tok, [R.make_example(rng, length=length, key_digits=digits)
                                          for _ in range(batch)])
    params, opt_state, loss = train_step(params, opt_state, tokens, mask)
    losses.append(float(loss))
    if i % 200 == 0 or i == steps - 1:
      _print(f"train step {i}: loss {np.mean(losses[-50:]):.3f}")
  out["train"] = dict(steps=steps, batch=batch, length=length, seconds=round(time.time() - t0, 1),
                      final_loss=float(np.mean(losses[-50:])))
  evals = R.make_examples(args.eval_size, seed=10_000 + args.seed, length=length,
                          key_digits=digits)
  prompts = [tok.encode(e.prompt) for e in evals]
  runs = [("full", cfg)]
  for top_k in args.top_ks:
    for cache in ((True, False) if top_k == args.top_ks[0] else (True,)):
      ts = TokenSelectConfig(top_k=top_k, n_init=4, n_local=max(8, args.chunk_size),
                             chunk_size=args.chunk_size, cache=cache)
      runs.append((f"ts k={top_k}{'' if cache else ' nocache'}",
                   cfg.replace(attention="tokenselect", tokenselect=ts)))
  out["accuracy"] = {}
  for name, c in runs:
    roll = sample(params, prompts, config=c, rng=jax.random.key(0), max_new_tokens=digits + 1,
                  temperature=0.0)
    texts = [tok.decode(np.asarray(r)[np.asarray(m) == 1], skip_special_tokens=True)
             for r, m in zip(roll.tokens, roll.mask)]
    acc = R.exact_match(texts, evals)
    out["accuracy"][name] = acc
    _print(f"{name}: accuracy {acc:.3f}  (selected tokens "
           f"{c.tokenselect.k_total if c.attention == 'tokenselect' else 'all'} "
           f"of {length + 1} prompt tokens)")
  print("\n| attention | selected / prompt tokens | exact match |")
  print("|---|---|---|")
  for name, c in runs:
    sel = c.tokenselect.k_total if c.attention == "tokenselect" else length + 1
    print(f"| {name} | {sel} / {length + 1} | {out['accuracy'][name]:.3f} |")
  return 0


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="CPU sizes (2k-8k context)")
  p.add_argument("--cpu-smoke", action="store_true", help="tiniest CPU sizes")
  p.add_argument("--quality", action="store_true", help="retrieval accuracy (CPU training)")
  p.add_argument("--layers", type=int, default=24, help="GPU model layers (Qwen2.5-0.5B: 24)")
  p.add_argument("--budget-s", type=float, default=1e9, help="stop starting sections after this")
  p.add_argument("--json", default=None, help="write every number here")
  p.add_argument("--train-steps", type=int, default=1500)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--length", type=int, default=96, help="retrieval prompt characters")
  p.add_argument("--eval-size", type=int, default=200)
  p.add_argument("--top-ks", type=int, nargs="+", default=[8, 2, 4, 16, 32])
  p.add_argument("--chunk-size", type=int, default=32, help="--quality prefill chunk")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  out: dict = {"argv": sys.argv[1:]}
  if args.quality:
    rc = quality(args, out)
  else:
    if args.quick or args.cpu_smoke:
      sz = cpu_sizes(args.cpu_smoke)
    else:
      if jax.default_backend() not in ("gpu", "cuda", "rocm"):
        print("no GPU: pass --quick or --cpu-smoke for the CPU sizes", file=sys.stderr)
        return 2
      sz = gpu_sizes(args.layers)
    rc = speed(sz, out, args.budget_s, args.json)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  _print("done")
  return 1 if rc else 0


if __name__ == "__main__":
  sys.exit(main())
