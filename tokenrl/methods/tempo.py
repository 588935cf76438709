"""`rl.objective=tempo`: TEMPO / Prefix-to-Tree per-token advantages (spec §6).

GRPO advantages plus the one-step TD correction V(child) − V(parent) of the group's prefix tree,
non-zero only at branching tokens (tokenrl.objectives.tempo). The tree is built on the rollout's
completion ids and mask before any loss-mask shaping (dynamic sampling / truncation masks change
which rows train, not the tree). Normalisation follows rl.scale_rewards ('group' = the code's
norm_adv_by_std, 'none' = unnormalised), rl.advantage_epsilon and rl.advantage_std_ddof.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import Method, StepContext, StepData, default_shape
from tokenrl.methods.registry import register
from tokenrl.objectives import tempo as tempo_lib


@register
class Tempo(Method):
  name = "tempo"
  # train_math_tempo.sh: clip 0.2/0.28, β = 0; verl defaults token-mean and dual clip c = 3.
  preset = dict(epsilon=0.2, epsilon_high=0.28, loss_agg_mode="token-mean", clip_ratio_c=3.0,
                beta=0.0)
  paper = ("Exploiting Tree Structure for Credit Assignment in RL Training of LLMs "
           "(TEMPO, arXiv 2509.18314)")
  metrics = ("branch_token_fraction", "branch_nodes_per_group", "tempo_td_abs_mean")

  def config(self):
    c = ml_collections.ConfigDict()
    c.td_lambda = 1.0               # λ: weight of the TD term V(child) − V(parent)
    c.legacy_unused_lambda = False  # True = reference code: `lam` is ignored (TD weight 1)
    c.match_padding = False         # True = reference code: raw-id match, a pad can match a token
    return c

  def validate(self, section, opts):
    if opts["scale_rewards"] not in ("group", "none"):
      raise ValueError(f"rl.scale_rewards={opts['scale_rewards']!r}: tempo normalises per group "
                       "('group') or not at all ('none')")
    if opts["advantage_estimator"] != "grpo":
      raise ValueError(f"rl.advantage_estimator={opts['advantage_estimator']!r}: tempo builds "
                       "on the group-relative ('grpo') advantage")
    if not np.isfinite(section.td_lambda):
      raise ValueError(f"rl.tempo.td_lambda: expected a finite number, got {section.td_lambda}")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    s, opts = ctx.section, ctx.opts
    tokens, mask = jnp.asarray(data.completion), jnp.asarray(data.mask)  # before loss-mask shaping
    data = default_shape(ctx, data)  # overlong penalty on rewards, masks, token weights
    kw = dict(match_padding=bool(s.match_padding))
    adv = tempo_lib.tempo_advantages(
        tokens, mask, jnp.asarray(data.rewards), ctx.G,
        norm_adv_by_std=opts["scale_rewards"] == "group", epsilon=opts["advantage_epsilon"],
        ddof=opts["advantage_std_ddof"], td_lambda=float(s.td_lambda),
        legacy_unused_lambda=bool(s.legacy_unused_lambda), **kw)
    grpo = np.asarray(data.advantages, np.float32)                   # [N] from default_shape
    data.advantages = np.asarray(adv, np.float32)                    # [N,T]
    branching, nodes = (np.asarray(x) for x in tempo_lib.branch_stats(tokens, mask, ctx.G, **kw))
    m = np.asarray(mask, np.float32)
    valid = max(float(m.sum()), 1.0)
    data.metrics.update(
        branch_token_fraction=float((branching * m).sum() / valid),
        branch_nodes_per_group=float(nodes.mean()),
        # |A_tempo − A_grpo| on valid tokens: the size of the (normalised) TD correction.
        tempo_td_abs_mean=float((np.abs(data.advantages - grpo[:, None]) * m).sum() / valid))
    return data
