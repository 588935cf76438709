"""k-ε controllability of the quickstart model (spec §3(e), issue 18): can a few prepended
tokens make it start its answer with a chosen token?

  python benchmarks/analysis_control.py --workdir runs/quickstart   # a trained quickstart run
  python benchmarks/analysis_control.py --workdir W --num_pairs 100   # quicker

Pairs: x0 = a held-out prompt of the run ('12+7=' with its <bos>, as the model sees it),
y = the first token of the correct answer ("true"), and, as the contrast, y = a uniform random
allowed token ("random", same prompts). Search per pair (tokenrl.analysis.control):
ℓ = 0 if the greedy next token already is y, else exhaustive greedy back-generation for
lengths 1-3, then GCG at lengths 4 and 6 with small settings (top_k 16, 64 candidates,
20 iterations). Control prompts never use <pad>/<bos>/<eos>.

Reported: the ℓ distribution and ε̂(k) for k = 0..6 of both target kinds, the Spearman
correlation of the base loss (CE of y given x0 alone) with ℓ (∞ ranked last), the time of each
stage, and GCG's step time (ms per iteration at the batch used: pairs × candidates, compiled
beforehand). Expected [recon, spec §3(e)]: ε̂ falls with k; true answers are reachable more
often than random targets; base loss correlates positively with ℓ.
Writes benchmarks/results/analysis_control.{json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

GREEDY, GCG_LENGTHS, K_MAX = (1, 2, 3), (4, 6), 6
GCG = dict(top_k=16, batch_size=64, num_iters=20)


def rankdata(x: np.ndarray) -> np.ndarray:
  """Ranks 1..n, ties given their average rank (for Spearman's ρ)."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(1, len(x) + 1)
  for v in np.unique(x):
    sel = x == v
    ranks[sel] = ranks[sel].mean()
  return ranks


def spearman(a, b) -> float:
  ra, rb = rankdata(np.asarray(a, float)), rankdata(np.asarray(b, float))
  if ra.std() == 0 or rb.std() == 0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True,
                 help="a trained quickstart run (tokenrl train --config configs/quickstart.py "
                 "--workdir DIR, ~7 min on 2 cores)")
  p.add_argument("--num_pairs", type=int, default=200)
  p.add_argument("--pair_batch", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "analysis_control"),
                 help="output path without extension (.json and .png are written)")
  args = p.parse_args()
  load_before = os.getloadavg()
  t_start = time.perf_counter()

  import jax
  from tokenrl.analysis import control as C
  from tokenrl.analysis import control_loss as CL
  from tokenrl.analysis import gcg as G
  from tokenrl.commands import common as cmd_common
  from tokenrl.commands.control import plot_curve, special_ids, summarize
  from tokenrl.train.setup import encode_prompts

  loaded = cmd_common.load_model(workdir=args.workdir)
  tok, config, params = loaded.tokenizer, loaded.config, loaded.params
  examples = loaded.run.eval_examples[:args.num_pairs]
  x0s = encode_prompts(loaded.cfg, tok, examples)
  vocab = int(params["embed"].shape[0])
  blacklist = special_ids(tok, vocab)
  allowed = np.setdiff1d(np.arange(vocab), blacklist)
  rng = np.random.default_rng(args.seed)
  targets = {
      "true": [tok.encode(str(ex["answer"]), add_special_tokens=False)[:1] for ex in examples],
      "random": [[int(rng.choice(allowed))] for _ in examples],
  }
  # Rows per model call: every candidate of a pair batch in one call on this small model.
  chunk = args.pair_batch * max(GCG["batch_size"], vocab)
  settings = dict(greedy_lengths=GREEDY, gcg_lengths=GCG_LENGTHS, blacklist=blacklist,
                  chunk=chunk, pair_batch=args.pair_batch, **GCG)

  report: dict = {}
  curves = {}
  for kind, ys in targets.items():
    stages = {}
    t0 = time.perf_counter()
    results = C.backoff_control_batch(
        params, x0s, ys, config=config, rng=jax.random.key(args.seed),
        on_stage=lambda name, n, s: stages.__setitem__(name, {"pairs": n, "seconds": round(s, 2)}),
        **settings)
    seconds = time.perf_counter() - t0
    lengths = np.array([r.length for r in results])
    base = np.array([r.base_loss for r in results])
    dist, eps = summarize(lengths, base, K_MAX)
    curves[f"{kind} answers ({len(results)} pairs)" if kind == "true"
           else f"random targets ({len(results)} pairs)"] = np.array([e for _, e in eps])
    ranked = np.where(lengths == C.NOT_FOUND, K_MAX + 1, lengths)
    examples_found = [
        {"x0": tok.decode(x0), "y": tok.decode(y), "control": tok.decode(r.prompt),
         "length": r.length}
        for x0, y, r in zip(x0s, ys, results) if r.length > 0][:8]
    report[kind] = {
        "pairs": len(results),
        "length_distribution": [{"length": d[0], "pairs": d[1], "share": round(d[2], 4),
                                 "mean_base_loss": round(d[3], 4)} for d in dist],
        "epsilon": [round(e, 4) for _, e in eps],
        "spearman_base_loss_vs_length": round(spearman(base, ranked), 4),
        "stages": stages,
        "seconds": round(seconds, 1),
        "examples": examples_found,
    }
    timing = ", ".join(f"{k} {v['pairs']} pairs {v['seconds']} s" for k, v in stages.items())
    print(f"\n{kind} targets: {len(results)} pairs, {seconds:.1f} s ({timing})")
    print(cmd_common.format_table(["ℓ", "pairs", "share", "mean base loss"], dist))
    print("ε̂(k), k = 0..6:", " ".join(f"{e:.3f}" for _, e in eps))
    print(f"Spearman(base loss, ℓ) = {report[kind]['spearman_base_loss_vs_length']:.3f}")

  # GCG step time at the batch the search used (pair_batch pairs × 64 candidates), compiled
  # above: time whole runs of num_iters iterations and divide.
  step_ms = {}
  full = CL.pack_pairs(x0s, targets["random"], vocab, max_prompt=max(GCG_LENGTHS))
  pairs = full.take(np.arange(args.pair_batch) % len(full))  # the search's packed width
  for k in GCG_LENGTHS:
    init = G.random_prompts(jax.random.key(1), allowed, (args.pair_batch, k))
    run = lambda: G.gcg_batch(params, pairs, apply=CL.ModelLogits(config),
                              rng=jax.random.key(2), init=init, allowed=allowed, chunk=chunk,
                              **GCG)
    run()  # compiled already unless the search never reached GCG at this k
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    step_ms[k] = round(1000 * min(times) / GCG["num_iters"], 2)
    print(f"GCG k={k}: {step_ms[k]:.1f} ms/iteration at {args.pair_batch} pairs × "
          f"{GCG['batch_size']} candidates (min of 3 runs of {GCG['num_iters']} iterations)")

  wall = time.perf_counter() - t_start
  git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True,
                                  text=True).stdout.strip()
  # This script or the library it measures differing from HEAD makes the commit id a lie.
  dirty = git("status", "--porcelain", "--", "benchmarks/analysis_control.py",
              "tokenrl/analysis/control*.py", "tokenrl/analysis/gcg.py", "tokenrl/models")
  commit = git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if dirty else "")
  report = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "hardware": f"{common.cpu_model()} ({os.cpu_count()} cores visible), {platform.system()}",
      "commit": commit,
      "load_average_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
      "workdir": args.workdir,
      "model": {"dim": config.dim, "layers": config.num_layers, "vocab": vocab},
      "settings": {"greedy_lengths": GREEDY, "gcg_lengths": GCG_LENGTHS, **GCG,
                   "pair_batch": args.pair_batch, "blacklist": blacklist, "seed": args.seed},
      "gcg_ms_per_iteration": {str(k): v for k, v in step_ms.items()},
      "gcg_batch": f"{args.pair_batch} pairs x {GCG['batch_size']} candidates",
      "wall_seconds": round(wall, 1),
      **report,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  plot_curve(curves, args.out + ".png",
             f"quickstart model: k-ε controllability (greedy 1-3, GCG 4, 6), "
             f"{len(x0s)} held-out prompts")
  print(f"\nwall {wall:.0f} s; wrote {args.out}.json and {args.out}.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
