"""PALACE counts on the host: the `<count>N</count>` parser, relative error, acc@τ, the count
reward and the inflation flag (spec analysis-and-auditing.md §5, arXiv 2508.00912).

A PALACE estimator reads a visible (prompt, answer) pair and writes its guess m̂ of the hidden
reasoning token count m as `<count>1234</count>`. Everything here is plain numpy over `M` rows
(M = N = B·G in the RL loop, or the audited pairs):

  RE      = |m̂ − m| / m                                   relative_error     [M]
  acc@τ   = mean 1[RE ≤ τ]        (inclusive)             accuracy_at        []
  reward  = max(0, 1 − RE)        kind='linear'           count_reward       [M]
          = 1[RE ≤ τ]             kind='threshold'
  flag    = reported > (1 + δ)·m̂                          inflation_flag     [M] bool
          = reported > q·m̂,  q = held-out quantile of m/m̂ (ratio_threshold, behind a flag)

Parsing is one strict regex on the whole stripped completion, ASCII digits only, at most 9 of
them, no leading zeros: nothing else is ever converted to a number, and a completion that does
not match (junk, two tags, '1e3', '١٢', '-5', ' 12') is unparseable, scores reward 0, and counts
as a miss in acc@τ. The formats, reward shape and flag rule are [recon] (spec §5(f) E1, E3).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

# [0-9], not \d: Python's \d also matches '١' or '７', which no consumer reads as a number.
_COUNT_RE = re.compile(r"<count>(0|[1-9][0-9]{0,8})</count>")
MAX_TEXT_CHARS = 256   # longer completions are unparseable before the regex runs at all
REWARD_KINDS = ("linear", "threshold")


def format_count(count: int) -> str:
  """12 -> '<count>12</count>': the completion the estimator is trained to write."""
  return f"<count>{int(count)}</count>"


def parse_count(text: Any) -> int | None:
  """'<count>1234</count>' -> 1234; anything else (see the module docstring) -> None."""
  if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
    return None
  m = _COUNT_RE.fullmatch(text.strip())
  return int(m.group(1)) if m else None


def parse_counts(texts: Sequence[str]) -> np.ndarray:
  """float64 [M]: the parsed counts, NaN where a text is unparseable."""
  return np.array([np.nan if (c := parse_count(t)) is None else c for t in texts], np.float64)


def _as_counts(x: Any, name: str) -> np.ndarray:
  a = np.asarray(x, np.float64)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array [M], got shape {a.shape}")
  return a


def relative_error(pred: Any, true: Any) -> np.ndarray:
  """RE = |m̂ − m| / m, float64 [M]; a NaN prediction (unparseable) gives RE = inf.

  Args:
    pred: m̂ [M], NaN where no count was parsed.
    true: m [M], every entry > 0 (a zero count has no relative error).
  """
  p, t = _as_counts(pred, "pred"), _as_counts(true, "true")
  if p.shape != t.shape:
    raise ValueError(f"pred and true: expected equal shapes [M], got {p.shape} and {t.shape}")
  if not np.all(t > 0):
    raise ValueError(f"true: expected counts > 0, got {t[~(t > 0)][:5].tolist()}")
  re_ = np.abs(p - t) / t
  return np.where(np.isnan(p), np.inf, re_)


def accuracy_at(re_: Any, tau: float) -> float:
  """acc@τ = mean 1[RE ≤ τ] (inclusive: RE = τ counts), over all rows (inf = a miss)."""
  r = _as_counts(re_, "re")
  if r.size == 0:
    raise ValueError("re: expected at least one row, got an empty array")
  # A hair of slack: 150 vs 200 is RE 0.25 exactly on paper, 0.25000000000000006 in floats.
  return float(np.mean(r <= tau + 1e-12))


def count_reward(texts: Sequence[str], true: Any, *, kind: str = "linear",
                 tau: float = 0.1) -> np.ndarray:
  """float32 [M]: r = max(0, 1 − RE) ('linear') or 1[RE ≤ τ] ('threshold').

  Args:
    texts: M decoded completions.
    true: m [M]; NaN (or <= 0) marks a row without a true count, which scores 0.
    kind: 'linear' | 'threshold'.
    tau: the threshold of 'threshold' (inclusive).
  """
  if kind not in REWARD_KINDS:
    raise ValueError(f"kind: expected one of {REWARD_KINDS}, got {kind!r}")
  t = _as_counts(true, "true")
  if len(texts) != t.shape[0]:
    raise ValueError(f"texts and true: expected the same M rows, got {len(texts)} and {t.shape[0]}")
  pred = parse_counts(texts)
  known = t > 0                                       # NaN > 0 is False
  re_ = np.full(t.shape, np.inf)
  if known.any():
    re_[known] = relative_error(pred[known], t[known])
  r = np.maximum(0.0, 1.0 - re_) if kind == "linear" else (re_ <= tau + 1e-12).astype(np.float64)
  return r.astype(np.float32)


def true_count(example: Mapping[str, Any]) -> int | None:
  """The hidden count m of an example: example['count'] (a positive int), else a
  '<count>N</count>' answer with N > 0, else None (no count: the row scores 0)."""
  c = example.get("count")
  if c is not None:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c <= 0:
      raise ValueError(f"example['count']: expected a positive int, got {c!r}")
    return int(c)
  parsed = parse_count(example.get("answer"))
  return parsed if parsed else None


def true_counts(examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """float64 [M]: `true_count` of each example, NaN where it has none."""
  return np.array([np.nan if (c := true_count(ex)) is None else c for ex in examples], np.float64)


def count_linear_reward(completion: str, example: Mapping[str, Any]) -> float:
  """Per-example form of count_reward(kind='linear'): max(0, 1 − RE) (reward registry 'count')."""
  return float(count_reward([completion], true_counts([example]), kind="linear")[0])


def count_threshold_reward(completion: str, example: Mapping[str, Any]) -> float:
  """1[RE ≤ 0.1]: the hidden_length task's verifier, so evaluation accuracy is acc@0.1."""
  return float(count_reward([completion], true_counts([example]), kind="threshold",
                            tau=0.1)[0])


