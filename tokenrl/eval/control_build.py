"""The sampler logit control named by a `sampler.control` config section, ready for `sample`.

    proc, state = build_control(cfg.sampler.control, tokenizer, dim=model.dim,
                                vocab_size=model.vocab_size)
    out = sample(params, prompts, ..., logit_processor=proc, processor_state=state)

method 'none' gives (None, None): plain sampling. 'cyclic_reflex' gives a `CyclicReflex` and no
state (its knobs are static). 'budget' gives a `BudgetGuidance` and the state
{'head': the budget-head params (w_* [D,V], b_* [V]), 'budget': f32 [] thinking tokens}, which
`sample` broadcasts to every row (a new budget does not recompile the decode loop).

The evaluation-only methods 'cntp' and 'soft_thinking' are decoders, not logit processors:
`build_control` gives them (None, None) and `build_decoder` the decoder, a callable with
`sample`'s keywords that `tokenrl.eval.suite.collect` (sampler=) and `tokenrl sample` call:

    decoder = build_decoder(cfg.sampler.control, tokenizer, config=model)  # None: use sample
    out = decoder(params, prompts, rng=key, max_new_tokens=64, temperature=0.8, num_samples=4)
    decoder.last_info        # CNTPStats / SoftThinkInfo of that call

Strings become token ids with `token_ids_of`: each one must be a single token of this
tokenizer, and every error names the config key it came from (e.g.
'sampler.control.reflection'), so a command-line override can be fixed from the message alone.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from tokenrl.config import CONTROL_METHODS, EVAL_ONLY_CONTROLS
from tokenrl.models.budget_head import load_budget_head
from tokenrl.rollout.budget_guidance import BudgetGuidance
from tokenrl.rollout.cntp import cntp_sample
from tokenrl.rollout.controls import CyclicReflex, token_ids_of
from tokenrl.rollout.soft_thinking import soft_think_sample

KEY = "sampler.control"


def _ids(tokenizer: Any, strings: Sequence[str], field: str) -> tuple[int, ...]:
  """`token_ids_of` with every error naming sampler.control.<field> (a tokenizer's own error,
  e.g. a character outside a char vocabulary, included)."""
  what = f"{KEY}.{field}"
  try:
    return token_ids_of(tokenizer, strings, what=what)
  except ValueError as e:
    if str(e).startswith(what):
      raise
    raise ValueError(f"{what}: {e}") from None


def one_token_id(tokenizer: Any, text: str, field: str) -> int:
  """The single token id of `text`, the error naming sampler.control.<field>."""
  if not text:
    raise ValueError(f"{KEY}.{field}: expected a string that is one token, got ''")
  return _ids(tokenizer, [text], field)[0]


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
    that is missing or does not fit the policy. The decoders cntp / soft_thinking give
    (None, None): `build_decoder` builds them.
  """
  method = section["method"]
  if method not in CONTROL_METHODS:
    raise ValueError(f"{KEY}.method: expected one of {list(CONTROL_METHODS)}, got {method!r}")
  if method == "none" or method in EVAL_ONLY_CONTROLS:  # decoders: `build_decoder`
    return None, None
  # '' = no end-of-thinking token: the control acts on the whole completion.
  think_end = one_token_id(tokenizer, section["think_end"], "think_end") if section["think_end"] else None
  if method == "cyclic_reflex":
    # Not stripped: ' wait' and 'wait' are different BPE tokens, and the space is meant.
    words = [w for w in str(section["reflection"]).split(",") if w]
    if not words:
      raise ValueError(f"{KEY}.reflection: cyclic_reflex needs at least one reflection string "
                       f"(comma-separated, one token each), got {section['reflection']!r}")
    ids = _ids(tokenizer, words, "reflection")
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
  newline = one_token_id(tokenizer, section["newline"], "newline")
  mask = {}  # the validity mask's thresholds (a mapping without them: the reference's)
  for field in ("min_rate", "min_alpha", "min_mode"):
    if field in section:
      mask[field] = _finite(section, field)
      if mask[field] < 0:
        raise ValueError(f"{KEY}.{field}: expected >= 0 (0: off), got {mask[field]}")
  proc = BudgetGuidance(newline_ids=(newline,), think_end_id=think_end, **mask)
  return proc, {"head": head, "budget": np.float32(budget)}


