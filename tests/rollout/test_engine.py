"""The paged engine = `sample`: same tokens, masks, truncation (log-probs and entropies up to
float summation order) whatever the slots, pages, refills and prompt sharing; every page comes
back; a shared prompt is prefilled once for its G rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout import sample
from tokenrl.rollout.engine import paged_sample

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
# Ragged lengths 1..11; page_size 4 divides none of them but 4 and 8 (both edge cases occur:
# a prompt ending exactly on a page boundary, and partial pages that need copy-on-write).
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8, 9, 10], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
           [4], [9, 8, 7, 6]]
T = 10


def _assert_same(ref, out):
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(ref.mask))
  np.testing.assert_array_equal(np.asarray(out.truncated), np.asarray(ref.truncated))
  np.testing.assert_array_equal(np.asarray(out.prompt_tokens), np.asarray(ref.prompt_tokens))
  np.testing.assert_array_equal(np.asarray(out.prompt_mask), np.asarray(ref.prompt_mask))
  # Paged attention sums over keys in another order than the dense cache: float noise only.
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), atol=2e-5)
  np.testing.assert_allclose(np.asarray(out.entropy), np.asarray(ref.entropy), atol=2e-5)


def _both(**kw):
  engine = {k: kw.pop(k) for k in ("num_slots", "page_size", "num_pages", "share_prompts")
            if k in kw}
  ref = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3), max_new_tokens=T, **kw)
  out, stats = paged_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3),
                            max_new_tokens=T, return_stats=True, **engine, **kw)
  return ref, out, stats


def _common_stop_token():
  """A token the untrained model emits often: as a stop token it makes lengths very uneven."""
  ref = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3), max_new_tokens=T,
               temperature=1.0, num_samples=2, stop_tokens=())
  counts = np.bincount(np.asarray(ref.tokens).ravel(), minlength=CONFIG.vocab_size)
  return int(np.argmax(counts))


def test_greedy_equals_sample_with_refills_and_ragged_pages():
  ref, out, stats = _both(temperature=0.0, stop_tokens=(), num_slots=2, page_size=4)
  _assert_same(ref, out)
  assert np.asarray(out.mask).all()  # no stop token: every row runs T tokens
  # 6 rows through 2 slots: the host refilled slots (one decode loop per refill round).
  assert stats.decode_calls >= 3
  assert stats.free_pages_end == stats.num_pages  # every page came back


def test_sampled_groups_share_prefill_and_equal_sample():
  g = 3
  kw = dict(temperature=0.9, top_k=6, top_p=0.9, num_samples=g, num_slots=4, page_size=4)
  ref, out, shared = _both(**kw)
  _assert_same(ref, out)
  alone, solo = paged_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3),
                             max_new_tokens=T, share_prompts=False, return_stats=True,
                             **{k: v for k, v in kw.items()})
  _assert_same(ref, alone)
  real = sum(len(p) for p in PROMPTS)
  assert shared.prefill_tokens == real and solo.prefill_tokens == g * real  # work ÷ G
  # Copy-on-write: G − 1 copies of the partial last page per prompt whose length is not a
  # multiple of the page size (4 of the 6); none without sharing.
  partial = sum(len(p) % 4 != 0 for p in PROMPTS)
  assert shared.page_copies == (g - 1) * partial and solo.page_copies == 0
  assert shared.free_pages_end == shared.num_pages and solo.free_pages_end == solo.num_pages


def test_uneven_stop_tokens_refill_slots():
  stop = _common_stop_token()
  ref, out, stats = _both(temperature=1.0, num_samples=2, stop_tokens=(stop,), num_slots=3,
                          page_size=3)
  _assert_same(ref, out)
  lengths = np.asarray(ref.mask).sum(axis=1)
  assert lengths.min() <= 2 and lengths.max() >= 6, lengths  # very uneven
  assert np.asarray(out.truncated).sum() < len(lengths)  # some rows stopped
  assert stats.free_pages_end == stats.num_pages
  # Slot-steps: the engine runs ~Σ lengths / S steps, far fewer than N/S · T when rows stop
  # early; at least the longest row, and never more than the lockstep schedule would take.
  assert lengths.max() <= stats.decode_steps <= -(-len(lengths) // 3) * T


def test_logit_processor_sees_each_rows_own_context():
  def processor(logits, ctx):
    # Row-wise and step-dependent: ban the token the row chose first (from ctx.tokens) for the
    # rest of the row, and force the stop token at step 5 in rows whose first token is even.
    v = jnp.arange(logits.shape[-1])
    first = ctx.tokens[:, 0]
    banned = (ctx.step > 0) & (v[None] == first[:, None])
    logits = jnp.where(banned, -jnp.inf, logits)
    force = (ctx.step == 5) & (first % 2 == 0)
    return jnp.where(force[:, None] & (v[None] == 1), 1e9, logits)

  ref, out, stats = _both(temperature=1.0, num_samples=2, logit_processor=processor,
                          num_slots=3, page_size=4)
  _assert_same(ref, out)
  assert stats.free_pages_end == stats.num_pages


def test_back_pressure_with_few_pages_and_refusal_when_a_row_cannot_fit():
  # The longest row, 11 + 9 = 20 tokens, is admitted with up to 6 pages of 4 tokens (its
  # prompt's 3 prefill pages, 2 more, 1 copy-on-write page): 9 pages hold one or two rows at a
  # time however many slots are free; 5 cannot hold it at all.
  ref, out, stats = _both(temperature=0.0, stop_tokens=(), num_slots=4, page_size=4,
                          num_pages=9)
  _assert_same(ref, out)
  assert stats.peak_pages <= 9 and stats.free_pages_end == 9
  with pytest.raises(ValueError, match="num_pages"):
    paged_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3), max_new_tokens=T,
                 num_slots=4, page_size=4, num_pages=5)


def test_refuses_sliding_window_models():
  cfg = models.tiny("gemma3", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48)
  params = models.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="sliding-window"):
    paged_sample(params, PROMPTS, config=cfg, rng=jax.random.key(3), max_new_tokens=T)


@pytest.mark.parametrize("config", [
    # Gemma traits the engine's own layer loop must reproduce: post-norms, (1 + w) norms, the
    # embedding scale, attention and final logit soft-caps (global layers only: no window).
    models.tiny("gemma3", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                sliding_window=0, local_layers=(False, False), attn_logit_softcap=30.0,
                final_logit_softcap=20.0, eos_ids=(1,), pad_id=0),
    # qk-norm and 4 query heads per KV head (slow: keeps the fast file under ~80 s).
    pytest.param(models.tiny("qwen3", vocab_size=16, dim=32, num_heads=4, num_kv_heads=1,
                             mlp_dim=48, eos_ids=(1,), pad_id=0), marks=pytest.mark.slow),
], ids=["gemma3-global", "qwen3-gqa4"])
def test_other_families_equal_sample(config):
  params = models.init_params(config, jax.random.key(1))
  kw = dict(config=config, rng=jax.random.key(4), max_new_tokens=6, temperature=1.0,
            num_samples=2)
  ref = sample(params, PROMPTS[:3], **kw)
  out = paged_sample(params, PROMPTS[:3], num_slots=3, page_size=5, **kw)
  _assert_same(ref, out)
