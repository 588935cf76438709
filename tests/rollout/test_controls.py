"""Test-time logit controls: CyclicReflex, budget guidance, CNTP's trial count (spec §9, §10, §14)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from tokenrl import models
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.models import budget_head as bh
from tokenrl.rollout import sample
from tokenrl.rollout.budget_guidance import BudgetGuidance, guidance_steps, guidance_weights
from tokenrl.rollout.controls import (CyclicReflex, cntp_num_trials, compose,
                                      compose_with_states, token_ids_of, triangle_bias)
from tokenrl.rollout.sampler import DecodeContext

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8]]
NEWLINE, THINK_END, REFLECT = 4, 9, 7


def _numpy_triangle(t, a, period, shift=0.0):
  """The reference's piecewise formula (CyclicReflex Base/evaluate.py), float64."""
  phase = np.mod(np.asarray(t, np.float64) + shift * period, period) / period
  return np.where(phase <= 0.25, 4 * a * phase,
                  np.where(phase <= 0.75, a - 4 * a * (phase - 0.25), -a + 4 * a * (phase - 0.75)))


def _ctx(tokens, step, temperature=1.0, hidden=None, aux=None):
  tokens = jnp.asarray(tokens, jnp.int32)
  return DecodeContext(jnp.int32(step), tokens, jnp.zeros(tokens.shape[0], bool), aux,
                       jnp.float32(temperature), hidden)


def test_triangle_bias_matches_the_spec_table():
  t = np.arange(0, 1201, 150)
  np.testing.assert_allclose(np.asarray(triangle_bias(t, 5.0, 1200)),
                             [0, 2.5, 5, 2.5, 0, -2.5, -5, -2.5, 0], atol=1e-5)


def test_jitted_triangle_equals_numpy_on_random_steps():
  t = np.random.default_rng(0).integers(0, 5000, 500)
  for shift in (0.0, 0.3):
    got = jax.jit(lambda t: triangle_bias(t, 3.0, 100, shift))(t)
    np.testing.assert_allclose(np.asarray(got), _numpy_triangle(t, 3.0, 100, shift), atol=1e-4)


def test_cyclic_reflex_adds_bias_over_temperature_while_thinking():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16)), jnp.float32)
  proc = CyclicReflex(reflection_ids=(REFLECT, 3), think_end_id=THINK_END, amplitude=5.0,
                      period=1200)
  # Row 0 still thinking; row 1 wrote the delimiter at column 1 (< step 300).
  tokens = np.full((2, 400), 0)
  tokens[1, 1] = THINK_END
  out = np.asarray(proc(logits, _ctx(tokens, 300, temperature=2.0)))
  want = np.asarray(logits).copy()
  want[0, [REFLECT, 3]] += 5.0 / 2.0  # b(300) = A = 5 on raw logits = 2.5 on tempered ones
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


def test_cyclic_reflex_windows_limit_where_it_applies():
  logits = jnp.zeros((1, 16))
  proc = CyclicReflex(reflection_ids=(REFLECT,), amplitude=4.0, period=8, windows=((0, 3),))
  assert float(proc(logits, _ctx(np.zeros((1, 10)), 2))[0, REFLECT]) == 4.0  # φ=.25: +A
  assert float(proc(logits, _ctx(np.zeros((1, 10)), 4))[0, REFLECT]) == 0.0  # outside


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cyclic_reflex_amplitude_zero_is_plain_sampling(temperature):
  kw = dict(config=CONFIG, rng=jax.random.key(3), max_new_tokens=12, temperature=temperature,
            num_samples=2)
  plain = sample(PARAMS, PROMPTS, **kw)
  proc = CyclicReflex(reflection_ids=(REFLECT,), think_end_id=THINK_END, amplitude=0.0)
  ctrl = sample(PARAMS, PROMPTS, logit_processor=proc, **kw)
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(ctrl.tokens))
  # The same law; an added 0 may change XLA's fusion of the softmax by an ulp.
  np.testing.assert_allclose(np.asarray(plain.logprobs), np.asarray(ctrl.logprobs), atol=2e-6)


