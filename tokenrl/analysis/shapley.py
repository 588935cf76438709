"""Shapley attribution of prompt parts (spec analysis-and-auditing §1, arXiv 2404.01332).

The parts of a prompt that are not permanent are the players of a cooperative game; the value
of a coalition b ∈ {0,1}^n is the model's distribution over C answer options when only the
parts in b are present, v(b) [C]. The Shapley value of player i, per option:

    φ_i = Σ_{b ∌ i} w(|b|) · (v(b ∪ {i}) − v(b)),      w(s) = s! (n−s−1)! / n!      φ [n,C]

Exact, in matrix form [derived]: φ = W v with v [2^n, C] indexed by bitmask (bit j ↔ player
j) and W[j,b] = w(|b|−1) if j ∈ b else −w(|b|); W depends on n only (`shapley_weights`, cached).

Sampled [derived; the paper's estimator is unknown]: over M orderings π, player π_k gets
v(π_1..π_k) − v(π_1..π_{k−1}); φ̂ is the mean over orderings. Orderings come in antithetic pairs
(π and its reverse) by default; the stated standard error is the standard deviation of the
per-pair means over √(pairs). Efficiency Σ_i φ_i = v(full) − v(∅) holds exactly in both modes
(in sampled mode for every single ordering).

Defaults, all [recon] (spec §1(c)): exact when n ≤ 12 (4096 coalitions), else 256 antithetic
orderings; value renormalized over the options; absent parts dropped; render='tokens'.
Each absent mode defines a different game, so the result records it.

`shapley_attribution` scores the coalitions with one jitted forward over fixed-size chunks
(tokenrl/analysis/shapley_rows.py); `blackbox_attribution` uses empirical option frequencies
over R sampler draws instead (efficiency then holds for the estimated v, and for the true v
only in expectation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

from tokenrl.analysis.shapley_rows import (ABSENT_MODES, RENDERS, TRACES, Coalitions,  # noqa: F401
                                           OptionValue, check_parts, check_permanent,
                                           coalition_texts, coalition_tokens, option_value_fn,
                                           score_coalitions, text_rows)

MAX_EXACT = 12  # exact Shapley by default up to 2^12 = 4096 coalitions [recon]
MAX_WEIGHT_PLAYERS = 20  # W [n, 2^n] f64 is 160 MiB at n = 20; beyond that sample
DEFAULT_PERMUTATIONS = 256


@functools.lru_cache(maxsize=32)
def _weights(n: int) -> np.ndarray:
  sizes = np.array([bin(b).count("1") for b in range(1 << n)])  # |b| [2^n]
  # w(s) = s!(n-s-1)!/n! for s = 0..n-1, exact in integers then one division each.
  w = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                for s in range(n)] + [0.0])
  member = (np.arange(1 << n)[None, :] >> np.arange(n)[:, None]) & 1  # [n,2^n]
  out = np.where(member == 1, w[np.maximum(sizes - 1, 0)][None], -w[sizes][None])
  out.setflags(write=False)
  return out


def shapley_weights(n: int) -> np.ndarray:
  """W f64 [n, 2^n] (read-only, cached): φ = W @ v for v [2^n, C] indexed by bitmask.

  W[j,b] = w(|b|−1) if bit j of b is set, else −w(|b|), w(s) = s!(n−s−1)!/n!. Every row sums
  to 0 (a constant game has φ = 0). f64 so that φ keeps the f32 accuracy of v.
  """
  if not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_WEIGHT_PLAYERS:
    raise ValueError(f"n must be an int in [1, {MAX_WEIGHT_PLAYERS}] (W has 2^n columns), got "
                     f"{n!r}; for more players use the permutation estimator")
  return _weights(int(n))


def coalition_masks(n: int) -> np.ndarray:
  """bool [2^n, n]: row b holds the bits of b (column j = player j), bitmask order."""
  if not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_WEIGHT_PLAYERS:
    raise ValueError(f"n must be an int in [1, {MAX_WEIGHT_PLAYERS}], got {n!r}")
  return ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


def exact_shapley(values: Any) -> np.ndarray:
  """φ = W v: values [2^n] or [2^n, C] in bitmask order -> φ f64 [n] or [n, C]."""
  v = np.asarray(values, np.float64)
  m = v.shape[0] if v.ndim in (1, 2) else 0
  if m < 2 or m & (m - 1):
    raise ValueError(f"values must be [2^n] or [2^n, C] (one row per coalition, bitmask order), "
                     f"got shape {v.shape}")
  return shapley_weights(m.bit_length() - 1) @ v


def sample_orderings(n: int, num_permutations: int, *, rng: Any = None,
                     antithetic: bool = True) -> np.ndarray:
  """int [M, n] random orderings of the players; with antithetic, rows 2k+1 reverse rows 2k.

  rng: a numpy Generator, an int seed, or a jax PRNG key (None = seed 0).
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be an int >= 1, got {n!r}")
  if not isinstance(num_permutations, (int, np.integer)) or num_permutations < 1:
    raise ValueError(f"num_permutations must be an int >= 1, got {num_permutations!r}")
  if antithetic and num_permutations % 2:
    raise ValueError(f"num_permutations={num_permutations} must be even with antithetic=True "
                     "(each ordering comes with its reverse)")
  gen = _generator(rng)
  draws = num_permutations // 2 if antithetic else num_permutations
  orders = np.argsort(gen.random((draws, n)), axis=1)
  if antithetic:
    orders = np.stack([orders, orders[:, ::-1]], axis=1).reshape(num_permutations, n)
  return orders.astype(np.int32)


