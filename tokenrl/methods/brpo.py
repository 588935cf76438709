"""`rl.objective=brpo`: AnytimeReasoner's budget-truncated thinking with BRPO advantages (spec §9).

One step:
  1. G thinking traces z per prompt x, at most L_max = rl.brpo.max_thinking_tokens tokens,
     stopping at the end-of-thinking token (`think_end`) or EOS.
  2. Budgets b_s = L_max·s/S (s = 1..S). At each budget the summary prompt is
       x ⊕ z[:b_s] ⊕ cut_marker ⊕ think_end ⊕ answer_header   if |z| > b_s or z never closed,
       x ⊕ z ⊕ answer_header                                   otherwise (z ends with think_end),
     and A summaries of at most `summary_max_tokens` are sampled from it (EOS-terminated).
  3. Dense rewards r[b,g,s,a] = 1 iff the summary is correct (the task verifier) and holds no
     further think_end; a trace that hit EOS inside thinking scores 0 at every budget.
  4. Thinking tokens of segment s get A_think (tokenrl.objectives.brpo.thinking_advantages),
     summary tokens get A_sum; PPO-clip policy loss, token-mean, no KL.

Rows of the batch ("separate sequences" layout of spec §9d; N = B·G, R = N·(1 + S·A)):
  rows [0, N)       x ⊕ z                              trainable: the trace (incl. think_end/EOS)
  rows N + (i·S+s)·A + a   x ⊕ z[:b_s] ⊕ insert ⊕ summary   trainable: the summary only; the
                    cut trace and the inserted delimiter tokens have mask 0.
The completion width is fixed, L_max + |cut_marker| + 1 + |answer_header| + summary_max_tokens,
so the train step compiles once.

Char tokenizer mapping (the embedded tasks): '#' plays `</think>`, '..' the "...\\n\\n..." cut
marker, and the "**Final Answer**" header is empty by default: after the delimiter the model
writes the bare answer, which is what the exact-match verifiers read. On a think-delimited task
(arith_cot: its reference completions hold '#', its verifier reads the text after it) the
summary is scored as think_end + summary (`rewards.delimited_answer_text`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokenrl.data.rewards import delimited_answer_text
from tokenrl.methods.base import Method, StepContext, StepData
from tokenrl.methods.registry import register
from tokenrl.objectives import brpo as brpo_lib


# ------------------------------------------------------------------------------------------
# Host-side pieces (plain Python / numpy).


def budget_schedule(max_thinking_tokens: int, n_budgets: int) -> tuple[int, ...]:
  """Budgets b_s = floor(L_max·s/S), s = 1..S (strictly increasing; b_S = L_max)."""
  if n_budgets < 1 or max_thinking_tokens < n_budgets:
    raise ValueError(f"need 1 <= n_budgets <= max_thinking_tokens, got n_budgets={n_budgets}, "
                     f"max_thinking_tokens={max_thinking_tokens}")
  return tuple(max_thinking_tokens * s // n_budgets for s in range(1, n_budgets + 1))


def split_trace(row: Sequence[int], *, close_id: int, eos_ids: Sequence[int]):
  """(trace ids without EOS, closed, hit_eos) of one sampled thinking row (its masked tokens).

  closed: the row ends with the end-of-thinking token; hit_eos: it ended with EOS instead (the
  EOS is dropped from the trace: it is never part of a summary prompt).
  """
  row = [int(t) for t in row]
  hit_eos = bool(row) and row[-1] in set(int(e) for e in eos_ids)
  closed = bool(row) and row[-1] == close_id
  return (row[:-1] if hit_eos else row), closed, hit_eos


def summary_continuation(trace: Sequence[int], budget: int, *, closed: bool,
                         cut_ids: Sequence[int], close_id: int,
                         header_ids: Sequence[int]) -> tuple[list[int], int, bool]:
  """The completion-side prefix of a summary at `budget`: (ids, number of inserted ids, cut).

      cut  (|z| > budget or not closed):  z[:budget] ⊕ cut_ids ⊕ [close_id] ⊕ header_ids
      full (closed and |z| <= budget):    z ⊕ header_ids        (z already ends with close_id)

  The last `inserted` ids are the injected delimiter tokens (mask 0 in the loss).
  """
  trace = list(trace)
  if budget < 1:
    raise ValueError(f"budget: expected >= 1, got {budget}")
  if closed and len(trace) <= budget:
    return trace + list(header_ids), len(header_ids), False
  insert = list(cut_ids) + [close_id] + list(header_ids)
  return trace[:budget] + insert, len(insert), True


def dense_summary_rewards(correct: np.ndarray, extra_close: np.ndarray, hit_eos: np.ndarray, *,
                          eos_scores_zero: bool = True) -> np.ndarray:
  """r [N,S,A] ∈ {0,1}: correct and no further end-of-thinking token in the summary (so the
  full text holds exactly one), and, with `eos_scores_zero`, 0 for every summary of a trace
  that hit EOS inside thinking (hit_eos [N])."""
  correct = np.asarray(correct, bool)
  if correct.ndim != 3:
    raise ValueError(f"correct: expected shape [N,S,A], got {correct.shape}")
  if np.shape(extra_close) != correct.shape:
    raise ValueError(f"extra_close: expected shape {correct.shape}, got {np.shape(extra_close)}")
  if np.shape(hit_eos) != correct.shape[:1]:
    raise ValueError(f"hit_eos: expected shape {correct.shape[:1]}, got {np.shape(hit_eos)}")
  r = correct & ~np.asarray(extra_close, bool)
  if eos_scores_zero:
    r = r & ~np.asarray(hit_eos, bool)[:, None, None]
  return r.astype(np.float32)


def _single_id(tokenizer: Any, text: str, field: str) -> int:
  ids = tokenizer.encode(text, add_special_tokens=False)
  if len(ids) != 1:
    raise ValueError(f"{field}={text!r} must encode to exactly one token (it is a stop token), "
                     f"got {len(ids)} ids")
  return int(ids[0])


# ------------------------------------------------------------------------------------------


@register
class Brpo(Method):
  name = "brpo"
  paper = "Optimizing Anytime Reasoning via Budget Relative Policy Optimization (arXiv 2505.13438)"
  preset = dict(loss_agg_mode="token-mean", scale_rewards="none", beta=0.0)
  metrics = ("budget_accuracy_first", "budget_accuracy_last", "anytime_score",
             "thinking_length", "thinking_closed_fraction", "thinking_cut_fraction")

  def config(self):
    c = ml_collections.ConfigDict()
    c.max_thinking_tokens = 8000     # L_max: thinking tokens sampled; budgets b_s = L_max·s/S
    c.n_budget_support = 4           # S: number of budgets (reference run: [2000,4000,6000,8000])
    c.n_summary = 4                  # A: summaries sampled per (trace, budget)
    c.summary_max_tokens = 128       # max tokens of one summary
    c.budget_prior = "linear"        # 'linear' (p ∝ b) | 'uniform' | 'base' (final budget only)
    c.variance_reduction = "brpo"    # 'brpo' (V1/V2 mix) | 'v2only' (group mean, GRPO-like)
    c.summary_method = "brpo"        # 'brpo' (all budgets) | 'grpo' (final budget only)
    c.think_end = "#"                # end-of-thinking token (one token; '</think>' for R1 models)
    c.cut_marker = ".."              # inserted before think_end when a trace is cut at a budget
    c.answer_header = ""             # inserted after think_end ('\n\n**Final Answer**\n' upstream)
    c.eos_in_thinking_scores_zero = True  # a trace that hit EOS before think_end scores 0
    return c

  def validate(self, section, opts):
    s = section
    for field in ("max_thinking_tokens", "n_budget_support", "n_summary", "summary_max_tokens"):
      if s[field] < 1:
        raise ValueError(f"rl.brpo.{field} must be >= 1, got {s[field]}")
    if s.max_thinking_tokens < s.n_budget_support:
      raise ValueError(f"rl.brpo.max_thinking_tokens={s.max_thinking_tokens} must be >= "
                       f"rl.brpo.n_budget_support={s.n_budget_support}")
    for field, choices in (("budget_prior", brpo_lib.BUDGET_PRIORS),
                           ("variance_reduction", brpo_lib.VARIANCE_REDUCTIONS),
                           ("summary_method", brpo_lib.SUMMARY_METHODS)):
      if s[field] not in choices:
        raise ValueError(f"rl.brpo.{field} must be one of {choices}, got {s[field]!r}")
    if not s.think_end:
      raise ValueError("rl.brpo.think_end must be a non-empty token")
    if opts["dynamic_sampling"] or opts["overlong_buffer_len"]:
      raise ValueError("rl.objective=brpo sets its own dense rewards and advantages: "
                       "rl.dynamic_sampling and rl.overlong_buffer_len must be off")

  # Tiny budgets for the quickstart (max_seq_len 64): traces of 8, budgets (4, 8), 2 summaries.
  quickstart_overrides = {"rl.brpo.max_thinking_tokens": 8, "rl.brpo.n_budget_support": 2,
                          "rl.brpo.n_summary": 2, "rl.brpo.summary_max_tokens": 6}

  def sequence_budgets(self, bctx):
    """The thinking rollout, the summary rollout (prompt ⊕ cut trace ⊕ delimiters, bucketed as
    the sampler does) and the fixed-width training rows; plus the evaluation rollout."""
    from tokenrl.methods.budgets import Budget, bucket, rollout_budget  # pylint: disable=g-import-not-at-top
    s, P = bctx.section, bctx.P
    L, Ts = s.max_thinking_tokens, s.summary_max_tokens
    insert = bctx.n_tokens(s.cut_marker) + 1 + bctx.n_tokens(s.answer_header)
    think = (("rl.brpo.max_thinking_tokens", s.n_budget_support),)
    both = think + (("rl.brpo.summary_max_tokens", 1),)
    ps = bucket(bctx.prompt_len + L + insert)
    return [
        rollout_budget(bctx, "evaluation rollout"),
        Budget("brpo thinking rollout", P + L,
               f"prompt bucket {P} + rl.brpo.max_thinking_tokens {L}", think),
        Budget("brpo summary rollout", ps + Ts,
               f"summary prompt bucket {ps} (prompt {bctx.prompt_len} + max_thinking_tokens {L} "
               f"+ {insert} delimiter tokens) + rl.brpo.summary_max_tokens {Ts}", both),
        Budget("brpo training rows", P + L + insert + Ts,
               f"prompt bucket {P} + max_thinking_tokens {L} + {insert} delimiter tokens + "
               f"rl.brpo.summary_max_tokens {Ts}", both),
    ]

  def benchmark_overrides(self, cfg: ml_collections.ConfigDict) -> None:
    """benchmarks/objectives.py on the quickstart task: 16 thinking tokens, 4 budgets (the
    spec's S), 2 summaries of up to 6 tokens: prompt + trace + summary fit max_seq_len 64."""
    cfg.rl.brpo.max_thinking_tokens = 16
    cfg.rl.brpo.n_budget_support = 4
    cfg.rl.brpo.n_summary = 2
    cfg.rl.brpo.summary_max_tokens = 6

  # ---- rollout: traces, truncation, summaries, dense rewards, advantages -------------------
  def rollout(self, ctx: StepContext) -> StepData:
    from tokenrl.data.prompts import decode_completions  # pylint: disable=g-import-not-at-top
    sec, tok, G = ctx.section, ctx.tokenizer, ctx.G
    close = _single_id(tok, sec.think_end, "rl.brpo.think_end")
    cut_ids = tok.encode(sec.cut_marker, add_special_tokens=False)
    header_ids = tok.encode(sec.answer_header, add_special_tokens=False)
    eos = tuple(int(e) for e in tok.eos_token_ids)
    L, S, A, Ts = (sec.max_thinking_tokens, sec.n_budget_support, sec.n_summary,
                   sec.summary_max_tokens)
    budgets = budget_schedule(L, S)

    think = ctx.sample(ctx.prompt_ids, max_new_tokens=L, stop_tokens=eos + (close,))
    t_tok, t_mask = np.asarray(think.tokens), np.asarray(think.mask)
    prompt, pmask = np.asarray(think.prompt_tokens), np.asarray(think.prompt_mask)
    N, P = prompt.shape
    B = N // G
    traces, closed, hit_eos = [], np.zeros(N, bool), np.zeros(N, bool)
    for i in range(N):
      z, closed[i], hit_eos[i] = split_trace(t_tok[i][t_mask[i] == 1], close_id=close, eos_ids=eos)
      traces.append(z)

    parts, cut = [], np.zeros((N, S), bool)
    for i in range(N):
      for s, b in enumerate(budgets):
        ids, _, cut[i, s] = summary_continuation(traces[i], b, closed=bool(closed[i]),
                                                 cut_ids=cut_ids, close_id=close,
                                                 header_ids=header_ids)
        parts.append(ids)
    width = L + len(cut_ids) + 1 + len(header_ids) + Ts   # fixed completion width
    if P + width > ctx.model.max_seq_len:
      raise ValueError(f"prompt bucket {P} + rl.brpo completion width {width} (max_thinking_tokens "
                       f"+ delimiters + summary_max_tokens) exceeds model.max_seq_len "
                       f"{ctx.model.max_seq_len}")
    summary_prompts = [list(ctx.prompt_ids[k // S // G]) + parts[k] for k in range(N * S)]
    summ = ctx.sample(summary_prompts, num_samples=A, max_new_tokens=Ts, stop_tokens=eos,
                      rng=jax.random.fold_in(ctx.rng, 1))
    s_tok, s_mask = np.asarray(summ.tokens), np.asarray(summ.mask)
    M = N * S * A
    s_texts = decode_completions(tok, s_tok, s_mask)
    s_examples = [ctx.examples[k // (S * A) // G] for k in range(M)]
    # A think-delimited task's verifier reads the text after think_end: score '#' + summary.
    s_texts = [delimited_answer_text(t, sec.think_end, ex) for t, ex in zip(s_texts, s_examples)]
    res = ctx.score(s_texts, s_examples)
    correct = (np.asarray(res.per_fn["task"]) >= 1).reshape(N, S, A)
    extra_close = ((s_tok == close) & (s_mask == 1)).any(axis=1).reshape(N, S, A)
    r = dense_summary_rewards(correct, extra_close, hit_eos,
                              eos_scores_zero=sec.eos_in_thinking_scores_zero)

    # Advantages (pure functions of the spec).
    R = brpo_lib.budget_scores(jnp.asarray(r.reshape(B, G, S, A)))
    prior = brpo_lib.budget_prior(jnp.asarray(budgets), sec.budget_prior)
    a_think = brpo_lib.thinking_advantages(R, prior, variance_reduction=sec.variance_reduction)
    a_sum = np.asarray(brpo_lib.summary_advantages(jnp.asarray(r.reshape(B, G, S, A)),
                                                   summary_method=sec.summary_method)).reshape(M)
    tok_adv = np.asarray(brpo_lib.segment_token_advantages(a_think.reshape(N, S), budgets, L))
    R = np.asarray(R).reshape(N, S)
    prior = np.asarray(prior)

    # Assemble the rows: N thinking rows, then M summary rows.
    rows = N + M
    tokens = np.full((rows, P + width), tok.pad_id, np.int32)
    seg = np.zeros((rows, P + width), np.int32)
    mask = np.zeros((rows, width), np.int32)
    adv = np.zeros((rows, width), np.float32)
    slogp = np.zeros((rows, width), np.float32)
    ent = np.zeros((rows, width), np.float32)
    row_prompt = np.concatenate([prompt, np.repeat(prompt, S * A, axis=0)])
    row_pmask = np.concatenate([pmask, np.repeat(pmask, S * A, axis=0)])
    tokens[:, :P], seg[:, :P], seg[:, P:] = row_prompt, row_pmask, 1
    tokens[:N, P:P + L] = t_tok
    mask[:N, :L] = t_mask
    adv[:N, :L] = tok_adv * t_mask
    slogp[:N, :L] = np.asarray(think.logprobs)
    ent[:N, :L] = np.asarray(think.entropy)
    for k in range(M):
      part = parts[k // A]
      o, j = len(part), N + k
      tokens[j, P:P + o] = part
      tokens[j, P + o:P + o + Ts] = s_tok[k]
      mask[j, o:o + Ts] = s_mask[k]
      adv[j, o:o + Ts] = a_sum[k] * s_mask[k]
      slogp[j, o:o + Ts] = np.asarray(summ.logprobs)[k]
      ent[j, o:o + Ts] = np.asarray(summ.entropy)[k]
    t_texts = decode_completions(tok, t_tok, t_mask)
    anytime = (R * prior).sum(axis=1)                          # Σ_s p_s R_s per trace
    data = StepData(
        tokens=tokens, segment_ids=seg, prompt_len=P, mask=mask, sampler_logp=slogp, entropy=ent,
        truncated=np.concatenate([np.asarray(think.truncated), np.asarray(summ.truncated)]),
        rewards=np.concatenate([anytime, r.reshape(M)]).astype(np.float32),
        correct=np.concatenate([R[:, -1], r.reshape(M)]).astype(np.float32),
        texts=list(t_texts) + list(s_texts),
        examples=[ctx.examples[i // G] for i in range(N)] + s_examples,
        advantages=adv, token_weights=np.ones((rows, width), np.float32))
    lengths = t_mask.sum(axis=1)
    data.metrics.update(
        budget_accuracy_first=float(R[:, 0].mean()), budget_accuracy_last=float(R[:, -1].mean()),
        anytime_score=float(anytime.mean()), thinking_length=float(lengths.mean()),
        thinking_closed_fraction=float(closed.mean()), thinking_eos_fraction=float(hit_eos.mean()),
        thinking_cut_fraction=float(cut.mean()),
        reward_errors=float(res.stats["reward_errors"]),
        reward_timeouts=float(res.stats["reward_timeouts"]),
        **{f"budget_accuracy_{b}": float(R[:, s].mean()) for s, b in enumerate(budgets)})
    return data

  def shape(self, ctx: StepContext, data: StepData) -> StepData:
    """Advantages were set by `rollout` (they need the trace/summary layout); only the GRPO
    options that make sense per token apply here."""
    data.metrics["kept_groups"] = float(len(ctx.examples))
    return data
