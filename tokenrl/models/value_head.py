"""A scalar value head on the decoder's final hidden state (PPO critic, POAD token critic, RTO).

    V[n,t] = h[n,t,:] · w + b          h = final-normed hidden state [N,T,D] (the unembedding
                                       input), w [D], b [] — all in f32

The head lives in the policy params as `params['value_head'] = {'w': [D], 'b': []}` (added by
`Method.init_params` at the start of the RL phase), so it is trained, checkpointed and restored
with the policy. The trunk is shared with the policy, as TRL's `AutoModelForCausalLMWithValueHead`
(the default of its PPO trainer) and OpenRLHF's critic-on-actor setups do: value-loss gradients
flow into the trunk unless a method detaches `h` (`detach_trunk=True` in the value methods).

`transformer.forward` reads only the keys it knows, so sampling / evaluation with params holding
'value_head' are unchanged; `save_hf` writes only the model's tensors (see `policy_params`).
Init follows OpenRLHF's value head: w ~ N(0, 1/(D+1)²), b = 0, so initial values are ~0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

KEY = "value_head"
# Same logical axes as the [D] norm vectors (replicated / cheap), for tokenrl.models.sharding.
LOGICAL_AXES = {"w": ("norm",), "b": ()}


def init_value_head(rng: jax.Array, dim: int, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
  """Value-head params {'w': [D], 'b': []} with w ~ N(0, 1/(D+1)²), b = 0 (OpenRLHF init)."""
  if not isinstance(dim, int) or dim < 1:
    raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
  w = jax.random.normal(rng, (dim,), jnp.float32) / (dim + 1)
  return {"w": w.astype(dtype), "b": jnp.zeros((), dtype)}


def values(head_params: dict[str, jax.Array], hidden: jax.Array) -> jax.Array:
  """V [N,T] f32 = hidden [N,T,D] · w + b (f32 accumulation)."""
  if not isinstance(head_params, dict) or set(head_params) != {"w", "b"}:
    raise ValueError(f"head_params: expected a dict with keys 'w' and 'b', got "
                     f"{sorted(head_params) if isinstance(head_params, dict) else type(head_params)}")
  w, b = head_params["w"], head_params["b"]
  if hidden.ndim != 3:
    raise ValueError(f"hidden: expected shape [N,T,D], got {hidden.shape}")
  if w.shape != (hidden.shape[-1],):
    raise ValueError(f"head_params['w']: expected shape ({hidden.shape[-1]},) (D of hidden), "
                     f"got {w.shape}")
  v = jnp.einsum("ntd,d->nt", hidden, w, preferred_element_type=jnp.float32)
  return v + b.astype(jnp.float32)


def add_value_head(params: dict[str, Any], dim: int, rng: jax.Array) -> dict[str, Any]:
  """params with params['value_head'] added (kept when already present, e.g. restored)."""
  if KEY in params:
    return params
  # f32 whatever the trunk's dtype: the head is D + 1 numbers and its targets are O(1) sums.
  return {**params, KEY: init_value_head(rng, dim)}


def policy_params(params: dict[str, Any]) -> dict[str, Any]:
  """params without the value head: what `save_hf` / `tokenrl export` should receive."""
  return {k: v for k, v in params.items() if k != KEY}
