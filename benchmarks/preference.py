"""DPO vs TGDPO vs cDPO on the embedded arithmetic preference task, same budget, several seeds.

  python benchmarks/preference.py            # 3 seeds, 300 SFT + 150 preference steps each
  python benchmarks/preference.py --quick    # 3 seeds, 150 SFT + 60 preference steps, 128 held out

Workload: configs/preference_quickstart.py (tiny Qwen2, char tokenizer, pairs '12+7=' ->
chosen '19' / rejected a near miss the verifier rejects), per seed:
  1. one SFT warm-up on the chosen answers (train.sft_steps), shared by the three methods: it is
     run once and its workdir is copied, so each method *resumes* from the same post-SFT
     checkpoint and reference (resume = uninterrupted, tests/train/test_pref_loop.py);
  2. dpo, then tgdpo guided by that DPO run's final policy (rl.tgdpo.guidance_workdir: a real
     trained DPO model, same reference), then cdpo (its positive / negative models fine-tuned
     from the reference on chosen / rejected answers for rl.cdpo.ce_steps steps, not counted in
     the preference budget), each for train.max_steps steps of data.batch_size pairs at the
     same optimizer settings.
Reported (mean ± std over seeds, on the held-out split): greedy accuracy of the verifiable task
(reference = post-SFT policy), preference accuracy of the implicit reward on held-out pairs
(R^w > R^l, strict), the reward margin R^w − R^l, and the win-rate of the policy's own likelihood
(Σ log π(y^w) > Σ log π(y^l)) vs the reference's. Prints a markdown table; --json writes all runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("dpo", "tgdpo", "cdpo")
KEYS = (("final_accuracy", "held-out acc"), ("final_pair_preference_accuracy", "pref acc"),
        ("final_pair_reward_margin", "margin"), ("final_pair_logp_accuracy", "logp win-rate"))


def _config(seed: int, args):
  spec = importlib.util.spec_from_file_location("pq", os.path.join(REPO, "configs",
                                                                    "preference_quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(None)
  c.seed = seed
  c.train.sft_steps = args.sft_steps
  c.train.max_steps = args.pref_steps
  c.train.checkpoint_every = 0
  c.train.eval_every = 0
  c.train.async_checkpoint = False
  c.data.eval_size = args.eval_size
  c.rl.cdpo.ce_steps = args.ce_steps
  return c


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--json", default="")
  p.add_argument("--workdir", default="")
  args = p.parse_args(argv)
  args.sft_steps, args.pref_steps, args.eval_size, args.ce_steps = (
      (150, 60, 128, 40) if args.quick else (300, 150, 256, 100))
  from tokenrl.train.pref_loop import train_preference  # after argparse: --help stays fast
  root = args.workdir or tempfile.mkdtemp(prefix="pref_bench_")
  results = {m: [] for m in METHODS}
  baselines = []
  t0 = time.time()
  for seed in range(args.seeds):
    sft_dir = os.path.join(root, f"s{seed}_sft")
    c = _config(seed, args)
    c.train.max_steps = 0
    base = train_preference(c, sft_dir)
    baselines.append(base)
    for method in METHODS:
      wd = os.path.join(root, f"s{seed}_{method}")
      shutil.rmtree(wd, ignore_errors=True)
      shutil.copytree(sft_dir, wd)
      c = _config(seed, args)
      c.rl.objective = method
      if method == "tgdpo":
        c.rl.tgdpo.guidance_workdir = os.path.join(root, f"s{seed}_dpo")
      results[method].append(train_preference(c, wd))
      print(f"seed {seed} {method}: " + ", ".join(
          f"{k}={results[method][-1][k]:.3f}" for k, _ in KEYS), file=sys.stderr, flush=True)
  wall = time.time() - t0

  fmt = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"
  print(f"\n{args.seeds} seeds; {args.sft_steps} SFT + {args.pref_steps} preference steps of "
        f"{_config(0, args).data.batch_size} pairs; {args.eval_size} held-out; wall {wall:.0f} s\n")
  print("| method | " + " | ".join(name for _, name in KEYS) + " |")
  print("|---|" + "---|" * len(KEYS))
  print("| reference (post-SFT) | " + fmt([b["final_accuracy"] for b in baselines]) +
        " | – | 0 | " + fmt([b["final_pair_logp_accuracy"] for b in baselines]) + " |")
  for m in METHODS:
    print(f"| {m} | " + " | ".join(fmt([r[k] for r in results[m]]) for k, _ in KEYS) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "wall_seconds": wall, "baselines": baselines,
                 "results": results}, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
