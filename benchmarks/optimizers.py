"""AdamW vs Lion vs Lion-κ on the embedded RL task: same SFT start, same RL budget, 3 seeds.

  python benchmarks/optimizers.py [--seeds 3] [--rl_steps 200] [--quick] [--out runs/bench_opt]

One SFT warm-up (configs/quickstart.py) is trained once; every (optimizer, seed) run then
resumes from a copy of that checkpoint and does the same number of GRPO steps with its own
optimizer and seed (sampling and data order), so the comparison isolates the optimizer.
Prints a markdown table (final held-out greedy accuracy mean ± std over seeds, mean train
reward over the last quarter of steps) and writes OUT/optimizers.png (mean reward curves).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> optimizer overrides. Learning rates follow each method's usual ratio to AdamW
# (Lion: ~3x smaller with ~3x the weight decay, per the Lion paper); l2 uses rescale=True so
# the Lion learning rate transfers (direction scaled by sqrt(n)).
OPTIMIZERS = {
    "adamw": dict(name="adamw", learning_rate=3e-4, b2=0.999, weight_decay=0.01),
    "lion": dict(name="lion", learning_rate=1e-4, b2=0.99, weight_decay=0.03),
    "lion_kappa:huber": dict(name="lion_kappa", kappa="huber", kappa_delta=1e-3,
                             learning_rate=1e-4, b2=0.99, weight_decay=0.03),
    "lion_kappa:l2": dict(name="lion_kappa", kappa="l2", kappa_rescale=True,
                          learning_rate=1e-4, b2=0.99, weight_decay=0.03),
}


def _config(arg=None):
  spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--rl_steps", type=int, default=200)
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  parser.add_argument("--batch_size", type=int, default=16, help="prompts per GRPO step (B)")
  parser.add_argument("--eval_size", type=int, default=256)
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_optimizers"))
  parser.add_argument("--quick", action="store_true", help="1 seed, 20 RL steps, tiny SFT")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from tokenrl.train.metrics import read_metrics
  from tokenrl.train.rl_loop import train

  seeds = 1 if args.quick else args.seeds
  rl_steps = 20 if args.quick else args.rl_steps
  names = args.optimizers.split(",")
  unknown = [n for n in names if n not in OPTIMIZERS]
  if unknown:
    raise SystemExit(f"unknown optimizers {unknown}; known: {list(OPTIMIZERS)}")
  if os.path.exists(args.out):
    shutil.rmtree(args.out)
  sft_dir = os.path.join(args.out, "sft")
  cfg = _config()
  cfg.data.eval_size = args.eval_size
  if args.quick:
    cfg.train.sft_steps = 50
    cfg.data.eval_size = 64
  cfg.train.max_steps = 0
  cfg.train.checkpoint_every = 0
  t0 = time.time()
  sft = train(cfg, sft_dir)
  print(f"SFT warm-up: {cfg.train.sft_steps} steps, held-out accuracy "
        f"{sft['baseline_accuracy']:.3f} ({time.time() - t0:.0f} s)", flush=True)

  results: dict[str, list[dict]] = {}
  for name in names:
    for seed in range(seeds):
      workdir = os.path.join(args.out, f"{name.replace(':', '_')}_seed{seed}")
      shutil.copytree(sft_dir, workdir)
      run_cfg = _config()
      run_cfg.seed = seed
      run_cfg.train.sft_steps = cfg.train.sft_steps
      run_cfg.data.eval_size = cfg.data.eval_size
      run_cfg.data.batch_size = args.batch_size
      run_cfg.train.max_steps = rl_steps
      run_cfg.train.checkpoint_every = 0
      for key, value in OPTIMIZERS[name].items():
        run_cfg.optimizer[key] = value
      t1 = time.time()
      summary = train(run_cfg, workdir)
      rewards = [r["reward"] for r in read_metrics(workdir) if r["phase"] == "rl"]
      results.setdefault(name, []).append({"final": summary["final_accuracy"], "rewards": rewards,
                                           "seconds": time.time() - t1})
      print(f"{name} seed {seed}: final accuracy {summary['final_accuracy']:.3f}", flush=True)

  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  print(f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, commit {commit}; SFT baseline {sft['baseline_accuracy']:.3f}, "
        f"{rl_steps} GRPO steps, {seeds} seeds\n")
  print("| optimizer | final held-out accuracy (mean ± std) | gain over SFT | train reward, last 25% of steps | s/run |")
  print("|---|---|---|---|---|")
  for name, runs in results.items():
    finals = np.array([r["final"] for r in runs])
    tail = np.mean([np.mean(r["rewards"][-max(1, len(r["rewards"]) // 4):]) for r in runs])
    print(f"| {name} | {finals.mean():.3f} ± {finals.std():.3f} | {finals.mean() - sft['baseline_accuracy']:+.3f} "
          f"| {tail:.3f} | {np.mean([r['seconds'] for r in runs]):.0f} |")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, runs in results.items():
    curve = np.mean([r["rewards"] for r in runs], axis=0)
    window = max(1, len(curve) // 20)
    ax.plot(np.convolve(curve, np.ones(window) / window, mode="valid"), label=name)
  ax.set_xlabel("GRPO step")
  ax.set_ylabel(f"train reward (mean of {seeds} seeds, smoothed)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(args.out, "optimizers.png")
  fig.savefig(path, dpi=100)
  print(f"\ncurve: {path}")
  with open(os.path.join(args.out, "optimizers.json"), "w") as f:
    json.dump({k: [{"final": r["final"]} for r in v] for k, v in results.items()}, f)


if __name__ == "__main__":
  main()
