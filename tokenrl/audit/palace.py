"""PALACE on the user side: estimate hidden reasoning counts for visible (prompt, answer)
pairs with a trained estimator, route each pair to its domain, report RE / acc@τ and flag
inflated reports (spec analysis-and-auditing.md §5, arXiv 2508.00912; mechanics [recon]).

  rows  = pairs_from_examples(examples)                  # visible pairs (+ count, domain)
  router = fit_router(params, train_rows, config=, tokenizer=)      # only for a routed estimator
  result = audit(params, rows, config=, tokenizer=, route='router', router=router,
                 max_new_tokens=20)
  result.table(), result.inflation, plot(result)

The metrics, reward and inflation rule are those of tokenrl/data/palace.py (re-exported here as
the spec's `palace.relative_error`, `palace.count_reward`, `palace.inflation_flag`), so the RL
reward (tokenrl/methods/palace.py) and the audit measure the same thing.

Router design (spec §5(f) E2: classifier vs prompt-based): a classifier whose choice is written
into the prompt. p = softmax(W f(x) + b) [M, n_dom], f(x) = the estimator's final-normed hidden
states mean-pooled over the real tokens of the untagged pair (`models.forward(...,
return_hidden=True)`), standardised; W, b trained with cross-entropy on the domain labels of the
training pairs (Adam, full batch, zero init: deterministic). The argmax domain becomes the
estimator's prompt tag ('math:12+345=357;'), which the estimator saw with the true domain during
SFT and GRPO (data.tiers tag:1). Why not per-domain heads or adapters: the estimator writes its
count as text through the ordinary sampler and policy loss, and a tag needs no change to either
(a per-domain unembedding or LoRA would need the sampler and the jitted loss to route rows);
and why not let the estimator infer the domain itself: that is the shared estimator
(tag:0), which `benchmarks/analysis_palace.py` compares against.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl import models
from tokenrl.data.palace import (accuracy_at, count_reward, format_count, inflation_flag,
                                 parse_count, parse_counts, ratio_threshold, relative_error)
from tokenrl.data.prompts import decode_completions, left_pad, tokenize_prompts
from tokenrl.data.task_hidden_length import estimator_prompt
from tokenrl.models.config import ModelConfig
from tokenrl.rollout import sample

__all__ = [
    "relative_error", "accuracy_at", "count_reward", "inflation_flag", "ratio_threshold",
    "parse_count", "parse_counts", "format_count", "Pair", "pairs_from_examples",
    "estimate_counts", "pooled_features", "Router", "train_router", "fit_router",
    "router_probs", "AuditResult", "audit", "count_table", "inflation_report", "plot",
]

ROUTES = ("none", "oracle", "router")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One audited pair: the visible prompt and answer, and what the auditor may know.

  count: the true hidden count m (for RE tables; None = unknown); domain: its label (for the
  oracle route, router training and per-domain rows); reported: the provider's billed count.
  """
  prompt: str
  answer: str
  count: int | None = None
  domain: str | None = None
  reported: int | None = None


def pairs_from_examples(examples: Sequence[Mapping[str, Any]]) -> list[Pair]:
  """Pairs from hidden_length examples, or from JSONL rows {prompt, answer, count?, domain?,
  reported?} (a row with 'visible_prompt' is a task example: its visible pair is used)."""
  out = []
  for i, ex in enumerate(examples):
    task_example = "visible_prompt" in ex
    vp, va = ("visible_prompt", "visible_answer") if task_example else ("prompt", "answer")
    if vp not in ex or va not in ex:
      raise ValueError(f"pairs[{i}]: expected keys 'prompt' and 'answer' (the visible pair), "
                       f"got {sorted(ex)}")
    def as_count(key):
      v = ex.get(key)
      if v is None:
        return None
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"pairs[{i}]['{key}']: expected a positive int, got {v!r}")
      return int(v)
    out.append(Pair(str(ex[vp]), str(ex[va]), as_count("count"),
                    None if ex.get("domain") is None else str(ex["domain"]), as_count("reported")))
  return out


# ---------------------------------------------------------------------------------------------
# The estimator and the router's features.


