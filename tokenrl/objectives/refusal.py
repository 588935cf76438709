"""Refusal tokens: calibrated refusals by thresholding the refusal token at inference (spec §10).

"A Simple Way to Calibrate Refusals in Large Language Models" (Jain et al.; reference code
neelsjain/refusal-tokens `coconot_eval/generate_for_eval_threshold*.py`, [code-verified]).
Training is plain SFT with a category token ([refuse] / [respond], or one per refusal type)
first in every response. At the first response position, with logits z [N,V]:

  p = softmax(z / τ_sm)                                 τ_sm: softmax temperature (default 1)
  single token:  refuse  iff  p_ref ≥ p_resp  (t = −1)   or   p_ref ≥ t  (t ∈ [0, 1])
  categories:    c* = argmax_{c ∈ cats} p_c, p* = max p_c, g = argmax_v p_v
                 emit c* if c* ∈ S and p* ≥ t;  [respond] if c* ∈ S and p* < t;  g if c* ∉ S
  logit bias δ:  z_ref += δ (the alternative knob: a threshold on the odds p_ref / p_resp).

The chosen token is forced (all other logits −1e9) and decoding continues unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

FORCED_OUT = -1e9  # logit of every non-forced token: exp underflows to exactly 0 in f32


def _check_logits(logits: jax.Array, ids: Sequence[int]) -> None:
  if logits.ndim != 2:
    raise ValueError(f"logits: expected [N,V], got shape {logits.shape}")
  v = logits.shape[1]
  bad = [i for i in ids if not 0 <= int(i) < v]
  if bad:
    raise ValueError(f"token ids {bad} are outside the vocabulary [0, {v})")


def refusal_decision(logits: jax.Array, *, refuse_id: int, respond_id: int,
                     threshold: float = -1.0, softmax_temperature: float = 1.0,
                     logit_bias: float = 0.0) -> jax.Array:
  """bool [N]: True = emit [refuse] (single-token rule of the module docstring).

  logits [N,V] at the first response position; threshold t = −1 compares p_ref ≥ p_resp,
  t ∈ [0,1] compares p_ref ≥ t; logit_bias δ is added to z_ref first (0 = the reference).
  """
  _check_logits(logits, (refuse_id, respond_id))
  if not (threshold == -1.0 or 0.0 <= threshold <= 1.0):
    raise ValueError(f"threshold: expected -1 or in [0, 1], got {threshold}")
  if not softmax_temperature > 0:
    raise ValueError(f"softmax_temperature: expected > 0, got {softmax_temperature}")
  z = logits.astype(jnp.float32).at[:, refuse_id].add(logit_bias)
  p = jax.nn.softmax(z / softmax_temperature, axis=-1)
  p_ref, p_resp = p[:, refuse_id], p[:, respond_id]
  return p_ref >= (p_resp if threshold == -1.0 else threshold)


def category_decision(logits: jax.Array, *, category_ids: Sequence[int],
                      controlled: Sequence[bool], respond_id: int, threshold: float,
                      softmax_temperature: float = 1.0) -> jax.Array:
  """int [N]: the token to emit under the category rule (module docstring).

  category_ids: the C category token ids; controlled: C flags (the set S under control);
  threshold t in [0, 1]. The reference script's τ = 2 quirk is not reproduced: τ_sm is used.
  """
  _check_logits(logits, tuple(category_ids) + (respond_id,))
  if len(controlled) != len(category_ids) or not category_ids:
    raise ValueError(f"controlled: expected {len(category_ids)} flags (one per category, >= 1), "
                     f"got {len(controlled)}")
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"threshold: expected in [0, 1], got {threshold}")
  if not softmax_temperature > 0:
    raise ValueError(f"softmax_temperature: expected > 0, got {softmax_temperature}")
  p = jax.nn.softmax(logits.astype(jnp.float32) / softmax_temperature, axis=-1)
  cats = jnp.asarray(category_ids, jnp.int32)
  p_cat = p[:, cats]                                                  # [N,C]
  best = jnp.argmax(p_cat, axis=-1)
  c_star, p_star = cats[best], jnp.max(p_cat, axis=-1)
  in_s = jnp.asarray(controlled, bool)[best]
  greedy = jnp.argmax(p, axis=-1).astype(jnp.int32)
  return jnp.where(in_s, jnp.where(p_star >= threshold, c_star, respond_id), greedy)


def force_tokens(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """logits [N,V] with every entry but tokens[n] set to −1e9 (a one-hot distribution)."""
  if tokens.shape != logits.shape[:1]:
    raise ValueError(f"tokens: expected [N] = {logits.shape[:1]}, got {tokens.shape}")
  hot = jnp.arange(logits.shape[1])[None, :] == tokens[:, None]
  return jnp.where(hot, logits, FORCED_OUT)


@dataclasses.dataclass(frozen=True)
class RefusalProcessor:
  """Sampler logit processor: at the first completion step force [refuse] or [respond] by
  `refusal_decision`; later steps pass through. Hashable (a static argument of the sampler).

  The sampler hands over logits already divided by its sampling temperature; use temperature 1
  or greedy (0) so p is the spec's softmax(z / τ_sm).
  """

  refuse_id: int
  respond_id: int
  threshold: float = -1.0
  softmax_temperature: float = 1.0
  logit_bias: float = 0.0

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    refuse = refusal_decision(logits, refuse_id=self.refuse_id, respond_id=self.respond_id,
                              threshold=self.threshold,
                              softmax_temperature=self.softmax_temperature,
                              logit_bias=self.logit_bias)
    forced = force_tokens(logits, jnp.where(refuse, self.refuse_id, self.respond_id))
    return jnp.where(ctx.step == 0, forced, logits)


@dataclasses.dataclass(frozen=True)
class CategoryProcessor:
  """Sampler logit processor of `category_decision` at the first completion step."""

  category_ids: tuple[int, ...]
  controlled: tuple[bool, ...]
  respond_id: int
  threshold: float
  softmax_temperature: float = 1.0

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    tok = category_decision(logits, category_ids=self.category_ids, controlled=self.controlled,
                            respond_id=self.respond_id, threshold=self.threshold,
                            softmax_temperature=self.softmax_temperature)
    return jnp.where(ctx.step == 0, force_tokens(logits, tok), logits)


REFUSAL_FUNCTIONS: dict[str, Callable] = {
    "refusal_decision": refusal_decision,
    "category_decision": category_decision,
    "force_tokens": force_tokens,
}
