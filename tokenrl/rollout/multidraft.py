"""Multi-draft acceptance rules: K-SEQ / SpecTr (Sun et al. 2023) and the optimal multi-draft
acceptance of Hu et al. (ICLR 2025). Spec: shared/specs/decoding-and-test-time.md §0.3, §4-§5.

Notation as in the spec: `p` is the target (processed) distribution, `q` the draft one; both are
f32 probabilities over the last axis V (rows sum to 1). Every sampler here is lossless: the token
it emits is distributed exactly as p, whatever the candidates were, provided the candidates were
drawn from q as the sampler assumes (i.i.d. for K-SEQ; i.i.d. or without replacement for
recursive rejection).

Samplers (jit-able, batched over a leading B axis, static shapes):
  kseq_select          one position, k i.i.d. candidates, K-SEQ rule (§4(b) steps 1-5).
  spectr_verify        k i.i.d. draft sequences of length L, K-SEQ depth by depth (§4(b)).
  spectr_verify_greedy temperature 0: longest exact match with the target's argmax.
  recursive_rejection  recursive rejection sampling, with or without replacement (§5(b)).

Diagnostics ("optimal acceptance printed next to the achieved one", §5(a)):
  kseq_acceptance, optimal_multidraft_acceptance (sorted-prefix formula, i.i.d. drafts, O(V log V)),
  optimal_multidraft_acceptance_bruteforce (exact minimum over vocabulary subsets, numpy f64, small
  V; the only exact route for drafts without replacement), recursive_rejection_acceptance (exact,
  by enumeration) and acceptance_report.

The closed-form functions run on numpy arrays in float64 (numpy in, numpy out) or on jax arrays
in f32, so tests can check them to 1e-8 without turning on jax_enable_x64.

RNG: every sampler takes `key`, either one PRNG key (split into one key per row) or a batch of B
keys, one per row, so that a row's draws do not depend on the other rows (spec §0.1.3).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Largest vocabulary for the subset enumerations (2^V subsets times the draft tuples).
MAX_BRUTEFORCE_VOCAB = 12


def _xp(*arrays):
  """numpy for numpy inputs (float64 diagnostics), jax.numpy otherwise."""
  return np if all(isinstance(a, (np.ndarray, np.generic, float, int)) for a in arrays) else jnp


def _check_probs(name, x, ndim=None):
  if ndim is not None and x.ndim != ndim:
    raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(x.shape)}")
  if x.ndim < 1:
    raise ValueError(f"{name}: expected [..., V] probabilities, got shape {tuple(x.shape)}")


def _check_same(name_a, a, name_b, b):
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(f"{name_b}: expected shape {tuple(a.shape)} (that of {name_a}), "
                     f"got {tuple(b.shape)}")


def _row_keys(key, batch: int):
  """One key per row: `key` is a single key (typed or raw uint32[2]) or already B keys."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single_ndim = 0 if typed else 1
  if key.ndim == single_ndim:
    return jax.random.split(key, batch)
  if key.ndim == single_ndim + 1 and key.shape[0] == batch:
    return key
  raise ValueError(f"key: expected one PRNG key or {batch} keys (one per row), "
                   f"got shape {tuple(key.shape)}")


def _categorical(keys, weights):
  """One draw per row from unnormalised non-negative weights [B,V]; rows of zeros are not allowed
  (callers guard them)."""
  logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# K-SEQ (SpecTr, §4(b)) at one position.
# --------------------------------------------------------------------------------------------


