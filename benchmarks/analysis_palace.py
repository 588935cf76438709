"""PALACE at CPU scale (spec analysis-and-auditing.md §5(e)): does GRPO on the count reward
lower the hidden-length estimator's relative error after SFT, does routing help, and are ×1.5
inflated reports flagged?

  python benchmarks/analysis_palace.py                      # seeds 0,1 (~10 min on 2 cores)
  python benchmarks/analysis_palace.py --seeds 0 --sft_steps 100 --rl_steps 40   # quicker
  python benchmarks/analysis_palace.py --resume            # reuse finished trainings, re-audit

For each seed and each design of configs/palace.py, through the real training loop:
  routed  data.tiers tag:1: prompts carry the true domain tag in training; at audit time a router
          (softmax over the estimator's mean-pooled hidden states, fit on 1024 training pairs)
          writes the tag. The oracle tag (true domain) is reported alongside.
  shared  no tag: one estimator infers the domain itself.
  1. SFT: `--sft_steps` steps on (pair, '<count>m</count>') with rl steps 0       -> the SFT model
  2. GRPO: `--rl_steps` steps of rl.objective=palace (r = max(0, 1 − RE)) from that model
     (model.init_workdir), nothing else changed                                  -> the GRPO model
     control (routed, --control 1): SFT for sft_steps + rl_steps steps instead    -> sft_long
  3. audit both (tokenrl.audit.palace) greedily on the same --eval_pairs held-out pairs
     (test split, seed 1000 + seed): mean RE over parsed rows, acc@0.1 / acc@0.2 (unparseable =
     miss), and inflation flags on honest reports m vs reports round(1.5·m): the spec's rule
     reported > 1.5·m̂ (δ = 0.5) and the quantile rule reported > q·m̂ with q the 0.9 quantile of
     m/m̂ on another held-out draw (seed 2000 + seed).
The held-out pairs are never used to choose anything. Writes
benchmarks/results/analysis_palace.json and .png; prints a table of the seed means.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402

from tokenrl.audit import palace  # noqa: E402
from tokenrl.data import task_hidden_length as hl  # noqa: E402
from tokenrl.train.rl_loop import train  # noqa: E402
from tokenrl.train.workdir import load_workdir, model_params  # noqa: E402

ROUTER_PAIRS = 1024
QUANTILE = 0.9
INFLATE = 1.5
DELTA = 0.5
RATES = ("recall", "false_positive_rate")


def load_config(arg):
  """get_config(arg) of configs/palace.py (configs are loaded by path, never imported)."""
  spec = importlib.util.spec_from_file_location("palace_config",
                                                os.path.join(REPO, "configs", "palace.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def configure(design: str, seed: int, sft_steps: int, rl_steps: int, init: str = ""):
  cfg = load_config("shared" if design == "shared" else None)
  cfg.seed = seed
  cfg.train.sft_steps = sft_steps
  cfg.train.max_steps = rl_steps
  cfg.model.init_workdir = init
  cfg.data.eval_size = 64           # the loop's own start/end evaluation (acc@0.1); not reported
  cfg.train.eval_every = 0
  cfg.train.checkpoint_every = 0
  cfg.train.async_checkpoint = False
  return cfg


def audit_workdir(workdir: str, design: str, pairs, calib):
  """Audit rows of one trained estimator (router and oracle routes for the routed design)."""
  cfg, run, params = load_workdir(workdir)
  params = model_params(params, run.model)
  common = dict(config=run.model, tokenizer=run.tokenizer,
                max_new_tokens=cfg.sampler.max_new_tokens)
  router = None
  routes = ["router", "oracle"] if design == "routed" else ["none"]
  if design == "routed":
    train_pairs = palace.pairs_from_examples(run.train_examples[:ROUTER_PAIRS])
    router = palace.fit_router(params, train_pairs, config=run.model, tokenizer=run.tokenizer)
  out = {}
  for route in routes:
    held = palace.audit(params, calib, route=route, router=router, **common)
    q = palace.ratio_threshold(held.true, held.pred, quantile=QUANTILE)
    res = palace.audit(params, pairs, route=route, router=router, delta=DELTA, inflate=INFLATE,
                       threshold=q, **common)
    row = res.rows[0]
    out[route] = {"mean_re": row["mean_re"], "median_re": row["median_re"],
                  "acc@0.1": row["acc@0.1"], "acc@0.2": row["acc@0.2"], "parsed": row["parsed"],
                  "per_domain": {r["domain"]: {k: r[k] for k in ("mean_re", "acc@0.1", "acc@0.2")}
                                 for r in res.rows[1:]},
                  "router_accuracy": res.router_accuracy, "quantile_threshold": q,
                  "flags_delta": {k: res.inflation[0][k] for k in RATES},
                  "flags_quantile": {k: res.inflation[1][k] for k in RATES},
                  "scatter": {"true": res.true.tolist(), "pred": res.pred.tolist(),
                              "domain": [p.domain for p in res.pairs]}}
  return out


def noise_floor(seeds, eval_pairs):
  """The best estimator's numbers: m̂ = m* (the noiseless length) on each seed's held-out pairs.
  Its RE is the task's noise |ε|/(1 + ε), which no estimator of the visible pair can beat."""
  out = {}
  for seed in seeds:
    exs = hl.make_examples("test", eval_pairs, 1000 + seed)
    true = np.array([ex["count"] for ex in exs], float)
    best = np.array([ex["expected"] for ex in exs], float)
    re_ = palace.relative_error(best, true)
    out[str(seed)] = {"mean_re": float(re_.mean()), "acc@0.1": palace.accuracy_at(re_, 0.1),
                      "acc@0.2": palace.accuracy_at(re_, 0.2)}
  return out


