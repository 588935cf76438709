"""TGDPO: "Harnessing Token-Level Reward Guidance for Enhancing DPO" (Zhu et al. 2025,
arXiv 2506.14574; spec §2, code-verified against dvlab-research/TGDPO `tgdpo/trainer.py`).

A frozen, previously DPO-trained model π_r gives the token reward r̂ = β·log π_r/π_ref (against
the same reference as the policy), and each token's log-ratio gets its own coefficient:

  c^w[b,t] = β·(1 + α·r̂^w[b,t]),   c^l[b,t] = β·(1 − α·r̂^l[b,t])                   [B,T]
  h[b] = Σ_t c^w·lr^w − Σ_t c^l·lr^l,   L = mean_b −log σ(h[b])

(lr = m·(lp_θ − lp_ref), r̂ = β·m·(lp_r − lp_ref)). α = 0 is exactly DPO. The coefficients are not
clipped by default (a negative one flips that token's gradient, as in the reference code);
`coef_min` clamps them from below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenrl.objectives.pairwise import masked_log_ratio, pairwise_loss


def tgdpo_coefficients(guide_logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *,
                       beta: float, alpha: float, chosen: bool,
                       coef_min: float | None = None) -> jax.Array:
  """c [B,T] = β·(1 + α·r̂) for a chosen completion, β·(1 − α·r̂) for a rejected one.

  guide_logp, ref_logp [B,T]: per-token log-probs under the guidance model π_r and the reference;
  mask [B,T]; r̂ = β·m·(lp_r − lp_ref). coef_min: optional lower clamp (None = off, the default).
  Detached (π_r and π_ref are frozen).
  """
  r_hat = beta * masked_log_ratio(guide_logp, ref_logp, mask)
  c = beta * (1.0 + alpha * r_hat) if chosen else beta * (1.0 - alpha * r_hat)
  if coef_min is not None:
    c = jnp.maximum(c, coef_min)
  return jax.lax.stop_gradient(c)


def tgdpo_loss(logp_w: jax.Array, ref_logp_w: jax.Array, guide_logp_w: jax.Array,
               mask_w: jax.Array, logp_l: jax.Array, ref_logp_l: jax.Array,
               guide_logp_l: jax.Array, mask_l: jax.Array, *, beta: float = 0.1,
               alpha: float = 0.5, coef_min: float | None = None,
               pref_ftx: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """TGDPO loss (module docstring) + optional γ_ftx·mean_b(−Σ m^w lp_θ^w / Σ m^w) (`pref_ftx`).

  Chosen arrays [B,T_w], rejected [B,T_l]: policy, reference and guidance per-token log-probs and
  the masks. Returns (scalar loss, aux of `pairwise_loss` + 'coef_chosen'/'coef_rejected').
  """
  c_w = tgdpo_coefficients(guide_logp_w, ref_logp_w, mask_w, beta=beta, alpha=alpha, chosen=True,
                           coef_min=coef_min)
  c_l = tgdpo_coefficients(guide_logp_l, ref_logp_l, mask_l, beta=beta, alpha=alpha,
                           chosen=False, coef_min=coef_min)
  loss, aux = pairwise_loss(logp_w, ref_logp_w, mask_w, logp_l, ref_logp_l, mask_l, beta=beta,
                            coef_w=c_w, coef_l=c_l)
  if pref_ftx:
    m = (jnp.asarray(mask_w) > 0)
    nll = -jnp.where(m, logp_w, 0.0).sum(-1) / jnp.maximum(m.sum(-1), 1)
    loss = loss + pref_ftx * nll.mean()
  return loss, {**aux, "coef_chosen": c_w, "coef_rejected": c_l}
