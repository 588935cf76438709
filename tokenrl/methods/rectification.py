"""`rl.objective=rectification`: dead-end analysis, a learned Q_D caps token probabilities (spec §11).

A standalone trainer (tokenrl.train.rectification.train_rectification: Q_D by TD(0) on the frozen
LM's samples, then rectified decoding), not an RL-loop method: `pairwise = True` keeps it out of
the RL integration test, `trainer` names its entry point.
"""

from __future__ import annotations

import ml_collections

from tokenrl.methods.base import Method
from tokenrl.methods.registry import register


@register
class Rectification(Method):
  name = "rectification"
  paper = "Systematic Rectification of Language Models via Dead-end Analysis (arXiv 2302.14003)"
  metrics = ("q_mean", "dead_end_rate")
  pairwise = True
  trainer = "tokenrl.train.rectification:train_rectification"

  def config(self):
    c = ml_collections.ConfigDict()
    c.epsilon = 0.1               # ε of the cap s = clip(1 + Q_D − ε, p_min, p_max) (README run)
    c.p_min = 1e-7                # lower clip of the cap (reference)
    c.p_max = 1.0                 # upper clip of the cap (reference)
    c.iterations = 2              # passes of z = min(z, log s + logsumexp z) (reference: 2)
    c.gamma = 1.0                 # TD discount γ (reference 1.0)
    c.q_min = -1.0                # target clip (reference)
    c.q_max = 0.0                 # target clip (reference)
    c.polyak_alpha = 0.1          # θ_tgt ← α·θ + (1 − α)·θ_tgt per step (reference 0.1)
    c.learning_rate = 3e-4        # Adam lr of the Q head (reference 3e-4)
    c.q_steps = 100               # TD steps (each on freshly sampled continuations)
    c.samples_per_prompt = 4      # continuations per prompt (reference data: 25)
    c.eval_temperature = 1.0      # sampling temperature of the evaluation (reference: 1)
    return c

  def validate(self, section, opts):
    del opts
    if not 0.0 < section.p_min <= section.p_max <= 1.0:
      raise ValueError(f"rl.rectification.p_min/p_max: expected 0 < p_min <= p_max <= 1, got "
                       f"{section.p_min}, {section.p_max}")
    if section.iterations < 1:
      raise ValueError(f"rl.rectification.iterations: expected >= 1, got {section.iterations}")
    if not 0.0 <= section.polyak_alpha <= 1.0:
      raise ValueError(f"rl.rectification.polyak_alpha: expected in [0, 1], got "
                       f"{section.polyak_alpha}")
    if not 0.0 <= section.gamma <= 1.0:
      raise ValueError(f"rl.rectification.gamma: expected in [0, 1], got {section.gamma}")
    if not section.q_min <= section.q_max:
      raise ValueError(f"rl.rectification.q_min: expected <= q_max, got {section.q_min}")
    if section.samples_per_prompt < 1 or section.q_steps < 0:
      raise ValueError("rl.rectification.samples_per_prompt must be >= 1 and q_steps >= 0, got "
                       f"{section.samples_per_prompt}, {section.q_steps}")
    if not (section.learning_rate > 0 and section.eval_temperature >= 0):
      raise ValueError("rl.rectification.learning_rate must be > 0 and eval_temperature >= 0")
