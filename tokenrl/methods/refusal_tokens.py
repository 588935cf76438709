"""`rl.objective=refusal_tokens`: category tokens + inference-time refusal thresholding (spec §10).

A standalone trainer (tokenrl.train.refusal.train_refusal: SFT with the category token first,
then the threshold sweep at inference), not an RL-loop method: `pairwise = True` keeps it out of
the RL integration test, `trainer` names its entry point. The decision rules and the sampler
logit processors are in tokenrl/objectives/refusal.py.
"""

from __future__ import annotations

import ml_collections

from tokenrl.data.refusal import KINDS
from tokenrl.methods.base import Method
from tokenrl.methods.registry import register


@register
class RefusalTokens(Method):
  name = "refusal_tokens"
  paper = "A Simple Way to Calibrate Refusals in Large Language Models (refusal tokens, arXiv 2412.06748)"
  metrics = ("token_accuracy",)
  pairwise = True
  trainer = "tokenrl.train.refusal:train_refusal"

  def config(self):
    c = ml_collections.ConfigDict()
    c.refuse_token = "?"              # [refuse] text; id = last id of encode(text) (reference)
    c.respond_token = "#"             # [respond] text
    c.refusal_fraction = 0.25         # share of unanswerable prompts in the embedded task
    c.kinds = "negative,divzero"      # unanswerable kinds (tokenrl.data.refusal.KINDS)
    c.threshold = -1.0                # t: -1 = p_ref >= p_resp (code default); else p_ref >= t
    c.softmax_temperature = 1.0       # τ_sm of p = softmax(z / τ_sm) (code default 1)
    c.logit_bias = 0.0                # δ added to the refusal logit (alternative knob; 0 = off)
    c.eval_thresholds = (-1.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # inference-time sweep (no retraining)
    return c

  def validate(self, section, opts):
    del opts
    for t in (section.threshold, *section.eval_thresholds):
      if not (t == -1.0 or 0.0 <= t <= 1.0):
        raise ValueError(f"rl.refusal_tokens.threshold / eval_thresholds: expected -1 or in "
                         f"[0, 1], got {t}")
    if not section.softmax_temperature > 0:
      raise ValueError(f"rl.refusal_tokens.softmax_temperature: expected > 0, got "
                       f"{section.softmax_temperature}")
    if not 0.0 <= section.refusal_fraction <= 1.0:
      raise ValueError(f"rl.refusal_tokens.refusal_fraction: expected in [0, 1], got "
                       f"{section.refusal_fraction}")
    kinds = [k for k in section.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
      raise ValueError(f"rl.refusal_tokens.kinds: expected a comma list of {KINDS}, got "
                       f"{section.kinds!r}")
    if section.refuse_token == section.respond_token or not section.refuse_token:
      raise ValueError("rl.refusal_tokens.refuse_token / respond_token: expected two different "
                       f"non-empty texts, got {section.refuse_token!r}, {section.respond_token!r}")