def inflation_flag(reported: Any, predicted: Any, *, delta: float = 0.5,
                   ratio_threshold: float | None = None) -> np.ndarray:
  """bool [M]: whether a reported (billed) hidden count looks inflated.

  Default rule: reported > (1 + δ)·m̂. With `ratio_threshold` q (from `ratio_threshold` on
  honest held-out rows, [recon]): reported > q·m̂ instead, and δ is not used. A NaN m̂ (no
  estimate) is never flagged: there is no evidence either way.
  """
  rep, pred = _as_counts(reported, "reported"), _as_counts(predicted, "predicted")
  if rep.shape != pred.shape:
    raise ValueError(f"reported and predicted: expected equal shapes [M], got {rep.shape} and "
                     f"{pred.shape}")
  if ratio_threshold is None:
    if not delta >= 0:
      raise ValueError(f"delta: expected >= 0, got {delta}")
    factor = 1.0 + delta
  else:
    if not ratio_threshold > 0:
      raise ValueError(f"ratio_threshold: expected > 0, got {ratio_threshold}")
    factor = float(ratio_threshold)
  with np.errstate(invalid="ignore"):
    return np.where(np.isnan(pred), False, rep > factor * pred)


def ratio_threshold(true: Any, predicted: Any, *, quantile: float = 0.95) -> float:
  """The `quantile` of m/m̂ over honest held-out rows with an estimate: the alternative
  inflation rule flags reported > q·m̂ (false-positive rate ≈ 1 − quantile on that data)."""
  t, p = _as_counts(true, "true"), _as_counts(predicted, "predicted")
  if not 0 < quantile < 1:
    raise ValueError(f"quantile: expected in (0, 1), got {quantile}")
  ok = ~np.isnan(p) & (p > 0)
  if not ok.any():
    raise ValueError("predicted: no row has a positive estimate to take a ratio over")
  return float(np.quantile(t[ok] / p[ok], quantile))
