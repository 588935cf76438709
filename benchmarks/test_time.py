"""Test-time control and selection on the reasoning task: what each costs and what it buys.

  python benchmarks/test_time.py                         # trains configs/arith_cot.py if needed
  python benchmarks/test_time.py --workdir runs/arith_cot --seeds 0,1,2 --problems 128
  python benchmarks/test_time.py --quick                 # 1 seed, 32 problems (a smoke check)

Model: the workdir of `tokenrl train --config configs/arith_cot.py` (SFT on worked traces, then
GRPO on the final answer); trained here first when --workdir has no summary.json. Problems: the
first --problems of the run's held-out split (never the training split). Everything below is
sampled at the run's rl.temperature with its top-k/top-p, so the controls differ from plain
sampling only by the control. Seeds are sampling seeds (jax.random.key(seed)) on the one trained
model: the spread is the spread of the decoding, not of training.

1. Budget head. `fit_budget_head` on the policy's own traces of --head_prompts TRAINING-split
   prompts (8 samples each, the same temperature), once; written to WORKDIR/budget_head.safetensors.
   mean_think = the policy's mean thinking length (tokens before '#', from those traces).
2. Controls (each: --samples samples per problem, per seed; accuracy = mean correctness of one
   sample, tokens = mean generated tokens per sample, EOS included):
     plain           no control.
     budget@B        budget guidance (spec §9) with B = round(f · mean_think) thinking tokens,
                     f in --budget_fractions (default 0.25, 0.5, 0.75), with the reference's
                     validity mask (rate >= 10, alpha > 1, mode >= 0.9 tokens) and, as
                     'budget@f,min_rate=0', with its rate threshold off (sampler.control.min_rate).
     cyclic_reflex   CyclicReflex (§14) on the reflection token '?', amplitude --reflex_amplitude
                     (default 3 logits), period = round(mean_think) (one cycle per typical thought).
     cntp            CNTP (§10), punctuation '\\n' and '#' (a step ends at a newline), band
                     (0.01, 1.5) nats, at most 10 trials of 16 tokens. Lossy: evaluation only.
     soft_thinking   Soft Thinking (§13) until '#': top-10 concept tokens, min-p 0.001, Cold Stop
                     tau 0.01 for 256 steps (longer than any trace: off in practice).
   Goal (issue 16): some budget keeps >= 90% of plain's accuracy at <= 60% of its tokens.
3. Selection over N (plain sampling, --n samples per problem): pass@k (oracle), maj@k, bon@k
   (mean log-prob), bom@k (Best-of-Majority, alpha 0.2), ffs@k (First-Finish Search) for k in
   1, 2, 4, ..., n: the suite's estimators (`tokenrl.eval.suite`), disjoint k-blocks of the n.
   Goal: bom@k >= maj@k at every k.

Writes benchmarks/results/test_time.json and test_time.png (left: accuracy vs generated tokens per
control, mean ± std over seeds; right: accuracy vs N per selection strategy) and prints the
markdown tables for RESULTS.md. Exit status 0 even when a goal is missed: the table says which.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "arith_cot.py")
GOAL_KEEP, GOAL_TOKENS = 0.90, 0.60


def ensure_model(workdir: str) -> float:
  """Train configs/arith_cot.py into `workdir` unless it holds a finished run; seconds spent."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return 0.0
  exe = os.path.join(os.path.dirname(sys.executable), "tokenrl")
  cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tokenrl.cli"]
  start = time.time()
  subprocess.run([*cmd, "train", f"--config={CONFIG}", f"--workdir={workdir}"], check=True)
  return time.time() - start


