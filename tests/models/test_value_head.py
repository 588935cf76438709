"""Value head: hand-computed values, validation, and params with the head still sample/forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import transformer
from tokenrl.models import value_head as vh
from tokenrl.rollout import sample

CONFIG = models.tiny("qwen2", vocab_size=20, dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                     mlp_dim=24)


def test_values_hand_computed():
  head = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.25)}
  hidden = jnp.array([[[1.0, 1.0, 2.0], [0.0, 0.5, 0.0]]])          # [1,2,3]
  # 1 − 2 + 1 + 0.25 = 0.25;  −1 + 0.25 = −0.75
  np.testing.assert_allclose(vh.values(head, hidden), [[0.25, -0.75]], atol=1e-6)
  assert vh.values(head, hidden.astype(jnp.bfloat16)).dtype == jnp.float32


def test_init_scale_and_keys():
  head = vh.init_value_head(jax.random.key(0), 63)
  assert head["w"].shape == (63,) and head["b"].shape == () and float(head["b"]) == 0.0
  assert float(jnp.std(head["w"])) < 3.0 / 64                      # N(0, 1/(D+1)²)
  params = {"final_norm": jnp.ones(4)}
  with_head = vh.add_value_head(params, 4, jax.random.key(1))
  assert set(with_head) == {"final_norm", "value_head"}
  again = vh.add_value_head(with_head, 4, jax.random.key(2))       # restored heads are kept
  np.testing.assert_array_equal(again["value_head"]["w"], with_head["value_head"]["w"])
  assert set(vh.policy_params(with_head)) == {"final_norm"}


def test_bad_inputs():
  head = vh.init_value_head(jax.random.key(0), 3)
  with pytest.raises(ValueError, match="hidden"):
    vh.values(head, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"head_params\['w'\]"):
    vh.values(head, jnp.zeros((1, 2, 4)))
  with pytest.raises(ValueError, match="head_params"):
    vh.values({"w": head["w"]}, jnp.zeros((1, 2, 3)))
  with pytest.raises(ValueError, match="dim"):
    vh.init_value_head(jax.random.key(0), 0)


def test_forward_and_sampler_ignore_the_head():
  params = models.init_params(CONFIG, jax.random.key(0))
  with_head = vh.add_value_head(params, CONFIG.dim, jax.random.key(1))
  tokens = jnp.array([[1, 5, 6, 7]], jnp.int32)
  a, _ = transformer.forward(params, tokens, config=CONFIG)
  b, _ = transformer.forward(with_head, tokens, config=CONFIG)
  np.testing.assert_array_equal(a, b)
  kw = dict(config=CONFIG, rng=jax.random.key(3), max_new_tokens=2, num_samples=2)
  r1 = sample(params, [[1, 5, 6]], **kw)
  r2 = sample(with_head, [[1, 5, 6]], **kw)
  np.testing.assert_array_equal(r1.tokens, r2.tokens)
  np.testing.assert_array_equal(r1.logprobs, r2.logprobs)
