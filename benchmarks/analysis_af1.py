"""All-for-One subgraph demonstration (spec §2(e), issue 18): does the answer get computed late,
at the last token, from information it fetches in a few transfer layers?

  python benchmarks/analysis_af1.py                                    # toy model only
  python benchmarks/analysis_af1.py --workdir runs/quickstart          # + the quickstart model
  python benchmarks/analysis_af1.py --seeds 0,1 --workdir W            # seeds spread (toy)

Toy: a 4-layer Llama-style model (D=128, Q=4) trained here on 7,000 of the 10,000 problems
[BOS, a, +, b, =] -> a+b (a, b in 0..99, every number one token) until 97% accuracy on 1,000
dev problems (at most 3,000 steps); scored on 1,000 of the 2,000 held-out problems (first and
only answer token), CAMA tables from 2,000 training problems.
Quickstart (--workdir, a trained `configs/quickstart.py` run: 2 layers, char-level, 1-2 digit
add/sub, prompts of 5-7 tokens): its 512 held-out prompts, CAMA tables per prompt length from
its training-split problems, scored on the first answer character and on the greedy full answer
(+ <eos>) [recon, B4].

Reported per model: full-model accuracy; the (L_wait, L_transfer) grid with CAMA, token-agnostic
mean ablation and zero ablation; the AF1 context curve (the last token sees only itself + BOS
from layer k on); the AF1 cell (most layers waited, then fewest transfer layers, within 10
points of full) and, on it (or, if none, on the most accurate cell with a transfer stage), the
necessity check and greedy head pruning. Expected [recon, spec §2(e)]:
full >= 95%; L_transfer = 0 at the base rate; a cell with L_wait, L_transfer >= 1 within 10
points of full; at equal L_wait, CAMA above mean and zero ablation.
Writes benchmarks/results/analysis_af1.{json,png}.

Measured (2026-12-07, 2 shared Xeon cores at load 6-12, --seeds 0,1 with the quickstart seed-0
run, 923 s wall of which 818 s toy training): toy full model 98.4% / 92.4% held-out (seeds
0 / 1; seed 1 stopped at 3,000 steps, dev 90.3%); L_transfer = 0 at the base rate (0-1.3%
vs 1.7%); CAMA at L_wait = 0 reaches 87.4% / 92.0% with 3-4 ABP layers while mean ablation
stays <= 1.1% and zero ablation 0%; but every L_wait >= 1 cell is <= 6%: these models fetch
the operands into the last token in layer 0 (cutting that layer in the (0, L_transfer) subgraph
leaves 1.9% / 0.7%; the last token cut from its context from layer 1 on keeps 75% / 76%), so
they do not wait as Llama-3-8B does in the paper. Quickstart (2 layers): first answer
character 71.1% full, best AF1 cells (0, 2) 54.9% and (1, 1) 34.0% (best mean-ablation cells
at those L_wait: 12.3%, 23.2%); greedy full answer 47.5% full, best AF1 cell 8.0%.
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

BOS, PLUS, EQ, VOCAB = 199, 200, 201, 202  # ids 0..198 are the numbers (sums reach 198)
TOY = dict(dim=128, num_layers=4, num_heads=4, num_kv_heads=4, mlp_dim=512)


def toy_data(seed: int):
  """(tokens [10000,5], answers [10000], train idx [7000], dev idx [1000], held-out idx [2000])."""
  a, b = (x.ravel() for x in np.meshgrid(np.arange(100), np.arange(100), indexing="ij"))
  ones = np.ones_like(a)
  tokens = np.stack([BOS * ones, a, PLUS * ones, b, EQ * ones], 1).astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(a))
  return tokens, (a + b).astype(np.int32), perm[3000:], perm[2000:3000], perm[:2000]


def train_toy(seed: int, max_steps: int, batch: int, lr: float, target: float,
              check_every: int = 100):
  """Adam-W (global-norm clip 1) on the cross-entropy of the last position's logits (the answer
  token), learning rate warmed up over 100 steps then constant, until the accuracy on the dev
  split (1,000 problems kept out of training and out of the scored set) reaches `target`, at
  most max_steps. When this model learns the sums is seed- and order-dependent (a jump from
  ~40% to ~95% somewhere between a few hundred and a few thousand steps), hence a target, not
  a fixed count. Returns (config, params, steps run, final dev accuracy)."""
  import jax
  import jax.numpy as jnp
  import optax
  from tokenrl import models
  config = models.tiny("llama", vocab_size=VOCAB, max_seq_len=8, tie_embeddings=False, **TOY)
  tokens, answers, train, dev, _ = toy_data(seed)
  params = jax.jit(models.init_params, static_argnums=0)(config, jax.random.key(seed))
  schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, 100),
                                   optax.constant_schedule(lr)], [100])
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
  state = opt.init(params)

  def loss_fn(p, t, y):
    logits = models.forward(p, t, config=config)[0][:, -1]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  @jax.jit
  def step(p, s, t, y):
    loss, g = jax.value_and_grad(loss_fn)(p, t, y)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  @jax.jit
  def accuracy(p, t, y):
    return jnp.mean(jnp.argmax(models.forward(p, t, config=config)[0][:, -1], -1) == y)

  rng = np.random.default_rng(seed + 1000)
  t0, dev_acc, i = time.perf_counter(), 0.0, 0
  while i < max_steps:
    idx = train[rng.integers(0, len(train), batch)]
    params, state, loss = step(params, state, tokens[idx], answers[idx])
    i += 1
    if i % check_every == 0 or i == max_steps:
      dev_acc = float(accuracy(params, tokens[dev], answers[dev]))
      print(f"  seed {seed} step {i}: loss {float(loss):.4f}, dev accuracy {dev_acc:.4f} "
            f"({time.perf_counter() - t0:.0f} s)", flush=True)
      if dev_acc >= target:
        break
  return config, params, i, dev_acc


def experiment(ev, *, prune: bool, tolerance: float = 0.10) -> dict:
  """Every AF1 number of one AF1Eval: full, grids (3 ablations), context curve, cell, ..."""
  from tokenrl.analysis.af1_eval import pick_cell
  full = ev.full().accuracy
  grids = {a: ev.grid(ablation=a) for a in ("cama", "mean", "zero")}
  curve = ev.context_curve()
  cell = pick_cell(grids["cama"], full, tolerance=tolerance)
  # The cell the necessity check and pruning run on: the AF1 cell, else the most accurate cell
  # with a transfer stage (ties: more layers waited).
  g = np.nan_to_num(grids["cama"][:, 1:], nan=-1.0)
  best = max(((w, t + 1) for w, t in np.ndindex(g.shape) if g[w, t] >= 0),
             key=lambda c: (g[c[0], c[1] - 1], c[0]))
  probe = cell if cell is not None and cell[1] else best
  out = {"full": full, "grids": {a: np.where(np.isnan(g), None, g).tolist()
                                  for a, g in grids.items()},
         "context_curve": curve.tolist(), "cell": cell, "probe_cell": list(probe),
         "fallback_rate": {str(w): ev.score(w, 0).fallback_rate for w in ev.l_waits}}
  out["necessity"] = {str(l): a for l, a in ev.necessity(*probe).items()}
  if prune:
    out["prune"] = [vars(s) for s in ev.prune_heads(*probe)]
  return out, grids


def print_experiment(name: str, res: dict, grids: dict) -> None:
  from tokenrl.commands import common as cmd_common
  num_layers = len(res["context_curve"]) - 1
  print(f"\n{name}: full model accuracy {res['full']:.4f}")
  rows = [[w, t, grids["cama"][w, t], grids["mean"][w, t], grids["zero"][w, t]]
          for w in range(num_layers + 1) for t in range(num_layers - w + 1)]
  print(cmd_common.format_table(["L_wait", "L_transfer", "CAMA", "mean abl.", "zero abl."],
                                rows))
  print("context curve (last token cut from layer k):",
        " ".join(f"k={k}:{a:.3f}" for k, a in enumerate(res["context_curve"])))
  w, t = res["probe_cell"]
  print(f"AF1 cell (within 10 points of full): {res['cell']}; probed cell ({w}, {t}): "
        f"{grids['cama'][w, t]:.3f}; necessity (cut one transfer layer):",
        ", ".join(f"layer {l}: {a:.3f}" for l, a in res["necessity"].items()))
  if res.get("prune"):
    print(f"head pruning in the transfer layers of ({w}, {t}) (accuracy after each removal):",
          " ".join(f"L{s['layer']}H{s['head']}:{s['accuracy']:.3f}" for s in res["prune"]))


def plot(panels: list[tuple[str, dict, dict]], path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(panels), 3, figsize=(14, 3.9 * len(panels)), squeeze=False)
  for row, (name, res, grids) in zip(axes, panels):
    g = grids["cama"]
    im = row[0].imshow(g, origin="lower", vmin=0, vmax=1, cmap="viridis")
    for (w, t), v in np.ndenumerate(g):
      if np.isfinite(v):
        row[0].text(t, w, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
    row[0].set_xlabel("L_transfer")
    row[0].set_ylabel("L_wait")
    row[0].set_title(f"{name}: AF1 accuracy with CAMA (full {res['full']:.2f})", fontsize=9)
    fig.colorbar(im, ax=row[0], fraction=0.046)
    for ax in row:  # layer indices: integer ticks only
      ax.xaxis.get_major_locator().set_params(integer=True)
    row[0].yaxis.get_major_locator().set_params(integer=True)
    num_layers = g.shape[0] - 1
    # At each L_wait, the best L_transfer's accuracy per wait-stage replacement.
    waits = np.arange(num_layers + 1)
    for a, style in (("cama", "o-"), ("mean", "s--"), ("zero", "^:")):
      row[1].plot(waits, np.nanmax(grids[a], axis=1), style, label=a)
    row[1].axhline(res["full"], color="grey", lw=1, ls="--")
    row[1].set_xlabel("L_wait (layers skipped)")
    row[1].set_ylabel("best accuracy over L_transfer")
    row[1].set_ylim(-0.02, 1.02)
    row[1].legend(fontsize=8)
    row[1].set_title("CAMA vs mean vs zero ablation", fontsize=9)
    row[2].plot(np.arange(len(res["context_curve"])), res["context_curve"], "o-")
    row[2].axhline(res["full"], color="grey", lw=1, ls="--")
    row[2].set_xlabel("k: last token sees only itself + BOS from layer k on")
    row[2].set_ylabel("accuracy")
    row[2].set_ylim(-0.02, 1.02)
    row[2].set_title("AF1 context curve (k = L: full model)", fontsize=9)
    for ax in row[1:]:
      ax.grid(alpha=0.3)
  fig.tight_layout()
  from tokenrl.commands import common as cmd_common
  return cmd_common.save_figure(fig, path)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default=None, help="a trained quickstart run (optional)")
  p.add_argument("--seeds", default="0", help="toy seeds, comma-separated")
  p.add_argument("--max_steps", type=int, default=3000, help="toy training steps at most")
  p.add_argument("--target", type=float, default=0.97, help="toy training stops at this dev "
                 "accuracy")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--num_eval", type=int, default=1000, help="toy held-out problems scored")
  p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "analysis_af1"))
  args = p.parse_args()
  from tokenrl.analysis.af1_eval import AF1Eval
  t_start, load_before = time.perf_counter(), os.getloadavg()
  report: dict = {"toy": {}, "quickstart": None}
  panels = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    t0 = time.perf_counter()
    config, params, steps, dev_acc = train_toy(seed, args.max_steps, args.batch, args.lr,
                                               args.target)
    t_train = time.perf_counter() - t0
    tokens, answers, train, _, held = toy_data(seed)
    ev_idx, ref_idx = held[:args.num_eval], train[:2000]
    ev = AF1Eval(params, tokens[ev_idx], answers[ev_idx, None], config=config,
                 refs=tokens[ref_idx], chunk=512)
    res, grids = experiment(ev, prune=seed == int(args.seeds.split(",")[0]))
    # Base rate: always answering the most common sum of the scored problems.
    res["base_rate"] = float(np.bincount(answers[ev_idx]).max() / len(ev_idx))
    res.update(seed=seed, train_steps=steps, dev_accuracy=dev_acc, train_seconds=round(t_train, 1),
               analysis_seconds=round(time.perf_counter() - t0 - t_train, 1))
    report["toy"][str(seed)] = res
    print_experiment(f"toy seed {seed} ({steps} steps, {t_train:.0f} s, dev {dev_acc:.3f}, base rate "
                     f"{res['base_rate']:.3f})", res, grids)
    if not panels:
      panels.append((f"toy a+b (seed {seed})", res, grids))
  if args.workdir:
    from tokenrl.commands import common as cmd_common
    from tokenrl.train.setup import encode_prompts
    loaded = cmd_common.load_model(workdir=args.workdir)
    tok, run = loaded.tokenizer, loaded.run
    prompts = encode_prompts(loaded.cfg, tok, run.eval_examples)
    gold = [tok.encode(str(ex["answer"]), add_special_tokens=False) for ex in run.eval_examples]
    refs = encode_prompts(loaded.cfg, tok, run.train_examples[:4000])
    report["quickstart"] = {"workdir": args.workdir, "prompts": len(prompts), "refs": len(refs)}
    for metric in ("first", "greedy"):
      t0 = time.perf_counter()
      ev = AF1Eval(loaded.params, prompts, gold, config=loaded.config, refs=refs, metric=metric,
                   stop_ids=tok.eos_token_ids if metric == "greedy" else (), chunk=512)
      res, grids = experiment(ev, prune=metric == "first")
      res["seconds"] = round(time.perf_counter() - t0, 1)
      res["refs_per_length"] = {str(k): v for k, v in ev.ref_counts.items()}
      res["prompts_per_length"] = {str(s): len(g[0]) for s, g in ev.groups.items()}
      report["quickstart"][metric] = res
      print_experiment(f"quickstart ({args.workdir}), metric={metric}", res, grids)
      panels.append((f"quickstart, {metric} answer " + ("token" if metric == "first" else
                                                         "(greedy)"), res, grids))
  wall = time.perf_counter() - t_start
  git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True,
                                  text=True).stdout.strip()
  dirty = git("status", "--porcelain", "--", "benchmarks/analysis_af1.py",
              "tokenrl/analysis/af1*.py", "tokenrl/models")
  commit = git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if dirty else "")
  report = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "hardware": f"{common.cpu_model()} ({os.cpu_count()} cores visible), {platform.system()}",
      "commit": commit,
      "load_average_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
      "toy_settings": {**TOY, "vocab": VOCAB, "max_steps": args.max_steps, "target": args.target, "batch": args.batch,
                       "lr": args.lr, "num_eval": args.num_eval, "num_refs": 2000},
      "wall_seconds": round(wall, 1),
      **report,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  plot(panels, args.out + ".png")
  print(f"\nwall {wall:.0f} s; wrote {args.out}.json and {args.out}.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
