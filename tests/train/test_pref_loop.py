"""Preference training end to end: every pairwise method runs real steps of the smoke config
(finite loss, its metrics logged), resume = uninterrupted, and the pairwise step's invariants
(micro-batched = one batch, sharded = unsharded, policy = reference gives log 2)."""

import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenrl import models
from tokenrl.data.char_tokenizer import CharTokenizer
from tokenrl.data.preference import preference_batch
from tokenrl.methods import METHODS
from tokenrl.train import pairwise as pairwise_lib
from tokenrl.train import steps as steps_lib
from tokenrl.train.pref_loop import train_preference

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "preference_quickstart.py")
# Methods with their own `trainer` (meet, refusal_tokens, rectification) are tested elsewhere.
PAIRWISE = sorted(n for n, m in METHODS.items()
                  if getattr(m, "pairwise", False) and not getattr(m, "trainer", None))


def smoke_config(objective: str, sft_steps: int = 2, pref_steps: int = 2):
  spec = importlib.util.spec_from_file_location("preference_quickstart", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  c.rl.objective = objective
  c.train.sft_steps = sft_steps
  c.train.max_steps = pref_steps
  c.train.checkpoint_every = 0
  c.train.async_checkpoint = False
  c.data.eval_size = 8
  return c


def _pref_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f if json.loads(l)["phase"] == "pref"]


def _check_run(name, workdir, summary):
  assert summary["steps"] == 4 and summary["objective"] == name
  lines = _pref_lines(workdir)
  assert len(lines) == 2
  for line in lines:
    assert np.isfinite(line["loss"]), line
    for key in METHODS[name].metrics:
      assert key in line, f"{name}: metric {key!r} not logged; got {sorted(line)}"
      assert np.isfinite(line[key]), (key, line[key])
  for key in ("final_accuracy", "final_pair_preference_accuracy", "final_pair_reward_margin",
              "final_pair_logp_accuracy", "credit_map"):
    assert key in summary, key
  assert "Σ=" in summary["credit_map"]["chosen"]
  assert os.path.isfile(os.path.join(workdir, "summary.json"))


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dpo"))
  return workdir, train_preference(smoke_config("dpo"), workdir)


def test_pairwise_methods_registered():
  assert {"dpo", "ipo", "hinge", "robust", "tgdpo", "cdpo"} <= set(PAIRWISE)


def test_dpo_runs_a_few_steps(dpo_run):
  workdir, summary = dpo_run
  _check_run("dpo", workdir, summary)
  base = summary["evals"][0]
  # At the start of the preference phase the policy is the reference: zero margins.
  assert base["pair_reward_margin"] == 0.0 and base["pair_preference_accuracy"] == 0.0
  assert base["pair_logp_accuracy"] == base["pair_ref_logp_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PAIRWISE if n != "dpo"])
def test_method_runs_a_few_steps(name, dpo_run, tmp_path):
  cfg = smoke_config(name)
  if name == "tgdpo":
    cfg.rl.tgdpo.guidance_workdir = dpo_run[0]   # a real (tiny) DPO model, same reference
  summary = train_preference(cfg, str(tmp_path))
  _check_run(name, str(tmp_path), summary)


@pytest.mark.slow
def test_resume_mid_preference_equals_uninterrupted(tmp_path):
  def cfg():
    c = smoke_config("dpo", sft_steps=2, pref_steps=3)
    c.train.checkpoint_every = 3
    c.train.keep_checkpoints = 5
    return c

  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  train_preference(cfg(), a)
  train_preference(cfg(), b)
  shutil.rmtree(os.path.join(b, "checkpoints", "5"))     # as if killed after the step-3 save
  os.remove(os.path.join(b, "summary.json"))
  summary = train_preference(cfg(), b)                      # resumes at step 3 (preference phase)
  assert summary["steps"] == 5
  drop = lambda r: {k: v for k, v in r.items() if "seconds" not in k}
  assert [drop(r) for r in _pref_lines(a)] == [drop(r) for r in _pref_lines(b)]
  with open(os.path.join(a, "summary.json")) as f:
    sa = json.load(f)
  assert sa["final_pair_reward_margin"] == summary["final_pair_reward_margin"]


# ---- the jitted step on a hand-made batch -------------------------------------------------

TOK = CharTokenizer()
MODEL = models.tiny("qwen2", vocab_size=TOK.vocab_size, dim=32, num_heads=2, num_kv_heads=1,
                    mlp_dim=64, num_layers=1, max_seq_len=64, pad_id=0, bos_id=1, eos_ids=(2,))
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
         for a, b in [(1, 2), (12, 7), (3, 3), (40, 9), (5, 55), (8, 1), (0, 0), (21, 12)]]