def test_cyclic_reflex_raises_reflection_and_logprobs_are_of_the_biased_law():
  proc = CyclicReflex(reflection_ids=(REFLECT,), amplitude=6.0, period=8, shift=0.25)
  kw = dict(config=CONFIG, rng=jax.random.key(4), max_new_tokens=4, temperature=1.0,
            num_samples=64, stop_tokens=())
  plain, ctrl = sample(PARAMS, PROMPTS, **kw), sample(PARAMS, PROMPTS, logit_processor=proc, **kw)
  # Shift 1/4 period: b = +6 at t = 0 (the peak), so the first token is mostly REFLECT.
  first_plain = np.mean(np.asarray(plain.tokens)[:, 0] == REFLECT)
  first_ctrl = np.mean(np.asarray(ctrl.tokens)[:, 0] == REFLECT)
  assert first_ctrl > max(0.5, 3 * first_plain)
  # Returned log-prob of the first token = log softmax(logits + bias) at that token.
  logits = models.forward(PARAMS, jnp.asarray([PROMPTS[0]]), config=CONFIG)[0][:, -1]
  logp = jax.nn.log_softmax(logits.at[:, REFLECT].add(6.0))[0]
  rows = np.asarray(ctrl.tokens)[:64, 0]
  np.testing.assert_allclose(np.asarray(ctrl.logprobs)[:64, 0], np.asarray(logp)[rows], atol=1e-5)


def test_compose_applies_in_order_and_drops_none():
  a = CyclicReflex(reflection_ids=(2,), amplitude=1.0, period=4)
  assert compose(None, a) is a and compose() is None
  both = compose(a, CyclicReflex(reflection_ids=(2,), amplitude=2.0, period=4))
  out = both(jnp.zeros((1, 5)), _ctx(np.zeros((1, 3)), 1))  # φ = .25: +1 then +2
  assert float(out[0, 2]) == 3.0


def test_composed_processors_each_read_their_own_state():
  class AddState:
    def __call__(self, logits, ctx):
      return logits + ctx.aux
  a, b = AddState(), CyclicReflex(reflection_ids=(2,), amplitude=1.0, period=4)
  proc, state = compose_with_states((a, jnp.float32(5.0)), (None, 1), (b, None))
  assert state[1] is None and compose_with_states((None, 3)) == (None, None)
  out = proc(jnp.zeros((1, 5)), DecodeContext(jnp.int32(1), jnp.zeros((1, 3), jnp.int32),
                                              jnp.zeros(1, bool), state, jnp.float32(1.0)))
  np.testing.assert_array_equal(np.asarray(out), [[5, 5, 6, 5, 5]])


def test_token_ids_of_names_a_multi_token_string():
  tok = CharTokenizer()
  assert token_ids_of(tok, ["?", "#", "?"], what="x") == (tok.encode("?", add_special_tokens=False)[0],
                                                            tok.encode("#", add_special_tokens=False)[0])
  with pytest.raises(ValueError, match="'wait' is 4 tokens"):
    token_ids_of(tok, ["wait"], what="sampler.control.reflection")


def test_cntp_trial_count_table():
  h = [0, 0.1, 0.5, 0.755, 1.0, 1.5, 3.0]
  np.testing.assert_array_equal(np.asarray(cntp_num_trials(np.asarray(h))), [1, 1, 3, 5, 6, 10, 10])


# --- budget guidance -------------------------------------------------------------------------

def test_gammainc_is_the_gamma_cdf():
  alpha, rate, b = 20.0, 4.0, 1000.0
  got = float(jax.scipy.special.gammainc(alpha, rate * np.log(b + 1)))
  assert abs(got - scipy.stats.gamma(a=alpha, scale=1 / rate).cdf(np.log(b + 1))) < 1e-5
  assert abs(got - 0.9453) < 1e-3  # the spec's value


def _head_with(alpha, rate, dim=CONFIG.dim):
  """A head whose laws are (alpha[v], rate[v]) whatever the hidden state."""
  inv = lambda y: np.log(np.expm1(np.asarray(y, np.float64)))
  head = bh.init_budget_head(dim, len(alpha))
  head["b_alpha"] = jnp.asarray(inv(alpha), jnp.float32)
  head["b_rate"] = jnp.asarray(inv(rate), jnp.float32)
  return head


