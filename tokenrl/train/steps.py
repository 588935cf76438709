"""Jitted train steps: `TrainState`, SFT cross-entropy and the policy-gradient update.

Each step takes a state and a batch of arrays and returns `(state, metrics)`; the state is
donated. A minibatch is split into micro-batches whose gradients are summed under one
`lax.scan`; every micro-batch loss is divided by the denominator of the *whole* minibatch
(`loss_denominator`), so accumulation equals one big batch. A non-finite loss or gradient
skips the update (params and optimizer state unchanged) and is counted in the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from tokenrl.methods.base import LossContext, Method
# The completion forwards live in the methods layer (methods score with them too); re-exported
# here because the train steps and their callers use them as steps.*.
from tokenrl.methods.forward import completion_logprobs, make_hidden_fn, make_logprob_fn  # noqa: F401
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.objectives import token_logprobs


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array  # int32 [] optimizer updates applied
  params: Any
  opt_state: Any
  skipped: jax.Array  # int32 [] updates skipped for non-finite loss/gradients


def create_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    skipped=jnp.zeros((), jnp.int32))


def _split(batch: dict[str, jax.Array], micro: int) -> dict[str, jax.Array]:
  """[N,...] -> [N/micro, micro, ...] for every leaf; chunk c holds rows c, c + N/micro, ...

  Strided, not contiguous: with N sharded in contiguous blocks over the batch mesh axes, the
  micro axis keeps that sharding (when the axes divide `micro`), so every micro-batch is spread
  over all devices instead of living on one device while `lax.scan` steps through them.
  """
  n = jax.tree.leaves(batch)[0].shape[0]
  if n % micro:
    raise ValueError(f"batch of {n} sequences is not divisible by micro_batch_size {micro}")
  return jax.tree.map(lambda x: x.reshape(micro, n // micro, *x.shape[1:]).swapaxes(0, 1), batch)


def _accumulate(loss_fn: Callable, params: Any, batch: dict[str, jax.Array], micro: int):
  """Sum of grads and metrics of loss_fn(params, micro_batch) over micro-batches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  n = jax.tree.leaves(batch)[0].shape[0]
  if micro <= 0 or micro >= n:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads

  def body(acc, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    return jax.tree.map(jnp.add, acc, (loss, metrics, grads)), None

  chunks = _split(batch, micro)
  first = jax.tree.map(lambda x: x[0], chunks)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first))
  (loss, metrics), grads = zeros
  (loss, metrics, grads), _ = jax.lax.scan(body, (loss, metrics, grads), chunks)
  return loss, metrics, grads


def _apply(state: TrainState, tx: optax.GradientTransformation, loss, grads, metrics):
  """Optimizer update unless loss or gradients are non-finite (then skip and count)."""
  grad_norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, new_opt = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  state = TrainState(step=state.step + ok.astype(jnp.int32),
                     params=keep(new_params, state.params), opt_state=keep(new_opt, state.opt_state),
                     skipped=state.skipped + (~ok).astype(jnp.int32))
  metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "skipped_updates": state.skipped}
  return state, metrics


def make_sft_step(tx: optax.GradientTransformation, *, config: ModelConfig, micro_batch_size: int = 0,
                  remat: bool = False, jit: bool = True):
  """step(state, batch) with batch = tokens [N,S], segment_ids [N,S], loss_mask [N,S].

  loss = −Σ m·log π(x_{s+1} | x_{≤s}) / Σ m over the whole batch (m = loss_mask on targets).
  jit=False returns the plain function (for `tokenrl.train.sharded.shard_step`).
  """

  def loss_fn(params, mb, denom):
    logits, _ = transformer.forward(params, mb["tokens"][:, :-1], config=config,
                                    segment_ids=mb["segment_ids"][:, :-1], remat=remat)
    logp, _ = token_logprobs(logits, mb["tokens"][:, 1:])
    m = mb["loss_mask"][:, 1:].astype(jnp.float32)
    nll = -(logp * m).sum()
    correct = ((jnp.argmax(logits, -1) == mb["tokens"][:, 1:]) * m).sum()
    return nll / denom, {"token_accuracy": correct / denom}

  def step(state: TrainState, batch: dict[str, jax.Array]):
    denom = jnp.maximum(batch["loss_mask"][:, 1:].sum().astype(jnp.float32), 1.0)
    loss, metrics, grads = _accumulate(lambda p, mb: loss_fn(p, mb, denom), state.params, batch,
                                       micro_batch_size)
    return _apply(state, tx, loss, grads, metrics)

  return jax.jit(step, donate_argnums=0) if jit else step


def make_pg_step(tx: optax.GradientTransformation, *, config: ModelConfig, prompt_len: int,
                 loss_options: dict[str, Any], temperature: float, micro_batch_size: int = 0,
                 remat: bool = False, jit: bool = True, method: Method | None = None,
                 section: dict[str, Any] | None = None, options: dict[str, Any] | None = None):
  """step(state, batch) for the policy-gradient family; the loss is `method.loss_fn`.

  batch: tokens/segment_ids [N,P+T]; mask, sampler_logp, token_weights [N,T]; advantages [N] or
  [N,T]; optional old_logp / ref_logp [N,T] and the method's extra arrays (StepData.extra).
  `loss_options` are the keyword options of `policy_loss` (objectives.presets.POLICY_LOSS_OPTIONS);
  `method` defaults to the plain GRPO-family Method, `section` is its config section as a dict,
  `options` the resolved `rl` options (LossContext.options).
  jit=False returns the plain function (for `tokenrl.train.sharded.shard_step`).
  """
  method = method or Method()
  base_ctx = LossContext(model=config, prompt_len=prompt_len, temperature=temperature,
                         remat=remat, loss_options=dict(loss_options), section=section,
                         options=dict(options or {}))

  def step(state: TrainState, batch: dict[str, jax.Array]):
    n = batch["mask"].shape[0]
    lctx = dataclasses.replace(base_ctx, denom=method.denominator(batch, base_ctx))

    def loss_fn(params, mb):
      loss, metrics = method.loss_fn(params, mb, lctx)
      # Metrics are means over this micro-batch; weight them by its share so sums are means.
      share = mb["mask"].shape[0] / n
      return loss, jax.tree.map(lambda v: v * share, metrics)

    loss, metrics, grads = _accumulate(loss_fn, state.params, batch, micro_batch_size)
    return _apply(state, tx, loss, grads, metrics)

  return jax.jit(step, donate_argnums=0) if jit else step
