"""Shapley attribution of prompt parts (spec §1(d)): T1-T5 against an oracle in exact
fractions, the Shapley axioms on random games, the sampled estimator against the exact one
within its stated error, the model path against brute-force unbatched forwards, trace counts,
and `tokenrl analyze shapley` end to end."""

import dataclasses
import itertools
import json
import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.analysis import shapley as S
from tokenrl.analysis import shapley_rows as R
from tokenrl.commands import shapley as cmd
from tokenrl.data.char_tokenizer import CharTokenizer

TOK = CharTokenizer()
# V = 58 is the char tokenizer's, so the CLI test's saved model has this config. Two layers so
# that 'mask' mode must hide keys in more than one layer.
CFG = models.tiny("qwen2", vocab_size=58, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))


# ---------------------------------------------------------------- oracle in fractions

def oracle(n, v):
  """φ_i = Σ_{S ⊆ N∖{i}} |S|!(n−|S|−1)!/n! (v(S ∪ {i}) − v(S)), straight from the definition.

  v maps a frozenset of players (0-based) to a number or a tuple of numbers."""
  phi = []
  for i in range(n):
    others = [j for j in range(n) if j != i]
    total = None
    for r in range(n):
      w = Fraction(math.factorial(r) * math.factorial(n - r - 1), math.factorial(n))
      for s in itertools.combinations(others, r):
        gain = np.asarray(v(frozenset(s) | {i}), object) - np.asarray(v(frozenset(s)), object)
        total = w * gain if total is None else total + w * gain
    phi.append(total)
  return np.array(phi, object)


def table(n, v):
  """v as an array [2^n, ...] in bitmask order (bit j ↔ player j)."""
  return np.array([v(frozenset(j for j in range(n) if b >> j & 1)) for b in range(1 << n)],
                  object)


T1 = {(): "0.2", (0,): "0.5", (1,): "0.2", (2,): "0.3", (0, 1): "0.6", (0, 2): "0.7",
      (1, 2): "0.3", (0, 1, 2): "0.8"}


def t1(s):
  return Fraction(T1[tuple(sorted(s))])


def t2(s):
  return (Fraction(1, 10) + Fraction(3, 10) * (0 in s) + Fraction(3, 10) * (1 in s)
          + Fraction(2, 10) * (0 in s and 1 in s))


def test_t1_table_game():
  phi = oracle(3, t1)
  assert list(phi) == [Fraction(2, 5), Fraction(1, 20), Fraction(3, 20)]
  assert sum(phi) == Fraction(6, 10) == t1({0, 1, 2}) - t1(set())
  v = table(3, t1).astype(float)
  np.testing.assert_allclose(S.exact_shapley(v), phi.astype(float), atol=1e-12)


def test_t2_symmetry_and_null_player():
  phi = oracle(3, t2)
  assert list(phi) == [Fraction(2, 5), Fraction(2, 5), 0]
  np.testing.assert_allclose(S.exact_shapley(table(3, t2).astype(float)), [0.4, 0.4, 0],
                             atol=1e-12)