def _one_minus_pow(beta, k, xp):
  """1 − (1 − β)^k, the probability that at least one of k candidates is accepted.

  Computed as −expm1(k·log1p(−β)): the direct form loses all digits in f32 when kβ ≪ 1, and the
  residual formula divides it by β. k = 0 gives 0 (no candidate, nothing accepted).
  """
  safe = xp.minimum(beta, 1.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    out = -xp.expm1(k * xp.log1p(-safe))
  out = xp.where(safe >= 1.0, 1.0, out)  # log1p(−1) = −inf: every candidate is accepted.
  return xp.where(k > 0, out, 0.0)


def kseq_beta(p, q, rho):
  """β(ρ) = Σ_x min(q(x), p(x)/ρ): probability that one candidate X ~ q is drawn and accepted.

  p, q: [..., V] probabilities; rho: [...] (≥ 1). Returns [...].
  """
  xp = _xp(p, q, rho)
  return xp.sum(xp.minimum(q, p / xp.expand_dims(rho, -1)), axis=-1)


def _kseq_gap(p, q, k, rho, xp):
  """f(ρ) = 1 − (1 − β(ρ))^k − ρ·β(ρ); K-SEQ with this ρ is valid (residual ≥ 0) iff f(ρ) ≤ 0."""
  beta = kseq_beta(p, q, rho)
  return _one_minus_pow(beta, k, xp) - rho * beta


def _kseq_rho_and_root(p, q, k, num_iters):
  """(ρ [...], at_root bool [...]) with at_root False where ρ = k was taken without a root."""
  xp = _xp(p, q)
  dtype = p.dtype
  k = xp.broadcast_to(xp.asarray(k, dtype=dtype), p.shape[:-1])
  # f(1) ≥ 0 always (1 − (1−α)^k ≥ α). For k ≤ 1 the only candidate ρ is 1 (k = 1 is §2).
  lo = xp.ones(p.shape[:-1], dtype)
  hi0 = xp.maximum(k, 1.0)
  f_hi = _kseq_gap(p, q, k, hi0, xp)
  hi = hi0
  # Invariant: f(lo) ≥ 0, f(hi) ≤ 0 (where f(k) < 0); ρ = hi is on the valid side. 30 halvings
  # of [1, k] leave a width (k−1)·2⁻³⁰, below f32 resolution at ρ ≈ k.
  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    pos = _kseq_gap(p, q, k, mid, xp) >= 0
    return xp.where(pos, mid, lo), xp.where(pos, hi, mid)

  if xp is np:
    for i in range(num_iters):
      lo, hi = halve(i, (lo, hi))
  else:  # one traced body instead of num_iters unrolled copies
    lo, hi = jax.lax.fori_loop(0, num_iters, halve, (lo, hi))
  no_root = f_hi >= 0
  rho = xp.where(no_root, hi0, hi)
  # k = 0: no candidates, the residual must be p itself, which only the general formula gives.
  at_root = (k >= 1) & ~no_root
  return rho, at_root


def kseq_rho(p, q, k, num_iters: int = 30):
  """ρ* of K-SEQ (§4(b) step 2): the root on [1, k] of 1 − (1 − β(ρ))^k = ρ·β(ρ), by bisection.

  p, q: [..., V] target and draft probabilities (numpy f64 or jax f32).
  k: number of i.i.d. candidates, int or int array [...] (per row; 0 allowed).
  Returns ρ [...] in [1, max(k, 1)]; ρ = k where the gap is still ≥ 0 at k ("no root").
  Note: by Bernoulli's inequality (1 − β)^k ≥ 1 − kβ the gap at ρ = k is always ≤ 0, so a root
  exists in [1, k]; "no root" only happens for k ≤ 1 or β(k) = 0 (p and q with disjoint support),
  where every formula below agrees.
  """
  _check_probs("p", p)
  _check_same("p", p, "q", q)
  return _kseq_rho_and_root(p, q, k, num_iters)[0]


def kseq_acceptance(p, q, k, num_iters: int = 30):
  """K-SEQ acceptance 1 − (1 − β(ρ*))^k: probability that the emitted token is a candidate.

  p, q: [..., V]; k: int or int array [...]. Returns [...].
  """
  xp = _xp(p, q)
  rho = kseq_rho(p, q, k, num_iters)
  k = xp.broadcast_to(xp.asarray(k, dtype=p.dtype), p.shape[:-1])
  return _one_minus_pow(kseq_beta(p, q, rho), k, xp)


def _kseq_core(p, q, candidates, live, keys, num_iters):
  """K-SEQ over the live candidates of each row (see kseq_select).

  p, q: f32 [B,V]; candidates: int32 [B,k]; live: bool [B,k]; keys: [B].
  Candidates are visited in index order; dead ones are skipped. Returns (accepted, token, chosen).
  """
  k_live = jnp.sum(live, axis=-1).astype(p.dtype)
  rho, at_root = _kseq_rho_and_root(p, q, k_live, num_iters)
  beta = kseq_beta(p, q, rho)
  acc = _one_minus_pow(beta, k_live, jnp)

  keys2 = jax.vmap(lambda kk: jax.random.split(kk, 2))(keys)
  u = jax.vmap(lambda kk: jax.random.uniform(kk, (candidates.shape[1],), p.dtype))(keys2[:, 0])
  p_c = jnp.take_along_axis(p, candidates, axis=-1)
  q_c = jnp.take_along_axis(q, candidates, axis=-1)
  # Accept with probability min(1, p/(ρq)), written u·ρ·q < p: division-free, and strict so that a
  # token with p = 0 is never accepted (not even if q = 0 there).
  accept = live & (u * rho[:, None] * q_c < p_c)
  any_accept = jnp.any(accept, axis=-1)
  first = jnp.argmax(accept, axis=-1).astype(jnp.int32)

  # Residual (step 4). General: p − min(q, p/ρ)·(1 − (1−β)^k)/β, for any valid ρ; the ratio tends
  # to k as β → 0. At the root it equals ρ, and the residual is max(0, p − ρq).
  ratio = jnp.where(beta > 0, acc / jnp.where(beta > 0, beta, 1.0), k_live)
  general = p - jnp.minimum(q, p / rho[:, None]) * ratio[:, None]
  simplified = p - jnp.minimum(rho[:, None] * q, p)
  resid = jnp.maximum(jnp.where(at_root[:, None], simplified, general), 0.0)
  # Guard: the residual has mass (1−β)^k; if rounding leaves none, the residual never fires in
  # exact arithmetic, and p is the safe law to fall back on.
  resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, p)
  resid_tok = _categorical(keys2[:, 1], resid)

  token = jnp.where(any_accept, jnp.take_along_axis(candidates, first[:, None], axis=-1)[:, 0],
                    resid_tok)
  chosen = jnp.where(any_accept, first, -1).astype(jnp.int32)
  return any_accept, token.astype(jnp.int32), chosen


