"""`rl.objective=tvm`: train a token-supervised value model on the policy's own samples (spec §6).

Per step: G sampled paths per problem (the default rollout) → per-token labels v_t = empirical
success probability of the paths sharing the first t tokens (prefix trie per prompt group) →
the loss regresses σ(w·h_t + b) on v_t at every completion token, h_t the policy trunk's final
hidden state *after reading* token t (`tokenrl.models.value_head`, params['value_head']).

What is trained (documented choices, [reconstructed] where TVM is unverified):
  * value loss: 'mse' by default (OVM lineage), 'bce' behind `loss_type`;
  * `detach_trunk=True` (default): value gradients stop at the head, so the generator is the
    unchanged policy (TVM fine-tunes a separate verifier copy; here the trunk is shared, and
    `detach_trunk=False` trains it too — then keep `lm_loss_coef` > 0 as OVM does);
  * the LM loss (OVM's generator NLL on the same paths) is OFF by default (`lm_loss_coef=0`);
  * no policy-gradient term by default (`pg_coef=0`): TVM trains a verifier, not the policy.
The optimizer's weight decay still moves trunk matrices; set optimizer.weight_decay=0 to keep
the generator bit-exact. Use the trained value model with tokenrl/eval/value_search.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import Method, StepContext, StepData, default_shape, pg_loss_from_logp
from tokenrl.methods.registry import register
from tokenrl.models import transformer
from tokenrl.models import value_head as vh
from tokenrl.objectives import token_logprobs
from tokenrl.objectives import tvm as tvm_lib


def value_logits(params, tokens: jax.Array, segment_ids: jax.Array, *, config, prompt_len: int,
                 detach_trunk: bool = True, remat: bool = False):
  """(x [N,T] value logits of every completion prefix, hidden [N,P+T,D]).

  x[n,t] = w·h + b at the position of completion token t (the state after reading it), so
  σ(x[n,t]) scores the prefix s_{1:t}; hidden is returned for the LM / policy terms.
  """
  hidden, _ = transformer.forward(params, tokens, config=config, segment_ids=segment_ids,
                                  return_hidden=True, remat=remat)
  h = hidden[:, prompt_len:]
  if detach_trunk:
    h = jax.lax.stop_gradient(h)
  return vh.values(params[vh.KEY], h), hidden


@register
class Tvm(Method):
  name = "tvm"
  paper = "Token-Supervised Value Models for Enhancing Mathematical Reasoning (arXiv 2407.12863)"
  metrics = ("value_loss", "value_mae", "value_final_accuracy", "value_mean", "value_label_mean")

  def config(self):
    c = ml_collections.ConfigDict()
    c.loss_type = "mse"       # 'mse' (OVM lineage, default) | 'bce' soft-target; TVM's own unverified
    c.value_coef = 1.0        # weight of the value loss
    c.lm_loss_coef = 0.0      # weight of the generator NLL on the sampled paths (OVM: on, weight unread)
    c.pg_coef = 0.0           # weight of the GRPO loss on the same rollouts (0: verifier only; not TVM)
    c.detach_trunk = True     # value gradients stop at the head (the generator stays the policy)
    c.dedup_paths = False     # count identical sampled paths once in the labels (OVM de-duplicates)
    return c

  def validate(self, section, opts):
    del opts
    if section.loss_type not in tvm_lib.LOSS_TYPES:
      raise ValueError(f"rl.tvm.loss_type: expected one of {tvm_lib.LOSS_TYPES}, "
                       f"got {section.loss_type!r}")
    for f in ("value_coef", "lm_loss_coef", "pg_coef"):
      if section[f] < 0:
        raise ValueError(f"rl.tvm.{f}: expected >= 0, got {section[f]}")

  def init_params(self, params, model, rng):
    return vh.add_value_head(params, model.dim, rng)

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    rollout_mask = data.mask.copy()                         # up to and including EOS
    labels = tvm_lib.grouped_token_value_labels(data.completion, rollout_mask, data.correct, ctx.G,
                                                dedup=ctx.section.dedup_paths)
    data = default_shape(ctx, data)
    data.extra.update(tvm_labels=labels, tvm_mask=rollout_mask.astype(np.int32),
                      tvm_correct=data.correct.astype(np.float32))
    m = rollout_mask > 0
    data.metrics["value_label_mean"] = float(labels[m].mean()) if m.any() else 0.0
    return data

  def denominator(self, batch, lctx):
    return {"pg": super().denominator(batch, lctx),
            "rows": jnp.asarray(batch["mask"].shape[0], jnp.float32),
            "tokens": jnp.maximum(batch["tvm_mask"].sum().astype(jnp.float32), 1.0)}

  def loss_fn(self, params, mb, lctx):
    sec, p = lctx.section, lctx.prompt_len
    x, hidden = value_logits(params, mb["tokens"], mb["segment_ids"], config=lctx.model,
                             prompt_len=p, detach_trunk=sec["detach_trunk"], remat=lctx.remat)
    vm = mb["tvm_mask"]
    vloss, metrics = tvm_lib.token_value_loss(x, mb["tvm_labels"], vm, loss_type=sec["loss_type"],
                                              denominator=lctx.denom["rows"])
    loss = sec["value_coef"] * vloss
    sg = jax.lax.stop_gradient
    f = jax.nn.sigmoid(sg(x))
    last = jnp.maximum(vm.sum(1) - 1, 0)                                           # [N]
    f_last = jnp.take_along_axis(f, last[:, None], 1)[:, 0]
    rows = (vm.sum(1) > 0).astype(jnp.float32)
    hit = ((f_last > 0.5) == (mb["tvm_correct"] > 0.5)).astype(jnp.float32)
    metrics.update(
        value_loss=sg(tvm_lib.token_value_loss(x, mb["tvm_labels"], vm, loss_type=sec["loss_type"])[0]),
        value_final_accuracy=(hit * rows).sum() / jnp.maximum(rows.sum(), 1.0),
        value_mean=jnp.where(vm > 0, f, 0.0).sum() / jnp.maximum(vm.sum(), 1.0))
    if sec["pg_coef"] > 0 or sec["lm_loss_coef"] > 0:
      logits = transformer.unembed(params, hidden[:, p - 1:-1], config=lctx.model)  # [N,T,V]
      logp, entropy = token_logprobs(logits, mb["tokens"][:, p:], temperature=lctx.temperature)
      if sec["pg_coef"] > 0:
        pg, pm = pg_loss_from_logp(logp, entropy, mb, dataclasses.replace(lctx, denom=lctx.denom["pg"]))
        loss = loss + sec["pg_coef"] * pg
        metrics.update(pm)
      if sec["lm_loss_coef"] > 0:
        nll = -jnp.where(vm > 0, logp, 0.0).sum() / lctx.denom["tokens"]
        loss = loss + sec["lm_loss_coef"] * nll
        metrics["lm_loss"] = sg(-jnp.where(vm > 0, logp, 0.0).sum() / jnp.maximum(vm.sum(), 1.0))
    return loss, metrics