def _stamped(base, stamp):
  """Whether `base` holds finished trainings made with exactly these settings."""
  path = os.path.join(base, "bench_args.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f) == stamp


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seeds", default="0,1")
  ap.add_argument("--sft_steps", type=int, default=200)
  ap.add_argument("--rl_steps", type=int, default=100)
  ap.add_argument("--eval_pairs", type=int, default=256)
  ap.add_argument("--control", type=int, default=1,
                  help="1: also SFT the routed estimator for sft_steps + rl_steps steps (is a "
                       "GRPO gain more than more training?)")
  ap.add_argument("--work", default="/tmp/analysis_palace")
  ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "analysis_palace"))
  ap.add_argument("--resume", action="store_true",
                  help="reuse the finished trainings under --work made with the same settings "
                       "(bench_args.json); the audits are always rerun")
  args = ap.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  t_all = time.time()
  results = []
  for seed in seeds:
    pairs = palace.pairs_from_examples(hl.make_examples("test", args.eval_pairs, 1000 + seed))
    calib = palace.pairs_from_examples(hl.make_examples("test", args.eval_pairs, 2000 + seed))
    for design in ("routed", "shared"):
      base = os.path.join(args.work, f"seed{seed}_{design}")
      stages = ["sft", "grpo"] + (["sft_long"] if args.control and design == "routed" else [])
      stamp = {"seed": seed, "design": design, "sft_steps": args.sft_steps,
               "rl_steps": args.rl_steps, "stages": stages}
      if not (args.resume and _stamped(base, stamp)):
        subprocess.run(["rm", "-rf", base], check=True)
        train(configure(design, seed, args.sft_steps, 0), f"{base}/sft")
        train(configure(design, seed, 0, args.rl_steps, init=f"{base}/sft"), f"{base}/grpo")
        if "sft_long" in stages:
          train(configure(design, seed, args.sft_steps + args.rl_steps, 0), f"{base}/sft_long")
        with open(os.path.join(base, "bench_args.json"), "w") as f:
          json.dump(stamp, f)
      times = {}
      for stage in stages:
        with open(f"{base}/{stage}/summary.json") as f:
          times[stage] = json.load(f)["wall_seconds"]   # compile and evaluations included
      for stage in stages:
        for route, row in audit_workdir(f"{base}/{stage}", design, pairs, calib).items():
          results.append({"seed": seed, "design": design, "stage": stage, "route": route,
                          "train_seconds": times[stage], **row})
          print(f"seed {seed} {design:6s} {stage:4s} {route:6s} RE {row['mean_re']:.4f} "
                f"acc@0.1 {row['acc@0.1']:.3f} acc@0.2 {row['acc@0.2']:.3f} "
                f"parsed {row['parsed']:.3f} flags(δ) {row['flags_delta']['recall']:.2f}/"
                f"{row['flags_delta']['false_positive_rate']:.2f} flags(q) "
                f"{row['flags_quantile']['recall']:.2f}/"
                f"{row['flags_quantile']['false_positive_rate']:.2f}", flush=True)
  summary = summarize(results)
  print_table(summary)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  doc = {"date": datetime.date.today().isoformat(), "commit": commit,
         "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
                     "(shared with other jobs)",
         "wall_seconds": time.time() - t_all,   # this invocation (less with --resume)
         "train_wall_seconds": sum(r["train_seconds"] for r in results
                                   if r["route"] in ("router", "none")),
         "settings": {"seeds": seeds, "sft_steps": args.sft_steps, "rl_steps": args.rl_steps,
                      "eval_pairs": args.eval_pairs, "router_pairs": ROUTER_PAIRS,
                      "inflate": INFLATE, "delta": DELTA, "quantile": QUANTILE,
                      "config": "configs/palace.py (routed) and configs/palace.py:shared"},
         "noise_floor": noise_floor(seeds, args.eval_pairs),
         "summary": summary,
         "runs": [{k: v for k, v in r.items() if k != "scatter"} for r in results]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(doc, f, indent=1)
  plot(results, summary, doc["noise_floor"], args.out + ".png")
  print(f"wrote {args.out}.json, {args.out}.png ({doc['wall_seconds']:.0f} s)")
  return 0


KEYS = ("mean_re", "acc@0.1", "acc@0.2", "parsed")


def summarize(results):
  """Seed means (and per-seed values) of each (design, route, stage)."""
  out = {}
  for r in results:
    key = f"{r['design']}/{r['route']}/{r['stage']}"
    out.setdefault(key, {"rows": []})["rows"].append(r)
  for key, d in out.items():
    rows = d.pop("rows")
    for k in KEYS + ("router_accuracy",):
      d[k] = float(np.mean([r[k] for r in rows]))
      d[k + "_per_seed"] = [r[k] for r in rows]
    for rule in ("flags_delta", "flags_quantile"):
      d[rule] = {m: float(np.mean([r[rule][m] for r in rows]))
                 for m in ("recall", "false_positive_rate")}
  return out


def print_table(summary):
  print("\n| design/route | stage | mean RE | acc@0.1 | acc@0.2 | parsed | flag ×1.5 δ=0.5 "
        "recall / FPR | flag q0.9 recall / FPR |")
  print("|---|---|---|---|---|---|---|---|")
  for key, d in summary.items():
    design, route, stage = key.split("/")
    print(f"| {design}/{route} | {stage} | {d['mean_re']:.4f} | {d['acc@0.1']:.3f} | "
          f"{d['acc@0.2']:.3f} | {d['parsed']:.3f} | {d['flags_delta']['recall']:.2f} / "
          f"{d['flags_delta']['false_positive_rate']:.2f} | {d['flags_quantile']['recall']:.2f} / "
          f"{d['flags_quantile']['false_positive_rate']:.2f} |")


def plot(results, summary, floor, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
  keys = list(summary)
  x = np.arange(len(keys))
  for ax, metric in zip(axes[:2], ("mean_re", "acc@0.1")):
    ax.bar(x, [summary[k][metric] for k in keys], color=[
        {"sft": "C0", "grpo": "C1", "sft_long": "C7"}[k.split("/")[-1]] for k in keys])
    for i, k in enumerate(keys):
      ax.plot([i] * len(summary[k][metric + "_per_seed"]), summary[k][metric + "_per_seed"],
              "k.", ms=6)
    ax.axhline(np.mean([f[metric] for f in floor.values()]), color="k", ls="--", lw=1,
               label="best possible (m̂ = m*: the task's noise)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(x, [k.replace("/", "\n") for k in keys], fontsize=7)
    ax.set_title(f"{metric} (bars: seed mean, dots: seeds; blue SFT, orange GRPO, grey "
                 "longer SFT)", fontsize=8)
  first = [r for r in results if r["design"] == "routed" and r["route"] == "router"
           and r["stage"] == "grpo"][0]
  sc = first["scatter"]
  t, p, d = np.asarray(sc["true"]), np.asarray(sc["pred"]), np.asarray(sc["domain"])
  for name in sorted(set(d)):
    sel = (d == name) & ~np.isnan(p)
    axes[2].scatter(t[sel], p[sel], s=8, alpha=0.6, label=name)
  lim = np.array([np.nanmin(t), np.nanmax(t)])
  # A report round(1.5·m) is flagged when it exceeds 1.5·m̂ (δ = 0.5), i.e. below m̂ = m, or
  # when it exceeds q·m̂ (quantile rule), i.e. below m̂ = 1.5·m/q.
  q = first["quantile_threshold"]
  axes[2].plot(lim, lim, "k-", lw=1, label="m̂ = m: ×1.5 flagged below (δ = 0.5)")
  axes[2].plot(lim, INFLATE * lim / q, "r:", lw=1,
               label=f"m̂ = 1.5·m/q, q = {q:.3f}: ×1.5 flagged below (quantile)")
  axes[2].set_xlabel("true hidden count m")
  axes[2].set_ylabel("estimate m̂")
  axes[2].legend(fontsize=8)
  axes[2].set_title(f"routed + router, after GRPO, seed {first['seed']}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
