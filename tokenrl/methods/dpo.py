"""Pairwise preference methods: `rl.objective=dpo | ipo | hinge | robust` (spec §1), and the
`PairwiseMethod` base that TGDPO and cDPO extend.

Pairwise methods train on (prompt, chosen, rejected) pairs with tokenrl.train.pref_loop
(`train_preference`), not the RL loop: `pairwise = True` tells the CLI and the RL integration
test apart. Each keeps its own locked section cfg.rl.<name> (β, ...). The per-pair loss is the
shared `tokenrl.objectives.pairwise.pairwise_loss` with per-token coefficients from
`coefficients` (DPO: β everywhere).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import Method
from tokenrl.methods.registry import register
from tokenrl.objectives.pairwise import pairwise_loss

# Logged by every pairwise method (tokenrl.train.pairwise.pair_summary), means over the pairs.
PAIR_METRICS = ("reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy",
                "logp_chosen", "logp_rejected", "logp_accuracy", "token_reward_chosen",
                "token_reward_rejected")


class PairwiseMethod(Method):
  """A preference objective: h = Σ c^w·lr^w − Σ c^l·lr^l, loss ℓ(h) (`loss_type`).

  Subclasses set name/paper/loss_type, `config()` (must hold `beta`), and override
  `coefficients` (per-token c), `prepare` (load or train frozen helper models once, host) and
  `extras` (their per-pair arrays, host) as needed.
  """

  pairwise = True
  loss_type = "sigmoid"
  metrics = PAIR_METRICS

  def frozen_models(self, section):
    del section
    return {"reference (post-SFT policy)": 1.0}

  def sequence_budgets(self, bctx):
    """The evaluation rollout and the pair rows [2N, P + T_pair]: T_pair = the bucket (from 8)
    of the longest completion + EOS; the embedded near misses may be one token longer than the
    answer (99 -> 100), so the bound is longest answer + EOS + 1."""
    from tokenrl.data.preference import COMPLETION_MIN_BUCKET  # pylint: disable=g-import-not-at-top
    from tokenrl.methods.budgets import Budget, rollout_budget  # pylint: disable=g-import-not-at-top
    from tokenrl.rollout.sampler import bucket_length  # pylint: disable=g-import-not-at-top
    c = bctx.answer_tokens + 1
    t = int(bucket_length(c, minimum=COMPLETION_MIN_BUCKET))
    return [rollout_budget(bctx, "evaluation rollout"),
            Budget("pair rows", bctx.P + t,
                   f"prompt bucket {bctx.P} + completion bucket {t} (longest completion {c})")]

  def config(self):
    c = ml_collections.ConfigDict()
    c.beta = 0.1              # β: KL strength / implicit-reward scale (DPO paper 0.1)
    return c

  def validate(self, section, opts):
    del opts
    if not section.beta > 0:
      raise ValueError(f"rl.{self.name}.beta: expected > 0, got {section.beta}")
    if "label_smoothing" in section:
      hi = 0.5 if self.loss_type == "robust" else 1.0
      if not 0.0 <= section.label_smoothing < hi:
        raise ValueError(f"rl.{self.name}.label_smoothing: expected in [0, {hi}), got "
                         f"{section.label_smoothing}")

  # ---- host hooks ------------------------------------------------------------------------
  def prepare(self, pctx: Any) -> None:
    """Load / train frozen helper models once, before the first preference step."""
    del pctx

  def extras(self, pctx: Any, batch: dict[str, np.ndarray], prompt_len: int) -> dict[str, Any]:
    """Per-pair arrays [N,2,...] added to the step's batch (computed on frozen models)."""
    del pctx, batch, prompt_len
    return {}

  # ---- jitted ------------------------------------------------------------------------------
  def coefficients(self, mb: dict[str, Any], section: dict[str, Any]):
    """(c^w [n,T] or scalar, c^l [n,T] or scalar) per-token coefficients; default β."""
    del mb
    return section["beta"], section["beta"]

  def pair_loss(self, logp, mb, section):
    """(losses [n], metrics {name: [n]}) of a micro-batch of n pairs; logp [n,2,T]."""
    ref = mb["ref_logp"]
    if section.get("reference_free", False):
      ref = jnp.zeros_like(ref)
    c_w, c_l = self.coefficients(mb, section)
    m = mb["mask"]
    _, aux = pairwise_loss(logp[:, 0], ref[:, 0], m[:, 0], logp[:, 1], ref[:, 1], m[:, 1],
                           beta=section["beta"], coef_w=c_w, coef_l=c_l,
                           loss_type=self.loss_type,
                           label_smoothing=section.get("label_smoothing", 0.0))
    return aux["losses"], {}


@register
class Dpo(PairwiseMethod):
  name = "dpo"
  paper = "Direct Preference Optimization (arXiv 2305.18290); token view: From r to Q* (2404.12358)"

  def config(self):
    c = super().config()
    c.label_smoothing = 0.0   # ε of conservative DPO: −(1−ε)·log σ(h) − ε·log σ(−h); 0 = DPO
    c.reference_free = False  # lp_ref ≡ 0 in the loss (uniform reference)
    return c


@register
class Ipo(PairwiseMethod):
  name = "ipo"
  loss_type = "ipo"
  paper = "A General Theoretical Paradigm to Understand Learning from Human Preferences (IPO, arXiv 2310.12036)"

  def config(self):
    c = super().config()
    c.average_log_prob = False  # True = TRL/TGDPO-fork IPO: length-averaged log-ratios
    return c

  def coefficients(self, mb, section):
    if not section["average_log_prob"]:
      return section["beta"], section["beta"]
    # β/|y| per token: h/β = mean_t lr^w − mean_t lr^l (TRL's ipo branch).
    length = jnp.maximum(mb["mask"].sum(-1, keepdims=True), 1).astype(jnp.float32)  # [n,2,1]
    c = section["beta"] / length * jnp.ones(mb["mask"].shape, jnp.float32)
    return c[:, 0], c[:, 1]


@register
class Hinge(PairwiseMethod):
  name = "hinge"
  loss_type = "hinge"
  paper = "SLiC-HF: Sequence Likelihood Calibration with Human Feedback (arXiv 2305.10425)"


@register
class Robust(PairwiseMethod):
  name = "robust"
  loss_type = "robust"
  paper = "Provably Robust DPO: Aligning Language Models with Noisy Feedback (arXiv 2403.00409)"

  def config(self):
    c = super().config()
    c.label_smoothing = 0.1   # ε: assumed label-flip rate, in [0, 0.5); 0 = DPO
    return c
