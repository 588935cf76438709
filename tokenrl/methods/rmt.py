"""`rl.objective=rmt`: Reinforcement Mid-Training (arXiv 2509.24375, spec §10).

Mapping onto the embedded tasks (char tokenizer):
  * Corpus sequence = prompt ⊕ answer ⊕ EOS of an example (e.g. '12+7=19'). The key token τ_pos
    is one answer token per example: the first (`key_position='first'`) or a uniform one
    ('random'); the RL prompt is the prefix τ_<pos (prompt ⊕ answer[:k]).
  * Response o = (c, ŷ): c = the tokens before the first `think_end` ('#'), ŷ = the token right
    after it. A response without `think_end` has no chain of thought: ŷ is its first token.
    Only the action (c, think_end, ŷ) is trained; whatever the model writes after ŷ has mask 0.
  * Reward r = (1 − w)·1[ŷ = τ_pos] + w·r_len(|c|; B_t), GRPO advantages (whitened), PPO loss.
  * NTP: −log p(τ_pos | τ_<pos) on the corpus tokens not in C (the other answer tokens and EOS;
    the prompt too with `ntp_on_prompt`), once per example, token-mean over the step, × λ.
  * Dynamic budget B_t = max(B_min, floor(B_0·γ^{t/T})) with t the RL step, T = train.max_steps.
    The char tasks carry no instruction text: B_t enters through the length reward only.
  * Curriculum: difficulty tiers {easy, medium, hard} of the training examples come from the
    task's own difficulty knob (arith: total operand digits, e.g. 'add:1-2,sub:1-2' gives 2/3/4
    digits = easy/medium/hard; sort: list length; countdown: how many numbers), the distinct
    values split into 3 contiguous groups. The paper tiers tokens by the model's entropy; that
    is not implemented. Each step draws B examples: tier d ~ p_t, then uniform inside d.
    ctx.state keeps the budget, p_t and the cumulative tier counts.
Unknown in the paper (our choices, flagged in the config): w, r_max, p_{t1}, p_{t2}, one key
token per example.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl import objectives as obj
from tokenrl.methods.base import (LossContext, Method, StepContext, StepData, default_loss,
                                  default_shape)
from tokenrl.methods.registry import register
from tokenrl.objectives import rmt as rmt_lib

TIERS = ("easy", "medium", "hard")


# ------------------------------------------------------------------------------------------
# Host-side pieces (plain Python / numpy).


def token_budget(step: int, total_steps: int, *, b0: int, b_min: int, gamma: float) -> int:
  """B_t = max(B_min, floor(B_0·γ^{t/T})) at RL step t of T (T <= 0 is read as 1)."""
  frac = step / max(total_steps, 1)
  return max(int(b_min), int(math.floor(b0 * gamma ** frac + 1e-9)))


def curriculum_probs(step: int, t1: int, t2: int, p1: Sequence[float],
                     p2: Sequence[float]) -> tuple[float, ...]:
  """p_t over the tiers: p1 before t1, p2 from t2 on, linear (τ = (t−t1)/(t2−t1)) in between."""
  if len(p1) != len(p2):
    raise ValueError(f"p2: expected {len(p1)} entries (as p1), got {len(p2)}")
  if step < t1:
    return tuple(float(x) for x in p1)
  if step >= t2:
    return tuple(float(x) for x in p2)
  tau = (step - t1) / (t2 - t1)
  return tuple((1 - tau) * a + tau * b for a, b in zip(p1, p2))


def example_difficulty(example: Mapping[str, Any]) -> int:
  """The task's difficulty knob of an example: arith total operand digits, sort list length,
  countdown number count; anything else: answer length."""
  if example.get("task") == "arith":
    return sum(len(str(abs(int(o)))) for o in example["operands"])
  if example.get("task") == "sort":
    return len(example["digits"])
  if example.get("task") == "countdown":
    return len(example["numbers"])
  return len(str(example["answer"]))


def difficulty_tiers(scores: Sequence[int], n_tiers: int = 3) -> np.ndarray:
  """Tier index [n] of each score: the sorted distinct values split into `n_tiers` contiguous,
  near-equal groups (3 distinct values -> one each; fewer -> the top tiers stay empty)."""
  scores = np.asarray(scores)
  values = np.unique(scores)
  tier_of_value = np.zeros(len(values), np.int64)
  for t, chunk in enumerate(np.array_split(np.arange(len(values)), n_tiers)):
    tier_of_value[chunk] = t
  return tier_of_value[np.searchsorted(values, scores)]


def sample_curriculum(tiers: np.ndarray, probs: Sequence[float], k: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(indices [k], drawn tiers [k]): tier d ~ Categorical(p) (renormalised over non-empty
  tiers), then an index uniformly among the pool entries of tier d."""
  tiers = np.asarray(tiers)
  p = np.asarray(probs, np.float64)
  members = [np.flatnonzero(tiers == t) for t in range(len(p))]
  p = np.where([len(m) > 0 for m in members], p, 0.0)
  if p.sum() <= 0:
    raise ValueError(f"probs {tuple(probs)} put no mass on a non-empty tier")
  drawn = rng.choice(len(p), size=k, p=p / p.sum())
  idx = np.array([members[d][rng.integers(len(members[d]))] for d in drawn], np.int64)
  return idx, drawn


