"""`rl.objective=grpo_neg`: GRPO with only the negative group-relative advantages (spec §12).

`rl.grpo_neg.sequence_level=True` gives GSPO-N (sequence-level importance ratio, GSPO clip).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from tokenrl.methods.base import Method, StepContext, StepData, default_shape
from tokenrl.methods.registry import register
from tokenrl.objectives.negative import negative_only_advantages


@register
class GrpoNeg(Method):
  name = "grpo_neg"
  paper = "The Debate on RLVR Reasoning Capability Boundary (arXiv 2510.04028)"
  metrics = ("negative_fraction",)

  def config(self):
    c = ml_collections.ConfigDict()
    c.sequence_level = False  # True = GSPO-N: set rl.importance_sampling_level='sequence' too
    return c

  def validate(self, section, opts):
    if section.sequence_level and opts["importance_sampling_level"] != "sequence":
      raise ValueError("rl.grpo_neg.sequence_level=True needs "
                       "rl.importance_sampling_level='sequence' (and GSPO's epsilons)")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    data = default_shape(ctx, data)
    a = np.asarray(data.advantages)
    data.advantages = np.asarray(negative_only_advantages(a), np.float32)
    rows = data.mask.sum(axis=1) > 0
    data.metrics["negative_fraction"] = float(((a < 0) & rows).sum() / max(rows.sum(), 1))
    return data