def kseq_select(p, q, candidates, num_candidates, key, num_iters: int = 30):
  """K-SEQ at one position (§4(b) steps 1-5): emit a token ~ p, one of the candidates if possible.

  p: f32 [B,V] target probabilities; q: f32 [B,V] draft probabilities.
  candidates: int32 [B,k]; row b's first num_candidates[b] entries are i.i.d. draws from q[b]
    (duplicates included: multiplicity matters); the rest are padding and are never chosen.
  num_candidates: int32 [B], 0 ≤ num_candidates ≤ k.
  key: one PRNG key or [B] keys.
  Returns (accepted bool [B], token int32 [B], chosen int32 [B]: index of the accepted candidate,
  −1 where the residual fired).
  """
  _check_probs("p", p, ndim=2)
  _check_same("p", p, "q", q)
  if candidates.ndim != 2 or candidates.shape[0] != p.shape[0]:
    raise ValueError(f"candidates: expected [B={p.shape[0]}, k], got {tuple(candidates.shape)}")
  num_candidates = jnp.asarray(num_candidates)
  if num_candidates.shape != (p.shape[0],):
    raise ValueError(f"num_candidates: expected [{p.shape[0]}], got {tuple(num_candidates.shape)}")
  live = jnp.arange(candidates.shape[1])[None, :] < num_candidates[:, None]
  keys = _row_keys(key, p.shape[0])
  return _kseq_core(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32),
                    candidates.astype(jnp.int32), live, keys, num_iters)


# --------------------------------------------------------------------------------------------
# SpecTr over sequences (§4(b) "Multi-step SpecTr").
# --------------------------------------------------------------------------------------------


def _check_spectr(p, drafts, q=None):
  if drafts.ndim != 3:
    raise ValueError(f"drafts: expected [B, k, L], got {tuple(drafts.shape)}")
  b, k, length = drafts.shape
  if p.ndim != 4 or p.shape[:3] != (b, k, length + 1):
    raise ValueError(f"p: expected [B={b}, k={k}, L+1={length + 1}, V], got {tuple(p.shape)}")
  if q is not None and q.shape != (b, k, length, p.shape[-1]):
    raise ValueError(f"q: expected [{b}, {k}, {length}, {p.shape[-1]}], got {tuple(q.shape)}")


