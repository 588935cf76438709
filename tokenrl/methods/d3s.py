"""`rl.objective=d3s`: Dynamic Dual-Level Down-Sampling (arXiv 2509.22115, spec §3).

After the GRPO-family shaping (advantages on all G rollouts), the loss mask keeps only the
max-variance subset of rollouts and, inside them, the top-K fraction of tokens by |A|·H (H =
sampler entropy of the rollout policy). Both sizes follow the linear schedule over the RL run.
The selection multiplies the loss mask, so `token-mean` divides by the selected tokens (§0).
The schedule values are not published: the defaults below are ours (see README notes).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import Method, StepContext, StepData, default_shape
from tokenrl.methods.registry import register
from tokenrl.objectives import d3s as d3s_lib


@register
class D3s(Method):
  name = "d3s"
  preset = dict(loss_agg_mode="token-mean")   # spec §3b step 5: token-mean over selected tokens
  paper = "D³S: Dynamic Dual-Level Down-Sampling (arXiv 2509.22115, ICLR 2026)"
  metrics = ("d3s_sample_fraction", "d3s_token_fraction", "d3s_num_per_group", "d3s_token_k")

  def config(self):
    c = ml_collections.ConfigDict()
    c.sample_mode = "cross"      # 'cross' (D1S-Cross: pool the batch, the paper's final) | 'group'
    c.sample_frac_init = 0.5     # N_init/G at step 0 [ours: not published]; 1 = keep all rollouts
    c.sample_frac_final = 1.0    # N_final/G at the end of the schedule [ours: not published]
    c.token_frac_init = 0.2      # K_init: top-K token fraction at step 0 ("fewer than 20%")
    c.token_frac_final = 1.0     # K_final at the end of the schedule [ours: not published]
    c.schedule_steps = 0         # steps of the linear schedule; 0 = train.max_steps (the RL run)
    return c

  def validate(self, section, opts):
    if section.sample_mode not in d3s_lib.SAMPLE_MODES:
      raise ValueError(f"rl.d3s.sample_mode: expected one of {d3s_lib.SAMPLE_MODES}, "
                       f"got {section.sample_mode!r}")
    for key in ("sample_frac_init", "sample_frac_final", "token_frac_init", "token_frac_final"):
      if not 0 < section[key] <= 1:
        raise ValueError(f"rl.d3s.{key}: expected in (0, 1], got {section[key]}")
    if section.schedule_steps < 0:
      raise ValueError(f"rl.d3s.schedule_steps: expected >= 0, got {section.schedule_steps}")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    data = default_shape(ctx, data)
    sec, G = ctx.section, ctx.G
    total = sec.schedule_steps or ctx.cfg.train.max_steps
    frac, k = d3s_lib.d3s_schedule(ctx.step / max(total, 1), sec.sample_frac_init,
                                   sec.sample_frac_final, sec.token_frac_init,
                                   sec.token_frac_final)
    n_keep = min(max(d3s_lib.round_half_up(frac * G), 1), G)
    adv = jnp.asarray(data.advantages)
    seq_adv = adv if adv.ndim == 1 else adv.sum(axis=1) / jnp.maximum(
        jnp.asarray(data.mask).sum(axis=1), 1)
    keep = np.asarray(d3s_lib.select_samples(seq_adv, G, n_keep, mode=sec.sample_mode))
    mask = data.mask * keep[:, None].astype(data.mask.dtype)
    sel = np.asarray(d3s_lib.select_tokens(adv, jnp.asarray(data.entropy), jnp.asarray(mask), k))
    before = max(int(data.mask.sum()), 1)
    data.mask = (mask * sel).astype(data.mask.dtype)
    data.metrics.update(d3s_sample_fraction=float(keep.mean()),
                        d3s_token_fraction=float(data.mask.sum() / before),
                        d3s_num_per_group=float(n_keep), d3s_token_k=float(k))
    return data
