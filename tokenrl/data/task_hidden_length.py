"""Hidden reasoning length: '12+345=357;' -> '<count>150</count>' (PALACE's synthetic task).

A provider answers a visible prompt after a hidden reasoning trace of m tokens; an auditor sees
only the (prompt, answer) pair and estimates m (spec analysis-and-auditing.md §5(e)). Here the
trace is a known noisy function of the visible pair, with a different scale per domain:

  domain  visible pair            feature k                  m* = slope·k + base
  math    '12+345=' / '357'       digits of the sum          40·k + 30   (scratchpad addition:
                                                                          one block per column)
  code    'sort 3142=' / '1234'   digits to sort             15·k + 60   (a sorting routine)

  m = max(1, round(m*·(1 + ε))),   ε ~ U[−noise, +noise] per example (noise 10% by default)

so the best possible estimator predicts m* and still has RE up to noise/(1−noise). The
estimator prompt is the visible pair and ';' ('12+345=357;'), preceded by the domain and ':'
('math:12+345=357;') when the tiers say tag:1: that is how a routed estimator is conditioned on
its domain (tokenrl/audit/palace.py puts the router's choice there at audit time). The answer is
'<count>m</count>'; the verifier is 1[RE ≤ 0.1] (`tokenrl.data.palace.count_threshold_reward`),
so evaluation accuracy is acc@0.1.

Tiers: 'math:1-4,code:3-8' = pick a domain entry uniformly; math operands get a digit count
uniform in [lo, hi] each, code sorts [lo, hi] digits. Extra entries: 'tag:1' (prepend the domain
tag; default 0), 'noise:10' (ε's half-width in percent; default 10). The train/test partition
hashes the untagged prompt, so tag:0 and tag:1 runs with one seed draw the same examples with the
same counts (a routed and a shared estimator are compared on identical data).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tokenrl.data import task_common
from tokenrl.data.palace import format_count

NAME = "hidden_length"
DEFAULT_TIERS = "math:1-4,code:3-8"
DOMAINS = ("math", "code")
# domain -> (slope: hidden tokens per unit of the feature k, base: fixed overhead tokens).
LENGTH_MODEL = {"math": (40, 30), "code": (15, 60)}
DEFAULT_NOISE_PERCENT = 10


@dataclasses.dataclass(frozen=True)
class Tiers:
  """Parsed tiers: domain entries [(domain, lo, hi)], whether prompts carry the domain tag,
  and the noise half-width as a fraction."""
  domains: tuple[tuple[str, int, int], ...]
  tag: bool
  noise: float


def parse(tiers: str) -> Tiers:
  """'math:1-4,code:3-8,tag:1,noise:10' -> Tiers; ValueError naming the bad entry."""
  entries = task_common.parse_tiers(
      tiers, allowed={"math": (1, 9), "code": (1, 12), "tag": (0, 1), "noise": (0, 50)})
  domains, tag, noise = [], 0, DEFAULT_NOISE_PERCENT
  for key, lo, hi in entries:
    if key in DOMAINS:
      domains.append((key, lo, hi))
      continue
    if lo != hi:
      raise ValueError(f"tiers: entry '{key}:{lo}-{hi}' takes one value, e.g. '{key}:{lo}'")
    tag, noise = (lo, noise) if key == "tag" else (tag, lo)
  if not domains:
    raise ValueError(f"tiers: {tiers!r} has no domain entry; give at least one of "
                     f"{DOMAINS}, e.g. '{DEFAULT_TIERS}'")
  return Tiers(tuple(domains), bool(tag), noise / 100.0)


def expected_length(domain: str, k: int) -> int:
  """m* = slope·k + base of `domain` (the noiseless hidden length), e.g. ('math', 3) -> 150."""
  if domain not in LENGTH_MODEL:
    raise ValueError(f"domain: expected one of {DOMAINS}, got {domain!r}")
  slope, base = LENGTH_MODEL[domain]
  return slope * int(k) + base


def hidden_length(domain: str, k: int, eps: float = 0.0) -> int:
  """m = max(1, round(m*·(1 + ε))): ('math', 3, 0.1) -> 165, ('code', 4, -0.1) -> 108."""
  return max(1, int(round(expected_length(domain, k) * (1.0 + eps))))


def estimator_prompt(visible_prompt: str, visible_answer: str, domain: str | None = None) -> str:
  """What the estimator reads: '12+345=' + '357' -> '12+345=357;' ('math:12+345=357;' with a
  domain tag)."""
  return (f"{domain}:" if domain else "") + f"{visible_prompt}{visible_answer};"


def make_examples(split: str, n: int, seed: int, *, tiers: str = DEFAULT_TIERS,
                  test_fraction: float = task_common.DEFAULT_TEST_FRACTION,
                  unique: bool = False) -> list[dict[str, Any]]:
  """n hidden-length problems of `split` ('train' | 'test').

  Returns:
    [{'prompt': '12+345=357;', 'answer': '<count>154</count>', 'task': 'hidden_length',
      'domain': 'math', 'count': 154, 'expected': 150, 'feature': 3,
      'visible_prompt': '12+345=', 'visible_answer': '357'}].
  """
  t = parse(tiers)

  def draw(rng: np.random.Generator) -> dict[str, Any]:
    domain, lo, hi = t.domains[int(rng.integers(len(t.domains)))]
    if domain == "math":
      a = task_common.uniform_int_with_digits(rng, int(rng.integers(lo, hi + 1)))
      b = task_common.uniform_int_with_digits(rng, int(rng.integers(lo, hi + 1)))
      vp, va = f"{a}+{b}=", str(a + b)
      k = len(va)                          # scratchpad columns, the final carry included
    else:
      digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(lo, hi + 1)))]
      vp, va = "sort " + "".join(map(str, digits)) + "=", "".join(map(str, sorted(digits)))
      k = len(digits)
    eps = float(rng.uniform(-t.noise, t.noise))
    m = hidden_length(domain, k, eps)
    # The split hash sees the untagged prompt (see the module docstring); the tag goes on after.
    return {"prompt": estimator_prompt(vp, va), "answer": format_count(m), "task": NAME,
            "domain": domain, "count": m, "expected": expected_length(domain, k), "feature": k,
            "visible_prompt": vp, "visible_answer": va}

  out = task_common.sample_split(draw, task=NAME, split=split, n=n, seed=seed,
                                 test_fraction=test_fraction, unique=unique)
  if t.tag:
    for ex in out:
      ex["prompt"] = estimator_prompt(ex["visible_prompt"], ex["visible_answer"], ex["domain"])
  return out
