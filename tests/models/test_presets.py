"""Presets have the published parameter counts (eval_shape only, nothing allocated)."""

import jax
import numpy as np
import pytest

from tokenrl import models

# Totals of the public checkpoints (tied embeddings counted once). The Qwen3 and Gemma 3 4B
# cards give rounded totals and non-embedding counts; those are checked to their rounding.
PUBLISHED_EXACT = {
    "llama3.2-1b": 1_235_814_400,
    "llama3.1-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "gemma3-1b": 999_885_952,
}
PUBLISHED_ROUNDED = {  # name -> (total in B, non-embedding in B, decimals)
    "qwen3-0.6b": (0.6, 0.44, 2),
    "qwen3-1.7b": (1.7, 1.4, 1),
    "qwen3-8b": (8.2, 6.95, 2),
    "gemma3-4b": (3.9, 3.2, 1),  # language model only (the 4B card counts the vision tower)
}


def _count(config):
  shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.key(0)))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  embedding = sum(int(np.prod(shapes[k].shape)) for k in ("embed", "lm_head") if k in shapes)
  return total, embedding


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_exact_parameter_counts(name):
  assert _count(models.get_preset(name))[0] == PUBLISHED_EXACT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_ROUNDED))
def test_rounded_parameter_counts(name):
  total, embedding = _count(models.get_preset(name))
  want_total, want_non_embedding, decimals = PUBLISHED_ROUNDED[name]
  assert round(total / 1e9, 1) == want_total
  assert round((total - embedding) / 1e9, decimals) == want_non_embedding


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="llama9"):
    models.get_preset("llama9")


def test_presets_roundtrip_through_hf_config():
  for name, config in models.PRESETS.items():
    assert models.config_from_hf(models.config_to_hf(config)) == config, name
