"""Guide-GRPO (spec §7): γ quantile and shaped ratios, group logic, reduction to GRPO, and the
hint re-roll glue on a fake step context (no model)."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.prompts import left_pad
from tokenrl.methods import METHODS
from tokenrl.methods.base import StepContext, default_shape
from tokenrl.objectives import group_relative_advantages, policy_loss
from tokenrl.methods.config import rl_config
from tokenrl.objectives.guide import (failing_groups, guide_policy_loss, masked_quantile,
                                      off_policy_gamma, shape_ratio)
from tokenrl.types import Rollout

TOK = CharTokenizer()


def test_spec_gamma_and_shaped_ratios():
  ratio = jnp.array([[0.5, 1.0, 2.0]])
  mask = jnp.ones((1, 3))
  g = off_policy_gamma(ratio, mask, strategy="percentile", gamma_value=0.9)
  np.testing.assert_allclose(g, 1.8, atol=1e-6)                     # 1 + 0.8·(2 − 1)
  np.testing.assert_allclose(shape_ratio(ratio, g), [[0.2174, 0.3571, 0.5263]], atol=1e-4)
  np.testing.assert_allclose(shape_ratio(ratio, 2.0, "power"), [[0.25, 1.0, 4.0]], atol=1e-6)
  assert float(off_policy_gamma(ratio, mask, strategy="constant", gamma_value=3.0)) == 3.0


def test_spec_off_policy_loss_is_minus_shaped_ratio():
  logp = jnp.log(jnp.array([[0.5, 1.0, 2.0]]))                      # behaviour logp 0 -> ρ
  zeros = jnp.zeros((1, 3))
  loss, m = guide_policy_loss(logp, zeros, zeros, jnp.ones(1), jnp.ones((1, 3)), jnp.ones(1))
  np.testing.assert_allclose(loss, -(0.2174 + 0.3571 + 0.5263) / 3, atol=1e-4)
  np.testing.assert_allclose(m["guide_gamma"], 1.8, atol=1e-6)
  np.testing.assert_allclose(m["offpolicy_ratio_mean"], 3.5 / 3, atol=1e-6)
  # ∇ρ̃ w.r.t. logp = γ ρ / (ρ + γ)² (per token, divided by the 3 tokens of token-mean).
  grad = jax.grad(lambda lp: guide_policy_loss(lp, zeros, zeros, jnp.ones(1), jnp.ones((1, 3)),
                                               jnp.ones(1))[0])(logp)
  r = np.array([0.5, 1.0, 2.0])
  np.testing.assert_allclose(grad[0], -1.8 * r / (r + 1.8) ** 2 / 3, atol=1e-5)


def test_spec_group_logic():
  assert failing_groups(jnp.array([0.0, 0, 0, 0, 1, 0, 1, 0]), 4).tolist() == [True, False]
  a = group_relative_advantages(jnp.array([1.0, 0, 1, 0]), 4, epsilon=0.0)
  np.testing.assert_allclose(a, [0.866, -0.866, 0.866, -0.866], atol=1e-3)


def test_masked_quantile_matches_numpy_and_empty_fill():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5))
  mask = rng.integers(0, 2, size=(3, 5))
  for q in (0.0, 0.37, 0.9, 1.0):
    np.testing.assert_allclose(masked_quantile(jnp.asarray(x), jnp.asarray(mask), q),
                               np.quantile(x[mask > 0], q), atol=1e-6)
  assert float(masked_quantile(jnp.asarray(x), jnp.zeros((3, 5)), 0.9, fill=7.0)) == 7.0


def _batch(seed=0, n=4, t=3):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return f(n, t) - 1.0, f(n, t) - 1.0, f(n, t) - 1.0, f(n), jnp.asarray(rng.integers(0, 2, (n, t)))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_no_off_policy_rows_equals_grpo_loss(mode):
  logp, old, behav, adv, mask = _batch()
  opts = dict(loss_agg_mode=mode, epsilon=0.2, epsilon_high=0.28)
  f_guide = lambda lp: guide_policy_loss(lp, old, behav, adv, mask, jnp.zeros(4), **opts)[0]
  f_grpo = lambda lp: policy_loss(lp, old, adv, mask, **opts)[0]
  np.testing.assert_allclose(f_guide(logp), f_grpo(logp), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f_guide)(logp), jax.grad(f_grpo)(logp), atol=1e-7)


def test_plain_is_flag_uses_hinted_behaviour_in_ppo_clip():
  logp, old, behav, adv, mask = _batch(1)
  off = jnp.array([0.0, 1.0, 0.0, 1.0])
  got = guide_policy_loss(logp, old, behav, adv, mask, off, off_policy_shaping=False)[0]
  want = policy_loss(logp, jnp.where(off[:, None] > 0, behav, old), adv, mask,
                     loss_agg_mode="token-mean")[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_micro_batch_gamma_depends_on_split_batch_gamma_does_not():
  logp = jnp.log(jnp.array([[0.5, 1.0], [2.0, 4.0]]))
  z, ones, adv = jnp.zeros((2, 2)), jnp.ones((2, 2)), jnp.ones(2)
  denom = 4.0

  def loss(rows, gamma):
    return guide_policy_loss(logp[rows], z[rows], z[rows], adv[rows], ones[rows], jnp.ones(2)[rows],
                             gamma=gamma, global_denominator=denom)[0]

  whole = loss(slice(None), None)
  split = loss(slice(0, 1), None) + loss(slice(1, 2), None)
  assert abs(float(whole - split)) > 1e-3                           # per-micro-batch quantile
  g = off_policy_gamma(jnp.exp(logp), ones)
  np.testing.assert_allclose(loss(slice(0, 1), g) + loss(slice(1, 2), g), loss(slice(None), g),
                             rtol=1e-6)
  np.testing.assert_allclose(loss(slice(None), g), whole, rtol=1e-6)


def test_bad_inputs():
  logp, old, behav, adv, mask = _batch()
  with pytest.raises(ValueError, match="off_policy"):
    guide_policy_loss(logp, old, behav, adv, mask, jnp.zeros(3))
  with pytest.raises(ValueError, match="behav_logp"):
    guide_policy_loss(logp, old, behav[:, :2], adv, mask, jnp.zeros(4))
  with pytest.raises(ValueError, match="gamma_strategy"):
    guide_policy_loss(logp, old, behav, adv, mask, jnp.zeros(4), gamma_strategy="median")
  with pytest.raises(ValueError, match="correct"):
    failing_groups(jnp.zeros((2, 2)), 2)
  with pytest.raises(ValueError, match="q"):
    masked_quantile(logp, mask, 1.5)


# ---- the host glue on a fake step context --------------------------------------------------


class FakePolicy:
  """Answers correctly iff the prompt holds 'hint' or is in `solved`; records the calls.

  Completion = answer + <eos> (right) or '0' + <eos> (wrong), padded to T. Log-prob of each
  completion token = −0.1·(prompt length) so hinted and plain contexts differ.
  """

  def __init__(self, examples, solved, T=4):
    self.examples, self.solved, self.T = examples, set(solved), T
    self.sampled = []

  def sample(self, prompts, *, num_samples=4, max_new_tokens=None, temperature=None,
             logit_processor=None, rng=None, stop_tokens=None):
    del logit_processor, rng, stop_tokens, temperature
    T = max_new_tokens or self.T
    texts = [TOK.decode(p, skip_special_tokens=True) for p in prompts]
    self.sampled.append(texts)
    answers = {ex["prompt"]: ex["answer"] for ex in self.examples}
    rows, masks = [], []
    for text in texts:
      key = text.split("\n")[-1]
      good = "hint" in text or key in self.solved
      ids = TOK.encode(answers.get(key, "0") if good else "0", add_special_tokens=False)[:T - 1]
      ids = ids + [2]
      for _ in range(num_samples):
        rows.append(ids + [0] * (T - len(ids)))
        masks.append([1] * len(ids) + [0] * (T - len(ids)))
    ptok, _ = left_pad(prompts, 0)
    ptok = np.repeat(ptok, num_samples, axis=0)
    n = len(rows)
    return Rollout(tokens=np.asarray(rows, np.int32), mask=np.asarray(masks, np.int32),
                   logprobs=np.full((n, T), -0.5, np.float32), entropy=np.ones((n, T), np.float32),
                   prompt_tokens=ptok, prompt_mask=(ptok != 0).astype(np.int32),
                   truncated=np.zeros(n, bool))

  def score(self, texts, examples):
    ok = np.asarray([float(t == ex["answer"]) for t, ex in zip(texts, examples)], np.float32)
    return types.SimpleNamespace(rewards=ok, per_fn={"task": ok},
                                 stats={"reward_errors": 0, "reward_timeouts": 0})

  def logprobs(self, tokens, segment_ids, prompt_len, params=None):
    del params
    plen = np.asarray(segment_ids)[:, :prompt_len].sum(axis=1, keepdims=True)
    t = np.asarray(tokens).shape[1] - prompt_len
    return np.broadcast_to(-0.1 * plen, (len(plen), t)).astype(np.float32), None


EXAMPLES = [{"prompt": "12+7=", "answer": "19", "task": "arith", "op": "add", "operands": [12, 7]},
            {"prompt": "3+4=", "answer": "7", "task": "arith", "op": "add", "operands": [3, 4]}]


def fake_ctx(name, policy, *, G=4, T=4, overrides=None, step=0):
  rl = rl_config()
  rl.objective = name
  for k, v in (overrides or {}).items():
    rl[name][k] = v
  from tokenrl.methods.config import resolve_objective  # pylint: disable=g-import-not-at-top
  rl.num_generations = G
  opts = resolve_objective(rl)
  cfg = ml_collections.ConfigDict({"data": {"chat_template": False}})
  run = types.SimpleNamespace(tokenizer=TOK, model=types.SimpleNamespace(max_seq_len=64, pad_id=0))
  return StepContext(cfg=cfg, opts=opts, section=rl[name], run=run, params=None, step=step,
                     rng=jax.random.key(0), examples=list(policy.examples),
                     prompt_ids=[TOK.encode(ex["prompt"]) for ex in policy.examples], G=G, T=T,
                     state={}, sample=policy.sample, score=policy.score, logprobs=policy.logprobs,
                     hidden=None)


def test_guide_rollout_without_failing_groups_is_grpo():
  policy = FakePolicy(EXAMPLES, solved=["12+7=", "3+4="])
  ctx = fake_ctx("guide_grpo", policy)
  data = METHODS["guide_grpo"].rollout(ctx)
  assert len(policy.sampled) == 1 and data.metrics["hint_rate"] == 0.0
  np.testing.assert_array_equal(data.extra["guide_offpolicy"], 0.0)
  data = default_shape(ctx, data)
  np.testing.assert_allclose(data.advantages, 0.0)                  # all correct: GRPO A = 0


def test_guide_rollout_rerolls_failing_group_on_unhinted_context():
  policy = FakePolicy(EXAMPLES, solved=["3+4="])
  ctx = fake_ctx("guide_grpo", policy)
  data = METHODS["guide_grpo"].rollout(ctx)
  assert policy.sampled[1] == ["hint: starts 1\n12+7="]             # group 0 re-rolled, hinted
  P = data.prompt_len
  assert TOK.decode(data.tokens[0, :P], skip_special_tokens=True) == "12+7="  # hint removed
  assert data.texts[:4] == ["19"] * 4 and data.correct.tolist() == [1.0] * 8
  np.testing.assert_array_equal(data.extra["guide_offpolicy"], [1] * 4 + [0] * 4)
  # Behaviour log-prob on x ⊕ h (bos + 20 chars), zero on on-policy rows.
  np.testing.assert_allclose(data.extra["guide_behav_logp"][0], -0.1 * 21, atol=1e-6)
  np.testing.assert_array_equal(data.extra["guide_behav_logp"][4:], 0.0)
  # γ = quantile over ρ₀ = exp(−0.1·6 + 0.1·21) of the hinted tokens (all equal).
  np.testing.assert_allclose(data.extra["guide_gamma"], np.exp(1.5), rtol=1e-5)
  assert data.metrics["hint_rate"] == 0.5 and data.metrics["hinted_group_solved"] == 1.0
