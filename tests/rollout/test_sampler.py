"""The sampler: greedy = argmax of the full forward, sampled frequencies = softmax, exact
top-k/top-p support, per-row independence, masks and log-probs of what was sampled."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout import filter_top_k, filter_top_p, prepare_prompts, sample
from tokenrl.rollout import sampler as sampler_lib

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]


_FORWARD = jax.jit(models.forward, static_argnames="config")


def _full_forward_logits(params, prompt, completion):
  """Logits [len(completion)+1, V] predicting each completion token (and the one after)."""
  seq = jnp.asarray([list(prompt) + list(completion)])
  logits, _ = _FORWARD(params, seq, config=CONFIG)
  return np.asarray(logits[0, len(prompt) - 1:])


def test_greedy_equals_stepwise_argmax_of_full_forward():
  out = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(1), max_new_tokens=8,
               temperature=0.0, stop_tokens=())
  for row, prompt in enumerate(PROMPTS):
    completion = np.asarray(out.tokens[row])
    # Teacher-forced full forward over prompt + completion: every greedy token is the argmax
    # of the logits at the position before it.
    logits = _full_forward_logits(PARAMS, prompt, completion[:-1])
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), completion)
  assert np.all(np.asarray(out.mask) == 1)
  assert np.all(np.asarray(out.truncated))


def test_mask_covers_stop_token_and_pads_after():
  # A model whose every token is the stop token after the first step: force via processor.
  def force_eos_at_step_2(logits, ctx):
    return jnp.where((ctx.step == 2) & (jnp.arange(logits.shape[-1]) == 1), 1e9, logits)
  out = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(2), max_new_tokens=6,
               logit_processor=force_eos_at_step_2)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
  for row in range(len(PROMPTS)):
    first_stop = int(np.argmax(tokens[row] == 1))
    assert first_stop <= 2
    assert mask[row, :first_stop + 1].all() and not mask[row, first_stop + 1:].any()
    assert (tokens[row, first_stop + 1:] == CONFIG.pad_id).all()
  assert not np.asarray(out.truncated).any()
  np.testing.assert_array_equal(np.asarray(out.logprobs)[mask == 0], 0.0)


def test_logprobs_are_of_the_tempered_distribution():
  out = sample(PARAMS, PROMPTS[:1], config=CONFIG, rng=jax.random.key(3), max_new_tokens=5,
               temperature=0.7, stop_tokens=())
  completion = np.asarray(out.tokens[0])
  logits = _full_forward_logits(PARAMS, PROMPTS[0], completion[:-1]) / 0.7
  logp = jax.nn.log_softmax(logits, axis=-1)
  expected = np.take_along_axis(np.asarray(logp), completion[:, None], axis=-1)[:, 0]
  np.testing.assert_allclose(np.asarray(out.logprobs[0]), expected, atol=1e-5)
  p = np.exp(np.asarray(logp))
  np.testing.assert_allclose(np.asarray(out.entropy[0]), -(p * np.asarray(logp)).sum(-1), atol=1e-5)


def _first_token_probs(temperature=1.0):
  logits = _full_forward_logits(PARAMS, PROMPTS[0], [])[0] / temperature
  return np.asarray(jax.nn.softmax(logits))


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (4, 1.0), (0, 0.6)])
def test_sampled_frequencies_match_softmax_chi_square(top_k, top_p):
  n = 6000
  out = sample(PARAMS, [PROMPTS[0]], config=CONFIG, rng=jax.random.key(4), max_new_tokens=1,
               num_samples=n, top_k=top_k, top_p=top_p, stop_tokens=())
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CONFIG.vocab_size)
  probs = np.asarray(jax.nn.softmax(filter_top_p(filter_top_k(
      jnp.log(jnp.asarray(_first_token_probs()))[None], top_k), top_p)[0]))
  support = probs > 0
  assert counts[~support].sum() == 0  # nothing outside the kept support, ever
  expected = probs[support] * n
  chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
  dof = int(support.sum()) - 1
  # 99.9% quantile of chi-square is below dof + 3.1*sqrt(2*dof) + 10 for dof <= 15.
  assert chi2 < dof + 3.1 * np.sqrt(2 * dof) + 10, (chi2, dof)
  # Reported log-probs are those of the renormalized, filtered distribution.
  np.testing.assert_allclose(np.asarray(out.logprobs[:, 0]),
                             np.log(probs[np.asarray(out.tokens[:, 0])]), atol=1e-5)


def test_top_k_keeps_exactly_k_with_ties():
  logits = jnp.array([[1.0, 3.0, 3.0, 3.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
  kept = np.isfinite(np.asarray(filter_top_k(logits, 2)))
  assert kept.sum(axis=1).tolist() == [2, 2]
  assert kept[1].tolist() == [True, True, False, False, False]


def test_top_p_keeps_smallest_prefix_reaching_p():
  probs = jnp.array([[0.5, 0.3, 0.15, 0.05]])
  logits = jnp.log(probs)
  keep = lambda p: np.isfinite(np.asarray(filter_top_p(logits, p)))[0].tolist()
  assert keep(0.5) == [True, False, False, False]
  assert keep(0.51) == [True, True, False, False]
  assert keep(0.8) == [True, True, False, False]
  assert keep(0.81) == [True, True, True, False]
  assert keep(1.0) == [True] * 4


def test_row_samples_do_not_depend_on_other_rows():
  a = sample(PARAMS, [PROMPTS[0], PROMPTS[1]], config=CONFIG, rng=jax.random.key(5),
             max_new_tokens=6, stop_tokens=())
  b = sample(PARAMS, [PROMPTS[0], [11, 12, 13]], config=CONFIG, rng=jax.random.key(5),
             max_new_tokens=6, stop_tokens=())
  np.testing.assert_array_equal(np.asarray(a.tokens[0]), np.asarray(b.tokens[0]))
  np.testing.assert_allclose(np.asarray(a.logprobs[0]), np.asarray(b.logprobs[0]), atol=1e-6)


def test_groups_are_contiguous_and_share_the_prompt():
  out = sample(PARAMS, PROMPTS[:2], config=CONFIG, rng=jax.random.key(6), max_new_tokens=4,
               num_samples=3, stop_tokens=())
  pt = np.asarray(out.prompt_tokens)
  assert pt.shape[0] == 6
  for g in range(3):
    np.testing.assert_array_equal(pt[g], pt[0])
    np.testing.assert_array_equal(pt[3 + g], pt[3])


def test_prompt_lengths_share_a_bucket_compile(caplog):
  # Count compilations from jax's own log, not PjitFunction._cache_size(): that C++ counter is
  # not per function in jax 0.10 and reads negative after other tests have run.
  sampler_lib._generate.clear_cache()
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    for prompt in ([5], [5, 6, 7], [5] * 9):
      sample(PARAMS, [prompt], config=CONFIG, rng=jax.random.key(0), max_new_tokens=2)
  compiles = [r for r in caplog.records if "Compiling jit(_generate)" in r.getMessage()]
  assert len(compiles) == 1  # lengths 1..16 share bucket 16


def test_array_prompts_padding_only_from_the_mask():
  arr = np.array([[0, 0, 5, 6], [4, 5, 6, 7]])
  # With a mask: its zeros are the padding (here the leading zeros of row 0).
  tokens, mask = prepare_prompts(arr, pad_id=0, prompt_mask=[[0, 0, 1, 1], [1, 1, 1, 1]])
  assert tokens.shape == (2, 16)
  assert mask.sum(1).tolist() == [2, 4]
  assert tokens[0, -2:].tolist() == [5, 6]
  # Without a mask every slot is real: leading pad-id tokens are tokens, not padding.
  tokens, mask = prepare_prompts(arr, pad_id=0)
  assert mask.sum(1).tolist() == [4, 4]
  assert tokens[0, -4:].tolist() == [0, 0, 5, 6]
  # Bool masks and a pad id that is not 0 (it only fills the padded slots).
  tokens, mask = prepare_prompts(arr, pad_id=9, prompt_mask=np.array([[0, 1, 1, 1]] * 2, bool))
  assert tokens[0, -4:].tolist() == [9, 0, 5, 6] and mask[0, -4:].tolist() == [0, 1, 1, 1]


def test_prompt_starting_with_the_pad_id_samples_like_the_list_form():
  # Real prompts whose first token is the pad id (0): a config.json without pad_token_id.
  prompts = [[0, 6, 7], [0, 0, 9, 3], [4, 0]]
  width = 6
  arr = np.full((3, width), CONFIG.pad_id, np.int32)
  pmask = np.zeros((3, width), np.int32)
  for i, p in enumerate(prompts):
    arr[i, width - len(p):] = p
    pmask[i, width - len(p):] = 1
  kw = dict(config=CONFIG, rng=jax.random.key(7), max_new_tokens=5, temperature=1.0,
            stop_tokens=())
  ref = sample(PARAMS, prompts, **kw)
  got = sample(PARAMS, arr, prompt_mask=pmask, **kw)
  np.testing.assert_array_equal(np.asarray(got.prompt_tokens), np.asarray(ref.prompt_tokens))
  np.testing.assert_array_equal(np.asarray(got.prompt_mask), np.asarray(ref.prompt_mask))
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(ref.logprobs), atol=1e-6)
  # Greedy: the tokens are the argmax of the full forward over the whole prompt, pad id included.
  greedy = sample(PARAMS, arr, prompt_mask=pmask, config=CONFIG, rng=jax.random.key(0),
                  max_new_tokens=4, temperature=0.0, stop_tokens=())
  for row, prompt in enumerate(prompts):
    completion = np.asarray(greedy.tokens[row])
    logits = _full_forward_logits(PARAMS, prompt, completion[:-1])
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), completion)


def test_prompt_mask_errors_are_named():
  arr = np.array([[0, 5, 6], [4, 5, 6]])
  kw = dict(config=CONFIG, rng=jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match=r"prompt_mask has shape \(2, 2\), prompts \(2, 3\)"):
    sample(PARAMS, arr, prompt_mask=np.ones((2, 2), np.int32), **kw)
  with pytest.raises(ValueError, match=r"prompt_mask rows \[1\] are not left-padded"):
    sample(PARAMS, arr, prompt_mask=[[0, 1, 1], [1, 1, 0]], **kw)
  with pytest.raises(ValueError, match=r"prompts \[0\] are empty \(all padding\)"):
    sample(PARAMS, arr, prompt_mask=[[0, 0, 0], [1, 1, 1]], **kw)
  with pytest.raises(ValueError, match="prompt_mask must hold 0/1"):
    sample(PARAMS, arr, prompt_mask=[[0, 2, 1], [1, 1, 1]], **kw)
  with pytest.raises(ValueError, match="a list of id lists already gives"):
    sample(PARAMS, [[5, 6]], prompt_mask=[[1, 1]], **kw)


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sample(PARAMS, [[3, 99]], config=CONFIG, rng=jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match="max_seq_len"):
    sample(PARAMS, [[3]], config=CONFIG, rng=jax.random.key(0), max_new_tokens=600)
  with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
    sample(PARAMS, [[3], []], config=CONFIG, rng=jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match="top_p"):
    sample(PARAMS, [[3]], config=CONFIG, rng=jax.random.key(0), max_new_tokens=2, top_p=0.0)


@dataclasses.dataclass(frozen=True)
class _BiasFromState:
  """Adds the traced bias vector DecodeContext.aux [V] to the logits."""

  def __call__(self, logits, context):
    return logits + context.aux[None, :]


def test_processor_state_is_traced_and_reaches_the_processor():
  proc = _BiasFromState()
  before = sampler_lib._generate._cache_size()
  outs = []
  for favourite in (3, 11):
    bias = np.zeros(CONFIG.vocab_size, np.float32)
    bias[favourite] = 1e4  # the greedy choice becomes `favourite` at every step
    out = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(0), max_new_tokens=3,
                 temperature=0.0, stop_tokens=(), logit_processor=proc, processor_state=bias)
    outs.append(np.asarray(out.tokens))
  np.testing.assert_array_equal(outs[0], 3)
  np.testing.assert_array_equal(outs[1], 11)
  # A new state value reused the compiled decode loop: one compile for both calls.
  assert sampler_lib._generate._cache_size() == before + 1
