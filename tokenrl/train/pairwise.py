"""The jitted pairwise-preference update (DPO family, TGDPO, cDPO) and its log-prob helpers.

A batch holds N pairs, pair-major (tokenrl.data.preference.preference_batch):

  tokens, segment_ids  int32 [N,2,P+T]   index 0 = chosen, 1 = rejected
  mask                 int32 [N,2,T]     1 on the completion tokens that are scored
  ref_logp             f32   [N,2,T]     frozen reference log-probs (computed before the step)
  + the method's extra arrays [N,2,...]  (TGDPO guide_logp, cDPO score)

Inside the loss the chosen and rejected rows are concatenated into one [2N,P+T] batch, so the
policy runs one forward per micro-batch; micro-batches split the pair axis N, so a pair is
never separated. loss = mean over the N pairs of the method's per-pair loss ℓ(h) (each
micro-batch contributes Σ_its pairs ℓ / N, so accumulation equals one big batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl.models.config import ModelConfig
from tokenrl.train.steps import TrainState, _accumulate, _apply, completion_logprobs


@dataclasses.dataclass
class PrefContext:
  """What a pairwise method's host hooks (`prepare`, `extras`) may use.

  cfg the run config; run (tokenizer, model, ...); section the method's config section;
  workdir the run directory (methods keep their frozen helper models under it); ref_params the
  frozen reference; train_pairs the training pairs; logprobs(params, batch, P) -> numpy
  [N,2,T]; sft(params, pairs, which, steps, learning_rate, seed) -> params fine-tuned on
  completion `which` (0 chosen, 1 rejected); load_or_train(workdir, name, like, train_fn) ->
  frozen params saved under WORKDIR/<name> (trained once, reloaded on resume);
  load_params(workdir) -> (ModelConfig, params) of another run's latest checkpoint
  (tokenrl.train.workdir.load_params; methods never import tokenrl.train); aux a dict the
  method fills in `prepare`.
  """

  cfg: Any
  run: Any
  section: Any
  workdir: str
  ref_params: Any
  train_pairs: list[dict[str, Any]]
  logprobs: Callable[..., np.ndarray]
  sft: Callable[..., Any]
  load_or_train: Callable[..., Any] | None = None
  load_params: Callable[[str], tuple[Any, Any]] | None = None
  aux: dict[str, Any] = dataclasses.field(default_factory=dict)


def pair_logprobs(params: Any, tokens: jax.Array, segment_ids: jax.Array, prompt_len: int, *,
                  config: ModelConfig, remat: bool = False) -> jax.Array:
  """logp [N,2,T] of both completions of every pair, in one forward of the [2N,P+T] rows."""
  if tokens.ndim != 3 or tokens.shape[1] != 2:
    raise ValueError(f"tokens: expected [N,2,P+T], got shape {tuple(tokens.shape)}")
  if segment_ids.shape != tokens.shape:
    raise ValueError(f"segment_ids: expected shape {tuple(tokens.shape)}, got "
                     f"{tuple(segment_ids.shape)}")
  n = tokens.shape[0]
  flat = lambda x: jnp.concatenate([x[:, 0], x[:, 1]], axis=0)           # [2N,P+T]
  logp, _ = completion_logprobs(params, flat(tokens), flat(segment_ids), prompt_len,
                                config=config, remat=remat)               # [2N,T]
  return jnp.stack([logp[:n], logp[n:]], axis=1)


def make_pair_logprob_fn(*, config: ModelConfig, prompt_len: int, jit: bool = True):
  """(params, tokens [N,2,S], segment_ids [N,2,S]) -> logp [N,2,T] (reference / eval log-probs)."""
  fn = lambda params, tokens, segment_ids: pair_logprobs(params, tokens, segment_ids, prompt_len,
                                                        config=config)
  return jax.jit(fn) if jit else fn


def pair_summary(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array,
                 beta: float) -> dict[str, jax.Array]:
  """Per-pair DPO statistics [N] of logp/ref_logp/mask [N,2,T] (detached): implicit rewards
  R = β·Σ_t m·(lp − lp_ref) of chosen/rejected, their margin, whether the chosen wins
  (strictly, as TRL's rewards/accuracies), the policy's summed log-probs and whether the policy
  itself ranks chosen first, and the mean per-token reward β·(lp − lp_ref) of each completion."""
  m = mask > 0
  lr = jnp.where(m, logp - ref_logp, 0.0)                    # [N,2,T]
  r = beta * lr.sum(-1)                                      # [N,2]
  lp = jnp.where(m, logp, 0.0).sum(-1)                       # [N,2]
  tok = beta * lr.sum(-1) / jnp.maximum(m.sum(-1), 1)        # [N,2]
  out = {"reward_chosen": r[:, 0], "reward_rejected": r[:, 1],
         "reward_margin": r[:, 0] - r[:, 1],
         "preference_accuracy": (r[:, 0] > r[:, 1]).astype(jnp.float32),
         "logp_chosen": lp[:, 0], "logp_rejected": lp[:, 1],
         "logp_accuracy": (lp[:, 0] > lp[:, 1]).astype(jnp.float32),
         "token_reward_chosen": tok[:, 0], "token_reward_rejected": tok[:, 1]}
  return jax.tree.map(jax.lax.stop_gradient, out)


def make_pairwise_step(tx: optax.GradientTransformation, *, config: ModelConfig, prompt_len: int,
                       method: Any, section: dict[str, Any], micro_batch_size: int = 0,
                       remat: bool = False, jit: bool = True):
  """step(state, batch) -> (state, metrics) for a pairwise method (module docstring).

  `method.pair_loss(logp [n,2,T], mb, section) -> (losses [n], metrics {name: [n]})` gives the
  per-pair loss of a micro-batch of n pairs; `section` is the method's config section as a
  dict (its 'beta' also scales the logged implicit rewards). micro_batch_size counts pairs
  (0 = whole batch). Metrics: loss, grad_norm, skipped_updates, the `pair_summary` means and the
  method's own metrics, all means over the N pairs. jit=False returns the plain function (for
  `tokenrl.train.sharded.shard_step`); the state is donated when jitted.
  """
  beta = float(section["beta"])

  def step(state: TrainState, batch: dict[str, jax.Array]):
    n = batch["mask"].shape[0]

    def loss_fn(params, mb):
      logp = pair_logprobs(params, mb["tokens"], mb["segment_ids"], prompt_len, config=config,
                           remat=remat)
      losses, extra = method.pair_loss(logp, mb, section)
      stats = {**pair_summary(logp, mb["ref_logp"], mb["mask"], beta), **extra}
      # Sums over this micro-batch's pairs divided by N: the accumulated sums are means over N.
      return losses.sum() / n, jax.tree.map(lambda v: v.sum() / n, stats)

    loss, metrics, grads = _accumulate(loss_fn, state.params, batch, micro_batch_size)
    return _apply(state, tx, loss, grads, metrics)

  return jax.jit(step, donate_argnums=0) if jit else step
