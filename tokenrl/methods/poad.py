"""`rl.objective=poad`: POAD / BAD, token-level PPO for multi-token agent actions (spec §14).

Rollout: a multi-turn episode in an embedded environment (rl.poad.env, tokenrl/envs). Each turn
the policy samples one action (`ctx.sample`, stop tokens = the action delimiter and EOS, at most
rl.poad.max_action_tokens), the environment scores it and returns an observation that is
appended to the context. The training row is [prompt | action 1 | obs 1 | action 2 | ...]; the
loss mask covers action tokens only (observations are context).
Shape: token values V from the value head (rollout params); the BAD backup
(`objectives.poad.bad_advantages`, γ between actions, none inside; rl.poad.ntpo=True for the
NTPO ablation) gives Â and the returns; with rl.whiten_advantages, Â is normalised per
optimiser minibatch over its action tokens (nan-mean / nan-std of the reference).
Loss: PPO clip + rl.vf_coef · clipped value loss (`ValueMethod.loss_fn`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.envs import ENVS, Segment, assemble_episodes
from tokenrl.methods.base import StepContext, StepData, group_minibatches
from tokenrl.methods.ppo import ValueMethod, rollout_values
from tokenrl.methods.registry import register
from tokenrl.objectives.poad import bad_advantages, normalize_advantages

# Host-only arrays passed from rollout to shape in StepData.extra (removed before the batch).
_TOKEN_REWARDS, _ACTION_END = "poad_token_rewards", "poad_action_end"


def action_stop_tokens(delimiter: str, tokenizer: Any) -> tuple[int, tuple[int, ...]]:
  """(delimiter id, stop ids): 'eos' = the tokenizer's first EOS ends each action; otherwise the
  single-token text `delimiter` ends an action and EOS (the agent stops) ends the episode."""
  eos = tuple(int(i) for i in tokenizer.eos_token_ids)
  if delimiter == "eos":
    return eos[0], eos
  ids = tokenizer.encode(delimiter, add_special_tokens=False)
  if len(ids) != 1:
    raise ValueError(f"rl.poad.delimiter: expected 'eos' or text of exactly one token, got "
                     f"{delimiter!r} ({len(ids)} tokens)")
  return int(ids[0]), (int(ids[0]),) + eos


def episode_length(section: Any) -> int:
  """T of the training rows: K actions and K − 1 observations at their maximum lengths."""
  return (section.turns * section.max_action_tokens
          + (section.turns - 1) * section.max_observation_tokens)


@register
class Poad(ValueMethod):
  name = "poad"
  preset = dict(advantage_estimator="gae", loss_agg_mode="token-mean")
  paper = ("Reinforcing Language Agents via Policy Optimization with Action Decomposition "
           "(Wen et al., NeurIPS 2024, arXiv 2405.15821)")
  metrics = ("value_loss", "value_mean", "explained_variance", "vf_clipfrac", "action_accuracy",
             "episode_turns", "episode_return")

  def config(self):
    c = ml_collections.ConfigDict()
    c.env = "arith_chain"          # environment (tokenrl.envs.ENVS); starts from data.task=arith
    c.turns = 3                    # K: actions per episode (at most)
    c.ops = "+-"                   # operations of the follow-up queries ('+-*' subset)
    c.max_operand = 9              # follow-up operands uniform in [1, max_operand]
    c.delimiter = "eos"            # action delimiter: 'eos' or a one-token text such as ';'
    c.max_action_tokens = 5        # token budget of one action (delimiter included)
    c.max_observation_tokens = 8   # longest observation (tokens, BOS included); longer = error
    c.gamma = 0.95                 # γ between actions (spec §14(c)); none inside an action
    c.lam = 0.95                   # GAE λ (spec §14(c))
    c.ntpo = False                 # NTPO ablation: discount inside actions too
    c.zeros_as_padding = False     # reference quirk: exact-zero advantages left out of the stats
    c.detach_trunk = False         # True: value-loss gradients stop at the head
    return c

  def validate(self, section, opts):
    super().validate(section, opts)
    if section.env not in ENVS:
      raise ValueError(f"rl.poad.env: expected one of {sorted(ENVS)}, got {section.env!r}")
    ENVS[section.env](turns=section.turns, ops=section.ops, max_operand=section.max_operand)
    if section.max_action_tokens < 2:
      raise ValueError(f"rl.poad.max_action_tokens: expected >= 2 (a token and the delimiter), "
                       f"got {section.max_action_tokens}")
    if section.max_observation_tokens < 1:
      raise ValueError(f"rl.poad.max_observation_tokens: expected >= 1, got "
                       f"{section.max_observation_tokens}")
    for key in ("gamma", "lam"):
      if not 0.0 <= section[key] <= 1.0:
        raise ValueError(f"rl.poad.{key}: expected a value in [0, 1], got {section[key]!r}")
      if opts[key] != 1.0:
        raise ValueError(f"rl.{key}={opts[key]!r} is not read by rl.objective='poad': set "
                         f"rl.poad.{key} (the action-level {key}) instead")

  # Two-turn episodes: three turns of 5-token actions and 8-token observations outgrow
  # max_seq_len 64 (the third turn's context bucket is 64).
  quickstart_overrides = {"rl.poad.turns": 2}

  def sequence_budgets(self, bctx):
    """Turn k (0-based) samples max_action_tokens after a context of the prompt and k actions and
    observations at their maximum lengths (bucketed); the training row is the prompt bucket +
    episode_length; plus the evaluation rollout."""
    from tokenrl.methods.budgets import Budget, bucket, rollout_budget  # pylint: disable=g-import-not-at-top
    s = bctx.section
    A, O = s.max_action_tokens, s.max_observation_tokens
    knobs = (("rl.poad.turns", 1), ("rl.poad.max_action_tokens", 2))
    out = [rollout_budget(bctx, "evaluation rollout")]
    for k in range(s.turns):
      c = bucket(bctx.prompt_len + k * (A + O))
      out.append(Budget(f"poad turn {k + 1} rollout", c + A,
                        f"context bucket {c} (prompt {bctx.prompt_len} + {k} x (max_action_tokens "
                        f"{A} + max_observation_tokens {O})) + rl.poad.max_action_tokens {A}",
                        knobs))
    length = episode_length(s)
    out.append(Budget("poad training rows", bctx.P + length,
                      f"prompt bucket {bctx.P} + rl.poad.turns {s.turns} x max_action_tokens {A} "
                      f"+ {s.turns - 1} x max_observation_tokens {O}", knobs))
    return out

  # ---- rollout: the multi-turn episodes ---------------------------------------------------
  def rollout(self, ctx: StepContext) -> StepData:
    sec, tok, G = ctx.section, ctx.tokenizer, ctx.G
    env = ENVS[sec.env](turns=sec.turns, ops=sec.ops, max_operand=sec.max_operand)
    delim, stops = action_stop_tokens(sec.delimiter, tok)
    examples = [ex for ex in ctx.examples for _ in range(G)]
    n = len(examples)
    contexts = [list(p) for p in ctx.prompt_ids for _ in range(G)]          # N growing contexts
    states = [env.reset(ex, seed=(int(ctx.cfg.seed), int(ctx.step), i))[0]
              for i, ex in enumerate(examples)]
    episodes: list[list[Segment]] = [[] for _ in range(n)]
    truncated = np.zeros(n, bool)
    correct_actions = np.zeros(n, np.int32)
    prompt = None
    for k in range(sec.turns):
      active = [i for i in range(n) if not states[i].done]
      if not active:
        break
      # Every row is sampled each turn (finished rows are ignored) so shapes, and compiles,
      # do not depend on how many episodes are still running.
      ro = ctx.sample(contexts, num_samples=1, max_new_tokens=sec.max_action_tokens,
                      stop_tokens=stops, rng=jax.random.fold_in(ctx.rng, k))
      if prompt is None:
        prompt = (np.asarray(ro.prompt_tokens), np.asarray(ro.prompt_mask))
      toks, mask = np.asarray(ro.tokens), np.asarray(ro.mask)
      logp, ent = np.asarray(ro.logprobs), np.asarray(ro.entropy)
      for i in active:
        length = int(mask[i].sum())
        ids = toks[i, :length].tolist()
        stopped = length > 0 and ids[-1] in stops
        body = ids[:-1] if stopped else ids
        truncated[i] |= not stopped
        result = env.step(states[i], tok.decode(body, skip_special_tokens=True),
                          closed=stopped and ids[-1] == delim)
        correct_actions[i] += int(result.correct)
        episodes[i].append(Segment(ids, True, logp[i, :length].tolist(),
                                   ent[i, :length].tolist(), result.reward))
        contexts[i] += ids
        if not result.done:
          obs = tok.encode(result.observation)
          if len(obs) > sec.max_observation_tokens:
            raise ValueError(f"rl.poad.max_observation_tokens={sec.max_observation_tokens} is "
                             f"too small for the observation {result.observation!r} "
                             f"({len(obs)} tokens)")
          episodes[i].append(Segment(obs, False))
          contexts[i] += obs
    return self._episode_data(ctx, episodes, prompt, examples, truncated, correct_actions)

  def _episode_data(self, ctx, episodes, prompt, examples, truncated, correct_actions):
    sec, tok = ctx.section, ctx.tokenizer
    length = episode_length(sec)
    prompt_tokens, prompt_mask = prompt
    if prompt_tokens.shape[1] + length > ctx.model.max_seq_len:
      raise ValueError(f"prompt bucket {prompt_tokens.shape[1]} + episode length {length} "
                       f"(rl.poad.turns·max_action_tokens + (turns−1)·max_observation_tokens) "
                       f"exceeds model.max_seq_len={ctx.model.max_seq_len}")
    arr = assemble_episodes(episodes, length, ctx.model.pad_id)
    turns = np.asarray([sum(s.is_action for s in e) for e in episodes], np.float32)
    returns = arr.rewards.sum(axis=1)
    texts = [tok.decode(row[real > 0].tolist()) for row, real in zip(arr.completion, arr.real)]
    data = StepData(
        tokens=np.concatenate([prompt_tokens, arr.completion], axis=1).astype(np.int32),
        segment_ids=np.concatenate([prompt_mask, arr.real], axis=1).astype(np.int32),
        prompt_len=prompt_tokens.shape[1], mask=arr.mask, sampler_logp=arr.logp,
        entropy=arr.entropy, truncated=truncated, rewards=returns.astype(np.float32),
        correct=(correct_actions == sec.turns).astype(np.float32), texts=texts,
        examples=examples, token_weights=np.ones(arr.mask.shape, np.float32))
    data.extra[_TOKEN_REWARDS] = arr.rewards
    data.extra[_ACTION_END] = arr.action_end
    data.metrics.update(action_accuracy=float(correct_actions.sum() / max(turns.sum(), 1.0)),
                        episode_turns=float(turns.mean()), episode_return=float(returns.mean()))
    return data

  # ---- shape: BAD backup with the token critic ----------------------------------------------
  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    sec = ctx.section
    rewards, ends = data.extra.pop(_TOKEN_REWARDS), data.extra.pop(_ACTION_END)
    values = rollout_values(ctx.params, data.tokens, data.segment_ids, data.prompt_len, ctx.model)
    adv, ret = bad_advantages(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(data.mask),
                              jnp.asarray(ends), sec.gamma, sec.lam, ntpo=sec.ntpo)
    adv, ret = np.array(adv), np.asarray(ret)
    if ctx.opts["whiten_advantages"]:
      # Per optimiser minibatch, the rows the loop will update together (same partition).
      for rows in group_minibatches(len(adv), ctx.G, ctx.cfg.train.mini_batches):
        adv[rows] = np.asarray(normalize_advantages(
            jnp.asarray(adv[rows]), jnp.asarray(data.mask[rows]),
            zeros_as_padding=sec.zeros_as_padding))
    return self.set_value_targets(ctx, data, values, adv, ret)
