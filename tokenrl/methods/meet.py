"""`rl.objective=meet`: MEET, controls tuned by PEFT then full fine-tuning (spec §9, [abstract-level]).

A standalone two-stage trainer (tokenrl.train.meet.train_meet), not an RL-loop method:
`pairwise = True` keeps it out of the RL integration test, `trainer` names its entry point.
"""

from __future__ import annotations

import ml_collections

from tokenrl.methods.base import Method
from tokenrl.methods.registry import register

STAGES = ("both", "1", "2")
PEFTS = ("prompt", "lora")


@register
class Meet(Method):
  name = "meet"
  paper = "Parameter-Efficient Tuning Helps Language Model Alignment (MEET, arXiv 2310.00819)"
  metrics = ("nll_good", "nll_bad")
  pairwise = True
  trainer = "tokenrl.train.meet:train_meet"

  def config(self):
    c = ml_collections.ConfigDict()
    c.stage = "both"                # 'both' = MEET; '1' = PEFT only; '2' = joint from random controls
    c.peft = "prompt"               # control parameters: 'prompt' (soft tokens) | 'lora' (one per control)
    c.n_control_tokens = 4          # n_c soft tokens per control (peft='prompt'); not in the abstract
    c.lora_rank = 8                 # r of each control's LoRA (peft='lora')
    c.lora_alpha = 16.0             # α of each control's LoRA (delta scaled by α/r)
    c.stage1_steps = 100            # PEFT steps with the LLM frozen
    c.stage1_learning_rate = 1e-2   # AdamW lr of the control parameters (stage 1)
    c.stage2_steps = 100            # full fine-tuning steps (θ and controls)
    c.stage2_learning_rate = 1e-4   # AdamW lr of stage 2
    return c

  def sequence_budgets(self, bctx):
    """Rows prompt ⊕ n_c control slots (peft='prompt'), bucketed, + the greedy evaluation's
    sampler.max_new_tokens, or + the training completion bucket (from 8) of answer + EOS."""
    from tokenrl.methods.budgets import Budget, bucket  # pylint: disable=g-import-not-at-top
    from tokenrl.rollout.sampler import bucket_length  # pylint: disable=g-import-not-at-top
    n_c = bctx.section.n_control_tokens if bctx.section.peft == "prompt" else 0
    p = bucket(bctx.prompt_len + n_c)
    t = int(bucket_length(bctx.answer_tokens, minimum=8))
    knobs = (("rl.meet.n_control_tokens", 1),) if n_c else ()
    return [Budget("meet evaluation rows", p + bctx.T,
                   f"bucket {p} of prompt {bctx.prompt_len} + {n_c} control tokens + "
                   f"sampler.max_new_tokens {bctx.T}", knobs + (("sampler.max_new_tokens", 1),)),
            Budget("meet training rows", p + t,
                   f"bucket {p} of prompt {bctx.prompt_len} + {n_c} control tokens + completion "
                   f"bucket {t}", knobs)]

  def validate(self, section, opts):
    del opts
    if section.stage not in STAGES:
      raise ValueError(f"rl.meet.stage: expected one of {STAGES}, got {section.stage!r}")
    if section.peft not in PEFTS:
      raise ValueError(f"rl.meet.peft: expected one of {PEFTS}, got {section.peft!r}")
    for key in ("n_control_tokens", "lora_rank"):
      if section[key] < 1:
        raise ValueError(f"rl.meet.{key}: expected >= 1, got {section[key]}")
    for key in ("stage1_steps", "stage2_steps"):
      if section[key] < 0:
        raise ValueError(f"rl.meet.{key}: expected >= 0, got {section[key]}")
    for key in ("lora_alpha", "stage1_learning_rate", "stage2_learning_rate"):
      if not section[key] > 0:
        raise ValueError(f"rl.meet.{key}: expected > 0, got {section[key]}")
