"""`rl.objective=guide_grpo`: Guide-GRPO (spec §7), and the hint re-roll glue NuRL reuses.

Per step: G rollouts per prompt; a group whose accuracy is ≤ rl.guide_grpo.reroll_threshold (all
G fail) is re-rolled from the hinted prompt x ⊕ h (h from the example: tokenrl.data.hints) and
*replaces* the failed group. Hinted rows train on the unhinted context: StepData.tokens = x ⊕ o
(the same completion ids after the unhinted left-padded prompt), while the behaviour log-probs
log π_old(o | x ⊕ h) come from a trainer forward on the hinted context (StepData.extra
'guide_behav_logp'). The loss is `objectives.guide.guide_policy_loss`: PPO clip on on-policy
rows, Guide's shaped ratio ρ/(ρ+γ) unclipped on hinted rows. Accuracy filtering (the reference's
0.001 < acc < 0.999 on original and hinted groups) is DAPO's dynamic sampling in the preset.

γ ('percentile'): by default one value per rollout batch, the 0.9-quantile of
ρ₀ = π_old(o|x)/π_old(o|x ⊕ h) over every hinted token (both contexts scored with ctx.logprobs
at the rollout params, i.e. ρ at the first update), so it does not depend on how the batch is cut
into micro-batches; gamma_per_micro_batch=True takes it from the current ρ of each micro-batch
as the reference code does (spec §16.7).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.data import hints as hints_lib
from tokenrl.data.prompts import bucket_length, tokenize_prompts
from tokenrl.methods.base import (LossContext, Method, StepContext, StepData, completion_forward,
                                  default_rollout, rollout_to_data)
from tokenrl.methods.registry import register
from tokenrl.objectives import guide as guide_lib

# Keys of StepData.extra (and of the jitted batch) for the off-policy rows.
BEHAV, OFF, GAMMA = "guide_behav_logp", "guide_offpolicy", "guide_gamma"


def pow2_groups(groups: Sequence[int], max_groups: int) -> list[int]:
  """`groups` padded (repeating the last) to the next power of two, at most `max_groups`, so the
  sampler and log-prob functions compile for a few batch sizes instead of one per count."""
  groups = list(groups)
  if not groups:
    return groups
  size = 1
  while size < len(groups):
    size *= 2
  size = max(len(groups), min(size, max_groups))
  return groups + [groups[-1]] * (size - len(groups))


def encode_texts(ctx: StepContext, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of prompt texts, rendered like the run's prompts (chat template or not)."""
  return tokenize_prompts(ctx.tokenizer, list(texts), use_chat_template=bool(ctx.cfg.data.chat_template))


def check_fits(ctx: StepContext, ids: Sequence[Sequence[int]], new_tokens: int, what: str) -> None:
  """ValueError unless the bucketed prompt length + `new_tokens` fits model.max_seq_len."""
  p = bucket_length(max(len(x) for x in ids))
  if p + new_tokens > ctx.model.max_seq_len:
    raise ValueError(f"{what}: prompt bucket {p} + {new_tokens} new tokens exceeds "
                     f"model.max_seq_len={ctx.model.max_seq_len}; shorten the hint "
                     "(hint_format / hint kind) or raise model.max_seq_len")


