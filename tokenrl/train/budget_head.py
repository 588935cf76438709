"""Fit budget guidance's remaining-length head on the policy's own traces (spec §9b, training).

    head, info = fit_budget_head(params, config, prompt_ids, think_end_id=id('#'),
                                 stop_tokens=(eos,), max_new_tokens=112, rng=key)

1. Sample `num_samples` completions per prompt from the frozen policy (`tokenrl.rollout.sample`
   at `temperature`): the traces the head will be asked about at test time.
2. Labels: L_rem at every thinking token (`remaining_think_lengths`: M − j, 1 at the last one);
   rows that never write `think_end_id` carry no label (their remaining length is unknown).
3. Teacher-force prompt + completion once through the frozen policy: hidden [M,T,D] f32 at the
   position that predicts completion token j (as the sampler hands the processor).
4. Adam on the mean Gamma NLL of z = log(L_rem + 1) (`budget_head_loss`), minibatches of rows;
   the reference trains on a fixed corpus with lr 1e-4 for one epoch; this head is linear and
   the corpus small, so a larger lr and several passes.

`info` reports the held-out NLL before/after and the median absolute error of the predicted
median remaining length (tokens) on held-out thinking positions: a number a user can read.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl.models import budget_head as bh
from tokenrl.models import transformer
from tokenrl.models.config import ModelConfig
from tokenrl.rollout import sample


@functools.partial(jax.jit, static_argnames=("config",))
def _completion_hidden(params, prompt_tokens, prompt_mask, tokens, *, config: ModelConfig):
  """hidden f32 [N,T,D]: row n, column j = the state that predicts completion token j."""
  p = prompt_tokens.shape[1]
  full = jnp.concatenate([prompt_tokens, tokens], axis=1)[:, :-1]
  seg = jnp.concatenate([prompt_mask, jnp.ones_like(tokens)], axis=1)[:, :-1]
  hidden, _ = transformer.forward(params, full, config=config, segment_ids=seg, return_hidden=True)
  return hidden[:, p - 1:].astype(jnp.float32)


def collect(params: Any, config: ModelConfig, prompt_ids: Sequence[Sequence[int]], *,
            think_end_id: int, stop_tokens: Sequence[int], max_new_tokens: int,
            num_samples: int = 8, temperature: float = 1.0, batch_size: int = 64,
            rng: jax.Array) -> dict[str, np.ndarray]:
  """{'hidden' f32 [M,T,D], 'tokens' int32 [M,T], 'remaining' int32 [M,T]} over labelled rows."""
  out = {"hidden": [], "tokens": [], "remaining": []}
  for i, start in enumerate(range(0, len(prompt_ids), batch_size)):
    chunk = list(prompt_ids[start:start + batch_size])
    roll = sample(params, chunk, config=config, rng=jax.random.fold_in(rng, i),
                  max_new_tokens=max_new_tokens, temperature=temperature,
                  num_samples=num_samples, stop_tokens=tuple(stop_tokens))
    remaining = bh.remaining_think_lengths(roll.tokens, roll.mask, think_end_id)
    keep = remaining.max(axis=1) > 0
    if not keep.any():
      continue
    hidden = _completion_hidden(params, roll.prompt_tokens, roll.prompt_mask, roll.tokens,
                                config=config)
    out["hidden"].append(np.asarray(hidden)[keep])
    out["tokens"].append(np.asarray(roll.tokens)[keep])
    out["remaining"].append(remaining[keep])
  if not out["hidden"]:
    raise ValueError(f"no sampled trace wrote the think-end token (id {think_end_id}) within "
                     f"{max_new_tokens} tokens: the policy does not end its thoughts, so there "
                     "is nothing to fit (train it on a task with a think delimiter first, or "
                     "raise max_new_tokens)")
  return {k: np.concatenate(v) for k, v in out.items()}


def _median_error(head, data) -> float:
  """Median |predicted median L_rem − true L_rem| (tokens) over labelled slots."""
  alpha, rate = bh.gamma_params(head, jnp.asarray(data["hidden"]))
  pick = lambda x: np.take_along_axis(np.asarray(x), data["tokens"][..., None], -1)[..., 0]
  a, r = pick(alpha), pick(rate)
  import scipy.special  # the Gamma median has no closed form: the inverse regularized gamma
  median_z = scipy.special.gammaincinv(a, 0.5) / r
  valid = data["remaining"] > 0
  return float(np.median(np.abs(np.expm1(median_z) - data["remaining"])[valid]))


def fit_budget_head(params: Any, config: ModelConfig, prompt_ids: Sequence[Sequence[int]], *,
                    think_end_id: int, stop_tokens: Sequence[int], max_new_tokens: int,
                    rng: jax.Array, num_samples: int = 8, temperature: float = 1.0,
                    steps: int = 1000, learning_rate: float = 3e-3, batch_rows: int = 64,
                    holdout_fraction: float = 0.1) -> tuple[dict[str, jax.Array], dict[str, Any]]:
  """(head params, info) — see the module docstring. Deterministic given rng."""
  if steps < 1 or batch_rows < 1:
    raise ValueError(f"steps and batch_rows must be >= 1, got {steps}, {batch_rows}")
  if not 0 < holdout_fraction < 1:
    raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
  data = collect(params, config, prompt_ids, think_end_id=think_end_id, stop_tokens=stop_tokens,
                 max_new_tokens=max_new_tokens, num_samples=num_samples,
                 temperature=temperature, rng=jax.random.fold_in(rng, 0))
  m = data["tokens"].shape[0]
  order = np.random.default_rng(int(jax.random.randint(jax.random.fold_in(rng, 1), (), 0,
                                                       2**31 - 1))).permutation(m)
  n_hold = max(1, int(round(m * holdout_fraction))) if m > 1 else 0
  hold = {k: v[order[:n_hold]] for k, v in data.items()}
  train = {k: v[order[n_hold:]] if n_hold < m else v for k, v in data.items()}
  head = bh.init_budget_head(config.dim, config.vocab_size)
  tx = optax.adam(learning_rate)
  grad = jax.value_and_grad(bh.budget_head_loss)

  @jax.jit
  def step(head, state, hidden, tokens, remaining):
    loss, g = grad(head, hidden, tokens, remaining)
    updates, state = tx.update(g, state, head)
    return optax.apply_updates(head, updates), state, loss

  eval_loss = jax.jit(bh.budget_head_loss)
  held = lambda h: float(eval_loss(h, *(jnp.asarray(hold[k]) for k in
                                        ("hidden", "tokens", "remaining")))) if n_hold else float("nan")
  before, before_err = held(head), _median_error(head, hold) if n_hold else float("nan")
  state = tx.init(head)
  rows = np.random.default_rng(int(order[0]) if m else 0)
  n_train = train["tokens"].shape[0]
  loss = jnp.zeros(())
  for _ in range(steps):
    idx = rows.integers(0, n_train, min(batch_rows, n_train))
    head, state, loss = step(head, state, *(jnp.asarray(train[k][idx]) for k in
                                            ("hidden", "tokens", "remaining")))
  info = {"traces": int(m), "labelled_tokens": int((data["remaining"] > 0).sum()),
          "mean_think_tokens": float(data["remaining"].max(axis=1).mean()),
          "train_nll": float(loss), "heldout_nll_before": before, "heldout_nll": held(head),
          "heldout_median_abs_error_before": before_err,
          "heldout_median_abs_error": _median_error(head, hold) if n_hold else float("nan")}
  return head, info