def control_sections(mean_think: float, fractions, amplitude: float, head_path: str):
  """[(name, sampler.control section)] of every control measured (section keys: config.py)."""
  from tokenrl.config import control_config
  base = control_config().to_dict()
  out = [("plain", dict(base))]
  for f in fractions:
    budget = max(1, round(f * mean_think))
    out.append((f"budget@{f:g}", dict(base, method="budget", head=head_path, budget=budget)))
    # The reference's validity mask (rate >= 10) was set for R1-length traces; here it masks
    # the likely continuations (see README), so each budget is also run with it off.
    out.append((f"budget@{f:g},min_rate=0", dict(base, method="budget", head=head_path,
                                                budget=budget, min_rate=0.0)))
  out.append(("cyclic_reflex", dict(base, method="cyclic_reflex", amplitude=amplitude,
                                    period=max(1, round(mean_think)))))
  out.append(("cntp", dict(base, method="cntp")))
  out.append(("soft_thinking", dict(base, method="soft_thinking")))
  return out


def measure_control(ctx, section, seed: int, samples: int) -> dict:
  """Accuracy and mean generated tokens of one control at one sampling seed."""
  import jax
  from tokenrl.eval import suite
  from tokenrl.eval.control_build import build_control, build_decoder
  tok, config = ctx["tok"], ctx["config"]
  proc, state = build_control(section, tok, dim=config.dim, vocab_size=config.vocab_size)
  decoder = build_decoder(section, tok, config=config)
  kw = {} if decoder is None else {"sampler": decoder}
  start = time.time()
  res = suite.run_suite(
      ctx["params"], config=config, tokenizer=tok, examples=ctx["examples"],
      prompt_ids=ctx["prompt_ids"], reward_fn=ctx["verifier"], task="arith_cot",
      strategies=("pass",), n=samples, ks=(1,), max_new_tokens=ctx["max_new"],
      temperature=ctx["temperature"], top_k=ctx["top_k"], top_p=ctx["top_p"],
      logit_processor=proc, processor_state=state, rng=jax.random.key(seed), **kw)
  row = res["strategies"][0]
  out = {"accuracy": row["accuracy"], "tokens": row["completion_tokens"],
         "seconds": time.time() - start}
  if decoder is not None and section["method"] == "cntp":  # tokens drawn per token kept
    out["drawn_per_kept"] = (sum(i.sampled_tokens for i in decoder.infos)
                             / max(1, sum(i.emitted for i in decoder.infos)))
  return out


def measure_selection(ctx, seed: int, n: int) -> list[dict]:
  import jax
  from tokenrl.eval import suite
  ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
  res = suite.run_suite(
      ctx["params"], config=ctx["config"], tokenizer=ctx["tok"], examples=ctx["examples"],
      prompt_ids=ctx["prompt_ids"], reward_fn=ctx["verifier"], task="arith_cot",
      strategies=("pass", "maj", "bon", "bom", "ffs"), n=n, ks=ks,
      max_new_tokens=ctx["max_new"], temperature=ctx["temperature"], top_k=ctx["top_k"],
      top_p=ctx["top_p"], rng=jax.random.key(1000 + seed))
  return [{"family": r["family"], "k": r["k"], "accuracy": r["accuracy"],
           "tokens": r["completion_tokens"]} for r in res["strategies"]]


def _ms(xs):
  return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def control_table(controls: dict, seeds) -> tuple[str, dict]:
  """Markdown rows per control (mean ± std over seeds) and the budget goal's verdict."""
  plain_acc = _ms([r["accuracy"] for r in controls["plain"]])[0]
  plain_tok = _ms([r["tokens"] for r in controls["plain"]])[0]
  rows = ["| control | accuracy (mean ± std) | generated tokens (mean ± std) | accuracy / plain | "
          "tokens / plain | s per seed |", "|---|---|---|---|---|---|"]
  goal = {"met": False, "by": None}
  for name, rs in controls.items():
    acc, tok = _ms([r["accuracy"] for r in rs]), _ms([r["tokens"] for r in rs])
    keep = acc[0] / plain_acc if plain_acc > 0 else float("nan")
    frac = tok[0] / plain_tok if plain_tok > 0 else float("nan")
    if name.startswith("budget") and keep >= GOAL_KEEP and frac <= GOAL_TOKENS:
      goal = {"met": True, "by": name}
    secs = statistics.mean(r["seconds"] for r in rs)
    rows.append(f"| {name} | {acc[0]:.3f} ± {acc[1]:.3f} | {tok[0]:.1f} ± {tok[1]:.1f} | "
                f"{keep:.2f} | {frac:.2f} | {secs:.0f} |")
  return "\n".join(rows), goal


