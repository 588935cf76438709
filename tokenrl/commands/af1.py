"""`tokenrl analyze af1`: the All-for-One last-token subgraph (CAMA + attention-based peeking).

  tokenrl analyze af1 --workdir runs/quickstart                       # full grid sweep
  tokenrl analyze af1 --workdir runs/quickstart --l_wait 1 --l_transfer 1 --prune
  tokenrl analyze af1 --model hf_dir/ --prompts task.jsonl --refs refs.jsonl [--out af1.png]
  tokenrl analyze af1 --model hf_dir/ --prompt '12+7=' --answer 19 --prompt '3+5=' --answer 8

Prompts: --prompts FILE.jsonl ({"prompt": ..., "answer": ...} per line), or --prompt/--answer
pairs, or, for a workdir, its held-out examples. CAMA references (prompts of the same
template): --refs FILE.jsonl ("prompt" per line), or, for a workdir, its training-split
examples; with neither, the evaluated prompts themselves (printed as a note: a token seen once
at a position then hands its row its own residual).

Prints the full model's accuracy, a table of every (L_wait, L_transfer) cell (or the one cell
given) with CAMA, token-agnostic mean ablation and zero ablation, the AF1 context curve (the
last token cut from its context from layer k on), and for one cell the necessity check and,
with --prune, greedy head pruning in its transfer layers. Writes a PNG: the layer × layer
accuracy grid and the layer × position visibility of the last token for the chosen cell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from tokenrl.commands import common


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tokenrl analyze af1", description=__doc__.split("\n\n")[0])
  common.add_model_args(p)
  p.add_argument("--prompts", help="JSONL of {prompt, answer} (default: the workdir's held-out "
                 "examples)")
  p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat; pairs with "
                 "--answer in order)")
  p.add_argument("--answer", action="append", default=[], help="the gold answer of each --prompt")
  p.add_argument("--refs", help="JSONL of {prompt} for the CAMA tables (default: the workdir's "
                 "training examples, else the prompts themselves)")
  p.add_argument("--num_prompts", type=int, default=512, help="prompts used (first N), >= 1")
  p.add_argument("--num_refs", type=int, default=2000, help="references used (first N), >= 1")
  p.add_argument("--l_wait", type=int, default=None, help="layers skipped (CAMA depth); with "
                 "--l_transfer: one cell, else the whole grid")
  p.add_argument("--l_transfer", type=int, default=None, help="ABP layers after the wait")
  p.add_argument("--no_bos", action="store_true", help="compute stage without BOS (B2 [2nd]: "
                 "default keeps BOS visible)")
  p.add_argument("--metric", choices=("first", "greedy"), default="first",
                 help="first answer token, or the greedy full answer + a stop token (B4 [recon])")
  p.add_argument("--prune", action="store_true", help="greedy head pruning in the transfer "
                 "layers of the chosen cell")
  p.add_argument("--tolerance", type=float, default=0.10, help="a cell is an AF1 subgraph when "
                 "its accuracy is within this of the full model's (picks the cell without "
                 "--l_wait/--l_transfer)")
  p.add_argument("--chunk", type=int, default=256, help="model rows per call (memory)")
  p.add_argument("--out", default=None, help="PNG (default: WORKDIR/analysis/af1.png, or "
                 "./af1.png for --model)")
  p.add_argument("--json", default=None, help="also write every number here")
  return p


def _check_args(args: argparse.Namespace) -> None:
  bad = [f"--{name} must be >= 1, got {getattr(args, name)}"
         for name in ("num_prompts", "num_refs", "chunk") if getattr(args, name) < 1]
  if (args.l_wait is None) != (args.l_transfer is None):
    bad.append("give both --l_wait and --l_transfer (one cell) or neither (the whole grid)")
  if len(args.prompt) != len(args.answer):
    bad.append(f"{len(args.prompt)} --prompt but {len(args.answer)} --answer: one answer each")
  if args.prompt and args.prompts:
    bad.append("give --prompts FILE or --prompt/--answer, not both")
  if not 0 <= args.tolerance <= 1:
    bad.append(f"--tolerance must be in [0, 1], got {args.tolerance}")
  if bad:
    raise SystemExit("error: " + "; ".join(bad))


def _encode(tokenizer: Any, texts: list[str], where: list[str]) -> list[list[int]]:
  from tokenrl.data.prompts import tokenize_prompts
  try:
    return tokenize_prompts(tokenizer, texts, where=where)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e


def _task(args: argparse.Namespace, loaded: common.LoadedModel):
  """(prompt ids, answer ids, ref ids, source text, note or None)."""
  tok = loaded.tokenizer
  if args.prompts or args.prompt:
    rows = (common.read_prompt_rows(args.prompts, "--prompts") if args.prompts
            else list(zip(args.prompt, args.answer)))[:args.num_prompts]
    where = [f"{args.prompts or '--prompt'}:{i}" for i in range(len(rows))]
    prompts = _encode(tok, [r[0] for r in rows], where)
    answers_text = [r[1] for r in rows]
    source = args.prompts or "--prompt"
  elif loaded.run is not None:
    from tokenrl.train.setup import encode_prompts
    examples = loaded.run.eval_examples[:args.num_prompts]
    prompts = encode_prompts(loaded.cfg, tok, examples)
    answers_text = [str(ex["answer"]) for ex in examples]
    source = f"{args.workdir or args.model} held-out"
  else:
    raise SystemExit("error: --model has no held-out data; give --prompts FILE.jsonl "
                     "({\"prompt\": ..., \"answer\": ...} per line) or --prompt/--answer")
  answers = [tok.encode(a, add_special_tokens=False) for a in answers_text]
  empty = [i for i, a in enumerate(answers) if not a]
  if empty:
    raise SystemExit(f"error: prompt {empty[0]}: answer {answers_text[empty[0]]!r} encodes to "
                     "no tokens")
  note = None
  if args.refs:
    rows = common.read_prompt_rows(args.refs, "--refs", need_answer=False)[:args.num_refs]
    refs = _encode(tok, [r[0] for r in rows], [f"{args.refs}:{i}" for i in range(len(rows))])
  elif loaded.run is not None:
    from tokenrl.train.setup import encode_prompts
    refs = encode_prompts(loaded.cfg, tok, loaded.run.train_examples[:args.num_refs])
  else:
    refs = prompts
    note = ("note: no --refs: the CAMA tables average the evaluated prompts themselves (a token "
            "seen once at a position hands its row its own residual)")
  return prompts, answers, refs, source, note


def plot(grid: np.ndarray, full: float, mask: np.ndarray | None, cell, curve: np.ndarray,
         path: str, title: str) -> str:
  """Grid heatmap, the chosen cell's last-row visibility [L,S], and the context curve."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  ax = axes[0]
  im = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis")
  for (w, t), v in np.ndenumerate(grid):
    if np.isfinite(v):
      ax.text(t, w, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="white" if v < 0.6 else "black")
  ax.set_xlabel("L_transfer (ABP layers)")
  ax.set_ylabel("L_wait (layers skipped, CAMA)")
  ax.set_title(f"AF1 accuracy (full model {full:.2f})", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax = axes[1]
  if mask is not None:
    ax.imshow(mask[:, -1, :], origin="lower", cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_title(f"last token's visible keys, cell (L_wait, L_transfer) = {cell}", fontsize=9)
  else:
    ax.set_title("no cell within tolerance", fontsize=9)
  ax.set_xlabel("key position")
  ax.set_ylabel("layer")
  ax = axes[2]
  ax.plot(np.arange(len(curve)), curve, marker="o")
  ax.axhline(full, ls="--", color="grey", lw=1)
  ax.set_xlabel("k: last token sees only itself (+BOS) from layer k on")
  ax.set_ylabel("accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("AF1 context curve (k = L: full model)", fontsize=9)
  ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=10)
  return common.save_figure(fig, path)


def run(argv: list[str]) -> int:
  args = build_parser().parse_args(argv)
  _check_args(args)
  from tokenrl.analysis import af1 as A
  from tokenrl.analysis.af1_eval import AF1Eval, pick_cell
  loaded = common.load_model(model=args.model, workdir=args.workdir)
  config = loaded.config
  num_layers = config.num_layers
  if args.l_wait is not None:
    try:
      A.check_split(num_layers, args.l_wait, args.l_transfer)
    except ValueError as e:
      raise SystemExit(f"error: --l_wait/--l_transfer: {e}") from e
  prompts, answers, refs, source, note = _task(args, loaded)
  keep_bos = not args.no_bos
  start = time.perf_counter()
  try:
    ev = AF1Eval(loaded.params, prompts, answers, config=config, refs=refs, metric=args.metric,
                 stop_ids=loaded.tokenizer.eos_token_ids if args.metric == "greedy" else (),
                 chunk=args.chunk,
                 l_waits=None if args.l_wait is None else (args.l_wait,))
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e
  full = ev.full().accuracy
  cells = ([(args.l_wait, args.l_transfer)] if args.l_wait is not None else
           [(w, t) for w in range(num_layers + 1) for t in range(num_layers - w + 1)])
  grid = np.full((num_layers + 1, num_layers + 1), np.nan)
  rows, records = [], []
  for w, t in cells:
    sc = {a: ev.score(w, t, ablation=a, keep_bos=keep_bos) for a in ("cama", "mean", "zero")}
    grid[w, t] = sc["cama"].accuracy
    rows.append([w, t, sc["cama"].accuracy, sc["mean"].accuracy, sc["zero"].accuracy,
                 sc["cama"].accuracy - full, sc["cama"].fallback_rate])
    records.append({"l_wait": w, "l_transfer": t, "cama": sc["cama"].accuracy,
                    "mean": sc["mean"].accuracy, "zero": sc["zero"].accuracy,
                    "fallback_rate": sc["cama"].fallback_rate})
  curve = ev.context_curve(keep_bos=keep_bos)
  cell = cells[0] if args.l_wait is not None else pick_cell(grid, full, tolerance=args.tolerance)
  lengths = sorted(ev.groups)
  print(f"AF1: {len(prompts)} prompts from {source} (lengths {lengths}), "
        f"{sum(ev.ref_counts.values())} CAMA references, metric={args.metric}, "
        f"keep_bos={keep_bos}, L={num_layers}")
  if note:
    print(note)
  print(f"full model accuracy: {full:.4f}")
  print(common.format_table(["L_wait", "L_transfer", "CAMA", "mean abl.", "zero abl.",
                             "CAMA - full", "fallbacks"], rows))
  print()
  print(common.format_table(["k (last token cut from layer k)", "accuracy"],
                            [[k, float(a)] for k, a in enumerate(curve)]))
  summary: dict[str, Any] = {"full": full, "cells": records, "context_curve": curve.tolist(),
                             "cell": cell, "metric": args.metric, "keep_bos": keep_bos,
                             "num_prompts": len(prompts), "num_refs": len(refs)}
  print()
  if cell is None:
    print(f"no (L_wait, L_transfer) cell within {args.tolerance:.2f} of the full model")
  else:
    w, t = cell
    print(f"AF1 cell (L_wait, L_transfer) = ({w}, {t}): accuracy {grid[w, t]:.4f} vs full "
          f"{full:.4f}")
    if t:
      nec = ev.necessity(w, t, keep_bos=keep_bos)
      summary["necessity"] = {str(l): a for l, a in nec.items()}
      print(common.format_table(["transfer layer cut", "accuracy"],
                                [[l, a] for l, a in nec.items()]))
    if args.prune and t:
      path = ev.prune_heads(w, t, keep_bos=keep_bos)
      summary["prune"] = [vars(s) for s in path]
      print()
      print(common.format_table(["heads removed", "layer", "head", "accuracy"],
                                [[i + 1, s.layer, s.head, s.accuracy]
                                 for i, s in enumerate(path)]))
  seconds = time.perf_counter() - start
  print(f"\n{seconds:.1f} s", file=sys.stderr)
  mask = None
  if cell is not None:
    mask = np.asarray(A.af1_masks(lengths[-1], num_layers=num_layers, l_wait=cell[0],
                                  l_transfer=cell[1], keep_bos=keep_bos))
  out = args.out or (os.path.join(args.workdir, "analysis", "af1.png") if args.workdir
                     else "af1.png")
  plot(grid, full, mask, cell, curve, out,
       f"All-for-One, {len(prompts)} prompts, metric={args.metric}")
  print(f"wrote {out}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
    print(f"wrote {args.json}")
  return 0
