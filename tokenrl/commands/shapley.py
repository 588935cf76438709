"""`tokenrl analyze shapley`: Shapley attribution of a prompt's parts for the model's answer.

  tokenrl analyze shapley --workdir runs/quickstart --part 12 --part + --part 7 --permanent = \
      --option 1 --option 2 [--absent_mode drop|placeholder|mask] [--out shapley.png]
  tokenrl analyze shapley --model hf_dir/ --permanent "Q: " --part "Option A costs 3." \
      --part "Option B costs 5." --permanent " Cheaper:" --option " A" --option " B"

The prompt is the --part (players) and --permanent (always present) texts, concatenated in the
order given; the tokenizer's special prefix (e.g. BOS, what it adds to an empty string) is a
permanent part in front. Parts are raw text (no chat template). With render 'tokens' (default)
each part is tokenized on its own, so removing a part never re-splits its neighbours; 'text'
[recon] re-tokenizes each coalition's string. Options: --option TEXT, each one token (the value
is read at the next-token position), or by default the --num_options most likely next tokens
with every part present. Spec: shared/specs/analysis-and-auditing.md §1; the estimator is
tokenrl.analysis.shapley.shapley_attribution (exact up to 12 parts, else sampled orderings).

Prints φ per part and option (± standard error when sampled), v(full), v(empty) and the
efficiency check Σ_i φ_i = v(full) − v(empty); writes the attribution bars as a PNG (and the
numbers as JSON with --json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from tokenrl.commands import common


class _Piece(argparse.Action):
  """--part / --permanent append (kind, text) to one list, so their order is the prompt's."""

  def __call__(self, parser, namespace, values, option_string=None):
    pieces = list(getattr(namespace, self.dest) or [])
    pieces.append((self.const, values))
    setattr(namespace, self.dest, pieces)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tokenrl analyze shapley",
                              description=__doc__.split("\n\n")[0])
  common.add_model_args(p)
  p.add_argument("--part", dest="pieces", action=_Piece, const="part", metavar="TEXT",
                 help="a prompt part that is a player (repeat; order = prompt order)")
  p.add_argument("--permanent", dest="pieces", action=_Piece, const="permanent", metavar="TEXT",
                 help="prompt text always present, at its place among the parts (repeat)")
  p.add_argument("--option", action="append", default=[], metavar="TEXT",
                 help="an answer option (one token); repeat. Default: --num_options top tokens")
  p.add_argument("--num_options", type=int, default=5,
                 help="without --option: the most likely next tokens of the full prompt")
  p.add_argument("--value", choices=("options", "vocab", "log"), default="options",
                 help="options: probability renormalized over the options [recon]; vocab: "
                 "full-vocabulary probability; log: log-probability")
  p.add_argument("--absent_mode", choices=("drop", "placeholder", "mask"), default="drop",
                 help="how an absent part is represented [recon]")
  p.add_argument("--placeholder", default=None, metavar="TEXT",
                 help="absent_mode placeholder: one token repeated to each absent part's length "
                 "(render text: the string put in an absent part's place)")
  p.add_argument("--render", choices=("tokens", "text"), default="tokens",
                 help="tokens: parts tokenized separately; text: each coalition re-tokenized "
                 "[recon]")
  p.add_argument("--num_permutations", type=int, default=None,
                 help="sampled orderings (even; antithetic pairs). Default: exact up to 12 parts")
  p.add_argument("--seed", type=int, default=0, help="orderings' seed (sampled mode)")
  p.add_argument("--chunk", type=int, default=256, help="coalition rows per forward (memory)")
  p.add_argument("--uninformative", type=common.int_list, default=None, metavar="I,J",
                 help="player indices (0-based) labelled uninformative: prints the token-noise "
                 "share of the chosen option [recon]")
  p.add_argument("--out", default=None, help="PNG of the bars (default: WORKDIR/analysis/"
                 "shapley.png, or ./shapley.png for --model)")
  p.add_argument("--json", default=None, help="also write the numbers here")
  return p


