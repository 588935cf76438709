"""TVM (spec §6, loss type [reconstructed] — provisional): the spec's label table and loss
numbers, dedup, grouped labels, and that a detached trunk gets no value-loss gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.methods import METHODS
from tokenrl.methods.base import LossContext
from tokenrl.objectives import tvm

PATHS = [[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8]]            # "ABC" ✓ "ABD" ✗ "AEF" ✓ "GH" ✗
CORRECT = [1, 0, 1, 0]


def test_spec_labels():
  labels = tvm.token_value_labels(PATHS, CORRECT)
  expected = [[2 / 3, 0.5, 1.0], [2 / 3, 0.5, 0.0], [2 / 3, 1.0, 1.0], [0.0, 0.0]]
  for got, want in zip(labels, expected):
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("loss_type,expected", [("bce", 0.645981), ("mse", 0.004444)])
def test_spec_loss_numbers(loss_type, expected):
  x = jnp.log(jnp.array([[0.6 / 0.4]], jnp.float32))           # σ(x) = 0.6
  loss, _ = tvm.token_value_loss(x, jnp.array([[2 / 3]]), jnp.ones((1, 1)), loss_type=loss_type)
  np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)


def test_dedup_and_grouped_labels():
  paths = [[1, 2], [1, 2], [1, 3]]
  np.testing.assert_allclose(tvm.token_value_labels(paths, [1, 1, 0])[0], [2 / 3, 1.0])
  np.testing.assert_allclose(tvm.token_value_labels(paths, [1, 1, 0], dedup=True)[0], [0.5, 1.0])
  comp = np.array([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 0], [9, 0, 0], [9, 0, 0]])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
  labels = tvm.grouped_token_value_labels(comp, mask, np.array([1, 0, 1, 0, 1, 0]), 2)
  np.testing.assert_allclose(labels[4:, 0], [0.5, 0.5])         # group 3: "9" ✓ and "9" ✗
  np.testing.assert_allclose(labels[0], [0.5, 0.5, 1.0])        # group 1 alone: "123" ✓, "124" ✗
  with pytest.raises(ValueError, match="group_size"):
    tvm.grouped_token_value_labels(comp, mask, np.zeros(6), 4)
  labels = tvm.grouped_token_value_labels(comp[:4], mask[:4], np.array(CORRECT), 4)
  np.testing.assert_allclose(labels[3], [0.0, 0.0, 0.0])
  np.testing.assert_allclose(labels[0], [2 / 3, 0.5, 1.0], atol=1e-6)


def test_loss_is_per_path_token_mean_then_path_mean():
  x = jnp.zeros((2, 3))                                          # f = 0.5 everywhere
  v = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.5, 0.5]])
  m = jnp.array([[1, 0, 0], [1, 1, 1]])
  loss, metrics = tvm.token_value_loss(x, v, m)
  np.testing.assert_allclose(loss, (0.25 + (0.25 + 0 + 0) / 3) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics["value_mae"], (0.5 + 0.5) / 4)


def test_detached_trunk_trains_only_the_head():
  config = models.tiny("qwen2", vocab_size=12, dim=16, num_heads=2, num_kv_heads=1, mlp_dim=24)
  method = METHODS["tvm"]
  params = method.init_params(models.init_params(config, jax.random.key(0)), config, jax.random.key(1))
  p, t, n = 3, 3, 4
  rng = np.random.default_rng(0)
  mb = {"tokens": jnp.asarray(rng.integers(3, 12, (n, p + t)), jnp.int32),
        "segment_ids": jnp.ones((n, p + t), jnp.int32), "mask": jnp.ones((n, t), jnp.int32),
        "tvm_mask": jnp.ones((n, t), jnp.int32), "tvm_labels": jnp.full((n, t), 0.7),
        "tvm_correct": jnp.ones((n,)), "advantages": jnp.zeros(n),
        "sampler_logp": jnp.zeros((n, t)), "token_weights": jnp.ones((n, t))}
  section = {k: v for k, v in method.config().to_dict().items()}
  lctx = LossContext(model=config, prompt_len=p, temperature=1.0, remat=False,
                     loss_options={}, section=section,
                     denom={"pg": 1.0, "rows": float(n), "tokens": float(n * t)})
  grads = jax.grad(lambda q: method.loss_fn(q, mb, lctx)[0])(params)
  assert float(jnp.abs(grads["value_head"]["w"]).sum()) > 0
  trunk = [float(jnp.abs(g).sum()) for k, v in grads.items() if k != "value_head"
           for g in jax.tree.leaves(v)]
  assert max(trunk) == 0.0
  lctx = dataclasses.replace(lctx, section={**section, "detach_trunk": False})
  grads = jax.grad(lambda q: method.loss_fn(q, mb, lctx)[0])(params)
  assert float(jnp.abs(grads["embed"]).sum()) > 0


def test_bad_inputs():
  with pytest.raises(ValueError, match="correct"):
    tvm.token_value_labels(PATHS, [1, 0])
  with pytest.raises(ValueError, match="loss_type"):
    tvm.token_value_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones((1, 1)), loss_type="l1")
  with pytest.raises(ValueError, match="labels"):
    tvm.token_value_loss(jnp.zeros((1, 2)), jnp.zeros((1, 1)), jnp.ones((1, 2)))
