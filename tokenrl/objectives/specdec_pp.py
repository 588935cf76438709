"""SpecDec++ acceptance-head training data and loss (spec decoding-and-test-time §3(b) 3-5).

Huang, Guo, Wang, "SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths"
(COLM 2025; reference Kaffaljidhmah2/SpecDec_pp `data/gen_acceptance.py`, `specdec_pp/train.py`).
Notation as the spec: p = target, q = draft, both the *processed* distributions (temperature,
top-k, top-p) the speculative sampler verifies with.

  labels   a_i = min(1, p(Y_i | X_<i) / q(Y_i | X_<i)) = exp(min(0, log p − log q))
           (Y_i ~ q(· | X_<i) is the draft's stochastic token at target-response position i;
           a_i is exactly the probability that the §2 rule accepts Y_i there).
  mixing   Z_i = X_i with probability r (the mixing ratio), else Y_i; the head is trained only
           where Z_i = Y_i (never on the prompt, never on a mixed-in X_i), on the frozen draft's
           final hidden state at the position holding Z_i.
  loss     ℓ = −Σ m·[w·(1−a)·log(1−ĥ) + a·log ĥ] / Σ m·[w·(1−a) + a]
           (w = rejection weight, reference 6; w = 1 is the plain soft-label BCE mean).

Pure functions of arrays; the label generation with real models is tokenrl/train/specdec_pp.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def acceptance_labels(target_logp_y: jax.Array, draft_logp_y: jax.Array) -> jax.Array:
  """Soft labels a = exp(min(0, log p(Y) − log q(Y))) = min(1, p/q), f32, same shape.

  target_logp_y / draft_logp_y: log p(Y_i | X_<i) and log q(Y_i | X_<i) [...] (typically
  [N,T]) of the draft's sampled tokens. log p = −inf (Y outside the target's processed support)
  gives a = 0. Working in log space keeps min(1, p/q) exact when p and q underflow in f32.
  """
  if target_logp_y.shape != draft_logp_y.shape:
    raise ValueError(f"target_logp_y has shape {target_logp_y.shape} but draft_logp_y has "
                     f"{draft_logp_y.shape}; expected equal shapes")
  diff = target_logp_y.astype(jnp.float32) - draft_logp_y.astype(jnp.float32)
  return jnp.exp(jnp.minimum(0.0, diff))


def mix_sequences(x_tokens: jax.Array, y_tokens: jax.Array, mix_ratio: float, key: jax.Array, *,
                  prompt_len: int = 0, mask: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """(Z [N,S] int32, loss_mask [N,S] int32): the head's input tokens and where it is trained.

  x_tokens [N,S]: the target's sequences (the first `prompt_len` columns are the prompt, the
  rest the response X); y_tokens [N,S]: the draft's tokens Y_i aligned with X_i (its prompt
  columns are ignored). Each response position independently takes Z_i = X_i with probability
  `mix_ratio` (r) and Z_i = Y_i otherwise (one uniform per position from `key`). mask [N,S]
  (optional, 1 = the position exists, e.g. the response up to and including EOS) limits the
  loss further; outside it Z_i = X_i, so padding and post-EOS slots keep the target's tokens.

  loss_mask = 1 exactly at response positions holding a Y_i: never a prompt column, never a
  mixed-in X_i (so most of the context seen at training is draft tokens, as at inference).
  """
  if x_tokens.ndim != 2 or y_tokens.shape != x_tokens.shape:
    raise ValueError(f"x_tokens and y_tokens must both be [N,S], got {x_tokens.shape} and "
                     f"{y_tokens.shape}")
  if mask is not None and mask.shape != x_tokens.shape:
    raise ValueError(f"mask has shape {mask.shape}, expected {x_tokens.shape} (x_tokens)")
  if not 0.0 <= mix_ratio <= 1.0:
    raise ValueError(f"mix_ratio: expected in [0, 1], got {mix_ratio}")
  if not 0 <= prompt_len <= x_tokens.shape[1]:
    raise ValueError(f"prompt_len={prompt_len} must be in [0, S={x_tokens.shape[1]}]")
  s = x_tokens.shape[1]
  response = (jnp.arange(s) >= prompt_len)[None, :]
  if mask is not None:
    response = response & (mask != 0)
  take_x = jax.random.uniform(key, x_tokens.shape) < mix_ratio
  use_y = response & ~take_x
  z = jnp.where(use_y, y_tokens, x_tokens).astype(jnp.int32)
  return z, use_y.astype(jnp.int32)


def acceptance_loss(logits_or_prob: jax.Array, labels: jax.Array, mask: jax.Array,
                    rejection_weight: float = 6.0) -> jax.Array:
  """Weighted soft-label BCE ℓ (module docstring), a scalar f32.

  logits_or_prob: the head's two-class logits [..., 2] (class 1 = accepted; log-probabilities
  via log-softmax, stable for saturated heads) or the acceptance probabilities ĥ [...]
  (clipped to [1e-7, 1 − 1e-7] before the logs). labels a [...] in [0, 1]; mask m [...]
  (1 = a loss position). rejection_weight w > 0 scales the rejection class in the numerator
  and the normalizer alike, so ℓ stays a weighted mean. No loss position: 0.
  """
  if logits_or_prob.shape == labels.shape + (2,):
    logp = jax.nn.log_softmax(logits_or_prob.astype(jnp.float32), axis=-1)
    log_acc, log_rej = logp[..., 1], logp[..., 0]
  elif logits_or_prob.shape == labels.shape:
    h = jnp.clip(logits_or_prob.astype(jnp.float32), 1e-7, 1.0 - 1e-7)
    log_acc, log_rej = jnp.log(h), jnp.log1p(-h)
  else:
    raise ValueError(f"logits_or_prob has shape {logits_or_prob.shape}; expected labels' shape "
                     f"{labels.shape} (probabilities) or {labels.shape + (2,)} (logits)")
  if mask.shape != labels.shape:
    raise ValueError(f"mask has shape {mask.shape}, expected labels' shape {labels.shape}")
  if not rejection_weight > 0:
    raise ValueError(f"rejection_weight: expected > 0, got {rejection_weight}")
  a = labels.astype(jnp.float32)
  m = mask.astype(jnp.float32)
  w = jnp.float32(rejection_weight)
  num = -(m * (w * (1.0 - a) * log_rej + a * log_acc)).sum()
  den = (m * (w * (1.0 - a) + a)).sum()
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
