"""LayerSkip-style early-exit training: early-exit loss at every layer + layer dropout (spec §6).

Elhoushi et al., "LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding"
(ACL 2024); recipe as in torchtune `modules/early_exit_loss.py` and `modules/layer_dropout.py`.
It makes a model's first E layers + its own final norm and unembedding a usable drafter (the
`layers` draft of the speculative sampler, DEL's exits, spec §6(c): generic checkpoints give
poor early-exit drafts).

Shapes: L layers, N rows, S positions, D model dim, V vocab. Layer ℓ = 1..L (1-indexed in the
formulas; array index ℓ−1). h_ℓ [N,S,D] = the residual stream after layer ℓ (before the final
norm); exit ℓ's logits = unembed(final_norm(h_ℓ)) with the model's *shared* final norm and
unembedding (exit L is the ordinary output).

  early-exit loss   J = Σ_ℓ ẽ_ℓ · CE_ℓ,   CE_ℓ = Σ_{n,s} m·(−log softmax(exit_ℓ)[y]) / Σ m
  per-layer scale   ẽ_ℓ = C_ℓ·e_ℓ / Σ_i C_i·e_i,  e_ℓ = base(ℓ) · (e_scale if ℓ < L else 1)
                    base: one 1 | l ℓ | sum_l ℓ(ℓ+1)/2 (= Σ_{i≤ℓ} i, LayerSkip's default) |
                    sqrt_l √ℓ | inv_l 1/ℓ | inv_sqrt_l 1/√ℓ;  C_ℓ ∈ {0,1} the curriculum
  curriculum        none: all layers; rotational (C_rot,R): layer index i = ℓ−1 is on iff
                    i mod R = t mod R; gradual (C_grad): i is on once t/T ≥ f·(L−i)/L (deep
                    layers first, all on at t = f·T); the last layer is always on.
  layer dropout     row n skips layer ℓ (h_ℓ = h_{ℓ−1}, no rescaling) with probability
                    p_ℓ = p_max · D(ℓ) · S(t); D: uniform 1 | linear i/(L−1) |
                    exp e^{i·ln2/(L−1)} − 1 (0 at the first layer, 1 at the last: deeper
                    layers are dropped more); S(t): constant 1 | exp e^{t·ln2/T} − 1.

Everything is a pure function of arrays except `layer_hidden_states` / `model_early_exit_loss`,
which run a tokenrl decoder (`tokenrl.models`) to produce h [L,N,S,D].
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokenrl.models import layers as model_layers
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.models.hooks import Hooks

LOSS_SCALES = ("one", "l", "sum_l", "sqrt_l", "inv_l", "inv_sqrt_l")
CURRICULA = ("none", "rotational", "gradual")
DROPOUT_SCALES = ("uniform", "linear", "exp")
DROPOUT_SCHEDULES = ("constant", "exp")


def layer_loss_scales(num_layers: int, *, scale: str = "sum_l", e_scale: float = 1.0,
                      enabled: Any = None) -> np.ndarray:
  """ẽ [L] f32, summing to 1 over the enabled layers (module docstring).

  enabled: bool [L] (the curriculum C; None = all). A disabled layer gets 0.
  """
  if not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"num_layers: expected an int >= 1, got {num_layers!r}")
  if scale not in LOSS_SCALES:
    raise ValueError(f"scale: expected one of {LOSS_SCALES}, got {scale!r}")
  if not e_scale >= 0:
    raise ValueError(f"e_scale: expected >= 0, got {e_scale}")
  l = np.arange(1, num_layers + 1, dtype=np.float64)
  base = {"one": np.ones_like(l), "l": l, "sum_l": l * (l + 1) / 2, "sqrt_l": np.sqrt(l),
          "inv_l": 1 / l, "inv_sqrt_l": 1 / np.sqrt(l)}[scale]
  e = base * np.where(l < num_layers, e_scale, 1.0)
  on = np.ones(num_layers, bool) if enabled is None else np.asarray(enabled, bool)
  if on.shape != (num_layers,):
    raise ValueError(f"enabled has shape {on.shape}, expected ({num_layers},)")
  e = e * on
  total = e.sum()
  if total <= 0:
    raise ValueError(f"no enabled layer has a positive scale (enabled={on.tolist()}, "
                     f"e_scale={e_scale}): the loss would be 0/0")
  return (e / total).astype(np.float32)


def curriculum(num_layers: int, step: int, *, kind: str = "none", rotation: int = 2,
               total_steps: int = 1, fraction: float = 0.5) -> np.ndarray:
  """C [L] bool: which layers' early-exit losses are on at training step t = `step`.

  kind 'none' | 'rotational' (every `rotation`-th layer, the set shifting by one layer per
  step) | 'gradual' (over the first `fraction` of `total_steps`, from the last layer down).
  The last layer is always on (its loss is the model's own objective).
  """
  if kind not in CURRICULA:
    raise ValueError(f"kind: expected one of {CURRICULA}, got {kind!r}")
  i = np.arange(num_layers)
  if kind == "none":
    on = np.ones(num_layers, bool)
  elif kind == "rotational":
    if rotation < 1:
      raise ValueError(f"rotation: expected >= 1, got {rotation}")
    on = i % rotation == step % rotation
  else:
    if total_steps < 1 or not 0 < fraction <= 1:
      raise ValueError(f"gradual curriculum: expected total_steps >= 1 and fraction in (0, 1], "
                       f"got {total_steps}, {fraction}")
    on = step / total_steps >= fraction * (num_layers - i) / num_layers
  on[-1] = True
  return on


def layer_dropout_rates(num_layers: int, p_max: float, *, scale: str = "exp",
                        schedule: str = "constant", step: int = 0,
                        total_steps: int = 1) -> np.ndarray:
  """p [L] f32: per-row probability of skipping each layer at step t (module docstring).

  L = 1: D = 1 (the one layer is the last). schedule 'exp' ramps S(t) from 0 at t = 0 to 1 at
  t = total_steps (LayerSkip's continual-pretraining curriculum); 'constant' is S = 1.
  """
  if not 0.0 <= p_max <= 1.0:
    raise ValueError(f"p_max: expected in [0, 1], got {p_max}")
  if scale not in DROPOUT_SCALES:
    raise ValueError(f"scale: expected one of {DROPOUT_SCALES}, got {scale!r}")
  if schedule not in DROPOUT_SCHEDULES:
    raise ValueError(f"schedule: expected one of {DROPOUT_SCHEDULES}, got {schedule!r}")
  i = np.arange(num_layers, dtype=np.float64)
  period = num_layers - 1
  if period == 0:
    d = np.ones(1)
  else:
    d = {"uniform": np.ones_like(i), "linear": i / period,
         "exp": np.exp(i * math.log(2) / period) - 1}[scale]
  s = 1.0 if schedule == "constant" else math.exp(min(step, total_steps) * math.log(2)
                                                   / max(total_steps, 1)) - 1
  return np.clip(p_max * d * s, 0.0, 1.0).astype(np.float32)


def early_exit_stats(hidden: jax.Array, targets: jax.Array, mask: jax.Array, *,
                     exit_logits: Callable[[jax.Array], jax.Array], denominator: Any = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(ce [L], accuracy [L], agreement [L]) f32 of every exit, token means over mask.

  hidden [L,N,S,D]: h_ℓ (before the final norm); targets [N,S] int: the token each position
  predicts; mask [N,S] (1 = scored). exit_logits: h [N,S,D] -> logits [N,S,V] f32 (the shared
  final norm + unembedding). ce_ℓ = CE_ℓ of the module docstring; accuracy_ℓ = share of argmax
  exit_ℓ = target; agreement_ℓ = share of argmax exit_ℓ = argmax exit_L (the greedy acceptance
  rate of an ℓ-layer self-drafter, DEL's α_ℓ). Exits run one at a time (lax.map), so only one
  [N,S,V] of logits is live. denominator: the Σ m to divide by (default this batch's, at least
  1); a micro-batch passes the whole minibatch's so that summed micro-batches equal one batch.
  """
  if hidden.ndim != 4 or hidden.shape[1:3] != targets.shape or mask.shape != targets.shape:
    raise ValueError(f"hidden must be [L,N,S,D] with targets and mask [N,S]; got hidden "
                     f"{hidden.shape}, targets {targets.shape}, mask {mask.shape}")
  m = mask.astype(jnp.float32)
  denom = jnp.maximum(m.sum(), 1.0) if denominator is None else denominator
  final = jnp.argmax(exit_logits(hidden[-1]), axis=-1)

  def one(h):
    logits = exit_logits(h).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    pred = jnp.argmax(logits, axis=-1)
    return ((nll * m).sum() / denom, ((pred == targets) * m).sum() / denom,
            ((pred == final) * m).sum() / denom)

  return jax.lax.map(one, hidden)


def early_exit_loss(hidden: jax.Array, targets: jax.Array, mask: jax.Array, scales: jax.Array, *,
                    exit_logits: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(J scalar, CE [L]): J = Σ_ℓ scales_ℓ·CE_ℓ (scales ẽ [L], e.g. `layer_loss_scales`)."""
  if scales.shape != hidden.shape[:1]:
    raise ValueError(f"scales has shape {scales.shape}, expected ({hidden.shape[0]},) (L)")
  ce, _, _ = early_exit_stats(hidden, targets, mask, exit_logits=exit_logits)
  return (jnp.asarray(scales, jnp.float32) * ce).sum(), ce


def exit_logits_fn(params: Any, config: ModelConfig) -> Callable[[jax.Array], jax.Array]:
  """h [...,D] -> logits [...,V] f32 through the model's final norm and unembedding."""
  def fn(h):
    h = model_layers.rms_norm(h, params["final_norm"], eps=config.norm_eps,
                              plus_one=config.norm_plus_one)
    return transformer.unembed(params, h, config=config)
  return fn


def _one_layer(params: Any, config: ModelConfig, l: int) -> tuple[Any, ModelConfig]:
  """Params and config of the 1-layer decoder made of layer l (its own window kind)."""
  sub = {**params, "layers": jax.tree.map(lambda w: w[l:l + 1], params["layers"])}
  local = (config.local_layers[l],) if config.local_layers else ()
  return sub, config.replace(num_layers=1, local_layers=local)


def layer_hidden_states(params: Any, tokens: jax.Array, *, config: ModelConfig,
                        segment_ids: jax.Array | None = None, drop_rates: Any = None,
                        rng: jax.Array | None = None, remat: bool = False) -> jax.Array:
  """h [L,N,S,D]: the residual stream after each layer (before the final norm), index ℓ−1.

  drop_rates: p [L] (`layer_dropout_rates`; may be traced, e.g. a jitted step's argument whose
  values follow a schedule) or None. None, or a concrete all-zero array: one ordinary forward
  (`run_with_hooks` with record_residuals). Otherwise the layers run one at a time, each as a
  1-layer decoder fed the incoming residual (Hooks.inputs_hidden), and row n keeps its input
  unchanged past layer ℓ with probability p_ℓ (Bernoulli per row and layer from
  fold_in(rng, ℓ)). Every row still computes every layer (the select discards it): this
  is a training regulariser, not a speed-up. Positions and padding come from segment_ids as in
  `forward`, so a 1-layer pass equals the same layer inside the full pass.
  """
  n_layers = config.num_layers
  rates = None if drop_rates is None else jnp.asarray(drop_rates, jnp.float32)
  if rates is not None and rates.shape != (n_layers,):
    raise ValueError(f"drop_rates has shape {rates.shape}, expected ({n_layers},) (L)")
  if rates is None or (not isinstance(rates, jax.core.Tracer) and not np.asarray(rates).any()):
    out = transformer.run_with_hooks(params, tokens, config=config, segment_ids=segment_ids,
                                     hooks=Hooks(record_residuals=True), return_hidden=True,
                                     remat=remat)
    return out.residuals[1:]
  if rng is None:
    raise ValueError("layer dropout (drop_rates > 0) needs rng")
  # The residual entering layer 0: the (scaled) token embeddings, as transformer.forward.
  x = params["embed"][tokens]
  if config.embed_scale != 1.0:
    x = x * jnp.asarray(config.embed_scale, x.dtype)
  outs = []
  for l in range(n_layers):
    sub, sub_config = _one_layer(params, config, l)
    y = transformer.run_with_hooks(sub, tokens, config=sub_config, segment_ids=segment_ids,
                                   hooks=Hooks(inputs_hidden=x, record_residuals=True),
                                   return_hidden=True, remat=remat).residuals[-1]
    skip = jax.random.uniform(jax.random.fold_in(rng, l), (tokens.shape[0],)) < rates[l]
    x = jnp.where(skip[:, None, None], x, y)
    outs.append(x)
  return jnp.stack(outs)


def model_early_exit_loss(params: Any, tokens: jax.Array, segment_ids: jax.Array,
                          loss_mask: jax.Array, *, config: ModelConfig, scales: jax.Array,
                          drop_rates: Any = None, rng: jax.Array | None = None,
                          remat: bool = False, denominator: Any = None
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(J, {'ce','accuracy','agreement'} [L]) of next-token prediction on a sequence batch.

  tokens / segment_ids / loss_mask [N,S] as an SFT batch: position s predicts tokens[:, s+1]
  and is scored where loss_mask[:, s+1] = 1 (tokenrl.train.steps.make_sft_step's convention, so
  a one-hot scale on layer L is exactly the SFT loss). scales ẽ [L]; drop_rates / rng as
  `layer_hidden_states`; denominator as `early_exit_stats`.
  """
  hidden = layer_hidden_states(params, tokens[:, :-1], config=config,
                               segment_ids=segment_ids[:, :-1], drop_rates=drop_rates, rng=rng,
                               remat=remat)
  if scales.shape != hidden.shape[:1]:
    raise ValueError(f"scales has shape {scales.shape}, expected ({hidden.shape[0]},) (L)")
  ce, acc, agree = early_exit_stats(hidden, tokens[:, 1:], loss_mask[:, 1:],
                                    exit_logits=exit_logits_fn(params, config),
                                    denominator=denominator)
  return (jnp.asarray(scales, jnp.float32) * ce).sum(), {"ce": ce, "accuracy": acc,
                                                         "agreement": agree}
