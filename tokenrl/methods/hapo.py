"""`rl.objective=hapo`: Heterogeneous Adaptive Policy Optimization (spec §5), all four parts.

1. Adaptive temperature (rollout): the sampler's logit processor `AdaptiveTemperature` tempers
   each token by T_t = T₀·(1 + τ_T·clip(ĥ_t, −1, 1)), ĥ_t from the current logits' entropy and
   the normalisation constants of the *previous* step's old-policy entropies (ctx.state
   'hapo_entropy_stats'); no adaptation at the first step (no statistics yet). The sampler's
   log-probs are those of the tempered distribution. After sampling, one forward of the rollout
   policy at T₀ (`ctx.logprobs`) gives the old-policy entropies of this step: their statistics
   are stored for the next step, and T_t is recomputed from them for the logged stats.
2. Token-level group-average advantages with the GRPO fallback (`token_group_average_advantages`).
3-4. Asymmetric adaptive clipping and differential advantage redistribution in the loss, with ĥ
   from the micro-batch's current entropies (statistics per micro-batch, as the reference), dual
   clip c = 3, token-mean (`hapo_policy_loss`).

Note: the sampler treats the processor as a static argument, so each new set of statistics
compiles the decode loop once more (one compile per RL step on a real run). See README notes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.methods.base import (LossContext, Method, StepContext, StepData, completion_forward,
                                  default_shape, rollout_to_data)
from tokenrl.methods.registry import register
from tokenrl.objectives import hapo as hapo_lib

STATE_KEY = "hapo_entropy_stats"


@register
class Hapo(Method):
  name = "hapo"
  # DAPO-style: token-mean, no KL; base ε_l = ε_h = 0.2, dual clip c = 3 (HAPO recipes).
  preset = dict(epsilon=0.2, epsilon_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                beta=0.0)
  paper = ("HAPO: From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's "
           "Nature (arXiv 2507.21848, unconfirmed)")
  metrics = ("hapo_temperature_mean", "hapo_temperature_min", "hapo_temperature_max",
             "hapo_adapted", "hapo_fallback_fraction", "hapo_h_hat_mean", "hapo_eps_low_mean",
             "hapo_eps_high_mean", "hapo_redistributed_fraction")

  def config(self):
    c = ml_collections.ConfigDict()
    c.tau_temperature = 0.05       # τ_T of T_t = T₀(1 + τ_T·ĥ); lower it if training collapses
    c.adaptive_temperature = True  # adapt the sampling temperature (from the 2nd RL step on)
    c.entropy_pivot = 0.8          # q of the entropy pivot c = quantile_q(log H) (recipes; fn 0.5)
    c.clip_alpha = 1.0             # α_c: adaptive clip widening
    c.adv_beta = 1.0               # β_a: advantage redistribution strength; 0 = off
    c.token_level_advantages = True  # token-level group average (False: the GRPO advantages)
    c.fallback_threshold = 5.0     # use GRPO advantages for a group with any |A| >= this
    c.legacy_sign = False          # True: the reference code's sign quirk (ĥ >= 0 everywhere)
    return c

  def validate(self, section, opts):
    if not 0 <= section.tau_temperature < 1:
      raise ValueError(f"rl.hapo.tau_temperature: expected in [0, 1), got {section.tau_temperature}")
    if not 0 <= section.entropy_pivot <= 1:
      raise ValueError(f"rl.hapo.entropy_pivot: expected in [0, 1], got {section.entropy_pivot}")
    if section.clip_alpha < 0:
      raise ValueError(f"rl.hapo.clip_alpha: expected >= 0, got {section.clip_alpha}")
    if section.fallback_threshold <= 0:
      raise ValueError(f"rl.hapo.fallback_threshold: expected > 0, got {section.fallback_threshold}")
    for key, ok in (("beta", opts["beta"] == 0), ("entropy_coeff", opts["entropy_coeff"] == 0),
                    ("tis_imp_ratio_cap", opts["tis_imp_ratio_cap"] is None),
                    ("importance_sampling_level", opts["importance_sampling_level"] == "token"),
                    ("advantage_estimator", opts["advantage_estimator"] == "grpo")):
      if not ok:
        raise ValueError(f"rl.{key}={opts[key]!r} is not supported by rl.objective='hapo' "
                         "(its loss has no KL / entropy bonus / TIS / sequence ratio; GRPO "
                         "advantages)")

  def rollout(self, ctx: StepContext) -> StepData:
    sec, t0 = ctx.section, ctx.opts["temperature"]
    prev = ctx.state.get(STATE_KEY)
    adapt = sec.adaptive_temperature and prev is not None and sec.tau_temperature > 0
    proc = None
    if adapt:
      # Static processor (same hash every step) + the statistics as traced state: no
      # recompilation of the decode loop when they change.
      proc = hapo_lib.AdaptiveTemperature(0.0, 1.0, 1.0, 1.0, tau=sec.tau_temperature,
                                          legacy_sign=sec.legacy_sign)
    rollout = ctx.sample(ctx.prompt_ids, logit_processor=proc,
                         processor_state=None if proc is None else
                         np.asarray([float(x) for x in prev], np.float32))
    data = rollout_to_data(rollout, ctx=ctx, examples=ctx.examples, num_samples=ctx.G)
    # Old-policy entropies at T₀ (not the tempered sampler entropies): next step's statistics.
    _, ent = ctx.logprobs(data.tokens, data.segment_ids, data.prompt_len)
    ent, mask = jnp.asarray(ent), jnp.asarray(data.mask)
    m = data.mask > 0
    if adapt:
      temps = np.asarray(hapo_lib.adaptive_temperature(
          hapo_lib.apply_entropy_norm(ent, jnp.asarray(prev, jnp.float32),
                                      legacy_sign=sec.legacy_sign), t0, sec.tau_temperature))
      temps = temps[m] if m.any() else np.full(1, t0)
    else:
      temps = np.full(1, t0)
    data.metrics.update(hapo_temperature_mean=float(temps.mean()),
                        hapo_temperature_min=float(temps.min()),
                        hapo_temperature_max=float(temps.max()), hapo_adapted=float(adapt))
    if m.any():  # an empty batch keeps the previous statistics
      stats = hapo_lib.entropy_norm_stats(ent, mask, pivot=sec.entropy_pivot)
      ctx.state[STATE_KEY] = [float(x) for x in np.asarray(stats)]
    return data

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    sec, opts = ctx.section, ctx.opts
    lengths = data.lengths.copy()   # before dynamic sampling zeroes masks
    data = default_shape(ctx, data)
    fallback = np.zeros(1)
    if sec.token_level_advantages:
      adv, fb = hapo_lib.token_group_average_advantages(
          jnp.asarray(data.rewards), jnp.asarray(lengths), ctx.G,
          fallback_threshold=sec.fallback_threshold, fallback_ddof=opts["advantage_std_ddof"],
          fallback_epsilon=opts["advantage_epsilon"], with_fallback=True)
      data.advantages, fallback = np.asarray(adv, np.float32), np.asarray(fb)
    data.metrics["hapo_fallback_fraction"] = float(fallback.mean())
    return data

  def loss_fn(self, params, mb, lctx: LossContext):
    sec, o = lctx.section, lctx.loss_options
    logp, entropy, _ = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
    old = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
    m = mb["mask"] * (mb["token_weights"] > 0)   # selection masks from the shared shaping
    return hapo_lib.hapo_policy_loss(
        logp, old, mb["advantages"], m, entropy, entropy_pivot=sec["entropy_pivot"],
        clip_alpha=sec["clip_alpha"], adv_beta=sec["adv_beta"], epsilon=o["epsilon"],
        epsilon_high=o["epsilon_high"], clip_ratio_c=o["clip_ratio_c"],
        legacy_sign=sec["legacy_sign"], loss_agg_mode=o["loss_agg_mode"],
        global_denominator=lctx.denom)
