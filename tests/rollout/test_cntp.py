"""CNTP (spec §10): N = 1 everywhere is `sample`; argmin-PPL selection on scripted trials; the KV
cache after selections is a fresh prefill of the emitted text; every branch segment is a valid
trial; rows are independent; bad arguments are named.

Every engine call shares one compile (same shapes and static arguments; the entropy band is
traced), so the file costs one `_generate` compile, one `sample` compile and one full forward.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import transformer
from tokenrl.rollout import cntp as cntp_lib
from tokenrl.rollout import cntp_sample, sample
from tokenrl.rollout.cntp import punctuation_ids, select_trial
from tokenrl.rollout.controls import cntp_num_trials

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]
PUNCT = (3, 4)  # two "punctuation" ids of the toy vocabulary; 1 is the stop token
T, M, K = 12, 4, 4  # max_new_tokens, max_trials, max_trial_tokens
KW = dict(config=CONFIG, max_new_tokens=T, temperature=0.9, top_k=0, top_p=0.95)


def _decode(prompts, rng, h_lo, h_hi):
  return cntp_lib._decode(PARAMS, prompts, rng=rng, punctuation=PUNCT, max_trials=M, h_lo=h_lo,
                          h_hi=h_hi, max_trial_tokens=K, num_samples=1, stop_tokens=None,
                          prompt_mask=None, cache_dtype=None, **KW)


@pytest.fixture(scope="module")
def plain():
  """h_lo above any entropy (the spec's infinite threshold): N = 1 at every step."""
  return _decode(PROMPTS, jax.random.key(1), 1e9, 2e9)


@pytest.fixture(scope="module")
def band(plain):
  """An entropy band inside this model's entropies, so steps mix N = 1, 2..M-1 and M."""
  ent = np.asarray(plain[0].entropy)[np.asarray(plain[0].mask) == 1]
  return float(np.quantile(ent, 0.3)), float(np.quantile(ent, 0.8))


@pytest.fixture(scope="module")
def branched(band):
  return _decode(PROMPTS, jax.random.key(1), *band)


def test_infinite_threshold_is_sample(plain):
  rollout, stats, _ = plain
  ref = sample(PARAMS, PROMPTS, rng=jax.random.key(1), **KW)
  np.testing.assert_array_equal(np.asarray(rollout.tokens), np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(rollout.mask), np.asarray(ref.mask))
  np.testing.assert_array_equal(np.asarray(rollout.truncated), np.asarray(ref.truncated))
  np.testing.assert_allclose(np.asarray(rollout.logprobs), np.asarray(ref.logprobs), atol=1e-5)
  np.testing.assert_allclose(np.asarray(rollout.entropy), np.asarray(ref.entropy), atol=1e-5)
  assert stats.branch_points == 0 and stats.trial_tokens == 0
  assert stats.sampled_tokens == stats.emitted == int(np.asarray(ref.mask).sum())
  np.testing.assert_array_equal(stats.trials, np.asarray(rollout.mask))


def test_select_trial_takes_argmin_ppl_on_scripted_trials():
  garbage = 9.0  # entries past a trial's count must be ignored
  logprobs = np.full((4, 3, 4), garbage, np.float32)
  counts = np.zeros((4, 3), np.int32)
  # Row 0: means -1, -0.5, -1.2 -> trial 1 (PPL e^0.5): by the mean, not the sum (trial 2's
  # sum, -1.2, is the largest).
  logprobs[0, 0, :2], logprobs[0, 1, :3] = [-1.5, -0.5], [-0.1, -0.2, -1.2]
  logprobs[0, 2, :1] = [-1.2]
  counts[0] = [2, 3, 1]
  # Row 1: a tie between trials 0 and 1 goes to 0; trial 2 is better but j >= num_trials.
  logprobs[1, 0, :1], logprobs[1, 1, :2], logprobs[1, 2, :1] = [-1], [-0.5, -1.5], [-0.01]
  counts[1] = [1, 2, 1]
  # Row 2: one trial (an ordinary token); row 3: finished (no trial at all).
  logprobs[2, :, 0], counts[2] = [-3, -0.1, -0.1], [1, 1, 1]
  winner, ppl = select_trial(jnp.asarray(logprobs), jnp.asarray(counts), jnp.asarray([3, 2, 1, 0]))
  np.testing.assert_array_equal(np.asarray(winner), [1, 0, 0, 0])
  np.testing.assert_allclose(np.asarray(ppl[0]), np.exp([1.0, 0.5, 1.2]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ppl[1]), [np.e, np.e, np.inf], rtol=1e-6)
  assert np.isinf(np.asarray(ppl[2, 1:])).all() and np.isinf(np.asarray(ppl[3])).all()


_FORWARD = jax.jit(transformer.forward, static_argnames="config")


def test_cache_after_selection_is_a_fresh_prefill(branched):
  rollout, stats, (cache, logits) = branched
  assert stats.branch_points > 0  # the cache went through forks and winner gathers
  per_layer = isinstance(cache["k"], tuple)
  step_params = transformer.split_layers(PARAMS) if per_layer else PARAMS
  # One more token on the returned cache reads every cached slot: next-step logits.
  extra = [2, 5, 9]
  step_logits, _ = _FORWARD(step_params, jnp.asarray(extra)[:, None], config=CONFIG, cache=cache,
                            segment_ids=jnp.ones((3, 1), jnp.int32))
  # The fresh prefill: prompt + emitted + extra per row, right-padded into one batch.
  tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
  seqs = [p + tokens[r, mask[r] == 1].tolist() + [extra[r]] for r, p in enumerate(PROMPTS)]
  width = max(map(len, seqs))
  batch = np.zeros((len(seqs), width), np.int32)
  segments = np.zeros((len(seqs), width), np.int32)
  for r, seq in enumerate(seqs):
    batch[r, :len(seq)], segments[r, :len(seq)] = seq, 1
  full, _ = _FORWARD(PARAMS, jnp.asarray(batch), config=CONFIG, segment_ids=jnp.asarray(segments))
  last = np.asarray([len(seq) - 1 for seq in seqs])
  rows = np.arange(len(seqs))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(full)[rows, last - 1], atol=1e-5)
  np.testing.assert_allclose(np.asarray(step_logits[:, 0]), np.asarray(full)[rows, last],
                             atol=1e-5)