def _first_survivor_rows(x, alive):
  """x [B,k,...] at each row's first alive draft → [B,...]."""
  rep = jnp.argmax(alive, axis=-1)
  return jnp.take_along_axis(x, rep.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]


def spectr_verify(p, q, drafts, key, num_iters: int = 30):
  """SpecTr verification of k i.i.d. draft sequences (§4(b) "Multi-step SpecTr").

  p: f32 [B,k,L+1,V]: p[b,i,j] = p(· | context, drafts[b,i,:j]) (the target's verify pass over
    every draft row; j = L is the bonus distribution).
  q: f32 [B,k,L,V]: q[b,i,j] = q(· | context, drafts[b,i,:j]), the law drafts[b,i,j] was drawn from.
  drafts: int32 [B,k,L], k i.i.d. sequences from the draft.
  key: one PRNG key or [B] keys.
  At depth j the survivors are the drafts whose first j tokens equal the accepted prefix; their
  j-th tokens are i.i.d. from q(· | prefix) (duplicates count), and K-SEQ runs over them against
  p(· | prefix), both read from the first survivor (all survivors share the prefix, so any would
  do). An accepted token keeps the drafts that hold it; the residual stops the round; if all L
  depths are accepted a bonus token is drawn from p(· | full prefix).
  Returns (n_accepted int32 [B] in [0, L], accepted_draft int32 [B]: a draft row whose first
  n_accepted tokens are the emitted prefix, next_token int32 [B]: the residual or bonus token).
  The round emits drafts[b, accepted_draft[b], :n_accepted[b]] then next_token[b].
  """
  _check_spectr(p, drafts, q)
  b, k, length = drafts.shape
  p = jnp.asarray(p, jnp.float32)
  q = jnp.asarray(q, jnp.float32)
  drafts = drafts.astype(jnp.int32)
  keys = _row_keys(key, b)
  # One key per (row, depth), plus depth L for the bonus: a row's draws depend only on its key.
  depth_keys = jax.vmap(lambda kk: jax.random.split(kk, length + 1))(keys)  # [B, L+1]

  def step(carry, xs):
    alive, done, n, nxt = carry
    p_j, q_j, tok_j, keys_j = xs  # [B,k,V], [B,k,V], [B,k], [B]
    p_pre = _first_survivor_rows(p_j, alive)
    q_pre = _first_survivor_rows(q_j, alive)
    accepted, token, _ = _kseq_core(p_pre, q_pre, tok_j, alive, keys_j, num_iters)
    active = ~done
    alive = jnp.where((active & accepted)[:, None], alive & (tok_j == token[:, None]), alive)
    n = n + (active & accepted).astype(jnp.int32)
    nxt = jnp.where(active & ~accepted, token, nxt)
    done = done | ~accepted
    return (alive, done, n, nxt), None

  init = (jnp.ones((b, k), bool), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
          jnp.zeros((b,), jnp.int32))
  xs = (jnp.moveaxis(p[:, :, :length], 2, 0), jnp.moveaxis(q, 2, 0), jnp.moveaxis(drafts, 2, 0),
        jnp.moveaxis(depth_keys[:, :length], 1, 0))
  (alive, done, n, nxt), _ = jax.lax.scan(step, init, xs)
  bonus = _categorical(depth_keys[:, length], _first_survivor_rows(p[:, :, length], alive))
  next_token = jnp.where(done, nxt, bonus)
  return n, jnp.argmax(alive, axis=-1).astype(jnp.int32), next_token


