"""CoIn hidden-token verification (tokenrl.audit.coin, tokenrl.audit.merkle; spec §4(d)).

Hand-worked digests and probabilities (T1-T4), the tree's invariants, count binding, the
verifier's set invariances, a small training run that must separate naive inflation, and the
`tokenrl audit coin` command end to end on a tiny saved model.
"""

import dataclasses
import hashlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.audit import coin, merkle
from tokenrl.data.char_tokenizer import CharTokenizer

H = lambda data: hashlib.sha256(data).digest()
A, B, C = H(b"a"), H(b"b"), H(b"c")
CONFIG = models.tiny("qwen2", vocab_size=58, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))


def _flip(data: bytes, bit: int) -> bytes:
  out = bytearray(data)
  out[bit // 8] ^= 1 << (bit % 8)
  return bytes(out)


# --- T1-T4, by hand -----------------------------------------------------------------------------


def test_t1_three_leaves_padded_with_the_last():
  assert A.hex().startswith("ca978112") and A.hex().endswith("48bb")
  assert B.hex().startswith("3e23e816") and B.hex().endswith("009d")
  assert C.hex().startswith("2e7d2c03") and C.hex().endswith("efc6")
  levels = merkle.merkle_levels([A, B, C])
  assert levels[0] == [A, B, C, C]
  assert levels[1][0].hex().startswith("e5a01fee14e0ed5c") and levels[1][0].hex().endswith("f94a")
  assert levels[1][1].hex().startswith("a3e333fbee455b9a") and levels[1][1].hex().endswith("085c")
  assert levels[2] == [bytes.fromhex(
      "d31a37ef6ac14a2db1470c4316beb5592e6afd4465022339adafda76a18ffabe")]


def test_t2_proof_of_index_2_and_every_flipped_bit_fails():
  levels = merkle.merkle_levels([A, B, C])
  root = levels[-1][0]
  proof = merkle.merkle_proof(levels, 2)
  # c is the right sibling (bit 0 of 2 is 0), H(a‖b) the left one (bit 1 is 1).
  assert proof == [C, H(A + B)]
  assert merkle.merkle_verify(C, 2, proof, root)
  for bit in range(256):
    assert not merkle.merkle_verify(_flip(C, bit), 2, proof, root)
    assert not merkle.merkle_verify(C, 2, [_flip(proof[0], bit), proof[1]], root)
    assert not merkle.merkle_verify(C, 2, [proof[0], _flip(proof[1], bit)], root)
    assert not merkle.merkle_verify(C, 2, proof, _flip(root, bit))
  assert not merkle.merkle_verify(C, 0, proof, root)
  assert not merkle.merkle_verify(C, 1, proof, root)
  # Index 3 is the padding copy of c: the bare tree accepts it, which is why the count is
  # bound and indices >= m are refused (test_padding_leaf_is_refused_once_the_count_is_bound).
  assert merkle.merkle_verify(C, 3, proof, root)


def test_t3_fingerprint_bytes_and_leaf():
  # Block embedding [1.0, 0.5] ‖ token embedding [0.25] (E differs here only for the hand case).
  fp = np.concatenate([np.array([1.0, 0.5], np.float32), np.array([0.25], np.float32)])
  assert merkle.fingerprint_bytes(fp).hex() == "0000803f0000003f0000803e"
  assert merkle.leaf_hash(fp).hex() == (
      "95128540caa5ebf017c64254c63156b06f3d763f99033d23fa0191b8074086b2")
  with pytest.raises(ValueError, match="float32"):
    merkle.leaf_hash(fp.astype(np.float64))


def test_t4_detection_probabilities():
  assert coin.detection_probability(100, 20, 10, replace=True) == pytest.approx(0.892626, abs=1e-6)
  assert coin.detection_probability(100, 20, 10, replace=False) == pytest.approx(0.904884,
                                                                                 abs=1e-6)
  assert coin.samples_needed(1000, 100, 0.95, replace=True) == 29
  assert coin.detection_probability(1000, 100, 28, replace=True) < 0.95
  # Without replacement, every fake leaf is found once s > m - fake.
  assert coin.detection_probability(10, 3, 8, replace=False) == 1.0
  assert coin.samples_needed(10, 3, 0.999, replace=False) <= 8


# --- the tree and the commitment ----------------------------------------------------------------


def _random_leaves(rng, m):
  return [H(rng.bytes(8)) for _ in range(m)]


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13])
def test_any_changed_or_reordered_leaf_changes_the_root(m):
  rng = np.random.default_rng(m)
  leaves = _random_leaves(rng, m)
  root = merkle.merkle_levels(leaves)[-1][0]
  for i in range(m):
    changed = list(leaves)
    changed[i] = _flip(leaves[i], int(rng.integers(256)))
    assert merkle.merkle_levels(changed)[-1][0] != root
    for j in range(i + 1, m):
      swapped = list(leaves)
      swapped[i], swapped[j] = swapped[j], swapped[i]
      assert merkle.merkle_levels(swapped)[-1][0] != root


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13])
def test_every_proof_verifies_and_fails_when_tampered(m):
  rng = np.random.default_rng(100 + m)
  leaves = _random_leaves(rng, m)
  levels = merkle.merkle_levels(leaves)
  root = levels[-1][0]
  for i in range(m):
    proof = merkle.merkle_proof(levels, i)
    assert len(proof) == merkle.tree_depth(m)
    assert merkle.merkle_verify(leaves[i], i, proof, root)
    assert not merkle.merkle_verify(_flip(leaves[i], int(rng.integers(256))), i, proof, root)
    assert not merkle.merkle_verify(leaves[i], i, proof, _flip(root, int(rng.integers(256))))
    for k in range(len(proof)):
      bad = list(proof)
      bad[k] = _flip(proof[k], int(rng.integers(256)))
      assert not merkle.merkle_verify(leaves[i], i, bad, root)
    for j in range(m):
      if j != i:
        assert not merkle.merkle_verify(leaves[i], j, proof, root)


