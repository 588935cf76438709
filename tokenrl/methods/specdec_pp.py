"""`rl.objective=specdec_pp`: train a SpecDec++ acceptance head (spec decoding-and-test-time §3).

A standalone trainer (tokenrl.train.specdec_pp.train_specdec_pp: optional target / draft SFT
warm-ups, then the head on the frozen draft's hidden states with min(1, p/q) labels), not an
RL-loop method: `pairwise = True` keeps it out of the RL integration test, `trainer` names its
entry point. The labels, data mixing and loss are in tokenrl/objectives/specdec_pp.py; the
trained head (WORKDIR/accept_head) is what sampler.speculative.head points at.
"""

from __future__ import annotations

import ml_collections

from tokenrl.methods.base import Method
from tokenrl.methods.registry import register


@register
class SpecDecPP(Method):
  name = "specdec_pp"
  paper = ("SpecDec++: Boosting Speculative Decoding via Adaptive Candidate Lengths "
           "(arXiv 2405.19715)")
  metrics = ("label_mean", "pred_mean")
  pairwise = True
  trainer = "tokenrl.train.specdec_pp:train_specdec_pp"

  def config(self):
    c = ml_collections.ConfigDict()
    c.num_blocks = 3              # residual SiLU blocks of the head (reference 3)
    c.shared_blocks = True        # one block applied num_blocks times (the reference's quirk)
    c.rejection_weight = 6.0      # w: weight of the rejection class in the BCE (reference 6)
    c.mix_ratio = 0.15            # r: share of response positions holding the target's X_i
    c.eval_prompts = 64           # held-out prompts whose labels score the head (fixed draws)
    c.draft_sft_steps = 0         # SFT steps of the draft before the head (train.sft_* knobs)
    # Shape of the preset draft used when sampler.speculative.draft_model is '' (family,
    # vocabulary and context of the target).
    c.draft_dim = 64              # D
    c.draft_num_layers = 1        # L
    c.draft_num_heads = 4         # Q
    c.draft_num_kv_heads = 2      # K
    c.draft_mlp_dim = 128         # F
    return c

  def validate(self, section, opts):
    del opts
    if section.num_blocks < 0:
      raise ValueError(f"rl.specdec_pp.num_blocks: expected >= 0, got {section.num_blocks}")
    if not section.rejection_weight > 0:
      raise ValueError(f"rl.specdec_pp.rejection_weight: expected > 0, got "
                       f"{section.rejection_weight}")
    if not 0.0 <= section.mix_ratio < 1.0:
      raise ValueError(f"rl.specdec_pp.mix_ratio: expected in [0, 1) (1 leaves no draft token "
                       f"to train on), got {section.mix_ratio}")
    if section.eval_prompts < 1 or section.draft_sft_steps < 0:
      raise ValueError("rl.specdec_pp.eval_prompts must be >= 1 and draft_sft_steps >= 0, got "
                       f"{section.eval_prompts}, {section.draft_sft_steps}")
    for key in ("draft_dim", "draft_num_layers", "draft_num_heads", "draft_num_kv_heads",
                "draft_mlp_dim"):
      if section[key] < 1:
        raise ValueError(f"rl.specdec_pp.{key}: expected >= 1, got {section[key]}")
    if section.draft_num_heads % section.draft_num_kv_heads or (
        section.draft_dim % section.draft_num_heads):
      raise ValueError("rl.specdec_pp.draft_num_heads must divide draft_dim and be a multiple of "
                       f"draft_num_kv_heads, got dim {section.draft_dim}, heads "
                       f"{section.draft_num_heads}, kv heads {section.draft_num_kv_heads}")
