"""R2R router training (spec §15): class-weighted BCE with AdamW, and the recall threshold.

    params, losses = train_router(params, data_arrays, small_params=slm, steps=500)
    tau = recall_threshold(scores, divergent, min_recall=0.95)

Loss (the reference's `WeightedBCEWithLogitsLoss`, `r2r/train/loss.py`), s = router logit,
y ∈ {0, 1} (1 = divergent), w₊ = (#negatives / #positives) · recall_factor:

    ℓ(s, y) = −[ w₊ · y · log σ(s) + (1 − y) · log(1 − σ(s)) ],   mean over the batch.

Defaults of `resource/default_training_config_qwen_r1.json`: AdamW lr 5e-5, weight decay
5e-4, batch 1024, dropout 0.1, recall_factor 1; τ is then the largest threshold whose recall
on divergent tokens is ≥ 0.95 (validation set).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokenrl.rollout import r2r


def positive_weight(labels: Any, recall_factor: float = 1.0) -> float:
  """w₊ = #negatives / #positives · recall_factor (1.0 when there is no positive)."""
  y = np.asarray(labels)
  pos = int((y == 1).sum())
  return float((y.size - pos) / pos * recall_factor) if pos else 1.0


def weighted_bce(logits: jax.Array, labels: jax.Array, pos_weight: float | jax.Array) -> jax.Array:
  """Mean class-weighted BCE-with-logits (see the module docstring); logits, labels [M]."""
  y = labels.astype(jnp.float32)
  return jnp.mean(-(pos_weight * y * jax.nn.log_sigmoid(logits)
                    + (1.0 - y) * jax.nn.log_sigmoid(-logits)))


def router_inputs(data: r2r.LabelData, small_params: Any, *, logits_size: int
                  ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
  """((hidden [M,D], token embedding [M,D], logit features [M,k+1]), divergent f32 [M]) from
  labelled data; the features are computed once (the SLM embedding is frozen)."""
  feats = r2r.router_features(small_params, jnp.asarray(data.hidden), jnp.asarray(data.token),
                              jnp.asarray(data.logits), logits_size=logits_size)
  return feats, jnp.asarray(data.label == r2r.DIVERGENT, jnp.float32)


def train_router(params: dict[str, Any], inputs: tuple[jax.Array, jax.Array, jax.Array],
                 targets: jax.Array, *, rng: jax.Array, steps: int, batch_size: int = 1024,
                 learning_rate: float = 5e-5, weight_decay: float = 5e-4, dropout: float = 0.1,
                 recall_factor: float = 1.0) -> tuple[dict[str, Any], np.ndarray]:
  """`steps` AdamW steps on minibatches (sampled with replacement; the whole set when it is
  smaller than batch_size). Returns (params, per-step training losses [steps])."""
  m = int(targets.shape[0])
  if m == 0 or steps < 1:
    raise ValueError(f"need at least one example and one step, got {m} examples, {steps} steps")
  pos_weight = positive_weight(np.asarray(targets), recall_factor)
  opt = optax.adamw(learning_rate, weight_decay=weight_decay)
  opt_state = opt.init(params)
  full_batch = m <= batch_size

  @jax.jit
  def update(params, opt_state, key):
    k_idx, k_drop = jax.random.split(key)
    idx = jnp.arange(m) if full_batch else jax.random.randint(k_idx, (batch_size,), 0, m)
    batch = jax.tree.map(lambda x: x[idx], (inputs, targets))

    def loss_fn(p):
      s = r2r.router_logit(p, *batch[0], dropout=dropout, rng=k_drop)
      return weighted_bce(s, batch[1], pos_weight)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for i in range(steps):
    params, opt_state, loss = update(params, opt_state, jax.random.fold_in(rng, i))
    losses.append(loss)
  return params, np.asarray(jnp.stack(losses))


def eval_loss(params: dict[str, Any], inputs: tuple[jax.Array, jax.Array, jax.Array],
              targets: jax.Array, pos_weight: float) -> float:
  """The weighted BCE of the whole set without dropout."""
  return float(weighted_bce(r2r.router_logit(params, *inputs), targets, pos_weight))


def recall_threshold(scores: Any, labels: Any, *, min_recall: float = 0.95) -> float:
  """The largest τ with recall(σ ≥ τ on label 1) ≥ min_recall: τ = the ⌈min_recall·P⌉-th
  largest positive score (P positives); 0.0 (route everything) when there is no positive."""
  s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  pos = np.sort(s[y])[::-1]
  if pos.size == 0:
    return 0.0
  need = int(np.ceil(min_recall * pos.size - 1e-9))
  return float(pos[max(need, 1) - 1])
