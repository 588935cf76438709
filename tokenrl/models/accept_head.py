"""SpecDec++ acceptance-prediction head on a draft model's final hidden state.

    x ← x + SiLU(W x + b)      n residual blocks, d → d (f32)
    ĥ = softmax(Linear(d → 2)(x))[1]      P(the token at this position is accepted as a draft)

Input: the draft's final-normed hidden state [..., D] (the unembedding input) at the position
holding the drafted token, so the token itself is an input of what the head scores (Huang et
al., `specdec_pp/wrap_model.py`). The reference builds its n blocks by repeating one module, so
its blocks share weights; `shared_blocks=True` (default) reproduces that, False gives n
independent blocks (the same function class with n times the block parameters).

Params: {'blocks': {'w': [n|1, D, D], 'b': [n|1, D]}, 'out': {'w': [D, 2], 'b': [2]}}; the
leading block axis is 1 when the blocks are shared, and the number of times the shared block is
applied is then the static `num_blocks` argument of `accept_prob` (params hold arrays only, so
they pass through jit, optax and orbax unchanged).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def init_accept_head(rng: jax.Array, dim: int, *, num_blocks: int = 3, shared_blocks: bool = True,
                     dtype: Any = jnp.float32) -> dict[str, Any]:
  """Head params; block weights ~ N(0, 1/D) (PyTorch Linear's scale), output layer zero.

  The zero output layer starts every prediction at ĥ = 0.5, so an untrained head neither stops
  every draft at once nor never stops (the stop rule compares 1 − Πĥ with a threshold).
  """
  if not isinstance(dim, int) or dim < 1:
    raise ValueError(f"dim: expected an int >= 1, got {dim!r}")
  if not isinstance(num_blocks, int) or num_blocks < 0:
    raise ValueError(f"num_blocks: expected an int >= 0, got {num_blocks!r}")
  stored = 1 if shared_blocks and num_blocks > 0 else num_blocks
  w = jax.random.normal(rng, (stored, dim, dim), jnp.float32) / jnp.sqrt(dim)
  return {"blocks": {"w": w.astype(dtype), "b": jnp.zeros((stored, dim), dtype)},
          "out": {"w": jnp.zeros((dim, 2), dtype), "b": jnp.zeros((2,), dtype)}}


def accept_logits(params: dict[str, Any], hidden: jax.Array, *, num_blocks: int = 3) -> jax.Array:
  """Two-class logits [..., 2] f32 (class 1 = accepted) from hidden [..., D].

  num_blocks: how many residual blocks run. With unshared blocks it must equal the number the
  params hold; with shared blocks (one stored) the one block runs num_blocks times.
  """
  blocks = params["blocks"]
  stored, dim = blocks["w"].shape[0], blocks["w"].shape[1]
  if hidden.shape[-1] != dim:
    raise ValueError(f"hidden has last dim {hidden.shape[-1]}, the acceptance head expects {dim}")
  if stored > 1 and num_blocks != stored:
    raise ValueError(f"the acceptance head holds {stored} unshared blocks but num_blocks="
                     f"{num_blocks}: pass num_blocks={stored}")
  x = hidden.astype(jnp.float32)
  for i in range(num_blocks):
    j = 0 if stored == 1 else i
    w, b = blocks["w"][j].astype(jnp.float32), blocks["b"][j].astype(jnp.float32)
    x = x + jax.nn.silu(x @ w + b)
  return x @ params["out"]["w"].astype(jnp.float32) + params["out"]["b"].astype(jnp.float32)


def accept_prob(params: dict[str, Any], hidden: jax.Array, *, num_blocks: int = 3) -> jax.Array:
  """ĥ [...] f32: predicted probability that the token at each position is accepted."""
  return jax.nn.softmax(accept_logits(params, hidden, num_blocks=num_blocks), axis=-1)[..., 1]
