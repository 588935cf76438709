"""`rl.objective=palace`: GRPO on PALACE's count reward (spec analysis-and-auditing.md §5).

The policy is a hidden-length estimator: it reads a visible (prompt, answer) pair and writes
'<count>m̂</count>'. The method owns its reward: each completion is parsed on the host
(`tokenrl.data.palace`, one strict regex) and scored against the example's hidden count m:

  rl.palace.reward='linear'     r = max(0, 1 − |m̂ − m|/m)      (default)
  rl.palace.reward='threshold'  r = 1[|m̂ − m|/m ≤ rl.palace.tau]

an unparseable completion scoring 0. The advantage is the configured GRPO-family estimator
(`default_shape`: group-relative, rl.advantage_std_ddof) and the update is the plain clipped
policy loss: nothing else changes. `correct` (the logged accuracy and DAPO's filter) is
acc@τ of the row. m comes from example['count'] (the hidden_length task) or a
'<count>N</count>' answer; a task where no training example has a count is refused at start-up
(`check_examples`), and rows without one score 0 (the metric count_missing counts them).

The domain router of PALACE is not part of this loop: prompts carry the domain tag
(data.tiers tag:1) during training, and at audit time a classifier on the estimator's
mean-pooled hidden states chooses the tag (tokenrl/audit/palace.py); why, in that file.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from tokenrl.data import palace as counts
from tokenrl.methods.base import Method, StepContext, StepData, default_rollout
from tokenrl.methods.registry import register


@register
class Palace(Method):
  name = "palace"
  paper = ("Predictive Auditing of Hidden Tokens in LLM APIs via Reasoning Length Estimation "
           "(PALACE, arXiv 2508.00912)")
  metrics = ("count_re", "count_parsed", "count_missing")
  # The method needs examples that carry a hidden count (the embedded task hidden_length).
  quickstart_overrides = {"data.task": "hidden_length", "data.tiers": "math:1-4,code:3-8,tag:1",
                          "sampler.max_new_tokens": 20}

  def config(self):
    c = ml_collections.ConfigDict()
    c.reward = "linear"   # 'linear' max(0, 1 − RE) | 'threshold' 1[RE ≤ tau] ([recon], spec E1)
    c.tau = 0.1           # τ of the 'threshold' reward and of the logged accuracy acc@τ
    return c

  def validate(self, section, opts):
    del opts
    if section.reward not in counts.REWARD_KINDS:
      raise ValueError(f"rl.palace.reward: expected one of {counts.REWARD_KINDS}, got "
                       f"{section.reward!r}")
    if not 0 < section.tau < 1:
      raise ValueError(f"rl.palace.tau: expected in (0, 1), e.g. 0.1, got {section.tau}")

  def check_examples(self, cfg, examples):
    # A task without hidden counts would train on an all-zero reward for the whole run.
    if len(examples) and np.isnan(counts.true_counts(examples)).all():
      raise ValueError(
          f"rl.objective=palace: no example of data.task={cfg.data.task!r} carries a hidden "
          "count, so every reward would be 0; use the embedded task: --config.data.task="
          "hidden_length --config.data.tiers=math:1-4,code:3-8,tag:1 (or configs/palace.py)")

  def rollout(self, ctx: StepContext) -> StepData:
    data = default_rollout(ctx)
    true = counts.true_counts(data.examples)                     # [N], NaN = no count
    data.rewards = counts.count_reward(data.texts, true, kind=ctx.section.reward,
                                       tau=ctx.section.tau)
    pred = counts.parse_counts(data.texts)                       # [N], NaN = unparseable
    known = ~np.isnan(true)
    re_ = np.full(len(true), np.inf)
    if known.any():
      re_[known] = counts.relative_error(pred[known], true[known])
    data.correct = (re_ <= ctx.section.tau + 1e-12).astype(np.float32)
    # count_re: mean min(RE, 1) over the rows with a count (unparseable = 1, as its reward 0;
    # 1.0 when no row has a count), so the logged value is always finite.
    data.metrics.update(
        count_re=float(np.minimum(re_[known], 1.0).mean()) if known.any() else 1.0,
        count_parsed=float(np.mean(~np.isnan(pred))),
        count_missing=float(np.mean(~known)))
    return data
