"""Train-step invariants: accumulation = one batch, zero advantage = no change, non-finite skips."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl import models
from tokenrl.methods.config import resolve_objective, rl_config
from tokenrl.objectives import POLICY_LOSS_OPTIONS
from tokenrl.train import steps as steps_lib

CONFIG = models.tiny("qwen2", vocab_size=20, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48)
P, T, N = 4, 5, 8


def _batch(seed=0, advantages=None):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 20, size=(N, P + T)).astype(np.int32)
  seg = np.ones_like(tokens)
  seg[1, :2] = 0  # a left-padded prompt
  tokens[1, :2] = 0
  mask = np.ones((N, T), np.int32)
  mask[2, 3:] = 0
  adv = rng.normal(size=(N,)).astype(np.float32) if advantages is None else advantages
  return {"tokens": tokens, "segment_ids": seg, "mask": mask, "advantages": adv,
          "sampler_logp": np.zeros((N, T), np.float32), "token_weights": np.ones((N, T), np.float32)}


def _opts(**overrides):
  cfg = rl_config()
  for k, v in overrides.items():
    cfg[k] = v
  return {k: resolve_objective(cfg)[k] for k in POLICY_LOSS_OPTIONS}


def _run(micro, opts, batch, tx=None, params=None):
  tx = tx or optax.sgd(0.1)
  params = params or models.init_params(CONFIG, jax.random.key(0))
  state = steps_lib.create_state(params, tx)
  step = steps_lib.make_pg_step(tx, config=CONFIG, prompt_len=P, loss_options=opts, temperature=1.0,
                                micro_batch_size=micro)
  return step(state, batch)


def test_micro_batches_equal_whole_batch():
  for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
    opts = _opts(loss_agg_mode=mode)
    whole, m_whole = _run(0, opts, _batch())
    micro, m_micro = _run(2, opts, _batch())
    np.testing.assert_allclose(float(m_micro["loss"]), float(m_whole["loss"]), rtol=1e-5, atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 micro.params, whole.params)


def test_zero_advantage_leaves_params_unchanged():
  params = models.init_params(CONFIG, jax.random.key(0))
  before = jax.tree.map(np.asarray, params)
  state, metrics = _run(0, _opts(), _batch(advantages=np.zeros(N, np.float32)), params=params)
  assert float(metrics["grad_norm"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_non_finite_loss_skips_the_update():
  params = models.init_params(CONFIG, jax.random.key(0))
  before = jax.tree.map(np.asarray, params)
  bad = _batch(advantages=np.full(N, np.nan, np.float32))
  state, metrics = _run(0, _opts(), bad, tx=optax.adam(1e-2), params=params)
  assert int(state.skipped) == 1 and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), before)


def test_sft_step_learns_a_fixed_sequence():
  tx = optax.adam(1e-2)
  state = steps_lib.create_state(models.init_params(CONFIG, jax.random.key(1)), tx)
  step = steps_lib.make_sft_step(tx, config=CONFIG)
  tokens = np.tile(np.arange(3, 11, dtype=np.int32), (4, 1))
  batch = {"tokens": tokens, "segment_ids": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
  losses = []
  for _ in range(30):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < 0.1 * losses[0]
  assert float(m["token_accuracy"]) == 1.0
