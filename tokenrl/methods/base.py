"""The hook interface between the RL loop and a token-level objective ("method").

A method is a `Method` subclass registered by name; `--config.rl.objective=NAME` selects it.
The loop (tokenrl/train/rl_loop.py) runs, per RL step:

  data = method.rollout(ctx)            host: sample, decode, score       -> StepData
  data = method.shape(ctx, data)        host: advantages, masks, weights  -> StepData
  for each update: step(state, batch)   jit:  method.loss_fn(params, mb, lctx) per micro-batch

Each hook has a default that is the plain GRPO-family behaviour (the baselines grpo/dapo/dr_grpo/
gspo/rloo are `Method()` with a preset), so a method overrides only what it changes and calls
the default for the rest (`default_rollout`, `default_shape`, `default_loss`).

Array conventions (numpy on the host, jnp in the step; shape alphabet of tokenrl.types):
  B prompts, G samples per prompt, N = B·G rows (groups contiguous), P prompt length (left-padded),
  T completion length. Everything per row is [N, ...]; per-token arrays are [N,T].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl import objectives as obj
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import loss_denominator, policy_loss


@dataclasses.dataclass
class StepData:
  """One RL step's batch on the host (numpy). `rollout` builds it, `shape` finishes it.

  tokens        int32 [N,P+T]  the *training* context: left-padded prompt + completion. The
                               policy log-probs of the update are computed on these tokens (an
                               off-policy method may sample from another context, see Guide).
  segment_ids   int32 [N,P+T]  1 on real tokens, 0 on padding.
  prompt_len    int            P.
  mask          int32 [N,T]    loss mask: 1 on completion tokens that train (incl. EOS).
  sampler_logp  f32   [N,T]    log-probs under the distribution actually sampled from.
  entropy       f32   [N,T]    entropy of that distribution (sampler side).
  truncated     bool  [N]      no stop token within T.
  rewards       f32   [N]      the scalar reward the advantages are computed from.
  correct       f32   [N]      task correctness in [0,1] (the accuracy metric; 1 = verified).
  texts         N str          decoded completions.
  examples      N dicts        the example of each row (each prompt's example repeated G times).
  advantages    f32   [N] or [N,T]  set by `shape` (None before).
  token_weights f32   [N,T]    multiplies the per-token loss (selection masks, THR/D³S/TW).
  extra         dict[str, array [N,...]]  more per-row arrays for the jitted step's batch.
  metrics       dict[str, float]  logged with the step (method metrics: hint_rate, ...).
  """

  tokens: np.ndarray
  segment_ids: np.ndarray
  prompt_len: int
  mask: np.ndarray
  sampler_logp: np.ndarray
  entropy: np.ndarray
  truncated: np.ndarray
  rewards: np.ndarray
  correct: np.ndarray
  texts: list[str]
  examples: list[Any]
  advantages: np.ndarray | None = None
  token_weights: np.ndarray | None = None
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def completion(self) -> np.ndarray:
    """int32 [N,T]: the completion tokens."""
    return self.tokens[:, self.prompt_len:]

  @property
  def lengths(self) -> np.ndarray:
    """int [N]: completion lengths (tokens in the mask)."""
    return self.mask.sum(axis=1)

  def batch(self) -> dict[str, np.ndarray]:
    """The arrays of the jitted step (every leaf has N rows)."""
    n, t = self.mask.shape
    weights = np.ones((n, t), np.float32) if self.token_weights is None else self.token_weights
    if self.advantages is None:
      raise ValueError("StepData.advantages is None: Method.shape must set it")
    out = {
        "tokens": self.tokens.astype(np.int32),
        "segment_ids": self.segment_ids.astype(np.int32),
        "mask": self.mask.astype(np.int32),
        "advantages": np.asarray(self.advantages, np.float32),
        "sampler_logp": self.sampler_logp.astype(np.float32),
        "token_weights": weights.astype(np.float32),
    }
    for k, v in self.extra.items():
      if k in out:
        raise ValueError(f"StepData.extra[{k!r}] collides with a standard batch key")
      if np.shape(v)[0] != n:
        raise ValueError(f"StepData.extra[{k!r}] has shape {np.shape(v)}, expected {n} rows")
      out[k] = np.asarray(v)
    return out


@dataclasses.dataclass
class StepContext:
  """What a method's host-side hooks may use at one RL step.

  cfg       the whole run config (read-only).
  opts      resolved objective options (`resolve_objective`): policy-loss options and run fields.
  section   the method's own locked config section (cfg.rl.<name>), or None.
  run       tokenrl.train.setup.Run: tokenizer, model (ModelConfig), verifier, reward fns.
  params    current policy params (the rollout policy).
  step      RL step index (0 = first RL step).
  rng       PRNG key of this step (fold in your own constants for extra draws).
  examples  the B examples of this step; prompt_ids their token ids (B lists).
  G, T      samples per prompt, max completion tokens.
  state     the method's host state: a JSON-able dict persisted in checkpoints (e.g. HAPO's
            entropy statistics of the previous step, a curriculum); mutate it in place.
  sample    (prompts: B lists of ids, *, num_samples=G, max_new_tokens=T, temperature=opts,
             logit_processor=None, rng=None, stop_tokens=None, processor_state=None)
            -> tokenrl.types.Rollout of host numpy arrays (processor_state: traced pytree the
            processor reads as DecodeContext.aux; changing it does not recompile)
  score     (texts: N str, examples: N dicts) -> RewardResult (rewards [N], per_fn{'task'}, stats)
  logprobs  (tokens [N,P+T], segment_ids [N,P+T], prompt_len, params=None) -> (logp, entropy)
            numpy [N,T] at the run's temperature (params default: the current policy).
  hidden    (tokens, segment_ids, prompt_len, params=None) -> (hidden [N,T,D], logits [N,T,V])
            numpy, the inputs of / the logits of the completion positions (THR and friends).
  encode_prompts  (examples) -> token ids of each example's prompt, encoded as prompt_ids were
            (chat template, data.max_prompt_len check), for examples a method draws itself (RMT's
            curriculum); None where the caller gives none.
  load_params  (workdir) -> (ModelConfig, params) of another tokenrl run's latest checkpoint
            (a frozen model, e.g. RTO's DPO model); the train layer passes
            tokenrl.train.workdir.load_params (a method never imports tokenrl.train). None where
            the caller gives none (a method that needs it raises, naming its config key).
  """

  cfg: ml_collections.ConfigDict
  opts: dict[str, Any]
  section: Any
  run: Any
  params: Any
  step: int
  rng: jax.Array
  examples: list[Any]
  prompt_ids: list[list[int]]
  G: int
  T: int
  state: dict[str, Any]
  sample: Callable[..., Any]
  score: Callable[..., Any]
  logprobs: Callable[..., Any]
  hidden: Callable[..., Any]
  encode_prompts: Callable[[Sequence[Any]], list[list[int]]] | None = None
  load_params: Callable[[str], tuple[ModelConfig, Any]] | None = None

  @property
  def tokenizer(self) -> Any:
    return self.run.tokenizer

  @property
  def model(self) -> ModelConfig:
    return self.run.model


@dataclasses.dataclass(frozen=True)
class LossContext:
  """Static context of the jitted loss (hashable fields only; closed over at trace time).

  model, prompt_len (P), temperature, remat; loss_options: the `policy_loss` keyword options;
  section: the method's config section as a plain dict (or None); options: every resolved
  `rl` option (`resolve_objective`: vf_coef, cliprange_value, gamma, ...); denom: the loss
  denominator of the whole minibatch (a traced scalar, see `loss_denominator`).
  """

  model: ModelConfig
  prompt_len: int
  temperature: float
  remat: bool
  loss_options: dict[str, Any]
  section: dict[str, Any] | None
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  denom: Any = None


def completion_forward(params: Any, tokens: jax.Array, segment_ids: jax.Array, lctx: LossContext,
                       *, input_embeddings: jax.Array | None = None):
  """(logp [N,T], entropy [N,T], hidden [N,T,D]) of tokens[:, P:] under `params`.

  hidden[:, t] is the final-normed state that predicts completion token t (input of the
  unembedding), for value heads and hidden-state methods. Log-probs use lctx.temperature.
  """
  from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
  P = lctx.prompt_len
  emb = None if input_embeddings is None else input_embeddings[:, :-1]
  hidden, _ = transformer.forward(params, tokens[:, :-1], config=lctx.model,
                                  segment_ids=segment_ids[:, :-1], return_hidden=True,
                                  remat=lctx.remat, input_embeddings=emb)
  hidden = hidden[:, P - 1:]
  logits = transformer.unembed(params, hidden, config=lctx.model)
  logp, entropy = obj.token_logprobs(logits, tokens[:, P:], temperature=lctx.temperature)
  return logp, entropy, hidden


def default_loss(params: Any, mb: dict[str, jax.Array], lctx: LossContext):
  """The clipped policy-gradient loss of the GRPO family (`policy_loss`) on one micro-batch."""
  logp, entropy, _ = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
  return pg_loss_from_logp(logp, entropy, mb, lctx)


def pg_loss_from_logp(logp: jax.Array, entropy: jax.Array, mb: dict[str, jax.Array],
                      lctx: LossContext, **overrides):
  """`policy_loss` of logp/entropy [N,T] with the batch's arrays; `overrides` replace options."""
  old = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
  options = {**lctx.loss_options, **overrides}
  return policy_loss(logp, old, mb["advantages"], mb["mask"], ref_logp=mb.get("ref_logp"),
                     sampler_logp=mb["sampler_logp"], entropy=entropy,
                     token_weights=mb["token_weights"], global_denominator=lctx.denom, **options)


class Method:
  """A token-level objective: config section + host hooks + jitted loss. Defaults = GRPO.

  Class attributes a subclass sets:
    name      the `rl.objective` value.
    preset    overrides of the GRPO policy-loss/advantage options (objectives.presets.GRPO_DEFAULTS),
              e.g. dict(loss_agg_mode="token-mean", clip_ratio_c=3.0).
    paper     one line: title and arXiv id (for the README table and `describe`).
    metrics   names of the metrics this method adds (checked by the integration test).
  """

  name: str = "grpo"
  preset: dict[str, Any] = {}
  paper: str = ""
  metrics: tuple[str, ...] = ()
  # The overrides that make `tokenrl train --config configs/quickstart.py` run this method
  # (flat config keys -> values); the README's "Quickstart overrides" list names exactly these
  # (tests/methods/test_budgets.py) and the integration test applies them.
  quickstart_overrides: dict[str, Any] = {}

  # ---- configuration ---------------------------------------------------------------------
  def config(self) -> ml_collections.ConfigDict | None:
    """The method's own section cfg.rl.<name> (defaults + one comment each), or None."""
    return None

  def validate(self, section: Any, opts: dict[str, Any]) -> None:
    """Raise ValueError naming `rl.<name>.<field>` on a bad value."""
    del section, opts

  def check_examples(self, cfg: Any, examples: Any) -> None:
    """Raise ValueError at start-up when the run's training examples lack what this method
    scores (called by the RL trainer once the data is built). Default: nothing to check."""
    del cfg, examples

  def sequence_budgets(self, bctx: Any) -> list[Any]:
    """Every sequence this method samples or trains on, as tokenrl.methods.budgets.Budget
    (checked against model.max_seq_len at start-up by `budgets.check_budgets`; bctx is a
    budgets.BudgetContext). Default: the plain rollout, prompt bucket + sampler.max_new_tokens."""
    from tokenrl.methods.budgets import rollout_budget  # pylint: disable=g-import-not-at-top
    return [rollout_budget(bctx)]

  # ---- params ----------------------------------------------------------------------------
  def init_params(self, params: Any, model: ModelConfig, rng: jax.Array) -> Any:
    """Add method-owned trainable params (e.g. params['value_head']) to the policy params."""
    del model, rng
    return params

  # ---- host hooks -------------------------------------------------------------------------
  def rollout(self, ctx: StepContext) -> StepData:
    return default_rollout(ctx)

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    return default_shape(ctx, data)

  # ---- jitted loss -------------------------------------------------------------------------
  def loss_fn(self, params: Any, mb: dict[str, jax.Array], lctx: LossContext):
    """(scalar loss already divided by lctx.denom, metrics of means over this micro-batch)."""
    return default_loss(params, mb, lctx)

  def denominator(self, batch: dict[str, jax.Array], lctx: LossContext) -> Any:
    """The loss denominator of the whole minibatch (traced); default per `loss_agg_mode`.

    Any pytree of scalars works (it reaches `loss_fn` as lctx.denom), e.g. a dict with one
    denominator for the policy loss and another for an auxiliary per-row loss.
    """
    return loss_denominator(batch["mask"], lctx.loss_options["loss_agg_mode"],
                            loss_scale_factor=lctx.loss_options["loss_scale_factor"])

  def frozen_models(self, section: Any) -> dict[str, float]:
    """Frozen model copies the method keeps on device, in units of the policy's params
    (e.g. {'DPO reference': 1}); `tokenrl plan` adds them to the persistent memory."""
    del section
    return {}

  def needs_old_logp(self, opts: dict[str, Any]) -> bool:
    """Whether the step needs old_logp computed before the update (default: μ > 1)."""
    del opts
    return False


def section_dict(section: Any) -> dict[str, Any] | None:
  """A config section as a plain (hashable-values) dict for LossContext, or None."""
  if section is None:
    return None
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.to_dict().items()}


