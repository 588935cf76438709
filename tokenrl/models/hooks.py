"""Forward-pass hooks for analysis tools (spec analysis-and-auditing §0).

A `Hooks` value passed to `tokenrl.models.forward(..., hooks=...)` (or `run_with_hooks`, which
also returns the residual stream) edits one no-cache forward pass:

  attn_mask       bool [L,S,S] or [L,N,S,S]: ANDed with the causal + segment mask of layer l
                  (True = visible). Head-independent, so grouped-query attention is unaffected.
                  A query row left with no visible key attends uniformly (softmax of equal
                  MASK_VALUE scores), never NaN; keep the diagonal visible to avoid it.
  head_mask       [L,Q]: scales query head q's attention output in layer l before the output
                  projection (0 = head removed, 1 = unchanged).
  start_layer     int (static): layers < start_layer do not run; the residual entering layer
                  start_layer is `inputs_hidden` [N,S,D] (required when start_layer > 0; at 0 it
                  replaces the scaled embeddings). Positions (RoPE) are unchanged.
  residual_delta  [L,N,S,D]: added to the residual stream entering layer l (interventions,
                  activation patching: delta = patched - clean).
  record_residuals bool (static): `run_with_hooks` returns the residual stream [L+1,N,S,D]:
                  index l < L is what enters layer l (after its residual_delta), index L is the
                  last layer's output before the final norm; indices < start_layer are zeros.

The gradient w.r.t. one-hot input tokens needs no hook: pass `onehot @ params["embed"]` as
`input_embeddings` (see `onehot_embeddings`).

With hooks=None the forward pass is the ordinary one, unchanged; neutral hooks (all-True masks,
unit head mask, zero delta, start_layer 0) give bit-identical logits (tests/models/test_hooks.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Hooks:
  attn_mask: Any = None
  head_mask: Any = None
  inputs_hidden: Any = None
  residual_delta: Any = None
  start_layer: int = 0
  record_residuals: bool = False


jax.tree_util.register_dataclass(
    Hooks, data_fields=["attn_mask", "head_mask", "inputs_hidden", "residual_delta"],
    meta_fields=["start_layer", "record_residuals"])


@dataclasses.dataclass(frozen=True)
class HookedOutput:
  """logits [N,S,V] f32 (or final-normed hidden [N,S,D] with return_hidden), and the residual
  stream [L+1,N,S,D] when hooks.record_residuals (else None)."""
  logits: jax.Array
  residuals: jax.Array | None


jax.tree_util.register_dataclass(HookedOutput, data_fields=["logits", "residuals"], meta_fields=[])


def validate_hooks(hooks: Hooks, *, num_layers: int, num_heads: int, dim: int, n: int,
                   s: int) -> None:
  """ValueError naming the hook, the shape it has and the shape forward needs."""
  if not isinstance(hooks, Hooks):
    raise ValueError(f"hooks must be a tokenrl.models.Hooks, got {type(hooks).__name__}")
  want = {
      "attn_mask": [(num_layers, s, s), (num_layers, n, s, s)],
      "head_mask": [(num_layers, num_heads)],
      "inputs_hidden": [(n, s, dim)],
      "residual_delta": [(num_layers, n, s, dim)],
  }
  for name, shapes in want.items():
    value = getattr(hooks, name)
    if value is not None and tuple(value.shape) not in shapes:
      raise ValueError(f"hooks.{name} has shape {tuple(value.shape)}, expected "
                       f"{' or '.join(str(x) for x in shapes)} (L={num_layers}, N={n}, S={s}, "
                       f"Q={num_heads}, D={dim})")
  if hooks.attn_mask is not None and hooks.attn_mask.dtype != jnp.bool_:
    raise ValueError(f"hooks.attn_mask must be bool (True = visible), got {hooks.attn_mask.dtype}")
  if not isinstance(hooks.start_layer, int) or not 0 <= hooks.start_layer <= num_layers:
    raise ValueError(f"hooks.start_layer={hooks.start_layer!r} must be a Python int in "
                     f"[0, {num_layers}]")
  if hooks.start_layer > 0 and hooks.inputs_hidden is None:
    raise ValueError(f"hooks.start_layer={hooks.start_layer} skips layers, so hooks.inputs_hidden "
                     f"[N,S,D] (the residual entering layer {hooks.start_layer}) is required")


def onehot_embeddings(params: dict[str, Any], onehot: jax.Array) -> jax.Array:
  """onehot [N,S,V] (any float weights) @ embed [V,D] -> [N,S,D], for `input_embeddings`.

  jax.grad through it w.r.t. `onehot` is the gradient w.r.t. one-hot input tokens (GCG); with
  exact one-hot rows the forward equals the ordinary embedding lookup."""
  table = params["embed"]
  return jnp.einsum("nsv,vd->nsd", onehot.astype(table.dtype), table,
                    preferred_element_type=jnp.float32).astype(table.dtype)
