"""Stateless building blocks of the decoder: RMSNorm, RoPE, gated MLP, masked attention.

All functions are pure jnp; reductions (norm variance, softmax) run in f32 whatever the input
dtype, matching Hugging Face's eager implementations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tokenrl.models.config import RopeConfig

# Masked attention logits use a large finite negative instead of -inf so that a query with no
# visible key (a left-pad position) gets a uniform, finite distribution instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float, plus_one: bool) -> jax.Array:
  """y = x / sqrt(mean(x², -1) + eps) · w, with w = (1 + scale) for Gemma.

  x [..., D], scale [D]. Llama casts back to x.dtype before the scale multiply; Gemma multiplies
  in f32 and casts after (HF PR 29402): both orders are kept for bf16 parity.
  """
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  if plus_one:
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)
  return scale * normed.astype(x.dtype)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> jax.Array:
  """Inverse frequencies [H/2] in f32, with 'linear' or 'llama3' scaling applied."""
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (rope.theta**exponents)
  if rope.rope_type == "linear":
    return inv_freq / rope.factor
  if rope.rope_type == "llama3":
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)
  return inv_freq


def rope_tables(positions: jax.Array, rope: RopeConfig, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """cos, sin [N, S, H] (f32) for integer positions [N, S] (HF 'rotate_half' layout)."""
  angles = positions.astype(jnp.float32)[..., None] * rope_inv_freq(rope, head_dim)
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x [N, S, heads, H] rotated by cos/sin [N, S, H]; halves layout (x1, x2) -> (-x2, x1)."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin


def gated_mlp(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array, *, activation: str) -> jax.Array:
  """down(act(x·gate) ⊙ x·up); x [N,S,D], gate/up [D,F], down [F,D]."""
  g = jnp.einsum("nsd,df->nsf", x, gate)
  u = jnp.einsum("nsd,df->nsf", x, up)
  if activation == "silu":
    h = jax.nn.silu(g)
  else:  # gelu with the tanh approximation (HF 'gelu_pytorch_tanh')
    h = jax.nn.gelu(g, approximate=True)
  return jnp.einsum("nsf,fd->nsd", h * u, down)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
              softcap: float | None = None) -> jax.Array:
  """Grouped-query attention.

  q [N,S,Q,H], k/v [N,C,K,H], mask [N,S,C] bool (True = visible). Query head q attends with KV
  head q // (Q/K) (HF's repeat_kv grouping). Scores and softmax in f32. Returns [N,S,Q,H].
  """
  n, s, num_q, h = q.shape
  num_kv = k.shape[2]
  qg = q.reshape(n, s, num_kv, num_q // num_kv, h)
  scores = jnp.einsum("nskgh,nckh->nkgsc", qg, k, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    scores = jnp.tanh(scores / softcap) * softcap
  scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("nkgsc,nckh->nskgh", probs, v, preferred_element_type=jnp.float32)
  return out.reshape(n, s, num_q, h).astype(q.dtype)