def _generator(rng: Any) -> np.random.Generator:
  if rng is None:
    return np.random.default_rng(0)
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  if isinstance(rng, jax.Array):
    data = np.asarray(jax.random.key_data(rng) if jax.dtypes.issubdtype(
        rng.dtype, jax.dtypes.prng_key) else rng)
    return np.random.default_rng(data.astype(np.uint32).ravel().tolist())
  raise ValueError(f"rng must be a numpy Generator, an int seed or a jax PRNG key, got "
                   f"{type(rng).__name__}")


def prefix_masks(orderings: Any) -> np.ndarray:
  """bool [M, n+1, n]: chain k of ordering m holds its first k players (k = 0..n)."""
  orders = _check_orderings(orderings)
  m, n = orders.shape
  rank = np.empty_like(orders)
  rank[np.arange(m)[:, None], orders] = np.arange(n)[None]  # rank[m, j] = step at which j joins
  return rank[:, None, :] < np.arange(n + 1)[None, :, None]


def _check_orderings(orderings: Any) -> np.ndarray:
  orders = np.asarray(orderings)
  if orders.ndim != 2 or not np.issubdtype(orders.dtype, np.integer) or orders.shape[1] < 1:
    raise ValueError(f"orderings must be int [M, n], got {orders.dtype} array of shape "
                     f"{orders.shape}")
  n = orders.shape[1]
  if not (np.sort(orders, axis=1) == np.arange(n)[None]).all():
    raise ValueError(f"every row of orderings must be a permutation of 0..{n - 1}")
  return orders


