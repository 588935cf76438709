"""LaSeR self-verification and TVM-guided search vs best-of-N on the embedded arith task (CPU).

  python benchmarks/preference_value.py --quick   # 150 SFT + 30 RL steps per method
  python benchmarks/preference_value.py           # 400 SFT + 150 RL steps per method

Both runs start from configs/quickstart.py (tiny Qwen2, char tokenizer, 1-2 digit +/-).
1. LaSeR: SFT warm-up, then rl.objective=laser (w_r = 0, mixing after half the RL steps,
   c_ref estimated at the first RL step). Reported: the self-reward's accuracy (threshold 0.5)
   and AUC at predicting correctness on the last 5 steps' training rollouts, and on held-out
   prompts with n = 8 samples each: self-verification accuracy/AUC, and best-of-8 by
   self-reward vs a random sample (mean accuracy) vs the oracle (pass@8).
2. TVM: SFT warm-up, then rl.objective=tvm (value head on the frozen trunk, G = 8 paths per
   prompt for the labels). On held-out prompts: value-guided token-level beam search (b = 2
   beams, K = 8 one-token candidates a round) vs best-of-N scored by the same value model at
   equal generated tokens (N chosen so the mean token counts match), vs a random sample.
Prints a markdown table (the RESULTS.md section). Any error exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart(objective: str, sft: int, rl: int):
  spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.rl.objective = objective
  c.train.sft_steps, c.train.max_steps = sft, rl
  c.train.checkpoint_every, c.train.eval_every, c.train.eval_num_samples = 0, 0, 0
  c.train.async_checkpoint = False
  c.data.eval_size = 64
  return c


def last_metrics(workdir: str, keys, k: int = 5):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rl = [json.loads(l) for l in f if json.loads(l)["phase"] == "rl"]
  return {key: float(np.mean([r[key] for r in rl[-k:]])) for key in keys}, rl[-1]


def correct_of(run, paths, example) -> np.ndarray:
  tok = run.tokenizer
  texts = [tok.decode([t for t in p if t not in tok.eos_token_ids], skip_special_tokens=True)
           for p in paths]
  return np.array([float(run.verifier(t, example) >= 1) for t in texts])


def bench_laser(sft: int, rl: int, n: int = 8):
  from tokenrl.eval import self_reward as sr
  from tokenrl.methods.laser import resolve_token_id
  from tokenrl.objectives.laser import binary_auc
  from tokenrl.train.rl_loop import train
  from tokenrl.train.setup import encode_prompts
  from tokenrl.train.workdir import load_workdir
  cfg = quickstart("laser", sft, rl)
  cfg.rl.laser.reasoning_warmup_steps = 0
  cfg.rl.laser.self_reward_warmup_steps = rl // 2
  cfg.rl.laser.estimate_c_ref = True
  wd = tempfile.mkdtemp(prefix="laser_")
  t0 = time.time()
  train(cfg, wd)
  train_m, last = last_metrics(wd, ("self_reward_accuracy", "self_reward_auc", "accuracy"))
  cfg, run, params = load_workdir(wd)
  prompts = encode_prompts(cfg, run.tokenizer, run.eval_examples)
  z = resolve_token_id(cfg.rl.laser.token_id, run.model.vocab_size)
  out = sr.laser_best_of_n(params, prompts, config=run.model, rng=jax.random.key(123), n=n,
                           max_new_tokens=cfg.sampler.max_new_tokens, token_id=z,
                           beta_v=cfg.rl.laser.beta_v, c_ref=last["self_reward_c_ref"])
  lens = out.all_mask.sum(1)
  paths = [tuple(out.all_tokens[i, :lens[i]]) for i in range(len(lens))]
  corr = np.concatenate([correct_of(run, paths[b * n:(b + 1) * n], ex)
                         for b, ex in enumerate(run.eval_examples)]).reshape(-1, n)
  scores = out.scores
  fin = np.isin(out.all_tokens[np.arange(len(lens)), np.maximum(lens - 1, 0)],
                run.tokenizer.eos_token_ids).reshape(-1, n)
  verify_acc = float(((scores > 0.5) == (corr > 0.5))[fin].mean())
  chosen = corr[np.arange(corr.shape[0]), out.index]
  return {
      "train_self_reward_accuracy": train_m["self_reward_accuracy"],
      "train_self_reward_auc": train_m["self_reward_auc"],
      "train_rollout_accuracy": train_m["accuracy"],
      "heldout_verify_accuracy": verify_acc,
      "heldout_verify_auc": binary_auc(scores[fin], corr[fin]),
      "heldout_sample_accuracy": float(corr.mean()),
      "heldout_best_of_n_self_reward": float(chosen.mean()),
      "heldout_pass_at_n": float(corr.max(1).mean()),
      "c_ref": last["self_reward_c_ref"], "seconds": time.time() - t0,
  }


def bench_tvm(sft: int, rl: int, beams: int = 2, cands: int = 8):
  from tokenrl.eval import value_search as vs
  from tokenrl.train.rl_loop import train
  from tokenrl.train.setup import encode_prompts
  from tokenrl.train.workdir import load_workdir
  cfg = quickstart("tvm", sft, rl)
  cfg.optimizer.weight_decay = 0.0          # keep the generator exactly the SFT policy
  wd = tempfile.mkdtemp(prefix="tvm_")
  t0 = time.time()
  train(cfg, wd)
  train_m, _ = last_metrics(wd, ("value_final_accuracy", "value_mae", "accuracy"))
  cfg, run, params = load_workdir(wd)
  model, T = run.model, cfg.sampler.max_new_tokens
  eos = run.tokenizer.eos_token_ids
  prompts = encode_prompts(cfg, run.tokenizer, run.eval_examples)
  done = vs.finished_fn(eos, T)
  key = jax.random.key(7)
  res = {"beam": [], "beam_tokens": [], "random": []}
  searches = []
  for i, (p, ex) in enumerate(zip(prompts, run.eval_examples)):
    propose = vs.model_proposer(params, p, config=model, rng=jax.random.fold_in(key, i),
                                max_step_tokens=1, temperature=1.0, top_k=0)
    score = vs.model_value_scorer(params, p, config=model)
    r = vs.step_beam_search(propose, score, is_finished=done, num_beams=beams,
                            num_candidates=cands, max_rounds=T)
    res["beam"].append(correct_of(run, [r.path], ex)[0])
    res["beam_tokens"].append(r.tokens_generated)
    searches.append((p, ex, score))
  # Best-of-N at equal compute: N = mean beam tokens / mean sample length (at least 1).
  probe = vs.model_sample_n(params, prompts[0], config=model, rng=key, max_new_tokens=T,
                            temperature=1.0, top_k=0)(64)
  mean_len = float(np.mean([len(x) for x in probe]))
  n = max(1, int(round(np.mean(res["beam_tokens"]) / mean_len)))
  bon, bon_tokens = [], []
  for i, (p, ex, score) in enumerate(searches):
    sample_n = vs.model_sample_n(params, p, config=model, rng=jax.random.fold_in(key, 10_000 + i),
                                 max_new_tokens=T, temperature=1.0, top_k=0)
    r = vs.best_of_n(sample_n, score, n=n)
    bon.append(correct_of(run, [r.path], ex)[0])
    bon_tokens.append(r.tokens_generated)
    res["random"].append(correct_of(run, sample_n(n)[:1], ex)[0])
  return {
      "train_value_final_accuracy": train_m["value_final_accuracy"],
      "train_value_mae": train_m["value_mae"],
      "heldout_single_sample_accuracy": float(np.mean(res["random"])),
      "heldout_value_beam_accuracy": float(np.mean(res["beam"])),
      "heldout_value_beam_tokens": float(np.mean(res["beam_tokens"])),
      "heldout_best_of_n_accuracy": float(np.mean(bon)),
      "heldout_best_of_n_tokens": float(np.mean(bon_tokens)), "best_of_n_N": n,
      "seconds": time.time() - t0,
  }


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  sft, rl = (150, 30) if args.quick else (400, 150)
  laser = bench_laser(sft, rl)
  tvm = bench_tvm(sft, rl)
  print(f"\n### LaSeR and TVM on quickstart arith ({'quick' if args.quick else 'full'}: "
        f"{sft} SFT + {rl} RL steps, 64 held-out prompts, {jax.devices()[0].platform})\n")
  print("| LaSeR | value |\n|---|---|")
  for k, v in laser.items():
    print(f"| {k} | {v:.3f} |")
  print("\n| TVM | value |\n|---|---|")
  for k, v in tvm.items():
    print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  sys.exit(main())