# ------------------------------------------------------------------------------------------
# Defaults (also the building blocks methods call).


def rollout_to_data(rollout: Any, *, ctx: StepContext, examples: Sequence[Any],
                    num_samples: int) -> StepData:
  """Decode + score a Rollout (prompts repeated `num_samples` times) into StepData."""
  from tokenrl.data.prompts import decode_completions  # pylint: disable=g-import-not-at-top
  tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
  texts = decode_completions(ctx.tokenizer, tokens, mask)
  rep = [ex for ex in examples for _ in range(num_samples)]
  rew = ctx.score(texts, rep)
  prompt = np.asarray(rollout.prompt_tokens)
  data = StepData(
      tokens=np.concatenate([prompt, tokens], axis=1).astype(np.int32),
      segment_ids=np.concatenate([np.asarray(rollout.prompt_mask), np.ones_like(tokens)],
                                 axis=1).astype(np.int32),
      prompt_len=prompt.shape[1], mask=mask.astype(np.int32),
      sampler_logp=np.asarray(rollout.logprobs, np.float32),
      entropy=np.asarray(rollout.entropy, np.float32),
      truncated=np.asarray(rollout.truncated), rewards=rew.rewards.astype(np.float32).copy(),
      correct=(rew.per_fn["task"] >= 1).astype(np.float32), texts=list(texts), examples=rep)
  data.metrics.update(reward_errors=float(rew.stats["reward_errors"]),
                      reward_timeouts=float(rew.stats["reward_timeouts"]))
  return data


