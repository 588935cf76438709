"""The sampler logit control named by a `sampler.control` config section, ready for `sample`.

    proc, state = build_control(cfg.sampler.control, tokenizer, dim=model.dim,
                                vocab_size=model.vocab_size)
    out = sample(params, prompts, ..., logit_processor=proc, processor_state=state)

method 'none' gives (None, None): plain sampling. 'cyclic_reflex' gives a `CyclicReflex` and no
state (its knobs are static). 'budget' gives a `BudgetGuidance` and the state
{'head': the budget-head params (w_* [D,V], b_* [V]), 'budget': f32 [] thinking tokens}, which
`sample` broadcasts to every row (a new budget does not recompile the decode loop).

Strings become token ids with `token_ids_of`: each one must be a single token of this
tokenizer, and every error names the config key it came from (e.g.
'sampler.control.reflection'), so a command-line override can be fixed from the message alone.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from tokenrl.config import CONTROL_METHODS
from tokenrl.models.budget_head import load_budget_head
from tokenrl.rollout.budget_guidance import BudgetGuidance
from tokenrl.rollout.controls import CyclicReflex, token_ids_of

KEY = "sampler.control"


def _one_id(tokenizer: Any, text: str, field: str) -> int:
  """The single token id of `text`, the error naming sampler.control.<field>."""
  if not text:
    raise ValueError(f"{KEY}.{field}: expected a string that is one token, got ''")
  return token_ids_of(tokenizer, [text], what=f"{KEY}.{field}")[0]


def _finite(section: Any, field: str) -> float:
  value = float(section[field])
  if not math.isfinite(value):
    raise ValueError(f"{KEY}.{field}: expected a finite number, got {section[field]!r}")
  return value


def build_control(section: Any, tokenizer: Any, *, dim: int,
                  vocab_size: int) -> tuple[Any | None, dict[str, Any] | None]:
  """(logit_processor, processor_state) for `sample` from a sampler.control section.

  Args:
    section: the ConfigDict of `tokenrl.config.control_config()` (or a mapping with its keys).
    tokenizer: the policy's tokenizer (`encode(text, add_special_tokens=False)`).
    dim, vocab_size: the policy's hidden width and vocabulary, checked against the budget head.

  Raises:
    ValueError naming the offending key: an unknown method; a think_end / reflection / newline
    string that is not one token; a period <= 0; budget without a head file, or a head file
    that is missing or does not fit the policy.
  """
  method = section["method"]
  if method not in CONTROL_METHODS:
    raise ValueError(f"{KEY}.method: expected one of {list(CONTROL_METHODS)}, got {method!r}")
  if method == "none":
    return None, None
  # '' = no end-of-thinking token: the control acts on the whole completion.
  think_end = _one_id(tokenizer, section["think_end"], "think_end") if section["think_end"] else None
  if method == "cyclic_reflex":
    # Not stripped: ' wait' and 'wait' are different BPE tokens, and the space is meant.
    words = [w for w in str(section["reflection"]).split(",") if w]
    if not words:
      raise ValueError(f"{KEY}.reflection: cyclic_reflex needs at least one reflection string "
                       f"(comma-separated, one token each), got {section['reflection']!r}")
    ids = token_ids_of(tokenizer, words, what=f"{KEY}.reflection")
    period = _finite(section, "period")
    if period <= 0:
      raise ValueError(f"{KEY}.period: expected > 0 generated tokens per cycle, got {period}")
    proc = CyclicReflex(reflection_ids=ids, think_end_id=think_end,
                        amplitude=_finite(section, "amplitude"), period=period,
                        shift=_finite(section, "shift"))
    return proc, None
  # budget
  head_path = section["head"]
  if not head_path:
    raise ValueError(f"{KEY}.head: budget guidance needs the remaining-length head (a "
                     "safetensors file from `tokenrl budget-head`); none is set")
  if not os.path.isfile(head_path):
    raise ValueError(f"{KEY}.head: no such file {head_path!r}")
  try:
    head = load_budget_head(head_path, dim=dim, vocab_size=vocab_size)
  except ValueError as e:
    raise ValueError(f"{KEY}.head: {e}") from None
  budget = float(section["budget"])
  if math.isnan(budget):
    raise ValueError(f"{KEY}.budget: expected a number of thinking tokens, got nan")
  newline = _one_id(tokenizer, section["newline"], "newline")
  proc = BudgetGuidance(newline_ids=(newline,), think_end_id=think_end)
  return proc, {"head": head, "budget": np.float32(budget)}


def describe(section: Any) -> dict[str, Any]:
  """The control's settings that matter for its method (for result files and tables)."""
  method = section["method"]
  keys = {"none": (), "cyclic_reflex": ("think_end", "reflection", "amplitude", "period", "shift"),
          "budget": ("think_end", "newline", "budget", "head")}.get(method, ())
  return {"method": method, **{k: section[k] for k in keys}}