def spectr_verify_greedy(p, drafts):
  """Temperature-0 SpecTr: the longest draft prefix that matches the target's greedy path.

  p: [B,k,L+1,V] target scores (probabilities or logits; only the argmax is used), as in
    spectr_verify. drafts: int32 [B,k,L].
  Returns (n_accepted [B], accepted_draft [B], next_token [B]) with next_token = argmax of p at
  the first mismatch (or the bonus argmax after L matches): identical to target greedy decoding.
  """
  _check_spectr(p, drafts)
  b, k, length = drafts.shape
  drafts = drafts.astype(jnp.int32)
  alive = jnp.ones((b, k), bool)
  done = jnp.zeros((b,), bool)
  n = jnp.zeros((b,), jnp.int32)
  nxt = jnp.zeros((b,), jnp.int32)
  for j in range(length):  # L is small and static; unrolled.
    target = jnp.argmax(_first_survivor_rows(p[:, :, j], alive), axis=-1).astype(jnp.int32)
    match = alive & (drafts[:, :, j] == target[:, None])
    hit = jnp.any(match, axis=-1) & ~done
    nxt = jnp.where(~done & ~hit, target, nxt)
    n = n + hit.astype(jnp.int32)
    alive = jnp.where(hit[:, None], match, alive)
    done = done | ~hit
  bonus = jnp.argmax(_first_survivor_rows(p[:, :, length], alive), axis=-1).astype(jnp.int32)
  return n, jnp.argmax(alive, axis=-1).astype(jnp.int32), jnp.where(done, nxt, bonus)


# --------------------------------------------------------------------------------------------
# Recursive rejection sampling (§5(b)).
# --------------------------------------------------------------------------------------------


def sample_drafts(q, n: int, key, replacement: bool = True):
  """n draft tokens per row from q [B,V]: i.i.d., or without replacement (a Plackett-Luce order,
  i.e. each draw from q renormalised over the tokens not drawn yet) via Gumbel-top-n.

  Without replacement needs at least n tokens with q > 0 per row. Returns int32 [B,n].
  """
  _check_probs("q", q, ndim=2)
  keys = _row_keys(key, q.shape[0])
  logq = jnp.where(q > 0, jnp.log(jnp.where(q > 0, q, 1.0)), -jnp.inf)
  if replacement:
    draw = lambda kk, lq: jax.random.categorical(kk, lq, shape=(n,))
  else:
    draw = lambda kk, lq: jax.lax.top_k(lq + jax.random.gumbel(kk, lq.shape), n)[1]
  return jax.vmap(draw)(keys, logq).astype(jnp.int32)


def recursive_rejection(p, q, candidates, key, replacement: bool = True):
  """Recursive rejection sampling over n candidates (§5(b)); lossless, below the optimum.

  p, q: f32 [B,V]. candidates: int32 [B,n] drawn from q i.i.d. (replacement=True) or without
  replacement (distinct tokens, each from q renormalised over the ones not drawn yet; see
  sample_drafts). key: one PRNG key or [B] keys.
  Step i: q_i' = q (with replacement) or q with drafted tokens removed, renormalised; accept X_i
  with probability min(1, p_i(X_i)/q_i'(X_i)); on rejection p_{i+1} = normalize(max(0, p_i − q_i')).
  If all n are rejected, the token is drawn from p_{n+1}.
  Returns (accepted bool [B], token int32 [B], chosen int32 [B], −1 where none was accepted).
  """
  _check_probs("p", p, ndim=2)
  _check_same("p", p, "q", q)
  if candidates.ndim != 2 or candidates.shape[0] != p.shape[0]:
    raise ValueError(f"candidates: expected [B={p.shape[0]}, n], got {tuple(candidates.shape)}")
  b, v = p.shape
  n = candidates.shape[1]
  p = jnp.asarray(p, jnp.float32)
  q = jnp.asarray(q, jnp.float32)
  candidates = candidates.astype(jnp.int32)
  keys = jax.vmap(lambda kk: jax.random.split(kk, 2))(_row_keys(key, b))
  u = jax.vmap(lambda kk: jax.random.uniform(kk, (n,)))(keys[:, 0])

  def step(carry, xs):
    p_i, drafted, done, token, chosen = carry
    i, x, u_i = xs
    if replacement:
      q_i = q
    else:
      q_i = jnp.where(drafted, 0.0, q)
      q_i = q_i / jnp.maximum(jnp.sum(q_i, axis=-1, keepdims=True), 1e-30)
    p_x = jnp.take_along_axis(p_i, x[:, None], axis=-1)[:, 0]
    q_x = jnp.take_along_axis(q_i, x[:, None], axis=-1)[:, 0]
    accept = ~done & (u_i * q_x < p_x)  # strict: p = 0 is never accepted.
    resid = jnp.maximum(p_i - q_i, 0.0)
    mass = jnp.sum(resid, axis=-1, keepdims=True)
    # A zero residual means p_i = q_i', where rejection has probability 0; keep p_i then.
    p_next = jnp.where(mass > 0, resid / jnp.where(mass > 0, mass, 1.0), p_i)
    p_i = jnp.where((done | accept)[:, None], p_i, p_next)
    token = jnp.where(accept, x, token)
    chosen = jnp.where(accept, i, chosen)
    drafted = drafted | (jnp.arange(v)[None, :] == x[:, None])
    return (p_i, drafted, done | accept, token, chosen), None

  init = (p, jnp.zeros((b, v), bool), jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32),
          jnp.full((b,), -1, jnp.int32))
  xs = (jnp.arange(n, dtype=jnp.int32), candidates.T, u.T)
  (p_last, _, done, token, chosen), _ = jax.lax.scan(step, init, xs)
  fallback = _categorical(keys[:, 1], p_last)
  return done, jnp.where(done, token, fallback), chosen


