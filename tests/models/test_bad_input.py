"""Bad checkpoints and inputs raise errors that name the file, key or argument."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import safetensors_io

CONFIG = models.tiny("qwen3", vocab_size=40, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48)


@pytest.fixture()
def folder(tmp_path):
  params = models.init_params(CONFIG, jax.random.key(0))
  models.save_hf(str(tmp_path), CONFIG, params)
  return str(tmp_path)


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    hf = json.load(f)
  hf.update(changes)
  with open(path, "w") as f:
    json.dump(hf, f)


def _edit_tensors(folder, fn):
  path = os.path.join(folder, "model.safetensors")
  tensors = {k: np.array(v) for k, v in safetensors_io.load_tensors(path).items()}
  fn(tensors)
  safetensors_io.save_tensors(path, tensors)


def test_missing_folder():
  with pytest.raises(FileNotFoundError, match="does-not-exist"):
    models.load_hf("/tmp/does-not-exist")


def test_missing_weights(folder):
  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    models.load_hf(folder)


def test_unknown_architecture(folder):
  _edit_config(folder, model_type="mamba")
  with pytest.raises(ValueError, match="mamba"):
    models.load_hf(folder)


def test_unsupported_rope_named(folder):
  _edit_config(folder, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4})
  with pytest.raises(ValueError, match="yarn"):
    models.load_hf(folder)


def test_shape_mismatch_names_tensor_and_file(folder):
  _edit_config(folder, intermediate_size=64)
  with pytest.raises(ValueError, match=r"mlp\.(gate|up|down)_proj.*model\.safetensors|model\.safetensors.*mlp"):
    models.load_hf(folder)


def test_missing_and_unknown_tensors_named(folder):
  _edit_tensors(folder, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
  with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
    models.load_hf(folder)


def test_unknown_tensor_named(folder):
  _edit_tensors(folder, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3, np.float32)}))
  with pytest.raises(ValueError, match=r"model\.layers\.0\.extra\.weight"):
    models.load_hf(folder)


def test_sharded_checkpoint_with_index(tmp_path):
  params = models.init_params(CONFIG, jax.random.key(1))
  models.save_hf(str(tmp_path), CONFIG, params, max_shard_bytes=20_000)
  assert os.path.isfile(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 1
  _, loaded = models.load_hf(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_bf16_save_load_roundtrip(tmp_path):
  params = models.init_params(CONFIG, jax.random.key(2), dtype=jnp.bfloat16)
  models.save_hf(str(tmp_path), CONFIG, params)
  _, loaded = models.load_hf(str(tmp_path))
  assert loaded["embed"].dtype == jnp.bfloat16
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_token_ids_outside_vocab():
  params = models.init_params(CONFIG, jax.random.key(0))
  with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 40\)"):
    models.forward(params, jnp.array([[1, 2, 40]]), config=CONFIG)


def test_prompt_longer_than_cache():
  params = models.init_params(CONFIG, jax.random.key(0))
  cache = models.init_cache(CONFIG, batch=1, length=4)
  with pytest.raises(ValueError, match="cache of length 4"):
    models.forward(params, jnp.ones((1, 5), jnp.int32), config=CONFIG, cache=cache)


def test_params_config_mismatch():
  params = models.init_params(CONFIG, jax.random.key(0))
  with pytest.raises(ValueError, match=r"params\['embed'\]"):
    models.forward(params, jnp.ones((1, 3), jnp.int32), config=CONFIG.replace(dim=64))


def test_packed_equals_unpacked():
  """Two sequences packed in one row (segment ids 1, 2) = each run alone."""
  params = models.init_params(CONFIG, jax.random.key(3))
  a, b = jnp.array([[5, 6, 7, 8]]), jnp.array([[9, 10, 11]])
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2]])
  logits, _ = models.forward(params, packed, config=CONFIG, segment_ids=seg)
  la, _ = models.forward(params, a, config=CONFIG)
  lb, _ = models.forward(params, b, config=CONFIG)
  np.testing.assert_allclose(logits[:, :4], la, atol=1e-5)
  np.testing.assert_allclose(logits[:, 4:], lb, atol=1e-5)
