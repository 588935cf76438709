"""DCO (spec §8): the spec's F / ℓ table, N = 1 equals the plain SFT cross-entropy step, limits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenrl import models
from tokenrl.methods import METHODS
from tokenrl.objectives import dco
from tokenrl.train import steps as steps_lib


@pytest.mark.parametrize("n,p,f,loss", [
    (1, 0.3, 1.0, 1.203973),
    (4, 0.3, 0.541650, 0.274568),
    (16, 0.3, 0.022864, 0.003329),
    (4, 0.9, 0.003600, 1.0e-4),
])
def test_spec_table(n, p, f, loss):
  lp = jnp.log(jnp.array([p], jnp.float32))
  np.testing.assert_allclose(dco.dco_factor(lp, n), [f], rtol=2e-4)
  np.testing.assert_allclose(dco.dco_sequence_loss(lp, n), [loss], rtol=2e-4, atol=1e-7)
  value, metrics = dco.dco_loss(lp, n)
  np.testing.assert_allclose(value, loss, rtol=2e-4, atol=1e-7)
  # The gradient is F·∇CE: d ℓ / d LP = −F.
  np.testing.assert_allclose(jax.grad(lambda x: dco.dco_loss(x, n)[0])(lp), [-f], rtol=2e-4)
  np.testing.assert_allclose(metrics["dco_factor"], f, rtol=2e-4)


def test_closed_form_matches_direct_formula():
  p = np.array([0.01, 0.2, 0.5, 0.77, 0.99])
  for n in (2, 3, 8):
    f = n * (1 - p) ** (n - 1) * p / (1 - (1 - p) ** n)
    np.testing.assert_allclose(dco.dco_factor(jnp.log(jnp.asarray(p, jnp.float32)), n), f, rtol=1e-4,
                               atol=1e-9)
    np.testing.assert_allclose(dco.dco_sequence_loss(jnp.log(jnp.asarray(p, jnp.float32)), n),
                               -np.log1p(-(1 - p) ** n), rtol=1e-4)


def test_limits_are_finite():
  lp = jnp.array([0.0, -1e-12, -100.0, -1e4], jnp.float32)
  f = dco.dco_factor(lp, 4)
  np.testing.assert_allclose(np.asarray(f)[[0, 2, 3]], [0.0, 1.0, 1.0])     # p̂ = 1 → 0; p̂ → 0 → 1
  np.testing.assert_allclose(np.asarray(dco.dco_sequence_loss(lp, 4))[[0, 2]], [0.0, 100.0 - np.log(4)], rtol=1e-6)
  g = jax.grad(lambda x: dco.dco_loss(x, 4)[0])(lp)
  assert np.all(np.isfinite(g)) and np.all(np.isfinite(dco.dco_loss(lp, 4)[0]))


def test_row_mask_and_denominator():
  lp = jnp.log(jnp.array([0.3, 0.3, 0.9], jnp.float32))
  value, _ = dco.dco_loss(lp, 4, row_mask=jnp.array([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(value, 0.274568, rtol=2e-4)
  value, _ = dco.dco_loss(lp, 4, row_mask=jnp.array([1.0, 1.0, 0.0]), denominator=4.0)
  np.testing.assert_allclose(value, 2 * 0.274568 / 4, rtol=2e-4)


def test_bad_inputs():
  with pytest.raises(ValueError, match="n"):
    dco.dco_loss(jnp.zeros(2), 0)
  with pytest.raises(ValueError, match="seq_logp"):
    dco.dco_loss(jnp.zeros((2, 2)), 4)
  with pytest.raises(ValueError, match="row_mask"):
    dco.dco_loss(jnp.zeros(2), 4, row_mask=jnp.ones(3))
  with pytest.raises(ValueError, match="mask"):
    dco.sequence_logp(jnp.zeros((2, 3)), jnp.zeros((2, 2)))


def test_n1_step_equals_plain_sft_step():
  """N = 1: the DCO method's step is the SFT cross-entropy step (loss and update), up to the
  normalisation: SFT averages over the B·L answer tokens, DCO over the B answers (all of length
  L here), so loss_DCO = L·loss_SFT and an SGD step of rate 1 equals an SFT step of rate L."""
  config = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48)
  p, t, b, length = 4, 4, 4, 3
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 16, size=(b, p + t)).astype(np.int32)
  tokens[:, p + length:] = config.pad_id                 # right padding after answer+EOS
  tokens[1, :2] = config.pad_id                          # a left-padded prompt
  seg = np.ones_like(tokens)
  seg[1, :2] = 0
  mask = np.zeros((b, t), np.int32)
  mask[:, :length] = 1
  params = models.init_params(config, jax.random.key(0))

  sft_tx = optax.sgd(float(length))
  sft = steps_lib.make_sft_step(sft_tx, config=config)
  sft_batch = {"tokens": tokens, "segment_ids": seg,
               "loss_mask": np.concatenate([np.zeros((b, p), np.int32), mask], 1)}
  s_state, s_metrics = sft(steps_lib.create_state(params, sft_tx), sft_batch)

  dco_tx = optax.sgd(1.0)
  step = steps_lib.make_pg_step(dco_tx, config=config, prompt_len=p, loss_options={},
                                temperature=0.7, method=METHODS["dco"], section={"n": 1})
  batch = {"tokens": tokens, "segment_ids": seg, "mask": mask,
           "advantages": np.zeros(b, np.float32), "sampler_logp": np.zeros((b, t), np.float32),
           "token_weights": np.ones((b, t), np.float32)}
  params = models.init_params(config, jax.random.key(0))
  d_state, d_metrics = step(steps_lib.create_state(params, dco_tx), batch)
  np.testing.assert_allclose(float(d_metrics["loss"]), length * float(s_metrics["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(d_metrics["dco_factor"]), 1.0)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6),
               d_state.params, s_state.params)
