"""Cost-of-pass (spec §16): the expected cost of one correct answer, per model and at the frontier.

For a model m (or a model plus a test-time strategy: majority vote, BoM and FFS count as separate
"models") and a problem p, from R runs:

    C_m(p) = E[cost of one attempt],  cost = n_in · price_in + n_out · price_out
    R_m(p) = E[performance]           (correct ∈ {0, 1}, or a score in [0, 1])
    v(m, p) = C_m(p) / R_m(p)         a ratio of means; ∞ when R_m(p) = 0
    V_p(M) = min(min_{m∈M} v(m, p), v_expert(p))            frontier over a set of models
    frontier cost-of-pass = mean_p V_p(M)                   an error if any V_p(M) = ∞
    G_p = V_p(M) − V_p(M ∪ {m})                             marginal gain of adding m [recon]

The per-problem minimum comes before the mean over problems, as in the reference
`estimate.py`. Self-hosted models have no price: `tokens_of_pass` puts generated tokens in place
of money (FLOPs-of-pass is `cost_of_pass` with FLOPs per run as the costs).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

_FIELDS = {"in": "prompt_price_per_1m", "out": "completion_price_per_1m"}


@dataclasses.dataclass(frozen=True)
class PriceTable:
  """Prices in currency units (e.g. USD) per 1M tokens, as providers quote them.

  Reasoning tokens are billed as completion tokens, so n_out counts every generated token.
  """
  prompt_price_per_1m: float
  completion_price_per_1m: float

  def __post_init__(self):
    for name in ("prompt_price_per_1m", "completion_price_per_1m"):
      value = getattr(self, name)
      if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite price >= 0, got {value}")


def parse_price_table(text: str) -> PriceTable:
  """'in=0.15,out=0.6' -> PriceTable(0.15, 0.6): prompt and completion price per 1M tokens.

  Both fields are required, each once; errors name the offending field.
  """
  values: dict[str, float] = {}
  for part in text.split(","):
    key, sep, raw = part.partition("=")
    key = key.strip()
    if not sep:
      raise ValueError(f"price table {text!r}: field {part.strip()!r} is not of the form key=value")
    if key not in _FIELDS:
      raise ValueError(f"price table {text!r}: unknown field {key!r}, expected 'in' or 'out'")
    if key in values:
      raise ValueError(f"price table {text!r}: field {key!r} given twice")
    try:
      values[key] = float(raw)
    except ValueError:
      raise ValueError(f"price table {text!r}: field {key!r} is not a number: {raw.strip()!r}") \
          from None
    if not np.isfinite(values[key]) or values[key] < 0:
      raise ValueError(f"price table {text!r}: field {key!r} must be a finite price >= 0, "
                       f"got {raw.strip()}")
  missing = [k for k in _FIELDS if k not in values]
  if missing:
    raise ValueError(f"price table {text!r}: missing field(s) {missing}")
  return PriceTable(**{_FIELDS[k]: v for k, v in values.items()})


def attempt_cost(n_in, n_out, prices: PriceTable):
  """Cost of one attempt (elementwise over arrays): n_in · price_in + n_out · price_out.

  n_in: prompt tokens (repeated per sample: with N samples an attempt bills the prompt N times
  unless the provider caches it; pass what is billed); n_out: every generated token.
  """
  n_in, n_out = np.asarray(n_in, np.float64), np.asarray(n_out, np.float64)
  if (n_in < 0).any() or (n_out < 0).any():
    raise ValueError("n_in, n_out: token counts must be >= 0")
  cost = (n_in * prices.prompt_price_per_1m + n_out * prices.completion_price_per_1m) / 1e6
  return float(cost) if cost.ndim == 0 else cost


def cost_of_pass(costs, correct):
  """v = mean(costs) / mean(correct) over the last axis (runs); ∞ where mean(correct) = 0.

  costs, correct: [R] -> float, or [P, R] -> [P] (one value per problem).
  """
  c, ok = np.asarray(costs, np.float64), np.asarray(correct, np.float64)
  if c.shape != ok.shape or c.ndim not in (1, 2) or c.shape[-1] == 0:
    raise ValueError(f"costs, correct: expected equal shapes [R] or [P, R] with R >= 1, "
                     f"got {c.shape} and {ok.shape}")
  mean_cost, rate = c.mean(-1), ok.mean(-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    v = np.where(rate > 0, mean_cost / np.where(rate > 0, rate, 1.0), np.inf)
  return float(v) if v.ndim == 0 else v


def tokens_of_pass(tokens, correct):
  """Accelerator-native cost-of-pass: generated tokens per correct answer (C = tokens per run)."""
  return cost_of_pass(tokens, correct)


def task_cost_of_pass(costs, correct) -> float:
  """One model's cost-of-pass on a task: mean over problems of v(m, p); costs, correct [P, R].

  ∞ when some problem is never solved (use the frontier with an expert baseline to bound it).
  """
  if np.ndim(costs) != 2:
    raise ValueError(f"costs: expected shape [P, R], got {np.shape(costs)}")
  return float(np.mean(cost_of_pass(costs, correct)))


def _per_problem(per_model: Mapping[str, np.ndarray], expert_cop) -> np.ndarray:
  """Columns [M (+1), P] of per-problem cost-of-pass, the expert's last."""
  rows, p = [], None
  for name, v in per_model.items():
    v = np.asarray(v, np.float64)
    if v.ndim != 1 or (p is not None and v.shape[0] != p):
      raise ValueError(f"per_model[{name!r}]: expected shape [{p if p is not None else 'P'}], "
                       f"got {v.shape}")
    p = v.shape[0]
    rows.append(v)
  if expert_cop is not None:
    e = np.asarray(expert_cop, np.float64)
    if e.ndim > 1 or (e.ndim == 1 and p is not None and e.shape[0] != p):
      raise ValueError(f"expert_cop: expected a float or shape [{p}], got {e.shape}")
    p = e.shape[0] if p is None and e.ndim == 1 else p
    if p is None:
      raise ValueError("per_model: empty and expert_cop a scalar: the number of problems is "
                       "unknown")
    rows.append(np.broadcast_to(e, (p,)))
  if not rows:
    raise ValueError("per_model: no models and no expert_cop")
  return np.stack(rows)


