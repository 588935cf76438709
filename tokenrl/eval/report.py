"""Reports of `tokenrl eval` results: a markdown table, JSON and two plots (matplotlib Agg).

    write_report('eval_out/', results, frontier=suite.frontier(results))
    -> eval_out/results.json, results.md, accuracy_vs_tokens.png, cost_of_pass.png

`results` are `suite.run_suite` dicts. JSON has no infinity: ∞ (cost-of-pass of a strategy that
never solves some problem) is written as null and read back as inf by `load_results`. Plots:
accuracy vs mean generated tokens per attempt, one line per strategy over its ks (greedy a
point); cost-of-pass bars per strategy (spec value and the pooled cost per correct answer side
by side; ∞ marked, pass@k left out as an oracle).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

# Fields that may hold inf (written as null).
_INF_KEYS = ("cost_of_pass", "cost_per_correct", "tokens_of_pass", "tokens_per_correct",
             "cost_of_pass_solved")


def _jsonable(x: Any) -> Any:
  """inf / nan -> None, recursively (strict JSON has neither)."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, Mapping):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  return x


def _restore(x: Any, key: str = "") -> Any:
  """null -> inf under the keys that may be infinite (inverse of `_jsonable`)."""
  if isinstance(x, dict):
    return {k: _restore(v, k) for k, v in x.items()}
  if isinstance(x, list):
    return [_restore(v, key) for v in x]
  if x is None and key in _INF_KEYS + ("per_problem",):
    return float("inf")
  return x


def to_json(results: Sequence[Mapping[str, Any]], frontier: Mapping[str, Any] | None = None) -> str:
  return json.dumps(_jsonable({"results": list(results), "frontier": frontier}), indent=1,
                    allow_nan=False)


def load_results(path: str) -> list[dict[str, Any]]:
  """The results in a file written by `write_report` (or one result dict on its own)."""
  with open(path) as f:
    data = json.load(f)
  items = data["results"] if isinstance(data, dict) and "results" in data else [data]
  if not all(isinstance(r, dict) and "strategies" in r and "problems" in r for r in items):
    raise ValueError(f"{path}: not a `tokenrl eval` result file (no 'strategies'/'problems')")
  return [_restore(r) for r in items]


def _fmt(x: Any, digits: int = 3) -> str:
  if x is None or (isinstance(x, float) and math.isinf(x)):
    return "∞"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  return str(x)


def markdown_table(result: Mapping[str, Any]) -> str:
  """One result as a heading, its settings and a table (one row per strategy)."""
  control = result.get("control", {}) or {}
  ctrl = control.get("method", "none")
  if ctrl != "none":
    ctrl += " (" + ", ".join(f"{k}={v!r}" for k, v in control.items() if k != "method") + ")"
  prices = result["prices"]
  lines = [
      f"### {result['label']}",
      "",
      f"task {result['task']}, {result['num_problems']} problems, n={result['n']} samples at "
      f"temperature {result['temperature']}, max {result['max_new_tokens']} new tokens; "
      f"bon/bom score: {result['score']}, BoM alpha={result['alpha']}; control: {ctrl}; prices "
      f"per 1M tokens: in={prices['in']}, out={prices['out']}"
      + (f"; verifier errors {result['verifier_errors']}, timeouts {result['verifier_timeouts']}"
         if result.get("verifier_errors") or result.get("verifier_timeouts") else ""),
      "",
      "| strategy | accuracy | prompt tok | gen tok | cost | cost-of-pass | cost/correct "
      "| tokens-of-pass | tokens/correct |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in result["strategies"]:
    name = row["name"] + (" (oracle)" if row["family"] == "pass" else "")
    lines.append(
        f"| {name} | {row['accuracy']:.3f} | {row['prompt_tokens']:.1f} | "
        f"{row['completion_tokens']:.1f} | {_fmt(row['cost'])} | {_fmt(row['cost_of_pass'])} | "
        f"{_fmt(row['cost_per_correct'])} | {_fmt(row['tokens_of_pass'], 4)} | "
        f"{_fmt(row['tokens_per_correct'], 4)} |")
  return "\n".join(lines) + "\n"


def frontier_markdown(front: Mapping[str, Any]) -> str:
  """The frontier cost-of-pass, the unsolved problems and each contributing member's gain."""
  lines = ["### Frontier cost-of-pass", "",
           f"{len(front['members'])} members (every non-oracle strategy of every result)"
           + (f" and an expert at {front['expert_cop']}" if front.get("expert_cop") is not None
              else "") + f": frontier cost-of-pass **{_fmt(front['cost_of_pass'])}**"]
  if front["unsolved"]:
    lines[-1] += (f" ({len(front['unsolved'])} problems solved by no member, e.g. "
                  f"{front['unsolved'][:5]}; mean over the solved problems "
                  f"{_fmt(front['cost_of_pass_solved'])})")
  wins: dict[str, int] = {}
  for b in front["best"]:
    if b is not None:
      wins[b] = wins.get(b, 0) + 1
  lines += ["", "| member | problems where it is cheapest | marginal gain (mean G_p) |",
            "|---|---:|---:|"]
  for m, count in sorted(wins.items(), key=lambda kv: -kv[1]):
    lines.append(f"| {m} | {count} | {_fmt(front['gain'].get(m))} |")
  return "\n".join(lines) + "\n"


def markdown(results: Sequence[Mapping[str, Any]], frontier: Mapping[str, Any] | None = None) -> str:
  parts = [markdown_table(r) for r in results]
  if frontier is not None:
    parts.append(frontier_markdown(frontier))
  return "\n".join(parts)


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)  # Agg: no display, no pyplot global state
  return fig


