"""Every RL objective on the embedded arithmetic task: same budget, same seeds, same evaluation.

  python benchmarks/objectives.py                      # all objectives x 3 seeds (< 45 min, 2 cores)
  python benchmarks/objectives.py --quick              # 2 seeds x 40 steps, a few objectives
  python benchmarks/objectives.py --methods grpo,thr --seeds 0 --steps 60

Protocol (identical for every objective):
* Per seed, one SFT warm-up of configs/quickstart.py (its warm-up: until 40% accuracy on the
  dev split, at most 2000 steps; the results in RESULTS.md of 2026-11-29 were measured with the
  earlier fixed 400-step warm-up), the same params for every objective of that seed, written once to WORK/sft_seed<k>; each objective's run starts from it
  (`model.init_workdir`).
* Then `--steps` RL steps (default 100) with the quickstart's RL settings except the batch
  (`--batch_size` prompts, default 16, x 8 samples; AdamW 5e-4 cosine, T = 6 new tokens); the
  objective's own preset and section defaults, nothing tuned.
* Held-out greedy accuracy on the same 256 problems every `steps/4` steps; "steps to SFT + x" is
  the first evaluation step whose accuracy >= that seed's post-SFT accuracy + --target_gain
  (default 5 points), "-" if never. The SFT starting point differs a lot between seeds, so the
  gain over it is the column to compare methods by.
* tokens/s = completion tokens generated / wall seconds of the RL steps (rollout + update +
  method overhead), so methods that sample more (hints, budgets, multi-turn) pay for it.
A method may define `benchmark_overrides(cfg)` when it needs another task (POAD's multi-token
actions); its row is then marked with the task it ran on and is not comparable to the others.

--task arith_cot (issue 16): the same protocol on the worked-trace reasoning task of
configs/arith_cot.py (its SFT warm-up to its own dev target, then --steps RL steps with its RL
settings: T = its max_new_tokens), for the objectives designed for thinking traces: grpo (the
reference), brpo, rmt, mrt by default. Their thinking-length knobs are sized to the task's traces
(`ARITH_COT_OVERRIDES`: the defaults are for 8000-token R1 traces and never bind here); nothing
else is tuned. Writes objectives_arith_cot.json / .png.

Writes benchmarks/results/objectives.json and benchmarks/results/objectives.png (held-out
accuracy vs RL step, mean over seeds) and prints the markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


TASK_CONFIGS = {"arith": "quickstart", "arith_cot": "arith_cot"}  # --task -> configs/<name>.py
TASK = "arith"  # set by main() from --task
# Thinking-length knobs sized to arith_cot's traces (configs/arith_cot.py: <= 72 new tokens,
# mean thought ~19 tokens): the method defaults (BRPO's 8000 thinking tokens, RMT's 800-token
# budget) never bind on them; and the context each method's extra rows need (the SFT model has
# RoPE positions only, so a longer model.max_seq_len changes no number, only what fits):
# BRPO's summary rows = prompt bucket of (prompt + 64 thinking + '..#') 128 + an 8-token summary;
# RMT's NTP rows = bucket of prompt + 71-token answer + EOS; MRT forces the answer with the
# task's own delimiter '#' (its termination text) and 8 tokens (<= 5 digits, EOS) after a
# 128-token context.
ARITH_COT_OVERRIDES = {
    "brpo": {"rl.brpo.max_thinking_tokens": 64, "rl.brpo.n_budget_support": 4,
             "rl.brpo.n_summary": 2, "rl.brpo.summary_max_tokens": 8, "model.max_seq_len": 136},
    "rmt": {"rl.rmt.budget_init": 72, "model.max_seq_len": 128},
    "mrt": {"rl.mrt.termination_text": "#", "rl.mrt.answer_tokens": 8, "model.max_seq_len": 136},
}


def quickstart(arg=None):
  """The base config of the benchmark's task (configs/quickstart.py or configs/arith_cot.py)."""
  name = TASK_CONFIGS[TASK]
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def all_objectives() -> list[str]:
  from tokenrl.methods import METHODS
  from tokenrl.objectives.presets import OBJECTIVES
  rl = [n for n, m in sorted(METHODS.items()) if not getattr(m, "pairwise", False)]
  return [n for n in OBJECTIVES if n not in rl] + rl


