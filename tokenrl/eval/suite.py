"""The evaluation suite behind `tokenrl eval`: every strategy scored from one set of samples.

Per problem p (P problems) the suite decodes once greedily and draws n samples once; every
strategy below is computed from those same samples, so strategies differ only in how they use
them, never in luck. k (each of --k, 1 <= k <= n) is the number of samples a strategy draws:

  greedy   one greedy completion (temperature 0).
  pass@k   unbiased pass@k (Chen et al. 2021) from all n samples: 1 − C(n−c, k)/C(n, k). An
           oracle: it needs the verifier to pick the right sample, so it is an upper bound and
           not in the cost-of-pass frontier.
  maj@k    majority vote over k samples (answers grouped by the task's answer normalisation;
           ties: the answer seen first).
  bon@k    best-of-k by a verifier-free score (below): the top-scored sample with an answer.
  bom@k    Best-of-Majority (spec §11): among the answers with frequency >= alpha in the k
           samples, the one whose best member scores highest (group score 'max').
  ffs@k    Sync-FFS (spec §12): the shortest finished sample of the k (ties: lowest index);
           none finished is a failure.

maj/bon/bom/ffs submit one answer from k samples; the n samples are cut into R = n // k
disjoint blocks of k (samples [r·k, (r+1)·k)), each block one attempt, and accuracy is the mean
over problems and blocks. Each block is an i.i.d. draw of the strategy, so this is unbiased,
with R runs per problem for the ratio-of-means cost-of-pass (spec §16); leftover samples
(n mod k) are unused by that strategy.

Score (bon, bom), never the verifier (a best-of-N by the verifier is pass@k's oracle):
  'logprob'  mean log-prob per generated token, from the sampler's log-probs, which are of the
             law actually sampled (temperature and control applied; no extra forward pass).
  'laser'    the LaSeR self-reward clip(β_v·(log π(z_c | x, y) − c_ref), 0, 1) of a model
             trained with rl.objective=laser (`self_reward.self_reward_scores`; one forward).
  'value'    the TVM value σ(w·h + b) at the completion's last token (params['value_head'],
             rl.objective=tvm; `value_search.model_value_scorer`).

Tokens per attempt: prompt tokens = k × the prompt length (the prompt is billed once per sample,
as a provider without prefix caching does; greedy: once); completion tokens = every generated
token including EOS (ffs: Σ_i min(len_i, L*), `selection.ffs_token_cost`; pass@k: k × the
mean sample length). Cost per attempt = `cost.attempt_cost` under a `PriceTable` (per 1M tokens).

Per strategy, the metrics (each per problem first, then a mean over problems):
  accuracy          mean correctness (pass@k: the estimator's value).
  prompt_tokens, completion_tokens, cost   means per attempt.
  cost_of_pass      spec §16: mean_p E[cost]/E[correct] over p's runs; ∞ when any problem is
                    never solved by the strategy (then read cost_per_correct).
  cost_per_correct  Σ cost / Σ correct over every attempt of every problem: the cost of one
                    correct answer pooled over the task (finite when anything is solved).
  tokens_of_pass, tokens_per_correct   the same two with generated tokens in place of cost.

`frontier(results)` is the frontier cost-of-pass over several evaluated models (each strategy of
each result is a separate "model"; pass@k excluded), per problem min then mean (spec §16).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import jax
import numpy as np

from tokenrl.data import rewards as rewards_lib
from tokenrl.data import task_arith_cot
from tokenrl.data.prompts import decode_completions
from tokenrl.data.reward_runner import RewardOutput
from tokenrl.eval import cost as cost_lib
from tokenrl.eval import selection
from tokenrl.eval.evaluate import verifier_runner
from tokenrl.eval.passk import pass_at_k

STRATEGIES = ("greedy", "pass", "maj", "bon", "bom", "ffs")
SAMPLED = ("pass", "maj", "bon", "bom", "ffs")
SCORES = ("logprob", "laser", "value")
# Strategies that need a verifier to choose (pass@k): an upper bound, not a deployable "model".
ORACLE = ("pass",)
DEFAULT_PRICES = "in=0.15,out=0.6"  # per 1M tokens; an illustrative small hosted model's rate

Answer = Optional[Hashable]


@dataclasses.dataclass(frozen=True)
class SuiteSamples:
  """What the strategies are scored from (P problems, n samples each).

  prompts        [P] prompt texts (they identify the problems across result files).
  prompt_tokens  int [P] prompt lengths in tokens (real tokens, no padding).
  answers        [P][n] normalised answers (None: no parseable answer).
  correct        bool [P, n] verifier >= 1.
  lengths        int [P, n] generated tokens including EOS.
  finished       bool [P, n] the sample emitted a stop token.
  scores         f64 [P, n] the verifier-free score of each sample (bon, bom).
  greedy_correct bool [P] / greedy_lengths int [P]: the greedy completion (None: not decoded).
  """

  prompts: Sequence[str]
  prompt_tokens: np.ndarray
  answers: Sequence[Sequence[Answer]]
  correct: np.ndarray
  lengths: np.ndarray
  finished: np.ndarray
  scores: np.ndarray
  greedy_correct: np.ndarray | None = None
  greedy_lengths: np.ndarray | None = None

  def __post_init__(self):
    p = len(self.prompts)
    if np.shape(self.prompt_tokens) != (p,):
      raise ValueError(f"prompt_tokens: expected shape ({p},), got {np.shape(self.prompt_tokens)}")
    shape = np.shape(self.correct)
    if len(shape) != 2 or shape[0] != p:
      raise ValueError(f"correct: expected shape ({p}, n), got {shape}")
    for name in ("lengths", "finished", "scores"):
      if np.shape(getattr(self, name)) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {np.shape(getattr(self, name))}")
    if len(self.answers) != p or any(len(a) != shape[1] for a in self.answers):
      raise ValueError(f"answers: expected {p} lists of {shape[1]} answers")
    for name in ("greedy_correct", "greedy_lengths"):
      value = getattr(self, name)
      if value is not None and np.shape(value) != (p,):
        raise ValueError(f"{name}: expected shape ({p},), got {np.shape(value)}")

  @property
  def n(self) -> int:
    return int(np.shape(self.correct)[1])


# ---- answers and scores --------------------------------------------------------------------------


def answer_fn_for(task: str) -> Callable[[str, Mapping[str, Any]], Answer]:
  """The task's own answer normalisation, for grouping samples (majority vote, BoM).

  Worked traces (arith_cot, countdown 'cot:1': the reference answer holds '#') group by the
  text after the last '#' (`task_arith_cot.final_answer`), as their verifiers read it; gsm8k and
  jsonl (the 'math' verifier) by the final number (`rewards.extract_final_answer`); the other
  embedded tasks by the stripped completion. An empty answer is None (no answer).
  """
  math_tasks = task in ("gsm8k", "jsonl")

  def answer(text: str, example: Mapping[str, Any]) -> Answer:
    if task_arith_cot.THINK_END in str(example.get("answer", "")):
      a = task_arith_cot.final_answer(text)
    elif math_tasks:
      a = rewards_lib.extract_final_answer(text)
    else:
      a = text.strip()
    return a or None

  return answer


def logprob_scores(rollout: Any, prompts: Sequence[Sequence[int]]) -> np.ndarray:
  """Mean sampled log-prob per generated token [N] (rollout.logprobs [N,T] over rollout.mask)."""
  del prompts
  lp = np.asarray(rollout.logprobs, np.float64)
  mask = np.asarray(rollout.mask, np.float64)
  return (lp * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def make_score_fn(kind: str, params: Any = None, *, config: Any = None,
                  laser_token_id: int | None = None, beta_v: float = 0.1,
                  c_ref: float = -23.0) -> Callable[[Any, Sequence[Sequence[int]]], np.ndarray]:
  """score(rollout, row_prompts [N lists of ids]) -> f64 [N], the bon/bom ranking score.

  'logprob' needs nothing; 'laser' the params and z_c's id (`laser_token_id`, β_v, c_ref from
  rl.laser); 'value' params holding 'value_head'. Errors name what is missing.
  """
  if kind not in SCORES:
    raise ValueError(f"score: expected one of {list(SCORES)}, got {kind!r}")
  if kind == "logprob":
    return logprob_scores
  if kind == "laser":
    from tokenrl.eval.self_reward import self_reward_scores  # pylint: disable=g-import-not-at-top
    if laser_token_id is None:
      raise ValueError("score='laser': needs the self-reward token id (rl.laser.token_id of a "
                       "run trained with rl.objective=laser)")

    def laser(rollout, prompts):
      del prompts
      return np.asarray(self_reward_scores(
          params, np.asarray(rollout.prompt_tokens), np.asarray(rollout.prompt_mask),
          np.asarray(rollout.tokens), np.asarray(rollout.mask), config=config,
          token_id=int(laser_token_id), beta_v=beta_v, c_ref=c_ref), np.float64)
    return laser
  from tokenrl.eval.value_search import model_value_scorer  # pylint: disable=g-import-not-at-top
  from tokenrl.models import value_head  # pylint: disable=g-import-not-at-top
  if not isinstance(params, Mapping) or value_head.KEY not in params:
    raise ValueError(f"score='value': the params have no {value_head.KEY!r} (train one with "
                     "rl.objective=tvm)")

  def value(rollout, prompts):
    toks, lens = np.asarray(rollout.tokens), np.asarray(rollout.mask).sum(1)
    out = np.zeros(len(prompts), np.float64)
    # One scorer call per distinct prompt (its n samples together): bounded compiles.
    for start in range(0, len(prompts)):
      if start and list(prompts[start]) == list(prompts[start - 1]):
        continue
      end = start + 1
      while end < len(prompts) and list(prompts[end]) == list(prompts[start]):
        end += 1
      paths = [tuple(int(t) for t in toks[i, :lens[i]]) for i in range(start, end)]
      out[start:end] = model_value_scorer(params, prompts[start], config=config)(paths)
    return out
  return value


# ---- sampling ------------------------------------------------------------------------------------


def _finished(tokens: np.ndarray, mask: np.ndarray, stops: Sequence[int]) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
  """(lengths int [N], finished bool [N]): the last kept token is a stop token."""
  lengths = mask.sum(1).astype(np.int64)
  last = tokens[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
  return lengths, (lengths > 0) & np.isin(last, np.asarray(list(stops)))


def check_ks(ks: Sequence[int], n: int) -> list[int]:
  """Sorted distinct ks; ValueError naming any k outside [1, n]."""
  ks = sorted({int(k) for k in ks})
  if not ks:
    raise ValueError("k: give at least one k (samples per strategy attempt)")
  bad = [k for k in ks if not 1 <= k <= n]
  if bad:
    raise ValueError(f"k: every k must be in [1, n={n}] (a strategy cannot use more samples than "
                     f"were drawn), got {bad}; raise n or drop those k")
  return ks


def check_strategies(strategies: Sequence[str]) -> list[str]:
  unknown = [s for s in strategies if s not in STRATEGIES]
  if unknown or not strategies:
    raise ValueError(f"strategies: expected a non-empty subset of {list(STRATEGIES)}, got "
                     f"{list(strategies)}")
  return [s for s in STRATEGIES if s in strategies]


def collect(params: Any, *, config: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
            prompt_ids: Sequence[Sequence[int]], reward_fn: Callable[[str, Mapping[str, Any]],
                                                                     float] | None,
            answer_fn: Callable[[str, Mapping[str, Any]], Answer], n: int, max_new_tokens: int,
            greedy: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            score_fn: Callable[[Any, Sequence[Sequence[int]]], np.ndarray] = logprob_scores,
            logit_processor: Any = None, processor_state: Any = None,
            rng: jax.Array | None = None, max_rows: int = 256,
            sampler: Callable[..., Any] | None = None,
            scorer: Callable[[Sequence[str], Sequence[Mapping[str, Any]]], RewardOutput] | None = None,
            reward_timeout_s: float = 5.0, progress: bool = False,
            desc: str = "eval", task: str = "") -> tuple[SuiteSamples, dict[str, int]]:
  """Decode every problem (greedy once if `greedy`, n samples if n > 0) and verify each text.

  Returns (samples, stats) with stats {'verifier_errors', 'verifier_timeouts'} summed over
  calls. The verifier runs out of process under a timeout (a `RewardRunner`, as `evaluate`):
  model output is never executed, and a hanging or failing check scores 0 (not correct).

  Args:
    reward_fn: the task's verifier, fn(completion, example) -> float (>= 1 is correct); None is
      a ValueError naming `task` (nothing to score against).
    sampler: `sampler(params, ids, **kw)` with `tokenrl.rollout.sample`'s keywords (default:
      `sample` with `config`); it must return tokens/mask/logprobs (and prompt_tokens/
      prompt_mask for score 'laser').
    scorer: a caller-owned runner, scorer(texts, examples) -> RewardOutput; None starts one.
    max_rows: prompts per sampler call = max(1, max_rows // n) (rows = prompts × n).
  """
  if reward_fn is None and scorer is None:
    raise ValueError(f"task {task or '?'!r} has no verifier: the suite scores correctness with "
                     "one (reward_fn); use a task with a verifier or pass reward_fn")
  if len(examples) != len(prompt_ids):
    raise ValueError(f"examples, prompt_ids: expected equal lengths, got {len(examples)} and "
                     f"{len(prompt_ids)}")
  if not examples:
    raise ValueError("examples: no problems to evaluate")
  if n < 0 or (n == 0 and not greedy):
    raise ValueError(f"n: expected >= 1 samples per problem, got {n}")
  if n and temperature <= 0:
    raise ValueError(f"temperature: sampling n={n} completions needs a temperature > 0, got "
                     f"{temperature}")
  if scorer is not None:
    return _collect(params, config, tokenizer, examples, prompt_ids, scorer, answer_fn, n,
                    max_new_tokens, greedy, temperature, top_k, top_p, score_fn, logit_processor,
                    processor_state, rng, max_rows, sampler, progress, desc)
  with verifier_runner(reward_fn, reward_timeout_s) as runner:
    return _collect(params, config, tokenizer, examples, prompt_ids, runner, answer_fn, n,
                    max_new_tokens, greedy, temperature, top_k, top_p, score_fn, logit_processor,
                    processor_state, rng, max_rows, sampler, progress, desc)


def _collect(params, config, tokenizer, examples, prompt_ids, scorer, answer_fn, n,
             max_new_tokens, greedy, temperature, top_k, top_p, score_fn, proc, state, rng,
             max_rows, sampler, progress, desc):
  """The loop of `collect`, over batches of max(1, max_rows // n) prompts."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if sampler is None:
    from tokenrl.rollout import sample  # pylint: disable=g-import-not-at-top
    sampler = lambda p, ids, **kw: sample(p, ids, config=config, **kw)
  stops = tuple(tokenizer.eos_token_ids)
  rng = jax.random.key(0) if rng is None else rng
  kw = dict(max_new_tokens=max_new_tokens, stop_tokens=stops, logit_processor=proc,
            processor_state=state)
  batch = max(1, max_rows // max(n, 1))
  p_total = len(examples)
  g_ok, g_len = np.zeros(p_total, bool), np.zeros(p_total, np.int64)
  ok, ln = np.zeros((p_total, n), bool), np.zeros((p_total, n), np.int64)
  fin, sc = np.zeros((p_total, n), bool), np.zeros((p_total, n), np.float64)
  answers: list[list[Answer]] = []
  stats = {"verifier_errors": 0, "verifier_timeouts": 0}

  def verify(texts, chunk):
    out = scorer(texts, chunk)
    for key, name in (("reward_errors", "verifier_errors"), ("reward_timeouts",
                                                             "verifier_timeouts")):
      stats[name] += int(getattr(out, "stats", {}).get(key, 0))
    return np.asarray(out.rewards) >= 1.0

  bar = tqdm(total=p_total, desc=desc, unit="problem", file=sys.stderr, disable=not progress)
  try:
    for start in range(0, p_total, batch):
      chunk = list(examples[start:start + batch])
      ids = [list(x) for x in prompt_ids[start:start + batch]]
      end = start + len(chunk)
      if greedy:
        out = sampler(params, ids, rng=rng, temperature=0.0, **kw)
        toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
        texts = decode_completions(tokenizer, toks, mask)
        g_ok[start:end] = verify(texts, chunk)
        g_len[start:end] = _finished(toks, mask, stops)[0]
      if n:
        rng, key = jax.random.split(rng)
        out = sampler(params, ids, rng=key, temperature=temperature, top_k=top_k, top_p=top_p,
                      num_samples=n, **kw)
        toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
        texts = decode_completions(tokenizer, toks, mask)
        # Group layout: row b·n + g is sample g of chunk[b].
        ok[start:end] = verify(texts, chunk).reshape(-1, n)
        lengths, finished = _finished(toks, mask, stops)
        ln[start:end], fin[start:end] = lengths.reshape(-1, n), finished.reshape(-1, n)
        rows = [ids[i // n] for i in range(len(texts))]
        sc[start:end] = np.asarray(score_fn(out, rows), np.float64).reshape(-1, n)
        answers += [[answer_fn(texts[b * n + g], chunk[b]) for g in range(n)]
                    for b in range(len(chunk))]
      else:
        answers += [[] for _ in chunk]
      bar.update(len(chunk))
  finally:
    bar.close()
  if np.isnan(sc).any():
    raise ValueError("score: NaN scores (a completion with no generated token?)")
  samples = SuiteSamples(
      prompts=[str(ex.get("prompt", "")) for ex in examples],
      prompt_tokens=np.asarray([len(p) for p in prompt_ids], np.int64), answers=answers,
      correct=ok, lengths=ln, finished=fin, scores=sc,
      greedy_correct=g_ok if greedy else None, greedy_lengths=g_len if greedy else None)
  return samples, stats


# ---- strategies ----------------------------------------------------------------------------------


def _blocks(samples: SuiteSamples, k: int, pick: Callable[..., Any]):
  """(correct, n_in, n_out) each [P, R = n // k] for a one-answer strategy over k-blocks.

  pick(answers, scores, lengths, finished) -> (index or None, generated tokens of the block).
  """
  p, r = len(samples.prompts), samples.n // k
  ok, n_out = np.zeros((p, r)), np.zeros((p, r))
  for i in range(p):
    for b in range(r):
      s = slice(b * k, (b + 1) * k)
      idx, tokens = pick(list(samples.answers[i][s]), samples.scores[i, s], samples.lengths[i, s],
                         samples.finished[i, s])
      ok[i, b] = selection.strategy_pass_at_k([] if idx is None else [idx], samples.correct[i, s])
      n_out[i, b] = tokens
  n_in = np.broadcast_to(k * samples.prompt_tokens[:, None].astype(np.float64), (p, r))
  return ok, n_in, n_out


def _strategy_arrays(samples: SuiteSamples, family: str, k: int, alpha: float):
  """(correct [P,R], n_in [P,R], n_out [P,R]) of one strategy at k samples per attempt."""
  if family == "greedy":
    return (samples.greedy_correct[:, None].astype(np.float64),
            samples.prompt_tokens[:, None].astype(np.float64),
            samples.greedy_lengths[:, None].astype(np.float64))
  if family == "pass":
    c = samples.correct.sum(1)
    ok = np.asarray([pass_at_k(samples.n, int(ci), k) for ci in c])[:, None]
    # k samples drawn at random from the n: expected tokens = k × the mean sample length.
    return (ok, (k * samples.prompt_tokens[:, None]).astype(np.float64),
            k * samples.lengths.mean(1, keepdims=True))
  total = lambda ln: int(np.sum(ln))
  picks = {
      "maj": lambda a, s, ln, f: (selection.majority_vote(a, 1)[0], total(ln)),
      "bon": lambda a, s, ln, f: (selection.best_of_n(a, s, 1)[0], total(ln)),
      "bom": lambda a, s, ln, f: (selection.best_of_majority(a, s, 1, alpha=alpha)[0], total(ln)),
      "ffs": lambda a, s, ln, f: (selection.first_finish(ln, f), selection.ffs_token_cost(ln, f)),
  }
  return _blocks(samples, k, picks[family])


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
  return float(num.sum() / den.sum()) if den.sum() > 0 else float("inf")


def score_strategies(samples: SuiteSamples, *, strategies: Sequence[str] = STRATEGIES,
                     ks: Sequence[int] = (1,), alpha: float = 0.2,
                     prices: cost_lib.PriceTable | None = None) -> list[dict[str, Any]]:
  """One row per (strategy, k) with the metrics of the module docstring and `per_problem`
  {accuracy, cost, cost_of_pass, tokens_of_pass} [P] (∞ kept as float inf here).

  greedy has one row (k = 1); every other strategy one row per k. Pure numpy: the same samples
  always give the same table.
  """
  strategies = check_strategies(strategies)
  prices = cost_lib.parse_price_table(DEFAULT_PRICES) if prices is None else prices
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha: expected a frequency in [0, 1], got {alpha}")
  sampled = [s for s in strategies if s != "greedy"]
  if sampled:
    ks = check_ks(ks, samples.n)
  if "greedy" in strategies and samples.greedy_correct is None:
    raise ValueError("strategies: 'greedy' asked for but the samples have no greedy decode")
  rows = []
  for family in strategies:
    for k in ([1] if family == "greedy" else ks):
      ok, n_in, n_out = _strategy_arrays(samples, family, k, alpha)
      cost = cost_lib.attempt_cost(n_in, n_out, prices)
      per_cop = cost_lib.cost_of_pass(cost, ok)
      per_top = cost_lib.tokens_of_pass(n_out, ok)
      rows.append({
          "name": "greedy" if family == "greedy" else f"{family}@{k}", "family": family, "k": k,
          "runs": int(ok.shape[1]),
          "accuracy": float(ok.mean()),
          "prompt_tokens": float(n_in.mean()), "completion_tokens": float(n_out.mean()),
          "cost": float(cost.mean()),
          "cost_of_pass": float(per_cop.mean()),  # inf when some problem is never solved
          "cost_per_correct": _ratio(cost, ok),
          "tokens_of_pass": float(per_top.mean()),
          "tokens_per_correct": _ratio(n_out, ok),
          "solved": float((ok.max(1) > 0).mean()),
          "per_problem": {"accuracy": ok.mean(1).tolist(), "cost": cost.mean(1).tolist(),
                          "cost_of_pass": per_cop.tolist(), "tokens_of_pass": per_top.tolist()},
      })
  return rows


# ---- one model, end to end -----------------------------------------------------------------------


def run_suite(params: Any, *, config: Any, tokenizer: Any, examples: Sequence[Mapping[str, Any]],
              prompt_ids: Sequence[Sequence[int]],
              reward_fn: Callable[[str, Mapping[str, Any]], float] | None, task: str,
              strategies: Sequence[str] = STRATEGIES, n: int = 16, ks: Sequence[int] = (1, 4, 16),
              alpha: float = 0.2, prices: cost_lib.PriceTable | None = None,
              max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, score: str = "logprob",
              score_fn: Callable[[Any, Sequence[Sequence[int]]], np.ndarray] | None = None,
              answer_fn: Callable[[str, Mapping[str, Any]], Answer] | None = None,
              logit_processor: Any = None, processor_state: Any = None,
              control: Mapping[str, Any] | None = None, label: str = "model",
              rng: jax.Array | None = None, **collect_kw: Any) -> dict[str, Any]:
  """Sample, verify and score every strategy: the result `report` writes and `frontier` reads.

  Checks every argument before decoding anything (an unknown strategy, k > n, no verifier).
  score: the name of the bon/bom score recorded in the result; `score_fn` computes it
  (default: 'logprob' only, others via `make_score_fn`). answer_fn: default `answer_fn_for(task)`.
  collect_kw: `collect`'s sampler / scorer / max_rows / reward_timeout_s / progress.
  Returns a JSON-ready dict (∞ as float inf; `report.to_json` writes it as null).
  """
  strategies = check_strategies(strategies)
  prices = cost_lib.parse_price_table(DEFAULT_PRICES) if prices is None else prices
  sampled = [s for s in strategies if s != "greedy"]
  if sampled:
    if n < 1:
      raise ValueError(f"n: strategies {sampled} need n >= 1 samples per problem, got {n}")
    ks = check_ks(ks, n)
  else:
    n = 0
  if reward_fn is None and collect_kw.get("scorer") is None:
    raise ValueError(f"task {task!r} has no verifier: the suite scores correctness with one")
  if score_fn is None:
    if score != "logprob":
      raise ValueError(f"score={score!r}: pass score_fn=make_score_fn({score!r}, params, ...)")
    score_fn = logprob_scores
  samples, stats = collect(
      params, config=config, tokenizer=tokenizer, examples=examples, prompt_ids=prompt_ids,
      reward_fn=reward_fn, answer_fn=answer_fn or answer_fn_for(task), n=n,
      max_new_tokens=max_new_tokens, greedy="greedy" in strategies, temperature=temperature,
      top_k=top_k, top_p=top_p, score_fn=score_fn, logit_processor=logit_processor,
      processor_state=processor_state, rng=rng, desc=label, task=task, **collect_kw)
  rows = score_strategies(samples, strategies=strategies, ks=ks, alpha=alpha, prices=prices)
  return {
      "label": label, "task": task, "num_problems": len(examples), "n": n,
      "ks": list(ks) if sampled else [], "alpha": alpha, "score": score,
      "temperature": temperature, "max_new_tokens": max_new_tokens,
      "prices": {"in": prices.prompt_price_per_1m, "out": prices.completion_price_per_1m},
      "control": dict(control or {"method": "none"}), **stats,
      "problems": list(samples.prompts), "strategies": rows,
  }


# ---- frontier over several results ---------------------------------------------------------------


def frontier(results: Sequence[Mapping[str, Any]], expert_cop: float | None = None
             ) -> dict[str, Any]:
  """Frontier cost-of-pass over every (result, strategy) "model" of `results` (spec §16).

  Members: each non-oracle strategy row, named 'label:strategy'. V_p = min over members of
  v(m, p) (and `expert_cop`, if given); the task frontier is mean_p V_p, ∞ when some problem is
  solved by no member (listed in 'unsolved'; 'cost_of_pass_solved' is the mean over the rest).
  'best' names the member attaining V_p per problem ('expert': the baseline; None: unsolved). 'gain' maps each member
  that attains some V_p to the mean over p of G_p = V_p(M without it) − V_p(M) (spec §16's
  marginal gain; ∞ when it is the only member solving some problem).

  The results must cover the same problems (same prompts, same order) under the same prices.
  """
  if len(results) < 1:
    raise ValueError("results: need at least one evaluated result")
  first = results[0]
  per_model: dict[str, np.ndarray] = {}
  for res in results:
    if list(res["problems"]) != list(first["problems"]):
      raise ValueError(f"results {first['label']!r} and {res['label']!r} evaluate different "
                       "problems (prompts or order differ): a frontier needs the same problems "
                       "(same task, tiers, seed and number of problems)")
    if dict(res["prices"]) != dict(first["prices"]):
      raise ValueError(f"results {first['label']!r} and {res['label']!r} use different price "
                       f"tables ({dict(first['prices'])} vs {dict(res['prices'])})")
    for row in res["strategies"]:
      if row["family"] in ORACLE:
        continue
      name = f"{res['label']}:{row['name']}"
      if name in per_model:
        raise ValueError(f"results: two members named {name!r}; give the results distinct labels")
      v = row["per_problem"]["cost_of_pass"]
      per_model[name] = np.asarray([np.inf if x is None else x for x in v], np.float64)
  if not per_model:
    raise ValueError("results: no non-oracle strategy rows (pass@k alone has no frontier)")
  names = list(per_model)
  table = np.stack([per_model[m] for m in names])                                  # [M, P]
  v = cost_lib.frontier_per_problem(per_model, expert_cop)
  unsolved = np.flatnonzero(np.isinf(v))
  best_idx = table.argmin(0)
  best = [None if np.isinf(v[p]) else "expert" if table[best_idx[p], p] > v[p]
          else names[best_idx[p]] for p in range(v.shape[0])]
  gain = {}
  for m in dict.fromkeys(b for b in best if b not in (None, "expert")):
    rest = {k: x for k, x in per_model.items() if k != m}
    g = cost_lib.marginal_gain(rest, per_model[m], expert_cop)
    gain[m] = float(g.mean())
  solved = np.isfinite(v)
  return {
      "members": names, "expert_cop": expert_cop,
      "cost_of_pass": float(v.mean()) if not unsolved.size else float("inf"),
      "cost_of_pass_solved": float(v[solved].mean()) if solved.any() else float("inf"),
      "unsolved": unsolved.tolist(), "per_problem": v.tolist(), "best": best, "gain": gain,
  }
