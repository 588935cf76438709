"""Refusal tokens (spec §10): the threshold rule on the spec's numbers, the category rule, the
logit processor, monotone refusal rates on a toy model, the embedded task, a short SFT run."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.refusal import make_refusal_examples, refusal_reward
from tokenrl.objectives import refusal
from tokenrl.rollout.sampler import DecodeContext, sample

Z = jnp.asarray([[3.0, 2.5, 0.0]])   # logits over [refuse], [respond], other (spec §10 (e))
RULE = dict(refuse_id=0, respond_id=1)


def test_spec_numeric_case():
  np.testing.assert_allclose(jax.nn.softmax(Z[0]), [0.603749, 0.366192, 0.030059], atol=1e-6)
  np.testing.assert_allclose(jax.nn.softmax(Z[0] / 2), [0.499518, 0.389025, 0.111457], atol=1e-6)
  assert bool(refusal.refusal_decision(Z, **RULE, threshold=-1.0)[0])          # 0.604 >= 0.366
  assert not bool(refusal.refusal_decision(Z, **RULE, threshold=0.7)[0])       # 0.604 < 0.7
  assert not bool(refusal.refusal_decision(Z, **RULE, threshold=0.55, softmax_temperature=2.0)[0])
  assert bool(refusal.refusal_decision(Z, **RULE, threshold=0.6)[0])           # 0.6037 >= 0.6
  # Logit bias δ = -0.6 puts z_ref below z_resp: the t = -1 rule flips to respond.
  assert not bool(refusal.refusal_decision(Z, **RULE, logit_bias=-0.6)[0])


def test_category_rule():
  # cats [A, B] = ids 0, 1; respond = 2; greedy token = 3.
  z = jnp.log(jnp.asarray([[0.3, 0.1, 0.2, 0.4], [0.05, 0.25, 0.3, 0.4]]))
  kw = dict(category_ids=(0, 1), respond_id=2)
  # Row 0: c* = A (0.3). Controlled: 0.3 >= 0.2 emits A; 0.3 < 0.5 emits respond. Not controlled: greedy.
  np.testing.assert_array_equal(refusal.category_decision(z, controlled=(True, True), threshold=0.2, **kw), [0, 1])
  np.testing.assert_array_equal(refusal.category_decision(z, controlled=(True, True), threshold=0.5, **kw), [2, 2])
  np.testing.assert_array_equal(refusal.category_decision(z, controlled=(False, True), threshold=0.5, **kw), [3, 2])


def test_processor_forces_first_token_only():
  proc = refusal.RefusalProcessor(0, 1, threshold=0.7)
  assert hash(proc) == hash(refusal.RefusalProcessor(0, 1, threshold=0.7))
  ctx = lambda s: DecodeContext(jnp.asarray(s), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1,), bool))
  out = proc(Z, ctx(0))
  np.testing.assert_array_equal(out[0], [refusal.FORCED_OUT, 2.5, refusal.FORCED_OUT])
  np.testing.assert_array_equal(proc(Z, ctx(1)), Z)


def test_refusal_rate_monotone_on_toy_model():
  cfg = models.tiny("qwen2", vocab_size=12, dim=16, num_heads=2, num_kv_heads=1, mlp_dim=32,
                    num_layers=1, max_seq_len=32, pad_id=0, eos_ids=(2,))
  params = models.init_params(cfg, jax.random.key(0))
  prompts = np.random.default_rng(0).integers(3, 12, size=(64, 5))
  logits = models.forward(params, jnp.asarray(prompts), config=cfg)[0][:, -1]   # [N,V] step 0
  ctx = DecodeContext(jnp.asarray(0), jnp.zeros((64, 1), jnp.int32), jnp.zeros((64,), bool))
  first = lambda proc: np.asarray(jnp.argmax(proc(logits, ctx), axis=-1))
  rates = {}
  for kind, values in (("threshold", (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 1.0)),
                       ("logit_bias", (-4., -2., -1., -0.5, 0., 0.5, 1., 2., 4.))):
    procs = [refusal.RefusalProcessor(3, 4, threshold=v) if kind == "threshold"
             else refusal.RefusalProcessor(3, 4, logit_bias=v) for v in values]
    rates[kind] = [float((first(p) == 3).mean()) for p in procs]
  assert rates["threshold"][0] == 1.0 and rates["threshold"][-1] == 0.0
  assert all(a >= b for a, b in zip(rates["threshold"], rates["threshold"][1:]))
  assert all(a <= b for a, b in zip(rates["logit_bias"], rates["logit_bias"][1:]))
  assert rates["logit_bias"][0] == 0.0 and rates["logit_bias"][-1] == 1.0
  # Through the sampler: the forced first token is what greedy decoding emits.
  ro = sample(params, prompts.tolist(), config=cfg, rng=jax.random.key(1), max_new_tokens=2,
              temperature=0.0, logit_processor=refusal.RefusalProcessor(3, 4, threshold=0.1))
  np.testing.assert_array_equal(np.asarray(ro.tokens)[:, 0],
                                first(refusal.RefusalProcessor(3, 4, threshold=0.1)))
  np.testing.assert_array_equal(np.asarray(ro.logprobs)[:, 0], 0.0)   # one-hot distribution


def test_embedded_task_and_reward():
  train = make_refusal_examples("train", 200, 0, refusal_fraction=0.5)
  test = make_refusal_examples("test", 50, 0, refusal_fraction=0.5)
  assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
  tok = CharTokenizer()
  for ex in train:
    tok.encode(ex["prompt"] + ex["answer"])               # every character is in the vocabulary
    if ex["refuse"]:
      assert ex["answer"] == "?" and ("/0=" in ex["prompt"] or ex["kind"] == "negative")
      if ex["kind"] == "negative":
        a, b = ex["prompt"][:-1].split("-")
        assert int(a) < int(b)
    else:
      assert ex["answer"] == "#" + ex["value"]
  assert 60 < sum(e["refuse"] for e in train) < 140
  ref = {"refuse": True, "answer": "?"}
  ans = {"refuse": False, "answer": "#19"}
  assert refusal_reward("?", ref) == 1.0 and refusal_reward("#3", ref) == 0.0
  assert refusal_reward("#19", ans) == 1.0 and refusal_reward("?", ans) == 0.0


def test_bad_inputs():
  with pytest.raises(ValueError, match="threshold"):
    refusal.refusal_decision(Z, **RULE, threshold=1.5)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    refusal.refusal_decision(Z, refuse_id=5, respond_id=1)
  with pytest.raises(ValueError, match="controlled"):
    refusal.category_decision(Z, category_ids=(0, 1), controlled=(True,), respond_id=2, threshold=0.5)
  with pytest.raises(ValueError, match="refusal_fraction"):
    make_refusal_examples("train", 4, 0, refusal_fraction=2.0)


def test_train_refusal_smoke(tmp_path):
  from tokenrl.methods import get_method
  from tokenrl.train.refusal import train_refusal
  path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.objective = "refusal_tokens"
  c.model.dim, c.model.mlp_dim, c.model.num_layers = 32, 64, 1
  c.data.eval_size = 16
  c.rl.refusal_tokens.eval_thresholds = (0.0, 1.0)
  assert get_method("refusal_tokens").pairwise
  s = train_refusal(c, str(tmp_path))
  # t = 0 refuses everything, t = 1 (p_ref < 1 always) nothing: the two ends of the trade-off.
  assert s["threshold_sweep"]["0.0"]["refusal_rate_answerable"] == 1.0
  assert s["threshold_sweep"]["0.0"]["refusal_rate_unanswerable"] == 1.0
  assert s["threshold_sweep"]["1.0"]["refusal_rate_unanswerable"] == 0.0
  assert os.path.isfile(tmp_path / "summary.json")
  c.rl.refusal_tokens.kinds = "bogus"
  with pytest.raises(ValueError, match="rl.refusal_tokens.kinds"):
    train_refusal(c, str(tmp_path))
