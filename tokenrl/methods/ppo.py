"""`rl.objective=ppo`: PPO with a value head and GAE (Schulman et al. 2017; GAE 2016).

Also `ValueMethod`, the base of every method with a critic (ppo, poad, rto):
  init_params  adds params['value_head'] (tokenrl.models.value_head) at the start of the RL phase;
  shape        computes rollout values V_old [N,T] with the rollout params (`rollout_values`),
               per-token rewards -> advantages and returns; puts old_values / returns in the
               batch (StepData.extra) and logs `explained_variance`;
  loss_fn      one forward gives logp, entropy and the hidden states; the loss is
                   policy_loss(...) + c_v · value_loss(V, V_old, R; ε_v)
               (c_v = rl.vf_coef, ε_v = rl.cliprange_value, both aggregated with the policy's
               loss_agg_mode and minibatch denominator). The trunk is shared: value gradients
               reach it unless rl.<name>.detach_trunk=True (then only the head learns V).
PPO itself: the sequence reward (verifier, plus the DAPO overlong penalty when set) sits on the
last completion token, r[n,t] = 1[t = last]·R_n; GAE with rl.gamma / rl.lam over completion
tokens; rl.whiten_advantages standardises Â over the batch's valid tokens (verl). The preset is
OBJECTIVES['ppo'] (token-mean, dual clip c = 3).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl import objectives as obj
from tokenrl.methods.base import (LossContext, Method, StepContext, StepData, completion_forward,
                                  default_shape, pg_loss_from_logp)
from tokenrl.methods.registry import register
from tokenrl.models import value_head as vh
from tokenrl.models.config import ModelConfig
from tokenrl.objectives.presets import OBJECTIVES
from tokenrl.objectives.rto import last_token_indicator

# (ModelConfig, P) -> jitted (params, tokens, segment_ids) -> V [N,T]; shared by the methods.
_VALUE_FNS: dict[tuple[ModelConfig, int], Any] = {}


def rollout_values(params: Any, tokens: np.ndarray, segment_ids: np.ndarray, prompt_len: int,
                   model: ModelConfig) -> np.ndarray:
  """V [N,T] f32 (numpy) of the completion positions of tokens [N,P+T] under params' value head.

  V[:, t] is read from the hidden state that predicts completion token t (the state before
  the token is chosen), the same alignment as `completion_forward`'s hidden.
  """
  if vh.KEY not in params:
    raise ValueError(f"params: expected a {vh.KEY!r} entry (Method.init_params adds it)")
  key = (model, prompt_len)
  if key not in _VALUE_FNS:
    from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top

    def fn(p, tok, seg):
      hidden, _ = transformer.forward(p, tok[:, :-1], config=model, segment_ids=seg[:, :-1],
                                      return_hidden=True)
      return vh.values(p[vh.KEY], hidden[:, prompt_len - 1:])

    _VALUE_FNS[key] = jax.jit(fn)
  return np.asarray(_VALUE_FNS[key](params, jnp.asarray(tokens), jnp.asarray(segment_ids)),
                    np.float32)


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> float:
  """1 − Var(R − V) / Var(R) over the valid tokens (mask [N,T] = 1); 0 when Var(R) = 0."""
  m = np.asarray(mask) > 0
  if not m.any():
    return 0.0
  r, v = np.asarray(returns, np.float64)[m], np.asarray(values, np.float64)[m]
  var_r = r.var()
  return 0.0 if var_r == 0 else float(1.0 - (r - v).var() / var_r)


def sequence_rewards(ctx: StepContext, data: StepData) -> np.ndarray:
  """R [N]: data.rewards plus the DAPO overlong penalty when rl.overlong_buffer_len > 0."""
  opts, t = ctx.opts, data.mask.shape[1]
  r = np.asarray(data.rewards, np.float32)
  if opts["overlong_buffer_len"]:
    r = r + np.asarray(obj.overlong_reward_penalty(
        jnp.asarray(data.lengths), t, min(opts["overlong_buffer_len"], t),
        opts["overlong_penalty_factor"]), np.float32)
  return r


class ValueMethod(Method):
  """A method with a critic: value head + clipped value loss (see module docstring)."""

  # rl.cliprange_value / rl.vf_coef of the run: captured from the resolved options (validate at
  # start-up, shape at every step) because LossContext carries only the policy-loss options;
  # the jitted loss reads them at trace time, which always follows this run's shape().
  value_options: dict[str, Any] = {"cliprange_value": 0.2, "vf_coef": 0.1}

  def _capture(self, opts: dict[str, Any]) -> None:
    self.value_options = {"cliprange_value": opts["cliprange_value"], "vf_coef": opts["vf_coef"]}

  def validate(self, section, opts):
    if opts["vf_coef"] < 0:
      raise ValueError(f"rl.vf_coef: expected >= 0, got {opts['vf_coef']!r}")
    self._capture(opts)

  def init_params(self, params, model, rng):
    return vh.add_value_head(params, model.dim, rng)

  def set_value_targets(self, ctx: StepContext, data: StepData, values: np.ndarray,
                        advantages: np.ndarray, returns: np.ndarray) -> StepData:
    """data.advantages [N,T], extra old_values / returns [N,T], metric explained_variance."""
    self._capture(ctx.opts)
    data.advantages = np.asarray(advantages, np.float32)
    data.extra["old_values"] = np.asarray(values, np.float32)
    data.extra["returns"] = np.asarray(returns, np.float32)
    data.metrics["explained_variance"] = explained_variance(values, returns, data.mask)
    return data

  def gae_shape(self, ctx: StepContext, data: StepData, token_rewards: np.ndarray, gamma: float,
                lam: float) -> StepData:
    """GAE of token_rewards [N,T] with rollout values, then the GRPO-family masks."""
    values = rollout_values(ctx.params, data.tokens, data.segment_ids, data.prompt_len, ctx.model)
    adv, ret = obj.gae_advantages(jnp.asarray(token_rewards), jnp.asarray(values),
                                  jnp.asarray(data.mask), gamma, lam,
                                  whiten=bool(ctx.opts["whiten_advantages"]))
    data = self.set_value_targets(ctx, data, values, np.asarray(adv), np.asarray(ret))
    # Dynamic sampling / truncation masks / entropy selection as the GRPO family; the overlong
    # penalty is already in the rewards.
    plain = dataclasses.replace(ctx, opts={**ctx.opts, "overlong_buffer_len": 0})
    return default_shape(plain, data)

  def loss_fn(self, params, mb, lctx: LossContext):
    logp, entropy, hidden = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
    if lctx.section is not None and lctx.section["detach_trunk"]:
      hidden = jax.lax.stop_gradient(hidden)
    v = vh.values(params[vh.KEY], hidden)                       # [N,T] f32
    loss, metrics = pg_loss_from_logp(logp, entropy, mb, lctx)
    opts = lctx.loss_options
    vloss, vmetrics = obj.value_loss(v, mb["old_values"], mb["returns"], mb["mask"],
                                     cliprange_value=self.value_options["cliprange_value"],
                                     loss_agg_mode=opts["loss_agg_mode"],
                                     loss_scale_factor=opts["loss_scale_factor"],
                                     global_denominator=lctx.denom)
    # The logged value loss is this micro-batch's token mean (a mean, as metrics must be).
    local, _ = obj.value_loss(jax.lax.stop_gradient(v), mb["old_values"], mb["returns"],
                              mb["mask"], cliprange_value=self.value_options["cliprange_value"])
    metrics = {**metrics, "value_loss": local, **vmetrics}
    return loss + self.value_options["vf_coef"] * vloss, metrics


@register
class Ppo(ValueMethod):
  name = "ppo"
  preset = dict(OBJECTIVES["ppo"])
  paper = "Proximal Policy Optimization Algorithms (Schulman et al., arXiv 1707.06347) with GAE"
  metrics = ("value_loss", "value_mean", "explained_variance", "vf_clipfrac")

  def config(self):
    c = ml_collections.ConfigDict()
    c.detach_trunk = False  # True: value-loss gradients stop at the head (trunk = policy only)
    return c

  def validate(self, section, opts):
    super().validate(section, opts)
    if opts["advantage_estimator"] != "gae":
      raise ValueError(f"rl.advantage_estimator: rl.objective='ppo' uses 'gae', got "
                       f"{opts['advantage_estimator']!r}")

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    rewards = data.rewards = sequence_rewards(ctx, data)
    token_rewards = np.asarray(last_token_indicator(jnp.asarray(data.mask))) * rewards[:, None]
    return self.gae_shape(ctx, data, token_rewards, ctx.opts["gamma"], ctx.opts["lam"])
