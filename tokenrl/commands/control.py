"""`tokenrl analyze control`: k-ε controllability of a model over (prompt, target) pairs.

  tokenrl analyze control --workdir runs/quickstart --num_pairs 200 \
      --gcg_lengths 4,6 --top_k 16 --batch_size 64 --num_iters 20
  tokenrl analyze control --model hf_dir/ --pairs pairs.jsonl [--targets random] [--out k_eps.png]

Pairs: --pairs FILE.jsonl, one {"prompt": ..., "target": ...} per line ("answer" is accepted for
"target", so a task JSONL works as is), or, for a workdir, its held-out examples (prompt, answer).
x0 = the prompt's ids as the model sees them (chat template and special tokens as in sampling),
y = the first --target_tokens ids of the target text; --targets random replaces each y with
uniform random allowed tokens (the contrast: how steerable is the model to arbitrary outputs).
Search: tokenrl.analysis.control.backoff_control_batch (spec §3: ℓ = 0 check, greedy
back-generation, then GCG). Prints the ℓ distribution (with the mean base loss per ℓ) and
ε̂(k), and writes the k-ε curve as a PNG (and per-pair results with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from tokenrl.commands import common


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tokenrl analyze control",
                              description=__doc__.split("\n\n")[0])
  common.add_model_args(p)
  p.add_argument("--pairs", help="JSONL of {prompt, target|answer} (default: the workdir's "
                 "held-out examples)")
  p.add_argument("--num_pairs", type=int, default=100, help="pairs used (first N), >= 1")
  p.add_argument("--targets", choices=("answer", "random"), default="answer",
                 help="answer: the pair's target text; random: uniform random allowed tokens")
  p.add_argument("--target_tokens", type=int, default=1, help="target ids kept per pair, >= 1")
  p.add_argument("--greedy_lengths", type=common.int_list, default=(1, 2, 3), help="e.g. 1,2,3 (or empty)")
  p.add_argument("--gcg_lengths", type=common.int_list, default=(4, 6, 8, 10), help="e.g. 4,6 (or empty)")
  p.add_argument("--top_k", type=int, default=128, help="GCG: tokens kept per position")
  p.add_argument("--batch_size", type=int, default=768, help="GCG: candidates per iteration")
  p.add_argument("--num_iters", type=int, default=34, help="GCG: iterations per length")
  p.add_argument("--pair_batch", type=int, default=8, help="pairs searched together")
  p.add_argument("--chunk", type=int, default=301, help="model rows per call (memory)")
  p.add_argument("--blacklist", default="special",
                 help="ids never used in a control prompt: 'special' (the tokenizer's special "
                 "ids and embedding rows past its vocabulary), 'none', or comma-separated ids")
  p.add_argument("--keep_best", action="store_true", help="GCG returns its best iterate [recon]")
  p.add_argument("--warm_start", action="store_true",
                 help="GCG starts from the previous length's prompt [recon]")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--k_max", type=int, default=None,
                 help="largest k in the ε̂(k) table (default: the longest length tried)")
  p.add_argument("--out", default=None, help="k-ε curve PNG (default: WORKDIR/analysis/"
                 "control_k_epsilon.png, or ./control_k_epsilon.png for --model)")
  p.add_argument("--json", default=None, help="also write per-pair results here")
  return p


def special_ids(tokenizer: Any, vocab: int) -> list[int]:
  """The tokenizer's special ids (pad, bos, eos, named specials) and the embedding rows past its
  vocabulary (padding rows of the table that no text encodes to)."""
  ids = {tokenizer.pad_id, tokenizer.bos_id, *tokenizer.eos_token_ids}
  for token in getattr(tokenizer, "special_tokens", {}).values():
    ids.add(tokenizer.token_to_id(token))
  ids.update(range(tokenizer.vocab_size, vocab))
  return sorted(i for i in ids if i is not None and 0 <= i < vocab)


def _blacklist(spec: str, tokenizer: Any, vocab: int) -> list[int]:
  if spec == "special":
    return special_ids(tokenizer, vocab)
  if spec == "none":
    return []
  try:
    return list(common.int_list(spec))
  except argparse.ArgumentTypeError as e:
    raise SystemExit(f"error: --blacklist: {e} (or 'special' / 'none')") from e


def _check_args(args: argparse.Namespace) -> None:
  bad = [f"--{name} must be >= 1, got {getattr(args, name)}"
         for name in ("num_pairs", "target_tokens", "top_k", "batch_size", "pair_batch", "chunk")
         if getattr(args, name) < 1]
  if args.num_iters < 0:
    bad.append(f"--num_iters must be >= 0, got {args.num_iters}")
  if args.k_max is not None and args.k_max < 0:
    bad.append(f"--k_max must be >= 0, got {args.k_max}")
  if bad:
    raise SystemExit("error: " + "; ".join(bad))


def _pairs_text(args: argparse.Namespace, loaded: common.LoadedModel) -> tuple[list, list, list]:
  """(prompt texts, target texts, prompt ids) of the first --num_pairs pairs."""
  from tokenrl.data.prompts import tokenize_prompts
  if args.pairs:
    rows = common.read_prompt_rows(args.pairs, "--pairs", ("target", "answer"))[:args.num_pairs]
    prompts, targets = [r[0] for r in rows], [r[1] for r in rows]
    try:
      ids = tokenize_prompts(loaded.tokenizer, prompts,
                             where=[f"{args.pairs}:pair {i}" for i in range(len(rows))])
    except ValueError as e:
      raise SystemExit(f"error: {e}") from e
    return prompts, targets, ids
  if loaded.run is None:
    raise SystemExit("error: --model has no held-out data; give --pairs FILE.jsonl "
                     "({\"prompt\": ..., \"target\": ...} per line)")
  from tokenrl.train.setup import encode_prompts
  examples = loaded.run.eval_examples[:args.num_pairs]
  return ([ex["prompt"] for ex in examples], [str(ex["answer"]) for ex in examples],
          encode_prompts(loaded.cfg, loaded.tokenizer, examples))


def summarize(lengths: Sequence[int], base_losses: Sequence[float], k_max: int):
  """(ℓ distribution rows [ℓ, pairs, share, mean base loss], ε̂ rows [k, ε̂]) for the tables."""
  from tokenrl.analysis.control import NOT_FOUND, k_epsilon_curve
  ell, base = np.asarray(lengths), np.asarray(base_losses)
  dist = []
  for v in sorted(set(ell.tolist()), key=lambda v: (v == NOT_FOUND, v)):
    sel = ell == v
    dist.append(["∞" if v == NOT_FOUND else v, int(sel.sum()), float(sel.mean()),
                 float(base[sel].mean())])
  eps = k_epsilon_curve(ell, k_max)
  return dist, [[k, float(e)] for k, e in enumerate(eps)]


def plot_curve(curves: dict[str, np.ndarray], path: str, title: str) -> str:
  """Step plot of ε̂(k) for each named curve -> the PNG path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for name, eps in curves.items():
    ax.step(np.arange(len(eps)), eps, where="post", marker="o", ms=3, label=name)
  ax.set_xlabel("k (control prompt tokens)")
  ax.set_ylabel("ε̂(k) (share of pairs not steered)")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return common.save_figure(fig, path)