@pytest.fixture(scope="module")
def pair_setup():
  params = models.init_params(MODEL, jax.random.key(0))
  batch, P = preference_batch(TOK, PAIRS)
  ref = jax.tree.map(lambda x: x * 0.9, params)
  batch["ref_logp"] = np.asarray(pairwise_lib.make_pair_logprob_fn(config=MODEL, prompt_len=P)(
      ref, batch["tokens"], batch["segment_ids"]))
  return params, batch, P


def _copy(params):
  return jax.tree.map(jnp.copy, params)   # the step donates its state


def _step(micro, P, jit=True):
  return pairwise_lib.make_pairwise_step(optax.sgd(0.1), config=MODEL, prompt_len=P,
                                         method=METHODS["dpo"], section={"beta": 0.1,
                                         "label_smoothing": 0.0, "reference_free": False},
                                         micro_batch_size=micro, jit=jit)


def test_step_micro_batched_and_sharded_equal_one_batch(pair_setup):
  from tokenrl.train.mesh import batch_sharding, make_mesh
  from tokenrl.train.sharded import shard_step, state_from_params
  params, batch, P = pair_setup
  tx = optax.sgd(0.1)
  s0, m0 = _step(0, P)(steps_lib.create_state(_copy(params), tx), batch)
  s1, m1 = _step(4, P)(steps_lib.create_state(_copy(params), tx), batch)
  np.testing.assert_allclose(m0["loss"], m1["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s0.params, s1.params)
  mesh = make_mesh(-1, 1, 1)
  state, shardings = state_from_params(_copy(params), tx, MODEL, mesh)
  step = shard_step(_step(0, P, jit=False), shardings, batch_sharding(mesh))
  s2, m2 = step(state, batch)
  np.testing.assert_allclose(m0["loss"], m2["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s0.params, s2.params)


def test_policy_equal_reference_gives_log2(pair_setup):
  params, batch, P = pair_setup
  batch = dict(batch)
  batch["ref_logp"] = np.asarray(pairwise_lib.make_pair_logprob_fn(config=MODEL, prompt_len=P)(
      params, batch["tokens"], batch["segment_ids"]))
  _, m = _step(0, P)(steps_lib.create_state(_copy(params), optax.sgd(0.1)), batch)
  np.testing.assert_allclose(m["loss"], np.log(2.0), rtol=1e-6)
  assert float(m["reward_margin"]) == 0.0 and float(m["preference_accuracy"]) == 0.0


def test_pair_logprobs_match_rowwise(pair_setup):
  params, batch, P = pair_setup
  lp = pairwise_lib.pair_logprobs(params, jnp.asarray(batch["tokens"]),
                                  jnp.asarray(batch["segment_ids"]), P, config=MODEL)
  row, _ = steps_lib.completion_logprobs(params, batch["tokens"][:, 1], batch["segment_ids"][:, 1],
                                         P, config=MODEL)
  np.testing.assert_allclose(lp[:, 1], row, atol=1e-5)
  with pytest.raises(ValueError, match="tokens"):
    pairwise_lib.pair_logprobs(params, jnp.asarray(batch["tokens"][:, 0]),
                               jnp.asarray(batch["segment_ids"][:, 0]), P, config=MODEL)


def test_tgdpo_requires_guidance_workdir():
  from tokenrl.methods.config import resolve_objective
  cfg = smoke_config("tgdpo")
  with pytest.raises(ValueError, match="rl.tgdpo.guidance_workdir"):
    resolve_objective(cfg.rl)
  cfg = smoke_config("robust")
  cfg.rl.robust.label_smoothing = 0.5
  with pytest.raises(ValueError, match="rl.robust.label_smoothing"):
    resolve_objective(cfg.rl)
