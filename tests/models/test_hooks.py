"""Forward-pass hooks (tokenrl/models/hooks.py): neutral hooks change nothing, bit for bit, on
every family; each hook does what it says, checked against a second way of computing it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.models import Hooks, run_with_hooks

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
N, S = 2, 9


def _model(family, **kw):
  # gemma3: 3 layers so both local (window 8 < S) and global layers are exercised.
  config = models.tiny(family, vocab_size=40, dim=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
                       num_layers=3, **kw)
  params = models.init_params(config, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (N, S), 0, config.vocab_size)
  return config, params, tokens


def _neutral(config, record=True):
  L, Q, D = config.num_layers, config.num_heads, config.dim
  return Hooks(attn_mask=jnp.ones((L, N, S, S), bool), head_mask=jnp.ones((L, Q)),
               residual_delta=jnp.zeros((L, N, S, D)), record_residuals=record)


@pytest.mark.parametrize("family", FAMILIES)
def test_neutral_hooks_are_bit_identical(family):
  config, params, tokens = _model(family)
  plain = jax.jit(models.forward, static_argnames="config")
  hooked = jax.jit(run_with_hooks, static_argnames="config")
  ref, _ = plain(params, tokens, config=config)
  out = hooked(params, tokens, config=config, hooks=_neutral(config))
  np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(ref))
  # forward(hooks=...) is the same pass; the [L,S,S] mask form broadcasts over rows.
  shared = dataclasses.replace(_neutral(config, record=False),
                               attn_mask=jnp.ones((config.num_layers, S, S), bool))
  via_forward, cache = plain(params, tokens, config=config, hooks=shared)
  np.testing.assert_array_equal(np.asarray(via_forward), np.asarray(ref))
  assert cache is None and out.residuals.shape == (config.num_layers + 1, N, S, config.dim)
  # Residual 0 is the (scaled) embedding; the final norm of residual L gives the logits.
  emb = params["embed"][tokens] * config.embed_scale
  np.testing.assert_allclose(np.asarray(out.residuals[0]), np.asarray(emb), rtol=1e-6)


@pytest.mark.parametrize("family", ("llama", "gemma3"))
def test_start_layer_resumes_from_the_recorded_residual(family):
  config, params, tokens = _model(family)
  full = run_with_hooks(params, tokens, config=config, hooks=Hooks(record_residuals=True))
  for start in range(config.num_layers + 1):
    part = run_with_hooks(params, tokens, config=config, hooks=Hooks(
        start_layer=start, inputs_hidden=full.residuals[start], record_residuals=True))
    np.testing.assert_allclose(np.asarray(part.logits), np.asarray(full.logits), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(part.residuals[:start]), 0.0)
    np.testing.assert_allclose(np.asarray(part.residuals[start:]),
                               np.asarray(full.residuals[start:]), atol=2e-5)


def test_self_only_attention_equals_each_token_alone():
  # With every layer's mask edited to the diagonal, row i sees only itself: it equals the
  # model run on token i alone at its own RoPE position i.
  config, params, tokens = _model("qwen3")
  eye = jnp.broadcast_to(jnp.eye(S, dtype=bool), (config.num_layers, S, S))
  out, _ = models.forward(params, tokens, config=config, hooks=Hooks(attn_mask=eye))
  for i in (0, 4, S - 1):
    alone, _ = models.forward(params, tokens[:, i:i + 1], config=config,
                              positions=jnp.full((N, 1), i))
    np.testing.assert_allclose(np.asarray(out[:, i]), np.asarray(alone[:, 0]), atol=2e-5)


def test_mask_edit_in_one_layer_only_moves_rows_that_lose_keys():
  config, params, tokens = _model("llama")
  mask = np.ones((config.num_layers, S, S), bool)
  mask[1, 6, 2] = False  # layer 1: query 6 no longer sees key 2
  ref, _ = models.forward(params, tokens, config=config)
  out, _ = models.forward(params, tokens, config=config, hooks=Hooks(attn_mask=jnp.asarray(mask)))
  diff = np.abs(np.asarray(out - ref)).max(axis=(0, 2))
  assert (diff[:6] == 0).all() and diff[6] > 1e-4
  # Later rows see query 6's changed residual only from layer 2 on (through keys), so they move.
  assert (diff[7:] > 0).all()


def test_zero_head_mask_equals_zeroed_output_projection():
  config, params, tokens = _model("qwen2")
  head_mask = np.ones((config.num_layers, config.num_heads), np.float32)
  head_mask[0, 1] = 0.0
  head_mask[2, 3] = 0.0
  out, _ = models.forward(params, tokens, config=config, hooks=Hooks(head_mask=jnp.asarray(head_mask)))
  o = np.asarray(params["layers"]["o"]).copy()  # [L,Q,H,D]
  o[0, 1] = 0.0
  o[2, 3] = 0.0
  pruned = {**params, "layers": {**params["layers"], "o": jnp.asarray(o)}}
  ref, _ = models.forward(pruned, tokens, config=config)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_residual_delta_equals_restarting_from_the_edited_residual():
  config, params, tokens = _model("llama")
  L, D = config.num_layers, config.dim
  delta = np.zeros((L, N, S, D), np.float32)
  delta[1] = np.asarray(jax.random.normal(jax.random.key(3), (N, S, D)))
  out = run_with_hooks(params, tokens, config=config,
                       hooks=Hooks(residual_delta=jnp.asarray(delta), record_residuals=True))
  clean = run_with_hooks(params, tokens, config=config, hooks=Hooks(record_residuals=True))
  restarted, _ = models.forward(params, tokens, config=config, hooks=Hooks(
      start_layer=1, inputs_hidden=clean.residuals[1] + delta[1]))
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(restarted), atol=2e-5)
  # The recorded residual entering layer 1 includes its delta.
  np.testing.assert_allclose(np.asarray(out.residuals[1]), np.asarray(clean.residuals[1] + delta[1]),
                             atol=1e-6)


def test_gradient_wrt_onehot_tokens_equals_finite_differences():
  config, params, tokens = _model("gemma3")
  onehot = jax.nn.one_hot(tokens, config.vocab_size, dtype=jnp.float32)

  def loss(oh):
    logits, _ = models.forward(params, tokens, config=config,
                               input_embeddings=models.onehot_embeddings(params, oh))
    return jax.nn.log_softmax(logits[:, -1])[:, 5].sum()

  base, _ = models.forward(params, tokens, config=config)
  np.testing.assert_allclose(float(loss(onehot)),
                             float(jax.nn.log_softmax(base[:, -1])[:, 5].sum()), rtol=1e-6)
  grad = jax.grad(loss)(onehot)
  f64 = lambda oh: float(loss(oh))
  eps = 1e-2
  for (n, s, v) in [(0, 2, 7), (1, 8, 0), (0, 8, int(tokens[0, 8]))]:
    e = jnp.zeros_like(onehot).at[n, s, v].set(eps)
    fd = (f64(onehot + e) - f64(onehot - e)) / (2 * eps)
    np.testing.assert_allclose(float(grad[n, s, v]), fd, rtol=2e-2, atol=2e-4)


def test_hooks_pass_through_jit_as_a_pytree_and_differentiate():
  config, params, tokens = _model("llama")

  @jax.jit
  def f(hooks):
    return models.forward(params, tokens, config=config, hooks=hooks)[0][:, -1, 3].sum()

  head_mask = jnp.ones((config.num_layers, config.num_heads))
  g = jax.grad(lambda hm: f(Hooks(head_mask=hm)))(head_mask)
  assert g.shape == head_mask.shape and np.abs(np.asarray(g)).max() > 0
  eps = 1e-3
  fd = (f(Hooks(head_mask=head_mask.at[1, 2].add(eps)))
        - f(Hooks(head_mask=head_mask.at[1, 2].add(-eps)))) / (2 * eps)
  np.testing.assert_allclose(float(g[1, 2]), float(fd), rtol=2e-2, atol=1e-4)


def test_bad_hooks_are_named():
  config, params, tokens = _model("llama")
  with pytest.raises(ValueError, match=r"hooks.attn_mask has shape \(3, 9, 8\), expected"):
    models.forward(params, tokens, config=config, hooks=Hooks(attn_mask=jnp.ones((3, 9, 8), bool)))
  with pytest.raises(ValueError, match="hooks.attn_mask must be bool"):
    models.forward(params, tokens, config=config, hooks=Hooks(attn_mask=jnp.ones((3, 9, 9))))
  with pytest.raises(ValueError, match=r"hooks.head_mask has shape \(3, 2\)"):
    models.forward(params, tokens, config=config, hooks=Hooks(head_mask=jnp.ones((3, 2))))
  with pytest.raises(ValueError, match="inputs_hidden .* is required"):
    models.forward(params, tokens, config=config, hooks=Hooks(start_layer=1))
  with pytest.raises(ValueError, match=r"start_layer=4 must be a Python int in \[0, 3\]"):
    models.forward(params, tokens, config=config,
                   hooks=Hooks(start_layer=4, inputs_hidden=jnp.zeros((N, S, config.dim))))
  cache = models.init_cache(config, N, 16)
  with pytest.raises(ValueError, match="no-cache forward pass only"):
    models.forward(params, tokens, config=config, cache=cache, hooks=Hooks())
