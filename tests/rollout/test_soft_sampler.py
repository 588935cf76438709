"""The soft-token sampler (spec §13): infer-hard = the ordinary greedy sampler, fuzzy σ = 0 =
hard greedy, and the training-side teacher-forced log-probs on the stored noisy inputs equal the
rollout-time log-probs at the same params (the consistency the REINFORCE gradient relies on)."""

import jax
import numpy as np
import pytest

from tokenrl import models
from tokenrl.methods.base import LossContext
from tokenrl.methods.soft_tokens import soft_batch, teacher_forced_logprobs
from tokenrl.rollout import sample
from tokenrl.rollout.soft_sampler import soft_sample

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9]]
TC, T = 3, 4


def test_infer_hard_equals_the_ordinary_greedy_sampler():
  hard = soft_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(1), cot_steps=TC,
                     max_new_tokens=T, temperature=0.0, stop_tokens=(), hard_cot=True)
  ref = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(2), max_new_tokens=TC + T,
               temperature=0.0, stop_tokens=())
  got = np.concatenate([np.asarray(hard.cot_tokens), np.asarray(hard.tokens)], axis=1)
  np.testing.assert_array_equal(got, np.asarray(ref.tokens))
  # No noise on the hard path: the CoT inputs are the token embeddings.
  np.testing.assert_array_equal(hard.cot_inputs, np.asarray(PARAMS["embed"])[got[:, :TC]])
  # Fuzzy mixture (τ → 0) without noise is the same greedy decode.
  fuzzy = soft_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(3), cot_steps=TC,
                      max_new_tokens=T, mixture_temperature=1e-6, sigma=0.0, temperature=0.0,
                      stop_tokens=())
  np.testing.assert_array_equal(np.asarray(fuzzy.cot_tokens), got[:, :TC])
  np.testing.assert_array_equal(np.asarray(fuzzy.tokens), got[:, TC:])
  np.testing.assert_allclose(fuzzy.cot_inputs, hard.cot_inputs, atol=1e-6)


def test_teacher_forced_logprobs_equal_rollout_logprobs():
  sigma = 0.3
  out = soft_sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(4), cot_steps=TC,
                    max_new_tokens=T, mixture_temperature=0.5, sigma=sigma, temperature=1.0,
                    num_samples=2)
  b = soft_batch(out)
  n = b["tokens"].shape[0]
  assert n == 4 and b["cot_inputs"].shape == (n, TC, CONFIG.dim)
  lctx = LossContext(model=CONFIG, prompt_len=np.asarray(out.prompt_tokens).shape[1],
                     temperature=1.0, remat=False, loss_options={}, section=None)
  fn = jax.jit(lambda *a: teacher_forced_logprobs(*a, lctx, mixture_temperature=0.5))
  cot_lp, logp, _ = fn(PARAMS, b["tokens"], b["segment_ids"], b["cot_inputs"],
                       np.full((n,), sigma, np.float32))
  np.testing.assert_allclose(cot_lp, out.cot_logp, atol=2e-3, rtol=1e-5)
  m = b["mask"] == 1
  assert m[:, :TC].sum() == 0 and m[:, TC:].sum() > 0
  np.testing.assert_allclose(np.asarray(logp)[m], b["sampler_logp"][m], atol=1e-4)
  # The noise is really there: h̃ − μ has norm ≈ σ·sqrt(D) (ε ~ N(0, I_D)).
  d = CONFIG.dim
  sq = -2 * sigma ** 2 * (np.asarray(out.cot_logp) + 0.5 * d * np.log(2 * np.pi * sigma ** 2))
  assert 0.5 < np.sqrt(sq).mean() / (sigma * np.sqrt(d)) < 1.5


def test_rows_are_reproducible_and_noise_depends_on_the_key():
  kw = dict(config=CONFIG, cot_steps=TC, max_new_tokens=T, sigma=0.3)
  a = soft_sample(PARAMS, PROMPTS, rng=jax.random.key(5), **kw)
  b = soft_sample(PARAMS, PROMPTS, rng=jax.random.key(5), **kw)
  c = soft_sample(PARAMS, PROMPTS, rng=jax.random.key(6), **kw)
  np.testing.assert_array_equal(a.cot_inputs, b.cot_inputs)
  assert not np.allclose(a.cot_inputs, c.cot_inputs)


def test_array_prompts_with_mask_equal_the_list_form():
  # The real first token is the pad id (0); the mask, not the value, says what is padding.
  prompts = [[0, 6, 7], [0, 9]]
  arr = np.array([[0, 6, 7], [0, 0, 9]])
  kw = dict(config=CONFIG, rng=jax.random.key(5), cot_steps=TC, max_new_tokens=T, sigma=0.3,
            stop_tokens=())
  ref = soft_sample(PARAMS, prompts, **kw)
  got = soft_sample(PARAMS, arr, prompt_mask=[[1, 1, 1], [0, 1, 1]], **kw)
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(got.cot_inputs), np.asarray(ref.cot_inputs), atol=1e-6)
  with pytest.raises(ValueError, match=r"prompt_mask rows \[0\] are not left-padded"):
    soft_sample(PARAMS, arr, prompt_mask=[[1, 0, 1], [0, 1, 1]], **kw)


def test_bad_inputs():
  kw = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=T)
  with pytest.raises(ValueError, match="cot_steps"):
    soft_sample(PARAMS, PROMPTS, cot_steps=-1, **kw)
  with pytest.raises(ValueError, match="sigma"):
    soft_sample(PARAMS, PROMPTS, cot_steps=1, sigma=-0.1, **kw)
  with pytest.raises(ValueError, match="mixture_temperature"):
    soft_sample(PARAMS, PROMPTS, cot_steps=1, mixture_temperature=0.0, **kw)
  with pytest.raises(ValueError, match="max_seq_len"):
    soft_sample(PARAMS, PROMPTS, cot_steps=600, **kw)
