"""k-ε controllability (spec §3(d)): hand-computed T1-T4, invariants on a tiny random model
checked against plain `forward` and brute force, GCG's two update rules, trace counts, and
`tokenrl analyze control` end to end."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.analysis import control as C
from tokenrl.analysis import control_loss as CL
from tokenrl.commands import control as cmd
from tokenrl.data.char_tokenizer import CharTokenizer

# One layer keeps compiles short; V = 58 is the char tokenizer's, so the CLI test's saved model
# has this very config (and reuses the compiled searches).
CFG = models.tiny("qwen2", vocab_size=58, dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))
V = CFG.vocab_size
GCG = dict(top_k=8, batch_size=16, num_iters=12)


# Shared by the backoff test and the CLI test (same shapes, so the CLI reuses the compiles).
PAIRS = [("1+2=", "3"), ("12+7=", "19"), ("9-4=", "5")]
SEARCH = dict(greedy_lengths=(1, 2), gcg_lengths=(3,), pair_batch=2, **GCG)
TOK = CharTokenizer()


@pytest.fixture(scope="module")
def params():
  """Random weights drawn with numpy (models.init_params compiles a random kernel per leaf,
  seconds of the test budget): weights N(0, 0.2²), norms 1 + N(0, 0.3²), biases N(0, 0.3²),
  as tests/models/hf_fixtures.py draws them; tied logits then have std ~1 (distinct argmaxes)."""
  rng = np.random.default_rng(0)

  def leaf(path, shape):
    name = path[-1].key
    noise = rng.normal(size=shape).astype(np.float32)
    if name.endswith("norm"):
      return jnp.asarray(1 + 0.3 * noise)
    return jnp.asarray((0.3 if name.endswith("_bias") else 0.2) * noise)

  return jax.tree_util.tree_map_with_path(leaf, models.param_shapes(CFG),
                                          is_leaf=lambda x: isinstance(x, tuple))


@jax.jit
def _forward(params, tokens, segment_ids):
  return models.forward(params, tokens, config=CFG, segment_ids=segment_ids)[0]


def _plain_logits(params, rows):
  """Logits [len(row), V] of each row by plain `forward`, rows right-padded to one shape with
  explicit padding (segment id 0): the model's own padding path, not the search's layout."""
  n = -(-len(rows) // 64) * 64
  tokens, seg = np.zeros((n, 16), np.int32), np.zeros((n, 16), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)], seg[i, :len(r)] = r, 1
  out = np.asarray(_forward(params, tokens, seg))
  return [out[i, :len(r)] for i, r in enumerate(rows)]


def _ce(logits, y):
  """Mean CE of y [T] under logits [T,V] (numpy)."""
  m = logits.max(-1, keepdims=True)
  lse = np.log(np.exp(logits - m).sum(-1)) + m[:, 0]
  return float(np.mean(lse - logits[np.arange(len(y)), y]))


def _check(params, prompt, x0, y):
  """(greedy continuation of prompt ⊕ x0 is y, its target loss) by plain forward."""
  logits = _plain_logits(params, [list(prompt) + list(x0) + list(y[:-1])])[0][-len(y):]
  return bool((logits.argmax(-1) == np.asarray(y)).all()), _ce(logits, np.asarray(y))


# ---------------------------------------------------------------- T1: ε̂(k)

def test_t1_k_epsilon_curve():
  ell = np.array([0, 0, 1, 2, 2, 3, 4, 6, 10, C.NOT_FOUND])
  np.testing.assert_allclose(C.k_epsilon_curve(ell, 10),
                             [.8, .7, .5, .4, .3, .3, .2, .2, .2, .2, .1], atol=1e-6)


def test_k_epsilon_is_non_increasing_and_checks_input():
  rng = np.random.default_rng(0)
  for _ in range(20):
    ell = rng.integers(-1, 12, size=rng.integers(1, 30))
    eps = C.k_epsilon_curve(ell, 12)
    assert (np.diff(eps) <= 0).all() and eps[-1] == pytest.approx(np.mean(ell == -1))
  with pytest.raises(ValueError, match="lengths must be >= 0 or -1"):
    C.k_epsilon_curve(np.array([0, -2]), 3)
  with pytest.raises(ValueError, match="lengths must be a non-empty int"):
    C.k_epsilon_curve(np.array([0.5]), 3)


# ---------------------------------------------------------------- T2: greedy step on a toy

@dataclasses.dataclass(frozen=True)
class _Toy:
  """V = 4 "model": x0 alone gives logits params['base']; a prompt token u gives row u of A."""

  def __call__(self, params, tokens, embeddings, positions):
    n, s = tokens.shape
    logits = (jnp.broadcast_to(params["base"], (n, 4)) if s == 1
              else params["A"][tokens[:, 0]])
    return logits[:, None, :]  # [N,T=1,V]


TOY = {"embed": jnp.eye(4), "base": jnp.array([3., 0., 1., 0.]),
       "A": jnp.array([[2., 1., 0., 0.], [0., 3., 1., 0.], [1., 0., 2.5, 0.], [0., 0., 2., 1.5]])}


def test_t2_greedy_step_on_toy():
  x0, y = [0], [2]
  base = C.target_loss(TOY, np.zeros((1, 0), int), x0, y, apply_fn=_Toy())
  np.testing.assert_allclose(base, [2.2110], atol=1e-4)
  ce = C.target_loss(TOY, [[0], [1], [2], [3]], x0, y, apply_fn=_Toy())
  np.testing.assert_allclose(ce, [2.4938, 2.2110, 0.3274, 0.6298], atol=1e-4)
  r = C.greedy_back_generation(TOY, x0, y, apply_fn=_Toy(), max_len=1)
  assert (r.length, r.prompt) == (1, (2,))
  assert r.base_loss == pytest.approx(2.2110, abs=1e-4) and r.loss == pytest.approx(0.3274,
                                                                                   abs=1e-4)
  r = C.greedy_back_generation(TOY, x0, y, apply_fn=_Toy(), max_len=1, blacklist=[2])
  assert (r.length, r.prompt) == (1, (3,))
  assert r.loss == pytest.approx(0.6298, abs=1e-4)


# ---------------------------------------------------------------- T3: attention bound

def _attention_control_part(units, x0, i):
  """‖y_i^u‖ for each control row u of units [n,2], one head with W_q = W_k = W_v = I_2 over
  [u; X0], causal (u, first, is visible to every row)."""
  w_u = np.exp(units @ x0[i] / np.sqrt(2))  # [n] weight of the control key
  w_x = np.exp(x0[:i + 1] @ x0[i] / np.sqrt(2)).sum()  # imposed keys visible to row i
  return w_u / (w_u + w_x) * np.linalg.norm(units, axis=1)


def test_t3_attention_bound_is_tight_on_identity_head():
  eye, x0 = np.eye(2), np.eye(2)
  tight = C.attention_control_bound(eye, eye, eye, x0, k=1, m_u=1.0)
  loose = C.attention_control_bound(eye, eye, eye, x0, k=1, m_u=1.0, tight=False)
  np.testing.assert_allclose(tight, [0.5, 0.4011], atol=1e-4)
  np.testing.assert_allclose(loose, [1.0, 0.6698], atol=1e-4)
  angles = np.linspace(0, 2 * np.pi, 20001)
  units = np.stack([np.cos(angles), np.sin(angles)], 1)
  for i in range(2):
    reach = _attention_control_part(units, x0, i)
    assert reach.max() <= tight[i] + 1e-6
    assert reach.max() == pytest.approx(float(tight[i]), abs=1e-4)
  # Non-causal: g_i sums over both rows, g = e^α + 1 for each, so both bounds are e^α/(2e^α+1).
  a = np.exp(1 / np.sqrt(2))
  np.testing.assert_allclose(
      C.attention_control_bound(eye, eye, eye, x0, k=1, m_u=1.0, causal=False),
      [a / (2 * a + 1)] * 2, atol=1e-5)


def test_attention_bound_notebook_variant_and_scaling():
  eye, x0 = np.eye(2), np.eye(2)
  wv = 3 * eye  # σ_v = 3: the notebook puts σ_v in α (for σ_k) and drops the σ_v M_u factor
  a = np.exp(3 / np.sqrt(2))
  np.testing.assert_allclose(
      C.attention_control_bound(eye, eye, wv, x0, k=1, m_u=1.0, notebook=True, causal=False),
      [a / (a + np.exp(1 / np.sqrt(2)) + 1)] * 2, atol=1e-5)
  # Ours scales with σ_v M_u; k = 2 control tokens double the loose bound.
  np.testing.assert_allclose(C.attention_control_bound(eye, eye, wv, x0, k=2, m_u=1.0,
                                                       tight=False),
                             3 * 2 * np.array([1.0, 0.6698]), atol=1e-3)
  with pytest.raises(ValueError, match=r"wv must be \[d=2, d_v\]"):
    C.attention_control_bound(eye, eye, np.eye(3), x0, k=1, m_u=1.0)


# ---------------------------------------------------------------- T4: top-k candidate sets

def test_t4_top_candidates():
  g = jnp.array([[0.5, -1, 0.2, -0.3], [-0.2, 0.1, -0.9, 0]])
  top = np.asarray(C.top_candidates(g, 2))
  assert [set(r) for r in top.tolist()] == [{1, 3}, {0, 2}]
  allowed = jnp.array([True, False, True, True])  # 1 blacklisted: position 0 falls back to 3, 2
  top = np.asarray(C.top_candidates(g, 2, allowed))
  assert [set(r) for r in top.tolist()] == [{2, 3}, {0, 2}]


def test_gcg_candidates_are_single_edits_from_the_top_sets():
  cur = jnp.array([[1, 2, 3], [4, 5, 6]])
  top = jnp.array(np.arange(2 * 3 * 4).reshape(2, 3, 4) + 10)  # ids never in cur
  cand = np.asarray(jax.jit(C.gcg_candidates, static_argnums=3)(jax.random.key(0), cur, top, 64))
  assert cand.shape == (2, 64, 3)
  for b in range(2):
    diff = cand[b] != np.asarray(cur)[b]
    assert (diff.sum(1) == 1).all()  # top ids differ from cur, so every edit shows
    for m in range(64):
      pos = int(np.flatnonzero(diff[m])[0])
      assert cand[b, m, pos] in np.asarray(top)[b, pos]


# ---------------------------------------------------------------- loss and gradient

def test_target_loss_and_hit_match_plain_forward_and_chunking(params):
  x0 = [5, 9, 11]
  prompts = np.array([[3, 4], [50, 1], [8, 8]])
  # y = the greedy 2-token continuation after prompt 0, so prompt 0 must hit.
  y = []
  for _ in range(2):
    y.append(int(_plain_logits(params, [[3, 4] + x0 + y])[0][-1].argmax()))
  got = np.asarray(C.target_loss(params, prompts, x0, y, config=CFG))
  pairs = CL.pack_pairs([x0], [y], V)
  _, hit = CL.score_jit(CL.ModelLogits(CFG), params, jnp.asarray(prompts)[None], *pairs.arrays())
  for n, u in enumerate(prompts):
    want_hit, want_loss = _check(params, u, x0, y)
    assert got[n] == pytest.approx(want_loss, abs=1e-5)
    assert bool(hit[0, n]) == want_hit
  assert bool(hit[0, 0])
  np.testing.assert_allclose(C.target_loss(params, prompts, x0, y, config=CFG, chunk=2), got,
                             atol=1e-6)


def test_onehot_gradient_methods_agree_and_match_finite_differences(params):
  prompt, x0, y = [4, 17, 33], [5, 9, 11], [7]
  g_emb = np.asarray(C.onehot_grad(params, prompt, x0, y, config=CFG))
  g_oh = np.asarray(C.onehot_grad(params, prompt, x0, y, config=CFG, method="onehot"))
  assert g_emb.shape == (3, V)
  np.testing.assert_allclose(g_emb, g_oh, atol=1e-5)
  table = params["embed"]

  @jax.jit
  def relaxed_loss(onehot):  # [k,V]: loss with the prompt's embeddings = onehot @ E
    emb = jnp.concatenate([onehot @ table, table[jnp.array(x0)]])[None]
    logits = models.forward(params, jnp.zeros((1, 6), jnp.int32), config=CFG,
                            input_embeddings=emb)[0][0, -1]
    return jax.nn.logsumexp(logits) - logits[y[0]]

  onehot = jax.nn.one_hot(jnp.array(prompt), V)
  h = 1e-2
  for i, v in [(0, 4), (1, 0), (2, 57), (1, int(np.argmin(g_emb[1])))]:
    e = jnp.zeros((3, V)).at[i, v].set(h)
    fd = (relaxed_loss(onehot + e) - relaxed_loss(onehot - e)) / (2 * h)
    assert g_emb[i, v] == pytest.approx(float(fd), rel=1e-2, abs=1e-3)


# ---------------------------------------------------------------- greedy vs brute force

def test_greedy_finds_length_one_control_confirmed_by_brute_force(params):
  x0 = [12, 40, 7, 21]
  base = int(_plain_logits(params, [x0])[0][-1].argmax())
  logits = np.stack([l[-1] for l in _plain_logits(params, [[v] + x0 for v in range(V)])])
  m = logits.max(1, keepdims=True)
  ce = np.log(np.exp(logits - m).sum(1, keepdims=True)) + m - logits  # [v, y] CE of y after v
  reach = set(logits.argmax(1).tolist())  # R_1(x0) by brute force over V
  # Targets where the CE-best prompt (greedy's pick) does make y the argmax: ℓ = 1 expected.
  easy = [y for y in sorted(reach - {base}) if logits[ce[:, y].argmin()].argmax() == y]
  unreachable = [y for y in range(V) if y not in reach and y != base]
  assert easy and unreachable
  r = C.greedy_back_generation(params, x0, [easy[0]], config=CFG, max_len=1)
  assert (r.length, r.prompt) == (1, (int(ce[:, easy[0]].argmin()),))
  assert r.loss == pytest.approx(float(ce[:, easy[0]].min()), abs=1e-4)
  r = C.greedy_back_generation(params, x0, [unreachable[0]], config=CFG, max_len=1)
  assert r.length == C.NOT_FOUND and r.prompt == (int(ce[:, unreachable[0]].argmin()),)
  r = C.greedy_back_generation(params, x0, [base], config=CFG, max_len=1)
  assert (r.length, r.prompt, r.loss) == (0, (), r.base_loss)


# ---------------------------------------------------------------- GCG update rules

def test_gcg_keep_best_and_the_authors_replace_even_if_worse_rule(params):
  x0, y, rng = [5, 9, 11, 3], [44], jax.random.key(1)
  last = C.gcg(params, x0, y, config=CFG, rng=rng, num_tokens=4, **GCG)
  best = C.gcg(params, x0, y, config=CFG, rng=rng, num_tokens=4, keep_best=True, **GCG)
  # One trajectory: keep_best changes only which iterate is returned.
  np.testing.assert_array_equal(last.history, best.history)
  h, bh = last.history, best.best_history
  assert h.shape == (GCG["num_iters"] + 1,)
  np.testing.assert_allclose(bh, np.minimum.accumulate(h), atol=1e-6)
  assert (np.diff(bh) <= 0).all()
  # The authors' rule accepts a worse best candidate: the iterate's loss goes up somewhere.
  assert (np.diff(h) > 1e-6).any()
  assert last.loss == pytest.approx(float(h[-1]), abs=1e-5)
  assert best.loss == pytest.approx(float(h.min()), abs=1e-5) and best.loss <= last.loss
  for r in (last, best):
    assert len(r.prompt) == 4
    assert (r.found, r.loss) == pytest.approx(_check(params, r.prompt, x0, y), abs=1e-4)
  assert h[0] > h.min()  # the search lowered the loss from its random start


def test_each_search_compiles_once_per_shape(params):
  C.gcg(params, [1, 2, 3, 4], [9], config=CFG, rng=jax.random.key(3), num_tokens=4, **GCG)
  C.greedy_back_generation(params, [1, 2, 3, 4], [9], config=CFG, max_len=2)
  C.target_loss(params, [[1, 2], [3, 4], [5, 6]], [3, 4, 5], [6, 7], config=CFG)
  before = dict(CL.TRACES)
  assert before["gcg"] >= 1 and before["greedy"] >= 2 and before["score"] >= 1
  # New values, flags that are traced (keep_best, the blacklist), same shapes: no new trace.
  C.gcg(params, [8, 7, 6, 5], [20], config=CFG, rng=jax.random.key(4), num_tokens=4,
        keep_best=True, blacklist=[3, 9], **GCG)
  C.greedy_back_generation(params, [8, 7, 6, 5], [20], config=CFG, max_len=2, blacklist=[3])
  C.target_loss(params, [[9, 9], [1, 1], [2, 2]], [7, 7, 7], [1, 2], config=CFG)
  assert dict(CL.TRACES) == before


# ---------------------------------------------------------------- backoff invariants

def test_backoff_results_recheck_with_plain_forward(params):
  x0s = [TOK.encode(p) for p, _ in PAIRS]
  base_y = int(_plain_logits(params, [x0s[0]])[0][-1].argmax())
  ys = [[base_y]] + [TOK.encode(t, add_special_tokens=False)[:1] for _, t in PAIRS[1:]]
  at_zero = [_check(params, (), x0, y)[0] for x0, y in zip(x0s, ys)]
  assert at_zero[0]
  blacklist = list(range(29, V))  # half the vocabulary
  results = C.backoff_control_batch(params, x0s, ys, config=CFG, rng=jax.random.key(0),
                                    blacklist=blacklist, **SEARCH)
  assert [r.length == 0 for r in results] == at_zero and results[0].prompt == ()
  assert {r.length for r in results} <= {0, 1, 2, 3, C.NOT_FOUND}
  for r, x0, y in zip(results, x0s, ys):
    assert not set(r.prompt) & set(blacklist)
    assert r.losses[0] == pytest.approx(r.base_loss)
    if r.length >= 0:
      assert len(r.prompt) == r.length
    # The flag and the loss agree with a plain forward on the unpadded row, found or not.
    assert (r.found, r.loss) == pytest.approx(_check(params, r.prompt, x0, y), abs=1e-4)
  eps = C.k_epsilon_curve([r.length for r in results], 3)
  assert eps[0] == pytest.approx(1 - np.mean(at_zero)) and (np.diff(eps) <= 0).all()


def test_warm_start_extends_the_previous_prompt_to_the_left(params, monkeypatch):
  """GCG's starting prompts with warm_start: the greedy prompt nearest x0, fresh allowed tokens
  to its left (the search itself is replaced: only the hand-over is under test)."""
  from tokenrl.analysis import gcg as G
  inits = []

  def fake_gcg_batch(params, pairs, *, init, **kwargs):
    inits.append(np.array(init))
    b = len(init)
    return init, np.zeros(b), np.zeros(b, bool), None, None

  monkeypatch.setattr(G, "gcg_batch", fake_gcg_batch)
  x0s = [TOK.encode(p) for p, _ in PAIRS]
  ys = [[40], [41], [42]]  # '?' '!' ... : far from any sum, so greedy is unlikely to succeed
  blacklist = list(range(29, V))
  greedy = C.backoff_control_batch(params, x0s, ys, config=CFG, rng=jax.random.key(0),
                                   blacklist=blacklist, **{**SEARCH, "gcg_lengths": ()})
  warm = C.backoff_control_batch(params, x0s, ys, config=CFG, rng=jax.random.key(0),
                                 blacklist=blacklist, warm_start=True, **SEARCH)
  todo = [i for i, r in enumerate(greedy) if not r.found]
  assert todo and len(inits) == -(-len(todo) // 2)
  rows = np.concatenate(inits)
  for r, i in enumerate(todo):
    assert tuple(rows[r, 1:]) == greedy[i].prompt  # k = 3 = 1 fresh + the 2 greedy tokens
    assert rows[r, 0] not in blacklist
    assert warm[i].prompt == tuple(rows[r])  # the (fake) search's answer is the result


def test_bad_input_names_the_argument(params):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"ys\[0\] holds ids outside \[0, 58\)"):
    C.backoff_control(params, [1, 2], [58], config=CFG, rng=key, top_k=8)
  with pytest.raises(ValueError, match=r"x0s\[0\] is empty"):
    C.backoff_control(params, [], [3], config=CFG, rng=key, top_k=8)
  with pytest.raises(ValueError, match=r"top_k must be in \[1, 58\]"):
    C.backoff_control(params, [1], [2], config=CFG, rng=key)  # the spec's 128 > V
  with pytest.raises(ValueError, match=r"top_k must be in \[1, 4\]"):
    C.gcg(params, [1], [2], config=CFG, rng=key, num_tokens=2, top_k=5, blacklist=range(54))
  with pytest.raises(ValueError, match="greedy_lengths must be 1, 2, ..., n"):
    C.backoff_control(params, [1], [2], config=CFG, rng=key, top_k=8, greedy_lengths=(2, 3))
  with pytest.raises(ValueError, match="exceed the model's max_seq_len 64"):
    C.backoff_control(params, list(range(1, 58)), [2], config=CFG, rng=key, top_k=8)
  with pytest.raises(ValueError, match=r"blacklist holds ids outside \[0, 58\)"):
    C.greedy_back_generation(params, [1], [2], config=CFG, blacklist=[58])
  with pytest.raises(ValueError, match="give exactly one of config= .* and apply_fn="):
    C.target_loss(params, [[1]], [2], [3])
  with pytest.raises(ValueError, match=r"prompts must be int \[N,k\]"):
    C.target_loss(params, [1, 2], [2], [3], config=CFG)


# ---------------------------------------------------------------- CLI end to end

def test_analyze_control_command(params, tmp_path, capsys):
  folder = str(tmp_path / "model")
  models.save_hf(folder, CFG, params, tokenizer=CharTokenizer())
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in PAIRS))
  png, out_json = str(tmp_path / "curve.png"), str(tmp_path / "out.json")
  settings = ["--greedy_lengths=1,2", "--gcg_lengths=3", "--top_k=8", "--batch_size=16",
              "--num_iters=12", "--pair_batch=2"]
  rc = cmd.run(["--model", folder, "--pairs", str(pairs), "--out", png, "--json", out_json,
                *settings])
  out = capsys.readouterr().out
  assert rc == 0
  lines = out.splitlines()
  assert lines[0].startswith("k-ε controllability: 3 pairs from")
  assert re.search(r"^ℓ +pairs +share +mean base loss$", out, re.M)
  head = [i for i, line in enumerate(lines) if re.fullmatch(r"k +ε̂\(k\)", line)]
  assert len(head) == 1
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(out_json))
  assert [p["y"] for p in saved["pairs"]] == [TOK.encode(t, add_special_tokens=False)[:1]
                                             for _, t in PAIRS]
  assert [p["x0"] for p in saved["pairs"]] == [TOK.encode(p) for p, _ in PAIRS]
  lengths = [p["length"] for p in saved["pairs"]]
  np.testing.assert_allclose(saved["k_epsilon"], C.k_epsilon_curve(lengths, 3), atol=1e-6)
  eps_rows = lines[head[0] + 2:][:4]
  assert [float(r.split()[1]) for r in eps_rows] == pytest.approx(saved["k_epsilon"], abs=1e-4)
  special = {0, 1, 2}  # <pad>, <bos>, <eos>: the default blacklist
  for p in saved["pairs"]:
    assert not set(p["control"]) & special
  # Random targets: drawn from the allowed ids.
  rc = cmd.run(["--model", folder, "--pairs", str(pairs), "--out", png, "--json", out_json,
                "--targets", "random", "--seed", "3", *settings])
  assert rc == 0 and "targets=random" in capsys.readouterr().out
  assert all(not set(p["y"]) & special for p in json.load(open(out_json))["pairs"])


def test_analyze_control_command_refuses_bad_input(params, tmp_path):
  folder = str(tmp_path / "model")
  models.save_hf(folder, CFG, params, tokenizer=CharTokenizer())
  with pytest.raises(SystemExit, match="--model has no held-out data; give --pairs"):
    cmd.run(["--model", folder])
  with pytest.raises(SystemExit, match="--top_k must be >= 1, got 0"):
    cmd.run(["--model", folder, "--top_k=0"])
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "1+1="}\n')
  with pytest.raises(SystemExit, match=r"bad.jsonl:1: expected"):
    cmd.run(["--model", folder, "--pairs", str(bad)])