def test_t3_softmax_game():
  z = np.array([[2.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
  v = np.array([np.exp(z[[j for j in range(3) if b >> j & 1]].sum(0)) for b in range(8)])
  v = v / v.sum(1, keepdims=True)
  phi = S.exact_shapley(v)
  np.testing.assert_allclose(phi[0], [0.453476, -0.279107, -0.174369], atol=1e-5)
  np.testing.assert_allclose(phi[1], [-0.121568, 0.190503, -0.068934], atol=1e-5)
  np.testing.assert_allclose(phi[2], 0, atol=1e-12)
  np.testing.assert_allclose(phi.sum(1), 0, atol=1e-12)
  np.testing.assert_allclose(v[-1], [0.665241, 0.244728, 0.090031], atol=1e-6)
  np.testing.assert_allclose(phi.sum(0), [0.331908, -0.088605, -0.243303], atol=1e-5)


def _chain(orderings, v):
  masks = S.prefix_masks(np.asarray(orderings))
  return v[(masks * (1 << np.arange(masks.shape[-1]))).sum(-1)]  # [M,n+1]


def test_t4_permutation_estimator():
  v = table(3, t1).astype(float)
  one = [[1, 0, 2]]  # players 2,1,3 of the spec, 0-based
  phi, _ = S.permutation_shapley(one, _chain(one, v), antithetic=False)
  np.testing.assert_allclose(phi, [0.4, 0, 0.2], atol=1e-12)
  two = [[1, 0, 2], [2, 1, 0]]
  phi, _ = S.permutation_shapley(two, _chain(two, v), antithetic=False)
  np.testing.assert_allclose(phi, [0.45, 0, 0.15], atol=1e-12)
  assert phi.sum() == pytest.approx(0.6, abs=1e-12)


def test_t5_weights():
  w = S.shapley_weights(3)
  assert w.shape == (3, 8) and not w.flags.writeable
  np.testing.assert_allclose(6 * w, [[-2, 2, -1, 1, -1, 1, -2, 2], [-2, -1, 2, 1, -1, -2, 1, 2],
                                     [-2, -1, -1, -2, 2, 1, 1, 2]], atol=1e-12)
  np.testing.assert_allclose(w @ table(3, t1).astype(float), [0.4, 0.05, 0.15], atol=1e-12)
  assert S.shapley_weights(3) is w  # cached


# ---------------------------------------------------------------- axioms on random games

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_axioms_on_random_games(n):
  rng = np.random.default_rng(n)
  w = S.shapley_weights(n)
  np.testing.assert_allclose(w.sum(1), 0, atol=1e-12)
  np.testing.assert_array_equal(S.coalition_masks(n).sum(0), 1 << (n - 1))
  v, u = rng.normal(size=(1 << n, 3)), rng.normal(size=(1 << n, 3))
  phi = S.exact_shapley(v)
  np.testing.assert_allclose(phi.sum(0), v[-1] - v[0], atol=1e-12)  # efficiency
  np.testing.assert_allclose(S.exact_shapley(2.5 * v - u), 2.5 * phi - S.exact_shapley(u),
                             atol=1e-12)  # linearity
  b = np.arange(1 << n)
  # Null player: v ignores player k.
  k = n - 1
  np.testing.assert_allclose(S.exact_shapley(v[b & ~(1 << k)])[k], 0, atol=1e-12)
  if n >= 2:  # symmetry: v unchanged by swapping players 0 and 1
    swap = (b & ~3) | ((b & 1) << 1) | ((b >> 1) & 1)
    sym = S.exact_shapley(v + v[swap])
    np.testing.assert_allclose(sym[0], sym[1], atol=1e-12)
  # Probability-valued v: each part's φ sums to 0 over the options.
  p = np.exp(v) / np.exp(v).sum(1, keepdims=True)
  np.testing.assert_allclose(S.exact_shapley(p).sum(1), 0, atol=1e-12)


def test_weights_match_the_fraction_oracle_on_a_rational_game():
  rng = np.random.default_rng(7)
  values = {b: Fraction(int(rng.integers(-50, 50)), int(rng.integers(1, 20))) for b in range(16)}
  v = lambda s: values[sum(1 << j for j in s)]
  np.testing.assert_allclose(S.exact_shapley(table(4, v).astype(float)),
                             oracle(4, v).astype(float), atol=1e-12)


# ---------------------------------------------------------------- sampled estimator

def test_orderings_are_permutations_with_reverses():
  orders = S.sample_orderings(5, 8, rng=3)
  assert orders.shape == (8, 5)
  np.testing.assert_array_equal(np.sort(orders, 1), np.tile(np.arange(5), (8, 1)))
  np.testing.assert_array_equal(orders[1::2], orders[0::2, ::-1])
  masks = S.prefix_masks(orders)
  np.testing.assert_array_equal(masks.sum(-1), np.tile(np.arange(6), (8, 1)))
  # Each step adds exactly the player the ordering names.
  added = np.argmax(masks[:, 1:] & ~masks[:, :-1], axis=-1)
  np.testing.assert_array_equal(added, orders)
  with pytest.raises(ValueError, match="must be even with antithetic"):
    S.sample_orderings(5, 3)


def test_every_single_ordering_is_efficient():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(64, 2))
  orders = S.sample_orderings(6, 10, rng=1, antithetic=False)
  for o in orders:
    phi, _ = S.permutation_shapley(o[None], _chain(o[None], v), antithetic=False)
    np.testing.assert_allclose(phi.sum(0), v[-1] - v[0], atol=1e-12)


def test_sampled_estimate_is_within_its_stated_error():
  rng = np.random.default_rng(11)
  v = rng.normal(size=(64, 3))
  exact = S.exact_shapley(v)
  orders = S.sample_orderings(6, 400, rng=5)
  phi, err = S.permutation_shapley(orders, _chain(orders, v))
  assert (err > 0).all()
  assert (np.abs(phi - exact) <= 4 * err).all()
  # The stated error is the estimator's spread: over 300 independent estimates of M = 16
  # orderings, the spread of φ̂ matches the root-mean-square stated error within 15%.
  ests, errs = [], []
  for seed in range(300):
    o = S.sample_orderings(6, 16, rng=1000 + seed)
    p, e = S.permutation_shapley(o, _chain(o, v))
    ests.append(p)
    errs.append(e)
  ratio = np.std(ests, 0) / np.sqrt(np.mean(np.square(errs), 0))
  assert 0.85 < ratio.min() and ratio.max() < 1.15, ratio
  np.testing.assert_allclose(np.mean(ests, 0), exact, atol=4 * np.std(ests, 0).max() / 17)


def test_token_noise_share():
  phi = np.array([[0.3, -0.3], [-0.1, 0.1], [0.6, -0.6]])
  u = np.array([False, True, False])
  assert S.token_noise_share(phi, u, 0) == pytest.approx(0.1)
  assert S.token_noise_share(np.zeros(3), u) == 0.0
  with pytest.raises(ValueError, match=r"uninformative must be bool \[n=3\]"):
    S.token_noise_share(phi, [0, 1, 0], 0)
  with pytest.raises(ValueError, match="option must index one of the 2 option columns"):
    S.token_noise_share(phi, u)


# ---------------------------------------------------------------- rows

def test_coalition_rows_for_each_absent_mode():
  parts = [[1], [5, 6], [7], [8, 9, 10], [11]]  # BOS, 3 players, '?'
  masks = np.array([[True, False, True], [False, False, False]])
  drop = S.coalition_tokens(parts, masks, permanent=(0, 4))
  assert drop.tokens.shape == (2, 8)
  np.testing.assert_array_equal(drop.tokens[0], [1, 5, 6, 8, 9, 10, 11, 0])
  np.testing.assert_array_equal(drop.tokens[1], [1, 11, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(drop.lengths, [7, 2])
  np.testing.assert_array_equal(drop.read, [6, 1])
  ph = S.coalition_tokens(parts, masks, permanent=(0, -1), absent_mode="placeholder",
                          placeholder=3)
  np.testing.assert_array_equal(ph.tokens[0], [1, 5, 6, 3, 8, 9, 10, 11])
  np.testing.assert_array_equal(ph.read, [7, 7])
  mask = S.coalition_tokens(parts, masks, permanent=(0, 4), absent_mode="mask", max_len=9)
  np.testing.assert_array_equal(mask.tokens[1], [1, 5, 6, 7, 8, 9, 10, 11, 0])
  np.testing.assert_array_equal(mask.visible[1], [1, 0, 0, 0, 0, 0, 0, 1, 0])
  np.testing.assert_array_equal(mask.read, [7, 7])
  # The last part absent: the read position is the last token still present.
  last = S.coalition_tokens(parts[:4], np.array([[True, True, False]]), permanent=(0,),
                            absent_mode="mask")
  np.testing.assert_array_equal(last.read, [3])
  texts = S.coalition_texts(["<", "ab", "c", "?"], masks[:, :2], permanent=(0, 3))
  assert texts == ["<ab?", "<?"]


def test_bad_input_names_the_argument():
  parts = [[1], [5, 6], [7]]
  ok = np.ones((1, 2), bool)
  with pytest.raises(ValueError, match=r"prompt_parts\[1\] is empty"):
    S.coalition_tokens([[1], [], [7]], ok)
  with pytest.raises(ValueError, match=r"masks must be bool \[M, n=2\]"):
    S.coalition_tokens(parts, np.ones((1, 3), bool), permanent=(0,))
  with pytest.raises(ValueError, match=r"permanent holds 5: expected part indices in \[0, 3\)"):
    S.coalition_tokens(parts, ok, permanent=(5,))
  with pytest.raises(ValueError, match="every one of the 3 prompt parts is permanent"):
    S.coalition_tokens(parts, ok, permanent=(0, 1, 2))
  with pytest.raises(ValueError, match=r"coalition 0 \(\[0, 0\]\) leaves no token"):
    S.coalition_tokens([[5], [7]], np.zeros((1, 2), bool))
  with pytest.raises(ValueError, match="needs placeholder="):
    S.coalition_tokens(parts, ok, permanent=(0,), absent_mode="placeholder")
  with pytest.raises(ValueError, match="absent_mode must be one of"):
    S.coalition_tokens(parts, ok, permanent=(0,), absent_mode="zero")
  with pytest.raises(ValueError, match=r"max_len=2 is shorter than the longest coalition row "
                     r"\(4 tokens\)"):
    S.coalition_tokens(parts, ok, permanent=(0,), max_len=2)
  with pytest.raises(ValueError, match="'mask' keeps token positions"):
    S.coalition_texts(["a", "b"], ok, absent_mode="mask")
  with pytest.raises(ValueError, match="option_ids must be distinct"):
    S.option_value_fn([3, 3])
  with pytest.raises(ValueError, match="normalize must be one of"):
    S.option_value_fn([3], normalize="softmax")
  with pytest.raises(ValueError, match=r"values must be \[2\^n\]"):
    S.exact_shapley(np.zeros(6))
  with pytest.raises(ValueError, match=r"chain_values must be \[M=1, n\+1=3\]"):
    S.permutation_shapley([[1, 0]], np.zeros((1, 2)), antithetic=False)
  with pytest.raises(ValueError, match="every row of orderings must be a permutation"):
    S.prefix_masks([[0, 0, 1]])
  with pytest.raises(ValueError, match=r"n must be an int in \[1, 20\]"):
    S.shapley_weights(0)


# ---------------------------------------------------------------- on a tiny model

@pytest.fixture(scope="module")
def params():
  """Random weights drawn on the host (a jitted init costs a compile). Norms and biases random
  too, and embeddings large enough that next-token distributions are peaked, so φ is far from
  0 (near-uniform logits would let the tests below pass with any φ ≈ 0)."""
  rng = np.random.default_rng(0)
  flat, treedef = jax.tree.flatten_with_path(models.transformer.param_specs(CFG),
                                             is_leaf=models.transformer._is_spec)
  leaves = []
  for path, (shape, axes) in flat:
    scale = 1.0 if path[-1].key == "embed" else 0.2
    value = rng.normal(size=shape) * scale + (1.0 if axes[-1] == "norm" else 0.0)
    leaves.append(jnp.asarray(value, jnp.float32))
  return jax.tree.unflatten(treedef, leaves)


# BOS and '=' permanent; four players of lengths 2, 1, 1, 3.
TEXTS = ["ab", "7", "+", "c d"]
PARTS = [[TOK.bos_id]] + [TOK.encode(t, add_special_tokens=False) for t in TEXTS] + [
    TOK.encode("=", add_special_tokens=False)]
PERMANENT = (0, 5)
OPTIONS = [TOK.encode(c, add_special_tokens=False)[0] for c in "123"]


WIDTH = 16


@jax.jit
def _last_logits(params, tokens, segment_ids, positions):
  return models.forward(params, tokens, config=CFG, segment_ids=segment_ids,
                        positions=positions)[0][:, -1]  # [1,V]


def _plain_value(params, tokens, positions=None, normalize="options"):
  """value [C] of one row by its own forward: left-padded to WIDTH (a layout the library does
  not use: it right-pads), read at the last column, no hooks."""
  k = len(tokens)
  positions = list(range(k)) if positions is None else positions
  pad = lambda row: jnp.asarray([[0] * (WIDTH - k) + list(row)], jnp.int32)
  logits = _last_logits(params, pad(tokens), models.segment_ids_from_lengths([k], WIDTH),
                        pad(positions))
  return np.asarray(S.option_value_fn(OPTIONS, normalize=normalize)(logits))[0]


def _brute_force(params, mode):
  """{coalition (frozenset of players) -> v} with one unbatched forward per coalition."""
  out = {}
  for r in range(5):
    for s in itertools.combinations(range(4), r):
      toks, pos = [], []
      for i, part in enumerate(PARTS):
        j = i - 1  # player index of part i
        start = sum(len(p) for p in PARTS[:i])
        if i in PERMANENT or j in s:
          toks += part
          pos += list(range(start, start + len(part)))
        elif mode == "placeholder":
          toks += [TOK.encode(" ", add_special_tokens=False)[0]] * len(part)
          pos += list(range(start, start + len(part)))
      # 'mask': the present tokens at their original positions are what the last present
      # token can see (hidden keys are invisible to it, and it never sees itself hidden).
      out[frozenset(s)] = _plain_value(params, toks, pos if mode == "mask" else None)
  return out


@pytest.mark.parametrize("mode", ["drop", "placeholder", "mask"])
def test_exact_attribution_equals_brute_force_forwards(params, mode):
  games = _brute_force(params, mode)
  space = TOK.encode(" ", add_special_tokens=False)[0] if mode == "placeholder" else None
  res = S.shapley_attribution(params, PARTS, config=CFG, value_fn=S.option_value_fn(OPTIONS),
                              permanent=PERMANENT, absent_mode=mode, placeholder=space)
  assert res.exact and res.absent_mode == mode and res.players == (1, 2, 3, 4)
  np.testing.assert_allclose(res.values, table(4, games.get).astype(float), atol=2e-6)
  # φ from the definition's sum over the brute-force values, not through W.
  want = np.array([[float(x) for x in row] for row in oracle(
      4, lambda s: tuple(Fraction(float(x)) for x in games[s]))])
  np.testing.assert_allclose(res.phi, want, atol=5e-6)
  assert np.abs(res.phi).max() > 1e-2  # a real game, not a near-constant one
  assert res.efficiency_error < 1e-6
  np.testing.assert_allclose(res.phi.sum(1), 0, atol=1e-6)  # probabilities over options
  np.testing.assert_array_equal(res.stderr, 0)


def test_mask_mode_with_every_part_present_is_the_plain_forward(params):
  full = [t for p in PARTS for t in p]
  res = S.shapley_attribution(params, PARTS, config=CFG, value_fn=S.option_value_fn(OPTIONS),
                              permanent=PERMANENT, absent_mode="mask")
  np.testing.assert_allclose(res.v_full, _plain_value(params, full), atol=1e-6)
  # The three values are one distribution seen three ways.
  vocab, log, opts = (_plain_value(params, full, normalize=k) for k in ("vocab", "log", "options"))
  np.testing.assert_allclose(np.log(vocab), log, atol=1e-5)
  np.testing.assert_allclose(vocab / vocab.sum(), opts, atol=1e-6)


def test_text_render_equals_token_render_for_a_char_tokenizer(params):
  # A character tokenizer never merges across part boundaries: both renders give the same rows.
  fn = S.option_value_fn(OPTIONS)
  tokens = S.shapley_attribution(params, PARTS, config=CFG, value_fn=fn, permanent=PERMANENT)
  text = S.shapley_attribution(params, TEXTS + ["="], config=CFG, value_fn=fn, permanent=(4,),
                               render="text", encode=TOK.encode)
  assert text.render == "text"
  np.testing.assert_allclose(text.phi, tokens.phi, atol=1e-6)
  with pytest.raises(ValueError, match="render='text' needs encode="):
    S.shapley_attribution(params, TEXTS, config=CFG, value_fn=fn, render="text")


def test_sampled_attribution_is_within_its_stated_error_of_exact(params):
  fn = S.option_value_fn(OPTIONS)
  exact = S.shapley_attribution(params, PARTS, config=CFG, value_fn=fn, permanent=PERMANENT)
  sampled = S.shapley_attribution(params, PARTS, config=CFG, value_fn=fn, permanent=PERMANENT,
                                  num_permutations=40, rng=jax.random.key(2))
  assert not sampled.exact and sampled.num_permutations == 40 and sampled.values is None
  assert sampled.num_rows <= 16  # chains share coalitions: each is scored once
  assert (np.abs(sampled.phi - exact.phi) <= 4 * sampled.stderr + 1e-6).all()
  assert sampled.efficiency_error < 1e-6
  np.testing.assert_allclose(sampled.v_full, exact.v_full, atol=1e-6)


def test_scoring_compiles_once_per_shape_bucket(params):
  fn = S.option_value_fn(OPTIONS, normalize="vocab")
  # Five players, 32 coalitions scored in chunks of 8 at a width no other test uses.
  parts = [[1], [5, 6], [7], [8, 9], [10], [11, 12], [13]]
  before = R.TRACES["score"]
  S.shapley_attribution(params, parts, config=CFG, value_fn=fn, permanent=(0, 6), chunk=8,
                        max_len=24)
  assert R.TRACES["score"] - before == 1
  other = [[1], [20, 21], [22], [23, 24], [25], [26, 27], [28]]  # same lengths, new values
  res = S.shapley_attribution(params, other, config=CFG, value_fn=fn, permanent=(0, 6), chunk=8,
                              max_len=24)
  sampled = S.shapley_attribution(params, other, config=CFG, value_fn=fn, permanent=(0, 6),
                                  chunk=8, max_len=24, num_permutations=6, rng=1)
  assert R.TRACES["score"] - before == 1
  assert res.exact and res.num_rows == 32 and not sampled.exact


@dataclasses.dataclass
class Unhashable:  # a mutable dataclass defines __eq__, so it has no __hash__
  def __call__(self, logits):
    return logits


def test_attribution_refuses_bad_input(params):
  fn = S.option_value_fn(OPTIONS)
  with pytest.raises(ValueError, match=r"option id 99 is outside the vocabulary \[0, 58\)"):
    S.shapley_attribution(params, PARTS, config=CFG, value_fn=S.option_value_fn([99]),
                          permanent=PERMANENT)
  with pytest.raises(ValueError, match=r"token id 70, outside the vocabulary"):
    S.shapley_attribution(params, [[1], [70]], config=CFG, value_fn=fn, permanent=(0,))
  with pytest.raises(ValueError, match="longest coalition row has 65 tokens, past the model's "
                     "max_seq_len 64"):
    S.shapley_attribution(params, [[1], [5] * 64], config=CFG, value_fn=fn, permanent=(0,))
  with pytest.raises(ValueError, match="value_fn must be hashable"):
    S.shapley_attribution(params, PARTS, config=CFG, value_fn=Unhashable(), permanent=PERMANENT)
  with pytest.raises(ValueError, match="must be even with antithetic"):
    S.shapley_attribution(params, PARTS, config=CFG, value_fn=fn, permanent=PERMANENT,
                          num_permutations=3)


def test_blackbox_frequencies_estimate_the_vocab_probabilities(params):
  # v(b)_c = frequency of option c among R sampled next tokens estimates softmax(z)[o_c]: the
  # black-box φ lies within its stated (multinomial) error of the forward-pass φ.
  parts, permanent = PARTS[:3] + PARTS[5:], (0, 3)  # two players: 4 coalitions
  every = S.option_value_fn(range(CFG.vocab_size), normalize="vocab")
  probe = S.shapley_attribution(params, parts, config=CFG, permanent=permanent, value_fn=every)
  top = np.argsort(-probe.v_full)[:3].tolist()  # options that actually get drawn
  ref = S.shapley_attribution(params, parts, config=CFG, permanent=permanent,
                              value_fn=S.option_value_fn(top, normalize="vocab"))
  bb = S.blackbox_attribution(params, parts, config=CFG, option_ids=top, permanent=permanent,
                              rng=jax.random.key(4), num_draws=1000)
  assert bb.exact and bb.num_rows == 4 and bb.efficiency_error < 1e-12
  assert (bb.stderr > 0).all()
  assert (np.abs(bb.phi - ref.phi) <= 4 * bb.stderr).all()
  assert (np.abs(bb.v_full - ref.v_full) <= 4 * np.sqrt(ref.v_full * (1 - ref.v_full) / 1000)).all()
  with pytest.raises(ValueError, match="black-box mode only samples"):
    S.blackbox_attribution(params, parts, config=CFG, option_ids=top, permanent=permanent,
                           rng=jax.random.key(0), absent_mode="mask")


# ---------------------------------------------------------------- CLI end to end

def test_analyze_shapley_command(params, tmp_path, capsys):
  folder = str(tmp_path / "model")
  models.save_hf(folder, CFG, params, tokenizer=CharTokenizer())
  png, out_json = str(tmp_path / "bars.png"), str(tmp_path / "out.json")
  argv = ["--model", folder, "--part", "ab", "--part", "7", "--part", "+", "--part", "c d",
          "--permanent", "=", "--option", "1", "--option", "2", "--option", "3",
          "--uninformative", "0,3", "--out", png, "--json", out_json]
  assert cmd.run(argv) == 0
  out = capsys.readouterr().out
  assert out.startswith("Shapley attribution: 4 parts, 3 options, value=options, "
                        "absent_mode=drop, render=tokens; exact over 2^4 = 16 coalitions")
  assert re.search(r"^# +part +φ\['1'\] +φ\['2'\] +φ\['3'\]$", out, re.M)
  for i, text in enumerate(TEXTS):
    assert re.search(rf"^{i} +{re.escape(repr(text))} ", out, re.M)
  err = float(re.search(r"efficiency error .* = (\S+)", out).group(1))
  assert err < 1e-5
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(out_json))
  # The command's prompt is BOS + the pieces in order: the library call on PARTS.
  assert saved["prompt_ids"] == [t for p in PARTS for t in p]
  want = S.shapley_attribution(params, PARTS, config=CFG, value_fn=S.option_value_fn(OPTIONS),
                               permanent=PERMANENT)
  np.testing.assert_allclose(saved["phi"], want.phi, atol=1e-5)
  phi0 = np.asarray(saved["phi"])[:, int(np.argmax(saved["v_full"]))]
  assert saved["token_noise_share"] == pytest.approx(
      np.abs(phi0[[0, 3]]).sum() / np.abs(phi0).sum(), abs=1e-9)
  # Sampled mode prints ± and the default options are the top next tokens.
  assert cmd.run(["--model", folder, "--part", "ab", "--part", "7", "--permanent", "=",
                  "--num_permutations", "4", "--num_options", "2", "--out", png]) == 0
  out = capsys.readouterr().out
  assert "sampled, 4 orderings" in out and "±" in out and ", 2 options," in out


def test_analyze_shapley_command_refuses_bad_input(params, tmp_path):
  folder = str(tmp_path / "model")
  models.save_hf(folder, CFG, params, tokenizer=CharTokenizer())
  with pytest.raises(SystemExit, match="give at least one --part TEXT"):
    cmd.run(["--model", folder, "--permanent", "="])
  with pytest.raises(SystemExit, match=r"--option '12' encodes to 2 tokens"):
    cmd.run(["--model", folder, "--part", "a", "--option", "12"])
  with pytest.raises(SystemExit, match="--absent_mode placeholder needs --placeholder"):
    cmd.run(["--model", folder, "--part", "a", "--absent_mode", "placeholder"])
  with pytest.raises(SystemExit, match=r"--uninformative 2 is not a part index in \[0, 1\)"):
    cmd.run(["--model", folder, "--part", "a", "--uninformative", "2"])
  with pytest.raises(SystemExit, match="--num_permutations must be even and >= 2"):
    cmd.run(["--model", folder, "--part", "a", "--num_permutations", "3"])