def hinted_budgets(bctx: Any, *, hint_kind: str, hint_chars: int, hint_format: str,
                   new_tokens: int, knob: str, self_hint_tokens: int = 0) -> list[Any]:
  """Budget of the re-roll from hinted prompts (given the run's examples; none without them):
  bucket of the longest hint_format(hint, prompt) + `new_tokens`. self_hint_tokens > 0 (NuRL's
  self-written hints) also bounds a hint of that many tokens."""
  from tokenrl.methods.budgets import Budget, bucket  # pylint: disable=g-import-not-at-top
  if not bctx.examples:
    return []
  tok, chat = bctx.tok(), bool(bctx.cfg.data.chat_template)
  texts = [hints_lib.format_prompt(hint_format, prompt=ex["prompt"],
                                   hint=hints_lib.example_hint(ex, hint_kind, hint_chars))
           for ex in bctx.examples]
  longest = max(len(x) for x in tokenize_prompts(tok, texts, use_chat_template=chat))
  if self_hint_tokens:
    bare = [hints_lib.format_prompt(hint_format, prompt=ex["prompt"], hint="")
            for ex in bctx.examples]
    longest = max(longest, self_hint_tokens +
                  max(len(x) for x in tokenize_prompts(tok, bare, use_chat_template=chat)))
  p = bucket(longest)
  return [Budget("hinted rollout", p + new_tokens,
                 f"hinted prompt bucket {p} (longest hinted prompt {longest}) + {new_tokens} "
                 "new tokens", ((knob, 1),))]


@dataclasses.dataclass
class HintedRolls:
  """Re-rolls of M = len(groups)·k rows (row q·k + s = sample s of groups[q]).

  data            StepData of the hinted rows: tokens = x ⊕ h ⊕ o, prompt_len P_h, scored.
  behav_logp      f32 [M,T] log π_old(o_t | x ⊕ h, o_<t) (trainer forward, run temperature).
  plain_tokens    int32 [M,P+T] x ⊕ o: the unhinted left-padded prompt of `data_in` + o.
  plain_segment_ids int32 [M,P+T].
  plain_logp      f32 [M,T] log π_old(o_t | x, o_<t), or None when not requested.
  """
  data: StepData
  behav_logp: np.ndarray
  plain_tokens: np.ndarray
  plain_segment_ids: np.ndarray
  plain_logp: np.ndarray | None


def reroll_with_hints(ctx: StepContext, data: StepData, groups: Sequence[int], hints: Sequence[str],
                      *, num_samples: int, hint_format: str, salt: int,
                      plain_logp: bool) -> HintedRolls:
  """Sample `num_samples` completions of each hinted prompt hint_format(prompt, hint) of `groups`.

  Rows are computed for a power-of-two number of groups (bounded compiles) and cut back to the
  real ones. `data` is the step's first-pass StepData (its group g holds rows g·G .. g·G+G−1).
  """
  G, T, P = ctx.G, data.mask.shape[1], data.prompt_len
  padded = pow2_groups(groups, len(ctx.examples))
  hint_of = dict(zip(groups, hints))
  texts = [hints_lib.format_prompt(hint_format, hint=hint_of[b], prompt=ctx.examples[b]["prompt"])
           for b in padded]
  ids = encode_texts(ctx, texts)
  check_fits(ctx, ids, T, "hinted prompt")
  rollout = ctx.sample(ids, num_samples=num_samples, rng=jax.random.fold_in(ctx.rng, salt))
  hinted = rollout_to_data(rollout, ctx=ctx, examples=[ctx.examples[b] for b in padded],
                           num_samples=num_samples)
  behav = ctx.logprobs(hinted.tokens, hinted.segment_ids, hinted.prompt_len)[0]
  src = np.repeat(np.asarray(padded) * G, num_samples)              # a row of each group
  plain_tokens = np.concatenate([data.tokens[src, :P], hinted.completion], axis=1)
  plain_seg = np.concatenate([data.segment_ids[src, :P], np.ones_like(hinted.completion)], axis=1)
  plain = ctx.logprobs(plain_tokens, plain_seg, P)[0] if plain_logp else None
  m = len(groups) * num_samples
  cut = lambda x: None if x is None else np.asarray(x)[:m]
  real = dataclasses.replace(
      hinted, tokens=hinted.tokens[:m], segment_ids=hinted.segment_ids[:m], mask=hinted.mask[:m],
      sampler_logp=hinted.sampler_logp[:m], entropy=hinted.entropy[:m],
      truncated=hinted.truncated[:m], rewards=hinted.rewards[:m], correct=hinted.correct[:m],
      texts=hinted.texts[:m], examples=hinted.examples[:m], metrics=dict(hinted.metrics))
  return HintedRolls(real, cut(behav).astype(np.float32), plain_tokens[:m].astype(np.int32),
                     plain_seg[:m].astype(np.int32), None if plain is None else cut(plain))