# --------------------------------------------------------------------------------------------
# Optimal multi-draft acceptance (Hu et al., §5) and exact diagnostics.
# --------------------------------------------------------------------------------------------


def optimal_multidraft_acceptance(p, q, n):
  """α* for n i.i.d. drafts from q against target p, by the sorted-prefix formula of §5(b).

  α* = min_{A ⊆ V} [p(A) + 1 − q(A)^n], and a minimising A is a prefix of the tokens sorted by
  ascending p/q (q = 0 last, ratio +∞), so α* = min_{i=0..V} [P_i + 1 − Q_i^n] with P_i, Q_i the
  cumulative p and q masses of the first i sorted tokens. n = 1 gives Σ min(p, q).
  p, q: [..., V] (numpy → float64, jax → f32); n: int ≥ 1. Returns [...].
  """
  _check_probs("p", p)
  _check_same("p", p, "q", q)
  xp = _xp(p, q)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = xp.where(q > 0, p / xp.where(q > 0, q, 1.0), xp.inf)
  order = xp.argsort(ratio, axis=-1)
  zero = xp.zeros(p.shape[:-1] + (1,), p.dtype)
  cum_p = xp.concatenate([zero, xp.cumsum(xp.take_along_axis(p, order, axis=-1), axis=-1)], -1)
  cum_q = xp.concatenate([zero, xp.cumsum(xp.take_along_axis(q, order, axis=-1), axis=-1)], -1)
  # The last prefix (all of V) gives 1 + 1 − 1 = 1 up to rounding, so α* ≤ 1 as it must.
  return xp.min(cum_p + 1.0 - xp.minimum(cum_q, 1.0) ** n, axis=-1)


def draft_tuple_law(q, n: int, replacement: bool = True):
  """Exact law of n ordered draft tokens from q [V] (numpy, float64).

  Returns (tuples int [T,n], probs float64 [T]) over the tuples with positive probability. Without
  replacement each draw comes from q renormalised over the tokens not drawn yet; its remaining
  mass is summed directly rather than taken as 1 − drawn mass, which cancels for tiny q.
  """
  q = np.asarray(q, np.float64)
  if q.ndim != 1:
    raise ValueError(f"q: expected [V], got shape {q.shape}")
  v = q.shape[0]
  if not replacement and np.count_nonzero(q > 0) < n:
    raise ValueError(f"q: without replacement needs ≥ n={n} tokens with q > 0, "
                     f"got {np.count_nonzero(q > 0)}")
  tuples = np.array(list(itertools.product(range(v), repeat=n) if replacement
                         else itertools.permutations(range(v), n)), dtype=np.int64)
  probs = np.ones(len(tuples))
  remaining = np.broadcast_to(q, (len(tuples), v)).copy()
  for i in range(n):
    x = tuples[:, i]
    if replacement:
      probs *= q[x]
    else:
      total = remaining.sum(-1)
      probs *= np.where(total > 0, q[x] / np.where(total > 0, total, 1.0), 0.0)
      remaining[np.arange(len(tuples)), x] = 0.0
  keep = probs > 0
  return tuples[keep], probs[keep]