def _check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
  pieces = args.pieces or []
  bad = []
  if not any(kind == "part" for kind, _ in pieces):
    bad.append("give at least one --part TEXT (the players)")
  if args.num_options < 1:
    bad.append(f"--num_options must be >= 1, got {args.num_options}")
  if args.chunk < 1:
    bad.append(f"--chunk must be >= 1, got {args.chunk}")
  if args.num_permutations is not None and (args.num_permutations < 2 or
                                            args.num_permutations % 2):
    bad.append(f"--num_permutations must be even and >= 2 (antithetic pairs), got "
               f"{args.num_permutations}")
  if args.absent_mode == "placeholder" and args.placeholder is None:
    bad.append("--absent_mode placeholder needs --placeholder TEXT")
  if args.absent_mode != "placeholder" and args.placeholder is not None:
    bad.append("--placeholder is only used with --absent_mode placeholder")
  if args.absent_mode == "mask" and args.render == "text":
    bad.append("--absent_mode mask keeps token positions: it needs --render tokens")
  num_parts = sum(kind == "part" for kind, _ in pieces)
  wrong = [i for i in args.uninformative or () if not 0 <= i < num_parts]
  if wrong:
    bad.append(f"--uninformative {wrong[0]} is not a part index in [0, {num_parts}) (the "
               "--part pieces, 0-based)")
  empty = [i for i, (_, text) in enumerate(pieces) if not text]
  if empty:
    bad.append(f"prompt piece {empty[0]} ({pieces[empty[0]][0]}) is empty text")
  if bad:
    raise SystemExit("error: " + "; ".join(bad))
  return pieces


def _encode(tok: Any, text: str, what: str) -> list[int]:
  try:
    return list(tok.encode(text, add_special_tokens=False))
  except ValueError as e:
    raise SystemExit(f"error: {what} {text!r}: {e}") from e


def _one_token(tok: Any, text: str, what: str) -> int:
  ids = _encode(tok, text, what)
  if len(ids) != 1:
    raise SystemExit(f"error: {what} {text!r} encodes to {len(ids)} tokens {ids}; it must be "
                     "exactly one (the value is read at the next-token position)")
  return ids[0]


def _prompt(args, pieces, tok) -> tuple[list, list[int], list[str]]:
  """(prompt parts as the estimator takes them, permanent indices, part labels)."""
  special = list(tok.encode("", add_special_tokens=True))
  texts = [text for _, text in pieces]
  permanent = [i for i, (kind, _) in enumerate(pieces) if kind == "permanent"]
  if args.render == "text":
    return texts, permanent, texts
  parts = [_encode(tok, text, f"prompt piece {i}") for i, text in enumerate(texts)]
  for i, ids in enumerate(parts):
    if not ids:
      raise SystemExit(f"error: prompt piece {i} {texts[i]!r} encodes to no tokens")
  if special:  # BOS (or whatever the tokenizer puts in front): always present
    return [special] + parts, [0] + [i + 1 for i in permanent], ["<special>"] + texts
  return parts, permanent, texts


def _full_prompt_ids(args, parts, tok) -> list[int]:
  if args.render == "text":
    return list(tok.encode("".join(parts), add_special_tokens=True))
  return [t for part in parts for t in part]


@dataclasses.dataclass(frozen=True)
class _Logits:
  """value_fn that keeps the whole next-token logits [M,V] (hashable: a static jit argument)."""

  def __call__(self, logits):
    return logits


def _default_options(loaded, ids: list[int], k: int) -> list[int]:
  """The k most likely next tokens of the full prompt (the same jitted pass that scores the
  coalitions, on one row)."""
  from tokenrl.analysis import shapley_rows as R
  tokens, lengths = R.pack_rows([ids])
  row = R.Coalitions(tokens, lengths, np.arange(tokens.shape[1])[None] < lengths[:, None],
                     lengths - 1)
  logits = R.score_coalitions(loaded.params, row, config=loaded.config, value_fn=_Logits(),
                              hide=False)[0]
  return np.argsort(-logits, kind="stable")[:k].tolist()