def left_repad(tokens: np.ndarray, segment_ids: np.ndarray, prompt_len: int, new_prompt_len: int,
               pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Prepend `new_prompt_len − prompt_len` padding columns (segment 0) to [N,P+T] arrays."""
  extra = new_prompt_len - prompt_len
  if extra < 0:
    raise ValueError(f"new_prompt_len: expected >= {prompt_len}, got {new_prompt_len}")
  n = tokens.shape[0]
  return (np.concatenate([np.full((n, extra), pad_id, tokens.dtype), tokens], axis=1),
          np.concatenate([np.zeros((n, extra), segment_ids.dtype), segment_ids], axis=1))


def splice_rows(data: StepData, rows: np.ndarray, src: StepData, *, tokens: np.ndarray,
                segment_ids: np.ndarray, prompt_len: int, pad_id: int) -> StepData:
  """A copy of `data` whose `rows` hold `src`'s rows (in order) with training context `tokens`
  [M,P'+T] (prompt width `prompt_len` = P'); every row is left-padded to max(P, P')."""
  rows = np.asarray(rows, np.int64)
  if len(rows) != src.mask.shape[0] or tokens.shape[0] != len(rows):
    raise ValueError(f"rows: expected {src.mask.shape[0]} rows (as src and tokens), got {len(rows)}")
  P = max(data.prompt_len, prompt_len)
  base_tok, base_seg = left_repad(data.tokens, data.segment_ids, data.prompt_len, P, pad_id)
  new_tok, new_seg = left_repad(tokens, segment_ids, prompt_len, P, pad_id)
  base_tok[rows], base_seg[rows] = new_tok, new_seg
  out = dataclasses.replace(
      data, tokens=base_tok, segment_ids=base_seg, prompt_len=P, mask=data.mask.copy(),
      sampler_logp=data.sampler_logp.copy(), entropy=data.entropy.copy(),
      truncated=np.asarray(data.truncated).copy(), rewards=data.rewards.copy(),
      correct=data.correct.copy(), texts=list(data.texts), examples=list(data.examples),
      extra=dict(data.extra), metrics=dict(data.metrics))
  for name in ("mask", "sampler_logp", "entropy", "truncated", "rewards", "correct"):
    getattr(out, name)[rows] = np.asarray(getattr(src, name))
  for j, r in enumerate(rows):
    out.texts[r], out.examples[r] = src.texts[j], src.examples[j]
  for key in ("reward_errors", "reward_timeouts"):
    out.metrics[key] = data.metrics.get(key, 0.0) + src.metrics.get(key, 0.0)
  return out


def hint_metrics(groups: Sequence[int], num_groups: int, correct: np.ndarray, k: int
                 ) -> dict[str, float]:
  """hint_rate (hinted groups / B), hinted_accuracy (mean correctness of the hinted rows) and
  hinted_group_solved (hinted groups with >= 1 correct hinted row); 0 when nothing is hinted."""
  if not len(groups):
    return dict(hint_rate=0.0, hinted_accuracy=0.0, hinted_group_solved=0.0)
  c = np.asarray(correct, np.float32).reshape(len(groups), k)
  return dict(hint_rate=len(groups) / num_groups, hinted_accuracy=float(c.mean()),
              hinted_group_solved=float((c.max(axis=1) > 0).mean()))


def offpolicy_extra(n: int, t: int) -> dict[str, np.ndarray]:
  """The off-policy arrays of a batch with no hinted row: behaviour logp 0, flag 0, γ 1."""
  return {BEHAV: np.zeros((n, t), np.float32), OFF: np.zeros((n,), np.float32),
          GAMMA: np.ones((n,), np.float32)}


def batch_gamma(section: Any, plain_logp: np.ndarray, behav_logp: np.ndarray,
                mask: np.ndarray) -> float:
  """γ of the whole rollout batch: off_policy_gamma of ρ₀ = exp(plain − behav) on `mask`."""
  ratio = np.exp(np.clip(plain_logp - behav_logp, -20.0, 20.0))
  return float(guide_lib.off_policy_gamma(jnp.asarray(ratio), jnp.asarray(mask),
                                          strategy=section.gamma_strategy,
                                          gamma_value=section.gamma_value))


def guide_loss(params: Any, mb: dict[str, jax.Array], lctx: LossContext, *,
               plain_adv_weight: float = 1.0):
  """Method.loss_fn of the off-policy rows (Guide, NuRL unhinted_is): `guide_policy_loss`."""
  s = lctx.section
  logp, entropy, _ = completion_forward(params, mb["tokens"], mb["segment_ids"], lctx)
  old = mb["old_logp"] if "old_logp" in mb else jax.lax.stop_gradient(logp)
  per_micro = s["gamma_per_micro_batch"] and s["gamma_strategy"] == "percentile"
  return guide_lib.guide_policy_loss(
      logp, old, mb[BEHAV], mb["advantages"], mb["mask"], mb[OFF],
      off_policy_shaping=s["off_policy_shaping"], gamma_strategy=s["gamma_strategy"],
      gamma_value=s["gamma_value"], gamma=None if per_micro else jnp.max(mb[GAMMA]),
      plain_adv_weight=plain_adv_weight, token_weights=mb["token_weights"],
      sampler_logp=mb["sampler_logp"], ref_logp=mb.get("ref_logp"), entropy=entropy,
      global_denominator=lctx.denom, **lctx.loss_options)


def add_offpolicy_fields(c: ml_collections.ConfigDict) -> None:
  """The off-policy-loss fields shared by Guide and NuRL's unhinted_is context."""
  c.off_policy_shaping = True     # ρ/(ρ+γ) unclipped on hinted rows (code); False = plain IS ratio
  c.gamma_strategy = "percentile"  # 'percentile' (γ = quantile of ρ) | 'constant' | 'power' (ρ^γ)
  c.gamma_value = 0.9             # the quantile q (percentile), γ (constant) or exponent (power)
  c.gamma_per_micro_batch = False  # True = reference: γ from each micro-batch's current ρ


def validate_offpolicy(name: str, section: Any) -> None:
  if section.gamma_strategy not in guide_lib.GAMMA_STRATEGIES:
    raise ValueError(f"rl.{name}.gamma_strategy: expected one of {guide_lib.GAMMA_STRATEGIES}, "
                     f"got {section.gamma_strategy!r}")
  if section.gamma_strategy == "percentile" and not 0.0 <= section.gamma_value <= 1.0:
    raise ValueError(f"rl.{name}.gamma_value: expected a quantile in [0, 1], got {section.gamma_value}")
  if section.gamma_strategy != "percentile" and not section.gamma_value > 0:
    raise ValueError(f"rl.{name}.gamma_value: expected > 0, got {section.gamma_value}")


def validate_hint_fields(name: str, section: Any) -> None:
  hints_lib.check_template(section.hint_format, hints_lib.HINT_FIELDS,
                           arg_name=f"rl.{name}.hint_format")
  if section.hint_kind not in hints_lib.HINT_KINDS:
    raise ValueError(f"rl.{name}.hint_kind: expected one of {tuple(hints_lib.HINT_KINDS)}, "
                     f"got {section.hint_kind!r}")
  if section.hint_chars < 1:
    raise ValueError(f"rl.{name}.hint_chars: expected >= 1, got {section.hint_chars}")


@register
class GuideGrpo(Method):
  name = "guide_grpo"
  # guide_grpo_qwen.sh: ε = 0.2, β = 0; verl masked_mean = token-mean; accuracy filter = DAPO's.
  preset = dict(epsilon=0.2, epsilon_high=0.2, loss_agg_mode="token-mean", beta=0.0,
                dynamic_sampling=True)
  paper = ("Adaptive Guidance Accelerates Reinforcement Learning of Reasoning Models "
           "(Guide-GRPO, arXiv 2506.13923)")
  metrics = ("hint_rate", "hinted_accuracy", "hinted_group_solved", "offpolicy_ratio_mean",
             "guide_gamma")

  def config(self):
    c = ml_collections.ConfigDict()
    c.reroll_threshold = 0.001   # re-roll a group with the hint if its accuracy <= this (all fail)
    c.hint_kind = "prefix"       # example hint: 'prefix' (answer start) | 'step' | 'length'
    c.hint_chars = 1             # answer characters a 'prefix' hint gives (never the whole answer)
    c.hint_format = "hint: {hint}\n{prompt}"  # the hinted prompt x ⊕ h (placeholders hint, prompt)
    add_offpolicy_fields(c)
    c.plain_adv_weight = 1.0     # w: multiplies on-policy advantages (reference option; 1 = off)
    return c

  def validate(self, section, opts):
    validate_hint_fields(self.name, section)
    validate_offpolicy(self.name, section)
    if not 0.0 <= section.reroll_threshold < 1.0:
      raise ValueError(f"rl.guide_grpo.reroll_threshold: expected in [0, 1), got "
                       f"{section.reroll_threshold}")
    if opts["importance_sampling_level"] != "token":
      raise ValueError("rl.importance_sampling_level: guide_grpo needs 'token' (per-token ratios)")

  def sequence_budgets(self, bctx):
    from tokenrl.methods.budgets import rollout_budget  # pylint: disable=g-import-not-at-top
    s = bctx.section
    return [rollout_budget(bctx)] + hinted_budgets(
        bctx, hint_kind=s.hint_kind, hint_chars=s.hint_chars, hint_format=s.hint_format,
        new_tokens=bctx.T, knob="sampler.max_new_tokens")

  def rollout(self, ctx: StepContext) -> StepData:
    s, G = ctx.section, ctx.G
    data = default_rollout(ctx)
    n, t = data.mask.shape
    extra = offpolicy_extra(n, t)
    groups = [int(b) for b in np.nonzero(np.asarray(guide_lib.failing_groups(
        jnp.asarray(data.correct), G, s.reroll_threshold)))[0]]
    metrics = hint_metrics([], len(ctx.examples), np.zeros(0), G)
    gamma = float(s.gamma_value) if s.gamma_strategy != "percentile" else 1.0
    if groups:
      hints = [hints_lib.example_hint(ctx.examples[b], s.hint_kind, s.hint_chars) for b in groups]
      rolls = reroll_with_hints(ctx, data, groups, hints, num_samples=G, hint_format=s.hint_format,
                                salt=0x6D1DE, plain_logp=True)
      rows = np.concatenate([np.arange(b * G, (b + 1) * G) for b in groups])
      data = splice_rows(data, rows, rolls.data, tokens=rolls.plain_tokens,
                         segment_ids=rolls.plain_segment_ids, prompt_len=data.prompt_len,
                         pad_id=ctx.model.pad_id)
      extra[BEHAV][rows] = rolls.behav_logp
      extra[OFF][rows] = 1.0
      gamma = batch_gamma(s, rolls.plain_logp, rolls.behav_logp, rolls.data.mask)
      metrics = hint_metrics(groups, len(ctx.examples), rolls.data.correct, G)
    extra[GAMMA][:] = gamma
    data.extra.update(extra)
    data.metrics.update(metrics)
    return data

  def loss_fn(self, params, mb, lctx):
    return guide_loss(params, mb, lctx, plain_adv_weight=lctx.section["plain_adv_weight"])
