"""All-for-One subgraph (spec §2(d)): T1 masks as whole matrices, T2 a toy head by hand, T3 the
CAMA table by hand, invariants (i)-(iii) on a tiny random model checked against plain
`forward`, one compile per shape, the AF1Eval relations, and `tokenrl analyze af1` end to end."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.analysis import af1 as A
from tokenrl.analysis.af1_eval import AF1Eval, pick_cell
from tokenrl.commands import af1 as cmd
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.models import layers

# V = 58 is the char tokenizer's, so the CLI test's saved model has this very config.
CFG = models.tiny("qwen2", vocab_size=58, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))
L, V, S = CFG.num_layers, CFG.vocab_size, 6


@pytest.fixture(scope="module")
def params():
  return jax.jit(models.init_params, static_argnums=0)(CFG, jax.random.key(0))


def _rows(n, seed, s=S):
  """[n, s]: BOS then random ids in [3, V): a random template, every position varying."""
  rng = np.random.default_rng(seed)
  return np.concatenate([np.ones((n, 1), np.int32), rng.integers(3, V, (n, s - 1))], 1)


@jax.jit
def _jit_last(params, tokens, hooks):
  return models.forward(params, tokens, config=CFG, hooks=hooks)[0][:, -1]


def _last(params, tokens, hooks=None):
  """Last-position logits [N,V] of plain `forward` (under hooks, if given)."""
  return np.asarray(_jit_last(params, jnp.asarray(tokens, jnp.int32), hooks))


def _m(*rows):
  return np.array([[c == "1" for c in r] for r in rows])


# ---------------------------------------------------------------- T1-T3 by hand

def test_t1_masks_whole_matrices():
  m = np.asarray(A.af1_masks(5, num_layers=3, l_wait=1, l_transfer=1))
  causal = np.tril(np.ones((5, 5), bool))
  abp = _m("10000", "11000", "10100", "10010", "11111")
  compute = _m("10000", "11000", "10100", "10010", "10001")
  np.testing.assert_array_equal(m, np.stack([causal, abp, compute]))
  # B2 flag: without BOS, self only (and the last row of ABP still sees everything).
  m = np.asarray(A.af1_masks(5, num_layers=3, l_wait=0, l_transfer=2, keep_bos=False))
  eye = np.eye(5, dtype=bool)
  np.testing.assert_array_equal(m, np.stack([eye | _m(*["00000"] * 4, "11111")] * 2 + [eye]))
  # Necessity: cut transfer layer 1 only.
  m = np.asarray(A.af1_masks(5, num_layers=3, l_wait=0, l_transfer=2, cut_layers=(1,)))
  np.testing.assert_array_equal(m, np.stack([abp, compute, compute]))
  # Context curve: causal, the last row cut from layer 1 on.
  m = np.asarray(A.context_cut_masks(5, num_layers=3, from_layer=1))
  cut = causal.copy()
  cut[4] = _m("10001")[0]
  np.testing.assert_array_equal(m, np.stack([causal, cut, cut]))
  np.testing.assert_array_equal(np.asarray(A.context_cut_masks(5, num_layers=3, from_layer=3)),
                                np.stack([causal] * 3))


def test_t2_toy_single_head():
  x = jnp.asarray([[0, 0], [1, 0], [0, 1], [1, 1], [2, 0]], jnp.float32)[None, :, None, :]
  masks = np.asarray(A.af1_masks(5, num_layers=3, l_wait=1, l_transfer=1))  # causal/ABP/compute
  out = [np.asarray(layers.attention(x, x, x, jnp.asarray(m)[None], scale=1 / np.sqrt(2)))[0, :, 0]
         for m in masks]
  causal, abp, compute = out
  np.testing.assert_allclose(causal[2], [0.2483, 0.5035], atol=1e-4)
  np.testing.assert_allclose(abp[2], [0.0, 0.6698], atol=1e-4)   # 0.3302 BOS + 0.6698 self
  np.testing.assert_allclose(abp[4], [1.5496, 0.1884], atol=1e-4)
  np.testing.assert_allclose(causal[4], [1.5496, 0.1884], atol=1e-4)
  np.testing.assert_allclose(compute[4], [1.8884, 0.0], atol=1e-4)  # 0.0558 BOS + 0.9442 self


def test_t3_cama_table_and_fallbacks():
  ref = np.array([[7, 3, 9], [7, 4, 9], [8, 3, 9], [8, 4, 9]])
  states = np.array([[(1, 0), (2, 2), (0, 1)], [(1, 0), (4, 0), (0, 3)],
                     [(3, 1), (0, 2), (2, 1)], [(3, 1), (2, 4), (2, 3)]], np.float32)
  table = A.cama_from_residuals(ref, states, vocab_size=10, l_wait=2)
  assert table.l_wait == 2 and table.means.shape == (3, 3, 2)  # U = 1 + 2 tokens, not V
  mu = lambda t, v: np.asarray(table.means[t, int(table.slot_map[t, v])])
  for (t, v), want in {(0, 7): (1, 0), (0, 8): (3, 1), (1, 3): (1, 2), (1, 4): (3, 2),
                       (2, 9): (1, 2)}.items():
    np.testing.assert_allclose(mu(t, v), want, atol=1e-6)
  hidden, fallback = table.entering(jnp.asarray([[7, 4, 9]]))
  np.testing.assert_allclose(np.asarray(hidden[0]), [(1, 0), (3, 2), (1, 2)], atol=1e-6)
  assert not np.asarray(fallback).any()
  # Token 5 never sits at position 1: the position mean (2, 2), counted as a fallback.
  hidden, fallback = table.entering(jnp.asarray([[8, 5, 9]]))
  np.testing.assert_allclose(np.asarray(hidden[0]), [(3, 1), (2, 2), (1, 2)], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(fallback), [[False, True, False]])
  np.testing.assert_array_equal(np.asarray(table.counts), [[4, 2, 2], [4, 2, 2], [4, 4, 0]])
  np.testing.assert_array_equal(table.slot_tokens(), [[-1, 7, 8], [-1, 3, 4], [-1, 9, -1]])
  # Ablations: token-agnostic position means (2, .5), (2, 2), (1, 2); zeros.
  hidden, fallback = table.token_agnostic().entering(jnp.asarray([[7, 4, 9]]))
  np.testing.assert_allclose(np.asarray(hidden[0]), [(2, .5), (2, 2), (1, 2)], atol=1e-6)
  assert np.asarray(fallback).all()
  assert not np.asarray(table.zeroed().entering(jnp.asarray([[7, 4, 9]]))[0]).any()


# ---------------------------------------------------------------- invariants on a tiny model

def test_cama_tables_equal_recorded_residuals_whatever_the_chunk(params):
  ref = _rows(40, 1)
  res = jax.jit(lambda p, t: models.run_with_hooks(
      p, t, config=CFG, hooks=models.Hooks(record_residuals=True)).residuals)(params, ref)
  for chunk in (16, 64):  # 16: three chunks, the last one padded with zero-weight rows
    tables = A.cama_tables(params, ref, config=CFG, l_waits=(0, 1, 2), chunk=chunk)
    for d, table in tables.items():
      want = A.cama_from_residuals(ref, res[d], vocab_size=V, l_wait=d)
      np.testing.assert_allclose(np.asarray(table.means), np.asarray(want.means), atol=1e-5)
      np.testing.assert_array_equal(np.asarray(table.counts), np.asarray(want.counts))
      np.testing.assert_array_equal(np.asarray(table.slot_map), np.asarray(want.slot_map))


def test_invariant_i_causal_masks_give_forward(params):
  tokens = _rows(8, 2)
  causal = jnp.asarray(np.broadcast_to(np.tril(np.ones((S, S), bool)), (L, S, S)))
  # Depth 0: the embedding depends on (t, x_t) only, so CAMA is the identity.
  table = A.cama_table(params, _rows(40, 3).tolist() + tokens.tolist(), config=CFG, l_wait=0)
  logits, fallback = A.restricted_forward(params, tokens, config=CFG, cama=table,
                                          attn_mask=causal)
  np.testing.assert_allclose(np.asarray(logits), _last(params, tokens), atol=1e-5)
  assert not np.asarray(fallback).any()
  # With a single reference row, CAMA at any depth is that row's own residual.
  one = np.repeat(tokens[:1], 8, axis=0)
  for depth, own in A.cama_tables(params, np.repeat(tokens[:1], 40, axis=0), config=CFG,
                                  l_waits=range(L + 1)).items():
    logits, _ = A.restricted_forward(params, one, config=CFG, cama=own, attn_mask=causal)
    np.testing.assert_allclose(np.asarray(logits), _last(params, one), atol=2e-5)


@pytest.mark.parametrize("l_wait", [0, 1])
def test_invariant_ii_no_transfer_ignores_the_context(params, l_wait):
  refs = _rows(60, 4)
  refs[::2, 0] = 7  # position 0 varies too, so a changed first token enters differently
  table = A.cama_table(params, refs, config=CFG, l_wait=l_wait)
  x = refs[:8].copy()
  changed = x.copy()
  changed[:, 1:S - 1] = refs[8:16, 1:S - 1]  # every token but BOS and the last one
  changed[:, 0] = 7  # and BOS
  for keep_bos in (True, False):
    f = lambda t, tr=0: np.asarray(A.af1_forward(params, t, config=CFG, cama=table,
                                                 l_wait=l_wait, l_transfer=tr, keep_bos=keep_bos))
    base = f(x)
    middle_only = changed.copy()
    middle_only[:, 0] = x[:, 0]
    np.testing.assert_allclose(f(middle_only), base, atol=1e-6)
    bos_moved = np.abs(f(changed) - base).max()
    assert (bos_moved > 1e-4) if keep_bos else (bos_moved < 1e-6)
    # With one transfer layer, the same edit reaches the last token.
    assert np.abs(f(middle_only, 1) - f(x, 1)).max() > 1e-4


def test_invariant_iii_abp_last_row_is_the_causal_last_row(params):
  q, k, v = (jax.random.normal(jax.random.key(i), (2, S, 4, 8)) for i in range(3))
  m = A.af1_masks(S, num_layers=3, l_wait=1, l_transfer=1)  # causal, ABP, compute
  causal, abp = (np.asarray(layers.attention(q, k, v, m[i][None], scale=0.3)) for i in (0, 1))
  np.testing.assert_allclose(abp[:, -1], causal[:, -1], atol=1e-6)
  assert np.abs(abp[:, 1:-1] - causal[:, 1:-1]).max() > 1e-3
  # Model level: with only the last layer run under ABP, the last position's logits equal the
  # unrestricted last layer's from the same entering residual.
  tokens = _rows(8, 5)
  table = A.cama_table(params, _rows(50, 6), config=CFG, l_wait=L - 1)
  got = np.asarray(A.af1_forward(params, tokens, config=CFG, cama=table, l_wait=L - 1,
                                 l_transfer=1))
  hidden, _ = table.entering(jnp.asarray(tokens))
  want = _last(params, tokens, models.Hooks(start_layer=L - 1, inputs_hidden=hidden))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_af1_forward_compiles_once_per_shape_and_wait(params):
  table = A.cama_table(params, _rows(40, 7), config=CFG, l_wait=1)
  f = lambda p, t, **kw: A.af1_forward(p, t, config=CFG, cama=table, l_wait=1, **kw)
  f(params, _rows(8, 8), l_transfer=1)
  before = A.TRACES["af1_forward"]
  other = jax.tree.map(lambda w: w * 1.01, params)
  f(other, _rows(8, 9), l_transfer=1)
  f(params, _rows(8, 10), l_transfer=0, keep_bos=False)  # masks are traced values
  f(params, _rows(8, 10), l_transfer=1, cut_layers=(1,), head_mask=np.zeros((L, 4)))
  assert A.TRACES["af1_forward"] == before
  f(params, _rows(3, 10), l_transfer=1)  # a new shape compiles
  assert A.TRACES["af1_forward"] == before + 1


def test_bad_input_names_the_argument(params):
  table = A.cama_table(params, _rows(40, 11), config=CFG, l_wait=1)
  kw = dict(config=CFG, cama=table)
  with pytest.raises(ValueError, match=r"l_wait \+ l_transfer = 1 \+ 2 exceeds num_layers=2"):
    A.af1_forward(params, _rows(2, 0), l_wait=1, l_transfer=2, **kw)
  with pytest.raises(ValueError, match="cama was read at depth l_wait=1, but l_wait=0"):
    A.af1_forward(params, _rows(2, 0), l_wait=0, l_transfer=1, **kw)
  with pytest.raises(ValueError, match="tokens has length S=5, but the CAMA table was built "
                     "for S=6"):
    A.af1_forward(params, _rows(2, 0, s=5), l_wait=1, l_transfer=1, **kw)
  with pytest.raises(ValueError, match=r"tokens holds ids outside \[0, 58\)"):
    A.af1_forward(params, np.full((2, S), 58), l_wait=1, l_transfer=1, **kw)
  with pytest.raises(ValueError, match=r"head_mask must be \[L,Q\] = \[2,4\], got \(2, 2\)"):
    A.af1_forward(params, _rows(2, 0), l_wait=1, l_transfer=1, head_mask=np.ones((2, 2)), **kw)
  with pytest.raises(ValueError, match="ref_tokens must be int"):
    A.cama_table(params, [[1, 2], [3]], config=CFG, l_wait=0)
  with pytest.raises(ValueError, match=r"residuals must be \[N,S,D\] = \[2,2,D\]"):
    A.cama_from_residuals([[1, 2], [3, 4]], np.zeros((2, 3, 4)), vocab_size=8)
  with pytest.raises(ValueError, match=r"refs hold no prompt of length \[5\]"):
    AF1Eval(params, [[1, 2, 3, 4, 5]], [[3]], config=CFG, refs=_rows(4, 0))
  with pytest.raises(ValueError, match="metric must be one of"):
    AF1Eval(params, _rows(2, 0), [[3], [4]], config=CFG, refs=_rows(4, 0), metric="exact")


# ---------------------------------------------------------------- AF1Eval relations

def test_eval_relations(params):
  prompts = _rows(8, 12).tolist() + _rows(8, 13, s=S - 1).tolist()  # two templates
  own = [[int(i)] for i in _last(params, _rows(8, 12)).argmax(-1)] + [
      [int(i)] for i in _last(params, _rows(8, 13, s=S - 1)).argmax(-1)]
  refs = _rows(40, 14).tolist() + _rows(50, 15, s=S - 1).tolist()
  ev = AF1Eval(params, prompts, own, config=CFG, refs=refs, chunk=16)
  assert sorted(ev.groups) == [S - 1, S] and ev.ref_counts == {S - 1: 50, S: 40}
  assert ev.full().accuracy == 1.0 and ev.context_curve()[L] == 1.0
  grid = ev.grid()
  assert np.array_equal(np.isnan(grid), np.add.outer(np.arange(L + 1), np.arange(L + 1)) > L)
  # Each template is scored with its own table: equal to evaluating it alone.
  alone = AF1Eval(params, prompts[8:], own[8:], config=CFG, refs=refs[40:], chunk=16)
  np.testing.assert_array_equal(ev.score(1, 1).correct[8:], alone.score(1, 1).correct)
  # Cutting the only transfer layer = no transfer layer at all.
  for w in range(L):
    assert ev.necessity(w, 1)[w] == ev.score(w, 0).accuracy
  # Pruning: every transfer head in turn; each step's score rechecks with its head mask.
  path = ev.prune_heads(0, 2)
  assert len(path) == 2 * 4 and len({(s.layer, s.head) for s in path}) == 8
  head_mask = np.ones((L, 4))
  for step in path[:3]:
    head_mask[step.layer, step.head] = 0
    assert ev.score(0, 2, head_mask=head_mask).accuracy == step.accuracy
  assert len(ev.prune_heads(0, 2, min_accuracy=1.01)) == 0
  assert pick_cell(np.array([[0.5, 0.9], [0.95, np.nan]]), 1.0) == (1, 0)
  assert pick_cell(np.array([[0.5, 0.9], [0.2, np.nan]]), 1.0) == (0, 1)
  assert pick_cell(np.array([[0.5, 0.7], [0.2, np.nan]]), 1.0) is None


def test_greedy_metric(params):
  # Length S-1 and 1-token answers + a stop token: the lengths S-1, S of the test above.
  prompts = _rows(8, 16, s=S - 1)
  # Gold = the full model's own greedy token; a row is right under the full model iff its next
  # greedy token is the stop token (here the one row 0 emits, so some rows are right).
  answers = _last(params, prompts).argmax(-1)[:, None].astype(np.int32)
  second = _last(params, np.concatenate([prompts, answers], 1)).argmax(-1)
  ev = AF1Eval(params, prompts, answers.tolist(), config=CFG, refs=_rows(50, 17, s=S - 1),
               metric="greedy", stop_ids=(int(second[0]),))
  assert ev.steps == 2 and set(ev.tables) == {(S - 1, 0), (S - 1, 1)}
  assert ev.tables[(S - 1, 1)][1].seq_len == S
  np.testing.assert_array_equal(ev.full().correct, second == second[0])
  first = AF1Eval(params, prompts, answers.tolist(), config=CFG, refs=_rows(50, 17, s=S - 1))
  assert first.full().accuracy == 1.0
  for w, t in ((0, 1), (1, 1)):
    g, f = ev.score(w, t).correct, first.score(w, t).correct
    assert not (g & ~f).any()  # a right answer starts with a right first token


# ---------------------------------------------------------------- CLI end to end

PAIRS = [(f"{a}+{b}=", str(a + b)) for a, b in ((1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (4, 4))]
REFS = [f"{a}+{b}=" for a in range(10) for b in range(0, 10, 2)]  # 50 (shapes of the tests above)


def _files(params, tmp_path):
  folder = str(tmp_path / "model")
  models.save_hf(folder, CFG, params, tokenizer=CharTokenizer())
  prompts, refs = tmp_path / "p.jsonl", tmp_path / "r.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PAIRS))
  refs.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in REFS))
  return folder, str(prompts), str(refs)


def test_analyze_af1_command(params, tmp_path, capsys):
  folder, prompts, refs = _files(params, tmp_path)
  png, out_json = str(tmp_path / "af1.png"), str(tmp_path / "af1.json")
  rc = cmd.run(["--model", folder, "--prompts", prompts, "--refs", refs, "--out", png,
                "--json", out_json])
  out = capsys.readouterr().out
  assert rc == 0
  assert out.startswith("AF1: 6 prompts from") and "50 CAMA references" in out
  assert re.search(r"^L_wait +L_transfer +CAMA +mean abl\. +zero abl\.", out, re.M)
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  saved = json.load(open(out_json))
  assert len(saved["cells"]) == (L + 1) * (L + 2) // 2 and len(saved["context_curve"]) == L + 1
  # The numbers are AF1Eval's on the same ids.
  tok = CharTokenizer()
  ev = AF1Eval(params, [tok.encode(p) for p, _ in PAIRS],
               [tok.encode(a, add_special_tokens=False) for _, a in PAIRS], config=CFG,
               refs=[tok.encode(r) for r in REFS])
  assert re.search(rf"^full model accuracy: {ev.full().accuracy:.4f}$", out, re.M)
  for c in saved["cells"]:
    assert c["cama"] == ev.score(c["l_wait"], c["l_transfer"]).accuracy
    assert c["zero"] == ev.score(c["l_wait"], c["l_transfer"], ablation="zero").accuracy
  # One cell: the necessity check and pruning of its 4 transfer heads.
  rc = cmd.run(["--model", folder, "--prompts", prompts, "--refs", refs, "--out", png,
                "--l_wait", "1", "--l_transfer", "1", "--prune", "--json", out_json])
  out = capsys.readouterr().out
  saved = json.load(open(out_json))
  assert rc == 0 and saved["cell"] == [1, 1] and list(saved["necessity"]) == ["1"]
  assert len(saved["prune"]) == 4 and re.search(r"^heads removed +layer +head +accuracy$", out,
                                                re.M)


def test_analyze_af1_command_refuses_bad_input(params, tmp_path):
  folder, prompts, _ = _files(params, tmp_path)
  with pytest.raises(SystemExit, match="--model has no held-out data; give --prompts"):
    cmd.run(["--model", folder])
  with pytest.raises(SystemExit, match="give both --l_wait and --l_transfer"):
    cmd.run(["--model", folder, "--prompts", prompts, "--l_wait", "1"])
  with pytest.raises(SystemExit, match=r"l_wait \+ l_transfer = 2 \+ 1 exceeds num_layers=2"):
    cmd.run(["--model", folder, "--prompts", prompts, "--l_wait", "2", "--l_transfer", "1"])
  with pytest.raises(SystemExit, match="2 --prompt but 1 --answer"):
    cmd.run(["--model", folder, "--prompt", "1+1=", "--prompt", "2+2=", "--answer", "2"])
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "1+1="}\n')
  with pytest.raises(SystemExit, match=r"bad.jsonl:1: expected"):
    cmd.run(["--model", folder, "--prompts", str(bad)])
