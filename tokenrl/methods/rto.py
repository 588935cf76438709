"""`rl.objective=rto`: RTO, "DPO Meets PPO: Reinforced Token Optimization for RLHF" (spec
objectives-preference-value §3). PPO/GAE with a value head on the token rewards

    r[n,t] = clip(β1·(log π_dpo − log π_ref), ±c) − β2·(log π_old − log π_ref)
             + 1[t = last]·clip(R_n, ±R_max)                     (`objectives.rto.rto_token_rewards`)

π_dpo is a frozen DPO model loaded once per process (module cache keyed by its path; never in
the optimizer state): rl.rto.dpo_workdir (a tokenrl workdir, latest checkpoint) or
rl.rto.dpo_hf_path (a Hugging Face folder); it must share the policy's vocabulary. π_ref is the
policy at the start of the RL phase (the reference code scores the DPO reward against the PPO
reference = SFT model); like the loop's KL reference it is not checkpointed, so a run resumed
mid-RL uses the resumed params. All log-probs of the reward are at temperature 1.
With neither path set the run stops at start-up naming both keys. rl.rto.dpo_stand_in=
'perturbed_policy' is a SMOKE-TEST STAND-IN, not RTO: π_dpo := π_ref with every weight perturbed
by stand_in_noise × its RMS, so the pipeline runs without a DPO checkpoint.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from tokenrl.methods.base import StepContext, StepData
from tokenrl.methods.forward import make_logprob_fn
from tokenrl.methods.ppo import ValueMethod, sequence_rewards
from tokenrl.methods.registry import register
from tokenrl.models import value_head as vh
from tokenrl.models.config import ModelConfig
from tokenrl.objectives.rto import rto_token_rewards

# path -> (ModelConfig, params) of frozen DPO models (loaded once per process).
_DPO_MODELS: dict[str, tuple[ModelConfig, Any]] = {}
# The current run's frozen copies: {'run_id', 'ref', 'stand_in'} (one run at a time).
_RUN: dict[str, Any] = {"run_id": None, "ref": None, "stand_in": None}
# (ModelConfig, P) -> jitted (params, tokens, segment_ids) -> (logp, entropy) at temperature 1.
_LOGPROB_FNS: dict[tuple[ModelConfig, int], Any] = {}
STAND_INS = ("", "perturbed_policy")


def load_dpo_model(section: Any,
                   load_params: Callable[[str], tuple[ModelConfig, Any]] | None
                   ) -> tuple[ModelConfig, Any]:
  """(config, params) of the frozen DPO model named by rl.rto.dpo_workdir / dpo_hf_path (cached).

  load_params: (workdir) -> (ModelConfig, params) of a tokenrl workdir's latest checkpoint
  (StepContext.load_params; the train layer reads workdirs, this layer does not).
  """
  if section.dpo_workdir:
    key = "workdir:" + os.path.abspath(section.dpo_workdir)
    if key not in _DPO_MODELS:
      if load_params is None:
        raise ValueError(f"rl.rto.dpo_workdir={section.dpo_workdir!r}: reading a workdir needs "
                         "StepContext.load_params (the RL loop passes it); got None")
      model, params = load_params(section.dpo_workdir)
      _DPO_MODELS[key] = (model, vh.policy_params(params))
  else:
    key = "hf:" + os.path.abspath(section.dpo_hf_path)
    if key not in _DPO_MODELS:
      from tokenrl.models.hf import load_hf  # pylint: disable=g-import-not-at-top
      _DPO_MODELS[key] = load_hf(section.dpo_hf_path)
  return _DPO_MODELS[key]


def perturbed_copy(params: Any, noise: float, rng: jax.Array) -> Any:
  """params with each leaf x replaced by x + noise·rms(x)·ε, ε ~ N(0, 1) (smoke stand-in)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  out = []
  for x, k in zip(leaves, keys):
    rms = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
    out.append((x + noise * rms * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def _logprobs(model: ModelConfig, params: Any, data: StepData) -> np.ndarray:
  """logp [N,T] (numpy) of data's completion under params at temperature 1."""
  key = (model, data.prompt_len)
  if key not in _LOGPROB_FNS:
    _LOGPROB_FNS[key] = make_logprob_fn(config=model, prompt_len=data.prompt_len, temperature=1.0)
  logp, _ = _LOGPROB_FNS[key](params, jnp.asarray(data.tokens), jnp.asarray(data.segment_ids))
  return np.asarray(logp, np.float32)


@register
class Rto(ValueMethod):
  name = "rto"
  preset = dict(advantage_estimator="gae", loss_agg_mode="token-mean")
  paper = "DPO Meets PPO: Reinforced Token Optimization for RLHF (Zhong et al., arXiv 2404.18922)"
  metrics = ("value_loss", "value_mean", "explained_variance", "vf_clipfrac", "dpo_reward",
             "kl_reward")

  def frozen_models(self, section):
    del section
    return {"DPO model (pi_dpo)": 1.0, "reference (pi_ref)": 1.0}

  def config(self):
    c = ml_collections.ConfigDict()
    c.dpo_workdir = ""            # tokenrl workdir of the frozen DPO model (latest checkpoint)
    c.dpo_hf_path = ""            # or a local Hugging Face folder (same vocabulary as the policy)
    c.dpo_stand_in = ""           # 'perturbed_policy' = SMOKE stand-in for π_dpo (not RTO)
    c.stand_in_noise = 0.05       # stand-in: relative weight noise (× each leaf's RMS)
    c.dpo_reward_scale = 0.05     # β1 (reference script; CLI default 1.0)
    c.dpo_reward_clip = 0.05      # c: clip of β1·log-ratio (after scaling); 0 = off
    c.kl_coef = 0.01              # β2: k1 KL penalty in the token reward (fixed)
    c.reward_clip = 10.0          # R_max: clip of the sentence reward; 0 = off
    c.gamma = 1.0                 # GAE γ (spec §3(c))
    c.lam = 0.95                  # GAE λ (spec §3(c))
    c.detach_trunk = False        # True: value-loss gradients stop at the head
    return c

  def validate(self, section, opts):
    super().validate(section, opts)
    if section.dpo_stand_in not in STAND_INS:
      raise ValueError(f"rl.rto.dpo_stand_in: expected one of {STAND_INS}, got "
                       f"{section.dpo_stand_in!r}")
    given = [k for k in ("dpo_workdir", "dpo_hf_path", "dpo_stand_in") if section[k]]
    if not given:
      raise ValueError("rl.rto.dpo_workdir and rl.rto.dpo_hf_path are empty: RTO needs a frozen "
                       "DPO model (a tokenrl workdir or a Hugging Face folder); for a smoke run "
                       "only, rl.rto.dpo_stand_in='perturbed_policy'")
    if len(given) > 1:
      raise ValueError(f"rl.rto: set exactly one of dpo_workdir, dpo_hf_path, dpo_stand_in; "
                       f"got {given}")
    for key in ("dpo_reward_clip", "kl_coef", "reward_clip", "stand_in_noise"):
      if section[key] < 0:
        raise ValueError(f"rl.rto.{key}: expected >= 0, got {section[key]!r}")
    for key in ("gamma", "lam"):
      if not 0.0 <= section[key] <= 1.0:
        raise ValueError(f"rl.rto.{key}: expected a value in [0, 1], got {section[key]!r}")
      if opts[key] != 1.0:
        raise ValueError(f"rl.{key}={opts[key]!r} is not read by rl.objective='rto': set "
                         f"rl.rto.{key} instead")

  # No DPO checkpoint on the quickstart: the perturbed-policy stand-in (a smoke run, not RTO;
  # see the module docstring). A real run sets rl.rto.dpo_workdir or rl.rto.dpo_hf_path.
  quickstart_overrides = {"rl.rto.dpo_stand_in": "perturbed_policy"}

  def _frozen(self, ctx: StepContext) -> tuple[Any, ModelConfig, Any]:
    """(ref params, DPO config, DPO params) of this run."""
    run_id = ctx.state.setdefault("rto_run_id", uuid.uuid4().hex)
    if _RUN["run_id"] != run_id:
      if ctx.step > 0:
        logging.warning("rto: resumed at RL step %d; the reference π_ref is the resumed policy",
                        ctx.step)
      # Copies: the step donates the state, so ctx.params' buffers do not outlive it.
      ref = jax.tree.map(jnp.copy, vh.policy_params(ctx.params))
      _RUN.update(run_id=run_id, ref=ref, stand_in=None)
      if ctx.section.dpo_stand_in == "perturbed_policy":
        logging.warning("rto: rl.rto.dpo_stand_in='perturbed_policy' is a smoke stand-in for the "
                        "DPO model, not RTO")
        _RUN["stand_in"] = perturbed_copy(ref, ctx.section.stand_in_noise,
                                          jax.random.fold_in(jax.random.key(ctx.cfg.seed), 11))
    if _RUN["stand_in"] is not None:
      return _RUN["ref"], ctx.model, _RUN["stand_in"]
    dpo_model, dpo_params = load_dpo_model(ctx.section, ctx.load_params)
    if dpo_model.vocab_size != ctx.model.vocab_size:
      raise ValueError(f"rl.rto: the DPO model's vocabulary ({dpo_model.vocab_size}) differs from "
                       f"the policy's ({ctx.model.vocab_size})")
    return _RUN["ref"], dpo_model, dpo_params

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    sec = ctx.section
    ref, dpo_model, dpo_params = self._frozen(ctx)
    rewards = data.rewards = sequence_rewards(ctx, data)
    lp_ref = _logprobs(ctx.model, ref, data)
    lp_old = _logprobs(ctx.model, ctx.params, data) if sec.kl_coef else lp_ref
    lp_dpo = _logprobs(dpo_model, dpo_params, data)
    token_rewards, m = rto_token_rewards(
        jnp.asarray(lp_dpo), jnp.asarray(lp_ref), jnp.asarray(lp_old), jnp.asarray(rewards),
        jnp.asarray(data.mask), dpo_reward_scale=sec.dpo_reward_scale,
        dpo_reward_clip=sec.dpo_reward_clip, kl_coef=sec.kl_coef, reward_clip=sec.reward_clip)
    data.metrics.update({k: float(v) for k, v in m.items()})
    return self.gae_shape(ctx, data, np.asarray(token_rewards), sec.gamma, sec.lam)
