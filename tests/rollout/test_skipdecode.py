"""SkipDecode (spec §7): hand-computed schedules, monotonicity refused otherwise, n = L equals
`sample` exactly, and the layers actually run (count output and which KV slots each layer
wrote) follow the schedule; skipping an identity layer changes nothing."""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout import sample
from tokenrl.rollout import skipdecode as S

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_layers=4, num_heads=4, num_kv_heads=2,
                     mlp_dim=48, eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]


def test_linear_schedule_hand_values():
  # n(t) = 1 + ceil(3·(4 − t)/4): 1 + (3, 3, 2, 1, 0).
  assert S.linear_schedule(5, max_layers=4, min_layers=1) == (4, 4, 3, 2, 1)
  # end = 3: 2 + ceil(2·(2 − t)/2) = 4, 3, then min 2.
  assert S.linear_schedule(5, max_layers=4, min_layers=2, end=3) == (4, 3, 2, 2, 2)
  assert S.linear_schedule(3, max_layers=4, min_layers=4) == (4, 4, 4)
  assert S.linear_schedule(2, max_layers=3, min_layers=1, end=1) == (1, 1)
  for sched in [S.linear_schedule(17, max_layers=24, min_layers=5, end=11)]:
    assert all(a >= b for a, b in zip(sched, sched[1:])) and sched[0] == 24 and sched[-1] == 5


def test_active_layers_warmup_and_top():
  assert S.active_layers(4, 2, 1) == (0, 2, 3)
  assert S.active_layers(4, 4, 1) == (0, 1, 2, 3)  # warm-up inside the range runs once
  assert S.active_layers(4, 3, 1) == (0, 1, 2, 3)
  assert S.active_layers(4, 0, 1) == (0,)
  assert S.active_layers(4, 1, 0) == (3,)
  # Subset property (spec §7 e2): with n non-increasing, each step's set ⊆ the previous one's.
  sched = S.linear_schedule(9, max_layers=4, min_layers=0)
  sets = [set(S.active_layers(4, n, 1)) for n in sched]
  assert all(b <= a for a, b in zip(sets, sets[1:]))


def test_non_monotone_schedule_refused():
  with pytest.raises(ValueError, match=r"non-increasing.*n\(1\)=3 < n\(2\)=4"):
    S.skip_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(0), max_new_tokens=3,
                  schedule=(4, 3, 4))
  with pytest.raises(ValueError, match="3 entries"):
    S.check_schedule((4, 3, 2), num_layers=4, max_new_tokens=4)
  with pytest.raises(ValueError, match="in \\[0, num_layers=4\\]"):
    S.check_schedule((5, 3), num_layers=4, max_new_tokens=2)
  with pytest.raises(ValueError, match="min_layers <= max_layers"):
    S.linear_schedule(4, max_layers=2, min_layers=3)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_full_depth_equals_sample(temperature):
  kw = dict(config=CONFIG, rng=jax.random.key(4), max_new_tokens=8, temperature=temperature,
            stop_tokens=(14,), num_samples=2)
  out, info = S.skip_sample(PARAMS, PROMPTS, max_layers=4, min_layers=4, **kw)
  ref = sample(PARAMS, PROMPTS, **kw)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.mask, ref.mask)
  np.testing.assert_array_equal(out.truncated, ref.truncated)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_allclose(out.entropy, ref.entropy, atol=1e-5)


def test_layers_run_and_kv_slots_follow_schedule():
  # n(t) = 1 + ceil(3·(5 − t)/5) = 1 + (3, 3, 2, 2, 1, 0).
  sched = S.linear_schedule(6, max_layers=4, min_layers=1)
  assert sched == (4, 4, 3, 3, 2, 1)
  out, info = S.skip_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(5),
                            max_new_tokens=6, temperature=1.0, stop_tokens=(), schedule=sched,
                            return_cache=True)
  # Token 0: the prefill (4 layers); token t: {0} ∪ top n(t) = 4, 4, 4, {0,2,3}, {0,3}.
  np.testing.assert_array_equal(info.layers_run, [4, 4, 4, 4, 3, 2])
  # Which layers wrote a KV entry at the slot of generated input t−1 (slot P + t − 1): the
  # cache starts at zero, a written key is nonzero.
  p = out.prompt_tokens.shape[1]
  for layer in range(4):
    written = np.any(np.asarray(info.cache["k"][layer]) != 0, axis=(1, 2))  # [N,C]
    assert written[:, :p][np.asarray(out.prompt_mask) == 1].all()  # prefill: every layer
    for t in range(1, 6):
      expect = layer in S.active_layers(4, sched[t], 1)
      assert written[:, p + t - 1].all() == expect and written[:, p + t - 1].any() == expect, (
          layer, t)
    assert not written[:, p + 5].any()  # the last token is never fed back
  lp, ent = np.asarray(out.logprobs), np.asarray(out.entropy)
  assert np.all(lp <= 0) and np.all(ent >= 0) and np.all(np.exp(lp) > 0)


def test_skipping_identity_layer_changes_nothing():
  # Layer 1 the identity (o = down = 0: x + 0 + 0). With n = 2 from t = 1 on and one warm-up
  # layer, generated tokens run layers {0, 2, 3}: the same function as all four layers, so
  # tokens and log-probs (of the distribution actually sampled from) equal `sample`'s.
  lay = dict(PARAMS["layers"])
  for name in ("o", "down"):
    lay[name] = lay[name].at[1].set(0.0)
  params = {**PARAMS, "layers": lay}
  kw = dict(config=CONFIG, rng=jax.random.key(6), max_new_tokens=8, temperature=1.0,
            stop_tokens=(14,), num_samples=2)
  out, info = S.skip_sample(params, PROMPTS, schedule=(4,) + (2,) * 7, **kw)
  ref = sample(params, PROMPTS, **kw)
  np.testing.assert_array_equal(info.layers_run[1:][np.asarray(out.mask).any(0)[1:]], 3)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  # And a non-identity layer 1 does change the law (the path really skips it).
  out2, _ = S.skip_sample(PARAMS, PROMPTS, schedule=(4,) + (2,) * 7, **kw)
  ref2 = sample(PARAMS, PROMPTS, **kw)
  assert np.abs(np.asarray(out2.logprobs) - np.asarray(ref2.logprobs)).max() > 1e-3
