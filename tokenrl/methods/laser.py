"""`rl.objective=laser`: GRPO + last-token self-rewarding (LaSeR, spec §5).

Per step (host, `shape`): the GRPO advantages A_v as usual; then every row gets one extra
completion column so that the slot right after its EOS exists even for a completion of full
length T, and the self-reward token z_c is written into that slot (as the reference code does:
masked, and causal attention keeps every earlier position unchanged, so the policy loss is the
same). One log-prob pass of the rollout policy reads lpz = log π(z_c | x, y) there (the
rollout-time self-reward: metrics, c_ref estimate, advantage mixing). In the loss, lpz is
recomputed from the training forward's hidden state at that slot, at temperature 1, and
α·L_sr is added to the policy loss.

Schedule (1-based RL step s, as verl): s ≤ w_r plain GRPO; s > w_r adds α·L_sr; s > w_r + w_sr
also mixes Â = (1−τ)·A_v + τ·A_s. Deviation: the rollout-time lpz comes from the loop's
log-prob pass at rl.temperature, multiplied by τ (the reference code's approximation; exact at
the spec's τ = 1); the loss uses the exact temperature-1 log-softmax.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import (Method, StepContext, StepData, completion_forward, default_shape,
                                  pg_loss_from_logp)
from tokenrl.methods.registry import register
from tokenrl.models import transformer
from tokenrl.objectives import laser as laser_lib


def extend_completion(data: StepData, pad_id: int) -> StepData:
  """Append one completion column (token pad_id, segment 1, mask 0, weights 0) to every row."""
  n = data.mask.shape[0]
  col = lambda x, v: np.concatenate([x, np.full((n, 1), v, x.dtype)], axis=1)
  data.tokens = col(data.tokens, pad_id)
  data.segment_ids = col(data.segment_ids, 1)
  data.mask = col(data.mask, 0)
  data.sampler_logp = col(data.sampler_logp.astype(np.float32), 0.0)
  data.entropy = col(data.entropy.astype(np.float32), 0.0)
  if data.token_weights is not None:
    data.token_weights = col(data.token_weights.astype(np.float32), 0.0)
  if data.advantages is not None and np.ndim(data.advantages) == 2:
    data.advantages = col(np.asarray(data.advantages, np.float32), 0.0)
  return data


def resolve_token_id(token_id: int, vocab_size: int) -> int:
  """z_c: `token_id`, or the last vocabulary id when it is −1."""
  z = vocab_size - 1 if token_id == -1 else token_id
  if not 0 <= z < vocab_size:
    raise ValueError(f"rl.laser.token_id: expected -1 or an id in [0, {vocab_size}), got {token_id}")
  return z


@register
class Laser(Method):
  name = "laser"
  preset = dict(loss_agg_mode="token-mean")  # the released scripts' GRPO setting
  paper = "LaSeR: Reinforcement Learning with Last-Token Self-Rewarding (code: RUCBM/LaSeR)"
  metrics = ("self_reward_accuracy", "self_reward_auc", "self_reward_mean", "self_reward_loss",
             "self_reward_lpz", "self_reward_c_ref", "self_reward_mixed")

  def config(self):
    c = ml_collections.ConfigDict()
    c.coef = 0.1                    # α: weight of L_sr in the actor loss (self_reward_loss_coef)
    c.beta_v = 0.1                  # β_v: r_s = β_v·(log π(z_c) − c_ref) (self_reward_kl_coef)
    c.token_id = -1                 # z_c id; -1 = last vocab id (Qwen2.5 151652, Llama-3 128002)
    c.c_ref = -23.0                 # log π_ref(z_c|x,y) constant (Qwen2.5-7B; re-estimate per model)
    c.estimate_c_ref = False        # True: c_ref = mean rollout lpz at the first RL step (= π_ref)
    c.class_balance = True          # w_c = N/(2N_c), w_i = N/(2N_i) over finished rows
    c.tau = 0.1                     # τ: weight of the self-reward advantage A_s in Â (0 = off)
    c.adv_threshold = 0.1           # T: use A_s in a group only if std of clip(r_s) > T
    c.reasoning_warmup_steps = 200  # w_r: RL steps of plain GRPO before L_sr is added
    c.self_reward_warmup_steps = 200  # w_sr: further steps with L_sr before advantage mixing
    c.verify_threshold = 0.5        # self-verification: correct iff clip(r_s, 0, 1) > this
    return c

  def validate(self, section, opts):
    del opts
    for f in ("coef", "beta_v", "reasoning_warmup_steps", "self_reward_warmup_steps"):
      if section[f] < 0:
        raise ValueError(f"rl.laser.{f}: expected >= 0, got {section[f]}")
    if not 0 <= section.tau <= 1:
      raise ValueError(f"rl.laser.tau: expected in [0, 1], got {section.tau}")
    if section.token_id < -1:
      raise ValueError(f"rl.laser.token_id: expected -1 or a token id, got {section.token_id}")

  # Warm-ups that a short quickstart run reaches: RL step 1 adds L_sr, step 2 mixes advantages.
  quickstart_overrides = {"rl.laser.reasoning_warmup_steps": 0,
                          "rl.laser.self_reward_warmup_steps": 1, "rl.laser.estimate_c_ref": True}

  def sequence_budgets(self, bctx):
    """The rollout, and the training rows with the extra self-reward column: P + T + 1."""
    from tokenrl.methods.budgets import Budget, rollout_budget  # pylint: disable=g-import-not-at-top
    return [rollout_budget(bctx),
            Budget("laser training rows", bctx.P + bctx.T + 1,
                   f"prompt bucket {bctx.P} + sampler.max_new_tokens {bctx.T} + 1 self-reward "
                   "token", (("sampler.max_new_tokens", 1),))]

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    sec, G = ctx.section, ctx.G
    lengths = data.mask.sum(axis=1).astype(np.int32)       # before any mask zeroing by shape
    finished = (~np.asarray(data.truncated)).astype(np.float32)
    data = default_shape(ctx, data)
    data = extend_completion(data, ctx.model.pad_id)
    z = resolve_token_id(sec.token_id, ctx.model.vocab_size)
    n, p = data.mask.shape[0], data.prompt_len
    pos = np.minimum(lengths, data.mask.shape[1] - 1)       # completion slot right after EOS
    data.tokens[np.arange(n), p + pos] = z
    lp, _ = ctx.logprobs(data.tokens, data.segment_ids, p)
    lpz = np.asarray(lp, np.float64)[np.arange(n), pos] * ctx.opts["temperature"]
    if sec.estimate_c_ref:
      if "c_ref" not in ctx.state:
        ctx.state["c_ref"] = float(lpz[finished > 0].mean() if finished.any() else lpz.mean())
      c_ref = ctx.state["c_ref"]
    else:
      c_ref = float(sec.c_ref)
    r_s = sec.beta_v * (lpz - c_ref)
    correct = data.correct.astype(np.float32)
    s = ctx.step + 1                                        # verl counts steps from 1
    mixed = sec.tau > 0 and s > sec.reasoning_warmup_steps + sec.self_reward_warmup_steps
    if mixed:
      a_v = jnp.asarray(data.advantages, jnp.float32)
      a_s = laser_lib.self_reward_advantages(jnp.asarray(r_s, jnp.float32), jnp.asarray(finished),
                                             a_v, G, threshold=sec.adv_threshold)
      data.advantages = np.asarray(laser_lib.mix_advantages(a_v, a_s, tau=sec.tau), np.float32)
    w = (np.asarray(laser_lib.class_balance_weights(jnp.asarray(correct), jnp.asarray(finished)))
         if sec.class_balance else np.ones(n, np.float32))
    gate = float(s > sec.reasoning_warmup_steps)
    data.extra.update(laser_pos=pos.astype(np.int32), laser_target=correct,
                      laser_finished=finished, laser_weight=w.astype(np.float32),
                      laser_gate=np.full(n, gate, np.float32),
                      laser_c_ref=np.full(n, c_ref, np.float32))
    ver = laser_lib.verification_metrics(r_s, correct, finished, threshold=sec.verify_threshold)
    data.metrics.update(self_reward_accuracy=ver["accuracy"], self_reward_auc=ver["auc"],
                        self_reward_mean=float(np.clip(r_s, 0, 1)[finished > 0].mean())
                        if finished.any() else 0.0,
                        self_reward_lpz=float(lpz.mean()), self_reward_c_ref=float(c_ref),
                        self_reward_mixed=float(mixed))
    return data

  def denominator(self, batch, lctx):
    # The policy loss's denominator, and the minibatch's row count for L_sr (mean over rows).
    return {"pg": super().denominator(batch, lctx),
            "rows": jnp.asarray(batch["mask"].shape[0], jnp.float32)}

  def loss_fn(self, params, mb, lctx):
    sec = lctx.section
    logp, entropy, hidden = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
    loss, metrics = pg_loss_from_logp(logp, entropy, mb, dataclasses.replace(lctx, denom=lctx.denom["pg"]))
    pos = mb["laser_pos"]
    h = jnp.take_along_axis(hidden, pos[:, None, None], axis=1)                  # [N,1,D]
    logits = transformer.unembed(params, h, config=lctx.model)[:, 0]             # [N,V], τ = 1
    z = resolve_token_id(sec["token_id"], lctx.model.vocab_size)
    lpz = jax.nn.log_softmax(logits, axis=-1)[:, z]
    r_s = laser_lib.self_reward_scores(lpz, beta_v=sec["beta_v"], c_ref=mb["laser_c_ref"])
    args = (r_s, mb["laser_target"], mb["laser_finished"])
    sr = laser_lib.self_reward_loss(*args, mb["laser_weight"] * mb["laser_gate"],
                                    denominator=lctx.denom["rows"])
    metrics["self_reward_loss"] = jax.lax.stop_gradient(
        laser_lib.self_reward_loss(*args, mb["laser_weight"]))
    return loss + sec["coef"] * sr, metrics
