"""`rl.objective=dco`: Direct Coverage Optimization on the SFT answers (spec §8).

No completions are sampled: `rollout` builds teacher-forced rows (prompt + example answer +
EOS, shared with OTR) and the loss is the pass@N coverage loss of the whole answer,
ℓ = −log(1 − (1 − p̂)^N) with p̂ = π_θ(answer + EOS | prompt) at temperature 1, averaged over
examples. N (`rl.dco.n`) is required: the test-time sampling budget the model is tuned for.
Direct-answer DCO only (the CoT / proof-tree variants were not recovered). The loop's
reward/accuracy columns are 0 for this method; see the dco_* metrics.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from tokenrl.methods.base import Method, StepContext, StepData
from tokenrl.methods.otr import teacher_forced_budgets, teacher_forced_data, teacher_forced_logits
from tokenrl.methods.registry import register
from tokenrl.objectives import dco as dco_lib
from tokenrl.objectives import token_logprobs


@register
class Dco(Method):
  name = "dco"
  paper = ("Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence "
           "(arXiv 2502.07154)")
  metrics = ("dco_factor", "dco_p", "dco_ce", "dco_exact")

  def config(self):
    c = ml_collections.ConfigDict()
    c.n = config_dict.placeholder(int)  # N of pass@N, REQUIRED (the paper sweeps 16..4096); 1 = CE
    return c

  def validate(self, section, opts):
    del opts
    if section.n is None or section.n < 1:
      raise ValueError(f"rl.dco.n: required, an int >= 1 (the test-time pass@N budget); "
                       f"got {section.n!r}")

  quickstart_overrides = {"rl.dco.n": 4}   # rl.dco.n is required: the pass@N budget

  def sequence_budgets(self, bctx):
    return teacher_forced_budgets(bctx)

  def rollout(self, ctx: StepContext) -> StepData:
    return teacher_forced_data(ctx)

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    del ctx
    return data

  def denominator(self, batch, lctx):
    # Mean over the minibatch's examples (padding rows of teacher_forced_data excluded).
    return (batch["mask"].sum(axis=1) > 0).sum().astype(jnp.float32)

  def loss_fn(self, params, mb, lctx):
    logits = teacher_forced_logits(params, mb, lctx)                              # [N,T,V]
    logp, _ = token_logprobs(logits, mb["tokens"][:, lctx.prompt_len:])           # τ = 1
    mask = mb["mask"]
    seq = dco_lib.sequence_logp(logp, mask)                                       # [N]
    return dco_lib.dco_loss(seq, lctx.section["n"], row_mask=(mask.sum(1) > 0),
                            denominator=lctx.denom)

