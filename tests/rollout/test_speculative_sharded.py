"""The lossless speculative engines on 8 fake CPU devices equal one device.

Rows split over the (data, fsdp) axes of a (2, 2, 2) mesh, the target's weights in the decode
layout (tensor-parallel), the draft replicated: the tokens are those of the unsharded call and
the log-probs agree to f32 rounding of the sharded matmuls (they are reductions over the split
dimension). Sampled at temperature 1, so every accept / residual decision of the engine runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.rollout.drafts import LayerDraft, ModelDraft
from tokenrl.rollout.spectr import spectr_sample
from tokenrl.rollout.speculative import speculative_sample
from tokenrl.train import mesh as mesh_lib

CONFIG = models.tiny("qwen2", vocab_size=16, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     eos_ids=(1,), pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
DRAFT_CONFIG = models.tiny("qwen2", vocab_size=16, dim=16, num_layers=1, num_heads=2,
                           num_kv_heads=1, mlp_dim=24, eos_ids=(1,), pad_id=0)
DRAFT_PARAMS = models.init_params(DRAFT_CONFIG, jax.random.key(7))
PROMPTS = [[5, 6, 7], [8, 9], [3, 4, 5, 6, 7, 8], [2, 3]]


def _call(engine, params, draft, **kw):
  kw = dict(config=CONFIG, rng=jax.random.key(3), max_new_tokens=10, temperature=1.0,
            num_samples=2, stop_tokens=(1,), draft=draft, num_draft_tokens=3, **kw)
  if engine == "spectr":
    return spectr_sample(params, PROMPTS, num_drafts=2, **kw)
  return speculative_sample(params, PROMPTS, **kw)


@pytest.mark.parametrize("engine,draft", [("exact", "layers"), ("spectr", "model")])
def test_sharded_rows_and_weights_equal_one_device(engine, draft):
  assert jax.device_count() == 8
  mesh = mesh_lib.make_mesh(2, 2, 2)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  one = ModelDraft(jax.tree.map(jnp.asarray, DRAFT_PARAMS), DRAFT_CONFIG) if draft == "model" \
      else LayerDraft(1)
  many = ModelDraft(jax.device_put(DRAFT_PARAMS, rep), DRAFT_CONFIG) if draft == "model" \
      else LayerDraft(1)
  params = jax.device_put(PARAMS, mesh_lib.decode_param_shardings(CONFIG, mesh))
  want, want_stats = _call(engine, PARAMS, one)
  got, got_stats = _call(engine, params, many, prompt_sharding=mesh_lib.batch_sharding(mesh))
  assert got.tokens.sharding.spec[0] == ("data", "fsdp")  # the rows stayed split
  for field in ("tokens", "mask", "truncated"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))
  for field in ("logprobs", "entropy"):
    np.testing.assert_allclose(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)),
                               rtol=1e-5, atol=1e-5)
  for name, value in vars(want_stats).items():  # counts exactly, rates (f32 laws) to 1e-6
    if isinstance(value, int):
      assert getattr(got_stats, name) == value, name
    else:
      np.testing.assert_allclose(getattr(got_stats, name), value, rtol=1e-6, err_msg=name)
  assert 0 < want_stats.accepted < want_stats.drafted  # rounds both accepted and rejected
