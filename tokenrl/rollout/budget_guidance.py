"""Budget guidance (Li et al., spec decoding-and-test-time §9) as a sampler logit processor.

    proc = BudgetGuidance(newline_ids=(id('\\n'),), think_end_id=id('#'))
    out = sample(params, prompts, config=cfg, rng=key, max_new_tokens=T, logit_processor=proc,
                 processor_state={'head': head_params, 'budget': np.full([B·G], 40, np.float32)})

At a guidance step (the first token of a new line while the row is thinking: t = 0 or the last
token is a newline id, and no `think_end_id` yet) the step's distribution π becomes
π ⊙ g / Σ, with, per candidate v and remaining budget b = max(budget − t, 1) tokens,

    g_v = P(L_rem ≤ b | v) = GammaCDF(log(b + 1); α_v, λ_v) = gammainc(α_v, λ_v·log(b + 1))

(α, λ) from `tokenrl.models.budget_head` on the step's hidden state. g_v = 0 unless λ_v ≥ 10,
α_v > 1 and exp((α_v − 1)/λ_v) − 1 ≥ 0.9 (the decoded Gamma mode is at least ~one token); when
every g_v is 0 the row takes the argmax (g = one-hot). Other steps are unchanged.

Deliberate change from the reference: it applies g to softmax(raw logits) and skips the
temperature and top-p at guidance steps; here g multiplies the tempered distribution and top-k /
top-p still follow, so one law (temperature → guidance → filters) holds at every step and the
returned log-probs are those of the distribution actually sampled. At temperature 1 without
filters the two agree. A budget of +inf or <= 0 is plain sampling (the row is unguided), and so
is any budget when every candidate has the same valid law.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from tokenrl.models.budget_head import gamma_params
from tokenrl.rollout.controls import thinking


def guidance_weights(alpha: jax.Array, rate: jax.Array, budget: jax.Array, logits: jax.Array, *,
                     min_rate: float = 10.0, min_alpha: float = 1.0,
                     min_mode: float = 0.9) -> jax.Array:
  """g f32 [N,V] (unnormalised; scale does not matter) from (α, λ) [N,V], budget [N] (tokens
  left, >= 1) and the step's logits [N,V] (the all-masked fallback's argmax)."""
  x = (rate * jnp.log(budget.astype(jnp.float32) + 1.0)[:, None])
  g = jax.scipy.special.gammainc(alpha, x)
  valid = (rate >= min_rate) & (alpha > min_alpha) & (jnp.expm1((alpha - 1.0) / rate) >= min_mode)
  g = jnp.where(valid, g, 0.0)
  fallback = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=g.dtype)
  return jnp.where(jnp.any(g > 0, axis=-1, keepdims=True), g, fallback)


def guidance_steps(tokens: jax.Array, step: jax.Array, newline_ids: tuple[int, ...],
                   think_end_id: int | None) -> jax.Array:
  """bool [N]: token `step` is the first of a line (step 0, or the previous token a newline)
  and the row has not ended its thought."""
  prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(step - 1, 0), axis=1, keepdims=False)
  new_line = (step == 0) | jnp.isin(prev, jnp.asarray(newline_ids, jnp.int32))
  return new_line & thinking(tokens, step, think_end_id)


@dataclasses.dataclass(frozen=True)
class BudgetGuidance:
  """The processor; `processor_state` = {'head': budget-head params, 'budget': f32 [N] or []}
  (tokens of thinking allowed from the first completion token; <= 0 or +inf: unguided)."""

  newline_ids: tuple[int, ...]
  think_end_id: int | None = None
  min_rate: float = 10.0
  min_alpha: float = 1.0
  min_mode: float = 0.9
  every_step: bool = False  # guide every thinking token, not only the first of each line

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    if ctx.hidden is None or not isinstance(ctx.aux, dict) or "head" not in ctx.aux:
      raise ValueError("BudgetGuidance needs sample(..., processor_state={'head': params, "
                       "'budget': tokens}) and a sampler that passes hidden states")
    n = logits.shape[0]
    budget0 = jnp.broadcast_to(jnp.asarray(ctx.aux["budget"], jnp.float32), (n,))
    budget = jnp.maximum(budget0 - ctx.step.astype(jnp.float32), 1.0)
    if self.every_step:
      on = thinking(ctx.tokens, ctx.step, self.think_end_id)
    else:
      on = guidance_steps(ctx.tokens, ctx.step, self.newline_ids, self.think_end_id)
    # No budget (<= 0) or an infinite one: the row is unguided (exactly plain sampling; the
    # validity mask would otherwise still remove tokens whose law it rejects).
    on &= (budget0 > 0) & jnp.isfinite(budget0)
    alpha, rate = gamma_params(ctx.aux["head"], ctx.hidden)
    g = guidance_weights(alpha, rate, budget, logits, min_rate=self.min_rate,
                         min_alpha=self.min_alpha, min_mode=self.min_mode)
    # log g: -inf where g = 0 (that token cannot be drawn), 0 where g = 1 (an infinite budget
    # leaves the logits bitwise unchanged).
    guided = logits + jnp.log(g)
    return jnp.where(on[:, None], guided, logits)
