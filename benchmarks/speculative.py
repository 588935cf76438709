"""Speculative decoding vs plain `sample` on CPU: acceptance, tokens per verify pass, tokens/s.

  python benchmarks/speculative.py                  # sort; batches 1, 8, 64; 3 seeds (~15 min, 2 cores)
  python benchmarks/speculative.py --task copy
  python benchmarks/speculative.py --batches 1,8 --seeds 0

Models (benchmarks/speculative_models.py, trained here with `tokenrl train` if missing): a
target Qwen2-style decoder L=8, D=128 and a draft L=2 of the same widths and vocabulary (char
tokenizer), both SFT-trained on the embedded task: `sort` with 12-24 digit inputs (the output
is a permutation of the prompt: little for prompt lookup to find) or `copy` with 16-32
characters (the output repeats the prompt: prompt lookup's case). Prompts: the task's held-out
problems; completions of up to 26 (sort) / 34 (copy) tokens, sampled at temperature 1 with
top-k / top-p off (the RL setting), stop at EOS.

Methods, every one timed on the same prompts and keys, one after the other in this process:
  sample               tokenrl.rollout.sample (the baseline)
  exact/ngram K        speculative_sample with NGramDraft(3) (prompt lookup, no second model:
                       transformers' rule, the K tokens after the earliest match, one gather)
  exact/model K        speculative_sample with ModelDraft (the 2-layer draft)
  exact/layers K       speculative_sample with LayerDraft(2) (the target's first 2 layers)
  del                  del_sample (dynamic exit layer self-speculation)
  skipdecode (lossy)   skip_sample with the default linear schedule (L → L/2 layers)
Lossless methods produce the target's law (tests/rollout/test_speculative.py proves it), so
tokens/s at the same output law is comparable with `sample`'s. A row of the table: median
seconds per call over `--reps` timed calls after one warm-up (compile) call, per seed; the
speedup is sample's seconds / the method's seconds, reported as median (min-max) over seeds.
Batch 1 runs `--prompts1` different prompts one at a time and sums their time.

Writes benchmarks/results/speculative_<task>.json and benchmarks/results/speculative_<task>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import speculative_models  # noqa: E402

RESULTS = os.path.join(common.REPO, "benchmarks", "results")


def _methods(draft_params, draft_config, ks, head, specdec):
  """(name, draft, K, lossless, extra kwargs) of every timed method."""
  from tokenrl.rollout.drafts import LayerDraft, ModelDraft, NGramDraft
  model = ModelDraft(draft_params, draft_config)
  out = [("sample", None, None, True, {})]
  for k in ks:
    out.append((f"exact/ngram K={k}", NGramDraft(3), k, True, {}))
  for k in ks:
    out.append((f"exact/model K={k}", model, k, True, {}))
  for kmax, h in specdec:  # SpecDec++ K_max and stop threshold h (spec §3: h is swept)
    out.append((f"specdec_pp/model K<={kmax} h={h}", model, kmax, True,
                dict(accept_head=head, stop_threshold=h, min_draft_tokens=2)))
  out.append((f"spectr/model k=4 K={ks[0]}", "spectr", ks[0], True,
              dict(draft=model, num_drafts=4)))
  out.append((f"exact/layers K={ks[-1]}", LayerDraft(2), ks[-1], True, {}))
  out.append(("del", "del", None, True, {}))
  out.append(("skipdecode (lossy)", "skip", None, False, {}))
  return out


def _call(name, draft, k, extra, params, config, prompts, key, new_tokens):
  """One call; returns (Rollout, stats dict)."""
  import jax
  from tokenrl.rollout import sample
  from tokenrl.rollout.dynamic_exit import del_sample
  from tokenrl.rollout.skipdecode import skip_sample
  from tokenrl.rollout.speculative import speculative_sample
  kw = dict(config=config, rng=key, max_new_tokens=new_tokens, temperature=1.0)
  if draft is None:
    out = sample(params, prompts, **kw)
    return jax.block_until_ready(out), {}
  if draft == "del":
    out, info = del_sample(params, prompts, **kw)
    out = jax.block_until_ready(out)
    drafted, accepted = int(info.drafted.sum()), int(info.accepted.sum())
    return out, {"acceptance": accepted / max(drafted, 1), "rounds": int(info.num_rounds)}
  if draft == "skip":
    out, info = skip_sample(params, prompts, **kw)
    return jax.block_until_ready(out), {}
  if draft == "spectr":
    from tokenrl.rollout.spectr import spectr_sample
    out, stats = spectr_sample(params, prompts, num_draft_tokens=k, **extra, **kw)
    out = jax.block_until_ready(out)
    return out, {"acceptance": stats.acceptance_rate, "tokens_per_round": stats.tokens_per_round,
                 "depth1_acceptance": stats.depth1_acceptance,
                 "optimal_acceptance": stats.optimal_acceptance}
  out, stats = speculative_sample(params, prompts, draft=draft, num_draft_tokens=k, **extra, **kw)
  out = jax.block_until_ready(out)
  return out, {"acceptance": stats.acceptance_rate, "tokens_per_round": stats.tokens_per_round,
               "rounds": stats.rounds}


def _time_case(name, draft, k, extra, params, config, batches_of_prompts, seed, reps, new_tokens):
  """Median seconds per pass over the batches (sum over batches), tokens, stats of the last."""
  import jax
  import numpy as np
  key = jax.random.key(seed)
  for prompts in batches_of_prompts:  # warm-up: compile every distinct shape
    _call(name, draft, k, extra, params, config, prompts, key, new_tokens)
  times, stats, tokens = [], [], 0
  for _ in range(reps):
    total, tokens, stats = 0.0, 0, []
    for i, prompts in enumerate(batches_of_prompts):
      t0 = time.perf_counter()
      out, st = _call(name, draft, k, extra, params, config, prompts, jax.random.fold_in(key, i),
                      new_tokens)
      total += time.perf_counter() - t0
      tokens += int(np.asarray(out.mask).sum())
      stats.append(st)
    times.append(total)
  merged = {}
  for field in ("acceptance", "tokens_per_round", "depth1_acceptance", "optimal_acceptance"):
    vals = [s[field] for s in stats if field in s and s[field] == s[field]]
    if vals:
      merged[field] = float(np.mean(vals))
  return statistics.median(times), tokens, merged


def _plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  batches = result["batches"]
  names = [m for m in result["methods"] if m != "sample"]
  fig, ax = plt.subplots(figsize=(9, 4.2))
  width = 0.8 / len(batches)
  for j, b in enumerate(batches):
    meds = [result["speedup"][m][str(b)]["median"] for m in names]
    lo = [meds[i] - result["speedup"][m][str(b)]["min"] for i, m in enumerate(names)]
    hi = [result["speedup"][m][str(b)]["max"] - meds[i] for i, m in enumerate(names)]
    xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(names))]
    ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=f"batch {b}")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
  ax.set_ylabel("tokens/s ÷ sample's (same law)")
  ax.set_title(f"Speculative decoding, task {result['task']}, on {result['env']['cpu']} "
               f"({result['env']['threads']} threads), target L=8 / draft L=2", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--task", default="sort", choices=sorted(speculative_models.TASKS))
  ap.add_argument("--batches", default="1,8,64")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--ks", default="2,4")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--prompts1", type=int, default=8, help="prompts timed one by one at batch 1")
  ap.add_argument("--work", default=os.path.join(common.REPO, "runs", "spec_models"))
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--specdec", default="", help="SpecDec++ settings 'K_max:h,...' "
                  "(default: 2*max(ks):0.7)")
  ap.add_argument("--methods", default="", help="regex: time only these methods (and sample); "
                  "writes speculative_<task>_<tag>.json")
  ap.add_argument("--tag", default="subset")
  a = ap.parse_args()
  common.pin_threads(a.threads)
  load_before = os.getloadavg()
  workdirs = speculative_models.build(a.work, a.task)
  new_tokens = speculative_models.TASKS[a.task]["new_tokens"]
  import numpy as np
  from tokenrl.train.setup import encode_prompts
  from tokenrl.train.workdir import load_workdir
  cfg, run, params = load_workdir(workdirs["target"])
  _, drun, dparams = load_workdir(workdirs["draft"])
  config = run.model
  prompts_all = encode_prompts(cfg, run.tokenizer, run.eval_examples)
  batches = [int(b) for b in a.batches.split(",")]
  seeds = [int(s) for s in a.seeds.split(",")]
  ks = [int(k) for k in a.ks.split(",")]
  specdec = [(int(x.split(":")[0]), float(x.split(":")[1])) for x in a.specdec.split(",")] if \
      a.specdec else [(2 * ks[-1], 0.7)]
  from tokenrl.train.specdec_pp import load_accept_head
  head_params, head_info = load_accept_head(workdirs["head"])
  methods = _methods(dparams, drun.model, ks, (head_params, int(head_info["num_blocks"])), specdec)
  if a.methods:  # a subset (the baseline always runs): results go to a file of their own
    methods = [m for m in methods if m[0] == "sample" or re.search(a.methods, m[0])]
  rows, raw = [], {}
  for name, draft, k, lossless, extra in methods:
    raw[name] = {}
    for b in batches:
      groups = ([[p] for p in prompts_all[:a.prompts1]] if b == 1 else [prompts_all[:b]])
      per_seed = []
      for seed in seeds:
        sec, tokens, st = _time_case(name, draft, k, extra, params, config, groups, seed, a.reps,
                                     new_tokens)
        per_seed.append({"seconds": sec, "tokens": tokens, "tokens_per_s": tokens / sec, **st})
        print(f"{name:22s} batch {b:3d} seed {seed}: {tokens / sec:9.1f} tok/s  {st}",
              flush=True)
      raw[name][str(b)] = per_seed
  speedup = {}
  for name, *_ in methods:
    speedup[name] = {}
    for b in batches:
      ratios = [raw["sample"][str(b)][i]["seconds"] / raw[name][str(b)][i]["seconds"]
                * raw[name][str(b)][i]["tokens"] / raw["sample"][str(b)][i]["tokens"]
                for i in range(len(seeds))]
      speedup[name][str(b)] = {"median": statistics.median(ratios), "min": min(ratios),
                               "max": max(ratios)}
  header = ["method", "lossless"] + [f"b={b} speedup" for b in batches] + [
      f"b={b} accept" for b in batches]
  for name, draft, k, lossless, extra in methods:
    cells = [name, "yes" if lossless else "no"]
    for b in batches:
      s = speedup[name][str(b)]
      cells.append(f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})")
    for b in batches:
      acc = [r.get("acceptance") for r in raw[name][str(b)] if "acceptance" in r]
      cells.append(f"{np.mean(acc):.2f}" if acc else "-")
    rows.append(cells)
  result = {"date": time.strftime("%Y-%m-%d"), "commit": common._git("rev-parse", "--short", "HEAD"),
            "env": {"cpu": common.cpu_model(), "threads": a.threads,
                    "load_before": list(load_before), "load_after": list(os.getloadavg())},
            "task": a.task, "batches": batches, "seeds": seeds, "reps": a.reps,
            "new_tokens": new_tokens,
            "methods": [m[0] for m in methods], "speedup": speedup, "raw": raw,
            "models": {"target_accuracy": json.load(open(os.path.join(workdirs["target"], "summary.json")))["final_accuracy"],
                       "draft_accuracy": json.load(open(os.path.join(workdirs["draft"], "summary.json")))["final_accuracy"]}}
  os.makedirs(RESULTS, exist_ok=True)
  name = f"speculative_{a.task}" + (f"_{a.tag}" if a.methods else "")
  with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=1)
  _plot(result, os.path.join(RESULTS, f"{name}.png"))
  print(common.table(header, rows))


if __name__ == "__main__":
  main()