def _fps(m, e=3, seed=0):
  return np.random.default_rng(seed).standard_normal((m, 2 * e)).astype(np.float32)


def test_openings_verify_and_the_count_is_bound():
  trace = merkle.CommittedTrace(_fps(5), count=5)
  c = trace.commitment
  assert c.bound_root == H(c.root + (5).to_bytes(8, "little"))
  assert c == merkle.commit(_fps(5), count=5)
  for o in trace.open(range(5)):
    assert merkle.opening_error(c, o) is None
  o = trace.open([4])[0]
  for other in (4, 6, 8):  # 6 and 8 keep or change the tree depth: both refused
    assert "not the committed one" in merkle.opening_error(dataclasses.replace(c, count=other), o)
  fp = o.fingerprint.copy()
  fp[0] = np.nextafter(fp[0], np.float32(np.inf))  # one ulp
  assert "does not lead to the root" in merkle.opening_error(
      c, dataclasses.replace(o, fingerprint=fp))
  assert "siblings" in merkle.opening_error(c, dataclasses.replace(o, proof=o.proof + (C,)))
  with pytest.raises(ValueError, match="count"):
    merkle.commit(_fps(5), count=6)


def test_padding_leaf_is_refused_once_the_count_is_bound():
  trace = merkle.CommittedTrace(_fps(5), count=5)
  # Leaves 5..7 are copies of leaf 4: the bare tree accepts them at their own index.
  proof = tuple(merkle.merkle_proof(trace.levels, 7))
  assert merkle.merkle_verify(merkle.leaf_hash(trace.fps[4]), 7, proof, trace.commitment.root)
  forged = merkle.Opening(7, trace.fps[4], proof)
  assert "outside [0, 5)" in merkle.opening_error(trace.commitment, forged)
  with pytest.raises(ValueError, match=r"\[0, 5\)"):
    trace.open([5])
  drawn = np.concatenate([coin.sample_indices(np.random.default_rng(k), 5, 3) for k in range(200)])
  assert drawn.max() == 4 and drawn.min() == 0


def test_detection_probability_matches_monte_carlo():
  """20000 simulated audits per case; tolerance 4.5 binomial standard deviations (<= 0.016)."""
  rng = np.random.default_rng(0)
  trials = 20000
  for m, fake, s in [(50, 7, 6), (30, 3, 12), (200, 40, 5)]:
    for replace in (True, False):
      if replace:
        drawn = rng.integers(0, m, (trials, s))
      else:  # the first s of a random permutation per trial
        drawn = np.argsort(rng.random((trials, m)), axis=1)[:, :s]
      hits = (drawn < fake).any(axis=1)  # leaves 0..fake-1 are the fabricated ones
      p = coin.detection_probability(m, fake, s, replace=replace)
      assert abs(hits.mean() - p) <= 4.5 * math.sqrt(p * (1 - p) / trials), (m, fake, s, replace)


# --- fingerprints, blocks, encoder --------------------------------------------------------------