def permutation_shapley(orderings: Any, chain_values: Any, *, antithetic: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(φ̂ f64 [n, C], stderr f64 [n, C]) from M orderings and their chain values.

  chain_values [M, n+1] or [M, n+1, C]: v of the first k players of ordering m, k = 0..n
  (`prefix_masks` order). Player orderings[m, k−1] gets chain[m, k] − chain[m, k−1].
  stderr: standard deviation (ddof 1) of the independent units (antithetic pairs averaged, or
  single orderings) over √units; NaN with fewer than 2 units.
  """
  orders = _check_orderings(orderings)
  v = np.asarray(chain_values, np.float64)
  scalar = v.ndim == 2
  if scalar:
    v = v[..., None]
  m, n = orders.shape
  if v.ndim != 3 or v.shape[:2] != (m, n + 1):
    raise ValueError(f"chain_values must be [M={m}, n+1={n + 1}] or [M, n+1, C], got shape "
                     f"{np.shape(chain_values)}")
  if antithetic and m % 2:
    raise ValueError(f"antithetic=True needs an even number of orderings, got {m}")
  steps = np.diff(v, axis=1)  # [M,n,C]: gain of the k-th joiner
  contrib = np.zeros_like(steps)
  contrib[np.arange(m)[:, None], orders] = steps  # [M,n,C] by player
  units = contrib.reshape(m // 2, 2, n, -1).mean(1) if antithetic else contrib
  phi = units.mean(0)
  stderr = (units.std(0, ddof=1) / np.sqrt(len(units)) if len(units) > 1
            else np.full_like(phi, np.nan))
  return (phi[:, 0], stderr[:, 0]) if scalar else (phi, stderr)


def token_noise_share(phi: Any, uninformative: Any, option: int | None = None) -> float:
  """Σ_{i∈U} |φ_{i,c*}| / Σ_i |φ_{i,c*}| [recon]: the share of attribution on parts labelled
  uninformative (U = bool [n]) for option c* (an index into the C columns of φ [n,C]; φ [n]
  needs none). 0 when every φ is 0.

  The spec's c* is the option chosen with all parts present: `int(np.argmax(result.v_full))`.
  """
  p = np.asarray(phi, np.float64)
  if p.ndim == 2:
    if option is None or not -p.shape[1] <= option < p.shape[1]:
      raise ValueError(f"option must index one of the {p.shape[1]} option columns of phi "
                       f"{p.shape}, got {option!r}")
    p = p[:, option]
  elif p.ndim != 1:
    raise ValueError(f"phi must be [n] or [n, C], got shape {p.shape}")
  u = np.asarray(uninformative)
  if u.shape != p.shape or u.dtype != np.bool_:
    raise ValueError(f"uninformative must be bool [n={p.shape[0]}], got {u.dtype} array of "
                     f"shape {u.shape}")
  total = np.abs(p).sum()
  return float(np.abs(p[u]).sum() / total) if total > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class ShapleyResult:
  """One attribution (host numpy).

  phi [n,C] f64: per player (prompt order, permanent parts excluded) and option.
  v_full, v_empty [C]: value with every player present / absent (sampled black-box: the mean
    over chains, so that Σ_i φ_i = v_full − v_empty holds for the estimate).
  exact: φ = W v over all 2^n coalitions; else the permutation estimate.
  stderr [n,C]: standard error of φ (sampled: over antithetic pairs; exact: zeros, or for the
    black-box value the multinomial error of the R draws propagated through W).
  values [2^n,C] (exact) or None: the whole game, bitmask order.
  num_rows: coalition rows scored (forwards, or prompts sampled R times each).
  """
  phi: np.ndarray
  v_full: np.ndarray
  v_empty: np.ndarray
  exact: bool
  stderr: np.ndarray
  absent_mode: str
  render: str = "tokens"
  num_permutations: int = 0
  num_rows: int = 0
  players: tuple[int, ...] = ()
  values: np.ndarray | None = None

  @property
  def efficiency_error(self) -> float:
    """max_c |Σ_i φ_{i,c} − (v_full − v_empty)_c|."""
    return float(np.max(np.abs(self.phi.sum(0) - (self.v_full - self.v_empty))))


def _plan(n: int, num_permutations: int | None, antithetic: bool, rng: Any):
  """(exact, masks [R,n], orderings or None)."""
  if num_permutations is None and n <= MAX_EXACT:
    return True, coalition_masks(n), None
  m = DEFAULT_PERMUTATIONS if num_permutations is None else num_permutations
  orders = sample_orderings(n, m, rng=rng, antithetic=antithetic)
  return False, prefix_masks(orders).reshape(-1, n), orders


def _rows(prompt_parts: Any, masks: np.ndarray, *, permanent: Sequence[int], absent_mode: str,
          placeholder: Any, render: str, encode: Callable | None, max_len: int | None
          ) -> Coalitions:
  if render == "tokens":
    return coalition_tokens(prompt_parts, masks, permanent=permanent, absent_mode=absent_mode,
                            placeholder=placeholder, max_len=max_len)
  if encode is None:
    raise ValueError("render='text' needs encode= (str -> token ids, e.g. tokenizer.encode)")
  texts = coalition_texts(prompt_parts, masks, permanent=permanent, absent_mode=absent_mode,
                          placeholder=placeholder)
  return text_rows(texts, encode, max_len)


def _num_players(prompt_parts: Any, permanent: Sequence[int], render: str) -> list[int]:
  if render not in RENDERS:
    raise ValueError(f"render must be one of {RENDERS}, got {render!r}")
  if render == "tokens":
    return check_parts(prompt_parts, permanent)[1]
  if isinstance(prompt_parts, str) or not isinstance(prompt_parts, Sequence):
    raise ValueError("prompt_parts must be a list of strings with render='text'")
  return check_permanent(len(prompt_parts), permanent)


def shapley_attribution(params: Any, prompt_parts: Sequence[Any], *, config: Any,
                        value_fn: Callable, permanent: Sequence[int] = (),
                        absent_mode: str = "drop", placeholder: Any = None,
                        render: str = "tokens", encode: Callable | None = None,
                        num_permutations: int | None = None, antithetic: bool = True,
                        rng: Any = None, chunk: int = 256, max_len: int | None = None
                        ) -> ShapleyResult:
  """Shapley values of the prompt's non-permanent parts for the model's answer (spec §1).

  Args:
    params, config: a tokenrl model (tokenrl.models.forward).
    prompt_parts: the prompt as parts: token-id lists (render='tokens') or strings
      (render='text' [recon], with `encode`).
    value_fn: logits [M,V] f32 -> values [M,C], hashable (e.g. `option_value_fn(ids)`).
    permanent: indices of parts always present (not players), e.g. BOS and the final '?'.
    absent_mode: 'drop' | 'placeholder' | 'mask' (shapley_rows docstring); placeholder: its
      tokens (int id, or one token list per player; a string with render='text').
    num_permutations: None = exact when n ≤ 12, else 256 sampled orderings; an int = sampled.
    antithetic: sampled orderings in (π, reverse π) pairs.
    rng: orderings' randomness (numpy Generator, int seed or jax key; None = seed 0).
    chunk: rows per compiled forward (memory: 'mask' also holds a bool [L,chunk,S,S] mask, so
      lower it for deep models and long prompts); max_len: row width (default: bucketed).

  Returns:
    ShapleyResult; phi [n,C] over the players in prompt order.
  """
  players = _num_players(prompt_parts, permanent, render)
  n = len(players)
  exact, masks, orders = _plan(n, num_permutations, antithetic, rng)
  # Sampled chains repeat coalitions (∅ and the full set in every chain): score each once.
  uniq, inverse = np.unique(masks, axis=0, return_inverse=True)
  rows = _rows(prompt_parts, uniq, permanent=permanent, absent_mode=absent_mode,
               placeholder=placeholder, render=render, encode=encode, max_len=max_len)
  if isinstance(value_fn, OptionValue) and max(value_fn.option_ids) >= config.vocab_size:
    raise ValueError(f"option id {max(value_fn.option_ids)} is outside the vocabulary "
                     f"[0, {config.vocab_size})")
  if rows.tokens.max() >= config.vocab_size:
    raise ValueError(f"prompt_parts hold token id {int(rows.tokens.max())}, outside the "
                     f"vocabulary [0, {config.vocab_size})")
  if rows.lengths.max() > config.max_seq_len:
    raise ValueError(f"the longest coalition row has {int(rows.lengths.max())} tokens, past the "
                     f"model's max_seq_len {config.max_seq_len}: shorten the prompt")
  if max_len is None and rows.tokens.shape[1] > config.max_seq_len:
    # The width bucket rounds up; past the context it is cut back (no row is that long).
    rows = Coalitions(*(a[:, :config.max_seq_len] if a.ndim == 2 else a for a in rows))
  scored = score_coalitions(params, rows, config=config, value_fn=value_fn,
                            hide=absent_mode == "mask", chunk=chunk)
  if scored.ndim != 2:
    raise ValueError(f"value_fn must return [M,C] from logits [M,V], got shape {scored.shape}")
  values = scored[np.reshape(inverse, -1)]  # [R,C] in `masks` order
  return _result(values, exact=exact, orders=orders, n=n, antithetic=antithetic,
                 absent_mode=absent_mode, render=render, num_rows=len(uniq),
                 players=tuple(players))


def _result(values: np.ndarray, *, exact: bool, orders: np.ndarray | None, n: int,
            antithetic: bool, absent_mode: str, render: str, num_rows: int,
            players: tuple[int, ...], stderr: np.ndarray | None = None) -> ShapleyResult:
  values = np.asarray(values, np.float64)
  if exact:
    phi = exact_shapley(values)
    return ShapleyResult(phi, values[-1], values[0], True,
                         np.zeros_like(phi) if stderr is None else stderr, absent_mode, render,
                         0, num_rows, players, values)
  chains = values.reshape(len(orders), n + 1, -1)
  phi, err = permutation_shapley(orders, chains, antithetic=antithetic)
  return ShapleyResult(phi, chains[:, -1].mean(0), chains[:, 0].mean(0), False, err, absent_mode,
                       render, len(orders), num_rows, players, None)


def blackbox_attribution(params: Any, prompt_parts: Sequence[Any], *, config: Any,
                         option_ids: Sequence[int], rng: jax.Array, num_draws: int = 50,
                         temperature: float = 1.0, permanent: Sequence[int] = (),
                         absent_mode: str = "drop", placeholder: Any = None,
                         render: str = "tokens", encode: Callable | None = None,
                         num_permutations: int | None = None, antithetic: bool = True,
                         batch: int = 64) -> ShapleyResult:
  """Shapley values with v(b)_c = the frequency of option c among R = num_draws sampled next
  tokens (spec §1(b), black-box models; R=50 at temperature 1 [recon]).

  Uses only the sampler (`tokenrl.rollout.sample`, one new token), so it stands in for a model
  reached only through sampling. absent_mode 'mask' needs the forward pass and is refused.
  Exact mode: stderr is the multinomial error of the R draws through W,
  sqrt(Σ_b W[i,b]² v̂_{b,c}(1 − v̂_{b,c}) / R). Sampled mode: every chain gets draws of its own
  (no coalition shared across chains), so the per-pair standard error covers both the ordering
  and the draw noise.
  """
  from tokenrl.rollout.sampler import sample
  if absent_mode == "mask":
    raise ValueError("absent_mode='mask' needs the forward pass (attention-mask hook); the "
                     "black-box mode only samples: use 'drop' or 'placeholder'")
  if not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
    raise ValueError(f"num_draws must be an int >= 1, got {num_draws!r}")
  if not isinstance(batch, (int, np.integer)) or batch < 1:
    raise ValueError(f"batch must be an int >= 1, got {batch!r}")
  options = option_value_fn(option_ids).option_ids
  players = _num_players(prompt_parts, permanent, render)
  n = len(players)
  exact, masks, orders = _plan(n, num_permutations, antithetic, rng)
  rows = _rows(prompt_parts, masks, permanent=permanent, absent_mode=absent_mode,
               placeholder=placeholder, render=render, encode=encode, max_len=None)
  prompts = [r[:k].tolist() for r, k in zip(rows.tokens, rows.lengths)]
  freq = np.zeros((len(prompts), len(options)))
  # Fixed batches (the last one filled with copies of prompt 0) keep the sampler's compiled
  # shapes to one per prompt-length bucket.
  for start in range(0, len(prompts), batch):
    chunk = prompts[start:start + batch]
    got = len(chunk)
    chunk = chunk + [prompts[0]] * (batch - got) if len(prompts) > batch else chunk
    out = sample(params, chunk, config=config, rng=jax.random.fold_in(rng, start),
                 max_new_tokens=1, temperature=temperature, num_samples=num_draws,
                 stop_tokens=())
    first = np.asarray(out.tokens[:, 0]).reshape(len(chunk), num_draws)[:got]  # row b·R + r
    freq[start:start + got] = (first[:, :, None] == np.asarray(options)[None, None]).mean(1)
  stderr = None
  if exact:
    w = shapley_weights(n)
    stderr = np.sqrt((w ** 2) @ (freq * (1 - freq)) / num_draws)
  return _result(freq, exact=exact, orders=orders, n=n, antithetic=antithetic,
                 absent_mode=absent_mode, render=render, num_rows=len(prompts),
                 players=tuple(players), stderr=stderr)