def test_guidance_weights_mask_and_fallback():
  alpha = jnp.asarray([[20.0, 20.0, 0.5, 20.0]])
  rate = jnp.asarray([[12.0, 5.0, 12.0, 12.0]])
  logits = jnp.asarray([[0.0, 3.0, 1.0, 2.0]])
  g = np.asarray(guidance_weights(alpha, rate, jnp.asarray([30.0]), logits))
  # λ < 10 (token 1) and α <= 1 (token 2) are masked; tokens 0 and 3 share a law.
  want = scipy.stats.gamma(a=20, scale=1 / 12).cdf(np.log(31.0))
  np.testing.assert_allclose(g, [[want, 0, 0, want]], rtol=1e-4)
  # Mode rule: exp((α−1)/λ) − 1 < 0.9 masks (α = 2, λ = 10: e^0.1 − 1 = 0.105).
  none = guidance_weights(jnp.full((1, 4), 2.0), jnp.full((1, 4), 10.0), jnp.asarray([30.0]), logits)
  np.testing.assert_array_equal(np.asarray(none), [[0, 1, 0, 0]])  # the argmax of the logits


def test_guidance_steps_fire_after_newlines_and_stop_after_the_thought():
  tokens = np.array([[5, NEWLINE, 6, 6, THINK_END, NEWLINE, 3],
                     [NEWLINE, 5, NEWLINE, 6, 6, 6, 6]])
  fired = [np.asarray(guidance_steps(jnp.asarray(tokens), jnp.int32(s), (NEWLINE,), THINK_END))
           for s in range(7)]
  np.testing.assert_array_equal(np.stack(fired, 1),
                                [[1, 0, 1, 0, 0, 0, 0],   # never after THINK_END (col 4)
                                 [1, 1, 0, 1, 0, 0, 0]])


def test_equal_laws_or_an_infinite_budget_leave_the_logits_unchanged():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 16)), jnp.float32)
  proc = BudgetGuidance(newline_ids=(NEWLINE,), think_end_id=THINK_END)
  hidden = jnp.asarray(np.random.default_rng(3).normal(size=(3, CONFIG.dim)), jnp.float32)
  head = bh.init_budget_head(CONFIG.dim, 16)  # untrained: one law for every token
  out = proc(logits, _ctx(np.zeros((3, 5)), 0, hidden=hidden, aux={"head": head, "budget": 20.0}))
  np.testing.assert_allclose(jax.nn.log_softmax(out), jax.nn.log_softmax(logits), atol=1e-6)
  rng = np.random.default_rng(4)
  head = _head_with(rng.uniform(15, 40, 16), rng.uniform(10, 20, 16))
  out = proc(logits, _ctx(np.zeros((3, 5)), 0, hidden=hidden,
                          aux={"head": head, "budget": np.float32(np.inf)}))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(logits))


def test_guidance_multiplies_the_distribution_by_the_cdf():
  rng = np.random.default_rng(5)
  alpha, rate = rng.uniform(15, 40, 16), rng.uniform(10, 20, 16)
  head = _head_with(alpha, rate)
  logits = jnp.asarray(rng.normal(size=(1, 16)), jnp.float32)
  proc = BudgetGuidance(newline_ids=(NEWLINE,))
  step, budget = 3, 10.0
  tokens = np.array([[5, 6, NEWLINE, 0, 0]])
  out = proc(logits, _ctx(tokens, step, hidden=jnp.zeros((1, CONFIG.dim)),
                          aux={"head": head, "budget": budget}))
  b = budget - step  # 7 tokens left
  g = scipy.stats.gamma(a=alpha, scale=1 / rate).cdf(np.log(b + 1))
  p = scipy.special.softmax(np.asarray(logits[0], np.float64)) * g
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(out)[0]), p / p.sum(), rtol=2e-4)


