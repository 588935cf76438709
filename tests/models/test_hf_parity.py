"""Logits equal transformers' on tiny random checkpoints of every family (f32, 1e-4)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.models.hf_fixtures import CASES, build_hf_model, hf_logits  # noqa: E402
from tokenrl import models  # noqa: E402

pytestmark = pytest.mark.parity
ATOL = 1e-4


def _batch(vocab: int, pad_id: int, seed: int = 0):
  """3 rows of length 12: unpadded, 3 left pads, 7 left pads (longer than the window)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, size=(3, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  for row, pads in ((1, 3), (2, 7)):
    tokens[row, :pads] = pad_id
    mask[row, :pads] = 0
  return tokens, mask


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
  model = build_hf_model(request.param)
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path, safe_serialization=True)
  config, params = models.load_hf(path)
  return request.param, model, path, config, params


def _ours(params, tokens, config, segment_ids=None):
  logits, _ = jax.jit(models.forward, static_argnames="config")(
      params, jnp.asarray(tokens), config=config, segment_ids=segment_ids)
  return np.asarray(logits)


def test_logits_match_transformers(checkpoint):
  name, model, _, config, params = checkpoint
  tokens, mask = _batch(config.vocab_size, config.pad_id)
  expected = hf_logits(model, tokens, mask)
  got = _ours(params, tokens, config, segment_ids=jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], expected[valid], atol=ATOL, rtol=0, err_msg=name)
  # The unpadded row also matches a batch of one without any mask.
  alone = _ours(params, tokens[:1], config)
  np.testing.assert_allclose(alone[0], expected[0], atol=ATOL, rtol=0)


def _config_with_pad(path: str, folder, pad_token_id: int | None):
  """Our ModelConfig of checkpoint `path`, its config.json's pad_token_id removed (None) or set."""
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  hf.pop("pad_token_id", None)
  if pad_token_id is not None:
    hf["pad_token_id"] = pad_token_id
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f)
  return models.read_hf_config(str(folder))


@pytest.mark.parametrize("pad_token_id", [None, 5], ids=["no_pad_token_id", "pad_token_id_5"])
def test_rows_starting_with_the_pad_id_equal_transformers(checkpoint, pad_token_id, tmp_path):
  """A config.json without pad_token_id (Llama 3 base, many Qwen2) loads with pad_id 0, a real
  token; nor is a declared pad id ever padding by value. Rows that start with (or hold) the pad
  id equal transformers, unpadded without segment_ids and left-padded with explicit ones.
  (gemma3's own config declares pad_token_id 0: the no_pad_token_id case has that pad id.)"""
  name, model, path, _, params = checkpoint
  config = _config_with_pad(path, tmp_path, pad_token_id)
  pad = 0 if pad_token_id is None else pad_token_id
  assert config.pad_id == pad
  rng = np.random.default_rng(4)
  tokens = rng.integers(1, config.vocab_size, size=(3, 12)).astype(np.int32)
  tokens[:, 0] = pad                 # every row starts with the pad id
  tokens[1, :4] = pad                # several of them, like left padding would look
  tokens[2, 6] = pad                 # and once inside a row
  expected = hf_logits(model, tokens, np.ones_like(tokens))
  got = _ours(params, tokens, config)  # no segment_ids: every token is real
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0, err_msg=name)

  # Explicit left padding (slots filled with the pad id), the real rows still starting with it.
  lengths = np.array([12, 9, 5])
  mask = np.asarray(models.segment_ids_from_lengths(lengths, 12))
  padded = np.full_like(tokens, pad)
  for row, n in enumerate(lengths):
    padded[row, 12 - n:] = tokens[row, :n]
  expected = hf_logits(model, padded, mask)
  got = _ours(params, padded, config, segment_ids=jnp.asarray(mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], expected[valid], atol=ATOL, rtol=0, err_msg=name)


def test_incremental_decode_equals_full_forward(checkpoint):
  _, _, _, config, params = checkpoint
  tokens, mask = _batch(config.vocab_size, config.pad_id, seed=1)
  full = _ours(params, tokens, config, segment_ids=jnp.asarray(mask))
  step = jax.jit(models.forward, static_argnames="config")
  cache = models.init_cache(config, batch=3, length=16)
  prefill = 6  # prompt part, then one token at a time
  logits, cache = step(params, jnp.asarray(tokens[:, :prefill]), config=config,
                       segment_ids=jnp.asarray(mask[:, :prefill]), cache=cache)
  pieces = [np.asarray(logits)]
  for t in range(prefill, tokens.shape[1]):
    logits, cache = step(params, jnp.asarray(tokens[:, t:t + 1]), config=config,
                         segment_ids=jnp.asarray(mask[:, t:t + 1]), cache=cache)
    pieces.append(np.asarray(logits))
  incremental = np.concatenate(pieces, axis=1)
  valid = mask.astype(bool)
  np.testing.assert_allclose(incremental[valid], full[valid], atol=ATOL)
  assert int(cache["index"]) == tokens.shape[1]


def test_save_hf_roundtrip_through_transformers(checkpoint, tmp_path):
  import transformers
  name, model, _, config, params = checkpoint
  models.save_hf(str(tmp_path), config, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation="eager", dtype="float32").eval()
  tokens, mask = _batch(config.vocab_size, config.pad_id, seed=2)
  np.testing.assert_allclose(hf_logits(reloaded, tokens, mask), hf_logits(model, tokens, mask),
                             atol=1e-5, err_msg=name)
  config2, params2 = models.load_hf(str(tmp_path))
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bf16_load_keeps_f32_accumulation(checkpoint):
  _, model, path, config, _ = checkpoint
  _, params = models.load_hf(path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  tokens, mask = _batch(config.vocab_size, config.pad_id)
  got = _ours(params, tokens, config, segment_ids=jnp.asarray(mask))
  assert got.dtype == np.float32
  expected = hf_logits(model, tokens, mask)
  valid = mask.astype(bool)
  # bf16 weights: agreement to bf16 precision, not 1e-4.
  assert np.max(np.abs(got[valid] - expected[valid])) < 0.25
