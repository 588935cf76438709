"""CoIn at CPU scale (spec shared/specs/analysis-and-auditing.md §4(e)): can an auditor who sees
only fingerprints of a few sampled hidden tokens tell honest traces from inflated ones?

  python benchmarks/analysis_coin.py --workdir /tmp/qsrun/work/seed0   # a trained quickstart
  python benchmarks/analysis_coin.py                   # no workdir: a short SFT of the same model
  python benchmarks/analysis_coin.py --seeds 0 --num_traces 600        # a quick look

Per seed (`tokenrl.commands.coin`, the pipeline of `tokenrl audit coin`): 2000 arithmetic
prompts; each hidden trace is 4-12 sampled attempts of the model at the prompt
(`tokenrl.rollout.sample`), the visible answer the prompt and the most frequent attempt. Half
the traces are inflated by 25%, 50% or 100% of their length (lengths matched to the honest ones,
so the count alone says little): naive_random (random tokens appended), naive_repeat (one token
of the trace repeated), splice (whole blocks of another prompt's trace inserted at block
boundaries, the adaptive attack). Models A and B train on honest training traces, the DeepSet
verifier on honest vs inflated training traces at s in {2,4,8,16,32}; held-out traces are scored.
Both encoders are run on the same traces: 'hidden' (mean-pooled final-normed hidden states) and
'input' (mean-pooled input embeddings).

Reported: detection AUC per attack at s = 16 (and the AUC of the trace length alone), Models
A/B pair AUCs, detection rate and honest false-flag rate vs s next to the closed-form chance of
sampling a fabricated leaf at all, and commit/verify round trips of every held-out honest trace
through the full audit (expected: all verify). Writes benchmarks/results/analysis_coin.json and
benchmarks/results/analysis_coin.png.

Spec expectations [recon]: naive AUC >= 0.99, splicing >= 0.85, round trips always pass.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tokenrl.commands import coin as pipeline  # noqa: E402
from tokenrl.commands.common import load_model, save_figure  # noqa: E402

OUT = os.path.join(REPO, "benchmarks", "results")
FEATURES = ("hidden", "input")


def train_small_model(seed: int, steps: int = 400):
  """The quickstart model (Qwen2-style, D=128, L=2, char tokenizer) after `steps` SFT steps on
  1-2 digit addition/subtraction: enough for prompt-dependent attempts (not for accuracy)."""
  import optax
  from tokenrl import models
  from tokenrl.data import task_arith
  from tokenrl.data.char_tokenizer import CharTokenizer
  from tokenrl.train.batches import sft_batch
  tok = CharTokenizer()
  config = models.tiny("qwen2", vocab_size=tok.vocab_size, dim=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, mlp_dim=384, max_seq_len=64, pad_id=tok.pad_id,
                       bos_id=tok.bos_id, eos_ids=tuple(tok.eos_token_ids))
  params = models.init_params(config, jax.random.key(seed))
  opt = optax.adam(3e-3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, tokens, segment_ids, loss_mask):
    def loss(p):
      logits, _ = models.forward(p, tokens[:, :-1], config=config, segment_ids=segment_ids[:, :-1])
      lp = jax.nn.log_softmax(logits.astype(jnp.float32))
      nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], -1)[..., 0]
      w = loss_mask[:, 1:]
      return (nll * w).sum() / w.sum()
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  examples = task_arith.make_examples("train", steps * 64, seed + 1000, tiers="add:1-2,sub:1-2")
  for k in range(steps):
    part = examples[k * 64:(k + 1) * 64]
    batch = sft_batch([tok.encode(e["prompt"]) for e in part], part, tok)
    params, state, value = step(params, state, batch["tokens"], batch["segment_ids"],
                                batch["loss_mask"])
  print(f"trained the small model: {steps} SFT steps, last loss {float(value):.3f}")
  return params, config, tok


def spread(values):
  return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def plot(runs, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  ax = axes[0]
  best = runs["input"]
  samples = list(best[0]["detection"])
  for k, frac in enumerate(best[0]["detection"][samples[0]]):
    for features, style in (("input", "o-"), ("hidden", "s:")):
      det = [np.mean([r["detection"][s][frac] for r in runs[features]]) for s in samples]
      ax.plot(samples, det, style, color=f"C{k}", label=f"{features}, +{frac}·m inflated")
    ax.plot(samples, [best[0]["closed_form"][s][frac] for s in samples], "--", color=f"C{k}",
            alpha=0.5, label=f"P(≥1 fake leaf sampled), +{frac}·m")
  for features, style in (("input", "k^-"), ("hidden", "kv:")):
    fp = [np.mean([r["false_positive"][s] for r in runs[features]]) for s in samples]
    ax.plot(samples, fp, style, label=f"{features}: honest traces flagged")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("sampled leaves s")
  ax.set_ylabel("flagged fraction (threshold 0.5)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("detection rate vs s (mean over seeds)")
  ax.legend(fontsize=6, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
  ax = axes[1]
  attacks = pipeline.ATTACKS
  for j, features in enumerate(FEATURES):
    for i, attack in enumerate(attacks):
      vals = [r["auc"][attack] for r in runs[features]]
      x = i + (j - 0.5) * 0.35
      ax.bar(x, np.mean(vals), width=0.33, color=f"C{j}", alpha=0.7,
             label=f"verifier ({features})" if i == 0 else None)
      ax.plot([x] * len(vals), vals, "k.", ms=4)
  lengths = [r["length_auc"][a] for r in runs["input"] for a in attacks]
  ax.axhline(np.mean(lengths), color="gray", ls="--", label="trace length alone")
  ax.set_xticks(range(len(attacks)), attacks)
  ax.set_ylim(0.4, 1.0)
  ax.set_ylabel("detection AUC at s=16 (held out)")
  ax.set_title("AUC per attack (bars: mean, dots: seeds)")
  ax.legend(fontsize=7, loc="lower right")
  return save_figure(fig, path)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="", help="trained tokenrl run (else a short SFT here)")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--num_traces", type=int, default=2000)
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args()
  t_start = time.time()
  if args.workdir:
    loaded = load_model(workdir=args.workdir)
    params, config, tok = loaded.params, loaded.config, loaded.tokenizer
    model_desc = f"workdir {args.workdir}"
  else:
    params, config, tok = train_small_model(0)
    model_desc = "quickstart-sized model, 400 SFT steps in this script"
  runs = {f: [] for f in FEATURES}
  for seed in [int(s) for s in args.seeds.split(",")]:
    t0 = time.time()
    settings = pipeline.Settings(num_traces=args.num_traces, seed=seed)
    rng = np.random.default_rng(seed)
    cases = pipeline.build_cases(params, config, tok, settings, rng,
                                 log=lambda m: print(f"  [seed {seed}] {m}"))
    for features in FEATURES:
      st = pipeline.Settings(num_traces=args.num_traces, seed=seed, features=features)
      enc = cases if features == settings.features else pipeline.encode_cases(
          cases, params, config, st, log=lambda m: print(f"  [seed {seed}] {m}"))
      result = pipeline.evaluate(enc, st, np.random.default_rng(seed + 1),
                                 log=lambda m: print(f"  [seed {seed}] {m}"))
      runs[features].append(result)
      print(f"seed {seed}, features={features}:")
      print(pipeline.result_table(result))
      rt = result["round_trip"]
      print(f"round trips: {rt['verified']}/{rt['traces']} verified, {rt['benign']} judged benign\n")
    print(f"seed {seed}: {time.time() - t0:.0f}s\n")
  for features in FEATURES:
    print(f"features={features}, detection rate vs s (seed {args.seeds.split(',')[0]}):")
    print(pipeline.detection_table(runs[features][0]) + "\n")

  summary = {}
  for features in FEATURES:
    rs = runs[features]
    summary[features] = {
        "auc": {a: spread([r["auc"][a] for r in rs]) for a in pipeline.ATTACKS},
        "length_auc": {a: spread([r["length_auc"][a] for r in rs]) for a in pipeline.ATTACKS},
        "model_a_auc": spread([r["model_a_auc"] for r in rs]),
        "model_b_auc": spread([r["model_b_auc"] for r in rs]),
        "false_positive_s16": spread([r["false_positive"][16] for r in rs]),
        "round_trips": {"verified": sum(r["round_trip"]["verified"] for r in rs),
                        "traces": sum(r["round_trip"]["traces"] for r in rs)},
    }
  wall = time.time() - t_start
  print("summary over seeds (AUC at s=16: mean [min, max]):")
  for features in FEATURES:
    s = summary[features]
    aucs = ", ".join(f"{a} {v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]"
                     for a, v in s["auc"].items())
    print(f"  {features}: {aucs}; model A {s['model_a_auc']['mean']:.3f}, model B "
          f"{s['model_b_auc']['mean']:.3f}; honest flagged {s['false_positive_s16']['mean']:.3f}; "
          f"round trips {s['round_trips']['verified']}/{s['round_trips']['traces']}")
  print(f"wall time {wall:.0f}s")

  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  os.makedirs(args.out, exist_ok=True)
  record = {"date": datetime.date.today().isoformat(), "commit": commit,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "model": model_desc, "seeds": args.seeds, "wall_seconds": round(wall, 1),
            "summary": summary, "runs": runs}
  path = os.path.join(args.out, "analysis_coin.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  print(f"wrote {path}")
  print(f"wrote {plot(runs, os.path.join(args.out, 'analysis_coin.png'))}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
