"""LayerSkip early-exit loss and layer dropout (tokenrl/objectives/early_exit.py): an exit's loss
equals the CE of the model truncated to that many layers, rate 0 = no dropout, scales and
curricula by hand, finite gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenrl import models
from tokenrl.objectives import early_exit as ee
from tokenrl.objectives import token_logprobs

L = 3


def _model(family):
  # gemma3: embedding scale, (1 + w) norms, post-norms and a sliding-window layer (per-layer
  # window kinds must survive the 1-layer split).
  kw = dict(vocab_size=40, dim=32, num_layers=L, num_heads=4, num_kv_heads=2, mlp_dim=64,
            max_seq_len=64)
  config = models.tiny(family, **kw)
  if family == "gemma3":
    config = config.replace(sliding_window=3, local_layers=(True, False, True))
  params = models.init_params(config, jax.random.key(0))
  # Non-trivial final norm so "through the final norm" is really tested.
  params["final_norm"] = params["final_norm"] + 0.3 * jax.random.normal(
      jax.random.key(1), params["final_norm"].shape)
  return config, params


@pytest.fixture(scope="module", params=["qwen2", "gemma3"])
def model(request):
  return _model(request.param)


@pytest.fixture(scope="module")
def qwen2():
  return _model("qwen2")


def _batch(n=3, s=9, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, 40, (n, s)), jnp.int32)
  seg = np.ones((n, s), np.int32)
  seg[1, :3] = 0                     # a left-padded row
  mask = seg.copy()
  mask[:, :4] = 0                    # loss on the "answer" only
  return tokens, jnp.asarray(seg), jnp.asarray(mask)


def _truncated(params, config, ell):
  """The model made of the first `ell` layers (slicing the stacked L axis), same norm/head."""
  sub = {**params, "layers": jax.tree.map(lambda w: w[:ell], params["layers"])}
  local = config.local_layers[:ell] if config.local_layers else ()
  return sub, config.replace(num_layers=ell, local_layers=local)


def test_one_exit_equals_truncated_model_ce(model):
  config, params = model
  tokens, seg, mask = _batch()
  run = jax.jit(lambda p, s: ee.model_early_exit_loss(p, tokens, seg, mask, config=config,
                                                      scales=s))
  for ell in range(1, L + 1):
    scales = jnp.zeros(L).at[ell - 1].set(1.0)
    loss, stats = run(params, scales)
    sub, sub_config = _truncated(params, config, ell)
    logits, _ = jax.jit(lambda p, c=sub_config: models.forward(
        p, tokens[:, :-1], config=c, segment_ids=seg[:, :-1]))(sub)
    logp, _ = token_logprobs(logits, tokens[:, 1:])
    m = mask[:, 1:].astype(jnp.float32)
    want = -(logp * m).sum() / m.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["ce"][ell - 1], want, rtol=1e-5, atol=1e-6)
  # The last exit agrees with itself; agreement/accuracy are shares.
  assert float(stats["agreement"][-1]) == 1.0
  assert np.all((np.asarray(stats["accuracy"]) >= 0) & (np.asarray(stats["accuracy"]) <= 1))


def test_rate_zero_is_no_dropout(model):
  config, params = model
  tokens, seg, _ = _batch()
  fast = ee.layer_hidden_states(params, tokens, config=config, segment_ids=seg)
  none = ee.layer_hidden_states(params, tokens, config=config, segment_ids=seg,
                                drop_rates=np.zeros(L), rng=jax.random.key(3))
  np.testing.assert_array_equal(fast, none)
  # The layer-by-layer path (tiny rate that drops nothing under this key) equals the one pass.
  tiny = ee.layer_hidden_states(params, tokens, config=config, segment_ids=seg,
                                drop_rates=np.full(L, 1e-9, np.float32), rng=jax.random.key(3))
  np.testing.assert_allclose(tiny, fast, rtol=1e-5, atol=1e-5)
  # Traced zero rates (inside jit) take the layer-by-layer path: the same states.
  traced = jax.jit(lambda r: ee.layer_hidden_states(params, tokens, config=config, segment_ids=seg,
                                                    drop_rates=r, rng=jax.random.key(3)))
  np.testing.assert_allclose(traced(jnp.zeros(L)), fast, rtol=1e-5, atol=1e-5)
  # The last recorded state through the final norm + unembedding is the model's output.
  logits, _ = models.forward(params, tokens, config=config, segment_ids=seg)
  np.testing.assert_allclose(ee.exit_logits_fn(params, config)(fast[-1]), logits, rtol=1e-5,
                             atol=1e-5)


def test_rate_one_skips_every_layer_and_dropout_is_per_row(qwen2):
  config, params = qwen2
  tokens, seg, _ = _batch()
  emb = params["embed"][tokens] * config.embed_scale
  all_dropped = ee.layer_hidden_states(params, tokens, config=config, segment_ids=seg,
                                       drop_rates=np.ones(L), rng=jax.random.key(0))
  for l in range(L):
    np.testing.assert_allclose(all_dropped[l], emb, rtol=1e-6)
  # p = 0.5 on the last layer only: each row either equals the full pass or skips layer L.
  n = 64
  toks = jnp.tile(tokens[:1], (n, 1))
  segs = jnp.ones_like(toks)
  rates = np.asarray([0.0] * (L - 1) + [0.5], np.float32)
  out = ee.layer_hidden_states(params, toks, config=config, segment_ids=segs, drop_rates=rates,
                               rng=jax.random.key(5))
  full = ee.layer_hidden_states(params, toks, config=config, segment_ids=segs)
  kept = np.all(np.isclose(out[-1], full[-1], atol=1e-5), axis=(1, 2))
  skipped = np.all(np.isclose(out[-1], full[-2], atol=1e-5), axis=(1, 2))
  assert np.all(kept ^ skipped)
  assert 16 < kept.sum() < 48       # Binomial(64, 0.5): 4 standard deviations
  with pytest.raises(ValueError, match="rng"):
    ee.layer_hidden_states(params, tokens, config=config, drop_rates=rates)


def test_gradients_finite_with_dropout(qwen2):
  config, params = qwen2
  tokens, seg, mask = _batch()
  scales = jnp.asarray(ee.layer_loss_scales(L))
  rates = ee.layer_dropout_rates(L, 0.3)

  def f(p, r):   # rates traced (a jitted step's argument): the layer-by-layer path
    return ee.model_early_exit_loss(p, tokens, seg, mask, config=config, scales=scales,
                                    drop_rates=r, rng=jax.random.key(2))[0]

  loss, grads = jax.jit(jax.value_and_grad(f))(params, rates)
  assert np.isfinite(loss)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["layers"]))


def test_loss_scales_by_hand():
  # sum_l, L = 4, e_scale = 0.5: e = (1, 3, 6, 10) * (0.5, 0.5, 0.5, 1) = (0.5, 1.5, 3, 10) / 15
  np.testing.assert_allclose(ee.layer_loss_scales(4, e_scale=0.5),
                             np.asarray([0.5, 1.5, 3.0, 10.0]) / 15, rtol=1e-6)
  np.testing.assert_allclose(ee.layer_loss_scales(3, scale="one"), [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(ee.layer_loss_scales(3, scale="l"), [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)
  np.testing.assert_allclose(ee.layer_loss_scales(2, scale="inv_l"), [2 / 3, 1 / 3], rtol=1e-6)
  # Curriculum: disabled layers get 0, the rest renormalised: (1, 6) of sum_l over layers 1, 3.
  np.testing.assert_allclose(ee.layer_loss_scales(3, enabled=[True, False, True]),
                             [1 / 7, 0, 6 / 7], rtol=1e-6)
  # e_scale = 0: only the last layer trains (plain SFT).
  np.testing.assert_allclose(ee.layer_loss_scales(3, e_scale=0.0), [0, 0, 1])
  with pytest.raises(ValueError, match="scale"):
    ee.layer_loss_scales(3, scale="cubic")
  with pytest.raises(ValueError, match="enabled"):
    ee.layer_loss_scales(3, e_scale=0.0, enabled=[True, True, False])


def test_curricula_by_hand():
  np.testing.assert_array_equal(ee.curriculum(4, 7), [True] * 4)
  # Rotational R = 2: even layer indices at even steps, odd at odd; last always on.
  np.testing.assert_array_equal(ee.curriculum(5, 0, kind="rotational", rotation=2),
                                [True, False, True, False, True])
  np.testing.assert_array_equal(ee.curriculum(5, 3, kind="rotational", rotation=2),
                                [False, True, False, True, True])
  # Gradual, L = 4, T = 100, f = 0.5: index i on once t/T >= 0.5 (4 - i) / 4.
  g = lambda t: ee.curriculum(4, t, kind="gradual", total_steps=100, fraction=0.5).tolist()
  assert g(0) == [False, False, False, True]
  assert g(25) == [False, False, True, True]
  assert g(37) == [False, False, True, True]
  assert g(38) == [False, True, True, True]
  assert g(50) == [True, True, True, True]


def test_dropout_rates_by_hand():
  # exp, L = 3: p_max (2^{i/2} - 1) = 0.2 (0, 0.41421, 1)
  np.testing.assert_allclose(ee.layer_dropout_rates(3, 0.2), [0.0, 0.2 * (math.sqrt(2) - 1), 0.2],
                             rtol=1e-6)
  np.testing.assert_allclose(ee.layer_dropout_rates(3, 0.2, scale="linear"), [0, 0.1, 0.2],
                             rtol=1e-6)
  np.testing.assert_allclose(ee.layer_dropout_rates(1, 0.2), [0.2])
  assert not ee.layer_dropout_rates(4, 0.0).any()
  # exp schedule: S(0) = 0, S(T/2) = sqrt(2) - 1, S(T) = 1.
  r = lambda t: ee.layer_dropout_rates(2, 0.4, schedule="exp", step=t, total_steps=10)[-1]
  np.testing.assert_allclose([r(0), r(5), r(10)], [0.0, 0.4 * (math.sqrt(2) - 1), 0.4], rtol=1e-6)
  with pytest.raises(ValueError, match="p_max"):
    ee.layer_dropout_rates(3, 1.5)


def test_pure_loss_on_given_hidden_states():
  # Hand example: V = 2, identity "unembedding", one position per layer.
  # Layer 1 logits (0, 0): CE = log 2; layer 2 logits (0, log 3) with target 1: CE = log(4/3).
  hidden = jnp.asarray([[[[0.0, 0.0]]], [[[0.0, math.log(3.0)]]]])      # [L=2,N=1,S=1,D=2]
  loss, ce = ee.early_exit_loss(hidden, jnp.asarray([[1]]), jnp.ones((1, 1)),
                                jnp.asarray([0.25, 0.75]), exit_logits=lambda h: h)
  np.testing.assert_allclose(ce, [math.log(2), math.log(4 / 3)], rtol=1e-6)
  np.testing.assert_allclose(loss, 0.25 * math.log(2) + 0.75 * math.log(4 / 3), rtol=1e-6)
  with pytest.raises(ValueError, match="scales"):
    ee.early_exit_loss(hidden, jnp.asarray([[1]]), jnp.ones((1, 1)), jnp.ones(3),
                       exit_logits=lambda h: h)
