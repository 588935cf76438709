"""`rl.objective=nurl`: NuRL, self-generated abstract hints for pass-rate-0 prompts (spec §8).

Per step (from RL step rl.nurl.start_step on; before it this is plain GRPO, the paper's stage 1):
G rollouts per prompt; a group whose pass rate is <= trigger_pass_rate keeps its first
`keep_unhinted` (failed) rollouts and replaces the other G − keep with rollouts from q ⊕ h.
Advantages are plain GRPO over the mixed group (objectives.nurl.nurl_advantages = what
default_shape computes on the spliced rewards).

Hints (hint_source): 'self' (the paper) — the policy writes a rationale for why the gold answer
is correct, y = π(rationale_format(q, a)), then abstracts a hint h = π(hint_request_format(q, a,
y)); a hint that is empty, contains the answer, or cannot be tokenised falls back to the example
hint of `hint_kind`. The paper collects hints offline once per question: here a hint is written
the first time its prompt triggers and cached in the method state (checkpointed, at most
hint_cache_size prompts). 'example': the example-derived hint (tokenrl.data.hints).

Context (spec §8 (b), [reconstructed]): 'hinted' (default) trains hinted rows on q ⊕ h ⊕ o, plain
on-policy GRPO; 'unhinted_is' trains them on q ⊕ o with behaviour log-probs from q ⊕ h, through
Guide's off-policy loss (tokenrl.methods.guide_grpo).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.data import hints as hints_lib
from tokenrl.data.prompts import bucket_length, decode_completions
from tokenrl.methods import guide_grpo as guide
from tokenrl.methods.base import Method, StepContext, StepData, default_loss, default_rollout
from tokenrl.methods.registry import register
from tokenrl.objectives import guide as guide_lib
from tokenrl.objectives import nurl as nurl_lib

CONTEXTS = ("hinted", "unhinted_is")
HINT_SOURCES = ("self", "example")
_STATE_KEY = "nurl_hints"


def _generate(ctx: StepContext, texts: Sequence[str], max_new_tokens: int, temperature: float,
              salt: int) -> list[str] | None:
  """One completion per prompt text (None if the context leaves no room for a token)."""
  padded = guide.pow2_groups(list(range(len(texts))), 1 << 30)   # bounded compiles
  ids = guide.encode_texts(ctx, [texts[i] for i in padded])
  budget = min(max_new_tokens, ctx.model.max_seq_len - bucket_length(max(len(x) for x in ids)))
  if budget < 1:
    return None
  rollout = ctx.sample(ids, num_samples=1, max_new_tokens=budget, temperature=temperature,
                       rng=jax.random.fold_in(ctx.rng, salt))
  out = decode_completions(ctx.tokenizer, np.asarray(rollout.tokens), np.asarray(rollout.mask))
  return out[:len(texts)]


def self_hints(ctx: StepContext, examples: Sequence[Any], section: Any) -> tuple[list[str], int, int]:
  """(hints, newly written, fallbacks): NuRL's self-generated hints, cached per prompt text."""
  cache = ctx.state.setdefault(_STATE_KEY, {})
  new = [ex for ex in dict((ex["prompt"], ex) for ex in examples).values()
         if ex["prompt"] not in cache]
  fallbacks = 0
  if new:
    fmt = dict(rationale_template=section.rationale_format,
               hint_template=section.hint_request_format)
    rationales = _generate(ctx, [hints_lib.self_hint_prompts(ex, **fmt) for ex in new],
                           section.rationale_max_tokens, section.hint_temperature, 0x4A710)
    written = None
    if rationales is not None:
      written = _generate(ctx, [hints_lib.self_hint_prompts(ex, rationale=r, **fmt)
                                for ex, r in zip(new, rationales)],
                          section.hint_max_tokens, section.hint_temperature, 0x4A711)
    for j, ex in enumerate(new):
      hint = "" if written is None else hints_lib.clean_generated_hint(written[j])
      if hint and not hints_lib.hint_reveals_answer(hint, ex):
        try:
          ctx.tokenizer.encode(hint, add_special_tokens=False)
        except ValueError:
          hint = ""
      else:
        hint = ""
      if not hint:
        fallbacks += 1
        hint = hints_lib.example_hint(ex, section.hint_kind, section.hint_chars)
      cache[ex["prompt"]] = hint
    while len(cache) > section.hint_cache_size:  # oldest first (dicts keep insertion order)
      cache.pop(next(iter(cache)))
  return [cache[ex["prompt"]] for ex in examples], len(new), fallbacks


