"""AF1 experiments on a prompt set (spec §2(b) 4-5): accuracy of the AF1 subgraph against the
full model, the (l_wait, l_transfer) grid, CAMA versus mean / zero ablation, the necessity
check, the AF1 context curve and greedy head pruning in the transfer layers.

`AF1Eval` holds the prompts (token lists, ragged allowed), their gold answers (token lists)
and the CAMA tables of every depth, built once from reference prompts; each method then runs
restricted forwards only (tokenrl/analysis/af1.py), compiled once per (rows, length, l_wait).

Templates (ambiguity B3): prompts and references are grouped by length; each length is one
template with its own table, slot = absolute position (see af1.py). A prompt length with no
reference of that length is a ValueError naming the lengths.

Metric (ambiguity B4): metric='first' (default) scores the argmax of the last prompt
position against the first answer token. metric='greedy' [recon] decodes the whole answer
under the restriction: at step k the sequence is prompt + the k tokens decoded so far, its
last token is the new one, and its CAMA table is built from the references continued by the
full model's own greedy tokens to the same length (so generated positions are conditioned on
their token too). A row is right when the first len(answer) tokens equal the answer and, with
stop_ids, the next one is a stop token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl import models
from tokenrl.analysis import af1 as A

ABLATIONS = ("cama", "mean", "zero")
METRICS = ("first", "greedy")


@dataclasses.dataclass(frozen=True)
class Score:
  """accuracy in [0,1]; correct bool [B] in prompt order; logprob: mean log-probability of the
  gold first answer token at the last prompt position; fallback_rate: share of entering
  (row, position) pairs whose token was never seen there in the references (CAMA only)."""
  accuracy: float
  correct: np.ndarray
  logprob: float
  fallback_rate: float


@dataclasses.dataclass(frozen=True)
class PruneStep:
  """One greedy pruning step: head (layer, head) removed, the score after removing it (and
  every head removed before it)."""
  layer: int
  head: int
  accuracy: float
  logprob: float


@functools.partial(jax.jit, static_argnames="config")
def _full_last_logits(params, tokens, *, config):
  A.TRACES["full"] += 1
  return models.forward(params, tokens, config=config)[0][:, -1].astype(jnp.float32)


def _chunks(tokens: np.ndarray, chunk: int):
  """(start, rows padded to a bucket shape, real count): bounded compiles (af1.bucket)."""
  n = len(tokens)
  rows = A.bucket(n, chunk)
  for start in range(0, n, rows):
    part = tokens[start:start + rows]
    real = len(part)
    if real < rows:  # repeat the last row: real tokens, results dropped
      part = np.concatenate([part, np.repeat(part[-1:], rows - real, axis=0)])
    yield start, part, real


def _as_rows(name: str, rows: Any) -> list[list[int]]:
  if isinstance(rows, np.ndarray):
    rows = rows.tolist()
  out = [list(map(int, r)) for r in rows]
  if not out:
    raise ValueError(f"{name} is empty: give at least one token list")
  for i, r in enumerate(out):
    if not r:
      raise ValueError(f"{name}[{i}] is empty")
  return out


class AF1Eval:
  """AF1 experiments over prompts [B] (token lists) with gold answers [B] (token lists).

  refs: reference prompts (token lists) for CAMA, the same template(s) as the prompts; keep
  them disjoint from the prompts (a (t, v) seen once would otherwise hand an input its own
  residual). l_waits: the depths to build tables for (default 0..L).
  """

  def __init__(self, params: Any, prompts: Sequence[Sequence[int]],
               answers: Sequence[Sequence[int]], *, config: models.ModelConfig,
               refs: Sequence[Sequence[int]], l_waits: Sequence[int] | None = None,
               metric: str = "first", stop_ids: Sequence[int] = (), chunk: int = 256) -> None:
    if metric not in METRICS:
      raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if chunk < 1:
      raise ValueError(f"chunk must be >= 1, got {chunk}")
    self.params, self.config, self.metric, self.chunk = params, config, metric, chunk
    self.prompts, self.answers = _as_rows("prompts", prompts), _as_rows("answers", answers)
    if len(self.prompts) != len(self.answers):
      raise ValueError(f"prompts has {len(self.prompts)} rows but answers has "
                       f"{len(self.answers)}: one answer per prompt")
    refs = _as_rows("refs", refs)
    v = config.vocab_size
    for name, rows in (("prompts", self.prompts), ("answers", self.answers), ("refs", refs)):
      bad = [i for i, r in enumerate(rows) if min(r) < 0 or max(r) >= v]
      if bad:
        raise ValueError(f"{name}[{bad[0]}] holds ids outside [0, {v})")
    self.stop_ids = tuple(int(s) for s in stop_ids)
    num_layers = config.num_layers
    self.l_waits = tuple(range(num_layers + 1)) if l_waits is None else tuple(
        int(l) for l in l_waits)
    if not self.l_waits or any(not 0 <= l <= num_layers for l in self.l_waits):
      raise ValueError(f"l_waits must be ints in [0, {num_layers}], got {l_waits}")
    # One answer token for 'first'; the whole answer (+ a stop token) for 'greedy'.
    self.steps = 1 if metric == "first" else (
        max(len(a) for a in self.answers) + (1 if self.stop_ids else 0))

    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(self.prompts):
      by_len.setdefault(len(p), []).append(i)
    ref_by_len: dict[int, list[list[int]]] = {}
    for r in refs:
      ref_by_len.setdefault(len(r), []).append(r)
    missing = sorted(set(by_len) - set(ref_by_len))
    if missing:
      raise ValueError(f"refs hold no prompt of length {missing} (prompt lengths "
                       f"{sorted(by_len)}, reference lengths {sorted(ref_by_len)}): CAMA needs "
                       "references of each prompt template")
    # groups: length -> (prompt indices [B_S], tokens [B_S,S]); tables[(S, k)][l_wait].
    self.groups = {s: (np.asarray(ix), np.asarray([self.prompts[i] for i in ix], np.int32))
                   for s, ix in sorted(by_len.items())}
    self.ref_counts = {s: len(ref_by_len[s]) for s in self.groups}
    self.tables: dict[tuple[int, int], dict[int, A.CamaTable]] = {}
    for s in self.groups:
      ext = self._continue(np.asarray(ref_by_len[s], np.int32), self.steps - 1)
      for k in range(self.steps):
        self.tables[(s, k)] = A.cama_tables(params, ext[:, :s + k], config=config,
                                            l_waits=self.l_waits, chunk=chunk)
    self._full: Score | None = None

  # ------------------------------------------------------------------------- internals

  def _continue(self, tokens: np.ndarray, steps: int) -> np.ndarray:
    """tokens [N,S] continued by `steps` greedy tokens of the full model -> [N,S+steps]."""
    for _ in range(steps):
      nxt = np.empty(len(tokens), np.int32)
      for start, part, real in _chunks(tokens, self.chunk):
        logits = _full_last_logits(self.params, jnp.asarray(part), config=self.config)
        nxt[start:start + real] = np.asarray(jnp.argmax(logits, -1))[:real]
      tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens

  def _run(self, step_logits: Callable[[np.ndarray, int, int], tuple[np.ndarray, int]]
           ) -> Score:
    """Score of a predictor step_logits(tokens [b,S+k], S, k) -> (logits [b,V], fallbacks)."""
    b = len(self.prompts)
    pred = np.zeros((b, self.steps), np.int64)
    logprob = np.zeros(b)
    fallbacks = entries = 0
    for s, (ix, toks) in self.groups.items():
      cur = toks
      for k in range(self.steps):
        logits, fb = step_logits(cur, s, k)
        fallbacks, entries = fallbacks + fb, entries + cur.size
        nxt = logits.argmax(-1)
        pred[ix, k] = nxt
        if k == 0:
          lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
          gold = np.asarray([self.answers[i][0] for i in ix])
          logprob[ix] = logits[np.arange(len(ix)), gold] - lse
        cur = np.concatenate([cur, nxt[:, None].astype(np.int32)], axis=1)
    correct = np.asarray([self._right(pred[i], a) for i, a in enumerate(self.answers)])
    return Score(float(correct.mean()), correct, float(logprob.mean()),
                 fallbacks / max(entries, 1))

  def _right(self, pred: np.ndarray, answer: list[int]) -> bool:
    if self.metric == "first":
      return int(pred[0]) == answer[0]
    n = len(answer)
    if pred[:n].tolist() != answer:
      return False
    return not self.stop_ids or int(pred[n]) in self.stop_ids

  def _restricted(self, tokens: np.ndarray, table: A.CamaTable | None, mask: jax.Array,
                  head_mask: Any) -> tuple[np.ndarray, int]:
    out = np.empty((len(tokens), self.config.vocab_size), np.float32)
    fallbacks = 0
    for start, part, real in _chunks(tokens, self.chunk):
      logits, fb = A.restricted_forward(self.params, part, config=self.config, cama=table,
                                        attn_mask=mask, head_mask=head_mask)
      out[start:start + real] = np.asarray(logits)[:real]
      fallbacks += int(np.asarray(fb)[:real].sum())
    return out, fallbacks

  def _table(self, s: int, k: int, l_wait: int, ablation: str) -> A.CamaTable:
    if ablation not in ABLATIONS:
      raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if l_wait not in self.l_waits:
      raise ValueError(f"l_wait={l_wait} has no CAMA table: build AF1Eval with l_waits "
                       f"including it (has {list(self.l_waits)})")
    table = self.tables[(s, k)][l_wait]
    return table if ablation == "cama" else (
        table.token_agnostic() if ablation == "mean" else table.zeroed())

  # ----------------------------------------------------------------------- experiments

  def full(self) -> Score:
    """The unrestricted model (plain forward)."""
    if self._full is None:
      def step(tokens, s, k):
        out = np.empty((len(tokens), self.config.vocab_size), np.float32)
        for start, part, real in _chunks(tokens, self.chunk):
          out[start:start + real] = np.asarray(
              _full_last_logits(self.params, jnp.asarray(part), config=self.config))[:real]
        return out, 0
      self._full = self._run(step)
    return self._full

  def score(self, l_wait: int, l_transfer: int, *, ablation: str = "cama",
            keep_bos: bool = True, head_mask: Any = None,
            cut_layers: Sequence[int] = ()) -> Score:
    """The AF1 subgraph (af1_forward) with the wait stage replaced by `ablation`: 'cama'
    (context-aware mean), 'mean' (token-agnostic position mean) or 'zero'."""
    num_layers = self.config.num_layers

    def step(tokens, s, k):
      mask = A.af1_masks(s + k, num_layers=num_layers, l_wait=l_wait, l_transfer=l_transfer,
                         keep_bos=keep_bos, cut_layers=cut_layers)
      logits, fb = self._restricted(tokens, self._table(s, k, l_wait, ablation), mask,
                                    head_mask)
      return logits, fb if ablation == "cama" else 0
    A.check_split(num_layers, l_wait, l_transfer)
    return self._run(step)

  def grid(self, *, ablation: str = "cama", keep_bos: bool = True) -> np.ndarray:
    """f32 [L+1, L+1]: accuracy at (l_wait, l_transfer); NaN where l_wait + l_transfer > L or
    l_wait has no table."""
    num_layers = self.config.num_layers
    out = np.full((num_layers + 1, num_layers + 1), np.nan)
    for w in self.l_waits:
      for t in range(num_layers - w + 1):
        out[w, t] = self.score(w, t, ablation=ablation, keep_bos=keep_bos).accuracy
    return out

  def necessity(self, l_wait: int, l_transfer: int, *, keep_bos: bool = True
                ) -> dict[int, float]:
    """{transfer layer l: accuracy when, in layer l only, the last token also loses its links to
    every other token but BOS}. A large drop = layer l's transfer is necessary."""
    return {l: self.score(l_wait, l_transfer, keep_bos=keep_bos, cut_layers=(l,)).accuracy
            for l in range(l_wait, l_wait + l_transfer)}

  def context_curve(self, *, keep_bos: bool = True) -> np.ndarray:
    """f32 [L+1]: accuracy of the full model when the last token sees only itself (+ BOS) from
    layer k on (index k; k = L is the full model). The smallest k whose accuracy is back at the
    full model's is where the last token stops needing the context."""
    num_layers = self.config.num_layers
    out = np.zeros(num_layers + 1)
    for k_from in range(num_layers + 1):
      def step(tokens, s, k):
        mask = A.context_cut_masks(s + k, num_layers=num_layers, from_layer=k_from,
                                   keep_bos=keep_bos)
        return self._restricted(tokens, None, mask, None)
      out[k_from] = self._run(step).accuracy
    return out

  def prune_heads(self, l_wait: int, l_transfer: int, *, keep_bos: bool = True,
                  min_accuracy: float | None = None,
                  max_heads: int | None = None) -> list[PruneStep]:
    """Greedy head pruning in the transfer layers: repeatedly zero (head_mask) the head whose
    removal keeps the highest accuracy (ties: the highest gold log-probability), until every
    transfer head is gone, max_heads are removed, or accuracy would fall below min_accuracy."""
    A.check_split(self.config.num_layers, l_wait, l_transfer)
    num_layers, q = self.config.num_layers, self.config.num_heads
    head_mask = np.ones((num_layers, q), np.float32)
    left = [(l, h) for l in range(l_wait, l_wait + l_transfer) for h in range(q)]
    limit = len(left) if max_heads is None else min(max_heads, len(left))
    path: list[PruneStep] = []
    while left and len(path) < limit:
      best = None
      for l, h in left:
        trial = head_mask.copy()
        trial[l, h] = 0.0
        sc = self.score(l_wait, l_transfer, keep_bos=keep_bos, head_mask=trial)
        key = (sc.accuracy, sc.logprob)
        if best is None or key > best[0]:
          best = (key, l, h)
      (acc, lp), l, h = best
      if min_accuracy is not None and acc < min_accuracy:
        break
      head_mask[l, h] = 0.0
      left.remove((l, h))
      path.append(PruneStep(l, h, acc, lp))
    return path


def pick_cell(grid: np.ndarray, full_accuracy: float, *, tolerance: float = 0.10
              ) -> tuple[int, int] | None:
  """The AF1 cell of an accuracy grid [L+1, L+1] (NaN = no cell): among cells within
  `tolerance` of the full model, the one that waits the most layers, then transfers in the
  fewest; None if no cell is that close."""
  close = [(w, t) for w, t in zip(*np.nonzero(np.nan_to_num(grid, nan=-1.0)
                                            >= full_accuracy - tolerance))]
  if not close:
    return None
  w, t = max(close, key=lambda c: (c[0], -c[1]))
  return int(w), int(t)