def parse_action(ids: Sequence[int], *, close_id: int,
                 eos_ids: Sequence[int]) -> tuple[int, int, int]:
  """(|c|, ŷ or -1, action length) of a response's masked ids.

  With close_id at index j: c = ids[:j], ŷ = ids[j+1] (if any and not EOS), action = j + 2
  tokens. Without: |c| = 0, ŷ = ids[0] (unless EOS), action = 1 token.
  """
  ids = [int(t) for t in ids]
  eos = set(int(e) for e in eos_ids)
  if close_id in ids:
    j = ids.index(close_id)
    pred = ids[j + 1] if j + 1 < len(ids) and ids[j + 1] not in eos else -1
    return j, pred, min(j + 2, len(ids))
  pred = ids[0] if ids and ids[0] not in eos else -1
  return 0, pred, min(1, len(ids))


def _rng(key: jax.Array) -> np.random.Generator:
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))


# ------------------------------------------------------------------------------------------


@register
class Rmt(Method):
  name = "rmt"
  paper = "Reinforcement Mid-Training (arXiv 2509.24375)"
  metrics = ("token_budget", "curriculum_tier", "curriculum_p_hard", "key_token_accuracy",
             "length_reward", "cot_length", "ntp_loss")

  def __init__(self):
    self._tiers: tuple[int, int, np.ndarray] | None = None  # (id(pool), len(pool), tiers)

  def config(self):
    c = ml_collections.ConfigDict()
    c.budget_init = 800               # B_0: initial thinking-token budget
    c.budget_min = 1                  # B_min: floor of the decayed budget
    c.budget_decay = 0.2              # γ: B_t = max(B_min, floor(B_0·γ^{t/T}))
    c.length_weight = 0.1             # w: weight of r_len in the reward [not in the paper: ours]
    c.length_reward_max = 1.0         # r_max of the triangular r_len [not in the paper: ours]
    c.ntp_coef = 0.1                  # λ: L = L_RL + λ·L_NTP
    c.curriculum_start = 0.3          # t1 as a fraction of train.max_steps
    c.curriculum_end = 0.7            # t2 as a fraction of train.max_steps
    c.tier_probs_start = (0.6, 0.3, 0.1)  # p_{t1} over (easy, medium, hard) [not in the paper]
    c.tier_probs_end = (0.1, 0.3, 0.6)    # p_{t2} over (easy, medium, hard) [not in the paper]
    c.key_position = "first"          # key answer token: 'first' | 'random' (one per example)
    c.think_end = "#"                 # ends the chain of thought; ŷ is the next token
    c.ntp_on_prompt = False           # NTP also on the prompt tokens (the paper: whole corpus)
    return c

  def validate(self, section, opts):
    s = section
    if s.budget_min < 1 or s.budget_init < s.budget_min:
      raise ValueError(f"rl.rmt.budget_init={s.budget_init} and rl.rmt.budget_min="
                       f"{s.budget_min}: need 1 <= budget_min <= budget_init")
    if not 0.0 < s.budget_decay <= 1.0:
      raise ValueError(f"rl.rmt.budget_decay must be in (0, 1], got {s.budget_decay}")
    if not 0.0 <= s.length_weight <= 1.0:
      raise ValueError(f"rl.rmt.length_weight must be in [0, 1], got {s.length_weight}")
    if s.ntp_coef < 0:
      raise ValueError(f"rl.rmt.ntp_coef must be >= 0, got {s.ntp_coef}")
    if not 0.0 <= s.curriculum_start <= s.curriculum_end <= 1.0:
      raise ValueError("rl.rmt.curriculum_start/curriculum_end: need 0 <= start <= end <= 1, "
                       f"got {s.curriculum_start}, {s.curriculum_end}")
    for field in ("tier_probs_start", "tier_probs_end"):
      p = tuple(s[field])
      if len(p) != 3 or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"rl.rmt.{field} must be 3 non-negative probabilities summing to 1 "
                         f"(easy, medium, hard), got {p}")
    if s.key_position not in ("first", "random"):
      raise ValueError(f"rl.rmt.key_position must be 'first' or 'random', got {s.key_position!r}")
    if not s.think_end:
      raise ValueError("rl.rmt.think_end must be a non-empty token")

  # Thinking budgets the quickstart's 6-token completions can reach (B_0 = 800 never binds).
  quickstart_overrides = {"rl.rmt.budget_init": 4}

  def sequence_budgets(self, bctx):
    """The rollout from prompt ⊕ answer[:k] (k = 0 for key_position='first', up to |answer| − 1
    for 'random') and the NTP rows prompt ⊕ answer ⊕ EOS (bucketed)."""
    from tokenrl.methods.budgets import Budget, bucket, rollout_budget  # pylint: disable=g-import-not-at-top
    a = bctx.answer_tokens - 1                      # longest answer, no EOS
    k = 0 if bctx.section.key_position == "first" else max(a - 1, 0)
    out = [rollout_budget(bctx, "evaluation rollout")]
    pk = bucket(bctx.prompt_len + k)
    out.append(Budget("rmt rollout", pk + bctx.T,
                      f"bucket of prompt {bctx.prompt_len} + key prefix {k} = {pk} + "
                      f"sampler.max_new_tokens {bctx.T}", (("sampler.max_new_tokens", 1),)))
    w = bucket(bctx.prompt_len + a + 1)
    out.append(Budget("rmt NTP rows", w, f"bucket of prompt {bctx.prompt_len} + answer {a} + EOS"))
    return out

  # ---- host hooks ------------------------------------------------------------------------
  def _pool_tiers(self, pool: Sequence[Mapping[str, Any]]) -> np.ndarray:
    if self._tiers is None or self._tiers[:2] != (id(pool), len(pool)):
      self._tiers = (id(pool), len(pool),
                     difficulty_tiers([example_difficulty(ex) for ex in pool]))
    return self._tiers[2]

  def rollout(self, ctx: StepContext) -> StepData:
    # pylint: disable=g-import-not-at-top
    from tokenrl.data.prompts import bucket_length, decode_completions
    sec, tok, G = ctx.section, ctx.tokenizer, ctx.G
    if ctx.encode_prompts is None:
      raise ValueError("rl.objective='rmt' draws its own curriculum examples and needs "
                       "StepContext.encode_prompts (the RL loop passes it); got None")
    ids = tok.encode(sec.think_end, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(f"rl.rmt.think_end={sec.think_end!r} must encode to one token")
    close, eos = int(ids[0]), tuple(int(e) for e in tok.eos_token_ids)
    total = ctx.cfg.train.max_steps
    budget = token_budget(ctx.step, total, b0=sec.budget_init, b_min=sec.budget_min,
                          gamma=sec.budget_decay)
    probs = curriculum_probs(ctx.step, round(sec.curriculum_start * total),
                             round(sec.curriculum_end * total), sec.tier_probs_start,
                             sec.tier_probs_end)
    pool = ctx.run.train_examples
    rng = _rng(jax.random.fold_in(ctx.rng, 11))
    idx, drawn = sample_curriculum(self._pool_tiers(pool), probs, len(ctx.examples), rng)
    examples = [pool[i] for i in idx]
    prompt_ids = ctx.encode_prompts(examples)
    answers = [tok.encode(str(ex["answer"]), add_special_tokens=False) for ex in examples]
    keys = [0 if sec.key_position == "first" else int(rng.integers(len(a))) for a in answers]
    prefixes = [list(p) + a[:k] for p, a, k in zip(prompt_ids, answers, keys)]
    targets = np.array([a[k] for a, k in zip(answers, keys)])

    roll = ctx.sample(prefixes)
    tokens, mask = np.asarray(roll.tokens), np.asarray(roll.mask)
    N, T = mask.shape
    cot = np.zeros(N, np.int64)
    pred = np.full(N, -1, np.int64)
    action = np.zeros((N, T), np.int32)
    for i in range(N):
      cot[i], pred[i], n_act = parse_action(tokens[i][mask[i] == 1], close_id=close, eos_ids=eos)
      action[i, :n_act] = 1
    correct = (pred == np.repeat(targets, G)).astype(np.float32)
    r_len = np.asarray(rmt_lib.length_reward(jnp.asarray(cot), budget,
                                             r_max=sec.length_reward_max))
    rewards = np.asarray(rmt_lib.rmt_reward(jnp.asarray(correct), jnp.asarray(cot), budget,
                                            length_weight=sec.length_weight,
                                            r_max=sec.length_reward_max))
    prompt = np.asarray(roll.prompt_tokens)
    data = StepData(
        tokens=np.concatenate([prompt, tokens], axis=1).astype(np.int32),
        segment_ids=np.concatenate([np.asarray(roll.prompt_mask), np.ones_like(tokens)],
                                   axis=1).astype(np.int32),
        prompt_len=prompt.shape[1], mask=(mask * action).astype(np.int32),
        sampler_logp=np.asarray(roll.logprobs, np.float32),
        entropy=np.asarray(roll.entropy, np.float32), truncated=np.asarray(roll.truncated),
        rewards=rewards.astype(np.float32), correct=correct,
        texts=list(decode_completions(tok, tokens, mask)),
        examples=[ex for ex in examples for _ in range(G)])

    # NTP rows: each corpus sequence once (the first row of its group), left-padded.
    seqs = [list(p) + a + [eos[0]] for p, a in zip(prompt_ids, answers)]
    width = bucket_length(max(map(len, seqs)))
    ntp_tok = np.full((N, width), tok.pad_id, np.int32)
    ntp_seg = np.zeros((N, width), np.int32)
    ntp_m = np.zeros((N, width), np.float32)
    for b, (seq, p, k) in enumerate(zip(seqs, prompt_ids, keys)):
      off = width - len(seq)
      rows = slice(b * G, (b + 1) * G)
      ntp_tok[rows, off:], ntp_seg[rows, off:] = seq, 1
      first = off + 1 if sec.ntp_on_prompt else off + len(p)   # targets (never the first token)
      ntp_m[b * G, first:] = 1.0
      ntp_m[b * G, off + len(p) + k] = 0.0                      # the key token is RL's
    data.extra.update(ntp_tokens=ntp_tok, ntp_segment_ids=ntp_seg,
                      ntp_weights=ntp_m / max(ntp_m.sum(), 1.0))

    counts = np.bincount(drawn, minlength=3)
    prev = ctx.state.get("tier_counts", [0, 0, 0])
    ctx.state.update(budget=budget, tier_probs=list(probs),
                     tier_counts=[int(a + b) for a, b in zip(prev, counts)])
    data.metrics.update(
        token_budget=float(budget), curriculum_tier=float(drawn.mean()),
        curriculum_p_easy=probs[0], curriculum_p_medium=probs[1], curriculum_p_hard=probs[2],
        key_token_accuracy=float(correct.mean()), length_reward=float(r_len.mean()),
        cot_length=float(cot.mean()))
    return data

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    return default_shape(ctx, data)  # GRPO advantages of r within each key token's G responses

  # ---- jitted loss -------------------------------------------------------------------------
  def loss_fn(self, params: Any, mb: dict[str, jax.Array], lctx: LossContext):
    """L_RL (the GRPO/PPO policy loss) + λ·L_NTP on the corpus tokens outside C."""
    from tokenrl.models import transformer  # pylint: disable=g-import-not-at-top
    loss, metrics = default_loss(params, mb, lctx)
    toks = mb["ntp_tokens"]
    logits, _ = transformer.forward(params, toks[:, :-1], config=lctx.model,
                                    segment_ids=mb["ntp_segment_ids"][:, :-1], remat=lctx.remat)
    logp, _ = obj.token_logprobs(logits, toks[:, 1:])
    w = mb["ntp_weights"][:, 1:]
    l_ntp = rmt_lib.ntp_loss(logp, w)
    m = (w > 0).astype(jnp.float32)
    metrics = dict(metrics, ntp_loss=-(logp * m).sum() / jnp.maximum(m.sum(), 1.0))
    return loss + lctx.section["ntp_coef"] * l_ntp, metrics
