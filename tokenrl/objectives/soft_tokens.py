"""Soft Tokens, Hard Truths: continuous-CoT REINFORCE with a Gaussian action density (spec §13).

Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170, ICLR 2026). At CoT step t the input
fed to the model is the noisy mixture embedding h̃_t = μ_t + σ·ε_t, μ_t = softmax(logits_{t−1}/τ)ᵀE;
h̃_t is the action, its log-density under N(μ_t(θ), σ²I) is the CoT log-prob; the answer is hard
tokens. Sequence log-prob Λ_i = Σ_t log π(h̃_{i,t}) + Σ_answer logp, trained by REINFORCE with
the leave-one-out (RLOO) baseline. Formulas from the paper via a detailed summary.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NOISE_SCALE_MODES = ("rms_entries", "absolute")
PROMPT_AGGREGATIONS = ("mean", "sum")


def noise_scale(embedding: jax.Array, gamma: float, mode: str = "rms_entries") -> jax.Array:
  """σ of the CoT input noise: γ·RMS(E) ('rms_entries', RMS(E) = sqrt(mean_{v,d} E[v,d]²)) or
  γ itself ('absolute'). embedding: E [V,D]. Returns a f32 scalar (detached).

  The paper's γ = 0.33 is relative to the embeddings' RMS norm; over all entries is our reading
  [reconstructed], so that ||σ·ε|| ≈ γ·||e_v|| for a typical row e_v (ε ~ N(0, I_D)).
  """
  e = jnp.asarray(embedding)
  if e.ndim != 2:
    raise ValueError(f"embedding: expected shape [V,D], got {e.shape}")
  if mode == "absolute":
    return jnp.asarray(gamma, jnp.float32)
  if mode != "rms_entries":
    raise ValueError(f"mode: expected one of {NOISE_SCALE_MODES}, got {mode!r}")
  rms = jnp.sqrt(jnp.mean(jnp.square(jax.lax.stop_gradient(e).astype(jnp.float32))))
  return gamma * rms


def mixture_embedding(logits: jax.Array, embedding: jax.Array, temperature: float) -> jax.Array:
  """μ = softmax(logits/τ)ᵀ E: the probability-weighted mixture of token embeddings.

  logits: [..., V] (the raw logits of the previous position); embedding: E [V,D];
  temperature: τ (soft 0.5, fuzzy 1e-4). Returns [..., D] f32, differentiable in both.
  """
  if logits.shape[-1] != embedding.shape[0]:
    raise ValueError(f"embedding: expected [V={logits.shape[-1]}, D] (V of logits), "
                     f"got {embedding.shape}")
  if temperature <= 0:
    raise ValueError(f"temperature: expected > 0, got {temperature}")
  p = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.einsum("...v,vd->...d", p, embedding.astype(jnp.float32))


def gaussian_logprob(x: jax.Array, mu: jax.Array, sigma: jax.Array | float) -> jax.Array:
  """log N(x; μ, σ²I_D) = −||x − μ||²/(2σ²) − (D/2)·log(2πσ²), reduced over the last axis.

  x (the stored noisy input h̃, a constant) and mu: [..., D]; sigma: scalar or [...] (one σ per
  row, broadcast over D). Returns [...] f32; the gradient flows through μ only.
  """
  if x.shape != mu.shape:
    raise ValueError(f"mu: expected shape {x.shape} (as x), got {mu.shape}")
  s = jnp.asarray(sigma, jnp.float32)
  if s.ndim > 0 and s.shape != x.shape[:s.ndim]:
    raise ValueError(f"sigma: expected a scalar or a prefix of shape {x.shape[:-1]}, got {s.shape}")
  s = s.reshape(s.shape + (1,) * (x.ndim - 1 - s.ndim))
  d = x.shape[-1]
  diff = jax.lax.stop_gradient(x).astype(jnp.float32) - mu.astype(jnp.float32)
  return -jnp.sum(jnp.square(diff), axis=-1) / (2 * s * s) - 0.5 * d * jnp.log(2 * math.pi * s * s)


def sequence_logprob(cot_logp: jax.Array, answer_logp: jax.Array,
                     answer_mask: jax.Array) -> jax.Array:
  """Λ_i = Σ_t log π(h̃_{i,t}) + Σ_t m_{i,t}·logp_{i,t}: cot_logp [N,T_c], answer [N,T] -> [N].

  A plain sum: no per-length normalisation (the paper's objective)."""
  if answer_logp.shape != answer_mask.shape:
    raise ValueError(f"answer_mask: expected shape {answer_logp.shape}, got {answer_mask.shape}")
  if cot_logp.ndim != 2 or cot_logp.shape[0] != answer_logp.shape[0]:
    raise ValueError(f"cot_logp: expected shape [{answer_logp.shape[0]},T_c], got {cot_logp.shape}")
  return cot_logp.sum(axis=1) + (answer_logp * answer_mask.astype(answer_logp.dtype)).sum(axis=1)


def reinforce_loss(seq_logp: jax.Array, advantages: jax.Array,
                   denominator: jax.Array | float) -> jax.Array:
  """loss = −Σ_i A_i·Λ_i / denominator; A (RLOO, constant) and Λ [N].

  denominator N (= B·G) gives the paper's −(1/G)Σ_i A_i·Λ_i averaged over prompts ('mean');
  G gives the sum over prompts ('sum').
  """
  if seq_logp.shape != advantages.shape or seq_logp.ndim != 1:
    raise ValueError(f"advantages: expected shape {seq_logp.shape} (as seq_logp, [N]), "
                     f"got {advantages.shape}")
  return -(jax.lax.stop_gradient(advantages) * seq_logp).sum() / denominator


SOFT_TOKEN_FNS = {
    "noise_scale": noise_scale,
    "mixture_embedding": mixture_embedding,
    "gaussian_logprob": gaussian_logprob,
    "sequence_logprob": sequence_logprob,
    "reinforce_loss": reinforce_loss,
}