def bench_config(name: str, seed: int, steps: int, sft_dir: str, eval_size: int,
                 batch_size: int, learning_rate: float):
  """The run config of one (objective, seed): identical for every objective but its name."""
  from tokenrl.methods import get_method
  cfg = quickstart()
  cfg.seed = seed
  cfg.rl.objective = name
  cfg.model.init_workdir = sft_dir
  cfg.train.sft_steps = 0
  cfg.train.max_steps = steps
  cfg.train.eval_every = max(1, steps // 4)
  cfg.train.eval_num_samples = 0
  cfg.train.checkpoint_every = 0
  cfg.data.eval_size = eval_size
  cfg.data.batch_size = batch_size
  cfg.optimizer.learning_rate = learning_rate
  cfg.optimizer.warmup_steps = min(cfg.optimizer.warmup_steps, max(1, steps // 10))
  method = get_method(name)
  if TASK == "arith_cot":
    for key, value in ARITH_COT_OVERRIDES.get(name, {}).items():
      section, field = key.rsplit(".", 1)
      node = cfg
      for part in section.split("."):
        node = node[part]
      node[field] = value
  elif hasattr(method, "benchmark_overrides"):
    method.benchmark_overrides(cfg)
  return cfg


def result_from_workdir(workdir: str, base_task: str | None = None) -> dict:
  """The benchmark record of a finished run directory (summary.json + metrics.jsonl)."""
  from tokenrl.train.metrics import read_metrics
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  base_task = base_task or TASK
  rl = [r for r in read_metrics(workdir) if r["phase"] == "rl"]
  n_rows = cfg["data"]["batch_size"] * cfg["rl"]["num_generations"]
  tokens = sum(r["completion_length"] * n_rows for r in rl)
  step_s = sum(r["step_seconds"] for r in rl)
  return {
      "objective": summary["objective"], "seed": cfg["seed"], "task": cfg["data"]["task"],
      "comparable": cfg["data"]["task"] == base_task, "workdir": workdir,
      "baseline_accuracy": summary["baseline_accuracy"], "final_accuracy": summary["final_accuracy"],
      "evals": [(e["step"], e["accuracy"]) for e in summary["evals"]],
      "reward_curve": [r["reward"] for r in rl],
      "tokens_per_second": tokens / max(step_s, 1e-9), "wall_seconds": summary["wall_seconds"],
  }


def run_one(name: str, seed: int, steps: int, sft_dir: str, workdir: str, eval_size: int,
            batch_size: int, learning_rate: float) -> dict:
  from tokenrl.train.rl_loop import train
  cfg = bench_config(name, seed, steps, sft_dir, eval_size, batch_size, learning_rate)
  train(cfg, workdir)
  return result_from_workdir(workdir)


def _matches(workdir: str, cfg) -> bool:
  """A finished run directory made with exactly `cfg` (so --resume can reuse it)."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
    return (os.path.exists(os.path.join(workdir, "summary.json"))
            and saved == json.loads(cfg.to_json_best_effort()))
  except (OSError, ValueError):
    return False


def sft_warmup(seed: int, workdir: str) -> str:
  from tokenrl.train.rl_loop import train
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return workdir
  cfg = quickstart()
  cfg.seed = seed
  cfg.train.max_steps = 0
  cfg.train.eval_num_samples = 0
  cfg.train.checkpoint_every = 0
  cfg.data.eval_size = 64
  train(cfg, workdir)
  return workdir


def steps_to(evals, target):
  for step, acc in evals:
    if acc >= target:
      return step
  return None


def _mean_std(xs):
  return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def table(results: list[dict], target_gain: float) -> str:
  """Markdown table: final accuracy and gain over the seed's own SFT start (mean ± std over
  seeds), RL steps until the held-out accuracy first reaches SFT + target_gain (per seed),
  completion tokens per second of the RL steps."""
  by = {}
  for r in results:
    by.setdefault(r["objective"], []).append(r)
  rows = ["| objective | held-out acc. (mean ± std) | gain over SFT (mean ± std) | steps to SFT "
          f"+{target_gain * 100:.0f} pt (per seed) | tokens/s | seeds |",
          "|---|---|---|---|---|---|"]
  for name, rs in by.items():
    acc = _mean_std([r["final_accuracy"] for r in rs])
    gain = _mean_std([r["final_accuracy"] - r["baseline_accuracy"] for r in rs])
    hit = [steps_to(r["evals"][1:], r["baseline_accuracy"] + target_gain - 1e-9) for r in rs]
    hit_s = ", ".join("-" if h is None else str(h) for h in hit)
    tps = statistics.mean(r["tokens_per_second"] for r in rs)
    label = name if rs[0]["comparable"] else f"{name} ({rs[0]['task']}, not comparable)"
    rows.append(f"| {label} | {acc[0]:.3f} ± {acc[1]:.3f} | {gain[0]:+.3f} ± {gain[1]:.3f} | "
                f"{hit_s} | {tps:,.0f} | {len(rs)} |")
  return "\n".join(rows)


def plot(results: list[dict], path: str) -> None:
  """Two panels: training reward per RL step (mean over seeds, moving average of 10) and the
  held-out greedy accuracy at the evaluation steps (mean over seeds)."""
  from matplotlib.figure import Figure
  import numpy as np
  by = {}
  for r in results:
    by.setdefault(r["objective"], []).append(r)
  fig = Figure(figsize=(14, 6))
  ax_r, ax_a = fig.subplots(1, 2)
  for i, (name, rs) in enumerate(by.items()):
    style = dict(color=f"C{i % 10}", linestyle="-" if i < 10 else "--")
    n = min(len(r["reward_curve"]) for r in rs)
    reward = np.mean([r["reward_curve"][:n] for r in rs], axis=0)
    w = 10
    if n >= w:
      ax_r.plot(np.arange(w - 1, n), np.convolve(reward, np.ones(w) / w, mode="valid"),
                label=name, **style)
    steps = [s for s, _ in rs[0]["evals"]]
    accs = np.array([[a for _, a in r["evals"]] for r in rs if len(r["evals"]) == len(steps)])
    ax_a.plot(steps, accs.mean(0), marker="o" if i < 10 else "s", label=name, **style)
  ax_r.set_xlabel("RL step")
  ax_r.set_ylabel("training reward (mean over seeds, moving average of 10)")
  ax_a.set_xlabel("RL step")
  ax_a.set_ylabel("held-out greedy accuracy (mean over seeds)")
  for ax in (ax_r, ax_a):
    ax.grid(alpha=0.3)
  ax_a.legend(ncol=3, fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--methods", default="", help="comma list (default: every RL objective)")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=100, help="RL steps per run (same for all)")
  parser.add_argument("--eval_size", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16, help="prompts per RL step (x8 samples)")
  parser.add_argument("--learning_rate", type=float, default=5e-4, help="RL peak learning rate")
  parser.add_argument("--target_gain", type=float, default=0.05,
                      help="'steps to': first eval >= the seed's SFT accuracy + this")
  parser.add_argument("--quick", action="store_true", help="2 seeds x 40 steps, 4 objectives")
  parser.add_argument("--resume", action="store_true",
                      help="reuse finished runs in --work made with exactly the same config")
  parser.add_argument("--task", default="arith", choices=sorted(TASK_CONFIGS),
                      help="arith: configs/quickstart.py; arith_cot: configs/arith_cot.py")
  parser.add_argument("--work", default="")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args()
  global TASK
  TASK = args.task
  suffix = "" if TASK == "arith" else f"_{TASK}"
  args.work = args.work or f"/tmp/tokenrl_objectives{suffix}"
  if TASK == "arith_cot" and not args.methods:
    args.methods = "grpo,brpo,rmt,mrt"
  if args.quick:
    args.seeds, args.steps = "0,1", 40
    args.methods = args.methods or "grpo,dapo,grpo_neg,thr"
  names = args.methods.split(",") if args.methods else all_objectives()
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  results = []
  for seed in seeds:
    sft = sft_warmup(seed, os.path.join(args.work, f"sft_seed{seed}"))
    for name in names:
      if args.resume:
        cfg = bench_config(name, seed, args.steps, sft, args.eval_size, args.batch_size,
                           args.learning_rate)
        done = sorted(d for d in glob.glob(os.path.join(args.work, f"{name}_seed{seed}_*"))
                      if _matches(d, cfg))
        if done:
          results.append(result_from_workdir(done[-1]))
          print(f"{name:14s} seed {seed}: reused {done[-1]}", flush=True)
          continue
      wd = os.path.join(args.work, f"{name}_seed{seed}_{int(time.time())}")
      try:
        r = run_one(name, seed, args.steps, sft, wd, args.eval_size, args.batch_size,
                    args.learning_rate)
      except Exception as e:  # a broken objective is reported, the table still comes out
        print(f"!! {name} seed {seed} failed: {type(e).__name__}: {e}", flush=True)
        continue
      results.append(r)
      print(f"{name:14s} seed {seed}: {r['baseline_accuracy']:.3f} -> {r['final_accuracy']:.3f} "
            f"({r['wall_seconds']:.0f} s)", flush=True)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  meta = {"date": datetime.date.today().isoformat(), "commit": commit,
          "batch_size": args.batch_size, "learning_rate": args.learning_rate,
          "load_average_end": os.getloadavg(),
          "machine": f"{platform.machine()}, {os.cpu_count()} cores", "seeds": seeds,
          "task": TASK, "steps": args.steps, "eval_size": args.eval_size, "target_gain": args.target_gain,
          "total_seconds": time.time() - start}
  with open(os.path.join(args.out, f"objectives{suffix}.json"), "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=1)
  if results:
    plot(results, os.path.join(args.out, f"objectives{suffix}.png"))
  print(f"\n{meta}\n")
  print(table(results, args.target_gain))


if __name__ == "__main__":
  main()
