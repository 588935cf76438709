"""MEET: control tokens tuned by parameter-efficient tuning, then full fine-tuning (spec §9).

"Parameter-Efficient Tuning Helps Language Model Alignment" (Xue, Wang, Ji; arXiv 2310.00819).
[abstract-level]: only the abstract was available; the loss is plain controlled LM
cross-entropy, the numbers of soft tokens and the learning rates are free knobs.

Data (x, y, c) with a control label c ∈ {0 = good, 1 = bad} (chosen → good, rejected → bad).
Prompt tuning: E ∈ R^{C × n_c × D}, the n_c soft tokens of control c prepended to the prompt:
input row = [pad…, E_c,1 … E_c,n_c, x, y]. The loss (both stages) is

  L = −Σ_{n,t} m[n,t] · log p(y_t | [E_c; x; y_<t]) / Σ_{n,t} m[n,t]

over the completion tokens (m = completion mask). Stage 1 trains E (or a per-control LoRA
ΔW_c) with the LLM θ0 frozen; stage 2 trains θ and the controls from the stage-1 controls.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def soft_prompt_embeddings(embed: jax.Array, tokens: jax.Array, slots: jax.Array,
                           soft: jax.Array, control: jax.Array) -> jax.Array:
  """Input embeddings [N,S,D] with the control's soft tokens at the control slots.

  x[n,s] = soft[control[n], slots[n,s]] where slots[n,s] >= 0, else embed[tokens[n,s]].

  Args:
    embed: [V,D] the model's embedding table. tokens: int [N,S] (any id at control slots).
    slots: int [N,S], j in [0, n_c) at the j-th control position, -1 elsewhere.
    soft: [C,n_c,D] soft control tokens. control: int [N] control id of each row, in [0, C).
  """
  if embed.ndim != 2 or soft.ndim != 3 or soft.shape[2] != embed.shape[1]:
    raise ValueError(f"embed [V,D] and soft [C,n_c,D] must share D, got {embed.shape} and "
                     f"{soft.shape}")
  if tokens.ndim != 2 or slots.shape != tokens.shape:
    raise ValueError(f"tokens and slots must both be [N,S], got {tokens.shape} and {slots.shape}")
  if control.shape != tokens.shape[:1]:
    raise ValueError(f"control: expected [N] = {tokens.shape[:1]}, got {control.shape}")
  rows = soft[control]                                            # [N,n_c,D]
  picked = jnp.take_along_axis(rows, jnp.maximum(slots, 0)[..., None], axis=1)  # [N,S,D]
  return jnp.where(slots[..., None] >= 0, picked.astype(embed.dtype), embed[tokens])


def controlled_nll(logp: jax.Array, mask: jax.Array,
                   denominator: jax.Array | float | None = None) -> jax.Array:
  """L = −Σ m·logp / denominator (default Σ m, at least 1): the controlled CE of both stages.

  logp, mask: [N,T] completion log-probs log p(y_t | c, x, y_<t) and the completion mask.
  """
  if logp.shape != mask.shape or logp.ndim != 2:
    raise ValueError(f"logp and mask must both be [N,T], got {logp.shape} and {mask.shape}")
  m = mask.astype(jnp.float32)
  denom = jnp.maximum(m.sum(), 1.0) if denominator is None else denominator
  return -(jnp.where(m > 0, logp, 0.0)).sum() / denom


def control_gap(correct: jax.Array, control: jax.Array, good: int = 0, bad: int = 1):
  """(acc_good, acc_bad, acc_good − acc_bad): held-out accuracy per control and the gap.

  correct: [N] in [0,1] (the verifier on the generation conditioned on control[n]).
  control: int [N]. Rows of other controls are ignored; an empty control gives accuracy 0.
  """
  if correct.shape != control.shape or correct.ndim != 1:
    raise ValueError(f"correct and control must both be [N], got {correct.shape} and "
                     f"{control.shape}")
  def acc(c):
    sel = (control == c).astype(jnp.float32)
    return (correct * sel).sum() / jnp.maximum(sel.sum(), 1.0)
  a_good, a_bad = acc(good), acc(bad)
  return a_good, a_bad, a_good - a_bad


MEET_FUNCTIONS: dict[str, Callable] = {
    "soft_prompt_embeddings": soft_prompt_embeddings,
    "controlled_nll": controlled_nll,
    "control_gap": control_gap,
}
