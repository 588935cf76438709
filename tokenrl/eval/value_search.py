"""Value-guided search with a (token-supervised) value model vs best-of-N (spec §6(b)).

Step-by-step beam search (OVM / TVM): keep b beams; each round every unfinished beam samples
K/b candidate next *steps* from the generator (a step ends at a delimiter token, EOS, or after
`max_step_tokens` tokens); every candidate path is scored by the value model at its last token;
the top-b of {finished beams} ∪ {candidates} survive; stop when all kept beams are finished or
after `max_rounds`; return the top-scored finished path. Best-of-N samples N full completions
and returns the top-scored one. Compute is counted in generated tokens (`tokens_generated`).

The search is host-side Python over two callables, so it is testable with a known value model:
  propose(prefixes: list[tuple[int,...]], per_prefix: int, round: int) -> list[list[tuple]]
      per_prefix continuations (token tuples, one step each) of every prefix;
  score(paths: list[tuple[int,...]]) -> np.ndarray [M] value of each (partial) path.
`model_proposer` / `model_value_scorer` build them from tokenrl params (the scorer reads the
params['value_head'] trained by rl.objective=tvm). TVM's own b and K were not recovered: the
defaults are OVM's GSM8K script (b = 4, K = 20, 10 steps of ≤ 100 tokens, temperature 0.7).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import transformer
from tokenrl.models import value_head as vh
from tokenrl.models.config import ModelConfig

Path = tuple[int, ...]
Propose = Callable[[list[Path], int, int], list[list[Path]]]
Score = Callable[[list[Path]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """path: chosen completion tokens; score: its value; finished: it ended (EOS or budget);
  tokens_generated: generator tokens spent; candidates_scored: value-model calls (paths)."""

  path: Path
  score: float
  finished: bool
  tokens_generated: int
  candidates_scored: int


def step_beam_search(propose: Propose, score: Score, *, is_finished: Callable[[Path], bool],
                     num_beams: int = 4, num_candidates: int = 20,
                     max_rounds: int = 10) -> SearchResult:
  """Value-guided step-level beam search (OVM `eval_step_beam.sh` defaults b=4, K=20, 10 steps).

  Each round, each of the a ≤ b unfinished beams gets max(1, K // b) candidates, so a round
  costs at most K candidate steps. Ties keep the earlier path (stable sort).
  """
  if num_beams < 1 or num_candidates < 1 or max_rounds < 1:
    raise ValueError(f"num_beams, num_candidates, max_rounds: expected >= 1, got {num_beams}, "
                     f"{num_candidates}, {max_rounds}")
  per_beam = max(1, num_candidates // num_beams)
  beams: list[tuple[Path, float]] = [((), float("-inf"))]
  spent = scored = 0
  for rnd in range(max_rounds):
    active = [p for p, _ in beams if not is_finished(p)]
    done = [(p, s) for p, s in beams if is_finished(p)]
    if not active:
      break
    conts = propose(active, per_beam, rnd)
    if len(conts) != len(active):
      raise ValueError(f"propose: expected {len(active)} lists of continuations, got {len(conts)}")
    cands = [pre + tuple(c) for pre, cs in zip(active, conts) for c in cs]
    spent += sum(len(c) for cs in conts for c in cs)
    values = np.asarray(score(cands), np.float64).reshape(-1)
    if values.shape != (len(cands),):
      raise ValueError(f"score: expected {len(cands)} values, got shape {values.shape}")
    scored += len(cands)
    pool = done + list(zip(cands, values.tolist()))
    order = sorted(range(len(pool)), key=lambda i: -pool[i][1])
    beams = [pool[i] for i in order[:num_beams]]
  finished = [(p, s) for p, s in beams if is_finished(p)]
  best_path, best = max(finished or beams, key=lambda ps: ps[1])
  return SearchResult(path=best_path, score=float(best), finished=is_finished(best_path),
                      tokens_generated=spent, candidates_scored=scored)


def best_of_n(sample_n: Callable[[int], list[Path]], score: Score, *, n: int) -> SearchResult:
  """Sample n full completions (`sample_n(n)`), return the top-scored (first on ties)."""
  if n < 1:
    raise ValueError(f"n: expected >= 1, got {n}")
  paths = [tuple(p) for p in sample_n(n)]
  values = np.asarray(score(paths), np.float64).reshape(-1)
  if values.shape != (len(paths),):
    raise ValueError(f"score: expected {len(paths)} values, got shape {values.shape}")
  i = int(np.argmax(values))
  return SearchResult(path=paths[i], score=float(values[i]), finished=True,
                      tokens_generated=sum(len(p) for p in paths), candidates_scored=len(paths))


# ---- tokenrl model adapters --------------------------------------------------------------------


def model_proposer(params: Any, prompt: Sequence[int], *, config: ModelConfig, rng: jax.Array,
                   max_step_tokens: int = 100, temperature: float = 0.7, top_k: int = 50,
                   stop_tokens: Sequence[int] | None = None,
                   step_delimiters: Sequence[int] = ()) -> Propose:
  """propose() sampling one step per candidate with tokenrl's sampler (OVM: τ 0.7, top-k 50).

  A step ends at a stop token (default config.eos_ids), a delimiter (e.g. the newline id), or
  after `max_step_tokens`. Round r of the search uses fold_in(rng, r).
  """
  from tokenrl.rollout import sample  # pylint: disable=g-import-not-at-top
  stops = tuple(config.eos_ids if stop_tokens is None else stop_tokens) + tuple(step_delimiters)

  def propose(prefixes: list[Path], per_prefix: int, rnd: int) -> list[list[Path]]:
    ro = sample(params, [list(prompt) + list(p) for p in prefixes], config=config,
                rng=jax.random.fold_in(rng, rnd), max_new_tokens=max_step_tokens,
                temperature=temperature, top_k=top_k, num_samples=per_prefix, stop_tokens=stops)
    toks, lens = np.asarray(ro.tokens), np.asarray(ro.mask).sum(1)
    rows = [tuple(int(x) for x in toks[i, :lens[i]]) for i in range(toks.shape[0])]
    return [rows[j * per_prefix:(j + 1) * per_prefix] for j in range(len(prefixes))]

  return propose


@functools.partial(jax.jit, static_argnames=("config",))
def _last_values(params, tokens, segment_ids, *, config):
  hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=segment_ids,
                                  return_hidden=True)
  return jax.nn.sigmoid(vh.values(params[vh.KEY], hidden[:, -1:])[:, 0])


def model_value_scorer(params: Any, prompt: Sequence[int], *, config: ModelConfig) -> Score:
  """score() = σ(w·h + b) at the last token of prompt + path (params must hold 'value_head').

  Rows are left-padded to a bucketed width (bounded compiles); the last position is always real.
  """
  from tokenrl.rollout.sampler import prepare_prompts  # pylint: disable=g-import-not-at-top
  if vh.KEY not in params:
    raise ValueError(f"params: expected a {vh.KEY!r} entry (train one with rl.objective=tvm)")

  def score(paths: list[Path]) -> np.ndarray:
    if not paths:
      return np.zeros((0,), np.float32)
    tokens, mask = prepare_prompts([list(prompt) + list(p) for p in paths], config.pad_id)
    return np.asarray(_last_values(params, jnp.asarray(tokens), jnp.asarray(mask), config=config))

  return score


def model_sample_n(params: Any, prompt: Sequence[int], *, config: ModelConfig, rng: jax.Array,
                   max_new_tokens: int, temperature: float = 0.7, top_k: int = 50,
                   stop_tokens: Sequence[int] | None = None) -> Callable[[int], list[Path]]:
  """sample_n(n) for `best_of_n`: n full completions of `prompt` (EOS included when emitted)."""
  from tokenrl.rollout import sample  # pylint: disable=g-import-not-at-top

  def sample_n(n: int) -> list[Path]:
    ro = sample(params, [list(prompt)], config=config, rng=rng, max_new_tokens=max_new_tokens,
                temperature=temperature, top_k=top_k, num_samples=n, stop_tokens=stop_tokens)
    toks, lens = np.asarray(ro.tokens), np.asarray(ro.mask).sum(1)
    return [tuple(int(x) for x in toks[i, :lens[i]]) for i in range(n)]

  return sample_n


def finished_fn(eos_ids: Sequence[int], max_tokens: int) -> Callable[[Path], bool]:
  """is_finished(path): it ends with an EOS id or holds `max_tokens` tokens."""
  eos = frozenset(int(e) for e in eos_ids)
  return lambda p: len(p) >= max_tokens or (len(p) > 0 and p[-1] in eos)