def test_emitted_tokens_are_valid_trials(branched, band):
  rollout, stats, _ = branched
  tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
  trials, entropy = stats.trials, np.asarray(rollout.entropy)
  closers = set(PUNCT) | set(CONFIG.eos_ids)
  assert set(np.unique(trials[mask == 1])) >= {0, 1, M}  # ordinary steps, trials, long trials
  assert (trials[mask == 0] == 0).all()
  for row in range(len(PROMPTS)):
    length = int(mask[row].sum())
    assert mask[row, :length].all()  # no hole: segments are contiguous
    starts = np.flatnonzero(trials[row]).tolist()
    assert starts[0] == 0
    # Each segment's trial count is cntp_num_trials of π's entropy at its first token.
    expected = np.asarray(cntp_num_trials(entropy[row, starts], max_trials=M, h_lo=band[0],
                                          h_hi=band[1]))
    np.testing.assert_array_equal(trials[row, starts], expected)
    for s, e in zip(starts, starts[1:] + [length]):
      seg = tokens[row, s:e].tolist()
      if trials[row, s] == 1:
        assert len(seg) == 1
        continue
      # A trial stops at its first closer, else at the cap or at max_new_tokens.
      assert not closers & set(seg[:-1])
      assert seg[-1] in closers or len(seg) == K or e == T
  assert stats.trial_tokens >= stats.sampled_tokens - stats.emitted > 0


def test_rows_are_independent(branched, band):
  rollout = branched[0]
  # Same shapes (so the same compile), other rows' prompts changed: row 0 must not move.
  other, _, _ = _decode([PROMPTS[0], [7, 7, 7, 7], [2, 2]], jax.random.key(1), *band)
  np.testing.assert_array_equal(np.asarray(other.tokens[0]), np.asarray(rollout.tokens[0]))
  np.testing.assert_array_equal(np.asarray(other.mask[0]), np.asarray(rollout.mask[0]))
  np.testing.assert_allclose(np.asarray(other.logprobs[0]), np.asarray(rollout.logprobs[0]),
                             atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_trials=0), "max_trials"),
    (dict(max_trial_tokens=0), "max_trial_tokens"),
    (dict(h_lo=1.0, h_hi=1.0), "h_hi > h_lo"),
    (dict(punctuation=(3, 16)), r"punctuation ids \[16\]"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
])
def test_bad_arguments_are_named(kwargs, match):
  args = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=4, punctuation=PUNCT)
  with pytest.raises(ValueError, match=match):
    cntp_sample(PARAMS, PROMPTS, **{**args, **kwargs})


def test_tokenselect_attention_is_refused():
  config = dataclasses.replace(CONFIG, attention="tokenselect")
  with pytest.raises(ValueError, match="attention='tokenselect'"):
    cntp_sample(PARAMS, PROMPTS, config=config, rng=jax.random.key(0), max_new_tokens=4,
                punctuation=PUNCT)


class _Toy:
  """A 6-token tokenizer with BPE-like merged punctuation tokens."""

  pieces = ["a", ".", " .", ".\n", "b,", "x"]
  vocab_size = len(pieces)

  def encode(self, text, add_special_tokens=True):
    del add_special_tokens
    return {".": [1], ",": [4, 5], "\n": [3]}[text]  # ',' only as the start of a merge

  def decode(self, ids):
    return "".join(self.pieces[i] for i in ids)


def test_punctuation_ids_first_token_and_ends_with():
  tok = _Toy()
  assert punctuation_ids(tok, (".", ",", "\n")) == (1, 4, 3)  # the first token of each
  assert punctuation_ids(tok, (".", ",", "\n"), ends_with=True) == (1, 2, 3, 4)
  with pytest.raises(ValueError, match="strings"):
    punctuation_ids(tok, ())
  from tokenrl.data.char_tokenizer import CharTokenizer
  char = CharTokenizer()
  assert punctuation_ids(char, (".", "\n")) == tuple(char.encode(".\n", add_special_tokens=False))
