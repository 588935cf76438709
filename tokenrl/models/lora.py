"""LoRA adapters as a pure pytree transform of the transformer params (Hu et al., arXiv 2106.09685).

For each targeted projection W of tokenrl/models/transformer.py (stacked over the L layers),

  W' = W + (α/r) · reshape(A · B),   A [L,I,r], B [L,r,O],

where I is the product of W's input dims and O of its output dims (the dims `_dense` contracts):

  q [L,D,Q,H]: I=D, O=Q·H     k,v [L,D,K,H]: I=D, O=K·H     o [L,Q,H,D]: I=Q·H, O=D
  gate,up [L,D,F]: I=D, O=F   down [L,F,D]: I=F, O=D

`lora_params` is {target: {"a": [L,I,r], "b": [L,r,O]}}. A ~ N(0, 1/I), B = 0, so the adapted
model starts equal to the base model. `apply_lora` is meant to run inside the jitted loss: the
adapted weights keep the stacked [L,...] layout (the layer scan is unchanged), and with
`freeze_base=True` (default) the base weights pass through `stop_gradient`, so gradients reach
only `lora_params`. `merge_lora` is the same sum for export (e.g. `save_hf(path, config,
merge_lora(...))`). Trainable parameters: Σ_targets L·r·(I + O) (`lora_param_count`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from tokenrl.models.config import ModelConfig

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Number of leading (input) dims of each projection after the L axis; the rest are outputs.
_INPUT_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


def _io(shape: Sequence[int], target: str) -> tuple[int, int]:
  """(I, O): flattened input and output sizes of a stacked projection of `shape` [L,...]."""
  n_in = _INPUT_DIMS[target]
  return math.prod(shape[1:1 + n_in]), math.prod(shape[1 + n_in:])


def _check_targets(targets: Sequence[str]) -> tuple[str, ...]:
  targets = tuple(targets)
  bad = [t for t in targets if t not in TARGETS]
  if bad or not targets or len(set(targets)) != len(targets):
    raise ValueError(f"targets: expected distinct names among {TARGETS}, got {targets}")
  return targets


def init_lora(params: dict[str, Any], config: ModelConfig, rng: jax.Array, *, rank: int,
              alpha: float, targets: Sequence[str] = TARGETS) -> dict[str, Any]:
  """LoRA params for `targets`: {t: {"a": [L,I,r] ~ N(0, 1/I), "b": zeros [L,r,O]}}.

  Args:
    params: transformer params (stacked layers); only their shapes and dtype are read.
    config: the ModelConfig of `params` (checked against the stacked layer count).
    rng: PRNG key. rank: r >= 1. alpha: α > 0 (the delta is scaled by α/r).
    targets: projection names among ('q','k','v','o','gate','up','down').
  """
  if rank < 1:
    raise ValueError(f"rank: expected >= 1, got {rank}")
  if not alpha > 0:
    raise ValueError(f"alpha: expected > 0, got {alpha}")
  targets = _check_targets(targets)
  layers = params["layers"]
  if isinstance(layers, (tuple, list)):
    raise ValueError("params['layers'] is split per layer (split_layers); LoRA needs the stacked "
                     "[L,...] layers")
  out = {}
  for i, t in enumerate(targets):
    shape = layers[t].shape
    if shape[0] != config.num_layers:
      raise ValueError(f"params['layers'][{t!r}] has shape {shape}, expected L="
                       f"{config.num_layers} stacked layers")
    n_in, n_out = _io(shape, t)
    dtype = layers[t].dtype
    a = jax.random.normal(jax.random.fold_in(rng, i), (shape[0], n_in, rank)) * n_in ** -0.5
    out[t] = {"a": a.astype(dtype), "b": jnp.zeros((shape[0], rank, n_out), dtype)}
  return out


def lora_delta(lora: dict[str, jax.Array], shape: Sequence[int], *, alpha: float,
               rank: int) -> jax.Array:
  """ΔW = (α/r) · A·B reshaped to the projection `shape` [L,...] (f32 accumulation)."""
  a, b = lora["a"], lora["b"]
  if a.ndim != 3 or b.ndim != 3 or a.shape[2] != rank or b.shape[1] != rank:
    raise ValueError(f"lora a/b: expected [L,I,{rank}] and [L,{rank},O], got {a.shape} and "
                     f"{b.shape}")
  if a.shape[0] != shape[0] or b.shape[0] != shape[0] or a.shape[1] * b.shape[2] != math.prod(shape[1:]):
    raise ValueError(f"lora a/b shapes {a.shape}, {b.shape} do not match the weight {tuple(shape)}")
  delta = jnp.einsum("lir,lro->lio", a, b, preferred_element_type=jnp.float32)
  return (delta * (alpha / rank)).reshape(shape)


def apply_lora(params: dict[str, Any], lora_params: dict[str, Any], *, alpha: float, rank: int,
               freeze_base: bool = True) -> dict[str, Any]:
  """params with W' = W + (α/r)·A·B on every projection in `lora_params` (others unchanged).

  freeze_base=True applies stop_gradient to the whole base pytree, so differentiating a loss
  of the result gives zero gradient for `params` and the LoRA gradients only. Use it inside
  the jitted loss (the adapted weights are rebuilt each step; nothing is stored).
  Returns a new dict; `params` is not modified.
  """
  if not alpha > 0 or rank < 1:
    raise ValueError(f"alpha must be > 0 and rank >= 1, got alpha={alpha}, rank={rank}")
  _check_targets(list(lora_params))
  base = jax.lax.stop_gradient(params) if freeze_base else params
  layers = dict(base["layers"])
  for t, lo in lora_params.items():
    w = layers[t]
    layers[t] = (w.astype(jnp.float32) + lora_delta(lo, w.shape, alpha=alpha, rank=rank)).astype(w.dtype)
  return {**base, "layers": layers}


def merge_lora(params: dict[str, Any], lora_params: dict[str, Any], *, alpha: float,
               rank: int) -> dict[str, Any]:
  """The adapted params W + (α/r)·A·B as a plain params pytree (for export / serving)."""
  return apply_lora(params, lora_params, alpha=alpha, rank=rank, freeze_base=False)


def lora_param_count(config: ModelConfig, *, rank: int,
                     targets: Sequence[str] = TARGETS) -> int:
  """Σ_targets L·r·(I + O) trainable parameters (I, O as in the module docstring)."""
  if rank < 1:
    raise ValueError(f"rank: expected >= 1, got {rank}")
  targets = _check_targets(targets)
  c = config
  io = {"q": (c.dim, c.num_heads * c.head_dim), "k": (c.dim, c.num_kv_heads * c.head_dim),
        "v": (c.dim, c.num_kv_heads * c.head_dim), "o": (c.num_heads * c.head_dim, c.dim),
        "gate": (c.dim, c.mlp_dim), "up": (c.dim, c.mlp_dim), "down": (c.mlp_dim, c.dim)}
  return sum(c.num_layers * rank * sum(io[t]) for t in targets)
