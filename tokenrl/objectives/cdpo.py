"""cDPO: "Critical Tokens Matter: Token-Level Contrastive Estimation Enhances LLM's Reasoning"
(Lin et al. 2024, arXiv 2411.19943; spec §4, code-verified against
chenzhiling9954/Critical-Tokens-Matter `pipeline.py`, `train_cdpo.py`).

Two frozen models fine-tuned from the same base, π⁺ on correct and π⁻ on incorrect completions,
score every completion token by contrastive estimation

  s_t = softmax_v((1+β_ce)·z⁺[t,v] − β_ce·z⁻[t,v])[y_t]  ∈ [0,1]                       [B,T]

(z± the two models' logits at the position predicting y_t). A token the negative model likes
much more than the positive one has a low s_t: a *critical* token. cDPO weights the rejected
log-ratios by w^l = 1 − s^l (critical tokens ≈ 1, pushed down hardest) and the chosen ones by
w^w = 1 (`only_neg`, the released default) or s^w:

  h[b] = β·(Σ_t w^w·lr^w − Σ_t w^l·lr^l),  L = mean_b[−(1−ε)·log σ(h) − ε·log σ(−h)].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenrl.objectives.pairwise import pairwise_loss


def contrastive_scores(logits_pos: jax.Array, logits_neg: jax.Array, targets: jax.Array, *,
                       beta_ce: float = 1.0) -> jax.Array:
  """s [B,T] = softmax((1+β_ce)·z⁺ − β_ce·z⁻)[y] at each position (f32, detached).

  logits_pos, logits_neg [B,T,V]: the positive / negative models' logits predicting targets
  [B,T] (int ids). The reference code hard-codes β_ce = 1 (2·z⁺ − z⁻).
  """
  zp, zn = jnp.asarray(logits_pos, jnp.float32), jnp.asarray(logits_neg, jnp.float32)
  if zp.ndim != 3:
    raise ValueError(f"logits_pos: expected [B,T,V], got shape {tuple(zp.shape)}")
  if zn.shape != zp.shape:
    raise ValueError(f"logits_neg: expected shape {tuple(zp.shape)}, got {tuple(zn.shape)}")
  if tuple(jnp.shape(targets)) != zp.shape[:2]:
    raise ValueError(f"targets: expected shape {tuple(zp.shape[:2])} ([B,T]), got "
                     f"{tuple(jnp.shape(targets))}")
  logp = jax.nn.log_softmax((1.0 + beta_ce) * zp - beta_ce * zn, axis=-1)
  s = jnp.exp(jnp.take_along_axis(logp, jnp.asarray(targets)[..., None], axis=-1)[..., 0])
  return jax.lax.stop_gradient(s)


def cdpo_weights(score_w: jax.Array, score_l: jax.Array, mask_w: jax.Array, mask_l: jax.Array, *,
                 only_neg: bool = True) -> tuple[jax.Array, jax.Array]:
  """(w^w [B,T_w], w^l [B,T_l]): w^l = 1 − s^l; w^w = 1 (only_neg) or s^w; 0 where masked."""
  score_w, score_l = jnp.asarray(score_w), jnp.asarray(score_l)
  if score_w.shape != jnp.shape(mask_w):
    raise ValueError(f"score_w: expected shape {jnp.shape(mask_w)}, got {score_w.shape}")
  if score_l.shape != jnp.shape(mask_l):
    raise ValueError(f"score_l: expected shape {jnp.shape(mask_l)}, got {score_l.shape}")
  w_w = jnp.ones_like(score_w) if only_neg else score_w
  w_l = 1.0 - score_l
  w_w = jnp.where(jnp.asarray(mask_w) > 0, w_w, 0.0)
  w_l = jnp.where(jnp.asarray(mask_l) > 0, w_l, 0.0)
  return jax.lax.stop_gradient(w_w), jax.lax.stop_gradient(w_l)


def cdpo_loss(logp_w: jax.Array, ref_logp_w: jax.Array, score_w: jax.Array, mask_w: jax.Array,
              logp_l: jax.Array, ref_logp_l: jax.Array, score_l: jax.Array, mask_l: jax.Array, *,
              beta: float = 0.1, only_neg: bool = True,
              label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """cDPO loss (module docstring). Chosen arrays [B,T_w], rejected [B,T_l]; score_* = s from
  `contrastive_scores`. Returns (scalar loss = mean over B, aux of `pairwise_loss` + weights)."""
  w_w, w_l = cdpo_weights(score_w, score_l, mask_w, mask_l, only_neg=only_neg)
  loss, aux = pairwise_loss(logp_w, ref_logp_w, mask_w, logp_l, ref_logp_l, mask_l, beta=beta,
                            coef_w=beta * w_w, coef_l=beta * w_l, loss_type="sigmoid",
                            label_smoothing=label_smoothing)
  return loss, {**aux, "weight_chosen": w_w, "weight_rejected": w_l}