def _int(section: Any, field: str, lo: int, hi: int | None = None) -> int:
  value = section[field]
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo
      or (hi is not None and value > hi)):
    allowed = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    raise ValueError(f"{KEY}.{field}: expected {allowed}, got {value!r}")
  return int(value)


_ESCAPES = {",": ",", "n": "\n", "t": "\t", "\\": "\\"}


def parse_punctuation(text: str) -> tuple[str, ...]:
  r"""The strings of sampler.control.punctuation: comma-separated, with the escapes '\,' (a
  comma), '\n' (newline), '\t' (tab) and '\\' (a backslash); real newline/tab characters are
  taken as they are. '' = no string (CNTP trials then end only at a stop token or the cap). The
  default '.,\,,\n,?,!,:,;,)' is the reference's set (`CNTP_PUNCTUATION`) less ']' and '}',
  which the built-in char tokenizer lacks (add them for a BPE tokenizer: ',],}'). An empty item
  (',,' or a trailing ',') or an unknown escape is a ValueError naming the key."""
  field = f"{KEY}.punctuation"
  if not isinstance(text, str):
    raise ValueError(f"{field}: expected a comma-separated string, got {text!r}")
  if text == "":
    return ()
  items, cur, i = [], [], 0
  while i < len(text):
    ch = text[i]
    if ch == "\\":
      nxt = text[i + 1] if i + 1 < len(text) else ""
      if nxt not in _ESCAPES:
        raise ValueError(f"{field}: unknown escape {ch + nxt!r} in {text!r}; use \\, (comma), "
                         "\\n (newline), \\t (tab) or \\\\ (backslash)")
      cur.append(_ESCAPES[nxt])
      i += 2
      continue
    if ch == ",":
      items.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
    i += 1
  items.append("".join(cur))
  if any(item == "" for item in items):
    raise ValueError(f"{field}: empty item in {text!r} (write a comma as \\, : e.g. '.,\\,,?')")
  return tuple(items)


class ControlDecoder:
  """An evaluation-only decoder (cntp / soft_thinking) with `collect`'s sampler signature:

      decoder(params, prompts, *, rng, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
              num_samples=1, stop_tokens=None, logit_processor=None, processor_state=None,
              prompt_mask=None) -> Rollout

  A logit processor cannot be combined with it (a ValueError). `last_info` is the CNTPStats /
  SoftThinkInfo of the last call (None before any), `infos` every call's, in order.
  """

  def __init__(self, method: str, config: Any, settings: dict[str, Any]):
    self.method, self.config, self.settings = method, config, settings
    self.infos: list[Any] = []

  @property
  def last_info(self) -> Any:
    return self.infos[-1] if self.infos else None

  def __call__(self, params: Any, prompts: Any, *, rng: Any, max_new_tokens: int,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
               logit_processor: Any = None, processor_state: Any = None,
               prompt_mask: Any = None) -> Any:
    if logit_processor is not None or processor_state is not None:
      raise ValueError(f"{KEY}.method={self.method!r} is a decoder of its own: it takes no logit "
                       "processor (a method's processor or another control)")
    common = dict(config=self.config, rng=rng, max_new_tokens=max_new_tokens,
                  num_samples=num_samples, stop_tokens=stop_tokens, prompt_mask=prompt_mask)
    if self.method == "cntp":
      # temperature 0 is greedy; every trial of a branch point is then the same one.
      out, info = cntp_sample(params, prompts, temperature=temperature, top_k=top_k, top_p=top_p,
                              **common, **self.settings)
    else:
      # The eval's temperature / top-k / top-p serve both the thought and the answer (the
      # reference's defaults 0.6 / 30 / 0.95 are not used: one law knob per eval). Greedy
      # (temperature <= 0): greedy thinking (max_topk 1: the argmax embedding; the thinking
      # temperature 1 only sets the entropy Cold Stop reads) and a greedy answer.
      greedy = temperature <= 0
      settings = dict(self.settings, max_topk=1) if greedy else self.settings
      out, info = soft_think_sample(
          params, prompts, temperature=1.0 if greedy else temperature, top_k=top_k, top_p=top_p,
          after_thinking_temperature=0.0 if greedy else temperature, after_thinking_top_k=top_k,
          after_thinking_top_p=top_p, **common, **settings)
    self.infos.append(info)
    return out


