"""`tokenrl audit palace`: estimate hidden reasoning counts with a trained PALACE estimator.

  tokenrl audit palace --workdir runs/palace [--out palace.png] [--json palace.json]
  tokenrl audit palace --workdir runs/palace --pairs pairs.jsonl --delta 0.5

Without --pairs the run's held-out examples are audited (hidden_length task: the true counts
are known, so the table has RE and acc@τ, and the inflation rows simulate honest reports m and
inflated ones round(--inflate·m)). A --pairs JSONL file has one visible pair per line:
{"prompt": "12+345=", "answer": "357", "count": 150?, "domain": "math"?, "reported": 240?};
lines with "reported" get an inflation flag (reported > (1 + δ)·m̂, or the quantile rule with
--quantile). --route auto routes through a router when the estimator was trained with domain
tags (data.tiers tag:1): the router is fit on the run's training pairs (tokenrl/audit/palace.py).
Prints the table, writes the PNG (predicted vs true counts, RE histogram); exit 0, or 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tokenrl.commands.common import add_model_args, format_table, load_model, save_figure

ROUTER_TRAIN_PAIRS = 1024   # training pairs the router is fit on (cross-entropy, full batch)
CALIBRATION_PAIRS = 512     # held-out pairs the --quantile threshold is computed on


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tokenrl audit palace", description=__doc__.split("\n")[0])
  add_model_args(p)
  p.add_argument("--pairs", help="JSONL of visible pairs (default: the run's held-out examples)")
  p.add_argument("--n", type=int, default=0, help="audit the first n pairs (0 = all)")
  p.add_argument("--route", default="auto", choices=("auto", "none", "oracle", "router"),
                 help="domain tag of the estimator prompt (auto: router if trained with tags)")
  p.add_argument("--taus", default="0.1,0.2", help="acc@τ columns, comma-separated")
  p.add_argument("--delta", type=float, default=0.5, help="flag reported > (1 + δ)·m̂")
  p.add_argument("--inflate", type=float, default=1.5, help="simulated inflation factor (> 1)")
  p.add_argument("--quantile", type=float, default=0.0,
                 help="also flag with reported > q·m̂, q = this quantile of m/m̂ on a fresh "
                      "held-out draw of the run's task ([recon]; 0 = off)")
  p.add_argument("--max_new_tokens", type=int, default=0, help="0 = the run's sampler setting")
  p.add_argument("--out", default="palace_audit.png", help="PNG path")
  p.add_argument("--json", default="", help="also write the summary as JSON here")
  return p


def _fail(msg: str) -> int:
  print(f"tokenrl audit palace: {msg}", file=sys.stderr)
  return 2


def run(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  from tokenrl.audit import palace  # pylint: disable=g-import-not-at-top
  from tokenrl.data import task_hidden_length  # pylint: disable=g-import-not-at-top
  from tokenrl.data.jsonl import read_jsonl  # pylint: disable=g-import-not-at-top
  try:
    taus = tuple(float(t) for t in args.taus.split(","))
  except ValueError:
    return _fail(f"--taus must be comma-separated numbers, got {args.taus!r}")
  if args.n < 0 or args.inflate <= 1 or args.delta < 0 or not 0 <= args.quantile < 1:
    return _fail("need --n >= 0, --inflate > 1, --delta >= 0, 0 <= --quantile < 1")
  lm = load_model(model=args.model, workdir=args.workdir)
  task_run = lm.cfg is not None and lm.cfg.data.task == task_hidden_length.NAME
  tagged = task_run and task_hidden_length.parse(
      lm.cfg.data.tiers or task_hidden_length.DEFAULT_TIERS).tag
  route = ("router" if tagged else "none") if args.route == "auto" else args.route
  if args.pairs:
    try:
      pairs = palace.pairs_from_examples(read_jsonl(args.pairs))
    except (OSError, ValueError) as e:
      return _fail(f"--pairs {args.pairs}: {e}")
  elif task_run:
    pairs = palace.pairs_from_examples(lm.run.eval_examples)
  else:
    return _fail("--pairs is required unless --workdir is a hidden_length run")
  pairs = pairs[:args.n] if args.n else pairs
  if not pairs:
    return _fail("no pairs to audit")
  max_new = args.max_new_tokens or (lm.cfg.sampler.max_new_tokens if lm.cfg is not None else 20)
  common = dict(config=lm.config, tokenizer=lm.tokenizer)
  router = None
  if route == "router":
    if not task_run:
      return _fail("--route router fits the router on a hidden_length run's training pairs: "
                   "give such a --workdir, or --route oracle / none")
    train_pairs = palace.pairs_from_examples(lm.run.train_examples[:ROUTER_TRAIN_PAIRS])
    router = palace.fit_router(lm.params, train_pairs, **common)
  threshold = None
  if args.quantile:
    if not task_run:
      return _fail("--quantile calibrates on a hidden_length run's held-out examples")
    # A fresh held-out draw (seed + 1): calibrating on the audited pairs themselves would make
    # the false-positive rate on them 1 − q by construction.
    tiers = lm.cfg.data.tiers or task_hidden_length.DEFAULT_TIERS
    calib = task_hidden_length.make_examples("test", CALIBRATION_PAIRS, lm.cfg.seed + 1,
                                             tiers=tiers)
    held = palace.audit(lm.params, palace.pairs_from_examples(calib), route=route,
                        router=router, max_new_tokens=max_new, **common)
    threshold = palace.ratio_threshold(held.true, held.pred, quantile=args.quantile)
  try:
    result = palace.audit(lm.params, pairs, route=route, router=router, max_new_tokens=max_new,
                          taus=taus, delta=args.delta, inflate=args.inflate, threshold=threshold,
                          **common)
  except ValueError as e:
    return _fail(str(e))
  if result.rows:
    cols = ["domain", "n", "parsed", "mean_re", "median_re"] + [f"acc@{t:g}" for t in taus]
    print(format_table(cols, [[r[c] for c in cols] for r in result.rows]))
  else:
    print("no true counts in the pairs: no RE table")
  if route == "router":
    print(f"router: {len(router.domains)} domains {list(router.domains)}, accuracy on the "
          f"audited labels {result.router_accuracy:.4f}")
  if result.inflation:
    cols = ["rule", "factor", "delta", "threshold", "recall", "false_positive_rate"]
    print(format_table(cols, [[r[c] for c in cols] for r in result.inflation]))
  n_rep = int((~np.isnan(result.reported)).sum())
  if n_rep:
    print(f"reported counts: {int(result.flags.sum())} of {n_rep} flagged as inflated")
  path = save_figure(palace.plot(result), args.out)
  print(f"wrote {path}")
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result.summary(), f, indent=2, default=float)
    print(f"wrote {args.json}")
  return 0
