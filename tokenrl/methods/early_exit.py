"""`rl.objective=early_exit`: LayerSkip early-exit loss + layer dropout (spec decoding §6).

A standalone trainer (tokenrl.train.early_exit.train_early_exit: optional SFT, then fine-tuning
with the early-exit loss at every layer and layer dropout rising with depth), not an RL-loop
method: `pairwise = True` keeps it out of the RL integration test, `trainer` names its entry
point. It makes the model's first layers a usable self-drafter (sampler.speculative
draft='layers', DEL). The losses, scales, curricula and dropout rates are in
tokenrl/objectives/early_exit.py.
"""

from __future__ import annotations

import ml_collections

from tokenrl.methods.base import Method
from tokenrl.methods.registry import register
from tokenrl.objectives import early_exit as ee


@register
class EarlyExit(Method):
  name = "early_exit"
  paper = ("LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding "
           "(arXiv 2404.16710)")
  metrics = ("ce_1", "agreement_1")
  pairwise = True
  trainer = "tokenrl.train.early_exit:train_early_exit"

  def config(self):
    c = ml_collections.ConfigDict()
    c.loss_scale = "sum_l"          # e_ℓ: one | l | sum_l (ℓ(ℓ+1)/2) | sqrt_l | inv_l | inv_sqrt_l
    c.e_scale = 1.0                 # multiplies every exit's scale but the last (0 = plain SFT)
    c.curriculum = "none"           # none | rotational (every R-th layer, rotating) | gradual
    c.rotation = 2                  # R of the rotational curriculum
    c.gradual_fraction = 0.5        # gradual: all exits on after this share of train.max_steps
    c.layer_dropout = 0.1           # p_max: skip probability of the last layer (per row)
    c.dropout_scale = "exp"         # D(ℓ): uniform | linear | exp (2^{i/(L-1)} - 1, LayerSkip)
    c.dropout_schedule = "constant"  # S(t): constant | exp (0 -> 1 over train.max_steps)
    return c

  def validate(self, section, opts):
    del opts
    choices = {"loss_scale": ee.LOSS_SCALES, "curriculum": ee.CURRICULA,
               "dropout_scale": ee.DROPOUT_SCALES, "dropout_schedule": ee.DROPOUT_SCHEDULES}
    for key, allowed in choices.items():
      if section[key] not in allowed:
        raise ValueError(f"rl.early_exit.{key}: expected one of {allowed}, got {section[key]!r}")
    if not section.e_scale >= 0:
      raise ValueError(f"rl.early_exit.e_scale: expected >= 0, got {section.e_scale}")
    if section.rotation < 1:
      raise ValueError(f"rl.early_exit.rotation: expected >= 1, got {section.rotation}")
    if not 0.0 < section.gradual_fraction <= 1.0:
      raise ValueError(f"rl.early_exit.gradual_fraction: expected in (0, 1], got "
                       f"{section.gradual_fraction}")
    if not 0.0 <= section.layer_dropout <= 1.0:
      raise ValueError(f"rl.early_exit.layer_dropout: expected in [0, 1], got "
                       f"{section.layer_dropout}")