def _chunks(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


def estimate_counts(params: Any, prompts: Sequence[str], *, config: ModelConfig, tokenizer: Any,
                    max_new_tokens: int, batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
  """Greedy estimates m̂ [M] (float64, NaN = unparseable) and the completions, for estimator
  prompts ('12+345=357;' or tagged). Rows are padded to `batch_size` so every chunk reuses
  one compiled sampler."""
  ids = tokenize_prompts(tokenizer, list(prompts), use_chat_template=False)
  texts: list[str] = []
  for start, stop in _chunks(len(ids), batch_size):
    chunk = ids[start:stop]
    chunk = chunk + [chunk[0]] * (batch_size - len(chunk)) if len(ids) > batch_size else chunk
    out = sample(params, chunk, config=config, rng=jax.random.key(0), temperature=0.0,
                 max_new_tokens=max_new_tokens, stop_tokens=tuple(tokenizer.eos_token_ids))
    decoded = decode_completions(tokenizer, np.asarray(out.tokens), np.asarray(out.mask))
    texts += decoded[:stop - start]
  return parse_counts(texts), texts


def pooled_features(params: Any, texts: Sequence[str], *, config: ModelConfig, tokenizer: Any,
                    batch_size: int = 256) -> np.ndarray:
  """f(x) float32 [M, D]: final-normed hidden states [M,S,D] averaged over each text's real
  tokens (padding excluded through segment ids, never by token value)."""
  ids = tokenize_prompts(tokenizer, list(texts), use_chat_template=False)
  width = max(map(len, ids))
  feats = []
  for start, stop in _chunks(len(ids), batch_size):
    chunk = ids[start:stop]
    chunk = chunk + [chunk[0]] * (batch_size - len(chunk)) if len(ids) > batch_size else chunk
    tokens, lengths = left_pad(chunk, tokenizer.pad_id, min_bucket=width)       # [M',S]
    seg = models.segment_ids_from_lengths(np.asarray(lengths, np.int32), tokens.shape[1])
    feats.append(np.asarray(_pooled(params, jnp.asarray(tokens), seg, config=config))
                 [:stop - start])
  return np.concatenate(feats).astype(np.float32)


@functools.partial(jax.jit, static_argnames="config")
def _pooled(params, tokens, segment_ids, *, config):
  hidden, _ = models.forward(params, tokens, config=config, segment_ids=segment_ids,
                             return_hidden=True)                               # [M,S,D]
  w = (segment_ids > 0).astype(jnp.float32)[..., None]                         # [M,S,1]
  return (hidden.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)  # [M,D]


@dataclasses.dataclass(frozen=True)
class Router:
  """p = softmax(W·(f − mean)/std + b): w [D, n_dom], b [n_dom], mean/std [D], domains names."""
  w: np.ndarray
  b: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  domains: tuple[str, ...]

  def predict(self, features: np.ndarray) -> list[str]:
    return [self.domains[i] for i in np.argmax(router_probs(self, features), axis=1)]


def router_probs(router: Router, features: Any) -> np.ndarray:
  """float32 [M, n_dom]: softmax(W f̃ + b) with f̃ the standardised features [M, D]."""
  f = np.asarray(features, np.float32)
  if f.ndim != 2 or f.shape[1] != router.w.shape[0]:
    raise ValueError(f"features: expected [M, {router.w.shape[0]}], got shape {f.shape}")
  z = ((f - router.mean) / router.std) @ router.w + router.b                     # [M,n_dom]
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def train_router(features: Any, labels: Sequence[str], *, domains: Sequence[str] | None = None,
                 steps: int = 300, learning_rate: float = 0.05,
                 weight_decay: float = 1e-3) -> Router:
  """Fits W, b by cross-entropy on (features [M, D], domain labels [M]); full-batch Adam from
  zeros, so the result is a deterministic function of the data.

  weight_decay: L2 on W (keeps the logits finite on separable data, where plain cross-entropy
  grows W without bound).
  """
  f = np.asarray(features, np.float32)
  if f.ndim != 2 or f.shape[0] != len(labels) or f.shape[0] == 0:
    raise ValueError(f"features: expected [M, D] with M = len(labels) = {len(labels)} > 0, got "
                     f"shape {f.shape}")
  names = tuple(sorted(set(labels))) if domains is None else tuple(domains)
  unknown = sorted(set(labels) - set(names))
  if unknown or len(names) < 2:
    raise ValueError(f"labels: need >= 2 domains, each in {names}; got unknown {unknown}")
  y = jnp.asarray([names.index(l) for l in labels], jnp.int32)                  # [M]
  mean, std = f.mean(0), f.std(0) + 1e-6                                         # [D]
  p = _fit_router(jnp.asarray((f - mean) / std), y, num_domains=len(names), steps=steps,
                  learning_rate=learning_rate, weight_decay=weight_decay)
  return Router(np.asarray(p["w"]), np.asarray(p["b"]), mean, std, names)


@functools.partial(jax.jit, static_argnames=("num_domains", "steps", "learning_rate",
                                             "weight_decay"))
def _fit_router(x, y, *, num_domains, steps, learning_rate, weight_decay):
  """Full-batch Adam on mean CE + weight_decay·|W|² from zeros; x [M,D], y [M] -> {w, b}."""
  tx = optax.adam(learning_rate)

  def loss(p):
    logits = x @ p["w"] + p["b"]                                                 # [M,n_dom]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + weight_decay * jnp.sum(p["w"] ** 2)

  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  p = {"w": jnp.zeros((x.shape[1], num_domains)), "b": jnp.zeros(num_domains)}
  (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
  return p


def fit_router(params: Any, pairs: Sequence[Pair], *, config: ModelConfig, tokenizer: Any,
               domains: Sequence[str] | None = None, **kwargs: Any) -> Router:
  """`train_router` on the estimator's pooled features of the untagged `pairs` (each with a
  domain label)."""
  missing = [i for i, p in enumerate(pairs) if p.domain is None]
  if missing:
    raise ValueError(f"pairs: the router trains on domain labels; pairs {missing[:5]} have none")
  feats = pooled_features(params, [estimator_prompt(p.prompt, p.answer) for p in pairs],
                          config=config, tokenizer=tokenizer)
  return train_router(feats, [p.domain for p in pairs], domains=domains, **kwargs)


# ---------------------------------------------------------------------------------------------
# Tables, inflation, the whole audit.


def count_table(pred: Any, true: Any, domains: Sequence[str] | None = None, *,
                taus: Sequence[float] = (0.1, 0.2)) -> list[dict[str, Any]]:
  """One row per domain (sorted) and 'all': n, parsed (fraction with a count), mean_re and
  median_re over the parsed rows, acc@τ over all rows (an unparseable row is a miss)."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
  re_ = relative_error(pred, true)
  groups = [("all", np.ones(len(true), bool))]
  if domains is not None:
    d = np.asarray(list(domains))
    groups += [(name, d == name) for name in sorted(set(domains))]
  rows = []
  for name, sel in groups:
    r = re_[sel]
    finite = r[np.isfinite(r)]
    rows.append({"domain": name, "n": int(sel.sum()), "parsed": float(np.isfinite(r).mean()),
                 "mean_re": float(finite.mean()) if finite.size else float("nan"),
                 "median_re": float(np.median(finite)) if finite.size else float("nan"),
                 **{f"acc@{t:g}": accuracy_at(r, t) for t in taus}})
  return rows


def inflation_report(pred: Any, true: Any, *, factor: float = 1.5, delta: float = 0.5,
                     threshold: float | None = None) -> dict[str, float]:
  """Flag recall on reports inflated ×`factor` (round(factor·m)) and the false-positive rate
  on honest reports (m), under `inflation_flag(delta=, ratio_threshold=threshold)`."""
  if not factor > 1:
    raise ValueError(f"factor: expected > 1 (an inflated report), got {factor}")
  true = np.asarray(true, np.float64)
  honest = inflation_flag(true, pred, delta=delta, ratio_threshold=threshold)
  inflated = inflation_flag(np.round(factor * true), pred, delta=delta, ratio_threshold=threshold)
  return {"factor": float(factor), "rule": "quantile" if threshold is not None else "delta",
          "delta": float(delta), "threshold": float("nan") if threshold is None else threshold,
          "recall": float(inflated.mean()), "false_positive_rate": float(honest.mean())}


@dataclasses.dataclass
class AuditResult:
  """Per-pair arrays [M] (pred NaN = unparseable; true/reported NaN = unknown), the route used,
  the router's chosen domains and accuracy against the labels (NaN without a router or labels),
  and the tables."""
  pairs: list[Pair]
  prompts: list[str]
  texts: list[str]
  pred: np.ndarray
  true: np.ndarray
  reported: np.ndarray
  flags: np.ndarray
  route: str
  routed_domains: list[str | None]
  router_accuracy: float
  rows: list[dict[str, Any]]
  inflation: list[dict[str, float]]

  def summary(self) -> dict[str, Any]:
    return {"route": self.route, "router_accuracy": self.router_accuracy, "table": self.rows,
            "inflation": self.inflation, "flagged_reports": int(self.flags.sum()),
            "reports": int((~np.isnan(self.reported)).sum())}


def audit(params: Any, pairs: Sequence[Pair], *, config: ModelConfig, tokenizer: Any,
          max_new_tokens: int, route: str = "none", router: Router | None = None,
          taus: Sequence[float] = (0.1, 0.2), delta: float = 0.5, inflate: float = 1.5,
          threshold: float | None = None, batch_size: int = 256) -> AuditResult:
  """Estimate every pair's count and report.

  route: 'none' (untagged prompts: a shared estimator), 'oracle' (the pairs' own domain
    labels as tags) or 'router' (the router's argmax domain as tag).
  threshold: the quantile rule's ratio q (from `ratio_threshold` on honest held-out data)
    instead of δ, for the flags and the inflation rows.
  Tables and inflation rows need true counts (pairs without one are left out of them); flags
  are computed for pairs with a reported count.
  """
  if route not in ROUTES:
    raise ValueError(f"route: expected one of {ROUTES}, got {route!r}")
  if not pairs:
    raise ValueError("pairs: nothing to audit (empty)")
  untagged = [estimator_prompt(p.prompt, p.answer) for p in pairs]
  labels = [p.domain for p in pairs]
  router_acc = float("nan")
  if route == "router":
    if router is None:
      raise ValueError("route='router' needs a router (fit_router on labelled training pairs)")
    tags: list[str | None] = router.predict(
        pooled_features(params, untagged, config=config, tokenizer=tokenizer,
                        batch_size=batch_size))
    labelled = [i for i, l in enumerate(labels) if l is not None]
    if labelled:
      router_acc = float(np.mean([tags[i] == labels[i] for i in labelled]))
  elif route == "oracle":
    if any(l is None for l in labels):
      raise ValueError("route='oracle' needs every pair's domain label")
    tags = list(labels)
  else:
    tags = [None] * len(pairs)
  prompts = [estimator_prompt(p.prompt, p.answer, t) for p, t in zip(pairs, tags)]
  pred, texts = estimate_counts(params, prompts, config=config, tokenizer=tokenizer,
                                max_new_tokens=max_new_tokens, batch_size=batch_size)
  nan = lambda v: np.nan if v is None else float(v)
  true = np.array([nan(p.count) for p in pairs])
  reported = np.array([nan(p.reported) for p in pairs])
  has_rep = ~np.isnan(reported)
  flags = np.zeros(len(pairs), bool)
  if has_rep.any():
    flags[has_rep] = inflation_flag(reported[has_rep], pred[has_rep], delta=delta,
                                    ratio_threshold=threshold)
  known = ~np.isnan(true)
  rows, infl = [], []
  if known.any():
    dom = [l if l is not None else "?" for l in np.asarray(labels, object)[known]]
    rows = count_table(pred[known], true[known], dom if any(l is not None for l in labels)
                       else None, taus=taus)
    infl = [inflation_report(pred[known], true[known], factor=inflate, delta=delta)]
    if threshold is not None:
      infl.append(inflation_report(pred[known], true[known], factor=inflate, delta=delta,
                                   threshold=threshold))
  return AuditResult(list(pairs), prompts, texts, pred, true, reported, flags, route, tags,
                     router_acc, rows, infl)


def plot(result: AuditResult, *, title: str = "PALACE audit"):
  """A matplotlib figure: predicted vs true counts (per domain, y = x and ±10% lines) and the
  histogram of relative errors of the parsed rows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
  ok = ~np.isnan(result.true) & ~np.isnan(result.pred)
  doms = np.asarray([p.domain or "?" for p in result.pairs], object)
  for name in sorted(set(doms[ok])):
    sel = ok & (doms == name)
    ax1.scatter(result.true[sel], result.pred[sel], s=10, alpha=0.6, label=str(name))
  if ok.any():
    lo, hi = float(np.min(result.true[ok])), float(np.max(result.true[ok]))
    xs = np.array([lo, hi])
    ax1.plot(xs, xs, "k-", lw=1, label="estimate = true")
    ax1.plot(xs, 1.1 * xs, "k:", lw=0.8, label="±10%")
    ax1.plot(xs, 0.9 * xs, "k:", lw=0.8)
    ax2.hist(np.abs(result.pred[ok] - result.true[ok]) / result.true[ok], bins=30, color="C2")
    ax1.legend(fontsize=8)
  ax1.set_xlabel("true hidden count m")
  ax1.set_ylabel("estimate m̂")
  ax1.set_title(f"{title}: route={result.route}")
  ax2.set_xlabel("relative error |m̂ − m| / m")
  ax2.set_ylabel("pairs")
  parsed = float(ok.sum()) / max(int((~np.isnan(result.true)).sum()), 1)
  ax2.set_title(f"RE histogram (parsed {parsed:.0%})")
  fig.tight_layout()
  return fig