def test_budget_guidance_with_an_infinite_budget_is_plain_sampling():
  kw = dict(config=CONFIG, rng=jax.random.key(6), max_new_tokens=10, temperature=0.9,
            num_samples=2)
  plain = sample(PARAMS, PROMPTS, **kw)
  rng = np.random.default_rng(7)
  head = bh.init_budget_head(CONFIG.dim, 16)
  head["w_alpha"] = jnp.asarray(rng.normal(size=head["w_alpha"].shape), jnp.float32)
  guided = sample(PARAMS, PROMPTS, logit_processor=BudgetGuidance(newline_ids=(NEWLINE,)),
                  processor_state={"head": head, "budget": np.float32(np.inf)}, **kw)
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(guided.tokens))
  np.testing.assert_allclose(np.asarray(plain.logprobs), np.asarray(guided.logprobs), atol=2e-6)


def test_a_tight_budget_steers_toward_tokens_that_end_soon():
  # Token 8 promises a short remaining thought (z ~ 0.69, L ≈ 1), every other token a long one
  # (z ~ 4.6, L ≈ 100): with 3 tokens left, guidance draws token 8 at every guidance step.
  alpha, rate = np.full(16, 460.0), np.full(16, 100.0)
  alpha[8], rate[8] = 69.0, 100.0
  out = sample(PARAMS, PROMPTS, config=CONFIG, rng=jax.random.key(8), max_new_tokens=1,
               temperature=1.0, num_samples=16,
               logit_processor=BudgetGuidance(newline_ids=(NEWLINE,)),
               processor_state={"head": _head_with(alpha, rate), "budget": np.float32(3.0)})
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], 8)
  np.testing.assert_allclose(np.asarray(out.logprobs)[:, 0], 0.0, atol=1e-5)


def test_remaining_think_lengths_count_down_to_one():
  tokens = np.array([[5, 6, 7, THINK_END, 3, 1],
                     [5, 6, 7, 8, 3, 1],      # never ends its thought: no labels
                     [THINK_END, 3, 1, 0, 0, 0]])
  mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(bh.remaining_think_lengths(tokens, mask, THINK_END),
                                [[3, 2, 1, 0, 0, 0], [0] * 6, [0] * 6])


def test_head_recovers_a_context_free_gamma_law():
  # z ~ Gamma(α0=20, λ0=4) independent of the context (spec §9e.6); labels L = e^z − 1 rounded.
  a0, r0, n = 20.0, 4.0, 4000
  rng = np.random.default_rng(9)
  z = rng.gamma(a0, 1 / r0, n)
  remaining = jnp.asarray(np.maximum(np.round(np.expm1(z)), 1).astype(np.int32)[:, None])
  hidden = jnp.asarray(rng.normal(size=(n, 1, 8)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 5, (n, 1)), jnp.int32)
  loss_grad = jax.jit(jax.value_and_grad(bh.budget_head_loss))
  # The loss is the Gamma NLL of z = log(L + 1): its gradient vanishes at scipy's MLE.
  shape, _, scale = scipy.stats.gamma.fit(np.log(np.asarray(remaining)[:, 0] + 1.0), floc=0)
  at_mle = _head_with(np.full(5, shape), np.full(5, 1 / scale), dim=8)
  _, grads = loss_grad(at_mle, hidden, tokens, remaining)
  for name in ("b_alpha", "b_rate"):
    np.testing.assert_allclose(np.asarray(grads[name]).sum(), 0.0, atol=2e-3)
  # And Adam from the untrained head reaches the law (the α/λ ridge is slow: 3000 steps).
  head, opt = bh.init_budget_head(8, 5), optax.adam(0.1)

  @jax.jit
  def steps(head, state):
    def one(carry, _):
      head, state = carry
      _, grads = loss_grad(head, hidden, tokens, remaining)
      updates, state = opt.update(grads, state)
      return (optax.apply_updates(head, updates), state), None
    return jax.lax.scan(one, (head, state), None, length=3000)[0]

  head, _ = steps(head, opt.init(head))
  alpha, rate = bh.gamma_params(head, jnp.zeros((1, 8)))
  np.testing.assert_allclose(np.asarray(alpha)[0], a0, rtol=0.1)
  np.testing.assert_allclose(np.asarray(rate)[0], r0, rtol=0.1)