@register
class Nurl(Method):
  name = "nurl"
  preset: dict[str, Any] = {}  # plain GRPO over the mixed groups
  paper = "Nudging the Boundaries of LLM Reasoning (NuRL, arXiv 2509.25666)"
  metrics = ("hint_rate", "hinted_accuracy", "hinted_group_solved", "self_hint_fallback")

  def config(self):
    c = ml_collections.ConfigDict()
    c.start_step = 0                 # RL step where nudging starts (stage 1 before it: plain GRPO)
    c.trigger_pass_rate = 0.0        # nudge a group whose pass rate <= this (paper: 0)
    c.keep_unhinted = 1              # original failed rollouts kept per nudged group (G − k hinted)
    c.hint_source = "self"           # 'self' (policy-written, paper) | 'example' (tokenrl.data.hints)
    c.hint_kind = "length"           # example hint / fallback: 'length' (abstract) | 'step' | 'prefix'
    c.hint_chars = 1                 # answer characters of a 'prefix' hint
    c.hint_format = "hint: {hint}\n{prompt}"  # hinted prompt q ⊕ h
    c.rationale_format = "{prompt}{answer}\nwhy:"  # self hints: ask why answer a is right
    c.hint_request_format = "{prompt}{answer}\nwhy:{rationale}\nhint:"  # then ask for a cue
    c.rationale_max_tokens = 64      # self hints: rationale budget (cut to the model context)
    c.hint_max_tokens = 16           # self hints: hint budget (cut to the model context)
    c.hint_temperature = 0.0         # self hints: sampling temperature (0 = greedy)
    c.hint_cache_size = 4096         # self hints kept in the checkpointed method state
    c.context = "hinted"             # 'hinted' (train on q ⊕ h ⊕ o) | 'unhinted_is' (Guide loss)
    guide.add_offpolicy_fields(c)    # used by context='unhinted_is' only
    return c

  def validate(self, section, opts):
    guide.validate_hint_fields(self.name, section)
    guide.validate_offpolicy(self.name, section)
    hints_lib.check_template(section.rationale_format, ("prompt", "answer"),
                             arg_name="rl.nurl.rationale_format")
    hints_lib.check_template(section.hint_request_format, ("prompt", "answer", "rationale"),
                             arg_name="rl.nurl.hint_request_format")
    if section.context not in CONTEXTS:
      raise ValueError(f"rl.nurl.context: expected one of {CONTEXTS}, got {section.context!r}")
    if section.hint_source not in HINT_SOURCES:
      raise ValueError(f"rl.nurl.hint_source: expected one of {HINT_SOURCES}, got "
                       f"{section.hint_source!r}")
    if not 0 <= section.keep_unhinted < opts["num_generations"]:
      raise ValueError(f"rl.nurl.keep_unhinted: expected in [0, rl.num_generations="
                       f"{opts['num_generations']}), got {section.keep_unhinted}")
    if not 0.0 <= section.trigger_pass_rate < 1.0:
      raise ValueError(f"rl.nurl.trigger_pass_rate: expected in [0, 1), got "
                       f"{section.trigger_pass_rate}")
    for f in ("rationale_max_tokens", "hint_max_tokens", "hint_cache_size"):
      if section[f] < 1:
        raise ValueError(f"rl.nurl.{f}: expected >= 1, got {section[f]}")
    if section.hint_temperature < 0:
      raise ValueError(f"rl.nurl.hint_temperature: expected >= 0, got {section.hint_temperature}")
    if section.context == "unhinted_is" and opts["importance_sampling_level"] != "token":
      raise ValueError("rl.importance_sampling_level: nurl context='unhinted_is' needs 'token'")

  def sequence_budgets(self, bctx):
    """The rollout and the hinted re-roll (self hints: up to hint_max_tokens tokens, or the
    example fallback). The self-hint generation cuts its own budget to the context."""
    from tokenrl.methods.budgets import rollout_budget  # pylint: disable=g-import-not-at-top
    s = bctx.section
    return [rollout_budget(bctx)] + guide.hinted_budgets(
        bctx, hint_kind=s.hint_kind, hint_chars=s.hint_chars, hint_format=s.hint_format,
        new_tokens=bctx.T, knob="sampler.max_new_tokens",
        self_hint_tokens=s.hint_max_tokens if s.hint_source == "self" else 0)

  def rollout(self, ctx: StepContext) -> StepData:
    s, G = ctx.section, ctx.G
    data = default_rollout(ctx)
    n, t = data.mask.shape
    extra = guide.offpolicy_extra(n, t)
    metrics = dict(guide.hint_metrics([], len(ctx.examples), np.zeros(0), G),
                   self_hint_fallback=0.0)
    groups = []
    if ctx.step >= s.start_step:
      groups = [int(b) for b in np.nonzero(np.asarray(guide_lib.failing_groups(
          jnp.asarray(data.correct), G, s.trigger_pass_rate)))[0]]
    gamma = float(s.gamma_value) if s.gamma_strategy != "percentile" else 1.0
    if groups:
      examples = [ctx.examples[b] for b in groups]
      if s.hint_source == "self":
        hints, written, fallbacks = self_hints(ctx, examples, s)
        metrics["self_hint_fallback"] = fallbacks / max(written, 1)
      else:
        hints = [hints_lib.example_hint(ex, s.hint_kind, s.hint_chars) for ex in examples]
      k = G - s.keep_unhinted
      unhinted_is = s.context == "unhinted_is"
      rolls = guide.reroll_with_hints(ctx, data, groups, hints, num_samples=k,
                                      hint_format=s.hint_format, salt=0x4E0D6,
                                      plain_logp=unhinted_is)
      triggered = np.zeros(len(ctx.examples), bool)
      triggered[groups] = True
      rows = np.nonzero(np.asarray(nurl_lib.nudged_rows(jnp.asarray(triggered), G,
                                                        s.keep_unhinted)))[0]
      if unhinted_is:
        tokens, seg, p = rolls.plain_tokens, rolls.plain_segment_ids, data.prompt_len
      else:
        tokens, seg, p = rolls.data.tokens, rolls.data.segment_ids, rolls.data.prompt_len
      data = guide.splice_rows(data, rows, rolls.data, tokens=tokens, segment_ids=seg,
                               prompt_len=p, pad_id=ctx.model.pad_id)
      if unhinted_is:
        extra[guide.BEHAV][rows] = rolls.behav_logp
        extra[guide.OFF][rows] = 1.0
        gamma = guide.batch_gamma(s, rolls.plain_logp, rolls.behav_logp, rolls.data.mask)
      metrics.update(guide.hint_metrics(groups, len(ctx.examples), rolls.data.correct, k))
    if s.context == "unhinted_is":
      extra[guide.GAMMA][:] = gamma
      data.extra.update(extra)
    data.metrics.update(metrics)
    return data

  def loss_fn(self, params, mb, lctx):
    if lctx.section["context"] == "unhinted_is":
      return guide.guide_loss(params, mb, lctx)
    return default_loss(params, mb, lctx)