def build_decoder(section: Any, tokenizer: Any, *, config: Any) -> ControlDecoder | None:
  """The evaluation-only decoder of a sampler.control section; None for 'none' and the logit
  processors (`build_control`), i.e. plain `sample`.

  Args:
    section: the ConfigDict of `tokenrl.config.control_config()` (or a mapping with its keys).
    tokenizer: the policy's tokenizer (`encode(text, add_special_tokens=False)`).
    config: the policy's ModelConfig (the decoders run the model themselves).

  cntp reads punctuation (`parse_punctuation`; one token each), max_trials, h_lo, h_hi,
  max_trial_tokens; soft_thinking reads think_end (required), max_topk, min_p,
  cold_stop_entropy, cold_stop_length (`soft_think_sample`'s early_stopping_* thresholds).

  Raises:
    ValueError naming the offending key (a string that is not one token, a value out of range).
  """
  method = section["method"]
  if method not in CONTROL_METHODS:
    raise ValueError(f"{KEY}.method: expected one of {list(CONTROL_METHODS)}, got {method!r}")
  if method not in EVAL_ONLY_CONTROLS:
    return None
  if method == "cntp":
    strings = parse_punctuation(section["punctuation"])
    punct = _ids(tokenizer, strings, "punctuation") if strings else ()
    h_lo, h_hi = _finite(section, "h_lo"), _finite(section, "h_hi")
    if not h_hi > h_lo:
      raise ValueError(f"{KEY}.h_hi: expected more nats than {KEY}.h_lo={h_lo}, got {h_hi}")
    settings = dict(punctuation=punct, max_trials=_int(section, "max_trials", 1),
                    h_lo=h_lo, h_hi=h_hi, max_trial_tokens=_int(section, "max_trial_tokens", 1))
    return ControlDecoder(method, config, settings)
  if not section["think_end"]:
    raise ValueError(f"{KEY}.think_end: soft_thinking needs the string that closes the thought "
                     "(one token); got ''")
  min_p = _finite(section, "min_p")
  if not 0.0 <= min_p < 1.0:
    raise ValueError(f"{KEY}.min_p: expected a number in [0, 1) (0 = off), got {min_p}")
  tau = _finite(section, "cold_stop_entropy")
  if tau < 0:
    raise ValueError(f"{KEY}.cold_stop_entropy: expected nats >= 0 (0 = Cold Stop off), got {tau}")
  settings = dict(think_end_id=one_token_id(tokenizer, section["think_end"], "think_end"),
                  max_topk=_int(section, "max_topk", 1, int(config.vocab_size)), min_p=min_p,
                  early_stopping_entropy_threshold=tau,
                  early_stopping_length_threshold=_int(section, "cold_stop_length", 1))
  return ControlDecoder(method, config, settings)


def describe(section: Any) -> dict[str, Any]:
  """The control's settings that matter for its method (for result files and tables)."""
  method = section["method"]
  keys = {"none": (), "cyclic_reflex": ("think_end", "reflection", "amplitude", "period", "shift"),
          "budget": ("think_end", "newline", "budget", "head", "min_rate", "min_alpha",
                     "min_mode"),
          "cntp": ("punctuation", "max_trials", "h_lo", "h_hi", "max_trial_tokens"),
          "soft_thinking": ("think_end", "max_topk", "min_p", "cold_stop_entropy",
                            "cold_stop_length")}.get(method, ())
  return {"method": method, **{k: section[k] for k in keys if k in section}}