def frontier_per_problem(per_model: Mapping[str, np.ndarray], expert_cop=None) -> np.ndarray:
  """V_p(M) [P]: the minimum over models (and the expert baseline, if given) of v(m, p).

  per_model: name -> per-problem cost-of-pass [P]; expert_cop: the expert's cost of a correct
  answer (wage × time), a float for every problem or [P]; None leaves the expert out.
  """
  return _per_problem(per_model, expert_cop).min(0)


def frontier_cost_of_pass(per_model: Mapping[str, np.ndarray], expert_cop=None) -> float:
  """Task frontier: mean over problems of V_p(M); ValueError naming the problems where V_p = ∞."""
  v = frontier_per_problem(per_model, expert_cop)
  bad = np.flatnonzero(np.isinf(v))
  if bad.size:
    raise ValueError(f"frontier cost-of-pass is infinite for problems {bad.tolist()}: no model "
                     "solves them; add an expert_cop or inspect frontier_per_problem")
  return float(v.mean())


def marginal_gain(per_model: Mapping[str, np.ndarray], candidate, expert_cop=None) -> np.ndarray:
  """G_p = V_p(M) − V_p(M ∪ {m}) [P], ≥ 0: how much adding `candidate` (v(m, p) [P]) lowers the
  frontier [recon]. M may be empty (then V_p(M) is the expert, or ∞). ∞ where only the candidate
  solves p; 0 where neither does (∞ − ∞ is taken as no gain, not NaN).

  Counterfactual attribution of a family already in M: marginal_gain(M without it, its v).
  """
  cand = np.asarray(candidate, np.float64)
  if cand.ndim != 1:
    raise ValueError(f"candidate: expected shape [P], got {cand.shape}")
  if per_model:
    before = frontier_per_problem(per_model, expert_cop)
    if before.shape != cand.shape:
      raise ValueError(f"candidate: expected shape {before.shape}, got {cand.shape}")
  else:
    before = np.full(cand.shape, np.inf)
    if expert_cop is not None:
      e = np.asarray(expert_cop, np.float64)
      if e.ndim > 1 or (e.ndim == 1 and e.shape != cand.shape):
        raise ValueError(f"expert_cop: expected a float or shape {cand.shape}, got {e.shape}")
      before = np.broadcast_to(e, cand.shape).copy()
  after = np.minimum(before, cand)
  with np.errstate(invalid="ignore"):
    return np.where(np.isinf(before) & np.isinf(after), 0.0, before - after)