def plot_accuracy_tokens(results: Sequence[Mapping[str, Any]], path: str) -> None:
  """Accuracy vs mean generated tokens per attempt: a line per (result, strategy) over k."""
  fig = _figure(7, 4.5)
  ax = fig.add_subplot()
  many = len(results) > 1
  for res in results:
    families: dict[str, list[Mapping[str, Any]]] = {}
    for row in res["strategies"]:
      families.setdefault(row["family"], []).append(row)
    for fam, rows in families.items():
      rows = sorted(rows, key=lambda r: r["k"])
      name = fam + ("@k (oracle)" if fam == "pass" else "@k" if fam != "greedy" else "")
      ax.plot([r["completion_tokens"] for r in rows], [r["accuracy"] for r in rows],
              marker="o", linestyle="--" if fam == "pass" else "-",
              label=f"{res['label']}: {name}" if many else name)
  ax.set_xscale("log")
  from matplotlib.ticker import ScalarFormatter  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_major_formatter(ScalarFormatter())  # 10, 20, 40 rather than 1×10^1, 2×10^1
  ax.xaxis.set_minor_formatter(ScalarFormatter())
  ax.set_xlabel("mean generated tokens per attempt")
  ax.set_ylabel("accuracy")
  ax.set_title("accuracy vs generated tokens")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_cost_of_pass(results: Sequence[Mapping[str, Any]], path: str) -> None:
  """Cost-of-pass (spec) and pooled cost per correct answer per non-oracle strategy; ∞ marked."""
  many = len(results) > 1
  names, spec, pooled = [], [], []
  for res in results:
    for row in res["strategies"]:
      if row["family"] == "pass":
        continue
      names.append(f"{res['label']}:{row['name']}" if many else row["name"])
      spec.append(row["cost_of_pass"])
      pooled.append(row["cost_per_correct"])
  fig = _figure(max(5.0, 0.45 * len(names) + 2), 4.5)
  ax = fig.add_subplot()
  finite = [v for v in spec + pooled if v is not None and math.isfinite(v)]
  top = max(finite) if finite else 1.0
  xs = range(len(names))
  for offset, values, label in ((-0.2, spec, "cost-of-pass (mean over problems)"),
                                (0.2, pooled, "cost per correct (pooled)")):
    heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
    ax.bar([x + offset for x in xs], heights, width=0.4, label=label)
    for x, v in zip(xs, values):
      if v is None or not math.isfinite(v):
        ax.text(x + offset, 0.02 * top, "∞", ha="center", va="bottom", fontsize=9)
  ax.set_xticks(list(xs))
  ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel(f"cost per correct answer (prices per 1M tokens: in={results[0]['prices']['in']}, "
                f"out={results[0]['prices']['out']})" if results else "cost", fontsize=8)
  ax.set_title("cost-of-pass per strategy (∞: some problem never solved)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def write_report(out_dir: str, results: Sequence[Mapping[str, Any]],
                 frontier: Mapping[str, Any] | None = None) -> dict[str, str]:
  """results.json, results.md and the two plots in `out_dir` (created); name -> path."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name) for name in
           ("results.json", "results.md", "accuracy_vs_tokens.png", "cost_of_pass.png")}
  with open(paths["results.json"], "w") as f:
    f.write(to_json(results, frontier))
  with open(paths["results.md"], "w") as f:
    f.write(markdown(results, frontier))
  plot_accuracy_tokens(results, paths["accuracy_vs_tokens.png"])
  plot_cost_of_pass(results, paths["cost_of_pass.png"])
  return paths
