"""`rl.objective=tgdpo`: DPO with token-level reward guidance from a frozen DPO model (spec §2).

The guidance model π_r is the final policy of a finished tokenrl preference run (DPO or any
pairwise objective) named by `rl.tgdpo.guidance_workdir`; it must share the model shape and the
tokenizer, and should share the reference (same config up to the objective: same SFT warm-up),
because r̂ = β·log π_r/π_ref is taken against this run's reference, as the reference code does.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from tokenrl.methods.dpo import PAIR_METRICS, PairwiseMethod
from tokenrl.methods.registry import register
from tokenrl.objectives.tgdpo import tgdpo_loss


def _token_mean(x, m):
  """Mean of x over the m > 0 tokens of each row: [n,T] -> [n]."""
  return jnp.where(m > 0, x, 0.0).sum(-1) / jnp.maximum((m > 0).sum(-1), 1)


@register
class Tgdpo(PairwiseMethod):
  name = "tgdpo"
  paper = "TGDPO: Harnessing Token-Level Reward Guidance for Enhancing DPO (arXiv 2506.14574)"
  metrics = PAIR_METRICS + ("coef_chosen", "coef_rejected", "negative_coef_fraction")

  def frozen_models(self, section):
    del section
    return {"reference (post-SFT policy)": 1.0, "guidance DPO model": 1.0}

  def config(self):
    c = ml_collections.ConfigDict()
    c.beta = 0.1                # β (pref_beta): DPO β, also scales the guidance reward r̂
    c.alpha = 0.5               # α (tgdpo_alpha): c^w = β(1 + α r̂^w), c^l = β(1 − α r̂^l); 0 = DPO
    c.guidance_workdir = ""     # finished tokenrl DPO run whose final policy is π_r (required)
    c.coef_min = config_dict.placeholder(float)  # lower clamp of c (None = off, as the code)
    c.pref_ftx = 0.0            # γ_ftx: + γ·length-normalised NLL of the chosen (LLaMA-Factory)
    return c

  def validate(self, section, opts):
    super().validate(section, opts)
    if not section.guidance_workdir:
      raise ValueError("rl.tgdpo.guidance_workdir: expected the workdir of a finished DPO run "
                       "(train one with rl.objective=dpo first), got ''")
    if section.pref_ftx < 0:
      raise ValueError(f"rl.tgdpo.pref_ftx: expected >= 0, got {section.pref_ftx}")

  def prepare(self, pctx):
    path = pctx.section.guidance_workdir
    model, params = pctx.load_params(path)
    if model != pctx.run.model:
      raise ValueError(f"rl.tgdpo.guidance_workdir={path!r}: its model {model} differs from "
                       f"this run's {pctx.run.model}")
    pctx.aux["guidance_params"] = params

  def extras(self, pctx, batch, prompt_len):
    return {"guide_logp": pctx.logprobs(pctx.aux["guidance_params"], batch, prompt_len)}

  def pair_loss(self, logp, mb, section):
    ref, guide, m = mb["ref_logp"], mb["guide_logp"], mb["mask"]
    _, aux = tgdpo_loss(logp[:, 0], ref[:, 0], guide[:, 0], m[:, 0], logp[:, 1], ref[:, 1],
                        guide[:, 1], m[:, 1], beta=section["beta"], alpha=section["alpha"],
                        coef_min=section["coef_min"])
    losses = aux["losses"]
    if section["pref_ftx"]:
      losses = losses - section["pref_ftx"] * _token_mean(logp[:, 0], m[:, 0])
    c_w, c_l = aux["coef_chosen"], aux["coef_rejected"]
    neg = ((jnp.where(m[:, 0] > 0, c_w, 1.0) < 0).sum(-1) + (jnp.where(m[:, 1] > 0, c_l, 1.0) < 0).sum(-1))
    return losses, {"coef_chosen": _token_mean(c_w, m[:, 0]),
                    "coef_rejected": _token_mean(c_l, m[:, 1]),
                    "negative_coef_fraction": neg / jnp.maximum((m > 0).sum((1, 2)), 1)}