def run(argv: list[str]) -> int:
  args = build_parser().parse_args(argv)
  _check_args(args)
  import jax
  from tokenrl.analysis import control as C
  loaded = common.load_model(model=args.model, workdir=args.workdir)
  tok, config = loaded.tokenizer, loaded.config
  vocab = int(loaded.params["embed"].shape[0])
  blacklist = _blacklist(args.blacklist, tok, vocab)
  prompts, targets, x0s = _pairs_text(args, loaded)
  rng = np.random.default_rng(args.seed)
  allowed = np.setdiff1d(np.arange(vocab), blacklist)
  if args.targets == "random":
    if not len(allowed):
      raise SystemExit("error: --blacklist leaves no token to draw random targets from")
    ys = [rng.choice(allowed, args.target_tokens).tolist() for _ in x0s]
  else:
    ys = [tok.encode(t, add_special_tokens=False)[:args.target_tokens] for t in targets]
    empty = [i for i, y in enumerate(ys) if not y]
    if empty:
      raise SystemExit(f"error: pair {empty[0]}: target {targets[empty[0]]!r} encodes to no "
                       "tokens")
  lengths_tried = (*args.greedy_lengths, *args.gcg_lengths)
  k_max = args.k_max if args.k_max is not None else max(lengths_tried, default=0)

  def on_stage(name: str, pairs: int, seconds: float) -> None:
    print(f"  {name}: {pairs} pairs searched in {seconds:.1f} s", file=sys.stderr)

  start = time.perf_counter()
  try:
    results = C.backoff_control_batch(
        loaded.params, x0s, ys, config=config, rng=jax.random.key(args.seed),
        greedy_lengths=args.greedy_lengths, gcg_lengths=args.gcg_lengths, blacklist=blacklist,
        top_k=args.top_k, batch_size=args.batch_size, num_iters=args.num_iters,
        chunk=args.chunk, pair_batch=args.pair_batch, keep_best=args.keep_best,
        warm_start=args.warm_start, on_stage=on_stage)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e
  seconds = time.perf_counter() - start
  lengths = [r.length for r in results]
  dist, eps = summarize(lengths, [r.base_loss for r in results], k_max)
  source = args.pairs or f"{args.workdir or args.model} held-out"
  print(f"k-ε controllability: {len(results)} pairs from {source}, targets={args.targets}, "
        f"lengths tried {lengths_tried}, {seconds:.1f} s")
  print(common.format_table(["ℓ", "pairs", "share", "mean base loss"], dist))
  print()
  print(common.format_table(["k", "ε̂(k)"], eps))
  out = args.out or (os.path.join(args.workdir, "analysis", "control_k_epsilon.png")
                     if args.workdir else "control_k_epsilon.png")
  plot_curve({f"targets={args.targets}": np.array([e for _, e in eps])}, out,
             f"k-ε controllability, {len(results)} pairs")
  print(f"\nwrote {out}")
  if args.json:
    rows = [{"prompt": p, "target": tok.decode(y), "x0": list(map(int, x)), "y": list(map(int, y)),
             "length": r.length, "control": list(r.prompt), "control_text": tok.decode(r.prompt),
             "loss": r.loss, "base_loss": r.base_loss,
             "losses": {str(k): v for k, v in r.losses.items()}}
            for p, x, y, r in zip(prompts, x0s, ys, results)]
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump({"k_epsilon": [e for _, e in eps], "pairs": rows}, f, indent=1)
    print(f"wrote {args.json}")
  return 0