def test_fingerprints_and_partition():
  block = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  token = np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 0.0]], np.float32)
  fp = np.asarray(coin.fingerprints(block, token, np.array([0, 0, 1])))
  np.testing.assert_array_equal(fp, [[1, 2, 5, 6], [1, 2, 7, 8], [3, 4, 9, 0]])
  with pytest.raises(ValueError, match=r"block_index must be \[m\] = \[3\]"):
    coin.fingerprints(block, token, np.array([0, 1]))
  with pytest.raises(ValueError, match=r"block_index values must be in \[0, α=2\)"):
    coin.fingerprints(block, token, np.array([0, 1, 2]))
  np.testing.assert_array_equal(coin.partition(np.zeros(7), block_size=3), [0, 0, 0, 1, 1, 1, 2])
  tokens = np.array([5, 9, 5, 5, 5, 5, 9, 5])  # 9 ends a block; at most 3 tokens per block
  np.testing.assert_array_equal(
      coin.partition(tokens, rule="separators", separators=[9], block_size=3),
      [0, 0, 1, 1, 1, 2, 2, 3])


@pytest.fixture(scope="module")
def tiny_params():
  return models.init_params(CONFIG, jax.random.key(0))


def test_encoder_is_bit_exact_whatever_is_batched_beside(tiny_params):
  rng = np.random.default_rng(0)
  spans = [rng.integers(3, 58, int(n)).tolist() for n in rng.integers(1, 9, 150)]
  enc = coin.FrozenEncoder(tiny_params, config=CONFIG)
  together = enc.spans(spans)
  assert together.dtype == np.float32 and together.shape == (150, CONFIG.dim)
  again = coin.FrozenEncoder(tiny_params, config=CONFIG)
  for r in (0, 17, 149):
    assert again.spans([spans[r]])[0].tobytes() == together[r].tobytes()
  trace = np.array(sum(spans[:6], []), np.int32)  # blocks of 8 straddle the spans
  one = coin.encode_trace(enc, trace, spans[7], block_size=8)
  two = coin.encode_traces(again, [spans[8], trace], [spans[9], spans[7]], block_size=8)[1]
  assert one.fingerprints.tobytes() == two.fingerprints.tobytes()
  assert one.fingerprints.shape == (trace.size, 2 * CONFIG.dim)


# --- heads, verifier, scores --------------------------------------------------------------------


def test_matching_head_formula():
  params = {"w_a": jnp.eye(2), "w_b": jnp.eye(2), "gamma": 2.0, "beta": -1.0,
            "mean_a": jnp.zeros(2), "scale_a": jnp.ones(2), "mean_b": jnp.zeros(2),
            "scale_b": jnp.ones(2)}
  p = jax.jit(coin.head_apply)(params, jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))
  assert float(p) == pytest.approx(1 / (1 + math.exp(-(2 / math.sqrt(2) - 1))), abs=1e-6)