def selection_table(selection: list[list[dict]]) -> tuple[str, bool]:
  """Accuracy per (strategy, k), mean ± std over seeds; whether bom@k >= maj@k at every k."""
  keys = [(r["family"], r["k"]) for r in selection[0]]
  acc = {key: _ms([s[i]["accuracy"] for s in selection]) for i, key in enumerate(keys)}
  ks = sorted({k for _, k in keys})
  families = list(dict.fromkeys(f for f, _ in keys))
  rows = ["| strategy | " + " | ".join(f"k={k}" for k in ks) + " |",
          "|---|" + "---|" * len(ks)]
  for f in families:
    rows.append(f"| {f}@k | " + " | ".join(
        f"{acc[(f, k)][0]:.3f} ± {acc[(f, k)][1]:.3f}" for k in ks) + " |")
  bom_ok = all(acc[("bom", k)][0] >= acc[("maj", k)][0] - 1e-12 for k in ks)
  return "\n".join(rows), bom_ok


def plot(controls: dict, selection: list[list[dict]], path: str) -> None:
  from matplotlib.figure import Figure
  import numpy as np
  fig = Figure(figsize=(13, 5))
  ax_c, ax_s = fig.subplots(1, 2)
  for i, (name, rs) in enumerate(controls.items()):
    acc, tok = _ms([r["accuracy"] for r in rs]), _ms([r["tokens"] for r in rs])
    ax_c.errorbar(tok[0], acc[0], xerr=tok[1], yerr=acc[1], fmt="o", color=f"C{i % 10}",
                  capsize=3, label=name)
  ax_c.set_xlabel("generated tokens per sample (mean over problems; ± std over seeds)")
  ax_c.set_ylabel("accuracy of one sample")
  ax_c.set_title("decoding controls")
  ax_c.legend(fontsize=8)
  keys = [(r["family"], r["k"]) for r in selection[0]]
  for j, fam in enumerate(dict.fromkeys(f for f, _ in keys)):
    idx = [i for i, (f, _) in enumerate(keys) if f == fam]
    ks = [keys[i][1] for i in idx]
    m = np.array([[s[i]["accuracy"] for i in idx] for s in selection])
    ax_s.errorbar(ks, m.mean(0), yerr=m.std(0, ddof=1) if len(m) > 1 else None, marker="o",
                  capsize=3, color=f"C{j}", label=f"{fam}@k")
  ax_s.set_xscale("log", base=2)
  ax_s.set_xlabel("k (samples per answer)")
  ax_s.set_ylabel("accuracy")
  ax_s.set_title("selection over N samples (plain sampling)")
  ax_s.legend(fontsize=8)
  for ax in (ax_c, ax_s):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=90)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/tokenrl_test_time/arith_cot")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--problems", type=int, default=128)
  parser.add_argument("--samples", type=int, default=4, help="samples per problem per control")
  parser.add_argument("--n", type=int, default=16, help="samples per problem for selection")
  parser.add_argument("--budget_fractions", default="0.25,0.5,0.75")
  parser.add_argument("--reflex_amplitude", type=float, default=3.0)
  parser.add_argument("--head_prompts", type=int, default=128)
  parser.add_argument("--controls", default="", help="comma list of names (default: all)")
  parser.add_argument("--quick", action="store_true", help="1 seed, 32 problems, n 8")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  args = parser.parse_args()
  if args.quick:
    args.seeds, args.problems, args.n, args.head_prompts = "0", 32, 8, 32
  import jax
  from tokenrl.eval.control_build import one_token_id
  from tokenrl.models.budget_head import save_budget_head
  from tokenrl.train.budget_head import fit_budget_head
  from tokenrl.train.setup import encode_prompts
  from tokenrl.train.workdir import load_workdir
  start = time.time()
  train_seconds = ensure_model(args.workdir)
  cfg, run, params = load_workdir(args.workdir)
  tok = run.tokenizer
  examples = run.eval_examples[:args.problems]
  ctx = {"params": params, "config": run.model, "tok": tok, "examples": examples,
         "prompt_ids": encode_prompts(cfg, tok, examples), "verifier": run.verifier,
         "max_new": int(cfg.sampler.max_new_tokens), "temperature": float(cfg.rl.temperature),
         "top_k": int(cfg.sampler.top_k), "top_p": float(cfg.sampler.top_p)}
  think_end = one_token_id(tok, cfg.sampler.control.think_end, "think_end")
  head, head_info = fit_budget_head(
      params, run.model, encode_prompts(cfg, tok, run.train_examples[:args.head_prompts]),
      think_end_id=think_end, stop_tokens=tuple(tok.eos_token_ids), max_new_tokens=ctx["max_new"],
      rng=jax.random.key(0), temperature=ctx["temperature"])
  head_path = os.path.join(args.workdir, "budget_head.safetensors")
  save_budget_head(head_path, head)
  mean_think = head_info["mean_think_tokens"]
  print(f"budget head: {head_info}", flush=True)
  seeds = [int(s) for s in args.seeds.split(",")]
  fractions = [float(f) for f in args.budget_fractions.split(",")]
  sections = control_sections(mean_think, fractions, args.reflex_amplitude, head_path)
  if args.controls:
    keep = set(args.controls.split(",")) | {"plain"}
    sections = [(n, s) for n, s in sections if n in keep]
  controls = {}
  for name, section in sections:
    controls[name] = []
    for seed in seeds:
      r = measure_control(ctx, section, seed, args.samples)
      controls[name].append(r)
      extra = f", {r['drawn_per_kept']:.2f} drawn/kept" if "drawn_per_kept" in r else ""
      print(f"{name:16s} seed {seed}: accuracy {r['accuracy']:.3f}, tokens {r['tokens']:.1f} "
            f"({r['seconds']:.0f} s{extra})", flush=True)
  selection = []
  for seed in seeds:
    selection.append(measure_selection(ctx, seed, args.n))
    print(f"selection seed {seed}: " + ", ".join(
        f"{r['family']}@{r['k']}={r['accuracy']:.3f}" for r in selection[-1]), flush=True)
  ctable, budget_goal = control_table(controls, seeds)
  stable, bom_ok = selection_table(selection)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  with open(os.path.join(args.workdir, "summary.json")) as f:
    summary = json.load(f)
  meta = {"date": datetime.date.today().isoformat(), "commit": commit,
          "machine": f"{platform.machine()}, {os.cpu_count()} cores",
          "load_average_end": os.getloadavg(), "seeds": seeds, "problems": len(examples),
          "samples": args.samples, "n": args.n, "temperature": ctx["temperature"],
          "model_baseline_accuracy": summary.get("baseline_accuracy"),
          "model_final_accuracy": summary.get("final_accuracy"),
          "train_seconds": train_seconds, "budget_head": head_info, "mean_think": mean_think,
          "budget_goal": budget_goal, "bom_ge_maj_every_k": bom_ok,
          "total_seconds": time.time() - start}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "test_time.json"), "w") as f:
    json.dump({"meta": meta, "controls": controls, "selection": selection}, f, indent=1,
              default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
  plot(controls, selection, os.path.join(args.out, "test_time.png"))
  print(f"\n{meta}\n\n{ctable}\n\n{stable}")
  print(f"\nbudget goal (>= {GOAL_KEEP:.0%} of plain accuracy at <= {GOAL_TOKENS:.0%} of its "
        f"tokens): {'met by ' + budget_goal['by'] if budget_goal['met'] else 'NOT met'}; "
        f"bom@k >= maj@k at every k: {bom_ok}")


if __name__ == "__main__":
  main()
