"""DPO vs TGDPO vs cDPO vs RTO on the embedded arithmetic preference task, same budget, seeds.

  python benchmarks/preference.py            # 3 seeds, 300 SFT + 150 preference / RL steps each
  python benchmarks/preference.py --quick    # 3 seeds, 150 SFT + 60 pref. / RL steps, 128 held out

Workload: configs/preference_quickstart.py (tiny Qwen2, char tokenizer, pairs '12+7=' ->
chosen '19' / rejected a near miss the verifier rejects), per seed:
  1. one SFT warm-up on the chosen answers (train.sft_steps), shared by all four methods: it is
     run once and its workdir is copied, so each pairwise method *resumes* from the same
     post-SFT checkpoint and reference (resume = uninterrupted, tests/train/test_pref_loop.py);
  2. dpo, then tgdpo guided by that DPO run's final policy (rl.tgdpo.guidance_workdir: a real
     trained DPO model, same reference), then cdpo (its positive / negative models fine-tuned
     from the reference on chosen / rejected answers for rl.cdpo.ce_steps steps, not counted in
     the preference budget), each for train.max_steps steps of data.batch_size pairs at the
     same optimizer settings;
  3. rto (rl.objective=rto, tokenrl/methods/rto.py): PPO + value head on the RL loop
     (tokenrl.train.rl_loop.train) with a configs/quickstart.py RL config whose model section is
     the preference config's (same tiny shapes and tokenizer), started from the post-SFT params
     (model.init_workdir = the SFT workdir, so π_ref = the same reference) with π_dpo = this
     seed's DPO run (rl.rto.dpo_workdir). Budget mapping: the same number of optimizer steps
     (train.max_steps, one update per RL step: num_iterations = mini_batches = 1), the same 32
     prompts per step as the 32 pairs per step, the same warm-up length; but RTO samples
     rl.num_generations = 8 completions per prompt (256 generated sequences per step vs 64
     fixed ones), gets the verifier's sentence reward on them (RTO's r = DPO token reward
     − KL + verifier reward at the last token) and keeps the quickstart's RL learning rate
     (AdamW 5e-4 cosine, vs 1e-4 for the pairwise methods).
Reported (mean ± std over seeds, on the held-out split): greedy accuracy of the verifiable task
(reference = post-SFT policy), preference accuracy of the implicit reward on held-out pairs
(R^w > R^l, strict; R = β·Σ_t(log π − log π_ref) with DPO's β, also for RTO's policy), the
reward margin R^w − R^l, and the win-rate of the policy's own likelihood
(Σ log π(y^w) > Σ log π(y^l)) vs the reference's. RTO's row is scored by `score_policy` on the
same held-out problems / pairs against the same reference; a second table gives RTO's own
metrics (mean DPO token reward and k1 KL per token over its RL steps, training reward of the
last 10% of steps, the RL loop's held-out accuracy before / after).
Prints markdown tables; --json writes all runs.
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
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("dpo", "tgdpo", "cdpo")
KEYS = (("final_accuracy", "held-out acc"), ("final_pair_preference_accuracy", "pref acc"),
        ("final_pair_reward_margin", "margin"), ("final_pair_logp_accuracy", "logp win-rate"))
RTO_KEYS = (("dpo_reward", "dpo_reward / token"), ("kl_reward", "k1 KL / token"),
            ("train_reward_last", "train reward (last 10%)"),
            ("rl_baseline_accuracy", "held-out acc, RL start"),
            ("rl_final_accuracy", "held-out acc, RL end"))
PAIR_STATS = ("preference_accuracy", "reward_margin", "reward_chosen", "reward_rejected",
              "logp_accuracy")


def _load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def _config(seed: int, args):
  c = _load_config("preference_quickstart")
  c.seed = seed
  c.train.sft_steps = args.sft_steps
  c.train.max_steps = args.pref_steps
  c.train.checkpoint_every = 0
  c.train.eval_every = 0
  c.train.async_checkpoint = False
  c.data.eval_size = args.eval_size
  c.rl.cdpo.ce_steps = args.ce_steps
  return c


def _rto_config(seed: int, args, sft_dir: str, dpo_dir: str):
  """configs/quickstart.py's RL settings, the preference runs' model / data, RTO on top."""
  pref = _config(seed, args)
  c = _load_config("quickstart")
  c.model = pref.model            # same tiny shapes (init_workdir checks ModelConfig equality)
  for key in ("task", "tiers", "tokenizer", "train_size", "eval_size", "max_prompt_len",
              "chat_template", "batch_size"):
    c.data[key] = pref.data[key]  # same train prompts / held-out problems; 32 prompts per step
  c.sampler.max_new_tokens = pref.sampler.max_new_tokens
  c.seed = seed
  c.model.init_workdir = sft_dir  # start from the post-SFT params: π_ref = the reference
  c.train.sft_steps = 0
  c.train.max_steps = args.pref_steps   # same optimizer steps (one update per RL step)
  c.optimizer.warmup_steps = pref.optimizer.warmup_steps
  c.train.checkpoint_every = 0
  c.train.eval_every = 0
  c.train.eval_num_samples = 0
  c.train.async_checkpoint = False
  c.rl.objective = "rto"
  c.rl.rto.dpo_workdir = dpo_dir
  return c


def score_policy(ref_workdir: str, params: Any, beta: float) -> dict[str, float]:
  """Held-out metrics of any decoder params, as the preference loop's final evaluation.

  The held-out problems / pairs and the reference π_ref are those of `ref_workdir` (a finished
  preference workdir; its latest checkpoint is the reference): greedy accuracy of `params` on the
  verifiable held-out problems (`tokenrl.eval.evaluate`, as pref_loop), and over the held-out
  pairs (`pairwise.pair_summary`, batches of 64 as pref_loop) the means of R^w > R^l, R^w − R^l,
  R^w, R^l with R = β·Σ_t m·(log π − log π_ref), and of Σ log π(y^w) > Σ log π(y^l).
  Keys as the preference summary's: final_accuracy, final_pair_<stat>.
  """
  import jax
  import numpy as np
  from tokenrl.data.preference import build_preference_data, preference_batch
  from tokenrl.eval import evaluate
  from tokenrl.train import pairwise
  from tokenrl.train.setup import encode_prompts
  from tokenrl.train.workdir import load_workdir, model_params
  cfg, run, ref_params = load_workdir(ref_workdir)
  tok, model = run.tokenizer, run.model
  params = model_params(params, model)
  _, eval_pairs, verifier = build_preference_data(cfg, run)
  out: dict[str, float] = {}
  examples = [p for p in eval_pairs if "answer" in p]
  if verifier and examples:
    out["final_accuracy"] = evaluate(
        params, config=model, tokenizer=tok, examples=examples,
        prompt_ids=encode_prompts(cfg, tok, examples), reward_fn=verifier,
        max_new_tokens=cfg.sampler.max_new_tokens, num_samples=0,
        rng=jax.random.key(0))["accuracy"]
  stats: dict[str, list] = {k: [] for k in PAIR_STATS}
  for i in range(0, len(eval_pairs), 64):
    b, P = preference_batch(tok, eval_pairs[i:i + 64],
                            use_chat_template=bool(cfg.data.chat_template),
                            max_prompt_len=cfg.data.max_prompt_len)
    fn = pairwise.make_pair_logprob_fn(config=model, prompt_len=P)
    s = pairwise.pair_summary(fn(params, b["tokens"], b["segment_ids"]),
                              fn(ref_params, b["tokens"], b["segment_ids"]), b["mask"], beta)
    for k in PAIR_STATS:
      stats[k].append(np.asarray(s[k]))
  out.update({f"final_pair_{k}": float(np.concatenate(v).mean()) for k, v in stats.items()})
  return out


def run_rto(seed: int, args, root: str) -> dict[str, Any]:
  """RTO for `seed` from the SFT workdir with this seed's DPO run as π_dpo; its scored summary."""
  from tokenrl.train.metrics import read_metrics
  from tokenrl.train.rl_loop import train
  from tokenrl.train.workdir import load_workdir
  sft_dir, dpo_dir = os.path.join(root, f"s{seed}_sft"), os.path.join(root, f"s{seed}_dpo")
  wd = os.path.join(root, f"s{seed}_rto")
  shutil.rmtree(wd, ignore_errors=True)
  cfg = _rto_config(seed, args, sft_dir, dpo_dir)
  summary = train(cfg, wd)
  rl = [r for r in read_metrics(wd) if r["phase"] == "rl"]
  last = rl[-max(1, len(rl) // 10):]
  _, _, params = load_workdir(wd)
  beta = float(_config(seed, args).rl.dpo.beta)
  return {
      **score_policy(sft_dir, params, beta),
      "dpo_reward": statistics.mean(r["dpo_reward"] for r in rl),
      "kl_reward": statistics.mean(r["kl_reward"] for r in rl),
      "train_reward_last": statistics.mean(r["reward"] for r in last),
      "rl_baseline_accuracy": summary["baseline_accuracy"],
      "rl_final_accuracy": summary["final_accuracy"],
      "generated_sequences_per_step": cfg.data.batch_size * cfg.rl.num_generations,
      "learning_rate": cfg.optimizer.learning_rate, "rl_steps": summary["rl_steps"],
      "skipped_updates": summary["skipped_updates"], "wall_seconds": summary["wall_seconds"],
      "dpo_reward_curve": [r["dpo_reward"] for r in rl], "reward_curve": [r["reward"] for r in rl],
  }


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
  results = {m: [] for m in METHODS + ("rto",)}
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
    results["rto"].append(run_rto(seed, args, root))
    print(f"seed {seed} rto: " + ", ".join(
        f"{k}={results['rto'][-1][k]:.4g}" for k, _ in KEYS + RTO_KEYS), file=sys.stderr,
        flush=True)
  wall = time.time() - t0

  fmt = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"
  fmt4 = lambda xs: (f"{statistics.mean(xs):.2e} ± "
                     f"{statistics.stdev(xs) if len(xs) > 1 else 0.0:.1e}")
  rto0 = results["rto"][0]
  print(f"\n{args.seeds} seeds; {args.sft_steps} SFT + {args.pref_steps} preference steps of "
        f"{_config(0, args).data.batch_size} pairs (RTO: {args.pref_steps} RL steps of "
        f"{rto0['generated_sequences_per_step']} generated sequences, lr "
        f"{rto0['learning_rate']:g}); {args.eval_size} held-out; wall {wall:.0f} s\n")
  print("| method | " + " | ".join(name for _, name in KEYS) + " |")
  print("|---|" + "---|" * len(KEYS))
  print("| reference (post-SFT) | " + fmt([b["final_accuracy"] for b in baselines]) +
        " | – | 0 | " + fmt([b["final_pair_logp_accuracy"] for b in baselines]) + " |")
  for m in METHODS + ("rto",):
    print(f"| {m} | " + " | ".join(fmt([r[k] for r in results[m]]) for k, _ in KEYS) + " |")
  print("\n| RTO | " + " | ".join(name for _, name in RTO_KEYS) + " |")
  print("|---|" + "---|" * len(RTO_KEYS))
  print("| rto | " + " | ".join((fmt4 if k in ("dpo_reward", "kl_reward") else fmt)(
      [r[k] for r in results["rto"]]) for k, _ in RTO_KEYS) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "wall_seconds": wall, "baselines": baselines,
                 "results": results}, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
