"""The shared pairwise-preference loss (spec appendix item 2): one function for DPO, its
variants (IPO, hinge, conservative/robust DPO), TGDPO and cDPO.

Every member of the family is a Bradley–Terry-style loss of one logit per pair

  h[b] = Σ_t c^w[b,t]·m^w[b,t]·lr^w[b,t] − Σ_t c^l[b,t]·m^l[b,t]·lr^l[b,t]          [B]

with lr = lp_θ − lp_ref the per-token log-ratio of policy and frozen reference (spec §0) and
c^w, c^l [B,T] per-token coefficients: DPO c = β, TGDPO c = β(1 ± α r̂), cDPO c^l = β(1 − s).
The loss per pair is ℓ(h) [B] (one of `PAIRWISE_LOSSES`), reduced by the mean over the B pairs.

Shapes: B pairs, T completion length after the label shift (chosen and rejected padded to a
common T; the masks handle it).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _check_pair(name: str, x: jax.Array, shape: tuple[int, ...]) -> None:
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name}: expected shape {tuple(shape)} ([B,T]), got {tuple(x.shape)}")


def masked_log_ratio(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array) -> jax.Array:
  """lr[b,t] = m[b,t]·(lp_θ − lp_ref)[b,t] [B,T], exactly 0 where m = 0 (spec §0).

  `jnp.where`, not a multiply, so a −inf log-prob on a padded position cannot make a NaN.
  """
  logp, ref_logp, mask = jnp.asarray(logp), jnp.asarray(ref_logp), jnp.asarray(mask)
  if logp.ndim != 2:
    raise ValueError(f"logp: expected [B,T], got shape {tuple(logp.shape)}")
  _check_pair("ref_logp", ref_logp, logp.shape)
  _check_pair("mask", mask, logp.shape)
  return jnp.where(mask > 0, logp - ref_logp, 0.0)


def pairwise_logits(lr_w: jax.Array, lr_l: jax.Array, mask_w: jax.Array, mask_l: jax.Array, *,
                    coef_w: jax.Array | float, coef_l: jax.Array | float) -> jax.Array:
  """h[b] = Σ_t c^w·m^w·lr^w − Σ_t c^l·m^l·lr^l  [B].

  lr_w, mask_w [B,T_w]; lr_l, mask_l [B,T_l] (T_w may differ from T_l); coef_w / coef_l are
  scalars or [B,T_w] / [B,T_l] per-token coefficients (a scalar β gives DPO's h).
  """
  lr_w, lr_l = jnp.asarray(lr_w), jnp.asarray(lr_l)
  if lr_w.ndim != 2 or lr_l.ndim != 2 or lr_w.shape[0] != lr_l.shape[0]:
    raise ValueError(f"lr_w, lr_l: expected [B,T_w] and [B,T_l] with one B, got "
                     f"{tuple(lr_w.shape)} and {tuple(lr_l.shape)}")
  _check_pair("mask_w", jnp.asarray(mask_w), lr_w.shape)
  _check_pair("mask_l", jnp.asarray(mask_l), lr_l.shape)
  for name, c, ref in (("coef_w", coef_w, lr_w), ("coef_l", coef_l, lr_l)):
    if jnp.ndim(c) != 0:
      _check_pair(name, jnp.asarray(c), ref.shape)
  sw = jnp.sum(jnp.where(jnp.asarray(mask_w) > 0, coef_w * lr_w, 0.0), axis=-1)
  sl = jnp.sum(jnp.where(jnp.asarray(mask_l) > 0, coef_l * lr_l, 0.0), axis=-1)
  return sw - sl


def sigmoid_loss(h: jax.Array, *, beta: float, label_smoothing: float = 0.0) -> jax.Array:
  """DPO (Rafailov et al. 2023, arXiv 2305.18290) and conservative DPO (label smoothing ε):

    ℓ(h) = −(1−ε)·log σ(h) − ε·log σ(−h)  [B]   (ε = 0: DPO). `beta` is already inside h.
  """
  del beta
  return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)


def robust_loss(h: jax.Array, *, beta: float, label_smoothing: float = 0.1) -> jax.Array:
  """Robust DPO (rDPO; Chowdhury et al. 2024, "Provably Robust DPO", arXiv 2403.00409):
  an unbiased loss under preference labels flipped with probability ε < 1/2,

    ℓ(h) = [(1−ε)·(−log σ(h)) − ε·(−log σ(−h))] / (1 − 2ε)  [B]   (TRL loss_type='robust').
  """
  del beta
  eps = label_smoothing
  return (-(1.0 - eps) * jax.nn.log_sigmoid(h) + eps * jax.nn.log_sigmoid(-h)) / (1.0 - 2.0 * eps)


def hinge_loss(h: jax.Array, *, beta: float, label_smoothing: float = 0.0) -> jax.Array:
  """SLiC hinge (Zhao et al. 2023, "SLiC-HF", arXiv 2305.10425; TRL loss_type='hinge'):

    ℓ(h) = max(0, 1 − h)  [B], with h = β·(log-ratio difference): 1/β is the margin.
  """
  del beta, label_smoothing
  return jax.nn.relu(1.0 - h)


def ipo_loss(h: jax.Array, *, beta: float, label_smoothing: float = 0.0) -> jax.Array:
  """IPO (Azar et al. 2023, "A General Theoretical Paradigm...", arXiv 2310.12036; spec §1b):

    ℓ(h) = (h/β − 1/(2β))²  [B], with h/β the raw log-ratio difference (β = IPO's τ).
  """
  del label_smoothing
  return jnp.square(h / beta - 1.0 / (2.0 * beta))


PAIRWISE_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "sigmoid": sigmoid_loss, "robust": robust_loss, "hinge": hinge_loss, "ipo": ipo_loss}


def pairwise_loss(logp_w: jax.Array, ref_logp_w: jax.Array, mask_w: jax.Array,
                  logp_l: jax.Array, ref_logp_l: jax.Array, mask_l: jax.Array, *,
                  beta: float, coef_w: jax.Array | None = None, coef_l: jax.Array | None = None,
                  loss_type: str = "sigmoid",
                  label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """mean_b ℓ(h[b]) with h = Σ c^w·lr^w − Σ c^l·lr^l (module docstring); c defaults to β.

  Args:
    logp_w, ref_logp_w, mask_w: [B,T_w] per-token log-probs of the chosen completion under the
      policy and the frozen reference, and its mask (1 on scored tokens).
    logp_l, ref_logp_l, mask_l: the same for the rejected completion, [B,T_l].
    beta: β, the KL strength (DPO β = 0.1).
    coef_w, coef_l: optional per-token coefficients [B,T_w] / [B,T_l] replacing β (TGDPO, cDPO).
    loss_type: one of PAIRWISE_LOSSES ('sigmoid' | 'robust' | 'hinge' | 'ipo').
    label_smoothing: ε of conservative ('sigmoid') and robust DPO.

  Returns:
    (scalar loss = mean over B, aux) with aux: 'losses' [B], 'logits' h [B], and the DPO implicit
    rewards 'reward_chosen' / 'reward_rejected' [B] = β·Σ_t lr (detached).
  """
  if loss_type not in PAIRWISE_LOSSES:
    raise ValueError(f"loss_type: expected one of {tuple(PAIRWISE_LOSSES)}, got {loss_type!r}")
  if beta <= 0:
    raise ValueError(f"beta: expected > 0, got {beta}")
  lr_w = masked_log_ratio(logp_w, ref_logp_w, mask_w)
  lr_l = masked_log_ratio(logp_l, ref_logp_l, mask_l)
  h = pairwise_logits(lr_w, lr_l, mask_w, mask_l, coef_w=beta if coef_w is None else coef_w,
                      coef_l=beta if coef_l is None else coef_l)
  losses = PAIRWISE_LOSSES[loss_type](h, beta=beta, label_smoothing=label_smoothing)
  aux = {"losses": losses, "logits": h,
         "reward_chosen": jax.lax.stop_gradient(beta * lr_w.sum(-1)),
         "reward_rejected": jax.lax.stop_gradient(beta * lr_l.sum(-1))}
  return losses.mean(), aux
