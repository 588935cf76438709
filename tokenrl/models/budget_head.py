"""Budget guidance's remaining-length predictor (Li et al., spec decoding-and-test-time §9).

For every candidate next token v the head outputs a Gamma law over z = log(L_rem + 1), L_rem
the thinking tokens left counting v itself (1 at the last thinking token):

    α = softplus(h W_α + b_α),  λ = softplus(h W_λ + b_λ)        [..., V] each (shape, rate)

h = the policy's final-normed hidden state [..., D] at the position that predicts v. This is the
reference's `encoder_type="linear"` variant; its default BERT encoder over the stack of all
layers' hidden states is not built (a 12-layer BERT dwarfs the embedded-task models; the linear
head is the variant the reference ships for small budgets of compute).

Params: {'w_alpha': [D,V], 'b_alpha': [V], 'w_rate': [D,V], 'b_rate': [V]} f32. The weights
start at zero and the biases at α = 20, λ = 12 for every token: an untrained head gives every
candidate the same law, and guidance with equal laws is plain sampling (spec §9e.2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INIT_ALPHA, INIT_RATE = 20.0, 12.0


def _softplus_inverse(y: float) -> float:
  return float(y + np.log(-np.expm1(-y)))


def init_budget_head(dim: int, vocab_size: int) -> dict[str, jax.Array]:
  """Zero weights, biases at (INIT_ALPHA, INIT_RATE): see the module docstring."""
  for name, v in (("dim", dim), ("vocab_size", vocab_size)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
  return {"w_alpha": jnp.zeros((dim, vocab_size), jnp.float32),
          "b_alpha": jnp.full((vocab_size,), _softplus_inverse(INIT_ALPHA), jnp.float32),
          "w_rate": jnp.zeros((dim, vocab_size), jnp.float32),
          "b_rate": jnp.full((vocab_size,), _softplus_inverse(INIT_RATE), jnp.float32)}


def gamma_params(head: dict[str, Any], hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(α, λ) f32 [..., V] from hidden [..., D]."""
  dim = head["w_alpha"].shape[0]
  if hidden.shape[-1] != dim:
    raise ValueError(f"hidden has last dim {hidden.shape[-1]}; the budget head expects {dim}")
  h = hidden.astype(jnp.float32)
  alpha = jax.nn.softplus(h @ head["w_alpha"] + head["b_alpha"])
  rate = jax.nn.softplus(h @ head["w_rate"] + head["b_rate"])
  return alpha, rate


def gamma_nll(alpha: jax.Array, rate: jax.Array, z: jax.Array) -> jax.Array:
  """−log Gamma(z; shape α, rate λ) = −[α log λ − lnΓ(α) + (α − 1) log z − λ z], elementwise."""
  return -(alpha * jnp.log(rate) - jax.scipy.special.gammaln(alpha)
           + (alpha - 1.0) * jnp.log(z) - rate * z)


def remaining_think_lengths(tokens: Any, mask: Any, think_end_id: int) -> np.ndarray:
  """Labels L_rem int32 [N,T] for completion tokens [N,T]: M − j at thinking token j (0-based)
  of a row whose first `think_end_id` is at column M, so 1 at the last thinking token; 0 (no
  label) on and after the delimiter, on masked slots, and on every slot of a row that never
  ends its thought (its remaining length is unknown)."""
  tokens, mask = np.asarray(tokens), np.asarray(mask) > 0
  n, t = tokens.shape
  is_end = (tokens == think_end_id) & mask
  has_end = is_end.any(axis=1)
  end = np.where(has_end, is_end.argmax(axis=1), 0)  # M per row
  cols = np.arange(t)[None, :]
  labels = end[:, None] - cols
  return np.where(has_end[:, None] & (cols < end[:, None]) & mask, labels, 0).astype(np.int32)


def budget_head_loss(head: dict[str, Any], hidden: jax.Array, tokens: jax.Array,
                     remaining: jax.Array) -> jax.Array:
  """Mean Gamma NLL over labelled slots (remaining > 0) of z = log(remaining + 1), with (α, λ)
  gathered at the token actually written there.

  hidden f32 [N,T,D]: the state that predicts completion token j (the position before it);
  tokens int32 [N,T]; remaining int32 [N,T] from `remaining_think_lengths`.
  """
  alpha, rate = gamma_params(head, hidden)  # [N,T,V]
  pick = lambda x: jnp.take_along_axis(x, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  a, r = pick(alpha), pick(rate)
  valid = remaining > 0
  z = jnp.log(jnp.maximum(remaining, 1).astype(jnp.float32) + 1.0)
  nll = jnp.where(valid, gamma_nll(a, r, z), 0.0)
  return nll.sum() / jnp.maximum(valid.sum(), 1)


HEAD_KEYS = ("w_alpha", "b_alpha", "w_rate", "b_rate")


def save_budget_head(path: str, head: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
  """One safetensors file with the four tensors (and string metadata, e.g. the think-end id)."""
  from tokenrl.models import safetensors_io
  safetensors_io.save_tensors(path, {k: np.asarray(head[k], np.float32) for k in HEAD_KEYS},
                              metadata=metadata)


def load_budget_head(path: str, *, dim: int | None = None,
                     vocab_size: int | None = None) -> dict[str, jax.Array]:
  """The head saved by `save_budget_head`; with dim / vocab_size, a mismatch with the policy is
  an error naming the file, the tensor and both shapes."""
  from tokenrl.models import safetensors_io
  tensors = safetensors_io.load_tensors(path)
  missing = [k for k in HEAD_KEYS if k not in tensors]
  if missing:
    raise ValueError(f"{path}: not a budget head (missing tensors {missing}; it has "
                     f"{sorted(tensors)}); write one with `tokenrl budget-head`")
  d, v = tensors["w_alpha"].shape
  for name, want in (("w_alpha", (d, v)), ("w_rate", (d, v)), ("b_alpha", (v,)), ("b_rate", (v,))):
    if tensors[name].shape != want:
      raise ValueError(f"{path}: tensor {name} has shape {tensors[name].shape}, expected {want}")
  if (dim is not None and d != dim) or (vocab_size is not None and v != vocab_size):
    raise ValueError(f"{path}: w_alpha is [{d}, {v}] but the policy has dim {dim} and vocab_size "
                     f"{vocab_size}: train the head on this policy (`tokenrl budget-head`)")
  return {k: jnp.asarray(tensors[k], jnp.float32) for k in HEAD_KEYS}