def optimal_multidraft_acceptance_bruteforce(p, q, n: int, replacement: bool = True):
  """α* = 1 − max_{A ⊆ V} [P(all n drafts ∈ A) − p(A)] by enumerating every subset A (§5(b)).

  Exact for any draft scheme whose tuple law draft_tuple_law gives; the only exact route here for
  drafts without replacement (§5 gives no closed form for it). Cost O(2^V · V^n): numpy float64,
  V ≤ MAX_BRUTEFORCE_VOCAB. p, q: [..., V]. Returns float64 [...].
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  _check_probs("p", p)
  _check_same("p", p, "q", q)
  v = p.shape[-1]
  if v > MAX_BRUTEFORCE_VOCAB:
    raise ValueError(f"p: brute force needs V ≤ {MAX_BRUTEFORCE_VOCAB}, got V={v}")
  subsets = (np.arange(2 ** v)[:, None] >> np.arange(v)[None, :]) & 1  # [2^V, V] membership
  out = np.empty(p.shape[:-1])
  for idx in np.ndindex(p.shape[:-1]):
    tuples, probs = draft_tuple_law(q[idx], n, replacement)
    mask = np.zeros(len(tuples), np.int64)
    for i in range(n):
      mask |= 1 << tuples[:, i]
    # P(all drafts ∈ A): the tuples whose token set misses nothing outside A.
    inside = (mask[None, :] & ~np.arange(2 ** v)[:, None]) == 0
    gain = inside.astype(np.float64) @ probs - subsets @ p[idx]
    out[idx] = 1.0 - max(gain.max(), 0.0)
  return out


def recursive_rejection_acceptance(p, q, n: int, replacement: bool = True):
  """Exact acceptance of recursive_rejection, by enumerating the draft tuples (numpy float64).

  p, q: [V]. Cost O(V^n). Returns the probability that the emitted token is one of the drafts.
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  _check_probs("p", p, ndim=1)
  _check_same("p", p, "q", q)

  def rec(p_i, drafted, i):
    if i == n:
      return 0.0
    q_i = np.where(drafted, 0.0, q) if not replacement else q
    q_i = q_i / q_i.sum()
    resid = np.maximum(p_i - q_i, 0.0)
    p_next = resid / resid.sum() if resid.sum() > 0 else p_i
    total = 0.0
    for x in np.flatnonzero(q_i > 0):
      a = min(1.0, p_i[x] / q_i[x])
      later = rec(p_next, drafted | (np.arange(len(q)) == x), i + 1) if a < 1 else 0.0
      total += q_i[x] * (a + (1.0 - a) * later)
    return total

  return rec(p, np.zeros(len(q), bool), 0)


def acceptance_report(p, q, n: int) -> dict:
  """Acceptance of the multi-draft schemes for one position, for printing next to the achieved rate.

  p, q: [V] target and draft probabilities; n: number of drafts.
  Returns {single_draft: Σ min(p, q) (§2 with one draft), kseq: K-SEQ with n i.i.d. drafts,
  optimal_iid: α* for n i.i.d. drafts, optimal_without_replacement: α* for n distinct drafts
  (nan when V > MAX_BRUTEFORCE_VOCAB or q has fewer than n positive entries)}, as Python floats.
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  _check_probs("p", p, ndim=1)
  _check_same("p", p, "q", q)
  wor = float("nan")
  if p.shape[-1] <= MAX_BRUTEFORCE_VOCAB and np.count_nonzero(q > 0) >= n:
    wor = float(optimal_multidraft_acceptance_bruteforce(p, q, n, replacement=False))
  return {
      "single_draft": float(np.minimum(p, q).sum()),
      "kseq": float(kseq_acceptance(p, q, n)),
      "optimal_iid": float(optimal_multidraft_acceptance(p, q, n)),
      "optimal_without_replacement": wor,
  }
