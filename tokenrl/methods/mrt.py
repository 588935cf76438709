"""`rl.objective=mrt`: MRT's per-episode progress bonus on top of GRPO (spec §11).

Estimator (the cheapest faithful version on the embedded tasks; documented, not the paper's
exact setup, whose α, M and episode segmentation were not found):
  * episodes = equal token budgets: completion i is cut at b_j = min(j·⌈T/E⌉, L_i), j = 0..E
    (rl.mrt.num_episodes = E), i.e. the "budget prefixes" of the completion;
  * J(c) at a boundary = the fraction of M = num_forced_samples answers forced after
    c = prompt ⊕ o[:b_j] (⊕ termination_text, never trained) that the task verifier accepts. The
    forced answer is a continuation sampled from the rollout policy (the meta-prover μ) with a
    budget of answer_tokens (0 = T); it is scored as o[:b_j] ⊕ continuation when there is no
    termination text (the embedded tasks have no separate thinking block), else as the
    continuation alone (termination_text + continuation when the task's reference completions
    hold the termination text, e.g. '#' on arith_cot: `rewards.delimited_answer_text`).
    Identical contexts (a shared prefix in the group, an empty episode) share one estimate; at
    the end of a finished completion J = its own correctness;
  * prog_j = J(b_{j+1}) − J(b_j); token t of episode j gets A_out + α·prog_j
    (objectives.mrt.progress_advantages), or, with variant='termination_baseline', r − J(b_j).
Cost per step: up to B + N·E contexts × M samples of answer_tokens tokens (padded to a power of
two for bounded compiles); α = 0 with variant='progress' skips it and is exactly GRPO.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.data.prompts import bucket_length, decode_completions
from tokenrl.data.rewards import delimited_answer_text
from tokenrl.methods import guide_grpo as guide
from tokenrl.methods.base import Method, StepContext, StepData, default_shape
from tokenrl.methods.registry import register
from tokenrl.objectives import mrt as mrt_lib

VARIANTS = tuple(mrt_lib.MRT_ADVANTAGES)


def forced_success(ctx: StepContext, data: StepData, boundaries: np.ndarray, section: Any
                   ) -> tuple[np.ndarray, int]:
  """(J [N,E+1] f32, number of sampled contexts): forced-answer success rate at each boundary."""
  G, (n, t) = ctx.G, data.mask.shape
  comp, lengths = data.completion, data.lengths
  finished = ~np.asarray(data.truncated, bool)
  tail = (ctx.tokenizer.encode(section.termination_text, add_special_tokens=False)
          if section.termination_text else [])
  J = np.zeros(boundaries.shape, np.float32)
  keys: dict[tuple[int, ...], int] = {}     # context ids -> index in `contexts`
  contexts, owner, where = [], [], []       # owner: row whose example scores it; prefix length
  slots = []                                # (i, j, context index)
  for i in range(n):
    prompt = list(ctx.prompt_ids[i // G])
    for j, b in enumerate(boundaries[i]):
      b = int(b)
      if b >= lengths[i] and finished[i]:
        J[i, j] = data.correct[i]           # the answer is already given
        continue
      key = tuple(prompt + comp[i, :b].tolist() + tail)
      if key not in keys:
        keys[key] = len(contexts)
        contexts.append(list(key))
        owner.append(i)
        where.append(b)
      slots.append((i, j, keys[key]))
  if not contexts:
    return J, 0
  m = section.num_forced_samples
  padded = guide.pow2_groups(list(range(len(contexts))), 1 << 30)   # bounded compiles
  ids = [contexts[c] for c in padded]
  budget = section.answer_tokens or t
  room = ctx.model.max_seq_len - bucket_length(max(len(x) for x in ids))
  if room < budget:
    raise ValueError(f"rl.mrt.answer_tokens: a forced answer of {budget} tokens after a context "
                     f"bucket of {ctx.model.max_seq_len - room} exceeds model.max_seq_len="
                     f"{ctx.model.max_seq_len}; lower rl.mrt.answer_tokens")
  rollout = ctx.sample(ids, num_samples=m, max_new_tokens=budget,
                       rng=jax.random.fold_in(ctx.rng, 0x3E7))
  cont = np.asarray(rollout.tokens)[:len(contexts) * m]
  cmask = np.asarray(rollout.mask)[:len(contexts) * m]
  if tail:
    # The answer alone; on a think-delimited task whose delimiter is the termination text
    # (arith_cot with termination_text='#'), '#' + answer, what its verifier reads.
    texts = [delimited_answer_text(t, section.termination_text, data.examples[owner[r // m]])
             for r, t in enumerate(decode_completions(ctx.tokenizer, cont, cmask))]
  else:
    # Score prefix ⊕ continuation: the prefix is part of the answer on tasks without a thinking block.
    width = t + budget
    full = np.full((len(cont), width), ctx.model.pad_id, np.int32)
    fmask = np.zeros((len(cont), width), np.int32)
    for r in range(len(cont)):
      c = r // m
      b = where[c]
      full[r, :b] = comp[owner[c], :b]
      full[r, b:b + budget] = cont[r]
      fmask[r, :b] = 1
      fmask[r, b:b + budget] = cmask[r]
    texts = decode_completions(ctx.tokenizer, full, fmask)
  examples = [data.examples[owner[r // m]] for r in range(len(cont))]
  out = ctx.score(texts, examples)
  ok = (np.asarray(out.per_fn["task"]) >= 1).astype(np.float32).reshape(len(contexts), m)
  rate = ok.mean(axis=1)
  for i, j, c in slots:
    J[i, j] = rate[c]
  return J, len(contexts)


@register
class Mrt(Method):
  name = "mrt"
  preset: dict[str, Any] = {}  # outcome advantage = GRPO (Dr.GRPO: --config.rl.scale_rewards=none)
  paper = ("Optimizing Test-Time Compute via Meta Reinforcement Fine-Tuning "
           "(MRT, arXiv 2503.07572)")
  metrics = ("progress_mean", "progress_bonus_mean", "j_prompt_mean", "forced_contexts")

  def config(self):
    c = ml_collections.ConfigDict()
    c.alpha = 1.0                 # α: weight of the progress bonus (not found in the paper)
    c.num_episodes = 3            # E: episodes = equal token budgets of the completion
    c.num_forced_samples = 4      # M: forced answers per context to estimate J(c)
    c.answer_tokens = 0           # forced-answer budget in tokens; 0 = rollout length T
    c.termination_text = ""       # appended before the forced answer ("time is up"); never trained
    c.variant = "progress"        # 'progress' (A_out + α·prog) | 'termination_baseline' (r − J(c))
    return c

  def validate(self, section, opts):
    if section.variant not in VARIANTS:
      raise ValueError(f"rl.mrt.variant: expected one of {VARIANTS}, got {section.variant!r}")
    for f in ("num_episodes", "num_forced_samples"):
      if section[f] < 1:
        raise ValueError(f"rl.mrt.{f}: expected >= 1, got {section[f]}")
    if section.answer_tokens < 0:
      raise ValueError(f"rl.mrt.answer_tokens: expected >= 0 (0 = T), got {section.answer_tokens}")
    if not np.isfinite(section.alpha):
      raise ValueError(f"rl.mrt.alpha: expected a finite number, got {section.alpha}")

  def sequence_budgets(self, bctx):
    """The rollout, and the forced answers: answer_tokens (0 = T) after a context of the prompt,
    up to T completion tokens and termination_text (bucketed as the sampler does)."""
    from tokenrl.methods.budgets import Budget, bucket, rollout_budget  # pylint: disable=g-import-not-at-top
    s, T = bctx.section, bctx.T
    tail = bctx.n_tokens(s.termination_text)
    c = bucket(bctx.prompt_len + T + tail)
    a = s.answer_tokens or T
    return [rollout_budget(bctx),
            Budget("mrt forced answers", c + a,
                   f"context bucket {c} (prompt {bctx.prompt_len} + sampler.max_new_tokens {T} + "
                   f"termination_text {tail}) + forced answer {a} (rl.mrt.answer_tokens, 0 = T)",
                   (("rl.mrt.answer_tokens", 1), ("sampler.max_new_tokens", 1)))]

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    s = ctx.section
    n, t = data.mask.shape
    mask = jnp.asarray(data.mask)                      # before loss-mask shaping
    boundaries = np.asarray(mrt_lib.budget_boundaries(jnp.asarray(data.lengths), s.num_episodes, t))
    skip = s.variant == "progress" and s.alpha == 0.0
    if skip:
      J, contexts = np.zeros(boundaries.shape, np.float32), 0
    else:
      J, contexts = forced_success(ctx, data, boundaries, s)
    data = default_shape(ctx, data)                    # outcome advantages [N], masks, weights
    b, j = jnp.asarray(boundaries), jnp.asarray(J)
    if s.variant == "progress":
      adv = mrt_lib.progress_advantages(jnp.asarray(data.advantages), j, b, mask, alpha=s.alpha)
    else:
      adv = mrt_lib.termination_baseline_advantages(jnp.asarray(data.rewards), j, b, mask)
    outcome = np.asarray(data.advantages, np.float32)
    data.advantages = np.asarray(adv, np.float32)
    prog = np.asarray(mrt_lib.episode_progress(j))                 # [N,E]
    nonempty = np.diff(boundaries, axis=1) > 0
    m = np.asarray(mask, np.float32)
    bonus = (data.advantages - outcome[:, None]) if s.variant == "progress" else 0.0 * m
    data.metrics.update(
        progress_mean=float((prog * nonempty).sum() / max(nonempty.sum(), 1)),
        progress_bonus_mean=float((bonus * m).sum() / max(m.sum(), 1.0)),
        j_prompt_mean=float(J[:, 0].mean()),
        forced_contexts=float(contexts))
    return data
