"""LoRA adapters: zero-init identity, merged = applied, gradients only to the adapters, count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import lora as lora_lib
from tokenrl.models import transformer

CFG = models.tiny("qwen2", vocab_size=40, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  mlp_dim=48, max_seq_len=32)
PARAMS = transformer.init_params(CFG, jax.random.key(0))
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 40, size=(2, 7)), jnp.int32)
RANK, ALPHA = 4, 8.0


@functools.partial(jax.jit, static_argnames=("freeze",))
def _adapted(params, lora, tokens, freeze=True):
  p = lora_lib.apply_lora(params, lora, alpha=ALPHA, rank=RANK, freeze_base=freeze)
  return transformer.forward(p, tokens, config=CFG)[0]


def adapted_logits(params, lora, freeze=True):
  # tokens are a jit argument: forward's vocabulary check reads concrete (non-traced) ids only.
  return _adapted(params, lora, TOKENS, freeze=freeze)


_base = jax.jit(lambda params, tokens: transformer.forward(params, tokens, config=CFG)[0])


def base_logits(params):
  return _base(params, TOKENS)


def random_lora(seed=1):
  lora = lora_lib.init_lora(PARAMS, CFG, jax.random.key(seed), rank=RANK, alpha=ALPHA)
  # Non-zero B so the adapters change the model (init has B = 0).
  return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 7), x.shape),
                      lora)


def test_shapes_and_zero_init_is_identity():
  lora = lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=RANK, alpha=ALPHA)
  assert lora["q"]["a"].shape == (2, 32, RANK) and lora["q"]["b"].shape == (2, RANK, 4 * 8)
  assert lora["o"]["a"].shape == (2, 4 * 8, RANK) and lora["o"]["b"].shape == (2, RANK, 32)
  assert lora["down"]["a"].shape == (2, 48, RANK) and lora["down"]["b"].shape == (2, RANK, 32)
  np.testing.assert_array_equal(adapted_logits(PARAMS, lora), base_logits(PARAMS))


def test_merged_equals_applied_and_export(tmp_path):
  lora = random_lora()
  applied = adapted_logits(PARAMS, lora)
  assert float(jnp.abs(applied - base_logits(PARAMS)).max()) > 1e-3  # the adapters matter
  merged = lora_lib.merge_lora(PARAMS, lora, alpha=ALPHA, rank=RANK)
  np.testing.assert_allclose(base_logits(merged), applied, atol=1e-5)
  # ΔW of one projection by hand: (α/r)·A·B reshaped to [L,D,Q,H].
  dq = (ALPHA / RANK) * np.einsum("lir,lro->lio", lora["q"]["a"], lora["q"]["b"])
  np.testing.assert_allclose(merged["layers"]["q"] - PARAMS["layers"]["q"],
                             dq.reshape(PARAMS["layers"]["q"].shape), atol=1e-6)
  models.save_hf(str(tmp_path), CFG, merged)
  cfg2, loaded = models.load_hf(str(tmp_path))
  np.testing.assert_allclose(transformer.forward(loaded, TOKENS, config=cfg2)[0], applied,
                             atol=1e-5)


def test_gradients_reach_only_lora():
  lora = random_lora()

  def loss(params, lora):
    return jnp.mean(adapted_logits(params, lora) ** 2)

  g_base, g_lora = jax.grad(loss, argnums=(0, 1))(PARAMS, lora)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_base))
  assert all(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves(g_lora))
  # freeze_base=False (MEET stage 2): the base gets gradients too.
  g_base2 = jax.grad(lambda p: jnp.mean(adapted_logits(p, lora, freeze=False) ** 2))(PARAMS)
  assert float(jnp.abs(g_base2["layers"]["q"]).max()) > 0.0


def test_param_count_formula_and_targets():
  lora = lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=RANK, alpha=ALPHA)
  n = sum(x.size for x in jax.tree.leaves(lora))
  # L·r·[(D+QH) + 2(D+KH) + (QH+D) + 2(D+F) + (F+D)] = 2·4·[64 + 2·48 + 64 + 2·80 + 80]
  assert n == lora_lib.lora_param_count(CFG, rank=RANK) == 2 * 4 * (64 + 96 + 64 + 160 + 80)
  sub = lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=2, alpha=1.0, targets=("q", "v"))
  assert sorted(sub) == ["q", "v"]
  assert lora_lib.lora_param_count(CFG, rank=2, targets=("q", "v")) == 2 * 2 * (64 + 48)


def test_bad_inputs():
  with pytest.raises(ValueError, match="rank"):
    lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=0, alpha=1.0)
  with pytest.raises(ValueError, match="targets"):
    lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=2, alpha=1.0, targets=("qq",))
  lora = lora_lib.init_lora(PARAMS, CFG, jax.random.key(1), rank=2, alpha=1.0)
  with pytest.raises(ValueError, match="lora a/b"):
    lora_lib.apply_lora(PARAMS, lora, alpha=1.0, rank=3)
