"""Test-time logit controls (spec decoding-and-test-time §9, §10, §14) as sampler processors.

Each control is a frozen (hashable) dataclass `proc(logits [N,V], ctx: DecodeContext) -> logits`
for `sample(..., logit_processor=proc, processor_state=...)`: it runs after the temperature
division and before top-k/top-p, so the log-prob `sample` returns is that of the distribution
the token was actually drawn from, and a rollout made under a control is on-policy for that
controlled law (not for the plain policy: mark such rollouts off-policy if they train the plain
policy). Traced inputs (head params, budgets) travel in `processor_state`, so new values never
recompile the decode loop; the static fields are token ids and knobs.

    proc = CyclicReflex(reflection_ids=(ids of '?',), think_end_id=id('#'), amplitude=5.0,
                        period=1200)
    out = sample(params, prompts, config=cfg, rng=key, max_new_tokens=T, logit_processor=proc)

`compose(a, b)` chains controls (a first).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def triangle_bias(t: Any, amplitude: float, period: float, shift: float = 0.0) -> jax.Array:
  """CyclicReflex's bias b(t) (spec §14b): a triangle wave of period T starting at 0, rising.

  φ = ((t + s·T) mod T) / T; b = 4Aφ on [0, .25], A − 4A(φ − .25) on (.25, .75],
  −A + 4A(φ − .75) after. t counts generated tokens (the prompt excluded). f32, any shape.
  """
  t = jnp.asarray(t, jnp.float32)
  phase = jnp.mod(t + shift * period, period) / period
  a = jnp.float32(amplitude)
  return jnp.where(phase <= 0.25, 4 * a * phase,
                   jnp.where(phase <= 0.75, a - 4 * a * (phase - 0.25), -a + 4 * a * (phase - 0.75)))


def thinking(tokens: jax.Array, step: jax.Array, think_end_id: int | None) -> jax.Array:
  """bool [N]: the row has not yet emitted `think_end_id` among its first `step` tokens."""
  if think_end_id is None:
    return jnp.ones(tokens.shape[:1], bool)
  written = jnp.arange(tokens.shape[1]) < step
  return ~jnp.any((tokens == think_end_id) & written, axis=1)


@dataclasses.dataclass(frozen=True)
class CyclicReflex:
  """Add b(t) (`triangle_bias`) to the raw logits of the reflection tokens while thinking.

  reflection_ids: the token ids of the reflection words (the reference: the exact strings
    'wait', 'Wait', 'but', 'But', 'Alternatively'; space-prefixed BPE variants are other ids
    and are biased only if listed). think_end_id: after this token the logits are unchanged
    (None: always on). windows: optional ((start, end), ...) ranges of t in which to apply it.
  The bias is defined on raw logits (before the temperature): the processor adds b/temperature
  to the scaled logits, which is the same distribution. amplitude 0 is the identity.
  """

  reflection_ids: tuple[int, ...]
  think_end_id: int | None = None
  amplitude: float = 3.0
  period: float = 100.0
  shift: float = 0.0
  windows: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    if self.period <= 0:
      raise ValueError(f"CyclicReflex period must be > 0 tokens, got {self.period}")
    if not self.reflection_ids:
      raise ValueError("CyclicReflex needs at least one reflection token id")

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    t = ctx.step
    bias = triangle_bias(t, self.amplitude, self.period, self.shift)
    on = thinking(ctx.tokens, t, self.think_end_id)  # [N]
    if self.windows:
      on &= jnp.any(jnp.asarray([(t >= a) & (t < b) for a, b in self.windows]))
    temperature = 1.0 if ctx.temperature is None else ctx.temperature
    ids = jnp.asarray(self.reflection_ids, jnp.int32)
    add = jnp.where(on, bias / temperature, 0.0)[:, None]  # [N,1]
    return logits.at[:, ids].add(jnp.broadcast_to(add, (logits.shape[0], ids.shape[0])))


@dataclasses.dataclass(frozen=True)
class Compose:
  """Apply `processors` in order. With `split_state`, `processor_state` is a tuple holding one
  state per processor and each sees its own as ctx.aux (a method's processor and a control then
  keep their states apart); otherwise every processor sees the same aux."""

  processors: tuple[Any, ...]
  split_state: bool = False

  def __call__(self, logits: jax.Array, ctx: Any) -> jax.Array:
    for i, proc in enumerate(self.processors):
      sub = dataclasses.replace(ctx, aux=ctx.aux[i]) if self.split_state else ctx
      logits = proc(logits, sub)
    return logits


def compose(*processors: Any) -> Any:
  """One processor from several sharing one state (None entries dropped); None when none left."""
  kept = tuple(p for p in processors if p is not None)
  if not kept:
    return None
  return kept[0] if len(kept) == 1 else Compose(kept)


def compose_with_states(*pairs: tuple[Any, Any]) -> tuple[Any, Any]:
  """(processor, processor_state) from (processor, state) pairs, each processor reading its own
  state; pairs with a None processor are dropped."""
  kept = [(p, s) for p, s in pairs if p is not None]
  if not kept:
    return None, None
  if len(kept) == 1:
    return kept[0]
  return Compose(tuple(p for p, _ in kept), split_state=True), tuple(s for _, s in kept)


def cntp_num_trials(entropy: Any, *, max_trials: int = 10, h_lo: float = 0.01,
                    h_hi: float = 1.5) -> jax.Array:
  """CNTP trial count (spec §10b step 2): N = int(1 + (N_max − 1)·clip((H − H_lo)/(H_hi − H_lo),
  0, 1)), truncated toward zero. entropy in nats, any shape -> int32 of that shape."""
  if h_hi <= h_lo:
    raise ValueError(f"CNTP needs h_hi > h_lo, got h_lo={h_lo}, h_hi={h_hi}")
  frac = jnp.clip((jnp.asarray(entropy, jnp.float32) - h_lo) / (h_hi - h_lo), 0.0, 1.0)
  # + 1e-4 before truncating: f32 rounding (XLA may divide by multiplying with a reciprocal)
  # puts an exact integer like 1 + 9·1 a hair below it, and the reference's float64 gives N(1.5)
  # = 10. Only counts within 1e-4 of an integer move, where f32 cannot tell anyway.
  return jnp.floor(1.0 + (max_trials - 1) * frac + 1e-4).astype(jnp.int32)


def token_ids_of(tokenizer: Any, strings: Sequence[str], *, what: str) -> tuple[int, ...]:
  """The single token id of each string (the reference's token-to-id lookup); a string that is
  not one token is an error naming it (a multi-token word cannot be biased as one logit)."""
  ids = []
  for s in strings:
    enc = list(tokenizer.encode(s, add_special_tokens=False))
    if len(enc) != 1:
      raise ValueError(f"{what}: {s!r} is {len(enc)} tokens under this tokenizer ({enc}); "
                       "name strings that are single tokens")
    ids.append(int(enc[0]))
  return tuple(dict.fromkeys(ids))

