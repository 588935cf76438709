"""`rl.objective=thr`: GRPO with advantages reweighted by the Token Hidden Reward (spec §2).

Host side, per step: one extra forward of the rollout policy (`ctx.hidden`) gives the final hidden
states [N,T,D] and logits [N,T,V]; next-token probabilities use the run temperature (the
distribution the rollout was sampled from). They are restricted to each group's vocabulary V*,
scored with the NTHR kernel, turned into THR and into per-token advantages [N,T]. The loss is
the configured GRPO-family loss on those advantages (works with GSPO-token too).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import Method, StepContext, StepData, default_shape
from tokenrl.methods.registry import register
from tokenrl.objectives import thr as thr_lib


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
  z = logits.astype(np.float64) / temperature
  z -= z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@register
class Thr(Method):
  name = "thr"
  paper = "Token Hidden Reward (Deng et al., arXiv 2510.03669, ICLR 2026)"
  metrics = ("thr_abs_mean", "thr_positive_fraction", "thr_selected_fraction", "thr_tau_mean")

  def config(self):
    c = ml_collections.ConfigDict()
    c.p = 0.2                # sign-reweighting strength; >0 exploitation (pass@1), <0 pass@k; 0 = GRPO
    c.tau_mode = "nthr"      # 'nthr': τ = β_τ·min over correct responses of mean S; 'zero': τ = 0
    c.beta_tau = 1.0         # β_τ of the NTHR anchor (NTHR used 1)
    c.kappa = 0              # THR = Â·S / L^κ; 1 mirrors GRPO's 1/|o| weighting (sign unchanged)
    c.thr_only = False       # True: A' = Â·1[|THR| > τ] (keep only high-|THR| tokens), p unused
    return c

  def validate(self, section, opts):
    if section.tau_mode not in thr_lib.TAU_MODES:
      raise ValueError(f"rl.thr.tau_mode: expected one of {thr_lib.TAU_MODES}, "
                       f"got {section.tau_mode!r}")
    if not -1.0 <= section.p <= 1.0:
      raise ValueError(f"rl.thr.p: expected in [-1, 1] (spec suggests [-0.5, 0.5]), got {section.p}")
    if section.kappa not in (0, 1):
      raise ValueError(f"rl.thr.kappa: expected 0 or 1, got {section.kappa}")
    if section.beta_tau < 0:
      raise ValueError(f"rl.thr.beta_tau: expected >= 0, got {section.beta_tau}")
    if opts["advantage_estimator"] not in ("grpo", "rloo"):
      raise ValueError("rl.thr needs sequence advantages: rl.advantage_estimator 'grpo' or 'rloo'")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    data = default_shape(ctx, data)
    sec, G = ctx.section, ctx.G
    hidden, logits = ctx.hidden(data.tokens, data.segment_ids, data.prompt_len)
    adv, mask = np.asarray(data.advantages, np.float32), data.mask
    q, y, valid = thr_lib.restrict_vocab(_softmax(np.asarray(logits), ctx.opts["temperature"]),
                                         data.completion, mask, G)
    n, t = mask.shape
    b = n // G
    scores = thr_lib.thr_kernel_scores(
        jnp.asarray(q), jnp.asarray(y), jnp.asarray(valid),
        jnp.asarray(hidden, jnp.float32).reshape(b, G, t, -1), jnp.asarray(mask).reshape(b, G, t),
        jnp.asarray(data.correct).reshape(b, G)).reshape(n, t)
    thr = thr_lib.token_hidden_reward(scores, jnp.asarray(adv), jnp.asarray(mask),
                                      kappa=sec.kappa)
    if sec.tau_mode == "nthr":
      tau = thr_lib.nthr_threshold(scores, jnp.asarray(mask), jnp.asarray(data.correct), G,
                                   beta_tau=sec.beta_tau)
    else:
      tau = jnp.zeros((n,), jnp.float32)
    data.advantages = np.asarray(
        thr_lib.thr_reweight(jnp.asarray(adv), thr, tau, p=sec.p, thr_only=sec.thr_only),
        np.float32)
    thr, tau, m = np.asarray(thr), np.asarray(tau), mask > 0
    count = max(int(m.sum()), 1)
    data.metrics.update(
        thr_abs_mean=float(np.abs(thr)[m].sum() / count),
        thr_positive_fraction=float((thr > 0)[m].sum() / count),
        thr_selected_fraction=float((np.abs(thr) > tau[:, None])[m].sum() / count),
        thr_tau_mean=float(tau.mean()))
    return data