def default_rollout(ctx: StepContext) -> StepData:
  """G samples per prompt at the run's temperature, decoded and scored."""
  rollout = ctx.sample(ctx.prompt_ids)
  return rollout_to_data(rollout, ctx=ctx, examples=ctx.examples, num_samples=ctx.G)


def baseline_advantages(rewards: np.ndarray, opts: dict[str, Any]) -> np.ndarray:
  """Sequence advantages [N] of the configured estimator ('grpo' or 'rloo')."""
  g = opts["num_generations"]
  r = jnp.asarray(rewards)
  if opts["advantage_estimator"] == "grpo":
    a = obj.group_relative_advantages(r, g, scale_rewards=opts["scale_rewards"],
                                      epsilon=opts["advantage_epsilon"],
                                      ddof=opts["advantage_std_ddof"])
  elif opts["advantage_estimator"] == "rloo":
    a = obj.rloo_advantages(r, g)
  else:
    raise ValueError(f"rl.advantage_estimator={opts['advantage_estimator']!r} needs a value "
                     "head: use rl.objective='ppo' (or 'poad'), or 'grpo' / 'rloo'")
  return np.asarray(a, np.float32)


def default_shape(ctx: StepContext, data: StepData) -> StepData:
  """GRPO-family shaping: DAPO overlong penalty, advantages, dynamic sampling, truncation mask,
  top-entropy token selection. Sets data.advantages [N] and data.token_weights [N,T]."""
  opts, G, T = ctx.opts, ctx.G, data.mask.shape[1]
  if opts["overlong_buffer_len"]:
    data.rewards = data.rewards + np.asarray(obj.overlong_reward_penalty(
        jnp.asarray(data.lengths), T, min(opts["overlong_buffer_len"], T),
        opts["overlong_penalty_factor"]), np.float32)
  if data.advantages is None:
    data.advantages = baseline_advantages(data.rewards, opts)
  kept = len(data.rewards) // G
  if opts["dynamic_sampling"]:
    # Groups with equal rewards have zero advantage; they stay in the batch (static shapes)
    # but carry no loss: their mask is zeroed so they do not dilute the denominators.
    keep = obj.dynamic_sampling_groups(data.correct, G)
    row_keep = np.zeros(len(data.rewards), bool)
    for g in keep:
      row_keep[g * G:(g + 1) * G] = True
    data.mask = data.mask * row_keep[:, None].astype(data.mask.dtype)
    kept = len(keep)
  data.metrics["kept_groups"] = float(kept)
  if opts["mask_truncated_completions"]:
    data.mask = np.asarray(obj.mask_truncated_completions(
        jnp.asarray(data.mask), jnp.asarray(data.completion), ctx.tokenizer.eos_token_ids))
  if data.token_weights is None:
    data.token_weights = np.ones(data.mask.shape, np.float32)
  if opts["top_entropy_quantile"] < 1.0:
    data.token_weights = data.token_weights * np.asarray(obj.top_entropy_mask(
        jnp.asarray(data.entropy), jnp.asarray(data.mask), opts["top_entropy_quantile"]))
  return data


def group_minibatches(n: int, group_size: int, num_minibatches: int) -> list[np.ndarray]:
  """Row indices of `num_minibatches` minibatches that keep whole groups together.

  The partition of the N = n rows (groups of `group_size` contiguous rows) that the RL loop
  updates on, minibatch by minibatch; a method that normalises per minibatch (POAD's advantage
  whitening) uses the same one. Minibatch i = rows [i·n/M, (i+1)·n/M).
  """
  groups = n // group_size
  if groups % num_minibatches:
    raise ValueError(f"train.mini_batches={num_minibatches} must divide the {groups} prompt groups")
  per = groups // num_minibatches
  return [np.arange(i * per * group_size, (i + 1) * per * group_size) for i in range(num_minibatches)]