def test_deepset_is_invariant_to_block_order_and_masked_content():
  params = coin.deepset_init(jax.random.key(1), width=8)
  apply = jax.jit(coin.deepset_verifier_apply)
  rng = np.random.default_rng(0)
  scores = rng.random((6, 2)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  p = apply(params, scores, mask)
  perm = rng.permutation(6)
  np.testing.assert_allclose(apply(params, scores[perm], mask[perm]), p, rtol=0, atol=1e-6)
  junk = scores.copy()
  junk[2], junk[4] = np.nan, 1e6
  assert apply(params, junk, mask) == p
  changed = scores.copy()
  changed[0] = 0.5
  assert not np.allclose(apply(params, changed, mask), p)
  with pytest.raises(ValueError, match=r"scores must be \[α,2\] and mask \[α\]"):
    apply(params, scores[:, :1], mask)


def test_block_scores_average_each_sampled_block():
  rng = np.random.default_rng(0)
  e = 3
  head = coin.head_init(jax.random.key(0), rng.standard_normal((8, e)), rng.standard_normal((8, e)))
  fps = jnp.asarray(rng.standard_normal((4, 2 * e)), jnp.float32)
  answer = jnp.asarray(rng.standard_normal(e), jnp.float32)
  slot, leaf_mask = jnp.array([0, 1, 0, 3]), jnp.array([1.0, 1.0, 1.0, 0.0])
  scores, mask = jax.jit(coin.block_scores)(head, head, fps, slot, leaf_mask, answer)
  # The heads one leaf at a time, averaged here by hand.
  apply = jax.jit(coin.head_apply)
  pa = [float(apply(head, fps[k, :e], fps[k, e:])) for k in range(4)]
  pb = [float(apply(head, fps[k, :e], answer)) for k in range(4)]
  np.testing.assert_allclose(scores[0], [(pa[0] + pa[2]) / 2, (pb[0] + pb[2]) / 2], rtol=1e-6)
  np.testing.assert_allclose(scores[1], [pa[1], pb[1]], rtol=1e-6)
  np.testing.assert_array_equal(mask, [1, 1, 0, 0])


def test_block_slots_group_by_block_and_catch_inconsistent_blocks():
  fps = np.array([[1, 1, 5, 5], [1, 1, 6, 6], [2, 2, 7, 7]], np.float32)
  slot, why = coin.block_slots(np.array([3, 5, 9]), fps, block_size=8)
  assert why == "" and slot.tolist() == [0, 0, 1]
  slot, why = coin.block_slots(np.array([3, 5, 9]), fps, block_size=None)
  assert why == "" and slot.tolist() == [0, 0, 1]
  _, why = coin.block_slots(np.array([3, 9, 12]), fps, block_size=8)
  assert "leaves 9 and 12 of block 1" in why


def test_inflation_fixtures():
  rng = np.random.default_rng(0)
  honest = np.arange(10, 30, dtype=np.int32)  # 20 tokens: blocks of 8, 8, 4
  out = coin.inflate_naive(rng, honest, 7, vocab=[3, 4])
  assert out.size == 27 and (out[:20] == honest).all() and set(out[20:]) <= {3, 4}
  out = coin.inflate_naive(rng, honest, 5, vocab=[3], mode="repeat")
  assert len(set(out[20:].tolist())) == 1 and out[20] in honest
  donor = np.arange(100, 124, dtype=np.int32)
  out = coin.inflate_splice(rng, honest, donor, 19, block_size=8)  # 2 whole blocks + 3 tokens
  assert out.size == 39
  kept = [t for t in out.tolist() if t < 100]
  assert kept == honest.tolist()  # honest tokens all kept, in order
  donor_blocks = {tuple(donor[s:s + 8].tolist()) for s in (0, 8, 16)}
  spliced = [tuple(out[s:s + 8].tolist()) for s in range(0, 32, 8) if out[s] >= 100]
  assert len(spliced) == 2 and set(spliced) <= donor_blocks  # whole, block-aligned donor blocks


# --- a small training run and the end-to-end audit ----------------------------------------------


def _synthetic_cases(params, rng, n):
  """n prompts, each with a 'topic' of 3 token ids: an honest trace of 3-5 blocks of 8 tokens
  drawn from it, an answer of 4. Every other trace is inflated naively (1-5 blocks of random
  tokens appended). Returns (encoded traces, is_honest [n], is_train [n])."""
  hidden, answers, honest = [], [], []
  for k in range(n):
    topic = rng.choice(np.arange(3, 58), 3, replace=False)
    trace = rng.choice(topic, 8 * int(rng.integers(3, 6)))
    if k % 2:
      trace = coin.inflate_naive(rng, trace, 8 * int(rng.integers(1, 6)), vocab=range(3, 58))
    hidden.append(trace.astype(np.int32))
    answers.append(rng.choice(topic, 4))
    honest.append(k % 2 == 0)
  enc = coin.FrozenEncoder(params, config=CONFIG, features="input")
  traces = coin.encode_traces(enc, hidden, answers, block_size=8)
  return traces, np.array(honest), np.arange(n) % 4 < 2


@pytest.fixture(scope="module")
def trained(tiny_params):
  """Models A, B and the verifier trained on 120 synthetic traces (fixed seeds)."""
  rng = np.random.default_rng(0)
  traces, honest, train = _synthetic_cases(tiny_params, rng, 240)
  honest_train = [t for t, h, tr in zip(traces, honest, train) if h and tr]
  ka, kb, kv = jax.random.split(jax.random.key(0), 3)
  head_a = coin.train_head(ka, *coin.token_block_pairs(rng, honest_train, 2048), steps=400)
  head_b = coin.train_head(kb, *coin.block_answer_pairs(rng, honest_train, 2048), steps=400)
  score = jax.jit(jax.vmap(coin.block_scores, (None, None, 0, 0, 0, 0)))

  def features(idx, s=16):
    fps = np.zeros((len(idx), s, 2 * CONFIG.dim), np.float32)
    slots = np.tile(np.arange(s, dtype=np.int32), (len(idx), 1))
    for r, i in enumerate(idx):
      leaves = coin.sample_indices(rng, traces[i].tokens.size, s)
      fps[r] = traces[i].fingerprints[leaves]
      slots[r], _ = coin.block_slots(leaves, fps[r], block_size=8)
    answers = np.stack([traces[i].answer_emb for i in idx])
    return score(head_a, head_b, fps, slots, np.ones((len(idx), s), np.float32), answers)

  train_idx = np.flatnonzero(train)
  verifier = coin.train_verifier(kv, *features(train_idx), honest[train_idx], steps=600)
  auditor = coin.CoinAuditor(head_a, head_b, verifier, block_size=8)
  return auditor, traces, honest, train, features


def test_training_separates_naive_inflation(trained):
  auditor, traces, honest, train, features = trained
  test_idx = np.flatnonzero(~train)
  p = jax.jit(jax.vmap(coin.deepset_verifier_apply, (None, 0, 0)))(
      auditor.verifier, *features(test_idx))
  # Held-out traces; 0.5 = chance. Half the inflated traces carry >= 30% random tokens, so
  # s = 16 samples almost always see one; 0.95 leaves room only for a working detector.
  assert coin.auc(1.0 - np.asarray(p), ~honest[test_idx]) >= 0.95


def test_audit_end_to_end_and_tampering(trained):
  auditor, traces, honest, train, _ = trained
  rng = np.random.default_rng(1)
  benign = {True: [], False: []}
  for i in np.flatnonzero(~train)[:40]:
    t = traces[i]
    committed = merkle.CommittedTrace(t.fingerprints, count=t.tokens.size)
    res = coin.audit(committed.commitment, committed.open, t.answer_emb, auditor=auditor,
                     num_samples=16, rng=rng)
    assert res.verified and res.reason == "" and 0.0 <= res.p_benign <= 1.0
    assert res.indices.max() < t.tokens.size and len(set(res.indices.tolist())) == 16
    benign[bool(honest[i])].append(res.benign)
  assert np.mean(benign[True]) - np.mean(benign[False]) >= 0.5

  t = traces[int(np.flatnonzero(~train & honest)[0])]
  committed = merkle.CommittedTrace(t.fingerprints, count=t.tokens.size)
  run = lambda commitment, open_fn: coin.audit(commitment, open_fn, t.answer_emb,
                                               auditor=auditor, num_samples=8, rng=rng)

  def flipped(indices):
    out = committed.open(indices)
    fp = out[3].fingerprint.copy()
    fp[-1] = -fp[-1]
    return out[:3] + [dataclasses.replace(out[3], fingerprint=fp)] + out[4:]

  res = run(committed.commitment, flipped)
  assert not res.verified and not res.benign and res.p_benign == 0.0
  assert "does not lead to the root" in res.reason
  res = run(committed.commitment, lambda idx: committed.open((np.asarray(idx) + 1) % t.tokens.size))
  assert "not the sampled" in res.reason
  res = run(dataclasses.replace(committed.commitment, count=t.tokens.size + 8), committed.open)
  assert "not the committed one" in res.reason


# --- `tokenrl audit coin` -------------------------------------------------------------------------


def test_command_end_to_end(tiny_params, tmp_path, capsys):
  from tokenrl.commands import coin as command
  model_dir, png = str(tmp_path / "model"), str(tmp_path / "out" / "coin.png")
  models.save_hf(model_dir, CONFIG, tiny_params, tokenizer=CharTokenizer())
  rc = command.run(["--model", model_dir, "--num_traces", "24", "--attempts", "2,3",
                    "--max_new_tokens", "3", "--block_size", "4", "--samples", "2,4",
                    "--main_samples", "4", "--head_steps", "20", "--verifier_steps", "20",
                    "--pairs", "256", "--out", png])
  out = capsys.readouterr().out
  assert rc == 0
  lines = out.splitlines()
  header = next(k for k, line in enumerate(lines) if line.startswith("attack (s=4)"))
  assert "detection AUC" in lines[header] and "length-only AUC" in lines[header]
  rows = {line.split()[0]: line.split() for line in lines[header + 2:header + 5]}
  assert set(rows) == {"naive_random", "naive_repeat", "splice"}
  for row in rows.values():
    assert 0.0 <= float(row[1]) <= 1.0
  assert any(line.split()[:3] == ["s", "honest", "flagged"] for line in lines)
  trips = next(line for line in lines if line.startswith("round trips:"))
  verified, total = trips.split()[2].split("/")
  assert verified == total and int(total) > 0  # every honest commitment opens and verifies
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_command_refuses_bad_flags(tmp_path, capsys):
  from tokenrl.commands import coin as command
  with pytest.raises(SystemExit):
    command.run(["--model", str(tmp_path), "--num_traces", "5", "--samples", "2,4",
                 "--main_samples", "3"])
  err = capsys.readouterr().err
  assert "--num_traces must be >= 12" in err and "--main_samples must be one of --samples" in err
