"""`rl.objective=tw_grpo`: GRPO with intra-group information-density token weights (spec §4).

Default (detached weights): after the GRPO shaping, one extra forward of the rollout policy
(`ctx.hidden`) gives the logits [N,T,V]; their log-softmax at the run temperature gives the
weights w [N,T] on the host (constants by construction; with one update per rollout they equal
the reference's weights from the current forward, in value). The weights multiply the per-token
loss (`token_weights`); the token-mean denominator stays Σ m (unweighted), as the reference.

`rl.tw_grpo.legacy_no_detach=True` reproduces the reference code: the weights are recomputed in
the jitted loss from the *current* logits without stop_gradient, so gradients flow through w.
Groups are found by id (`extra['tw_group_id']`); a micro-batch only holds whole groups when
`train.micro_batch_size` is 0 (micro-batches are strided over rows), otherwise the legacy
weights use the group members present in the micro-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import (LossContext, Method, StepContext, StepData, completion_forward,
                                  default_shape, pg_loss_from_logp)
from tokenrl.methods.registry import register
from tokenrl.objectives import tw_grpo as tw_lib


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
  z = logits.astype(np.float64) / temperature
  z -= z.max(axis=-1, keepdims=True)
  return (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(np.float32)


@register
class TwGrpo(Method):
  name = "tw_grpo"
  # Reference code: clip-higher ε = (0.20, 0.28) and token-mean loss (DAPO-style), β = 0.
  preset = dict(epsilon=0.2, epsilon_high=0.28, loss_agg_mode="token-mean", beta=0.0)
  paper = "Reinforcing Video Reasoning with Focused Thinking (TW-GRPO, arXiv 2505.24718)"
  metrics = ("tw_weight_mean", "tw_weight_max")

  def config(self):
    c = ml_collections.ConfigDict()
    c.alpha = 1.7                 # max token weight α (scripts/tw-grpo.sh; code default 1.4); 1 = GRPO
    c.legacy_no_detach = False    # True: reference behaviour, gradients flow through the weights
    return c

  def validate(self, section, opts):
    if section.alpha < 1:
      raise ValueError(f"rl.tw_grpo.alpha: expected >= 1, got {section.alpha}")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    data = default_shape(ctx, data)
    sec, G = ctx.section, ctx.G
    n = data.mask.shape[0]
    if sec.legacy_no_detach:
      data.extra["tw_group_id"] = (np.arange(n) // G).astype(np.int32)
      w = None
    else:
      _, logits = ctx.hidden(data.tokens, data.segment_ids, data.prompt_len)
      lp = jnp.asarray(_log_softmax(np.asarray(logits), ctx.opts["temperature"]))
      w = np.asarray(tw_lib.tw_token_weights(lp, jnp.asarray(data.mask), G, alpha=sec.alpha))
      data.token_weights = data.token_weights * w
    m = data.mask > 0
    if w is not None:  # (legacy: the loss logs them)
      data.metrics.update(tw_weight_mean=float(w[m].mean()) if m.any() else 1.0,
                          tw_weight_max=float(w[m].max()) if m.any() else 1.0)
    return data

  def loss_fn(self, params, mb, lctx: LossContext):
    sec = lctx.section
    if not sec["legacy_no_detach"]:
      return super().loss_fn(params, mb, lctx)
    from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
    logp, entropy, hidden = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
    logits = transformer.unembed(params, hidden, config=lctx.model)              # [n,T,V]
    lp_full = jax.nn.log_softmax(logits.astype(jnp.float32) / lctx.temperature, axis=-1)
    w = tw_lib.tw_token_weights(lp_full, mb["mask"], group_ids=mb["tw_group_id"],
                                alpha=sec["alpha"], detach=False)              # gradients flow
    loss, metrics = pg_loss_from_logp(logp, entropy, {**mb, "token_weights": mb["token_weights"] * w},
                                      lctx)
    m = mb["mask"].astype(jnp.float32)
    wv = jax.lax.stop_gradient(w)
    metrics["tw_weight_mean"] = (wv * m).sum() / jnp.maximum(m.sum(), 1.0)
    metrics["tw_weight_max"] = jnp.max(jnp.where(m > 0, wv, 0.0))
    return loss, metrics