def plot_bars(labels: list[str], options: list[str], phi: np.ndarray, stderr: np.ndarray | None,
              path: str, title: str) -> str:
  """Grouped bars: one group per part, one bar per option (error bars when sampled) -> path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n, c = phi.shape
  fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * n * max(1, c) ** 0.5 + 2), 3.6))
  width = 0.8 / c
  x = np.arange(n)
  for j in range(c):
    ax.bar(x + (j - (c - 1) / 2) * width, phi[:, j], width, label=options[j],
           yerr=None if stderr is None else 2 * stderr[:, j], capsize=2)
  ax.axhline(0, color="k", lw=0.6)
  ax.set_xticks(x, [repr(s) if len(s) <= 14 else repr(s[:12] + "…") for s in labels],
                rotation=30 if n > 5 else 0, ha="right" if n > 5 else "center", fontsize=8)
  ax.set_ylabel("φ (Shapley value)")
  ax.set_title(title, fontsize=9)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(title="option", fontsize=7, title_fontsize=7)
  return common.save_figure(fig, path)


def run(argv: list[str]) -> int:
  args = build_parser().parse_args(argv)
  pieces = _check_args(args)
  from tokenrl.analysis import shapley as S
  loaded = common.load_model(model=args.model, workdir=args.workdir)
  tok = loaded.tokenizer
  parts, permanent, labels = _prompt(args, pieces, tok)
  full_ids = _full_prompt_ids(args, parts, tok)
  if args.option:
    option_ids = [_one_token(tok, text, "--option") for text in args.option]
  else:
    option_ids = _default_options(loaded, full_ids, args.num_options)
  option_names = [tok.decode([i]) for i in option_ids]
  placeholder = None
  if args.absent_mode == "placeholder":
    placeholder = (args.placeholder if args.render == "text"
                   else _one_token(tok, args.placeholder, "--placeholder"))
  start = time.perf_counter()
  try:
    value_fn = S.option_value_fn(option_ids, normalize=args.value)
    result = S.shapley_attribution(
        loaded.params, parts, config=loaded.config, value_fn=value_fn, permanent=permanent,
        absent_mode=args.absent_mode, placeholder=placeholder, render=args.render,
        encode=lambda t: tok.encode(t, add_special_tokens=True),
        num_permutations=args.num_permutations, rng=args.seed, chunk=args.chunk)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e
  seconds = time.perf_counter() - start
  players = list(result.players)
  names = [labels[i] for i in players]

  mode = (f"exact over 2^{len(players)} = {2 ** len(players)} coalitions" if result.exact else
          f"sampled, {result.num_permutations} orderings (antithetic pairs)")
  print(f"Shapley attribution: {len(players)} parts, {len(option_ids)} options, value="
        f"{args.value}, absent_mode={args.absent_mode}, render={args.render}; {mode}; "
        f"{result.num_rows} rows scored in {seconds:.1f} s")
  print(f"prompt: {tok.decode(full_ids)!r}")
  cell = (lambda i, j: float(result.phi[i, j])) if result.exact else (
      lambda i, j: f"{result.phi[i, j]:+.4f} ± {result.stderr[i, j]:.4f}")
  headers = ["#", "part", *[f"φ[{o!r}]" for o in option_names]]
  rows = [[i, repr(name), *[cell(i, j) for j in range(len(option_ids))]]
          for i, name in enumerate(names)]
  total = result.phi.sum(0)
  rows += [["", "Σ_i φ_i", *map(float, total)],
           ["", "v(full)", *map(float, result.v_full)],
           ["", "v(empty)", *map(float, result.v_empty)],
           ["", "v(full) − v(empty)", *map(float, result.v_full - result.v_empty)]]
  print(common.format_table(headers, rows))
  print(f"efficiency error max_c |Σ_i φ_i − (v(full) − v(empty))| = {result.efficiency_error:.2e}")
  chosen = int(np.argmax(result.v_full))
  noise = None
  if args.uninformative is not None:
    u = np.zeros(len(players), bool)
    u[list(args.uninformative)] = True
    noise = S.token_noise_share(result.phi, u, chosen)
    print(f"token-noise share of option {option_names[chosen]!r} (chosen with every part "
          f"present) on parts {list(args.uninformative)}: {noise:.4f}")
  out = args.out or (os.path.join(args.workdir, "analysis", "shapley.png") if args.workdir
                     else "shapley.png")
  plot_bars(names, [repr(o) for o in option_names], result.phi,
            None if result.exact else result.stderr, out,
            f"Shapley attribution ({args.value}, {args.absent_mode}; "
            f"{'exact' if result.exact else f'M={result.num_permutations}, ±2 s.e.'})")
  print(f"\nwrote {out}")
  if args.json:
    data = {"parts": names, "options": option_names, "option_ids": option_ids,
            "phi": result.phi.tolist(), "stderr": result.stderr.tolist(),
            "v_full": result.v_full.tolist(), "v_empty": result.v_empty.tolist(),
            "exact": result.exact, "num_permutations": result.num_permutations,
            "absent_mode": args.absent_mode, "render": args.render, "value": args.value,
            "efficiency_error": result.efficiency_error, "token_noise_share": noise,
            "prompt_ids": full_ids}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(data, f, indent=1)
    print(f"wrote {args.json}")
  return 0
