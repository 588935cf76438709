"""Sequence budgets: every sequence a method samples or trains on must fit model.max_seq_len.

`check_budgets(cfg, model_config, prompt_len)` is called by the run skeleton at start-up, before
any work (no SFT warm-up is wasted on a run that would crash at its first RL step). Each method
lists the sequences it builds (`Method.sequence_budgets(bctx) -> list[Budget]`); the default is
the plain rollout, prompt bucket + sampler.max_new_tokens, which every run also uses for its
evaluation. A violated budget raises one ValueError that lists every violation with its numbers
and the single overrides that make the whole check pass, in command-line form, like the memory
planner (tokenrl/train/plan.py):

  sequence budgets exceed model.max_seq_len=64 (rl.objective=brpo, longest prompt 16 tokens):
    - brpo thinking rollout: prompt bucket 16 + rl.brpo.max_thinking_tokens 8000 = 8016
    ...
  try: --config.rl.brpo.max_thinking_tokens=8 or --config.model.max_seq_len=8147

A suggested value is found by bisection over the knob with the same budget functions, so applying
it passes the check by construction (knobs are monotone: fewer tokens never need more context).

prompt_len: the longest prompt of the run (training and held-out prompts) in tokens, as
`tokenrl.data.prompts.tokenize_prompts` encodes it (`longest_prompt` below computes it). The
check buckets it as the sampler does (`tokenrl.rollout.bucket_length`), so the bucketed length
also works; then prompts built from it (hinted prompts, BRPO summary prompts, POAD turn contexts,
MRT forced-answer contexts) are bounded as if the longest prompt filled its bucket, which can
reject a run whose real prompts are shorter. Lengths that depend on the examples' answers (OTR/DCO
teacher forcing, RMT's answer prefixes, the pairwise rows) use `answer_len` (the longest answer in
tokens, without EOS) when given, else assume the answer + EOS fits sampler.max_new_tokens (a
verifier reward needs that anyway). Hinted prompts (guide_grpo, nurl) are checked when `examples`
are given (their hints come from the examples); the runtime check of the hinted rollout remains.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import ml_collections

from tokenrl.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Budget:
  """One sequence a method builds.

  name    stable label ("rollout", "brpo summary rollout"), used to report it.
  tokens  its length in tokens (prompt side bucketed as the sampler does); must be <= max_seq_len.
  detail  how `tokens` is made, with numbers ("prompt bucket 16 + sampler.max_new_tokens 6").
  knobs   (config key, smallest valid value): the integer fields that shrink it.
  """

  name: str
  tokens: int
  detail: str
  knobs: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass
class BudgetContext:
  """What a method's `sequence_budgets` reads: the run's config and lengths.

  cfg, opts (resolve_objective), section (cfg.rl.<name> or None), model (ModelConfig),
  prompt_len (longest prompt, tokens), answer_len (longest answer, tokens without EOS, or None),
  examples (the run's examples or None), tokenizer (loaded from data.tokenizer on first use).
  """

  cfg: ml_collections.ConfigDict
  opts: dict[str, Any]
  section: Any
  model: ModelConfig
  prompt_len: int
  answer_len: int | None = None
  examples: Sequence[Any] | None = None
  tokenizer: Any = None

  @property
  def T(self) -> int:
    return int(self.cfg.sampler.max_new_tokens)

  @property
  def P(self) -> int:
    """The bucketed prompt width of the plain rollout."""
    return bucket(self.prompt_len)

  @property
  def answer_tokens(self) -> int:
    """Longest answer + EOS (tokens): answer_len + 1, or T when the answers are not given."""
    return self.T if self.answer_len is None else int(self.answer_len) + 1

  def tok(self) -> Any:
    if self.tokenizer is None:
      from tokenrl.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
      self.tokenizer = load_tokenizer(self.cfg.data.tokenizer or self.cfg.model.hf_path)
    return self.tokenizer

  def n_tokens(self, text: str) -> int:
    """Tokens of `text` inserted inside a sequence (no special tokens)."""
    return len(self.tok().encode(text, add_special_tokens=False)) if text else 0


def bucket(n: int) -> int:
  """The sampler's padded prompt width of a longest prompt of n tokens."""
  from tokenrl.rollout.sampler import bucket_length  # pylint: disable=g-import-not-at-top
  return int(bucket_length(max(int(n), 1)))


def rollout_budget(bctx: BudgetContext, name: str = "rollout") -> Budget:
  """The plain rollout (and every run's evaluation): prompt bucket + sampler.max_new_tokens."""
  return Budget(name, bctx.P + bctx.T,
                f"prompt bucket {bctx.P} + sampler.max_new_tokens {bctx.T}",
                (("sampler.max_new_tokens", 1),))


def longest_prompt(cfg: ml_collections.ConfigDict, tokenizer: Any,
                   examples: Sequence[Any]) -> int:
  """prompt_len for `check_budgets`: the longest prompt of `examples` (train + held-out) in tokens,
  encoded as the run encodes them (chat template per data.chat_template)."""
  from tokenrl.data.prompts import tokenize_prompts  # pylint: disable=g-import-not-at-top
  ids = tokenize_prompts(tokenizer, [ex["prompt"] for ex in examples],
                         use_chat_template=bool(cfg.data.chat_template))
  return max(len(x) for x in ids)


def longest_answer(tokenizer: Any, examples: Sequence[Any]) -> int:
  """answer_len for `check_budgets`: the longest str(answer) of `examples` in tokens (no EOS)."""
  return max(len(tokenizer.encode(str(ex["answer"]), add_special_tokens=False))
             for ex in examples)


def _resolve(rl_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  try:
    from tokenrl.methods.config import resolve_objective  # pylint: disable=g-import-not-at-top
  except ImportError:  # before the move of resolve_objective to tokenrl.methods.config
    from tokenrl.objectives import resolve_objective  # pylint: disable=g-import-not-at-top
  return resolve_objective(rl_cfg)


def method_budgets(cfg: ml_collections.ConfigDict, model_config: ModelConfig, prompt_len: int,
                   **lengths: Any) -> list[Budget]:
  """Every Budget of the run's method (rl.objective) under `cfg`."""
  from tokenrl.methods import get_method  # pylint: disable=g-import-not-at-top
  opts = _resolve(cfg.rl)
  name = opts["objective"]
  section = cfg.rl[name] if name in cfg.rl else None
  bctx = BudgetContext(cfg=cfg, opts=opts, section=section, model=model_config,
                       prompt_len=int(prompt_len), **lengths)
  return list(get_method(name).sequence_budgets(bctx))


def _with(cfg: ml_collections.ConfigDict, key: str, value: Any) -> ml_collections.ConfigDict:
  c = copy.deepcopy(cfg)
  *path, leaf = key.split(".")
  node = c
  for p in path:
    node = node[p]
  node[leaf] = value
  return c


def _get(cfg: ml_collections.ConfigDict, key: str) -> Any:
  node = cfg
  for p in key.split("."):
    node = node[p]
  return node


def check_budgets(cfg: ml_collections.ConfigDict, model_config: ModelConfig, prompt_len: int, *,
                  answer_len: int | None = None, examples: Sequence[Any] | None = None,
                  tokenizer: Any = None) -> None:
  """Raise ValueError unless every sequence of the run fits model_config.max_seq_len.

  The message lists each violated budget with its numbers and the overrides (one knob each, or
  model.max_seq_len for a 'tiny' preset model) that make the whole check pass. See the module
  docstring for prompt_len / answer_len / examples.
  """
  lengths = dict(answer_len=answer_len, examples=examples, tokenizer=tokenizer)
  limit = int(model_config.max_seq_len)
  budgets = method_budgets(cfg, model_config, prompt_len, **lengths)
  bad = [b for b in budgets if b.tokens > limit]
  if not bad:
    return

  def fits(overrides: dict[str, int]) -> bool:
    c = cfg
    for key, value in overrides.items():
      c = _with(c, key, value)
    try:
      return all(b.tokens <= limit for b in method_budgets(c, model_config, prompt_len, **lengths))
    except ValueError:   # an invalid combination (validate) is no suggestion
      return False

  def largest(key: str, lo: int, hi: int, others: dict[str, int]) -> int | None:
    """The largest value in [lo, hi] of `key` that fits with `others` (fits is monotone)."""
    if hi < lo or not fits({**others, key: lo}):
      return None
    while lo < hi:
      mid = (lo + hi + 1) // 2
      lo, hi = (mid, hi) if fits({**others, key: mid}) else (lo, mid - 1)
    return lo

  tries = []
  knobs = dict(k for b in bad for k in b.knobs)
  for key, lo in knobs.items():
    x = largest(key, lo, int(_get(cfg, key)) - 1, {})
    if x is not None:
      tries.append(f"--config.{key}={x}")
  if not tries and len(knobs) > 1:
    # No single knob suffices: all knobs at their minimum, then each (in order) raised as far as
    # the others allow.
    joint = dict(knobs)
    if fits(joint):
      for key, lo in knobs.items():
        joint[key] = largest(key, lo, int(_get(cfg, key)) - 1, joint)
      tries.append(" ".join(f"--config.{k}={v}" for k, v in joint.items()))
  need = max(b.tokens for b in budgets)
  m = cfg.model
  if m.preset == "tiny" and not m.hf_path:
    tries.append(f"--config.model.max_seq_len={need}")
  lines = [f"sequence budgets exceed model.max_seq_len={limit} (rl.objective="
           f"{cfg.rl.objective}, longest prompt {int(prompt_len)} tokens):"]
  lines += [f"  - {b.name}: {b.detail} = {b.tokens} > {limit}" for b in bad]
  if tries:
    lines.append("try: " + " or ".join(tries))
  else:
    lines.append(f"no single override fits: shorten the prompts or use a model with "
                 f"max_seq_len >= {need}")
  raise ValueError("\n".join(lines))
