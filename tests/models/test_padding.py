"""Padding is only what the caller says (segment ids, 0 = pad), never a token value: a pad id
can be a real token (a config.json without pad_token_id loads with pad_id 0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models

CONFIG = models.tiny("llama", vocab_size=24, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                     pad_id=0)
PARAMS = models.init_params(CONFIG, jax.random.key(0))
_FORWARD = jax.jit(models.forward, static_argnames="config")


def test_no_segment_ids_means_every_token_is_real():
  # Rows starting with (and made of) the pad id: without segment_ids they are real tokens.
  tokens = jnp.array([[0, 0, 5, 6, 7], [0, 9, 0, 3, 4], [0, 0, 0, 0, 0]])
  default, _ = _FORWARD(PARAMS, tokens, config=CONFIG)
  explicit, _ = _FORWARD(PARAMS, tokens, config=CONFIG, segment_ids=jnp.ones_like(tokens))
  np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))
  # Each row equals that row alone (no cross-row effect, positions 0..S-1).
  for row in range(3):
    alone, _ = _FORWARD(PARAMS, tokens[row:row + 1], config=CONFIG)
    np.testing.assert_allclose(np.asarray(default[row]), np.asarray(alone[0]), atol=1e-5)


def test_segment_ids_from_lengths_values():
  got = np.asarray(models.segment_ids_from_lengths(np.array([3, 0, 5]), 5))
  np.testing.assert_array_equal(got, [[0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
  assert got.dtype == np.int32
  traced = jax.jit(models.segment_ids_from_lengths, static_argnums=1)(jnp.array([2, 4]), 4)
  np.testing.assert_array_equal(np.asarray(traced), [[0, 0, 1, 1], [1, 1, 1, 1]])


def test_left_padded_rows_equal_the_row_alone():
  # Real rows start with the pad id; the padded slots are filled with it too.
  rows = [[0, 7, 8, 9], [0, 5], [3, 0, 4, 0, 6, 1]]
  width = 8
  lengths = np.array([len(r) for r in rows])
  seg = models.segment_ids_from_lengths(lengths, width)
  tokens = np.full((3, width), CONFIG.pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, width - len(r):] = r
  logits, _ = _FORWARD(PARAMS, jnp.asarray(tokens), config=CONFIG, segment_ids=seg)
  for i, r in enumerate(rows):
    alone, _ = _FORWARD(PARAMS, jnp.asarray([r]), config=CONFIG)
    np.testing.assert_allclose(np.asarray(logits[i, width - len(r):]), np.asarray(alone[0]),
                               atol=1e-5)


def test_segment_ids_from_lengths_bad_input():
  with pytest.raises(ValueError, match=r"rows \[1\] are \[6\], outside \[0, width=5\]"):
    models.segment_ids_from_lengths(np.array([2, 6]), 5)
  with pytest.raises(ValueError, match=r"rows \[0\] are \[-1\]"):
    models.segment_ids_from_lengths(np.array([-1]), 5)
  with pytest.raises(ValueError, match=r"lengths must be an int array \[N\]"):
    models.segment_ids_from_lengths(np.array([[2]]), 5)


@pytest.mark.parametrize("declared", [None, 0, 5])
def test_pad_token_id_round_trips_without_being_invented(declared):
  # A config.json without pad_token_id loads with pad_id 0 (a fill value only) and is written
  # back without one: save_hf must not declare token 0 to be padding for other libraries.
  hf = models.config_to_hf(models.tiny("llama", vocab_size=24))
  hf.pop("pad_token_id")
  if declared is not None:
    hf["pad_token_id"] = declared
  config = models.config_from_hf(hf)
  assert config.pad_id == (declared or 0)
  assert models.config_to_hf(config)["pad_token_id"] == declared
  assert models.config_from_hf(models.config_to_hf(config)) == config
